"""Atomic training checkpoints for accelerate: a run killed at any moment leaves its last complete checkpoint usable.

A checkpoint is written by `accelerator.save_state` into `.tmp-checkpoint-<step>` (every process writes its RNG
state there, the main process the weights and optimizer), then the main process adds `training_state.json` (the
completion marker), fsyncs every file and the folder, and renames the folder to `checkpoint-<step>` in one
`os.replace`. `latest_checkpoint` only sees folders named `checkpoint-<step>` that hold the marker, so a
half-written checkpoint is never resumed from. Old checkpoints beyond the limit are first renamed to
`.deleting-checkpoint-<step>` (atomic), then removed, so a kill during deletion cannot leave a partial
`checkpoint-<step>` behind either.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from training.run_log import truncate_train_log

COMPLETE_MARKER = "training_state.json"
_CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
_STALE_PREFIXES = (".tmp-checkpoint-", ".deleting-checkpoint-")


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(folder: Path) -> None:
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync_path(Path(root) / name)
        _fsync_path(Path(root))


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under `output_dir` as (step, path), oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = _CHECKPOINT_PATTERN.match(path.name)
        if match and path.is_dir() and (path / COMPLETE_MARKER).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step, or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


def resolve_resume_path(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """`--resume_from_checkpoint` -> a complete checkpoint folder; "latest" with none found gives None (fresh start)."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        path = latest_checkpoint(output_dir)
        if path is not None:
            check_pickled_states(path)
        return path
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = Path(output_dir) / resume_from_checkpoint
    if not (path / COMPLETE_MARKER).is_file():
        raise ValueError(f"{str(path)!r} is not a complete checkpoint (no {COMPLETE_MARKER})")
    check_pickled_states(path)
    return path


def check_pickled_states(checkpoint: str | os.PathLike) -> None:
    """Refuses a checkpoint whose pickled states are more than plain tensors, numbers and RNG states.

    accelerate's `load_state` reads `custom_checkpoint_<i>.pkl` (an EMA's state) with `torch.load(weights_only=False)`,
    which would run any code a planted pickle holds, and it skips a `random_states_<i>.pkl` it cannot read without a
    word (the run then resumes with other random numbers). Reading both weights-only first runs nothing, lets only
    plain states through, and turns either case into a clear error. The model and optimizer files accelerate itself
    reads safetensors or weights-only.
    """
    from accelerate.utils import load as accelerate_load  # weights-only, with numpy's RNG state allowed

    checkpoint = Path(checkpoint)
    files = [(path, torch.load) for path in sorted(checkpoint.glob("custom_checkpoint_*.pkl"))]
    files += [(path, accelerate_load) for path in sorted(checkpoint.glob("random_states_*.pkl"))]
    for path, load in files:
        try:
            load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # UnpicklingError for foreign objects; anything else: not a plain state either
            lines = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported" in line]
            raise ValueError(
                f"--resume_from_checkpoint: refusing {str(path)!r}: it is not a plain state "
                f"({lines[0] if lines else type(error).__name__}); nothing in it was run"
            ) from error


def read_training_state(checkpoint: str | os.PathLike) -> dict:
    """The marker's contents: at least `global_step`."""
    with open(Path(checkpoint) / COMPLETE_MARKER) as handle:
        return json.load(handle)


def resume(
    accelerator,
    output_dir,
    resume_path: Path | None,
    updates_per_epoch: int,
    gradient_accumulation_steps: int,
    logger,
    after_load=None,
) -> tuple[int, int, int]:
    """Loads `resume_path` (from `resolve_resume_path`) into the accelerator; returns (global_step, first_epoch,
    skip_batches) for the loop, (0, 0, 0) for a fresh run. `after_load()` runs right after `load_state` (e.g. to move
    an EMA back to the device). The train log is cut back to the checkpoint's step so a resumed run appends to it."""
    if resume_path is None:
        return 0, 0, 0
    accelerator.load_state(str(resume_path))
    if after_load is not None:
        after_load()
    global_step = read_training_state(resume_path)["global_step"]
    first_epoch = global_step // updates_per_epoch
    skip_batches = (global_step % updates_per_epoch) * gradient_accumulation_steps
    if accelerator.is_main_process:
        truncate_train_log(output_dir, global_step)
    logger.info(f"Resumed from {resume_path} at step {global_step}")
    return global_step, first_epoch, skip_batches


def remove_stale(output_dir: str | os.PathLike) -> None:
    """Removes leftovers of killed runs (temporary and half-deleted checkpoints). Main process only."""
    output_dir = Path(output_dir)
    if output_dir.is_dir():
        for path in output_dir.iterdir():
            if path.name.startswith(_STALE_PREFIXES):
                shutil.rmtree(path, ignore_errors=True)


def _remove_checkpoint(path: Path) -> None:
    doomed = path.with_name(".deleting-" + path.name)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def save_checkpoint(accelerator, output_dir: str | os.PathLike, global_step: int, total_limit: int | None, **state):
    """Saves `accelerator`'s state as `output_dir/checkpoint-<global_step>`, atomically; call on every process.

    `state` (JSON-serialisable) goes into the completion marker next to `global_step`. With `total_limit`, the
    oldest complete checkpoints are removed after the new one is in place, keeping `total_limit` of them.
    """
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{global_step}"
    tmp = output_dir / f".tmp-checkpoint-{global_step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with open(tmp / COMPLETE_MARKER, "w") as handle:
            json.dump({"global_step": global_step, **state}, handle, indent=2)
        _fsync_tree(tmp)
        if final.exists():  # the same step saved again (e.g. a resumed run that ends where it resumed)
            _remove_checkpoint(final)
        os.replace(tmp, final)
        _fsync_path(output_dir)
        if total_limit is not None:
            checkpoints = list_checkpoints(output_dir)
            for _, path in checkpoints[: max(0, len(checkpoints) - total_limit)]:
                _remove_checkpoint(path)
    accelerator.wait_for_everyone()
    return final


def save_folder_atomically(save_fn, destination: str | os.PathLike) -> Path:
    """Calls `save_fn(tmp_folder)`, fsyncs, and renames the folder to `destination` (replacing an older one)."""
    destination = Path(destination)
    tmp = destination.with_name(f".tmp-{destination.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_fn(str(tmp))
    _fsync_tree(tmp)
    if destination.exists():
        old = destination.with_name(f".deleting-{destination.name}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(destination, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, destination)
    _fsync_path(destination.parent)
    return destination
