"""Model cards filled from real facts, and Hub pushes that carry them (safetensors only).

The cards come from the templates in the repository's top-level `model_cards/` folder (shipped inside the package as
`diffusers_spacetime.model_cards` by the pyproject settings). Every number on a card is read from the object being
pushed (its config, its parameter count, the LoRA file's tensors and metadata) or passed in by the caller as
`training` and `results` dicts; nothing is made up, and a missing fact is written as "not recorded".

Training scripts call one function at the end of a run:

    push_pipeline_to_hub(pipe, args.hub_model_id, token=args.hub_token, training={...}, results={...})
    push_model_to_hub(vae, args.hub_model_id, token=args.hub_token, training={...}, results={...})
    push_lora_to_hub(args.output_dir, args.hub_model_id, base_model=..., token=args.hub_token, training={...})

Only `.safetensors` weights travel: a folder holding pickle files (`.bin`, `.pt`, `.pth`, `.pkl`, `.ckpt`, ...) is
refused before anything is uploaded. Pulling is plain diffusers (`from_pretrained(repo_id, use_safetensors=True)`,
`load_lora_weights(repo_id)`).
"""

from __future__ import annotations

import fnmatch
import importlib.resources
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id

# Suffixes of files that torch.load / pickle would deserialise. They never leave the machine through these helpers.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
CARD_TAGS = ("diffusers-spacetime", "diffusers", "text-to-video", "video-generation")
DEFAULT_LICENSE = "apache-2.0"

# Labels and order for the training facts that scripts usually record; other keys follow, in the order given.
TRAINING_LABELS = {
    "steps": "Optimizer steps",
    "epochs": "Epochs",
    "batch_size": "Batch size (per device)",
    "gradient_accumulation_steps": "Gradient accumulation steps",
    "total_batch_size": "Effective batch size",
    "learning_rate": "Learning rate",
    "lr_scheduler": "LR schedule",
    "lr_warmup_steps": "LR warm-up steps",
    "optimizer": "Optimizer",
    "mixed_precision": "Mixed precision",
    "gradient_checkpointing": "Gradient checkpointing",
    "resolution": "Resolution",
    "num_frames": "Frames per clip",
    "dataset": "Data",
    "num_clips": "Training clips",
    "hardware": "Hardware",
    "wall_time_s": "Wall-clock time",
    "seed": "Seed",
    "final_loss": "Final training loss",
}


# ------------------------------------------------------------------------------------------------ templates


def template_dir() -> Path:
    """The folder that holds `pipeline.md`, `vae.md`, `transformer.md` and `lora.md`.

    Installed wheels carry the templates as the package data `diffusers_spacetime.model_cards`; a source checkout
    (or an editable install made before that setting) reads the canonical copies in the top-level `model_cards/`.
    """
    try:
        # A folder without __init__.py: a namespace package, whose `files()` is a MultiplexedPath; joining a file
        # name gives a real path.
        packaged = importlib.resources.files("diffusers_spacetime.model_cards").joinpath("pipeline.md")
        if packaged.is_file():
            return Path(str(packaged)).parent
    except ModuleNotFoundError:
        pass
    checkout = Path(__file__).resolve().parent.parent / "model_cards"
    if (checkout / "pipeline.md").is_file():
        return checkout
    raise FileNotFoundError(
        "The model card templates were not found: neither the package data `diffusers_spacetime.model_cards` nor "
        f"{checkout}. Install the package from a checkout (`pip install -e .`) or a wheel built with its "
        "pyproject settings."
    )


def render_card(template: str, card_data: ModelCardData, **facts: Any) -> ModelCard:
    """Render `model_cards/<template>.md` with `facts`; an unknown template variable is an error, not a blank."""
    import jinja2  # a torch dependency; huggingface_hub's own card templates use it too

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    text = environment.get_template(f"{template}.md").render(card_data=card_data.to_yaml(), **facts)
    return ModelCard(text)


# ------------------------------------------------------------------------------------------------ formatting


def _format_count(count: int) -> str:
    """12345678 -> '12.35 M (12,345,678)'."""
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= size:
            return f"{count / size:.2f} {unit} ({count:,})"
    return f"{count:,}"


