"""Training faults: a run killed with SIGKILL at any moment, a checkpoint write included, loses nothing.

`train_autoencoder.py` runs as a real process (vae_tiny, 8 generated clips of 5 frames at 16x16, 12 steps, a
checkpoint every step, at most 2 kept). A chain of runs is killed at seeded moments, each resumed with
`--resume_from_checkpoint latest`: while a checkpoint is being written (its `.tmp-checkpoint-*` folder exists), a
random delay after training got going, a random delay after launch (imports, model building or `load_state`). After
every kill the newest complete checkpoint is intact (marker, weights, optimizer, scheduler and RNG states all load),
never older than before the kill, and no `checkpoint-<n>` folder lacks its marker. The last run finishes, and its
weights and per-step losses equal an uninterrupted run's bit for bit (CPU, one thread, per-step seeded randomness).

NaN/inf losses are covered where the training loops are tested: `test_nan_loss_stops_naming_the_step` in
tests/training, for all three scripts.
"""

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

from training import checkpointing, make_shapes_dataset, run_log

REPOSITORY = Path(__file__).resolve().parents[2]
TRAIN_STEPS = 12  # about 50 ms each here, after 3-4 s of start-up
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fault-clips")
    make_shapes_dataset.generate_dataset(folder, 8, seed=0, height=16, width=16, num_frames=5)
    return folder


def _launch(data_dir: Path, output_dir: Path, resume: bool, steps: int = TRAIN_STEPS) -> subprocess.Popen:
    command = [
        sys.executable, str(REPOSITORY / "training" / "train_autoencoder.py"), "--data_dir", str(data_dir),
        "--output_dir", str(output_dir), "--num_frames", "5", "--height", "16", "--width", "16",
        "--train_batch_size", "2", "--max_train_steps", str(steps), "--checkpointing_steps", "1",
        "--checkpoints_total_limit", "2", "--lr_warmup_steps", "0", "--num_validation_clips", "2",
        "--validation_steps", "1000", "--stats_num_samples", "4", "--report_to", "none", "--seed", "0",
    ]  # fmt: skip
    if resume:
        command += ["--resume_from_checkpoint", "latest"]
    output_dir.mkdir(parents=True, exist_ok=True)
    log = open(output_dir.parent / f"{output_dir.name}.log", "ab")  # noqa: SIM115  (closed with the process)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPOSITORY)
    process.log = log
    return process


def _finish(process: subprocess.Popen, timeout: float = 120) -> int:
    try:
        return process.wait(timeout=timeout)
    finally:
        process.log.close()


def _wait_until(process: subprocess.Popen, condition, timeout: float = 60) -> bool:
    """Polls `condition` every millisecond; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.001)
    raise TimeoutError("the training process neither reached the kill point nor ended")


def _kill(process: subprocess.Popen) -> bool:
    """SIGKILL; True if the process was still running (the kill landed)."""
    running = process.poll() is None
    process.kill()
    _finish(process)
    return running


def _logged_steps(output_dir: Path) -> int:
    try:
        return len((output_dir / run_log.TRAIN_LOG).read_text().splitlines())
    except FileNotFoundError:
        return 0


def _writing_checkpoint(output_dir: Path, min_step: int):
    def condition():
        return any(
            entry.name.startswith(".tmp-checkpoint-") and int(entry.name.rsplit("-", 1)[1]) >= min_step
            for entry in os.scandir(output_dir)
        )

    return condition


def _assert_latest_usable(output_dir: Path) -> int:
    """The newest complete checkpoint loads fully; returns its step (0 when none was completed yet)."""
    for path in output_dir.glob("checkpoint-*"):
        assert (path / checkpointing.COMPLETE_MARKER).is_file(), f"{path.name} has no completion marker"
    latest = checkpointing.latest_checkpoint(output_dir)
    if latest is None:
        return 0
    step = checkpointing.read_training_state(latest)["global_step"]
    assert latest.name == f"checkpoint-{step}"
    assert safetensors.torch.load_file(latest / "model.safetensors")
    for name in ("optimizer.bin", "scheduler.bin"):
        torch.load(latest / name, weights_only=True)
    checkpointing.check_pickled_states(latest)  # RNG states, weights-only
    return step


def _weights(output_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(output_dir / "vae" / WEIGHTS)


def _losses(output_dir: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in run_log.read_train_log(output_dir)}  # later rows win


def _run_kill_chain(clips: Path, tmp_path: Path, kill_points: list[str], seed: int) -> list[str]:
    """Runs the chain; returns one line per kill: where it landed and the checkpoint it left."""
    rng = random.Random(seed)
    reference = _launch(clips, tmp_path / "reference", resume=False)  # in parallel with the chain
    output_dir, outcomes, latest = tmp_path / "killed", [], 0
    for index, kill_point in enumerate(kill_points):
        process = _launch(clips, output_dir, resume=index > 0)
        if kill_point == "mid-checkpoint":
            # a checkpoint being written (its temporary folder exists) once two steps are done
            reached = _wait_until(process, _writing_checkpoint(output_dir, min_step=max(3, latest + 2)))
            delay = rng.uniform(0, 0.005)
        elif kill_point == "after-steps":
            done = _logged_steps(output_dir)
            reached = _wait_until(process, lambda done=done: _logged_steps(output_dir) > done)
            delay = rng.uniform(0, 0.25)
        else:  # "after-launch": during imports, model building or load_state
            reached, delay = True, rng.uniform(0.5, 4.5)
        time.sleep(delay)
        landed = reached and _kill(process)
        if not landed:
            _finish(process)
        step = _assert_latest_usable(output_dir)
        assert step >= latest, f"kill {index} ({kill_point}) lost checkpoint-{latest}: newest is now {step}"
        outcomes.append(
            f"kill {index} {kill_point} +{delay * 1000:.0f} ms: {'killed' if landed else 'run had ended'}, "
            f"latest checkpoint-{step}"
            + (", a .tmp-checkpoint left behind" if any(output_dir.glob(".tmp-checkpoint-*")) else "")
        )
        latest = step
    assert _finish(_launch(clips, output_dir, resume=True)) == 0, (tmp_path / "killed.log").read_text()[-3000:]
    assert _finish(reference) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    assert not list(output_dir.glob(".tmp-checkpoint-*")), "the resumed run left a temporary checkpoint"

    expected, resumed = _weights(tmp_path / "reference"), _weights(output_dir)
    assert expected.keys() == resumed.keys()
    for name in expected:
        assert torch.equal(expected[name], resumed[name]), f"{name} differs from the uninterrupted run"
    assert _losses(output_dir) == _losses(tmp_path / "reference")
    assert sorted(_losses(output_dir)) == list(range(1, TRAIN_STEPS + 1))
    return outcomes


def test_sigkill_at_random_moments_resumes_to_the_same_weights(clips, tmp_path):
    kill_points = ["mid-checkpoint", "after-steps", "after-launch", "mid-checkpoint"]
    outcomes = _run_kill_chain(clips, tmp_path, kill_points, seed=0)
    print("\n".join(outcomes))
    assert "killed" in outcomes[0] and "a .tmp-checkpoint left behind" in outcomes[0], outcomes


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_many_times(clips, tmp_path, seed):
    kill_points = ["mid-checkpoint", "after-steps", "after-launch"] * 3
    random.Random(seed).shuffle(kill_points)
    print("\n".join(_run_kill_chain(clips, tmp_path, kill_points, seed=seed)))
