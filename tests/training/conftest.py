"""Shared fixtures and helpers of the training tests: a small generated shapes folder, a clean accelerate state per
test, two-process launches, checkpoint copies and a NaN loss."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from training import flow_matching, make_shapes_dataset

REPO = Path(__file__).resolve().parents[2]

# Clip size of the script tests: 9 frames = 1 + 2 * 4 (the tiny VAE compresses time by 4), 32 x 32 pixels.
NUM_FRAMES, HEIGHT, WIDTH = 9, 32, 32


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """12 generated clips (9 frames, 32 x 32) with metadata.jsonl and ground_truth.jsonl."""
    folder = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset.generate_dataset(folder, 12, seed=0, height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES)
    return folder


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Scripts run in-process one after another: each starts from a fresh accelerate singleton state."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def restore_palette():
    """Undoes `make_shapes_dataset.add_color` (it extends module-level tables for the process)."""
    from training import make_shapes_dataset as shapes

    palette, colors, lookup = dict(shapes.PALETTE), shapes.ATTRIBUTES["color"], dict(shapes.VALUE_TO_ATTRIBUTE)
    yield
    shapes.PALETTE.clear()
    shapes.PALETTE.update(palette)
    shapes.ATTRIBUTES["color"] = colors
    shapes.VALUE_TO_ATTRIBUTE.clear()
    shapes.VALUE_TO_ATTRIBUTE.update(lookup)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(script: str, *arguments: str) -> subprocess.CompletedProcess:
    """`training/<script>` under `accelerate launch` with cpu_2proc.yaml (2 processes, gloo); asserts that it ran."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "training" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", str(free_port()),
        str(REPO / "training" / script), *arguments,
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "x 2 processes" in completed.stderr
    return completed


def killed_run(run_dir: Path, step: int, into: Path, *, half_written: int | None = None) -> Path:
    """`into`, a run folder as a kill after `run_dir`'s checkpoint-<step> leaves it: that checkpoint (copied) and,
    with `half_written`, the temporary folder of a checkpoint being written at that step."""
    into.mkdir()
    shutil.copytree(run_dir / f"checkpoint-{step}", into / f"checkpoint-{step}")
    if half_written is not None:
        (into / f".tmp-checkpoint-{half_written}").mkdir()
    return into


def nan_on_second_call(monkeypatch) -> None:
    """Makes the second flow-matching loss of the process NaN (the loop must stop naming step 2)."""
    original = flow_matching.flow_matching_loss
    calls = []

    def nan_on_second(*args, **kwargs):
        calls.append(1)
        loss = original(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(flow_matching, "flow_matching_loss", nan_on_second)
