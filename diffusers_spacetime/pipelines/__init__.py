from .pipeline_output import SpacetimeVideoPipelineOutput
from .pipeline_spacetime import SpacetimeVideoPipeline

__all__ = ["SpacetimeVideoPipeline", "SpacetimeVideoPipelineOutput"]
