"""Suite-wide settings: deterministic, single-threaded torch per xdist worker (2 workers share 2 cores)."""

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers on two cores: one intra-op thread each avoids oversubscription, which slows torch down badly.
    torch.set_num_threads(1)

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny-model tests: they gain nothing from threads, and two threads per
    process oversubscribe a shared 2-core machine (up to 30x slower); the previous count comes back afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
