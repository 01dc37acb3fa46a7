"""Flow matching as diffusers' SD3/Flux/Wan training scripts: the batch's inputs, timestep sampling, conditioning
frames and the loss, each a function of explicit arguments.

For a clean normalised latent x0 and noise n, the input is x_s = (1 - s) x0 + s n at a noise level s drawn through
`diffusers.training_utils.compute_density_for_timestep_sampling` (the shifted sigmas of a
`FlowMatchEulerDiscreteScheduler`), the timestep is 1000 s, and the transformer regresses the velocity n - x0,
weighted by `compute_loss_weighting_for_sd3`. Every random number comes from the micro-step's generator
(`training.seeding`), in a fixed order: posterior sample, caption dropout, noise, timesteps, conditioning frames.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from diffusers_spacetime.pipelines.pipeline_spacetime import transformer_prediction
from training.loop import MicroStep


@dataclass(frozen=True)
class TimestepDensity:
    """The timestep density and loss weighting of `diffusers.training_utils` (SD3 paper): --weighting_scheme,
    --logit_mean, --logit_std, --mode_scale."""

    weighting_scheme: str = "logit_normal"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29

    @classmethod
    def from_args(cls, args) -> TimestepDensity:
        return cls(args.weighting_scheme, args.logit_mean, args.logit_std, args.mode_scale)


@dataclass(frozen=True)
class ConditionFrames:
    """With probability `probability`, a sample keeps its first 1..`max_frames` latent frames clean (timestep 0, no
    loss): the same weights learn image-to-video and continuation. Off at probability 0."""

    probability: float = 0.0
    max_frames: int = 1


@torch.no_grad()
def encode_batch(
    batch: dict,
    vae,
    prompt_encoder,
    normalize_latents,
    generator: torch.Generator,
    device: torch.device,
    weight_dtype: torch.dtype,
    max_sequence_length: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A loader batch -> (latents (B, C, F', h, w) normalised, prompt_embeds (B, L, D) float32, mask (B, L) long).

    Clips are encoded by `vae` to a posterior sample and captions by `prompt_encoder.encode_prompt` (the pipeline's
    own text path, or a `PromptEmbedsTable`); a batch of the latent cache (`latent_mean` in it) holds both already.
    `normalize_latents` is the pipeline's, so training sees exactly what sampling sees.
    """
    if "latent_mean" in batch:
        mean, std = batch["latent_mean"].to(device), batch["latent_std"].to(device)
        latents = mean + std * torch.randn(mean.shape, device=device, generator=generator)
        prompt_embeds, prompt_mask = batch["prompt_embeds"].to(device), batch["prompt_attention_mask"].to(device)
    else:
        pixel_values = batch["pixel_values"].to(device=device, dtype=weight_dtype)  # (B, 3, F, H, W)
        latents = vae.encode(pixel_values).latent_dist.sample(generator=generator)
        prompt_embeds, prompt_mask, _, _ = prompt_encoder.encode_prompt(
            batch["captions"],
            do_classifier_free_guidance=False,
            max_sequence_length=max_sequence_length,
            device=device,
            dtype=torch.float32,
        )
    return normalize_latents(latents.float()), prompt_embeds.float(), prompt_mask.long()


def encode_empty_prompt(prompt_encoder, max_sequence_length: int | None, device: torch.device):
    """The empty prompt's (embeds (1, L, D), mask (1, L)): what a dropped caption becomes."""
    embeds, mask, _, _ = prompt_encoder.encode_prompt(
        [""], do_classifier_free_guidance=False, max_sequence_length=max_sequence_length, device=device,
        dtype=torch.float32,
    )  # fmt: skip
    return embeds, mask


