"""Run by test_fsdp.py under torchrun: the tiny DiT sharded per SpacetimeDiTBlock with FSDP2 (`fully_shard`) on every
process of a gloo group (one process: unsharded, the reference). Trains 3 steps of a global batch of 4 split over the
processes, saves a sharded checkpoint after step 2 and resumes from it, generates on every process with the sharded
transformer (what mid-run validation must do) and writes a consolidated `save_pretrained` folder.

    python -m torch.distributed.run --nproc_per_node 2 tests/training/fsdp_dit_worker.py OUTPUT_DIR
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import fully_shard
from transformers import AutoTokenizer

from diffusers_spacetime import SpacetimeDiTModel, SpacetimeVideoPipeline
from tests.pipelines.conftest import DEFAULT_SIZE, LATENT_CHANNELS, TEXT_DIM, make_components, minilm_path

GLOBAL_BATCH = 4


def make_transformer(components: dict, shard: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    transformer = SpacetimeDiTModel.from_config(components["transformer"].config)
    transformer.load_state_dict(components["transformer"].state_dict())
    transformer.train()
    if shard:
        for block in transformer.blocks:
            fully_shard(block)  # one all-gather per SpacetimeDiTBlock
        fully_shard(transformer)  # the rest: embeddings, norms, projection
    return transformer, torch.optim.AdamW(transformer.parameters(), lr=1e-3)


def step(transformer, optimizer, step_index: int, rank: int, world_size: int) -> float:
    """One optimizer step on this process's rows of a global batch fixed by `step_index`; returns the global loss."""
    generator = torch.Generator().manual_seed(step_index)
    latents = torch.randn(GLOBAL_BATCH, LATENT_CHANNELS, 2, 8, 8, generator=generator)  # (B, C, F, H, W)
    noise = torch.randn(latents.shape, generator=generator)
    sigmas = torch.rand(GLOBAL_BATCH, generator=generator)  # (B,)
    prompt_embeds = torch.randn(GLOBAL_BATCH, 6, TEXT_DIM, generator=generator)  # (B, L, D)
    rows = slice(rank * GLOBAL_BATCH // world_size, (rank + 1) * GLOBAL_BATCH // world_size)
    sigma = sigmas[rows, None, None, None, None]
    noisy = (1 - sigma) * latents[rows] + sigma * noise[rows]
    prediction = transformer(
        hidden_states=noisy, timestep=1000 * sigmas[rows], encoder_hidden_states=prompt_embeds[rows], return_dict=False
    )[0]
    loss = (prediction - (noise[rows] - latents[rows])).pow(2).mean()
    loss.backward()  # FSDP2 reduce-scatters the gradients averaged over the processes, as DDP all-reduces them
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    average = loss.detach().clone()
    dist.all_reduce(average)
    return average.item() / world_size


def main(output_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    shard = world_size > 1
    components = make_components(AutoTokenizer.from_pretrained(minilm_path()), seed=0)
    transformer, optimizer = make_transformer(components, shard)
    losses = [step(transformer, optimizer, index, rank, world_size) for index in range(2)]
    # Sharded checkpoint: every process writes its own shards (torch.distributed.checkpoint)
    state = {"model": get_model_state_dict(transformer), "optim": get_optimizer_state_dict(transformer, optimizer)}
    dcp.save(state, checkpoint_id=str(output_dir / "checkpoint-2"))
    losses.append(step(transformer, optimizer, 2, rank, world_size))

    # Resume: a fresh (sharded) model and optimizer load the checkpoint and redo step 3
    resumed, resumed_optimizer = make_transformer(components, shard)
    state = {"model": get_model_state_dict(resumed), "optim": get_optimizer_state_dict(resumed, resumed_optimizer)}
    dcp.load(state, checkpoint_id=str(output_dir / "checkpoint-2"))
    set_state_dict(resumed, resumed_optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    resumed_loss = step(resumed, resumed_optimizer, 2, rank, world_size)

    # Validation with the sharded transformer: every process runs the pipeline (its forward gathers shards)
    transformer.eval()
    pipe = SpacetimeVideoPipeline(**{**components, "transformer": transformer}, **DEFAULT_SIZE)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        frames = pipe(
            "a red circle moves right", num_inference_steps=2, guidance_scale=3.0,
            generator=torch.Generator().manual_seed(0), output_type="np",
        ).frames  # fmt: skip

    # The consolidated model: a full state dict gathered on every process, saved once
    full = get_model_state_dict(transformer, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        model = SpacetimeDiTModel.from_config(components["transformer"].config)
        model.load_state_dict(full)
        model.save_pretrained(output_dir / "transformer")
        np.save(output_dir / "frames.npy", frames)
        (output_dir / "losses.json").write_text(json.dumps({"losses": losses, "resumed_loss": resumed_loss}))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
