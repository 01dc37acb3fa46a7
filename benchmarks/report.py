"""How the benchmarks are called and report: the flags they share, Markdown tables and the result files."""

import argparse
import json
import os
import sys

import torch
from measure import DTYPES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "benchmarks", "results")


# ----------------------------------------------------------------------------------------------------------------
# Flags
# ----------------------------------------------------------------------------------------------------------------


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """`--device` and `--dtype`; `device_defaults` fills the dtype in after parsing."""
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="Where to run.")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="Default: fp32 on CPU, bf16 on CUDA.")


def device_defaults(args: argparse.Namespace) -> argparse.Namespace:
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    return args


def add_one_shot_arguments(parser: argparse.ArgumentParser, budget_help: str) -> None:
    """The flags of the scripts that `run_gpu.sh` runs once on a GPU: `--threads`, `--time-budget`, `--output-dir`.

    `budget_help` says what the script does when the budget runs out; `one_shot_defaults` fills in the defaults
    that depend on the device after parsing.
    """
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (default: 2 with --device cpu, torch's on CUDA)."
    )
    parser.add_argument("--time-budget", type=float, help=f"{budget_help}; default 150 on CPU, none on CUDA.")
    parser.add_argument("--output-dir", default=RESULTS_DIR, help="Folder of the Markdown and JSON results.")


def parse_sizes(texts: list[str]) -> list[tuple[int, int, int]]:
    """`["4x32x32", ...]` -> `[(4, 32, 32), ...]`: the `--cases` latent sizes, frames x height x width."""
    sizes = []
    for text in texts:
        try:
            size = tuple(int(value) for value in text.lower().split("x"))
        except ValueError:
            size = ()
        if len(size) != 3:
            raise ValueError(f"a size is FxHxW, got {text!r}")
        sizes.append(size)
    return sizes


def one_shot_defaults(args: argparse.Namespace, script: str, argv) -> argparse.Namespace:
    """Device-dependent defaults of `add_device_arguments` and `add_one_shot_arguments` (the preset is named after
    the device), and `args.command`, the command line the report quotes."""
    device_defaults(args)
    args.preset = args.preset or ("gpu" if args.device == "cuda" else "cpu")
    if args.time_budget is None and args.device == "cpu":
        args.time_budget = 150.0  # the CPU run stays under ~3 minutes on a loaded host
    command = [os.path.relpath(script, REPO), *(argv if argv is not None else sys.argv[1:])]
    args.command = "python " + " ".join(command)
    return args


# ----------------------------------------------------------------------------------------------------------------
# Tables and files
# ----------------------------------------------------------------------------------------------------------------


def versions() -> str:
    import diffusers
    import transformers

    return f"torch {torch.__version__}, diffusers {diffusers.__version__}, transformers {transformers.__version__}"


def one_line(error: BaseException, limit: int = 160) -> str:
    """An exception as one table cell: type and message, whitespace collapsed, cut at `limit` characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A Markdown table; columns whose cells are all numbers (`1,234`, `2.5x`, `40%`) are right-aligned."""
    align = ["---" if i == 0 or not any(_is_number_cell(r[i]) for r in rows) else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _is_number_cell(cell) -> bool:
    text = str(cell).replace(",", "").replace("x", "").replace("%", "").strip()
    try:
        float(text)
        return True
    except ValueError:
        return False


def write_text(text: str, path: str | None) -> None:
    """`text` to `path` (its folder made), if a path is given."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as handle:
            handle.write(text if text.endswith("\n") else text + "\n")


def write_results(output_dir: str, stem: str, text: str, results: dict) -> None:
    """The report to `<stem>.md` and stdout, the raw numbers to `<stem>.json` (values JSON cannot hold as strings)."""
    write_text(text, os.path.join(output_dir, f"{stem}.md"))
    with open(os.path.join(output_dir, f"{stem}.json"), "w") as handle:
        json.dump(results, handle, indent=1, default=str)
    print(text, flush=True)
