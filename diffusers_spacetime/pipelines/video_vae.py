"""The video VAEs the pipelines and training scripts accept, and how each one's latent space is read.

`AutoencoderKLSpacetime` and diffusers' `AutoencoderKLWan`, `AutoencoderKLLTXVideo` and `AutoencoderKLCogVideoX` all
encode (B, 3, F, H, W) in [-1, 1] to a `latent_dist` and decode with `.sample`, but they keep their channel count,
compression ratios and latent statistics in different places. `vae_latent_space(vae)` reads them, dispatching on
the class, into one `VAELatentSpace`; the transformer then always works in the normalised space

    z_norm = (z - latents_mean) * scaling_factor / latents_std

which is each VAE's own pipeline convention: Wan (per-channel mean/std, scaling 1), LTX-Video (per-channel mean/std
buffers and `scaling_factor`), CogVideoX (`scaling_factor` only) and this package's VAE (mean/std, scaling 1).
"""

from __future__ import annotations

import dataclasses

import torch
from diffusers import AutoencoderKLCogVideoX, AutoencoderKLLTXVideo, AutoencoderKLWan

from ..models.autoencoder_kl_spacetime import AutoencoderKLSpacetime

VideoVAE = AutoencoderKLSpacetime | AutoencoderKLWan | AutoencoderKLLTXVideo | AutoencoderKLCogVideoX
VIDEO_VAE_CLASSES = (AutoencoderKLSpacetime, AutoencoderKLWan, AutoencoderKLLTXVideo, AutoencoderKLCogVideoX)


@dataclasses.dataclass(frozen=True)
class VAELatentSpace:
    """A video VAE's latent layout and normalisation."""

    latent_channels: int
    spatial_compression_ratio: int
    temporal_compression_ratio: int
    latents_mean: tuple[float, ...]  # one per channel
    latents_std: tuple[float, ...]
    scaling_factor: float

    def statistics(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std / scaling_factor), each (1, C, 1, 1, 1): `z_norm = (z - mean) / (std / scaling_factor)`."""
        mean = torch.tensor(self.latents_mean, dtype=torch.float32)
        std = torch.tensor(self.latents_std, dtype=torch.float32) / self.scaling_factor
        shape = (1, self.latent_channels, 1, 1, 1)
        return mean.view(shape).to(device, dtype), std.view(shape).to(device, dtype)


def _per_channel(vae, name: str, values, channels: int, default: float) -> tuple[float, ...]:
    if values is None:
        return (default,) * channels
    values = tuple(float(value) for value in (values.tolist() if torch.is_tensor(values) else values))
    if len(values) != channels:
        raise ValueError(
            f"{type(vae).__name__}'s `{name}` needs {channels} values (one per latent channel), got {len(values)}."
        )
    return values


def vae_latent_space(vae: VideoVAE) -> VAELatentSpace:
    """The latent channels, compression ratios and normalisation of one of `VIDEO_VAE_CLASSES`."""
    config = vae.config
    if isinstance(vae, AutoencoderKLSpacetime):
        channels, spatial, temporal = (
            config.latent_channels,
            vae.spatial_compression_ratio,
            vae.temporal_compression_ratio,
        )
        mean, std, scaling = config.latents_mean, config.latents_std, 1.0
    elif isinstance(vae, AutoencoderKLWan):
        channels, spatial, temporal = config.z_dim, config.scale_factor_spatial, config.scale_factor_temporal
        mean, std, scaling = config.latents_mean, config.latents_std, 1.0
    elif isinstance(vae, AutoencoderKLLTXVideo):
        # Ratios are attributes (derived from patch sizes and scaling layers); mean/std are weights, not config.
        channels, spatial, temporal = (
            config.latent_channels,
            vae.spatial_compression_ratio,
            vae.temporal_compression_ratio,
        )
        mean, std, scaling = vae.latents_mean, vae.latents_std, config.scaling_factor
    elif isinstance(vae, AutoencoderKLCogVideoX):
        # As diffusers' CogVideoX pipelines: spatial 2 ** (blocks - 1), temporal from the config, latents * scaling
        # (they ignore the config's latents_mean / latents_std, and so does this).
        channels, temporal = config.latent_channels, config.temporal_compression_ratio
        spatial = 2 ** (len(config.block_out_channels) - 1)
        mean, std, scaling = None, None, config.scaling_factor
    else:
        names = ", ".join(cls.__name__ for cls in VIDEO_VAE_CLASSES)
        raise TypeError(f"`vae` must be one of {names}; got {type(vae).__name__}.")
    return VAELatentSpace(
        latent_channels=int(channels),
        spatial_compression_ratio=int(spatial),
        temporal_compression_ratio=int(temporal),
        latents_mean=_per_channel(vae, "latents_mean", mean, channels, 0.0),
        latents_std=_per_channel(vae, "latents_std", std, channels, 1.0),
        scaling_factor=float(scaling),
    )


def vae_decode_kwargs(vae: VideoVAE, batch_size: int, device) -> dict:
    """Extra arguments of `vae.decode`: LTX-Video decoders with timestep conditioning take the decode noise level,
    0 for clean latents (LTX's pipeline default `decode_timestep=0`)."""
    if isinstance(vae, AutoencoderKLLTXVideo) and vae.config.timestep_conditioning:
        return {"temb": torch.zeros(batch_size, device=device, dtype=vae.dtype)}
    return {}