def _format_duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = seconds / 60
    if minutes < 120:
        return f"{minutes:.0f} min"
    return f"{int(minutes // 60)} h {int(minutes % 60):02d} min"


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_format_value(item) for item in value) + ")"
    if isinstance(value, Mapping):
        return ", ".join(f"{key}: {_format_value(item)}" for key, item in value.items())
    if value is None:
        return "none"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _humanize(key: str) -> str:
    return key.replace("_", " ").strip().capitalize()


def _training_rows(training: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Training facts -> (label, value) rows, known keys first in a fixed order."""
    if not training:
        return []
    rows = []
    for key in [
        *[key for key in TRAINING_LABELS if key in training],
        *[key for key in training if key not in TRAINING_LABELS],
    ]:
        value = training[key]
        if value is None:
            continue
        if key == "wall_time_s" or key.endswith(("_seconds", "_time_s")):
            text = _format_duration(value)
        elif key == "learning_rate" and isinstance(value, float):
            text = f"{value:.2e}"
        else:
            text = _format_value(value)
        rows.append((TRAINING_LABELS.get(key, _humanize(key)), text))
    return rows


def _result_rows(results: Mapping[str, Any] | None) -> list[tuple[str, str, str]]:
    """Measured results -> (metric, value, how it was measured) rows.

    A value may be a number or a string, or a dict `{"value": ..., "note": "on what, how"}`.
    """
    rows = []
    for metric, value in (results or {}).items():
        note = ""
        if isinstance(value, Mapping):
            note = _format_value(value.get("note", ""))
            value = value.get("value")
        rows.append((metric, _format_value(value), note))
    return rows


def _config_rows(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The full public config (keys without a leading underscore) as it reads in config.json, for the card's table."""
    return [
        (key, json.dumps(value, default=str).replace("|", "\\|"))
        for key, value in config.items()
        if not key.startswith("_")
    ]


def _parameter_count(module: Any) -> int | None:
    if isinstance(module, torch.nn.Module):
        return sum(parameter.numel() for parameter in module.parameters())
    return None


def _patch_size(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """(t, h, w) patch of the transformer; an int patch size covers one frame and p x p pixels."""
    patch = config.get("patch_size", 1)
    if isinstance(patch, int):
        return (1, patch, patch)
    patch = tuple(patch)
    return (1, *patch) if len(patch) == 2 else patch  # type: ignore[return-value]


def _card_data(
    *,
    license: str,
    tags: Iterable[str],
    extra_tags: Iterable[str],
    base_model: str | list[str] | None,
    datasets: str | list[str] | None,
    base_model_relation: str | None = None,
) -> ModelCardData:
    all_tags = list(dict.fromkeys([*CARD_TAGS, *extra_tags, *tags]))
    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="text-to-video",
        license=license,
        tags=all_tags,
        base_model=base_model,
        datasets=[datasets] if isinstance(datasets, str) else (list(datasets) if datasets else None),
    )
    if base_model is not None and base_model_relation is not None:
        data.base_model_relation = base_model_relation
    return data


# ------------------------------------------------------------------------------------------------ facts


def vae_facts(vae: Any) -> dict[str, Any]:
    """What a VAE card says about the autoencoder: compression ratios, latent size, widths, parameters."""
    from .pipelines.video_vae import VIDEO_VAE_CLASSES, vae_latent_space

    config = dict(vae.config)
    spatial = getattr(vae, "spatial_compression_ratio", None)
    temporal = getattr(vae, "temporal_compression_ratio", None)
    channels = config.get("latent_channels")
    if isinstance(vae, VIDEO_VAE_CLASSES):  # diffusers' Wan / LTX / CogVideoX VAEs keep these elsewhere
        space = vae_latent_space(vae)
        spatial, temporal, channels = (
            space.spatial_compression_ratio,
            space.temporal_compression_ratio,
            space.latent_channels,
        )
    if spatial is None and "block_out_channels" in config:
        spatial = 2 ** (len(config["block_out_channels"]) - 1)
    if temporal is None and "temporal_downsample" in config:
        temporal = 2 ** sum(bool(flag) for flag in config["temporal_downsample"])
    return {
        "class_name": type(vae).__name__,
        "spatial_compression": spatial,
        "temporal_compression": temporal,
        "latent_channels": channels,
        "block_out_channels": _format_value(config.get("block_out_channels")),
        "layers_per_block": config.get("layers_per_block"),
        "has_latent_statistics": config.get("latents_mean") is not None and config.get("latents_std") is not None,
        "parameters": _format_count(_parameter_count(vae) or 0),
        "config_rows": _config_rows(config),
    }


def transformer_facts(transformer: Any) -> dict[str, Any]:
    """What a card says about the DiT: width, depth, heads, patch, attention span, text width, parameters."""
    config = dict(transformer.config)
    heads, head_dim = config.get("num_attention_heads"), config.get("attention_head_dim")
    return {
        "class_name": type(transformer).__name__,
        "hidden_size": heads * head_dim if heads and head_dim else None,
        "num_layers": config.get("num_layers"),
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "ffn_dim": config.get("ffn_dim"),
        "patch_size": _patch_size(config),
        "attention_span": _format_value(config.get("attention_span")),
        "text_embed_dim": config.get("text_embed_dim"),
        "in_channels": config.get("in_channels"),
        "parameters": _format_count(_parameter_count(transformer) or 0),
        "config_rows": _config_rows(config),
    }


def lora_facts(lora_path: str | os.PathLike) -> dict[str, Any]:
    """Rank, alpha, targets and size of a LoRA file (or of the one `.safetensors` file in a folder), header only."""
    from safetensors import safe_open

    path = Path(lora_path)
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors"))
        if len(candidates) != 1:
            raise ValueError(f"Expected one .safetensors LoRA file in {path}, found {[c.name for c in candidates]}.")
        path = candidates[0]
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    adapter_config = {}
    if "lora_adapter_metadata" in metadata:
        packed = json.loads(metadata["lora_adapter_metadata"])
        adapter_config = {
            key.split(".", 1)[1] if key.startswith("transformer.") else key: value for key, value in packed.items()
        }
    ranks = sorted({shape[0] for key, shape in shapes.items() if ".lora_A." in key})
    modules = sorted({key.rsplit(".lora_", 1)[0].removeprefix("transformer.") for key in shapes if ".lora_" in key})
    rank = adapter_config.get("r") or (ranks[0] if len(ranks) == 1 else None)
    return {
        "weight_name": path.name,
        "rank": rank if rank is not None else _format_value(ranks),
        "lora_alpha": adapter_config.get("lora_alpha", "not recorded"),
        # Module paths with the block index dropped: `blocks.3.attn1.to_q` -> `attn1.to_q`.
        "target_modules": sorted({re.sub(r"^(transformer_)?blocks\.\d+\.", "", name) for name in modules}),
        "num_modules": len(modules),
        "parameters": _format_count(sum(_numel(shape) for shape in shapes.values())),
        "file_size": f"{path.stat().st_size / 1e6:.2f} MB",
        "use_dora": bool(adapter_config.get("use_dora", False)),
    }


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


# ------------------------------------------------------------------------------------------------ cards


def _usage(
    usage: Mapping[str, Any] | None,
    height: int | None,
    width: int | None,
    num_frames: int | None,
    spatial_multiple: int,
    temporal: int,
) -> dict[str, Any]:
    """Arguments of the card's usage snippet: the checkpoint's own sizes unless the caller overrides them."""
    usage = dict(usage or {})
    return {
        "prompt": usage.get("prompt", "a red circle moves from left to right"),
        "height": usage.get("height", height or 4 * spatial_multiple),
        "width": usage.get("width", width or 4 * spatial_multiple),
        "num_frames": usage.get("num_frames", num_frames or 1 + 2 * temporal),
        "num_inference_steps": usage.get("num_inference_steps", 25),
        "guidance_scale": usage.get("guidance_scale", 5.0),
        "fps": usage.get("fps", 8),
    }


def _text_encoder_description(text_encoder: Any) -> str:
    """'a BertModel text encoder (6 layers, 384-d)', with the Hub id it came from when the config names one."""
    if text_encoder is None:
        return "no text encoder (pass `prompt_embeds`)"
    config = getattr(text_encoder, "config", None)
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "num_layers", None)
    width = getattr(config, "hidden_size", None) or getattr(config, "d_model", None)
    details = ", ".join(part for part in (f"{layers} layers" if layers else "", f"{width}-d" if width else "") if part)
    description = f"a {type(text_encoder).__name__} text encoder" + (f" ({details})" if details else "")
    source = getattr(config, "_name_or_path", "") or ""
    # Only a Hub id is worth printing; a local path would leak the trainer's file system into a public card.
    if source and not os.path.isabs(source) and not os.path.exists(source):
        try:
            validate_repo_id(source)
            description += f" from `{source}`"
        except HFValidationError:
            pass
    return description


