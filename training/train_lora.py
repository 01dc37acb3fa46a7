"""LoRA fine-tuning of the transformer of a saved `SpacetimeVideoPipeline` on a captioned video folder, with accelerate.

    accelerate launch training/train_lora.py --pretrained_model_name_or_path checkpoints/spacetime-shapes \
        --data_dir data/shapes_purple --output_dir runs/lora-purple --rank 16 --max_train_steps 500 \
        --validation_prompt "a purple triangle moves from left to right"

What it does:
- loads the whole pipeline folder (or Hub id) in float32, freezes every base weight (asserted), and adds one peft
  LoRA adapter (`--rank`, `--lora_alpha`, `--lora_dropout`) to the transformer's linear layers named by
  `--target_modules` (diffusers' names: `to_q`, `to_k`, `to_v`, `to_out.0`, `ff.net.0.proj`, `ff.net.2`; a
  `attn1.` / `attn2.` prefix picks self- or cross-attention only). Only the adapter is optimised and checkpointed;
- trains with the flow-matching loss of `train_text_to_video.py` (imported, not copied: same timestep density,
  loss weighting, latent normalisation and per-micro-step random numbers, so a resumed run reproduces the
  uninterrupted run's losses); `--cache_latents` encodes clips and captions once;
- measures the flow-matching loss on the first `--num_eval_clips` training clips with fixed noise and timesteps
  before and after training (the card's "results"), and renders `--validation_prompt` videos with the base model
  before training (`validation/step-0/`) and with the saved adapter loaded into a freshly loaded base pipeline
  after training (`validation/step-<n>/`);
- writes `output_dir/lora/`: `pytorch_lora_weights.safetensors` (the pipeline's `save_lora_weights`: keys
  prefixed `transformer.`, the LoRA config in the file's metadata) and a `README.md` model card
  (`diffusers_spacetime.model_card.lora_card`); `--push_to_hub` uploads that folder with `push_lora_to_hub`.

Load the result as any diffusers LoRA:

    pipe = SpacetimeVideoPipeline.from_pretrained("checkpoints/spacetime-shapes")
    pipe.load_lora_weights("runs/lora-purple/lora", adapter_name="purple")

Checkpoints (`--checkpointing_steps`, `--checkpoints_total_limit`, `--resume_from_checkpoint latest`) follow
`training/checkpointing.py`: atomic `checkpoint-<step>` folders; they hold the adapter weights (not the frozen
base), the optimizer, scheduler and RNG states. Runs on one device or under DDP (`training/accelerate/*.yaml`);
FSDP and DeepSpeed are refused (the adapter is small: plain data parallelism suffices).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):  # run as a file (accelerate launch training/train_lora.py): find `training`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from diffusers import FlowMatchEulerDiscreteScheduler
from huggingface_hub.utils import HFValidationError, validate_repo_id
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from tqdm.auto import tqdm

from diffusers_spacetime import SpacetimeVideoPipeline
from diffusers_spacetime.model_card import lora_card, push_lora_to_hub
from training import checkpointing
from training.data import (
    add_data_arguments,
    check_data_arguments,
    collate_videos,
    dataset_from_args,
    make_dataloader,
)
from training.optimization import add_optimization_arguments, make_lr_scheduler, make_optimizer
from training.train_text_to_video import (
    LatentCacheDataset,
    build_cache,
    check_sizes,
    collate_cached,
    flow_matching_loss,
    log_validation,
)

logger = get_logger(__name__)

ADAPTER_NAME = "default"  # peft's name for the one adapter trained here; files do not store it
DEFAULT_TARGET_MODULES = "to_q,to_k,to_v,to_out.0"
LORA_FOLDER = "lora"


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, each with its help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    group = parser.add_argument_group("base model and adapter")
    group.add_argument(
        "--pretrained_model_name_or_path",
        required=True,
        help="A saved SpacetimeVideoPipeline folder (model_index.json, transformer/, vae/, ...) or its Hub id.",
    )
    group.add_argument(
        "--base_model",
        default=None,
        help="Hub id of the base pipeline for the model card's base_model; default: --pretrained_model_name_or_path "
        "when that is a Hub id, else the folder's name. Required with --push_to_hub from a local folder.",
    )
    group.add_argument("--rank", type=int, default=16, help="LoRA rank r (a positive int).")
    group.add_argument(
        "--lora_alpha",
        type=float,
        default=None,
        help="LoRA alpha; the adapter's output is scaled by alpha / rank. Default: the rank (scale 1).",
    )
    group.add_argument(
        "--lora_dropout", type=float, default=0.0, help="Dropout on the LoRA branch's input, in [0, 1)."
    )
    group.add_argument(
        "--target_modules",
        default=DEFAULT_TARGET_MODULES,
        help="Comma-separated names of the transformer's linear layers to adapt; a name matches a layer whose path "
        "ends with it. Common choices: 'to_q,to_k,to_v,to_out.0' (all attention, the default); add "
        "'ff.net.0.proj,ff.net.2' for the feed-forward; 'attn1.to_q,attn1.to_k,attn1.to_v,attn1.to_out.0' for "
        "self-attention only (motion), 'attn2.to_q,...' for cross-attention only (text binding); 'proj_out'.",
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
    group = parser.add_argument_group("flow matching")
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
        "--caption_dropout",
        type=float,
        default=0.0,
        help="Probability of training on the empty prompt (keeps the adapter's unconditional branch in step).",
    )
    group.add_argument(
        "--cache_latents",
        action="store_true",
        help="Encode every clip (posterior mean/std) and caption once, before training, into --cache_dir.",
    )
    group.add_argument("--cache_dir", default=None, help="Where --cache_latents writes; default: output_dir/cache.")
    add_optimization_arguments(
        parser,
        output_dir_help="Run folder: checkpoints, logs, validation/, train_log.jsonl, lora/.",
        seed_help="Seed of the adapter init, data order, noise and timesteps.",
        train_batch_size=4,
        max_train_time=False,
        learning_rate_help="Peak learning rate of the adapter.",
        lr_scheduler="constant",
        lr_scheduler_help="diffusers.optimization.get_scheduler name: constant, constant_with_warmup, linear, cosine, ...",
        lr_warmup_steps=0,
        adam_weight_decay_help="AdamW weight decay of the adapter.",
        mixed_precision_help="Autocast precision; the frozen base weights are stored in it too (the adapter stays "
        "float32). Default: the accelerate config's.",
    )
    checkpointing.add_checkpoint_arguments(parser)
    group = parser.add_argument_group("evaluation and validation")
    group.add_argument(
        "--num_eval_clips",
        type=int,
        default=8,
        help="Fine-tune-set loss before/after training on the first n clips, fixed noise and timesteps (0: off).",
    )
    group.add_argument(
        "--validation_prompt",
        nargs="*",
        default=None,
        help="Prompt(s) rendered before and after training to output_dir/validation/step-<n>/<i>.mp4; default: the "
        "data's first caption; the flag with no prompt: no videos.",
    )
    group.add_argument(
        "--validation_inference_steps", type=int, default=20, help="Scheduler steps of a validation video."
    )
    group.add_argument(
        "--validation_guidance_scale", type=float, default=5.0, help="Guidance scale of validation videos."
    )
    group = parser.add_argument_group("hub")
    group.add_argument(
        "--push_to_hub", action="store_true", help="Upload output_dir/lora (weights and card) to --hub_model_id."
    )
    group.add_argument("--hub_model_id", default=None, help="Hub repo of the adapter, 'user/name'.")
    group.add_argument("--hub_token", default=None, help="Hub write token; default: the logged-in user's.")
    return parser


def _is_hub_id(reference: str) -> bool:
    if os.path.exists(reference) or reference.startswith((".", "/", "~")) or reference.count("/") != 1:
        return False
    try:
        validate_repo_id(reference)
    except HFValidationError:
        return False
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses and checks the flags; a bad value raises a ValueError that names its flag."""
    args = build_parser().parse_args(argv)
    check_data_arguments(args)
    checkpointing.check_run_arguments(args)
    if args.rank < 1:
        raise ValueError(f"--rank must be a positive int, got {args.rank}")
    if args.lora_alpha is not None:
        if args.lora_alpha <= 0:
            raise ValueError(f"--lora_alpha must be positive, got {args.lora_alpha}")
        if args.lora_alpha.is_integer():
            args.lora_alpha = int(args.lora_alpha)  # as peft and the card write it: 8, not 8.0
    if not 0.0 <= args.lora_dropout < 1.0:
        raise ValueError(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}")
    if not 0.0 <= args.caption_dropout <= 1.0:
        raise ValueError(f"--caption_dropout is a probability in [0, 1], got {args.caption_dropout}")
    if not parse_target_modules(args.target_modules):
        raise ValueError(f"--target_modules names no layer: {args.target_modules!r}")
    if args.num_eval_clips < 0:
        raise ValueError(f"--num_eval_clips must be 0 or more, got {args.num_eval_clips}")
    if args.push_to_hub:
        if not args.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id")
        if args.base_model is None and not _is_hub_id(args.pretrained_model_name_or_path):
            raise ValueError(
                "--push_to_hub from a local --pretrained_model_name_or_path needs --base_model (the base pipeline's "
                "Hub id, written into the card)"
            )
    return args


