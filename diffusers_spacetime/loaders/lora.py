class SpacetimeLoraLoaderMixin:  # placeholder: being written
    pass
