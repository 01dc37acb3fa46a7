"""LoRA fine-tuning of the transformer of a saved `SpacetimeVideoPipeline` on a captioned video folder, with accelerate.

    accelerate launch training/train_lora.py --pretrained_model_name_or_path checkpoints/spacetime-shapes \
        --data_dir data/shapes_purple --output_dir runs/lora-purple --rank 16 --max_train_steps 500 \
        --validation_prompt "a purple triangle moves from left to right"

What it does:
- loads the whole pipeline folder (or Hub id) in float32, freezes every base weight (asserted), and adds one peft
  LoRA adapter (`--rank`, `--lora_alpha`, `--lora_dropout`) to the transformer's linear layers named by
  `--target_modules` (diffusers' names: `to_q`, `to_k`, `to_v`, `to_out.0`, `ff.net.0.proj`, `ff.net.2`; a
  `attn1.` / `attn2.` prefix picks self- or cross-attention only). Only the adapter is optimised and checkpointed;
- trains with the flow-matching step and the loop that `train_text_to_video.py` runs (`training/flow_matching.py`,
  `training/loop.py`: same timestep density, loss weighting, latent normalisation and per-micro-step random
  numbers, so a resumed run reproduces the uninterrupted run's losses); `--cache_latents` encodes clips and
  captions once;
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
import os
import sys
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a file (accelerate launch training/train_lora.py): find `training`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from accelerate.logging import get_logger
from accelerate.utils import DistributedType
from diffusers import FlowMatchEulerDiscreteScheduler
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from diffusers_spacetime import SpacetimeVideoPipeline
from diffusers_spacetime.hub import is_hub_id
from diffusers_spacetime.model_card import lora_card, push_lora_to_hub
from training import checkpointing, flags, flow_matching
from training.card_facts import training_facts, training_loss_results
from training.data import add_data_arguments, check_data_arguments, dataset_from_args
from training.latent_cache import training_dataloader
from training.loop import LoopResult, folder_batches, make_accelerator, train, weight_dtype
from training.optimization import make_optimizer
from training.run_log import write_results
from training.train_text_to_video import check_sizes
from training.validation_videos import log_validation

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
    flags.add_value_flags(
        group,
        ("--base_model", None, None,
         "Hub id of the base pipeline for the model card's base_model; default: --pretrained_model_name_or_path when "
         "that is a Hub id, else the folder's name. Required with --push_to_hub from a local folder."),
        ("--rank", int, 16, "LoRA rank r (a positive int)."),
        ("--lora_alpha", float, None,
         "LoRA alpha; the adapter's output is scaled by alpha / rank. Default: the rank (scale 1)."),
        ("--lora_dropout", float, 0.0, "Dropout on the LoRA branch's input, in [0, 1)."),
    )  # fmt: skip
    group.add_argument(
        "--target_modules",
        default=DEFAULT_TARGET_MODULES,
        help="Comma-separated names of the transformer's linear layers to adapt; a name matches a layer whose path "
        "ends with it. Common choices: 'to_q,to_k,to_v,to_out.0' (all attention, the default); add "
        "'ff.net.0.proj,ff.net.2' for the feed-forward; 'attn1.to_q,attn1.to_k,attn1.to_v,attn1.to_out.0' for "
        "self-attention only (motion), 'attn2.to_q,...' for cross-attention only (text binding); 'proj_out'.",
    )
    flags.add_text_encoder_arguments(group, encoder_paths=False)
    group.add_argument(
        "--gradient_checkpointing", action="store_true", help="Recompute block activations in backward."
    )
    flags.add_flow_matching_arguments(
        parser,
        caption_dropout=0.0,
        caption_dropout_help="Probability of training on the empty prompt (keeps the adapter's unconditional branch "
        "in step).",
    )
    flags.add_optimization_arguments(
        parser,
        output_dir_help="Run folder: checkpoints, logs, validation/, train_log.jsonl, lora/.",
        seed_help="Seed of the adapter init, data order, noise and timesteps.",
        train_batch_size=4,
        learning_rate_help="Peak learning rate of the adapter.",
        lr_scheduler="constant",
        lr_scheduler_help="diffusers.optimization.get_scheduler name: constant, constant_with_warmup, linear, cosine, ...",
        lr_warmup_steps=0,
        adam_weight_decay_help="AdamW weight decay of the adapter.",
        mixed_precision_help="Autocast precision; the frozen base weights are stored in it too (the adapter stays "
        "float32). Default: the accelerate config's.",
    )
    flags.add_checkpoint_arguments(parser)
    group = parser.add_argument_group("evaluation and validation")
    flags.add_value_flags(
        group,
        ("--num_eval_clips", int, 8,
         "Fine-tune-set loss before/after training on the first n clips, fixed noise and timesteps (0: off)."),
    )  # fmt: skip
    group.add_argument(
        "--validation_prompt",
        nargs="*",
        default=None,
        help="Prompt(s) rendered before and after training to output_dir/validation/step-<n>/<i>.mp4; default: the "
        "data's first caption; the flag with no prompt: no videos.",
    )
    flags.add_validation_video_arguments(group)
    flags.add_hub_arguments(parser, uploads="output_dir/lora (weights and card)", repo="adapter")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses and checks the flags; a bad value raises a ValueError that names its flag."""
    args = build_parser().parse_args(argv)
    check_data_arguments(args)
    flags.check_run_arguments(args)
    if args.rank < 1:
        raise ValueError(f"--rank must be a positive int, got {args.rank}")
    if args.lora_alpha is not None:
        if args.lora_alpha <= 0:
            raise ValueError(f"--lora_alpha must be positive, got {args.lora_alpha}")
        if args.lora_alpha.is_integer():
            args.lora_alpha = int(args.lora_alpha)  # as peft and the card write it: 8, not 8.0
    if not 0.0 <= args.lora_dropout < 1.0:
        raise ValueError(f"--lora_dropout must be in [0, 1), got {args.lora_dropout}")
    if not parse_target_modules(args.target_modules):
        raise ValueError(f"--target_modules names no layer: {args.target_modules!r}")
    if args.num_eval_clips < 0:
        raise ValueError(f"--num_eval_clips must be 0 or more, got {args.num_eval_clips}")
    if args.push_to_hub and args.base_model is None and not is_hub_id(args.pretrained_model_name_or_path):
        raise ValueError(
            "--push_to_hub from a local --pretrained_model_name_or_path needs --base_model (the base pipeline's "
            "Hub id, written into the card)"
        )
    return args