# 1. The base pipeline and the adapter
def load_base_pipeline(args: argparse.Namespace) -> SpacetimeVideoPipeline:
    """The saved pipeline in float32, every weight frozen."""
    source = args.pretrained_model_name_or_path
    if not _is_hub_id(source):
        if not os.path.isdir(source):
            raise ValueError(f"--pretrained_model_name_or_path: {source!r} is neither a folder nor a Hub id")
        if not os.path.isfile(os.path.join(source, "model_index.json")):
            raise ValueError(
                f"--pretrained_model_name_or_path: {source!r} has no model_index.json (a SpacetimeVideoPipeline folder "
                "is what train_text_to_video.py writes to output_dir/pipeline)"
            )
    try:
        pipe = SpacetimeVideoPipeline.from_pretrained(source, dtype=torch.float32, use_safetensors=True)
    except OSError as error:  # a Hub id that does not resolve (or no network)
        raise ValueError(f"--pretrained_model_name_or_path: could not load {source!r}: {error}") from error
    for module in (pipe.text_encoder, pipe.vae, pipe.transformer):
        module.requires_grad_(False).eval()
    return pipe


def parse_target_modules(value: str) -> list[str]:
    return [name.strip() for name in value.split(",") if name.strip()]


def check_target_modules(transformer: torch.nn.Module, target_modules: list[str]) -> None:
    """Every name must match a linear layer (peft's rule: the module path equals it or ends with '.' + it)."""
    linear = [name for name, module in transformer.named_modules() if isinstance(module, torch.nn.Linear)]
    unmatched = [
        target for target in target_modules if not any(n == target or n.endswith(f".{target}") for n in linear)
    ]
    if unmatched:
        examples = sorted({name.split(".", 2)[-1] for name in linear if name.startswith("blocks.0.")})
        raise ValueError(
            f"--target_modules {unmatched} match no linear layer of {type(transformer).__name__}; names in a block: "
            f"{examples}, e.g. '{DEFAULT_TARGET_MODULES}'"
        )


