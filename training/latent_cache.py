"""The latent cache of `--cache_latents`: each clip's posterior mean/std and unpadded caption embedding, encoded once
into one safetensors file per clip, reused by every later run whose data and models match its fingerprint."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import safetensors.torch
import torch
from tqdm.auto import tqdm

from training.data import FrameCountBatchSampler, collate_videos

logger = logging.getLogger(__name__)

CACHE_SUFFIX = ".safetensors"  # tensors only: `sequence_length` is stored as a 0-d int64 tensor


class LatentCacheDataset(torch.utils.data.Dataset):
    """Reads the per-clip cache files that `build_cache` wrote; same indices and frame counts as the video dataset."""

    def __init__(self, cache_dir: Path, dataset):
        self.cache_dir, self.frame_counts, self.captions = cache_dir, dataset.frame_counts, dataset.captions
        self.batch_keys = dataset.batch_keys

    def __len__(self) -> int:
        return len(self.frame_counts)

    def __getitem__(self, index: int) -> dict:
        entry = safetensors.torch.load_file(self.cache_dir / f"{index:08d}{CACHE_SUFFIX}")
        return entry | {"sequence_length": int(entry["sequence_length"]), "index": index}


def collate_cached(examples: list[dict]) -> dict:
    """Stacks cached samples; caption embeddings are zero-padded back to the encoder's padded length."""
    length = examples[0]["sequence_length"]
    embeds = torch.zeros(len(examples), length, examples[0]["prompt_embeds"].shape[-1])
    mask = torch.zeros(len(examples), length, dtype=torch.long)
    for row, example in enumerate(examples):
        tokens = example["prompt_embeds"].shape[0]
        embeds[row, :tokens], mask[row, :tokens] = example["prompt_embeds"], 1
    return {
        "latent_mean": torch.stack([example["latent_mean"] for example in examples]),
        "latent_std": torch.stack([example["latent_std"] for example in examples]),
        "prompt_embeds": embeds,
        "prompt_attention_mask": mask,
        "indices": torch.tensor([example["index"] for example in examples]),
        "skipped": [],
    }


def cache_fingerprint(dataset, vae, args, weight_dtype: torch.dtype, sources: dict) -> dict:
    """What a cache was built from: the clips and captions, the VAE, `sources` (where the models came from), and the
    data flags that shape a clip (--seed, --max_sequence_length, --num_frames, --height, --width, --frame_stride,
    --target_fps, --random_start, --buckets)."""
    fingerprint = {
        "files": [entry.file_name for entry in dataset.entries],
        "captions": dataset.captions,
        **sources,
        "vae_config": {key: value for key, value in vae.config.items() if not key.startswith("_")},
        "seed": args.seed,
        "max_sequence_length": args.max_sequence_length,
        "clip": [args.num_frames, args.height, args.width, args.frame_stride, args.target_fps, args.random_start],
        "buckets": args.buckets,
        "dtype": str(weight_dtype),
    }
    return json.loads(json.dumps(fingerprint))  # as it reads back from fingerprint.json (tuples -> lists)


@torch.no_grad()
def build_cache(
    accelerator,
    dataset,
    vae,
    prompt_encoder,
    fingerprint: dict,
    cache_dir: Path,
    batch_size: int,
    max_sequence_length: int | None,
    num_workers: int = 0,
) -> Path:
    """Encodes every clip and caption once (each process a share), unless a cache with this fingerprint exists."""
    fingerprint_file = cache_dir / "fingerprint.json"
    if accelerator.is_main_process:
        current = json.loads(fingerprint_file.read_text()) if fingerprint_file.exists() else None
        if current is not None and current != fingerprint:
            logger.info(f"{cache_dir} was built for other data or models: rebuilding it")
            shutil.rmtree(cache_dir)
        cache_dir.mkdir(parents=True, exist_ok=True)
        if current != fingerprint:  # written once and atomically: another run may be reading this cache
            tmp = fingerprint_file.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(fingerprint, indent=2))
            os.replace(tmp, fingerprint_file)
    accelerator.wait_for_everyone()
    # This process's share of the clips not cached yet, encoded in batches of one frame count
    todo = [
        index
        for index in range(accelerator.process_index, len(dataset), accelerator.num_processes)
        if not (cache_dir / f"{index:08d}{CACHE_SUFFIX}").exists()
    ]
    sampler = FrameCountBatchSampler(
        [dataset.batch_keys[index] for index in todo], batch_size, shuffle=False, drop_last=False
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, todo),
        batch_sampler=sampler,
        collate_fn=collate_videos,
        num_workers=num_workers,
    )
    progress = tqdm(total=len(todo), desc="Caching latents", disable=not accelerator.is_local_main_process)
    for batch in loader:
        posterior = vae.encode(batch["pixel_values"].to(accelerator.device, vae.dtype)).latent_dist
        embeds, mask, _, _ = prompt_encoder.encode_prompt(
            batch["captions"],
            do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length,
            device=accelerator.device,
            dtype=torch.float32,
        )
        for row, index in enumerate(batch["indices"].tolist()):
            entry = {
                "latent_mean": posterior.mean[row].float().cpu(),
                "latent_std": posterior.std[row].float().cpu(),
                "prompt_embeds": embeds[row, : int(mask[row].sum())].cpu(),  # padded positions are zeros: not stored
                "sequence_length": torch.tensor(embeds.shape[1], dtype=torch.int64),
            }
            path = cache_dir / f"{index:08d}{CACHE_SUFFIX}"
            # safetensors wants contiguous tensors that share no memory (the slices of a batch do not qualify)
            safetensors.torch.save_file(
                {name: tensor.contiguous().clone() for name, tensor in entry.items()}, path.with_suffix(".tmp")
            )
            os.replace(path.with_suffix(".tmp"), path)
        progress.update(len(batch["indices"]))
    progress.close()
    accelerator.wait_for_everyone()
    return cache_dir


def training_dataloader(args, accelerator, dataset, vae, prompt_encoder, weight_dtype: torch.dtype, sources: dict):
    """(the dataset the loader reads, its dataloader): `dataset` itself, or with --cache_latents its latent cache
    (built first where missing; `sources` go into the fingerprint). Reads --cache_latents, --cache_dir,
    --output_dir, --train_batch_size, --seed, --dataloader_num_workers, --max_sequence_length."""
    from training.data import make_dataloader

    train_dataset, collate = dataset, collate_videos
    if args.cache_latents:
        if args.random_start:
            logger.warning("--cache_latents keeps each clip's epoch-0 frames: --random_start draws once")
        fingerprint = cache_fingerprint(dataset, vae, args, weight_dtype, sources)
        cache_dir = Path(args.cache_dir or Path(args.output_dir) / "cache")
        build_cache(
            accelerator, dataset, vae, prompt_encoder, fingerprint, cache_dir, args.train_batch_size,
            args.max_sequence_length, args.dataloader_num_workers,
        )  # fmt: skip
        train_dataset, collate = LatentCacheDataset(cache_dir, dataset), collate_cached
    dataloader = make_dataloader(
        train_dataset, args.train_batch_size, seed=args.seed, num_workers=args.dataloader_num_workers
    )
    dataloader.collate_fn = collate
    return train_dataset, dataloader