# 1. The base pipeline and the adapter
def load_base_pipeline(args: argparse.Namespace) -> SpacetimeVideoPipeline:
    """The saved pipeline in float32, every weight frozen."""
    source = args.pretrained_model_name_or_path
    if not is_hub_id(source):
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


# 2. The fixed-noise evaluation on the fine-tune set
def make_eval_set(dataset, collate, pipe, args, device, weight_dtype) -> list[tuple[torch.Tensor, ...]]:
    """The first --num_eval_clips clips, encoded once: (latents, prompt_embeds, prompt_mask) each with batch 1."""
    eval_set = []
    for index in range(min(args.num_eval_clips, len(dataset))):
        batch = collate([dataset[index]])
        generator = torch.Generator(device=device).manual_seed(args.seed + index)
        eval_set.append(
            flow_matching.encode_batch(
                batch, pipe.vae, pipe, pipe.normalize_latents, generator, device, weight_dtype,
                args.max_sequence_length,
            )
        )  # fmt: skip
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
    density = flow_matching.TimestepDensity.from_args(args)
    for index, (latents, prompt_embeds, prompt_mask) in enumerate(eval_set):
        generator = torch.Generator(device=latents.device).manual_seed(args.seed + 100_003 + index)
        with autocast():
            loss = flow_matching.flow_matching_loss(
                transformer, latents, prompt_embeds, prompt_mask, noise_scheduler, density, generator, patch_frames
            )
        total += loss.item()
    transformer.train(was_training)
    return total / len(eval_set)


def base_model_id(args: argparse.Namespace) -> str:
    """The card's base_model: never a local path (it would leak the trainer's file system)."""
    if args.base_model:
        return args.base_model
    source = args.pretrained_model_name_or_path
    return source if is_hub_id(source) else Path(source).resolve().name