def add_lora(transformer: torch.nn.Module, args: argparse.Namespace) -> LoraConfig:
    """Adds the trainable adapter to a frozen transformer and checks that nothing else trains."""
    target_modules = parse_target_modules(args.target_modules)
    check_target_modules(transformer, target_modules)
    config = LoraConfig(
        r=args.rank,
        lora_alpha=args.lora_alpha if args.lora_alpha is not None else args.rank,
        lora_dropout=args.lora_dropout,
        target_modules=target_modules,
    )
    transformer.add_adapter(config, adapter_name=ADAPTER_NAME)
    trainable = [name for name, param in transformer.named_parameters() if param.requires_grad]
    assert trainable and all(".lora_" in name for name in trainable), f"base weights train: {trainable[:3]}"
    return config


def cast_frozen_base(transformer: torch.nn.Module, dtype: torch.dtype) -> None:
    """Stores the frozen base weights in the autocast dtype (memory); the adapter, and the modules the model keeps in
    float32 or skips in layerwise casting (embeddings, norms, modulation tables), stay float32."""
    keep = [
        *(getattr(transformer, "_keep_in_fp32_modules", None) or ()),
        *(getattr(transformer, "_skip_layerwise_casting_patterns", None) or ()),
    ]
    for name, param in transformer.named_parameters():
        if not param.requires_grad and not any(pattern in name for pattern in keep):
            param.data = param.data.to(dtype)


