"""Which facts go on which card: the pipeline, the VAE, the DiT and a LoRA adapter each have one template.

Every number on a card is read from the object being published (see `card_facts`) or passed in by the caller as
[`CardText`] fields; a missing fact is written as "not recorded". [`card_for`] picks the card by the object's class.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Mapping
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from ..models.autoencoder_kl_spacetime import AutoencoderKLSpacetime
from ..models.transformer_spacetime import SpacetimeDiTModel
from ..pipelines.pipeline_spacetime import DEFAULT_MAX_SEQUENCE_LENGTH, SpacetimeVideoPipeline
from .card_facts import lora_facts, pipeline_components, text_encoder_description, transformer_facts, vae_facts
from .card_format import result_rows, training_rows
from .card_template import DEFAULT_LICENSE, front_matter, render_card

DEFAULT_PROMPT = "a red circle moves from left to right"


@dataclasses.dataclass(frozen=True)
class CardText:
    """What the caller knows and the object does not: the run's records and the card's prose.

    Args:
        training (`dict`, *optional*): facts of the run, e.g. `steps`, `batch_size`, `learning_rate`, `dataset`,
            `hardware`, `wall_time_s`, `final_loss`; unknown keys are listed as given.
        results (`dict`, *optional*): measured numbers, `{"metric": value}` or
            `{"metric": {"value": v, "note": "how it was measured"}}`.
        datasets (`str` or `list[str]`, *optional*): Hub dataset ids (front matter `datasets`).
        base_model (`str`, *optional*): the checkpoint this one was fine-tuned from, or the pipeline an adapter
            works on (front matter `base_model`).
        license, tags, title, description, limitations: card text; `limitations` adds to the computed ones.
        usage (`dict`, *optional*): overrides for the usage snippet (`prompt`, `height`, `width`, `num_frames`,
            `num_inference_steps`, `guidance_scale`, `fps`, ...); the checkpoint's default sizes otherwise.
    """

    training: Mapping[str, Any] | None = None
    results: Mapping[str, Any] | None = None
    datasets: str | list[str] | None = None
    base_model: str | None = None
    license: str = DEFAULT_LICENSE
    tags: Iterable[str] = ()
    title: str | None = None
    description: str | None = None
    limitations: Iterable[str] = ()
    usage: Mapping[str, Any] | None = None

    def card_data(self, kind_tags: Iterable[str], base_model_relation: str = "finetune") -> ModelCardData:
        return front_matter(
            license=self.license,
            tags=(*kind_tags, *self.tags),
            base_model=self.base_model,
            datasets=self.datasets,
            base_model_relation=base_model_relation,
        )

    def facts(self, repo_id: str, computed_limitations: Iterable[str]) -> dict[str, Any]:
        """The template variables every card shares."""
        return {
            "repo_id": repo_id,
            "title": self.title or repo_id.split("/")[-1],
            "description": self.description,
            "training_rows": training_rows(self.training),
            "result_rows": result_rows(self.results),
            "limitations": [*computed_limitations, *self.limitations],
        }


@functools.singledispatch
def card_for(obj: Any, repo_id: str, *, subfolder: str | None = None, **card_text: Any) -> ModelCard:
    """The card of a pipeline, VAE or DiT, chosen by its class; `card_text` are [`CardText`] fields.

    `subfolder` is where a model's weights sit inside the repo (for the usage snippet).
    """
    raise TypeError(f"No model card for {type(obj).__name__}: expected a Spacetime pipeline, VAE or DiT.")


def _pipeline_snippet(usage: Mapping[str, Any] | None, default_size: tuple, multiple: int, temporal: int):
    """Arguments of the card's usage snippet: the checkpoint's own (frames, height, width) unless overridden."""
    usage = dict(usage or {})
    frames, height, width = default_size
    return {
        "prompt": usage.get("prompt", DEFAULT_PROMPT),
        "height": usage.get("height", height or 4 * multiple),
        "width": usage.get("width", width or 4 * multiple),
        "num_frames": usage.get("num_frames", frames or 1 + 2 * temporal),
        "num_inference_steps": usage.get("num_inference_steps", 25),
        "guidance_scale": usage.get("guidance_scale", 5.0),
        "fps": usage.get("fps", 8),
    }


@card_for.register
def pipeline_card(pipeline: SpacetimeVideoPipeline, repo_id: str, *, subfolder=None, **card_text: Any) -> ModelCard:
    """The card of a whole `SpacetimeVideoPipeline` checkpoint: its components' configs and sizes fill it."""
    text = CardText(**card_text)
    vae, transformer = vae_facts(pipeline.vae), transformer_facts(pipeline.transformer)
    config = pipeline.config
    height, width, frames = config.get("default_height"), config.get("default_width"), config.get("default_num_frames")
    patch_t, patch_h, patch_w = transformer["patch_size"]
    spatial, temporal = vae["spatial_compression"], vae["temporal_compression"]
    snippet = _pipeline_snippet(text.usage, (frames, height, width), spatial * max(patch_h, patch_w), temporal)
    latent_frames = (snippet["num_frames"] - 1) // temporal + 1
    # Tokens the DiT attends over: latent frames / t-patch x latent rows / h-patch x latent columns / w-patch.
    tokens = (
        (latent_frames // patch_t)
        * (snippet["height"] // spatial // patch_h)
        * (snippet["width"] // spatial // patch_w)
    )
    text_model = text_encoder_description(getattr(pipeline, "text_encoder", None))
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
    return render_card(
        "pipeline",
        text.card_data(("pipeline",)),
        components=pipeline_components(pipeline),
        vae=vae,
        transformer=transformer,
        default_size=(frames, height, width),
        latent_frames=latent_frames,
        tokens=tokens,
        scheduler=type(pipeline.scheduler).__name__,
        text_encoder_description=text_model,
        **text.facts(repo_id, computed_limitations),
        **snippet,
    )


@card_for.register
def vae_card(vae: AutoencoderKLSpacetime, repo_id: str, *, subfolder: str | None = None, **card_text: Any):
    """The card of an `AutoencoderKLSpacetime`: compression, latent size and a round-trip snippet."""
    text = CardText(**card_text)
    facts = vae_facts(vae)
    usage = dict(text.usage or {})
    spatial, temporal = facts["spatial_compression"], facts["temporal_compression"]
    frames = usage.get("num_frames", 1 + 2 * temporal)
    height, width = usage.get("height", 4 * spatial), usage.get("width", 4 * spatial)
    statistics = " (set in this checkpoint)." if facts["has_latent_statistics"] else " (not set in this checkpoint)."
    computed_limitations = [
        f"Input frames must number 1 + k x {temporal}; height and width must be multiples of {spatial}.",
        "Latents are not normalised by the model: pipelines use `config.latents_mean` / `config.latents_std`"
        + statistics,
    ]
    return render_card(
        "vae",
        text.card_data(("autoencoder", "video-vae")),
        vae=facts,
        subfolder=subfolder,
        num_frames=frames,
        height=height,
        width=width,
        latent_shape=(facts["latent_channels"], (frames - 1) // temporal + 1, height // spatial, width // spatial),
        **text.facts(repo_id, computed_limitations),
    )


@card_for.register
def transformer_card(transformer: SpacetimeDiTModel, repo_id: str, *, subfolder: str | None = None, **card_text):
    """The card of a `SpacetimeDiTModel`: width, depth, patch, attention span and a denoiser-call snippet."""
    text = CardText(**card_text)
    facts = transformer_facts(transformer)
    usage = dict(text.usage or {})
    patch_t, patch_h, patch_w = facts["patch_size"]
    computed_limitations = [
        "A denoiser only: it needs a text encoder, the VAE it was trained with and a scheduler (see "
        "`SpacetimeVideoPipeline`) to make videos.",
        f"Latent height and width must be multiples of the patch ({patch_h} x {patch_w}); text features must be "
        f"{facts['text_embed_dim']}-d.",
    ]
    return render_card(
        "transformer",
        text.card_data(("transformer", "dit")),
        transformer=facts,
        subfolder=subfolder,
        latent_frames=usage.get("latent_frames", 2 * patch_t + (1 if patch_t == 1 else 0)),
        latent_height=usage.get("latent_height", 4 * patch_h),
        latent_width=usage.get("latent_width", 4 * patch_w),
        **text.facts(repo_id, computed_limitations),
    )


def model_card(model: Any, repo_id: str, *, subfolder: str | None = None, **card_text: Any) -> ModelCard:
    """The card of one model: `AutoencoderKLSpacetime` (vae.md) or `SpacetimeDiTModel` (transformer.md)."""
    if not isinstance(model, (AutoencoderKLSpacetime, SpacetimeDiTModel)):
        raise TypeError(
            f"model_card takes an AutoencoderKLSpacetime or a SpacetimeDiTModel, got {type(model).__name__}."
        )
    return card_for(model, repo_id, subfolder=subfolder, **card_text)


def lora_card(
    lora_path: str | os.PathLike,
    repo_id: str,
    *,
    base_model: str,
    trigger: str | None = None,
    **card_text: Any,
) -> ModelCard:
    """The card of a LoRA adapter of the pipeline's transformer, read from its `.safetensors` file.

    Args:
        lora_path: the adapter file, or the folder `save_lora_weights` wrote.
        repo_id (`str`): where the adapter goes (`user/name`), or the folder it loads from, for the snippet.
        base_model (`str`): the pipeline repo id the adapter was trained on (front matter `base_model`).
        trigger (`str`, *optional*): a phrase the training captions used to invoke the adapter.
        card_text: [`CardText`] fields.
    """
    text = CardText(base_model=base_model, **card_text)
    facts = lora_facts(lora_path)
    snippet = dict(text.usage or {})
    snippet.setdefault("prompt", f"{trigger}, {DEFAULT_PROMPT}" if trigger else DEFAULT_PROMPT)
    snippet.setdefault("num_inference_steps", 25)
    snippet.setdefault("fps", 8)
    computed_limitations = [
        f"Works on top of `{base_model}` only: the adapter's shapes match that transformer "
        f"({facts['num_modules']} adapted layers).",
        "Fusing (`pipe.fuse_lora()`) bakes the adapter into the weights; `pipe.unload_lora_weights()` removes it.",
    ]
    return render_card(
        "lora",
        text.card_data(("lora",), base_model_relation="adapter"),
        base_model=base_model,
        lora=facts,
        trigger=trigger,
        prompt=snippet["prompt"],
        num_inference_steps=snippet["num_inference_steps"],
        fps=snippet["fps"],
        extra_call_args={
            key: value for key, value in snippet.items() if key in ("height", "width", "num_frames", "guidance_scale")
        },
        **text.facts(repo_id, computed_limitations),
    )
