from .autoencoder_kl_spacetime import AutoencoderKLSpacetime
from .transformer_spacetime import SpacetimeDiTModel

__all__ = ["AutoencoderKLSpacetime", "SpacetimeDiTModel"]