def lora_state(transformer: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict]:
    """(LoRA weights without the adapter name, LoRA config as a dict), what `save_lora_weights` takes."""
    layers = get_peft_model_state_dict(transformer, adapter_name=ADAPTER_NAME)
    return {key: value.float() for key, value in layers.items()}, transformer.peft_config[ADAPTER_NAME].to_dict()


def load_lora_state(transformer: torch.nn.Module, folder: str | Path) -> None:
    """Loads a `save_lora_weights` folder into the already added adapter (checkpoint resume)."""
    state_dict = SpacetimeVideoPipeline.lora_state_dict(str(folder))
    state_dict = {key.removeprefix("transformer."): value for key, value in state_dict.items()}
    result = set_peft_model_state_dict(transformer, state_dict, adapter_name=ADAPTER_NAME)
    if result.unexpected_keys:
        raise ValueError(f"The checkpoint's adapter does not fit this run's: unexpected {result.unexpected_keys[:3]}")


# 2. Batches -> normalised latents and text states; the fixed-noise evaluation
def _loss_args(args: argparse.Namespace) -> SimpleNamespace:
    """What `flow_matching_loss` reads: this script's timestep density, no conditioning frames (text-to-video)."""
    return SimpleNamespace(
        weighting_scheme=args.weighting_scheme,
        logit_mean=args.logit_mean,
        logit_std=args.logit_std,
        mode_scale=args.mode_scale,
        condition_frames_prob=0.0,
        max_condition_frames=1,
    )


@torch.no_grad()
def encode_batch(batch: dict, pipe: SpacetimeVideoPipeline, args, generator, device, weight_dtype):
    """(latents (B, C, F', h, w) normalised, prompt_embeds (B, L, D), prompt_mask (B, L)) of a loader batch."""
    if "latent_mean" in batch:  # --cache_latents
        mean, std = batch["latent_mean"].to(device), batch["latent_std"].to(device)
        latents = mean + std * torch.randn(mean.shape, device=device, generator=generator)
        prompt_embeds, prompt_mask = batch["prompt_embeds"].to(device), batch["prompt_attention_mask"].to(device)
    else:
        pixel_values = batch["pixel_values"].to(device=device, dtype=weight_dtype)  # (B, 3, F, H, W)
        latents = pipe.vae.encode(pixel_values).latent_dist.sample(generator=generator)
        prompt_embeds, prompt_mask, _, _ = pipe.encode_prompt(
            batch["captions"],
            do_classifier_free_guidance=False,
            max_sequence_length=args.max_sequence_length,
            device=device,
            dtype=torch.float32,
        )
    latents = pipe.normalize_latents(latents.float())
    return latents, prompt_embeds.float(), prompt_mask.long()


def make_eval_set(dataset, collate, pipe, args, device, weight_dtype) -> list[tuple[torch.Tensor, ...]]:
    """The first --num_eval_clips clips, encoded once: (latents, prompt_embeds, prompt_mask) each with batch 1."""
    eval_set = []
    for index in range(min(args.num_eval_clips, len(dataset))):
        batch = collate([dataset[index]])
        generator = torch.Generator(device=device).manual_seed(args.seed + index)
        eval_set.append(encode_batch(batch, pipe, args, generator, device, weight_dtype))
    return eval_set


@torch.no_grad()
def evaluate_loss(
    transformer, eval_set, noise_scheduler, args, patch_frames: int, autocast=contextlib.nullcontext
) -> float | None:
    """Mean flow-matching loss over `eval_set` with noise and timesteps fixed per clip: before/after comparable.

    `autocast` makes the mixed-precision context (`accelerator.autocast`)."""
    if not eval_set:
        return None
    was_training = transformer.training
    transformer.eval()
    total = 0.0
    for index, (latents, prompt_embeds, prompt_mask) in enumerate(eval_set):
        generator = torch.Generator(device=latents.device).manual_seed(args.seed + 100_003 + index)
        with autocast():
            loss = flow_matching_loss(
                transformer, latents, prompt_embeds, prompt_mask, noise_scheduler, _loss_args(args), generator,
                patch_frames,
            )  # fmt: skip
        total += loss.item()
    transformer.train(was_training)
    return total / len(eval_set)


# 3. Card facts
def hardware_description(accelerator: Accelerator) -> str:
    device = accelerator.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{device.type.upper()} ({platform.machine()}, {torch.get_num_threads()} threads)"
    return f"{accelerator.num_processes} x {name}"


