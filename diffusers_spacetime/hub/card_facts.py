"""Facts a model card states, read from the object being published: configs, parameter counts, LoRA file headers.

Nothing is estimated: a fact the object does not carry is left out or written as "not recorded" by the template.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from .card_format import config_rows, format_count, format_value
from .references import is_hub_id


def parameter_count(module: Any) -> int | None:
    """Parameters of a torch module; None for what has none to count (a tokenizer, a scheduler)."""
    if isinstance(module, torch.nn.Module):
        return sum(parameter.numel() for parameter in module.parameters())
    return None


def patch_size(config: Any) -> tuple[int, int, int]:
    """(t, h, w) patch of the transformer; an int patch size covers one frame and p x p pixels."""
    patch = config.get("patch_size", 1)
    if isinstance(patch, int):
        return (1, patch, patch)
    patch = tuple(patch)
    return (1, *patch) if len(patch) == 2 else patch  # type: ignore[return-value]


def vae_facts(vae: Any) -> dict[str, Any]:
    """What a card says about a video VAE: compression ratios, latent size, widths, parameters.

    The ratios and latent channels come from `vae_latent_space`, which reads what each VAE class exposes (diffusers'
    Wan, LTX and CogVideoX VAEs keep them under other names).
    """
    from ..pipelines.video_vae import vae_latent_space

    config = dict(vae.config)
    space = vae_latent_space(vae)
    return {
        "class_name": type(vae).__name__,
        "spatial_compression": space.spatial_compression_ratio,
        "temporal_compression": space.temporal_compression_ratio,
        "latent_channels": space.latent_channels,
        "block_out_channels": format_value(config.get("block_out_channels")),
        "layers_per_block": config.get("layers_per_block"),
        "has_latent_statistics": config.get("latents_mean") is not None and config.get("latents_std") is not None,
        "parameters": format_count(parameter_count(vae) or 0),
        "config_rows": config_rows(config),
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
        "patch_size": patch_size(config),
        "attention_span": format_value(config.get("attention_span")),
        "text_embed_dim": config.get("text_embed_dim"),
        "in_channels": config.get("in_channels"),
        "parameters": format_count(parameter_count(transformer) or 0),
        "config_rows": config_rows(config),
    }


def lora_weights_file(lora_path: str | os.PathLike) -> Path:
    """The LoRA `.safetensors` file itself, or the one such file in a folder."""
    path = Path(lora_path)
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors"))
        if len(candidates) != 1:
            raise ValueError(f"Expected one .safetensors LoRA file in {path}, found {[c.name for c in candidates]}.")
        path = candidates[0]
    return path


def lora_facts(lora_path: str | os.PathLike) -> dict[str, Any]:
    """Rank, alpha, targets and size of a LoRA file (or of the one `.safetensors` file in a folder), header only."""
    from safetensors import safe_open

    path = lora_weights_file(lora_path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    adapter_config = {}
    if "lora_adapter_metadata" in metadata:
        packed = json.loads(metadata["lora_adapter_metadata"])
        adapter_config = {key.removeprefix("transformer."): value for key, value in packed.items()}
    ranks = sorted({shape[0] for key, shape in shapes.items() if ".lora_A." in key})
    modules = sorted({key.rsplit(".lora_", 1)[0].removeprefix("transformer.") for key in shapes if ".lora_" in key})
    rank = adapter_config.get("r") or (ranks[0] if len(ranks) == 1 else None)
    return {
        "weight_name": path.name,
        "rank": rank if rank is not None else format_value(ranks),
        "lora_alpha": adapter_config.get("lora_alpha", "not recorded"),
        # Module paths with the block index dropped: `blocks.3.attn1.to_q` -> `attn1.to_q`.
        "target_modules": sorted({re.sub(r"^(transformer_)?blocks\.\d+\.", "", name) for name in modules}),
        "num_modules": len(modules),
        "parameters": format_count(sum(math.prod(shape) for shape in shapes.values())),
        "file_size": f"{path.stat().st_size / 1e6:.2f} MB",
        "use_dora": bool(adapter_config.get("use_dora", False)),
    }


def text_encoder_description(text_encoder: Any) -> str:
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
    if source and is_hub_id(source):
        description += f" from `{source}`"
    return description


def pipeline_components(pipeline: Any) -> list[tuple[str, str, str]]:
    """(name, class, parameters) of each component the pipeline has, in loading order."""
    components = []
    for name in ("text_encoder", "tokenizer", "transformer", "vae", "scheduler"):
        component = getattr(pipeline, name, None)
        if component is None:
            continue
        count = parameter_count(component)
        components.append((name, type(component).__name__, format_count(count) if count is not None else "-"))
    return components
