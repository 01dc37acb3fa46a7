"""Run by test_context_parallel.py under torchrun: one generation of the tiny SpacetimeVideoPipeline with its video
tokens split over the gloo processes by diffusers' `enable_parallelism(ContextParallelConfig(...))` (one process: the
reference, no parallelism). Rank 0 writes the frames to OUTPUT_DIR/frames.npy and the number of video tokens its
first transformer block saw to OUTPUT_DIR/tokens.json (half the clip's when the split works).

    python -m torch.distributed.run --nproc_per_node 2 tests/pipelines/context_parallel_worker.py OUTPUT_DIR ulysses
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from diffusers import ContextParallelConfig
from transformers import AutoTokenizer

from tests.pipelines.conftest import call_kwargs, make_pipeline, minilm_path


def main(output_dir: Path, mode: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    world_size = dist.get_world_size()
    pipe = make_pipeline(AutoTokenizer.from_pretrained(minilm_path()))
    if world_size > 1:
        # diffusers 0.42.1 `_resolve_parallel_config` places rank r on device r % torch.accelerator.device_count(),
        # which is 0 on a CPU-only machine (ZeroDivisionError): count the CPU as one device
        if torch.accelerator.device_count() == 0:
            torch.accelerator.device_count = lambda: 1
        pipe.transformer.set_attention_backend("native")
        degree = {"ulysses_degree": world_size} if mode == "ulysses" else {"ring_degree": world_size}
        pipe.transformer.enable_parallelism(config=ContextParallelConfig(**degree))
    tokens = []

    def count_tokens(module, args, kwargs):
        hidden_states = kwargs.get("hidden_states", args[0] if args else None)
        tokens.append(hidden_states.shape[1])  # (B, tokens, D)

    # inside the block: after the plan splits blocks.0's input (a diffusers hook around its forward)
    pipe.transformer.blocks[0].ff.register_forward_pre_hook(count_tokens, with_kwargs=True)
    with torch.no_grad():
        frames = pipe(**call_kwargs(), output_type="np").frames
    if dist.get_rank() == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        np.save(output_dir / "frames.npy", frames)
        (output_dir / "tokens.json").write_text(json.dumps(sorted(set(tokens))))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
