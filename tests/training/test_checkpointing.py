"""Atomic checkpoints: a save killed midway leaves the last complete checkpoint as `latest`; rotation; resume paths."""

import pytest
import torch
from accelerate import Accelerator

from training import checkpointing, run_log


@pytest.fixture
def accelerator_and_model():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    return accelerator, model


def test_save_rotate_and_find_latest(tmp_path, accelerator_and_model):
    accelerator, _ = accelerator_and_model
    for step in (1, 2, 3):
        path = checkpointing.save_checkpoint(accelerator, tmp_path, step, total_limit=2, epoch=0)
        assert path.name == f"checkpoint-{step}"
    assert [step for step, _ in checkpointing.list_checkpoints(tmp_path)] == [2, 3]
    assert checkpointing.read_training_state(tmp_path / "checkpoint-3") == {"global_step": 3, "epoch": 0}
    assert checkpointing.resolve_resume_path(tmp_path, "latest") == tmp_path / "checkpoint-3"
    assert checkpointing.resolve_resume_path(tmp_path, "checkpoint-2") == tmp_path / "checkpoint-2"
    assert not any(path.name.startswith(".") for path in tmp_path.iterdir())


def test_a_save_killed_midway_leaves_the_previous_checkpoint(tmp_path, accelerator_and_model, monkeypatch):
    accelerator, _ = accelerator_and_model
    checkpointing.save_checkpoint(accelerator, tmp_path, 1, total_limit=None)
    original = accelerator.save_state

    def killed(output_dir, **kwargs):
        original(output_dir, **kwargs)  # the files are written, the marker and the rename never happen
        raise KeyboardInterrupt

    monkeypatch.setattr(accelerator, "save_state", killed)
    with pytest.raises(KeyboardInterrupt):
        checkpointing.save_checkpoint(accelerator, tmp_path, 2, total_limit=1)
    assert (tmp_path / ".tmp-checkpoint-2").exists() and not (tmp_path / "checkpoint-2").exists()
    assert checkpointing.latest_checkpoint(tmp_path) == tmp_path / "checkpoint-1"
    checkpointing.remove_stale(tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["checkpoint-1"]


def test_incomplete_checkpoints_are_never_resumed(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()  # no completion marker: e.g. copied half-way
    assert checkpointing.latest_checkpoint(tmp_path) is None
    assert checkpointing.resolve_resume_path(tmp_path, "latest") is None  # a fresh start
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        checkpointing.resolve_resume_path(tmp_path, "checkpoint-5")


def test_train_log_truncates_on_resume(tmp_path):
    for step in (1, 2, 3):
        run_log.append_train_log(tmp_path, {"step": step, "loss": float(step)})
    run_log.truncate_train_log(tmp_path, 2)
    assert [row["step"] for row in run_log.read_train_log(tmp_path)] == [1, 2]
