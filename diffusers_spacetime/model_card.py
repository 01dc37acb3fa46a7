"""Model cards and Hub pushes: the public names, gathered from `diffusers_spacetime.hub`.

A pipeline's or model's own `push_to_hub` writes the project's card ([`~hub.push.SpacetimeHubMixin`]); LoRA adapter
folders go up with [`push_lora_to_hub`]. The card code lives in `hub/`, one module per job: `card_template`
(templates, front matter, rendering), `card_facts` (facts read from the objects), `card_format` (how facts read),
`cards` (which facts go on which card), `upload` (safetensors-only commits) and `push` (the push hook).
"""

from .hub.card_facts import lora_facts, transformer_facts, vae_facts
from .hub.card_template import render_card, template_dir
from .hub.cards import CardText, card_for, lora_card, model_card, pipeline_card, transformer_card, vae_card
from .hub.push import SpacetimeHubMixin, push_lora_to_hub
from .hub.upload import PICKLE_SUFFIXES, files_to_upload, push_folder_to_hub

__all__ = [
    "PICKLE_SUFFIXES",
    "CardText",
    "SpacetimeHubMixin",
    "card_for",
    "files_to_upload",
    "lora_card",
    "lora_facts",
    "model_card",
    "pipeline_card",
    "push_folder_to_hub",
    "push_lora_to_hub",
    "render_card",
    "template_dir",
    "transformer_card",
    "transformer_facts",
    "vae_card",
    "vae_facts",
]
