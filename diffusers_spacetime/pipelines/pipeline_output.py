from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput


@dataclass
class SpacetimeVideoPipelineOutput(BaseOutput):
    r"""
    Output of the Spacetime video pipelines.

    Args:
        frames (`np.ndarray`, `torch.Tensor` or `list[list[PIL.Image.Image]]`):
            The generated videos, by `output_type`: `"np"` an array `(batch_size, num_frames, height, width, 3)` with
            values in [0, 1]; `"pt"` a tensor `(batch_size, num_frames, 3, height, width)` in [0, 1]; `"pil"` one list
            of `num_frames` PIL images per video; `"latent"` the denoised latents `(batch_size, latent_channels,
            latent_frames, latent_height, latent_width)` in the transformer's normalised latent space.
    """

    frames: np.ndarray | torch.Tensor | list[list[PIL.Image.Image]]
