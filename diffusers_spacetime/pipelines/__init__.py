from .pipeline_output import SpacetimeVideoPipelineOutput
from .pipeline_spacetime import SpacetimeVideoPipeline
from .pipeline_spacetime_image2video import SpacetimeImageToVideoPipeline

__all__ = ["SpacetimeImageToVideoPipeline", "SpacetimeVideoPipeline", "SpacetimeVideoPipelineOutput"]
