"""What a run records: `train_log.jsonl` (one row per optimizer step), tracker hyperparameters and `results.json`.

The JSONL log survives resumes: a resumed run cuts it back to its checkpoint's step and appends, so it always holds
the whole run's history, which the final summary and the model cards read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TRAIN_LOG = "train_log.jsonl"
RESULTS = "results.json"


def append_train_log(output_dir: str | os.PathLike, row: dict) -> None:
    """Appends one JSON line to `output_dir/train_log.jsonl` (main process only): step, loss, lr, ..."""
    with open(Path(output_dir) / TRAIN_LOG, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def read_train_log(output_dir: str | os.PathLike) -> list[dict]:
    """The rows of `train_log.jsonl`; a resumed run's rows follow the interrupted run's, so later rows win per step."""
    path = Path(output_dir) / TRAIN_LOG
    if not path.exists():
        return []
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def truncate_train_log(output_dir: str | os.PathLike, global_step: int) -> None:
    """Drops log rows after `global_step` (a resumed run rewrites them); main process only."""
    rows = [row for row in read_train_log(output_dir) if row.get("step", 0) <= global_step]
    path = Path(output_dir) / TRAIN_LOG
    if path.exists():
        tmp = path.with_name(TRAIN_LOG + ".tmp")
        tmp.write_text("".join(json.dumps(row) + "\n" for row in rows))
        os.replace(tmp, path)


def tracker_config(args) -> dict:
    """The run's arguments as tracker hyperparameters (plain values; anything else as its string)."""
    return {
        key: value if isinstance(value, (int, float, str, bool)) else str(value) for key, value in vars(args).items()
    }


def write_results(output_dir: str | os.PathLike, result: dict) -> None:
    """Writes `output_dir/results.json`: `result` without its per-step losses, plus the first and last logged loss of
    the whole run (resumes included). Main process only."""
    summary = {key: value for key, value in result.items() if key != "losses"}
    history = [row["loss"] for row in read_train_log(output_dir)]
    summary.update(first_loss=history[0] if history else None, last_loss=history[-1] if history else None)
    (Path(output_dir) / RESULTS).write_text(json.dumps(summary, indent=2) + "\n")