# 3. Training
def prepare_base(args, accelerator, pipe: SpacetimeVideoPipeline) -> torch.dtype:
    """Adds the adapter; stores the frozen base in the autocast dtype on the device; returns that dtype."""
    transformer = pipe.transformer
    lora_config = add_lora(transformer, args)
    dtype = weight_dtype(accelerator)
    pipe.to(accelerator.device)
    if dtype != torch.float32:
        cast_frozen_base(transformer, dtype)
        pipe.text_encoder.to(dtype=dtype)
        pipe.vae.to(dtype=dtype)
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    num_trainable = sum(param.numel() for param in transformer.parameters() if param.requires_grad)
    logger.info(
        f"LoRA rank {args.rank} on {sorted(lora_config.target_modules)}: {num_trainable:,} trainable parameters"
    )
    return dtype


def register_adapter_checkpoints(accelerator) -> None:
    """Checkpoints hold the adapter (a `save_lora_weights` file), not the frozen base."""

    def save_model_hook(models, weights, folder):
        for _ in range(len(weights)):
            weights.pop()  # the frozen base is not saved: it is the pretrained folder
        if accelerator.is_main_process:
            layers, config = lora_state(accelerator.unwrap_model(models[0]))
            SpacetimeVideoPipeline.save_lora_weights(
                folder, transformer_lora_layers=layers, transformer_lora_adapter_metadata=config
            )

    def load_model_hook(models, folder):
        load_lora_state(accelerator.unwrap_model(models.pop()), folder)

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)


def load_base_and_data(args, accelerator) -> tuple[SpacetimeVideoPipeline, object, list[str], dict]:
    """(the frozen base pipeline, the dataset, the validation prompts, {"before": the base model's validation
    videos, "after": []}); the base's videos only on a fresh run's main process."""
    pipe = load_base_pipeline(args)
    pipe.set_progress_bar_config(disable=True)
    check_sizes(args, pipe.vae, pipe.transformer)
    check_target_modules(pipe.transformer, parse_target_modules(args.target_modules))  # fail before data and videos
    dataset = dataset_from_args(args)
    logger.info(f"Data {dataset.format_summary()}")
    prompts = args.validation_prompt
    if prompts is None:  # not given: the first caption; given empty: no validation videos
        prompts = [caption for caption in dataset.captions if caption][:1]
    videos = {"before": [], "after": []}
    resume_path = checkpointing.resolve_resume_path(args.output_dir, args.resume_from_checkpoint)
    if prompts and accelerator.is_main_process and resume_path is None:
        pipe.to(accelerator.device)
        videos["before"] = log_validation(args, accelerator, pipe, prompts, 0)
    return pipe, dataset, prompts, videos


def main(args: argparse.Namespace) -> dict:
    """Trains the adapter; returns {"losses", "global_step", "lora_path", "eval_loss_before", "eval_loss_after",
    "validation_videos": {"before", "after"}, "train_time_s", "adapter_bytes"} (paths and evaluation: main process)."""
    accelerator = make_accelerator(args, "train_lora")
    if accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise ValueError(
            "train_lora.py runs on one device or under DDP; the accelerate config asks for FSDP/DeepSpeed"
        )
    device = accelerator.device
    pipe, dataset, prompts, videos = load_base_and_data(args, accelerator)

    # The adapter, the data (optionally through the latent cache) and the fixed evaluation set
    dtype = prepare_base(args, accelerator, pipe)
    # Training noise levels from the checkpoint's scheduler settings (its `shift`), as train_text_to_video.py sampled.
    noise_scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    patch_frames = pipe.transformer.config.patch_size[0]
    source = {"pipeline": args.pretrained_model_name_or_path}
    train_dataset, train_dataloader = training_dataloader(args, accelerator, dataset, pipe.vae, pipe, dtype, source)
    eval_set = []
    if accelerator.is_main_process:
        eval_set = make_eval_set(train_dataset, train_dataloader.collate_fn, pipe, args, device, dtype)
    evaluate = partial(evaluate_loss, eval_set=eval_set, noise_scheduler=noise_scheduler, args=args,
                       patch_frames=patch_frames, autocast=accelerator.autocast)  # fmt: skip
    eval_loss_before = evaluate(pipe.transformer)

    # Optimizer over the adapter only; checkpoints hold the adapter, not the frozen base
    batch_sampler = train_dataloader.batch_sampler
    optimizer = make_optimizer([param for param in pipe.transformer.parameters() if param.requires_grad], args)
    transformer, optimizer, train_dataloader = accelerator.prepare(pipe.transformer, optimizer, train_dataloader)
    register_adapter_checkpoints(accelerator)
    empty_prompt = flow_matching.encode_empty_prompt(pipe, args.max_sequence_length, device)
    loss_step = flow_matching.FlowMatchingStep(
        transformer, pipe.vae, pipe, pipe.normalize_latents, noise_scheduler, empty_prompt,
        flow_matching.TimestepDensity.from_args(args), args.caption_dropout, args.max_sequence_length, patch_frames,
        device, dtype,
    )  # fmt: skip
    run = train(
        accelerator, args, transformer, optimizer, loss_step,
        folder_batches(accelerator, train_dataloader, batch_sampler, dataset),
        num_batches=len(train_dataloader), num_clips=len(dataset),
    )  # fmt: skip

    result = {"losses": run.losses, "global_step": run.global_step, "train_time_s": run.train_time_s}
    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(transformer)
        result.update(eval_loss_before=eval_loss_before, eval_loss_after=evaluate(trained))
        card_kwargs = card_facts(args, accelerator, run, len(dataset), len(eval_set), result, prompts)
        result.update(save_adapter(args, trained, card_kwargs))
        del pipe, transformer, trained, loss_step, optimizer, train_dataloader  # free the training copy
        accelerator.free_memory()
        publish(args, accelerator, result, prompts, videos, card_kwargs)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


