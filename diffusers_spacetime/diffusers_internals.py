"""The private diffusers names this package relies on, each with the reason; the only module that imports them.

diffusers does not promise these names across releases (pyproject pins diffusers to 0.42), so they sit in one place
and tests/test_diffusers_internals.py checks each one's shape: an upgrade that moves or changes one fails there,
by name, instead of somewhere deep inside a pipeline call.

- `LOADABLE_CLASSES` (`pipelines.pipeline_loading_utils`): a component library missing from it is treated as remote
  code when a pipeline is pulled from the Hub (the download step looks for `transformer/diffusers_spacetime.py`).
  [`register_loadable_library`] adds the package as a regular library.
- `_fetch_state_dict` (`loaders.lora_base`): reads a LoRA state dict and its metadata from a folder, a file or a Hub
  repo with diffusers' own download, safetensors and weights-only pickle rules; the LoRA loader reuses it rather
  than copying those rules.
- `LoraBaseMixin._save_lora_weights`: writes `pytorch_lora_weights.safetensors` with per-component prefixes and the
  adapter metadata; the LoRA loader's `save_lora_weights` calls it as diffusers' own loaders do.
- `PushToHubMixin._upload_folder` (`utils.hub_utils`): the step `save_pretrained(..., push_to_hub=True)` ends in,
  after writing diffusers' generic card; `hub.push.SpacetimeHubMixin` overrides it (and `push_to_hub`) to write the
  project's model card and refuse pickles.
- `TransformerBlockRegistry`, `TransformerBlockMetadata`, `AttentionProcessorRegistry`, `AttentionProcessorMetadata`
  (`hooks._helpers`): FirstBlockCache, MagCache and LayerSkip find a model's blocks and attention outputs by class
  through these registries.
- `ContextParallelInput`, `ContextParallelOutput` (`models._modeling_parallel`): the entries of a model's `_cp_plan`,
  which `enable_parallelism(ContextParallelConfig(...))` reads to split and gather tokens.
- `_AttentionBackendRegistry` (`models.attention_dispatch`): the process-wide attention backend that
  `dispatch_attention_fn` uses when a layer has none of its own.
"""

from diffusers.hooks._helpers import (
    AttentionProcessorMetadata,
    AttentionProcessorRegistry,
    TransformerBlockMetadata,
    TransformerBlockRegistry,
)
from diffusers.loaders.lora_base import _fetch_state_dict as fetch_lora_state_dict
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.attention_dispatch import AttentionBackendName
from diffusers.models.attention_dispatch import _AttentionBackendRegistry as AttentionBackendRegistry
from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES

# The save and load methods diffusers calls on a component of a registered library: the same as for its own models
# and schedulers.
LOADABLE_METHODS = {
    "ModelMixin": ["save_pretrained", "from_pretrained"],
    "SchedulerMixin": ["save_pretrained", "from_pretrained"],
}


def register_loadable_library(library: str) -> None:
    """Make `library`'s models and schedulers load from Hub pipeline repos like diffusers' own (no remote code)."""
    LOADABLE_CLASSES.setdefault(library, {name: list(methods) for name, methods in LOADABLE_METHODS.items()})


def active_attention_backend() -> AttentionBackendName:
    """The attention backend `dispatch_attention_fn` uses for a layer that sets none."""
    return AttentionBackendRegistry.get_active_backend()[0]


__all__ = [
    "LOADABLE_CLASSES",
    "AttentionBackendRegistry",
    "AttentionProcessorMetadata",
    "AttentionProcessorRegistry",
    "ContextParallelInput",
    "ContextParallelOutput",
    "TransformerBlockMetadata",
    "TransformerBlockRegistry",
    "active_attention_backend",
    "fetch_lora_state_dict",
    "register_loadable_library",
]
