"""Suite-wide settings: deterministic, single-threaded torch per xdist worker (2 workers share 2 cores)."""

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one intra-op thread each avoids oversubscription, which slows torch down badly.
    torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
