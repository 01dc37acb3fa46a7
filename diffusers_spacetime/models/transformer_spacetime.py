class SpacetimeDiTModel:  # placeholder: being written
    pass