# 4. The adapter file, its card and the validation from the saved file
def card_facts(args, accelerator, run: LoopResult, num_clips: int, num_eval_clips: int, result: dict, prompts) -> dict:
    """The adapter card's `training`, `results` and `usage`."""
    training = training_facts(args, accelerator, run, num_clips, optimizer="AdamW (adapter weights only)")
    training["lora_dropout"] = args.lora_dropout
    results = {}
    note = f"flow-matching loss on the first {num_eval_clips} training clips, fixed noise and timesteps"
    if result["eval_loss_before"] is not None:
        results["Fine-tune set loss, base"] = {"value": result["eval_loss_before"], "note": note}
        results["Fine-tune set loss, with adapter"] = {"value": result["eval_loss_after"], "note": note}
    results.update(training_loss_results(args.output_dir))
    return {"training": training, "results": results, "usage": {"prompt": prompts[0]} if prompts else None}


def save_adapter(args, trained: torch.nn.Module, card_kwargs: dict) -> dict:
    """Writes output_dir/lora (weights and card) atomically; returns its path and the adapter file's size."""
    layers, config = lora_state(trained)
    repo_id = args.hub_model_id or Path(args.output_dir).resolve().name

    def write(folder: str) -> None:
        SpacetimeVideoPipeline.save_lora_weights(
            folder, transformer_lora_layers=layers, transformer_lora_adapter_metadata=config
        )
        card = lora_card(folder, repo_id, base_model=base_model_id(args), **card_kwargs)
        card.save(os.path.join(folder, "README.md"))

    lora_path = checkpointing.save_folder_atomically(write, Path(args.output_dir) / LORA_FOLDER)
    adapter_bytes = (lora_path / "pytorch_lora_weights.safetensors").stat().st_size
    logger.info(f"Saved the adapter ({adapter_bytes / 1e6:.2f} MB) to {lora_path}")
    return {"lora_path": str(lora_path), "adapter_bytes": adapter_bytes}


def publish(args, accelerator, result: dict, prompts: list[str], videos: dict, card_kwargs: dict) -> None:
    """Validation videos from the saved adapter, results.json and, with --push_to_hub, the upload; adds to `result`."""
    if prompts:  # what users get: a freshly loaded base with the saved file
        videos["after"] = validate_saved_adapter(
            args, accelerator, result["lora_path"], prompts, result["global_step"]
        )
    result["validation_videos"] = videos
    write_results(args.output_dir, result)
    if args.push_to_hub:
        commit = push_lora_to_hub(
            result["lora_path"], args.hub_model_id, base_model=base_model_id(args), token=args.hub_token, **card_kwargs
        )
        result["hub_commit"] = getattr(commit, "oid", None)
        logger.info(f"Pushed the adapter to {args.hub_model_id}")


def validate_saved_adapter(args, accelerator, lora_path: str, prompts: list[str], step: int) -> list[str]:
    """Validation videos of a freshly loaded base pipeline with the saved adapter file, as users load it."""
    final = load_base_pipeline(args)
    final.load_lora_weights(lora_path, adapter_name=ADAPTER_NAME)
    final.to(accelerator.device)
    return log_validation(args, accelerator, final, prompts, step)


if __name__ == "__main__":
    main(parse_args())
