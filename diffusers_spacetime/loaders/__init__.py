from .lora import SpacetimeLoraLoaderMixin

__all__ = ["SpacetimeLoraLoaderMixin"]