def drop_captions(
    prompt_embeds: torch.Tensor,
    prompt_mask: torch.Tensor,
    empty_embeds: torch.Tensor,
    empty_mask: torch.Tensor,
    probability: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Caption dropout for classifier-free guidance: each row becomes the empty prompt's embedding (what the
    pipeline's unconditional branch uses) with `probability`. (B, L, D) and (B, L) in and out."""
    drop = torch.rand(prompt_embeds.shape[0], device=prompt_embeds.device, generator=generator) < probability
    prompt_embeds = torch.where(drop[:, None, None], empty_embeds.to(prompt_embeds), prompt_embeds)
    return prompt_embeds, torch.where(drop[:, None], empty_mask.to(prompt_mask), prompt_mask)


def sample_timesteps(
    noise_scheduler: FlowMatchEulerDiscreteScheduler,
    density: TimestepDensity,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas (B,), timesteps (B,) = 1000 sigmas): a density over [0, 1] -> an index into the (shifted) training
    sigmas, as diffusers' SD3 script samples them."""
    draws = compute_density_for_timestep_sampling(
        weighting_scheme=density.weighting_scheme,
        batch_size=batch_size,
        logit_mean=density.logit_mean,
        logit_std=density.logit_std,
        mode_scale=density.mode_scale,
        device=device,
        generator=generator,
    )
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    indices = (draws * num_train_timesteps).long().clamp(0, num_train_timesteps - 1).cpu()
    sigmas = noise_scheduler.sigmas[indices].to(device=device, dtype=dtype)
    return sigmas, noise_scheduler.timesteps[indices].to(device=device)


def condition_mask(
    batch_size: int, num_latent_frames: int, probability: float, max_frames: int, patch_frames: int, generator
) -> torch.Tensor:
    """(B, F_latent) bool: True for the clean conditioning frames (the first 1..max_frames, whole tubelets)."""
    device = generator.device
    mask = torch.zeros(batch_size, num_latent_frames, dtype=torch.bool, device=device)
    max_tubelets = min(max_frames, num_latent_frames - patch_frames) // patch_frames  # keep one noisy tubelet
    if probability <= 0 or max_tubelets < 1:
        return mask
    use = torch.rand(batch_size, device=device, generator=generator) < probability  # (B,)
    tubelets = torch.randint(1, max_tubelets + 1, (batch_size,), device=device, generator=generator)  # (B,)
    frames = torch.arange(num_latent_frames, device=device)[None]  # (1, F)
    return use[:, None] & (frames < (tubelets * patch_frames)[:, None])


def flow_matching_loss(
    transformer,
    latents: torch.Tensor,
    prompt_embeds: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    noise_scheduler: FlowMatchEulerDiscreteScheduler,
    density: TimestepDensity,
    generator: torch.Generator,
    patch_frames: int,
    condition: ConditionFrames = ConditionFrames(),
) -> torch.Tensor:
    """Flow-matching loss of one batch of normalised latents (B, C, F, H, W); conditioning frames excluded.

    With `condition` on, the clean frames get timestep 0 in a per-frame timestep (B, F); otherwise the timestep is
    (B,), as plain text-to-video.
    """
    batch_size, _, num_latent_frames = latents.shape[:3]
    device = latents.device
    noise = torch.randn(latents.shape, device=device, dtype=latents.dtype, generator=generator)
    sigmas, timesteps = sample_timesteps(noise_scheduler, density, batch_size, generator, device, latents.dtype)
    clean = condition_mask(
        batch_size, num_latent_frames, condition.probability, condition.max_frames, patch_frames, generator
    ).to(device)  # (B, F)
    frame_sigmas = torch.where(clean, 0.0, sigmas[:, None])  # (B, F)
    sigma = frame_sigmas[:, None, :, None, None]  # (B, 1, F, 1, 1)
    noisy_latents = (1.0 - sigma) * latents + sigma * noise
    if condition.probability > 0:
        timestep = torch.where(clean, 0.0, timesteps[:, None].float())  # (B, F): per-frame noise levels
    else:
        timestep = timesteps  # (B,)

    prediction = transformer_prediction(transformer, noisy_latents, timestep, prompt_embeds, prompt_attention_mask)
    target = noise - latents
    weighting = compute_loss_weighting_for_sd3(density.weighting_scheme, sigmas).float()[:, None, None, None, None]
    error = weighting * (prediction - target).pow(2)  # (B, C, F, H, W)
    keep = (~clean).float()[:, None, :, None, None]  # (B, 1, F, 1, 1): loss on noisy frames only
    return (error * keep).sum() / (keep.sum() * error.shape[1] * error.shape[3] * error.shape[4])


@dataclass
class FlowMatchingStep:
    """The loss step `training.loop.train` runs for a text-to-video transformer: a batch -> latents and text
    (`encode_batch`), caption dropout, the flow-matching loss.

    Args:
        prompt_encoder: has `encode_prompt` (the pipeline, or a `PromptEmbedsTable`).
        normalize_latents: the pipeline's `normalize_latents`.
        empty_prompt: `encode_empty_prompt`'s (embeds (1, L, D), mask (1, L)), what a dropped caption becomes.
    """

    transformer: torch.nn.Module
    vae: torch.nn.Module
    prompt_encoder: object
    normalize_latents: Callable[[torch.Tensor], torch.Tensor]
    noise_scheduler: FlowMatchEulerDiscreteScheduler
    empty_prompt: tuple[torch.Tensor, torch.Tensor]
    density: TimestepDensity
    caption_dropout: float
    max_sequence_length: int | None
    patch_frames: int  # latent frames per patch: conditioning frames come in whole tubelets
    device: torch.device
    weight_dtype: torch.dtype = torch.float32
    condition: ConditionFrames = field(default_factory=ConditionFrames)

    def __call__(self, batch: dict, generator: torch.Generator, global_step: int = 0) -> MicroStep:
        latents, embeds, mask = encode_batch(
            batch, self.vae, self.prompt_encoder, self.normalize_latents, generator, self.device, self.weight_dtype,
            self.max_sequence_length,
        )  # fmt: skip
        embeds, mask = drop_captions(embeds, mask, *self.empty_prompt, self.caption_dropout, generator)
        loss = flow_matching_loss(
            self.transformer, latents, embeds, mask, self.noise_scheduler, self.density, generator,
            self.patch_frames, self.condition,
        )  # fmt: skip
        return MicroStep(loss)
