"""The card templates of `model_cards/`, their front matter, and rendering one with Jinja."""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

CARD_TAGS = ("diffusers-spacetime", "diffusers", "text-to-video", "video-generation")
DEFAULT_LICENSE = "apache-2.0"
TEMPLATES = ("pipeline", "vae", "transformer", "lora")


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
    checkout = Path(__file__).resolve().parents[2] / "model_cards"
    if (checkout / "pipeline.md").is_file():
        return checkout
    raise FileNotFoundError(
        "The model card templates were not found: neither the package data `diffusers_spacetime.model_cards` nor "
        f"{checkout}. Install the package from a checkout (`pip install -e .`) or a wheel built with its "
        "pyproject settings."
    )


def front_matter(
    *,
    license: str,
    tags: Iterable[str],
    base_model: str | list[str] | None,
    datasets: str | list[str] | None,
    base_model_relation: str,
) -> ModelCardData:
    """The card's YAML header: library, pipeline tag, license, the package's tags and `tags`, base model, datasets."""
    data = ModelCardData(
        library_name="diffusers",
        pipeline_tag="text-to-video",
        license=license,
        tags=list(dict.fromkeys([*CARD_TAGS, *tags])),
        base_model=base_model,
        datasets=[datasets] if isinstance(datasets, str) else (list(datasets) if datasets else None),
    )
    if base_model is not None:
        data.base_model_relation = base_model_relation
    return data


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
