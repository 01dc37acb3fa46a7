class SpacetimeVideoPipeline:  # placeholder: being written
    pass
