"""Train `SpacetimeDiTModel` with flow matching on frozen-VAE latents of a captioned video folder, with accelerate.

    accelerate launch training/train_text_to_video.py --data_dir data/shapes --pretrained_vae_path runs/vae/vae \
        --transformer_config training/configs/dit_tiny.json --output_dir runs/dit-tiny --max_train_steps 2000

Flow matching (`training/flow_matching.py`) on clean normalised latents; captions are dropped (replaced by the empty
prompt's embedding, as the pipeline's unconditional branch uses) with probability `--caption_dropout`, for
classifier-free guidance.

With `--condition_frames_prob p --max_condition_frames k`, a sample is, with probability p, conditioned on its first
1..k latent frames: they stay clean (noise level 0) and get timestep 0 in a per-frame timestep (B, F_latent), and
the loss covers only the other frames. This teaches the same weights image-to-video and continuation. Off by default.

The loop is `training/loop.py`'s: a resumed run reproduces the uninterrupted run's losses and P processes train what
one process with P times the accumulation does. At the end the script writes `output_dir/pipeline`, a complete
`SpacetimeVideoPipeline` folder (EMA weights with `--use_ema`) whose default size is the trained size;
`--push_to_hub` uploads it with its model card.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a file (accelerate launch training/train_text_to_video.py): find `training`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from accelerate.logging import get_logger
from accelerate.utils import DistributedType
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import EMAModel

from diffusers_spacetime import AutoencoderKLSpacetime, SpacetimeDiTModel, SpacetimeVideoPipeline
from diffusers_spacetime.pipelines.pipeline_spacetime import load_text_encoder, text_hidden_size
from diffusers_spacetime.pipelines.video_vae import VIDEO_VAE_CLASSES, VideoVAE, vae_latent_space
from training import checkpointing, flags, flow_matching
from training.card_facts import training_facts, training_loss_results
from training.data import add_data_arguments, check_data_arguments, dataset_from_args
from training.encode_prompts import PromptEmbedsTable, default_text_encoder_path
from training.latent_cache import training_dataloader
from training.loop import folder_batches, make_accelerator, train, weight_dtype
from training.optimization import make_optimizer
from training.run_log import write_results
from training.streaming import TarShardStream, expand_shards
from training.validation_videos import log_validation

logger = get_logger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, each with its help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    add_model_arguments(parser)
    flags.add_value_flags(
        parser.add_argument_group("streamed data"),
        ("--train_shards", None, None,
         "Instead of --data_dir: webdataset-style tar shards (key.mp4 + key.txt or key.json) streamed front to back, "
         "never stored: comma-separated paths or http(s) URLs, with {000..099} ranges and * globs. Needs "
         "--max_train_steps; resumes mid-epoch exactly (training/streaming.py)."),
    )  # fmt: skip
    add_flow_matching_arguments(parser)
    group = parser.add_argument_group("prompt embeddings and EMA")
    flags.add_value_flags(
        group,
        ("--prompt_embeds_file", None, None,
         "Caption embeddings precomputed by training/encode_prompts.py: the text encoder is then not loaded (for "
         "machines without it); validation prompts must be in the file, and the saved pipeline has no text encoder "
         "(pass tokenizer= and text_encoder= to from_pretrained, then save_pretrained, to complete it)."),
    )  # fmt: skip
    group.add_argument(
        "--use_ema", action="store_true", help="Keep an EMA of the weights (diffusers EMAModel); saved as the model."
    )
    group.add_argument("--ema_decay", type=float, default=0.999, help="EMA decay.")
    flags.add_optimization_arguments(
        parser,
        output_dir_help="Run folder: checkpoints, logs, validation/, train_log.jsonl, pipeline/.",
        seed_help="Seed of the model init, data order, noise and timesteps.",
        train_batch_size=8,
        adam_weight_decay=1e-2,
        mixed_precision_help="Autocast precision (the frozen VAE and text encoder are cast to it); default: the "
        "accelerate config's.",
    )
    flags.add_checkpoint_arguments(parser)
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
    flags.add_validation_video_arguments(group)
    flags.add_hub_arguments(
        parser, uploads="the final pipeline (output_dir/pipeline) with its model card", repo="pipeline"
    )
    return parser


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The "models" group: the transformer to train, the frozen VAE and text encoder."""
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
    flags.add_text_encoder_arguments(group)
    group.add_argument(
        "--gradient_checkpointing", action="store_true", help="Recompute block activations in backward."
    )