def pipeline_card(
    pipeline: Any,
    repo_id: str,
    *,
    training: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
    datasets: str | list[str] | None = None,
    base_model: str | None = None,
    license: str = DEFAULT_LICENSE,
    tags: Iterable[str] = (),
    title: str | None = None,
    description: str | None = None,
    limitations: Iterable[str] = (),
    usage: Mapping[str, Any] | None = None,
) -> ModelCard:
    """The card of a whole `SpacetimeVideoPipeline` checkpoint.

    Args:
        pipeline: the pipeline being published; its components' configs and parameter counts fill the card.
        repo_id (`str`): where it goes (`user/name`); used in the usage snippet.
        training (`dict`, *optional*): facts of the run, e.g. `steps`, `batch_size`, `learning_rate`, `dataset`,
            `hardware`, `wall_time_s`, `final_loss`; unknown keys are listed as given.
        results (`dict`, *optional*): measured numbers, `{"metric": value}` or `{"metric": {"value": v, "note": "..."}}`.
        datasets (`str` or `list[str]`, *optional*): Hub dataset ids (front matter `datasets`).
        base_model (`str`, *optional*): the checkpoint this one was fine-tuned from (front matter `base_model`).
        license, tags, title, description, limitations: card text; `limitations` adds to the computed ones.
        usage (`dict`, *optional*): overrides for the snippet (`prompt`, `height`, `width`, `num_frames`,
            `num_inference_steps`, `guidance_scale`, `fps`); the checkpoint's default sizes otherwise.
    """
    vae = vae_facts(pipeline.vae)
    transformer = transformer_facts(pipeline.transformer)
    config = pipeline.config
    height, width, frames = config.get("default_height"), config.get("default_width"), config.get("default_num_frames")
    patch_t, patch_h, patch_w = transformer["patch_size"]
    spatial, temporal = vae["spatial_compression"], vae["temporal_compression"]
    snippet = _usage(usage, height, width, frames, spatial * max(patch_h, patch_w), temporal)
    latent_frames = (snippet["num_frames"] - 1) // temporal + 1
    tokens = (
        (latent_frames // patch_t)
        * (snippet["height"] // spatial // patch_h)
        * (snippet["width"] // spatial // patch_w)
    )

    components = []
    for name in ("text_encoder", "tokenizer", "transformer", "vae", "scheduler"):
        component = getattr(pipeline, name, None)
        if component is None:
            continue
        count = _parameter_count(component)
        components.append((name, type(component).__name__, _format_count(count) if count is not None else "-"))
    from .pipelines.pipeline_spacetime import DEFAULT_MAX_SEQUENCE_LENGTH

    text_encoder = getattr(pipeline, "text_encoder", None)
    text_model = _text_encoder_description(text_encoder)
    max_tokens = getattr(getattr(pipeline, "tokenizer", None), "model_max_length", None)
    max_tokens = min(max_tokens, DEFAULT_MAX_SEQUENCE_LENGTH) if isinstance(max_tokens, int) else None

    computed_limitations = [
        f"Sizes: `num_frames` must be 1 + k x {temporal} (the VAE's temporal compression); height and width "
        f"multiples of {spatial * patch_h} (spatial compression {spatial} x patch {patch_h}).",
        (
            f"Trained size: {frames} frames at {height}x{width}; other sizes are extrapolation."
            if height and width and frames
            else "The trained size is not recorded in `model_index.json`."
        ),
        f"Prompts are encoded by {text_model}"
        + (f" and cut at {max_tokens} tokens by default (`max_sequence_length`)." if max_tokens else "."),
    ]
    data = _card_data(
        license=license,
        tags=tags,
        extra_tags=("pipeline",),
        base_model=base_model,
        datasets=datasets,
        base_model_relation="finetune",
    )
    return render_card(
        "pipeline",
        data,
        repo_id=repo_id,
        title=title or repo_id.split("/")[-1],
        description=description,
        components=components,
        vae=vae,
        transformer=transformer,
        default_size=(frames, height, width),
        latent_frames=latent_frames,
        tokens=tokens,
        scheduler=type(pipeline.scheduler).__name__,
        text_encoder_description=text_model,
        training_rows=_training_rows(training),
        result_rows=_result_rows(results),
        limitations=[*computed_limitations, *limitations],
        **snippet,
    )


def model_card(
    model: Any,
    repo_id: str,
    *,
    subfolder: str | None = None,
    training: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
    datasets: str | list[str] | None = None,
    base_model: str | None = None,
    license: str = DEFAULT_LICENSE,
    tags: Iterable[str] = (),
    title: str | None = None,
    description: str | None = None,
    limitations: Iterable[str] = (),
    usage: Mapping[str, Any] | None = None,
) -> ModelCard:
    """The card of one model: `AutoencoderKLSpacetime` (vae.md) or `SpacetimeDiTModel` (transformer.md).

    Arguments as in [`pipeline_card`]; `subfolder` is where the weights sit inside the repo (for the snippet).
    """
    config = dict(model.config)
    common = {
        "repo_id": repo_id,
        "subfolder": subfolder,
        "title": title or repo_id.split("/")[-1],
        "description": description,
        "training_rows": _training_rows(training),
        "result_rows": _result_rows(results),
    }
    usage = dict(usage or {})
    if "latent_channels" in config:  # the autoencoder
        facts = vae_facts(model)
        spatial, temporal = facts["spatial_compression"], facts["temporal_compression"]
        frames = usage.get("num_frames", 1 + 2 * temporal)
        height, width = usage.get("height", 4 * spatial), usage.get("width", 4 * spatial)
        computed_limitations = [
            f"Input frames must number 1 + k x {temporal}; height and width must be multiples of {spatial}.",
            "Latents are not normalised by the model: pipelines use `config.latents_mean` / `config.latents_std`"
            + (" (set in this checkpoint)." if facts["has_latent_statistics"] else " (not set in this checkpoint)."),
        ]
        data = _card_data(
            license=license,
            tags=tags,
            extra_tags=("autoencoder", "video-vae"),
            base_model=base_model,
            datasets=datasets,
            base_model_relation="finetune",
        )
        return render_card(
            "vae",
            data,
            vae=facts,
            num_frames=frames,
            height=height,
            width=width,
            latent_shape=(facts["latent_channels"], (frames - 1) // temporal + 1, height // spatial, width // spatial),
            limitations=[*computed_limitations, *limitations],
            **common,
        )
    facts = transformer_facts(model)
    patch_t, patch_h, patch_w = facts["patch_size"]
    latent_frames = usage.get("latent_frames", 2 * patch_t + (1 if patch_t == 1 else 0))
    latent_height, latent_width = usage.get("latent_height", 4 * patch_h), usage.get("latent_width", 4 * patch_w)
    computed_limitations = [
        "A denoiser only: it needs a text encoder, the VAE it was trained with and a scheduler (see "
        "`SpacetimeVideoPipeline`) to make videos.",
        f"Latent height and width must be multiples of the patch ({patch_h} x {patch_w}); text features must be "
        f"{facts['text_embed_dim']}-d.",
    ]
    data = _card_data(
        license=license,
        tags=tags,
        extra_tags=("transformer", "dit"),
        base_model=base_model,
        datasets=datasets,
        base_model_relation="finetune",
    )
    return render_card(
        "transformer",
        data,
        transformer=facts,
        latent_frames=latent_frames,
        latent_height=latent_height,
        latent_width=latent_width,
        limitations=[*computed_limitations, *limitations],
        **common,
    )


def lora_card(
    lora_path: str | os.PathLike,
    repo_id: str,
    *,
    base_model: str,
    training: Mapping[str, Any] | None = None,
    results: Mapping[str, Any] | None = None,
    datasets: str | list[str] | None = None,
    license: str = DEFAULT_LICENSE,
    tags: Iterable[str] = (),
    title: str | None = None,
    description: str | None = None,
    limitations: Iterable[str] = (),
    usage: Mapping[str, Any] | None = None,
    trigger: str | None = None,
) -> ModelCard:
    """The card of a LoRA adapter of the pipeline's transformer, read from its `.safetensors` file.

    Args:
        lora_path: the adapter file, or the folder `save_lora_weights` wrote.
        base_model (`str`): the pipeline repo id the adapter was trained on (front matter `base_model`).
        trigger (`str`, *optional*): a phrase the training captions used to invoke the adapter.
        Others as in [`pipeline_card`].
    """
    facts = lora_facts(lora_path)
    snippet = dict(usage or {})
    snippet.setdefault(
        "prompt",
        f"{trigger}, a red circle moves from left to right" if trigger else "a red circle moves from left to right",
    )
    snippet.setdefault("num_inference_steps", 25)
    snippet.setdefault("fps", 8)
    computed_limitations = [
        f"Works on top of `{base_model}` only: the adapter's shapes match that transformer "
        f"({facts['num_modules']} adapted layers).",
        "Fusing (`pipe.fuse_lora()`) bakes the adapter into the weights; `pipe.unload_lora_weights()` removes it.",
    ]
    data = _card_data(
        license=license,
        tags=tags,
        extra_tags=("lora",),
        base_model=base_model,
        datasets=datasets,
        base_model_relation="adapter",
    )
    return render_card(
        "lora",
        data,
        repo_id=repo_id,
        base_model=base_model,
        title=title or repo_id.split("/")[-1],
        description=description,
        lora=facts,
        trigger=trigger,
        training_rows=_training_rows(training),
        result_rows=_result_rows(results),
        limitations=[*computed_limitations, *limitations],
        prompt=snippet["prompt"],
        num_inference_steps=snippet["num_inference_steps"],
        fps=snippet["fps"],
        extra_call_args={
            key: value for key, value in snippet.items() if key in ("height", "width", "num_frames", "guidance_scale")
        },
    )


# ------------------------------------------------------------------------------------------------ pushes


def files_to_upload(folder: str | os.PathLike, ignore_patterns: Iterable[str] = ()) -> list[str]:
    """Files under `folder` (POSIX paths relative to it) minus `ignore_patterns`; refuses pickles.

    Raises:
        `ValueError`: if any remaining file is a pickle (`.bin`, `.pt`, `.pth`, `.pkl`, `.pickle`, `.ckpt`,
            `.joblib`), or if no `.safetensors` file is left (nothing worth publishing).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder.")
    patterns = [*ignore_patterns, ".git/*", ".cache/*"]
    paths = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    paths = [path for path in paths if not any(fnmatch.fnmatch(path, pattern) for pattern in patterns)]
    pickles = [path for path in paths if path.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(
            f"Refusing to upload pickle files from {folder}: {', '.join(pickles)}. Only .safetensors weights are "
            "published (loading a pickle can run arbitrary code). Save with `safe_serialization=True`, or exclude "
            "training state such as `checkpoint-*/*` with `ignore_patterns`."
        )
    if not any(path.endswith(".safetensors") for path in paths):
        raise ValueError(f"No .safetensors weights in {folder}: nothing to publish.")
    return paths


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    card: ModelCard | None = None,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload diffusers-spacetime weights",
    path_in_repo: str | None = None,
    ignore_patterns: Iterable[str] = (),
) -> CommitInfo:
    """Upload a saved folder (safetensors only) and its card in one commit; returns the `CommitInfo`.

    Creates the repo if needed (`private` applies then) and the branch `revision` if it does not exist. The card
    goes to the repo root as `README.md`; with `path_in_repo` the files go into that subfolder and no card is written.
    """
    paths = files_to_upload(folder, ignore_patterns)
    repo_id = _ensure_repo(repo_id, token=token, private=private, revision=revision)
    prefix = f"{path_in_repo.strip('/')}/" if path_in_repo else ""
    operations = [
        CommitOperationAdd(path_in_repo=prefix + path, path_or_fileobj=str(Path(folder) / path))
        for path in paths
        if not (card is not None and not prefix and path == "README.md")
    ]
    if card is not None and not prefix:
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode("utf-8")))
    return HfApi(token=token).create_commit(
        repo_id, operations=operations, commit_message=commit_message, revision=revision
    )


def _ensure_repo(repo_id: str, *, token: str | None, private: bool | None, revision: str | None) -> str:
    """Create the repo (and branch) if missing; returns the full `namespace/name` (a bare name gets the user's)."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return repo_id


def push_pipeline_to_hub(
    pipeline: Any,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload SpacetimeVideoPipeline",
    **card_kwargs: Any,
) -> CommitInfo:
    """Save a `SpacetimeVideoPipeline` as safetensors and push it with its card ([`pipeline_card`] arguments)."""
    repo_id = _ensure_repo(repo_id, token=token, private=private, revision=revision)  # the card names the full id
    card = pipeline_card(pipeline, repo_id, **card_kwargs)
    with tempfile.TemporaryDirectory() as folder:
        pipeline.save_pretrained(folder, safe_serialization=True)
        return push_folder_to_hub(
            folder, repo_id, card=card, token=token, private=private, revision=revision, commit_message=commit_message
        )


def push_model_to_hub(
    model: Any,
    repo_id: str,
    *,
    subfolder: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
    **card_kwargs: Any,
) -> CommitInfo:
    """Save an `AutoencoderKLSpacetime` or `SpacetimeDiTModel` as safetensors and push it with its card.

    With `subfolder` (e.g. "vae" inside a pipeline repo) the weights go there and the repo's card is left alone.
    """
    repo_id = _ensure_repo(repo_id, token=token, private=private, revision=revision)
    card = None if subfolder else model_card(model, repo_id, **card_kwargs)
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder, safe_serialization=True)
        return push_folder_to_hub(
            folder,
            repo_id,
            card=card,
            token=token,
            private=private,
            revision=revision,
            commit_message=commit_message or f"Upload {type(model).__name__}",
            path_in_repo=subfolder,
        )


def push_lora_to_hub(
    lora_path: str | os.PathLike,
    repo_id: str,
    *,
    base_model: str,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload LoRA adapter",
    ignore_patterns: Iterable[str] = (),
    **card_kwargs: Any,
) -> CommitInfo:
    """Push a LoRA adapter folder written by `save_lora_weights` (or one `.safetensors` file) with its card.

    `ignore_patterns` leaves out files of the folder (e.g. `"checkpoint-*/*"` for accelerate states, which hold
    pickles and would otherwise make the push refuse).
    """
    lora_path = Path(lora_path)
    with tempfile.TemporaryDirectory() as staging:
        if lora_path.is_file():
            if not lora_path.name.endswith(".safetensors"):
                raise ValueError(f"Refusing to upload {lora_path.name}: only .safetensors LoRA files are published.")
            shutil.copyfile(lora_path, Path(staging) / lora_path.name)
            folder = Path(staging)
        else:
            folder = lora_path
        uploaded = files_to_upload(folder, ignore_patterns)
        weights = [path for path in uploaded if path.endswith(".safetensors") and "/" not in path]
        if len(weights) != 1:
            raise ValueError(f"Expected one .safetensors LoRA file at the top of {folder}, found {weights}.")
        repo_id = _ensure_repo(repo_id, token=token, private=private, revision=revision)
        card = lora_card(folder / weights[0], repo_id, base_model=base_model, **card_kwargs)
        return push_folder_to_hub(
            folder,
            repo_id,
            card=card,
            token=token,
            private=private,
            revision=revision,
            commit_message=commit_message,
            ignore_patterns=ignore_patterns,
        )


__all__ = [
    "PICKLE_SUFFIXES",
    "files_to_upload",
    "lora_card",
    "lora_facts",
    "model_card",
    "pipeline_card",
    "push_folder_to_hub",
    "push_lora_to_hub",
    "push_model_to_hub",
    "push_pipeline_to_hub",
    "render_card",
    "template_dir",
    "transformer_facts",
    "vae_facts",
]
