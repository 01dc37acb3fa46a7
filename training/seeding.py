"""Per-micro-batch random numbers: a resumed run and a run on any number of processes draw the same ones."""

from __future__ import annotations

import numpy as np
import torch


def step_generator(
    seed: int, micro_step: int, process_index: int, device: torch.device, num_processes: int = 1
) -> torch.Generator:
    """The random numbers of one micro-step depend on (seed, global micro-batch) only: resuming reproduces them.

    accelerate's sharded loader hands process p, at its micro-step m, the global batch m * num_processes + p. Keying
    on that index gives a P-process run the numbers that one process with P times the gradient accumulation draws
    for the same batch, so the two train the same model.
    """
    return torch.Generator(device=device).manual_seed(micro_batch_seed(seed, micro_step, process_index, num_processes))


def micro_batch_seed(seed: int, micro_step: int, process_index: int, num_processes: int = 1, stream: int = 0) -> int:
    """The seed of `step_generator` (stream 0); other streams give independent seeds for the same micro-batch."""
    micro_batch = micro_step * num_processes + process_index
    return int(np.random.SeedSequence([seed, micro_batch, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)