def add_flow_matching_arguments(parser: argparse.ArgumentParser) -> None:
    """The shared "flow matching" group plus this script's sigma shift and conditioning frames."""
    group = flags.add_flow_matching_arguments(
        parser, caption_dropout=0.1, caption_dropout_help="Probability of training on the empty prompt."
    )
    group.add_argument(
        "--flow_shift",
        type=float,
        default=1.0,
        help="Sigma shift of the FlowMatchEulerDiscreteScheduler (saved with the pipeline).",
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
    flags.check_run_arguments(args)
    if not 0 < args.flow_shift < float("inf"):
        raise ValueError(f"--flow_shift must be a positive number, got {args.flow_shift}")
    if not 0.0 <= args.ema_decay <= 1.0:
        raise ValueError(f"--ema_decay must be in [0, 1], got {args.ema_decay}")
    return args


# 1. Components
def add_position_embeddings(transformer: SpacetimeDiTModel, **switches: bool) -> SpacetimeDiTModel:
    """The same model with the position embeddings `switches` turns on that it lacks: its weights, plus zero-initialised
    maps (built here rather than by `from_pretrained`, which skips initialisers and would leave them arbitrary)."""
    config = dict(transformer.config)  # private keys too: a config's "_description" survives
    wanted = {name: True for name, on in switches.items() if on and not config.get(name, False)}
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


def folder_dataloader(args, accelerator, dataset, vae, prompt_encoder, weight_dtype):
    """(the dataset the loader reads, its dataloader) of --data_dir / --dataset_name, through the latent cache with
    --cache_latents."""
    logger.info(f"Data {dataset.format_summary()}")
    if dataset.metadata_file is None:
        logger.warning(f"{args.data_dir} has no metadata.csv or metadata.jsonl: every caption is empty")
    elif dataset.summary["no_caption"] == len(dataset):
        raise ValueError(
            f"--caption_column {args.caption_column!r}: no usable file of {dataset.metadata_file} has a caption in it "
            "(training would ignore the text): name the column that holds the captions"
        )
    sources = {
        "vae": args.pretrained_vae_path or args.vae_config,
        "text_encoder": args.prompt_embeds_file or args.text_encoder_path or "all-MiniLM-L6-v2",
    }
    return training_dataloader(args, accelerator, dataset, vae, prompt_encoder, weight_dtype, sources)


def stream_batches(args, accelerator, epoch: int, start_batch: int):
    """This process's batches of --train_shards, from its `start_batch`-th on (skipped without decoding); the stream
    is one endless epoch (`epoch` is always 0)."""
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


# 2. Training
def prepare_frozen_models(accelerator, text_encoder, vae) -> torch.dtype:
    """Moves the frozen text encoder and VAE to the device in the autocast dtype; returns that dtype."""
    dtype = weight_dtype(accelerator)
    for module in (text_encoder, vae):
        if module is not None:
            module.to(accelerator.device)
            if dtype != torch.float32:
                module.to(dtype=dtype)
    return dtype


def make_ema(args, accelerator, transformer: SpacetimeDiTModel) -> EMAModel | None:
    if not args.use_ema:
        return None
    ema = EMAModel(
        transformer.parameters(), decay=args.ema_decay, model_cls=SpacetimeDiTModel, model_config=transformer.config
    )
    ema.to(accelerator.device)
    return ema


def prepare_training(args, accelerator, transformer, vae, prompt_encoder, dtype):
    """(transformer, optimizer (both prepared), dataset or None, batches, num_batches) of a folder or dataset
    (optionally through the latent cache), or of streamed tar shards (one endless "epoch")."""
    optimizer = make_optimizer(transformer.parameters(), args)
    if args.train_shards:
        logger.info(f"Data: {len(expand_shards(args.train_shards))} tar shards, streamed")
        transformer, optimizer = accelerator.prepare(transformer, optimizer)
        num_batches = args.max_train_steps * args.gradient_accumulation_steps
        return transformer, optimizer, None, partial(stream_batches, args, accelerator), num_batches
    dataset = dataset_from_args(args)
    _, train_dataloader = folder_dataloader(args, accelerator, dataset, vae, prompt_encoder, dtype)
    batch_sampler = train_dataloader.batch_sampler
    transformer, optimizer, train_dataloader = accelerator.prepare(transformer, optimizer, train_dataloader)
    batches = folder_batches(accelerator, train_dataloader, batch_sampler, dataset)
    return transformer, optimizer, dataset, batches, len(train_dataloader)


def main(args: argparse.Namespace) -> dict:
    """Trains; returns {"losses": [per-step loss], "global_step", "pipeline_path", "validation_videos"} (and
    "hub_commit" with --push_to_hub)."""
    accelerator = make_accelerator(args, "train_text_to_video")
    check_parallelism(args, accelerator)

    # Models: frozen text encoder and VAE in the autocast dtype, trainable transformer in float32
    tokenizer, text_encoder, vae, transformer, noise_scheduler = load_components(args)
    check_sizes(args, vae, transformer, text_encoder)
    dtype = prepare_frozen_models(accelerator, text_encoder, vae)
    # The pipeline's own text encoding and latent normalisation, so training sees exactly what sampling sees.
    text_pipe = SpacetimeVideoPipeline(tokenizer, text_encoder, transformer=None, vae=vae, scheduler=noise_scheduler)
    prompt_encoder = PromptEmbedsTable(args.prompt_embeds_file) if args.prompt_embeds_file else text_pipe
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    ema = make_ema(args, accelerator, transformer)
    empty_prompt = flow_matching.encode_empty_prompt(prompt_encoder, args.max_sequence_length, accelerator.device)

    patch_frames = transformer.config.patch_size[0]
    transformer, optimizer, dataset, batches, num_batches = prepare_training(
        args, accelerator, transformer, vae, prompt_encoder, dtype
    )
    prompts = args.validation_prompts
    if prompts is None:  # not given: the first two distinct captions; given empty: no validation videos
        prompts = list(
            dict.fromkeys(caption for caption in (dataset.captions if dataset is not None else []) if caption)
        )[:2]

    def pipeline(model) -> SpacetimeVideoPipeline:
        return SpacetimeVideoPipeline(
            tokenizer, text_encoder, model, vae, FlowMatchEulerDiscreteScheduler.from_config(noise_scheduler.config),
            default_height=args.height, default_width=args.width, default_num_frames=args.num_frames,
        )  # fmt: skip

    validation_videos = []

    def validate(step: int, max_train_steps: int) -> None:
        nonlocal validation_videos
        if prompts and step % args.validation_steps == 0 and step < max_train_steps:
            # A sharded transformer (FSDP) runs only when every process runs it: all of them render then
            if accelerator.is_main_process or accelerator.distributed_type == DistributedType.FSDP:
                validation_videos = render_with_ema(args, accelerator, pipeline, transformer, ema, prompts, step)
            accelerator.wait_for_everyone()

    condition = flow_matching.ConditionFrames(args.condition_frames_prob, args.max_condition_frames)
    loss_step = flow_matching.FlowMatchingStep(
        transformer, vae, prompt_encoder, text_pipe.normalize_latents, noise_scheduler, empty_prompt,
        flow_matching.TimestepDensity.from_args(args), args.caption_dropout, args.max_sequence_length, patch_frames,
        accelerator.device, dtype, condition,
    )  # fmt: skip
    run = train(
        accelerator, args, transformer, optimizer, loss_step, batches, num_batches=num_batches,
        num_clips=len(dataset) if dataset is not None else "streamed", ema=ema, after_step=validate,
    )  # fmt: skip
    return finish(args, accelerator, run, pipeline, transformer, ema, prompts, validation_videos, dataset)


def render_with_ema(args, accelerator, pipeline, transformer, ema, prompts: list[str], step: int) -> list[str]:
    """Validation videos of the current weights, or of the EMA weights with --use_ema."""
    model = accelerator.unwrap_model(transformer)
    model.eval()
    if ema is not None:
        ema.store(model.parameters())
        ema.copy_to(model.parameters())
    paths = log_validation(args, accelerator, pipeline(model), prompts, step)
    if ema is not None:
        ema.restore(model.parameters())
    model.train()
    return paths


def finish(args, accelerator, run, pipeline, transformer, ema, prompts, validation_videos, dataset) -> dict:
    """The final pipeline: EMA (or trained) weights, float32 components, the trained size as its default; its
    validation videos, results.json and the push."""
    output_dir = Path(args.output_dir)
    state_dict = accelerator.get_state_dict(transformer)  # a collective under FSDP: every process calls it
    result = {"losses": run.losses, "global_step": run.global_step}
    if accelerator.is_main_process:
        final_transformer = SpacetimeDiTModel.from_config(accelerator.unwrap_model(transformer).config)
        final_transformer.load_state_dict(state_dict)
        if ema is not None:
            ema.copy_to(final_transformer.parameters())
        final = pipeline(final_transformer.to(accelerator.device))
        for module in (final.text_encoder, final.vae):
            if module is not None:
                module.to(torch.float32)
        result["pipeline_path"] = str(
            checkpointing.save_folder_atomically(final.save_pretrained, output_dir / "pipeline")
        )
        if prompts:
            validation_videos = log_validation(args, accelerator, final, prompts, run.global_step)
        result["validation_videos"] = validation_videos
        write_results(output_dir, result)
        logger.info(f"Saved the pipeline to {result['pipeline_path']}")
        if args.push_to_hub:
            training = training_facts(args, accelerator, run, len(dataset) if dataset is not None else None)
            commit = final.push_to_hub(
                args.hub_model_id, token=args.hub_token, training=training, results=training_loss_results(output_dir)
            )
            result["hub_commit"] = getattr(commit, "oid", None)
            logger.info(f"Pushed the pipeline to {args.hub_model_id}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


if __name__ == "__main__":
    main(parse_args())
