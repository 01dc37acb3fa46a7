class SpacetimeVideoPipelineOutput:  # placeholder: being written
    pass
