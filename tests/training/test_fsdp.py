"""FSDP2 on CPU: the tiny DiT sharded per SpacetimeDiTBlock (`fully_shard`) over 2 gloo processes trains like one
process, resumes from its sharded checkpoint, generates when every process runs the pipeline, and consolidates into a
`save_pretrained` folder that loads in one process (worker: fsdp_dit_worker.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusers_spacetime import SpacetimeDiTModel

from .conftest import free_port

REPO = Path(__file__).resolve().parents[2]


def _run_worker(output_dir: Path, num_processes: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(num_processes),
        "--master_port", str(free_port()), str(REPO / "tests" / "training" / "fsdp_dit_worker.py"), str(output_dir),
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads((output_dir / "losses.json").read_text())


def test_sharded_dit_trains_resumes_generates_and_consolidates_like_one_process(tmp_path):
    one = _run_worker(tmp_path / "one", 1)
    two = _run_worker(tmp_path / "two", 2)
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert two["resumed_loss"] == pytest.approx(two["losses"][2], rel=1e-6)
    # each process wrote its own shard of the checkpoint
    assert sorted(path.name for path in (tmp_path / "two" / "checkpoint-2").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]
    np.testing.assert_allclose(
        np.load(tmp_path / "two" / "frames.npy"), np.load(tmp_path / "one" / "frames.npy"), atol=1e-4
    )
    consolidated = SpacetimeDiTModel.from_pretrained(tmp_path / "two" / "transformer")
    reference = SpacetimeDiTModel.from_pretrained(tmp_path / "one" / "transformer")
    for (name, value), (_, expected) in zip(consolidated.state_dict().items(), reference.state_dict().items()):
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=name)
