"""Determinism: the same seed gives the bitwise same video on CPU in a fresh process.

Each run is its own Python process (imports, model construction and weights from scratch): the tiny random pipeline
of `spacetime-generate --model tiny-random` (real MiniLM text encoder, weights seeded), sampling with classifier-free
guidance, once with the deterministic flow-matching Euler sampler and once with its stochastic variant (fresh noise
drawn in every step, from the same generator). The `np` frames are compared byte for byte.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPOSITORY = Path(__file__).resolve().parents[2]

GENERATE = """
import sys

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_spacetime.cli import build_tiny_random_pipeline

output, seed = sys.argv[1], int(sys.argv[2])
pipe = build_tiny_random_pipeline(seed=0)
pipe.set_progress_bar_config(disable=True)
videos = []
for stochastic in (False, True):
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(stochastic_sampling=stochastic)
    videos.append(
        pipe(
            "a red circle moves from left to right",
            height=32,
            width=32,
            num_frames=5,
            num_inference_steps=3,
            guidance_scale=5.0,
            generator=torch.Generator().manual_seed(seed),
            output_type="np",
        ).frames
    )
np.save(output, np.stack(videos))  # (2: deterministic, stochastic, 1, F, H, W, 3)
"""


def _generate_in_fresh_processes(tmp_path, runs: list[tuple[str, int]]) -> dict[str, np.ndarray]:
    """Starts every run at once (each a new interpreter) and returns {name: frames}."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-c", GENERATE, str(tmp_path / f"{name}.npy"), str(seed)],
            cwd=REPOSITORY,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, seed in runs
    }
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name}: {stderr[-3000:]}"
    return {name: np.load(tmp_path / f"{name}.npy") for name in processes}


def test_same_seed_same_bytes_in_fresh_processes(tmp_path):
    videos = _generate_in_fresh_processes(tmp_path, [("first", 0), ("second", 0), ("other_seed", 1)])
    for index, mode in enumerate(("deterministic", "stochastic")):
        first, second, other = (videos[name][index] for name in ("first", "second", "other_seed"))
        assert first.shape == (1, 5, 32, 32, 3) and first.dtype == np.float32 and np.isfinite(first).all()
        assert first.tobytes() == second.tobytes(), f"{mode}: max difference {np.abs(first - second).max()}"
        assert first.tobytes() != other.tobytes(), mode  # the seed, not a constant, decides the video
    assert videos["first"][0].tobytes() != videos["first"][1].tobytes()  # the stochastic sampler did add noise