def base_model_id(args: argparse.Namespace) -> str:
    """The card's base_model: never a local path (it would leak the trainer's file system)."""
    if args.base_model:
        return args.base_model
    source = args.pretrained_model_name_or_path
    return source if _is_hub_id(source) else Path(source).resolve().name


# 4. Training
def main(args: argparse.Namespace) -> dict:
    """Trains the adapter; returns {"losses", "global_step", "lora_path", "eval_loss_before", "eval_loss_after",
    "validation_videos": {"before", "after"}, "train_time_s", "adapter_bytes"} (paths and evaluation: main process)."""
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ValueError(
            "train_lora.py runs on one device or under DDP; the accelerate config asks for FSDP/DeepSpeed"
        )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        checkpointing.remove_stale(output_dir)
        accelerator.init_trackers(
            "train_lora", config=checkpointing.tracker_config(args)
        )  # before the base model's videos
    device = accelerator.device

    # 4a. The frozen base, the data, and the base model's validation videos
    pipe = load_base_pipeline(args)
    pipe.set_progress_bar_config(disable=True)
    transformer = pipe.transformer
    check_sizes(args, pipe.vae, transformer)
    check_target_modules(transformer, parse_target_modules(args.target_modules))  # fail before data and videos
    # Training noise levels from the checkpoint's scheduler settings (its `shift`), as train_text_to_video.py sampled.
    noise_scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    patch_frames = transformer.config.patch_size[0]
    dataset = dataset_from_args(args)
    logger.info(f"Data {dataset.format_summary()}")
    prompts = args.validation_prompt
    if prompts is None:  # not given: the first caption; given empty: no validation videos
        prompts = [caption for caption in dataset.captions if caption][:1]
    resume_path = checkpointing.resolve_resume_path(output_dir, args.resume_from_checkpoint)
    videos = {"before": [], "after": []}
    if prompts and accelerator.is_main_process and resume_path is None:
        pipe.to(device)
        videos["before"] = log_validation(args, accelerator, pipe, prompts, 0)

    # 4b. The adapter; the base stored in the autocast dtype
    lora_config = add_lora(transformer, args)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    pipe.to(device)
    if weight_dtype != torch.float32:
        cast_frozen_base(transformer, weight_dtype)
        pipe.text_encoder.to(dtype=weight_dtype)
        pipe.vae.to(dtype=weight_dtype)
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    num_trainable = sum(param.numel() for param in transformer.parameters() if param.requires_grad)
    logger.info(
        f"LoRA rank {args.rank} on {sorted(lora_config.target_modules)}: {num_trainable:,} trainable parameters"
    )

    # 4c. Data (optionally through the latent cache of train_text_to_video.py) and the fixed evaluation set
    train_dataset, collate = dataset, collate_videos
    if args.cache_latents:
        fingerprint = {
            "files": [entry.file_name for entry in dataset.entries],
            "captions": dataset.captions,
            "pipeline": args.pretrained_model_name_or_path,
            "vae_config": {key: value for key, value in pipe.vae.config.items() if not key.startswith("_")},
            "seed": args.seed,
            "max_sequence_length": args.max_sequence_length,
            "clip": [args.num_frames, args.height, args.width, args.frame_stride, args.target_fps, args.random_start],
            "buckets": args.buckets,
            "dtype": str(weight_dtype),
        }
        cache_dir = build_cache(args, accelerator, dataset, pipe.vae, pipe, json.loads(json.dumps(fingerprint)))
        train_dataset, collate = LatentCacheDataset(cache_dir, dataset), collate_cached
    empty_embeds, empty_mask, _, _ = pipe.encode_prompt(
        [""], do_classifier_free_guidance=False, max_sequence_length=args.max_sequence_length, device=device,
        dtype=torch.float32,
    )  # fmt: skip
    eval_set = []
    if accelerator.is_main_process:
        eval_set = make_eval_set(train_dataset, collate, pipe, args, device, weight_dtype)
    eval_loss_before = evaluate_loss(transformer, eval_set, noise_scheduler, args, patch_frames, accelerator.autocast)
    train_dataloader = make_dataloader(
        train_dataset, args.train_batch_size, seed=args.seed, num_workers=args.dataloader_num_workers
    )
    train_dataloader.collate_fn = collate
    batch_sampler = train_dataloader.batch_sampler

    # 4d. Optimizer over the adapter only, schedule, accelerate; checkpoints hold the adapter, not the frozen base
    optimizer = make_optimizer([param for param in transformer.parameters() if param.requires_grad], args)
    transformer, optimizer, train_dataloader = accelerator.prepare(transformer, optimizer, train_dataloader)

    def save_model_hook(models, weights, folder):
        for _ in range(len(weights)):
            weights.pop()  # the frozen base is not saved: it is the pretrained folder
        if accelerator.is_main_process:
            layers, config = lora_state(accelerator.unwrap_model(models[0]))
            SpacetimeVideoPipeline.save_lora_weights(
                folder, transformer_lora_layers=layers, transformer_lora_adapter_metadata=config
            )

    def load_model_hook(models, folder):
        model = accelerator.unwrap_model(models.pop())
        load_lora_state(model, folder)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)

    lr_scheduler, updates_per_epoch, max_train_steps, num_epochs = make_lr_scheduler(
        args, accelerator, optimizer, len(train_dataloader)
    )

    # 4e. Resume
    if args.resume_from_checkpoint and resume_path is None:
        logger.info("No complete checkpoint to resume from: starting a fresh run")
    global_step, first_epoch, skip_batches = checkpointing.resume(
        accelerator, output_dir, resume_path, updates_per_epoch, args.gradient_accumulation_steps, logger
    )

    # 4f. Loop
    logger.info(
        f"{len(dataset)} clips, {num_epochs} epochs, {max_train_steps} steps of {args.train_batch_size} x "
        f"{accelerator.num_processes} processes x {args.gradient_accumulation_steps} accumulation"
    )
    progress = tqdm(
        total=max_train_steps, initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    transformer.train()
    trainable_params = [param for param in transformer.parameters() if param.requires_grad]
    loss_args = _loss_args(args)
    losses, step_loss, skipped_files = [], 0.0, set()
    micro_step = global_step * args.gradient_accumulation_steps
    train_start = step_start = time.perf_counter()
    for epoch in range(first_epoch, num_epochs):
        if global_step >= max_train_steps:  # resumed from the final step: nothing left to train
            break
        batch_sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        loader = train_dataloader
        if epoch == first_epoch and skip_batches:
            loader = accelerator.skip_first_batches(train_dataloader, skip_batches)
        loader.set_epoch(epoch)  # a resumed (or skipping) loader counts epochs from 0: give it the real one
        for batch in loader:
            skipped_files.update(batch["skipped"])
            generator = checkpointing.step_generator(
                args.seed, micro_step, accelerator.process_index, device, accelerator.num_processes
            )
            # LoRA dropout draws from the global RNG: key it on the micro-batch too, so that any process count
            # (and a resumed run) draws the same masks for the same batch
            torch.manual_seed(
                checkpointing.micro_batch_seed(
                    args.seed, micro_step, accelerator.process_index, accelerator.num_processes, stream=1
                )
            )
            micro_step += 1
            with accelerator.accumulate(transformer):
                latents, prompt_embeds, prompt_mask = encode_batch(batch, pipe, args, generator, device, weight_dtype)
                # Caption dropout: the empty prompt's embedding, as the pipeline's unconditional branch
                drop = torch.rand(latents.shape[0], device=device, generator=generator) < args.caption_dropout
                prompt_embeds = torch.where(drop[:, None, None], empty_embeds.to(prompt_embeds), prompt_embeds)
                prompt_mask = torch.where(drop[:, None], empty_mask.to(prompt_mask), prompt_mask)
                loss = flow_matching_loss(
                    transformer, latents, prompt_embeds, prompt_mask, noise_scheduler, loss_args, generator,
                    patch_frames,
                )  # fmt: skip
                average = accelerator.gather(loss.detach()[None]).mean()
                if not torch.isfinite(average):
                    raise FloatingPointError(
                        f"Loss is {average.item()} at step {global_step + 1} (epoch {epoch}): stopping. Lower "
                        "--learning_rate, or resume from the last checkpoint with --mixed_precision no."
                    )
                step_loss += average.item() / args.gradient_accumulation_steps
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable_params, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            if not accelerator.sync_gradients:
                continue
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
            if global_step >= max_train_steps:
                break
        if global_step >= max_train_steps:
            break
    progress.close()
    train_time = time.perf_counter() - train_start
    if skipped_files:
        logger.warning(f"{len(skipped_files)} files failed to decode during training: {sorted(skipped_files)}")

    # 5. The adapter file and its card; the fine-tune-set loss after; validation from the saved file
    accelerator.wait_for_everyone()
    result = {"losses": losses, "global_step": global_step, "train_time_s": train_time}
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(transformer)
        eval_loss_after = evaluate_loss(trained, eval_set, noise_scheduler, args, patch_frames, accelerator.autocast)
        layers, config = lora_state(trained)
        log = checkpointing.read_train_log(output_dir)  # the whole run, resumes included
        history = [row["loss"] for row in log]
        training = {
            "steps": global_step,
            "epochs": num_epochs,
            "batch_size": args.train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "total_batch_size": args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps,
            "learning_rate": args.learning_rate,
            "lr_scheduler": args.lr_scheduler,
            "lr_warmup_steps": args.lr_warmup_steps,
            "optimizer": "AdamW (adapter weights only)",
            "mixed_precision": accelerator.mixed_precision,
            "gradient_checkpointing": args.gradient_checkpointing,
            "resolution": f"{args.height}x{args.width}",
            "num_frames": args.num_frames,
            "dataset": f"`{Path(args.data_dir).resolve().name}` (a captioned video folder)"
            if args.data_dir
            else f"`{args.dataset_name}` (a Hugging Face dataset)",
            "num_clips": len(dataset),
            "hardware": hardware_description(accelerator),
            "wall_time_s": sum(row.get("step_time", 0.0) for row in log),  # optimizer steps, resumes included
            "seed": args.seed,
            "final_loss": history[-1] if history else None,
            "lora_dropout": args.lora_dropout,
        }
        results = {}
        note = f"flow-matching loss on the first {len(eval_set)} training clips, fixed noise and timesteps"
        if eval_loss_before is not None:
            results["Fine-tune set loss, base"] = {"value": eval_loss_before, "note": note}
            results["Fine-tune set loss, with adapter"] = {"value": eval_loss_after, "note": note}
        if history:
            results["Training loss, first / last step"] = {
                "value": f"{history[0]:.4g} / {history[-1]:.4g}",
                "note": "one noise draw per step: noisy",
            }
        card_kwargs = {
            "training": training,
            "results": results,
            "usage": {"prompt": prompts[0]} if prompts else None,
        }
        repo_id = args.hub_model_id or output_dir.resolve().name

        def save_adapter(folder: str) -> None:
            SpacetimeVideoPipeline.save_lora_weights(
                folder, transformer_lora_layers=layers, transformer_lora_adapter_metadata=config
            )
            card = lora_card(folder, repo_id, base_model=base_model_id(args), **card_kwargs)
            card.save(os.path.join(folder, "README.md"))

        lora_path = checkpointing.save_folder_atomically(save_adapter, output_dir / LORA_FOLDER)
        adapter_file = lora_path / "pytorch_lora_weights.safetensors"
        result.update(
            lora_path=str(lora_path),
            adapter_bytes=adapter_file.stat().st_size,
            eval_loss_before=eval_loss_before,
            eval_loss_after=eval_loss_after,
        )
        logger.info(f"Saved the adapter ({adapter_file.stat().st_size / 1e6:.2f} MB) to {lora_path}")

        if prompts:  # what users get: a freshly loaded base with the saved file
            del trained, layers  # free the training copy before loading the base again
            pipe = transformer = optimizer = lr_scheduler = train_dataloader = None
            accelerator.free_memory()
            final = load_base_pipeline(args)
            final.load_lora_weights(str(lora_path), adapter_name=ADAPTER_NAME)
            final.to(device)
            videos["after"] = log_validation(args, accelerator, final, prompts, global_step)
        result["validation_videos"] = videos
        summary = {key: value for key, value in result.items() if key != "losses"}
        summary.update(first_loss=history[0] if history else None, last_loss=history[-1] if history else None)
        (output_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        if args.push_to_hub:
            commit = push_lora_to_hub(
                lora_path, args.hub_model_id, base_model=base_model_id(args), token=args.hub_token, **card_kwargs
            )
            result["hub_commit"] = getattr(commit, "oid", None)
            logger.info(f"Pushed the adapter to {args.hub_model_id}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main(parse_args())
