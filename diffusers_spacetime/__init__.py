"""diffusers-spacetime: Sora-style video generation for diffusers.

Exported classes report ``__module__ == "diffusers_spacetime"`` so that saved ``model_index.json`` files name
``["diffusers_spacetime", ClassName]``: checkpoints then survive refactors of the package's internal modules.
"""

import diffusers
from diffusers import DiffusionPipeline, ModelMixin, SchedulerMixin  # noqa: F401  (the pipeline loader looks these up here)

from .diffusers_internals import register_loadable_library
from .loaders.lora import SpacetimeLoraLoaderMixin
from .models.autoencoder_kl_spacetime import AutoencoderKLSpacetime
from .models.transformer_spacetime import SpacetimeDiTModel
from .pipelines.pipeline_output import SpacetimeVideoPipelineOutput
from .pipelines.pipeline_spacetime import SpacetimeVideoPipeline
from .pipelines.pipeline_spacetime_image2video import SpacetimeImageToVideoPipeline

__version__ = "0.1.0"

__all__ = [
    "AutoencoderKLSpacetime",
    "SpacetimeDiTModel",
    "SpacetimeImageToVideoPipeline",
    "SpacetimeLoraLoaderMixin",
    "SpacetimeVideoPipeline",
    "SpacetimeVideoPipelineOutput",
]

_MODELS = (AutoencoderKLSpacetime, SpacetimeDiTModel)
_PIPELINES = (SpacetimeVideoPipeline, SpacetimeImageToVideoPipeline)

for _cls in (*_MODELS, *_PIPELINES, SpacetimeLoraLoaderMixin, SpacetimeVideoPipelineOutput):
    _cls.__module__ = __name__

# diffusers treats a component library it does not list as remote code when pulling a pipeline from the Hub.
# Registering the package as a regular library makes Hub pulls load its classes with plain `from_pretrained`.
register_loadable_library(__name__)

# `DiffusionPipeline.from_pretrained(path)` resolves `_class_name` with `getattr(diffusers, name)`. Exposing our
# pipelines there (after `import diffusers_spacetime`) makes the generic entry point work without
# `trust_remote_code`: loading a checkpoint never executes code shipped inside it.
for _cls in _PIPELINES:
    if not hasattr(diffusers, _cls.__name__):
        setattr(diffusers, _cls.__name__, _cls)
