"""Train `AutoencoderKLSpacetime` on a video folder with accelerate: reconstruction + KL, PSNR on held-out clips.

    accelerate launch training/train_autoencoder.py --data_dir data/shapes --vae_config training/configs/vae_tiny.json \
        --output_dir runs/vae-tiny --max_train_steps 2000

Loss: L1 (or MSE) reconstruction of a posterior sample, plus `--kl_weight` x KL(q(z|x) || N(0, I)) summed over the
latent and divided by the number of pixel values (LDM/diffusers' normalisation, so their 1e-6 carries over). With
`--adversarial_weight w` (off by default), after `--adversarial_start_step` steps a 3D PatchGAN discriminator trains
against the reconstructions and the autoencoder gets w x the adaptive weight x its hinge generator loss
(`training/adversarial.py`), as real-video VAEs are trained to look sharp. No perceptual (LPIPS) loss: its VGG
weights cannot be had offline here.

At the end the script computes the per-channel mean and std of the latents (posterior samples) over up to
`--stats_num_samples` training clips, stores them as `latents_mean` / `latents_std` in the VAE config (the pipeline
normalises latents with them), and saves the VAE to `output_dir/vae` (loadable with `from_pretrained`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a file (accelerate launch training/train_autoencoder.py): find `training`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from accelerate.logging import get_logger

from diffusers_spacetime import AutoencoderKLSpacetime
from diffusers_spacetime.evaluation import psnr
from training import adversarial, checkpointing, flags
from training.card_facts import training_facts, training_loss_results
from training.data import (
    FrameCountBatchSampler,
    add_data_arguments,
    check_data_arguments,
    collate_videos,
    dataset_from_args,
    make_dataloader,
)
from training.loop import MicroStep, folder_batches, make_accelerator, train
from training.optimization import make_optimizer
from training.run_log import write_results

logger = get_logger(__name__)

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, each with its help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_arguments(parser)
    group = parser.add_argument_group("model")
    flags.add_value_flags(
        group,
        ("--vae_config", None, str(CONFIG_DIR / "vae_tiny.json"),
         "JSON file of AutoencoderKLSpacetime arguments for a fresh model (training/configs/vae_{tiny,small,base}.json)."),
        ("--pretrained_vae_path", None, None, "Continue from a saved VAE folder instead of --vae_config."),
    )  # fmt: skip
    group.add_argument(
        "--gradient_checkpointing", action="store_true", help="Recompute activations in backward to save memory."
    )
    group.add_argument(
        "--train_decoder_only",
        action="store_true",
        help="Freeze the encoder of --pretrained_vae_path and train the decoder only (like sd-vae-ft-mse): the "
        "latents, their latents_mean/latents_std and every transformer trained on them stay valid.",
    )
    group = parser.add_argument_group("loss")
    group.add_argument(
        "--reconstruction_loss", choices=("l1", "mse"), default="l1", help="Per-pixel reconstruction loss."
    )
    flags.add_value_flags(
        group,
        ("--kl_weight", float, 1e-6, "Weight of the KL term (see the module docstring)."),
        ("--saturation_weight", float, 0.0,
         "Extra per-pixel loss weight 1 + w x saturation (max - min of the target's RGB in [0, 1]), normalised to "
         "mean 1 per batch. A plain loss learns a neutral background first and a small colored object last (the "
         "shapes data: ~4%% of the pixels); w = 10 makes the object count. 0: off."),
    )  # fmt: skip
    group.add_argument(
        "--color_augmentation",
        type=float,
        default=0.0,
        metavar="P",
        help="Probability that a clip's colors get a random hue rotation about the gray axis, chroma scale and "
        "lightness shift (grays stay put): the VAE learns every hue, not only the few its data has (a new color "
        "concept needs it). 0: off.",
    )
    flags.add_value_flags(
        parser.add_argument_group("adversarial loss (off by default)"),
        ("--adversarial_weight", float, 0.0,
         "Weight of the PatchGAN generator loss (times the adaptive weight that balances its gradient against the "
         "reconstruction's at the decoder's last layer); 0: no discriminator. Taming/LDM use 0.5."),
        ("--adversarial_start_step", int, 1000,
         "Optimizer steps of reconstruction only before the discriminator and the adversarial term start."),
        ("--discriminator_channels", int, 64, "Width of the discriminator's first layer."),
        ("--discriminator_layers", int, 3, "Strided layers of the discriminator (patch size)."),
        ("--discriminator_learning_rate", float, None,
         "AdamW (betas 0.5, 0.9) learning rate of the discriminator; default: --learning_rate."),
    )  # fmt: skip
    flags.add_optimization_arguments(
        parser,
        output_dir_help="Run folder: checkpoints, logs, train_log.jsonl and the final vae/.",
        seed_help="Seed of the model init, data order and posterior samples.",
        train_batch_size=4,
        mixed_precision_help="Autocast precision; default: the accelerate config's (no on CPU).",
    )
    flags.add_checkpoint_arguments(parser)
    flags.add_value_flags(
        parser.add_argument_group("validation and latent statistics"),
        ("--validation_data_dir", None, None,
         "Folder of held-out clips for PSNR; default: --num_validation_clips files held out of --data_dir."),
        ("--num_validation_clips", int, 4, "Files held out of --data_dir when no --validation_data_dir."),
        ("--validation_steps", int, 200, "Measure validation PSNR every n optimizer steps."),
        ("--stats_num_samples", int, 256, "Training clips over which latents_mean/latents_std are computed."),
    )  # fmt: skip
    flags.add_hub_arguments(parser, uploads="the final VAE (output_dir/vae) with its model card", repo="VAE")
    return parser


def saturation_weights(pixel_values: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel loss weights 1 + weight x saturation, mean 1 over the batch: (B, 1, F, H, W)."""
    if pixel_values.shape[1] != 3:
        raise ValueError(f"--saturation_weight needs RGB clips (3 channels), got {pixel_values.shape[1]}")
    rgb = (pixel_values.float() + 1) / 2  # (B, 3, F, H, W) in [0, 1]
    weights = 1 + weight * (rgb.amax(dim=1, keepdim=True) - rgb.amin(dim=1, keepdim=True))
    return weights / weights.mean()


def color_augmentation(
    pixel_values: torch.Tensor, generator: torch.Generator | None = None, probability: float = 1.0
) -> torch.Tensor:
    """Random per-clip recoloring of (B, 3, F, H, W) clips in [-1, 1] that leaves gray pixels (R = G = B) unchanged.

    Each pixel splits into its gray level (mean of RGB) and its chroma (the rest, orthogonal to the gray axis). The
    chroma is rotated about the gray axis by an angle in [0, 2 pi) and scaled by [0.6, 1.4]; the gray level moves by
    [-0.4, 0.4] times the pixel's chroma relative to the clip's most colorful pixel, so colored pixels get lighter or
    darker while the neutral scene keeps its values. Each clip is recolored with `probability`, else left as is.
    """
    if pixel_values.shape[1] != 3:
        raise ValueError(f"--color_augmentation needs RGB clips (3 channels), got {pixel_values.shape[1]}")
    batch = pixel_values.shape[0]
    values = pixel_values.float()

    def uniform(low: float, high: float) -> torch.Tensor:
        draw = torch.rand(batch, generator=generator, device=generator.device if generator else None)
        return (low + (high - low) * draw).to(values.device)

    angle, scale, shift = uniform(0, 2 * math.pi), uniform(0.6, 1.4), uniform(-0.4, 0.4)
    keep = uniform(0, 1) >= probability  # these clips keep their colors: identity parameters
    angle, scale, shift = angle.masked_fill(keep, 0), scale.masked_fill(keep, 1), shift.masked_fill(keep, 0)
    axis = torch.full((3,), 3**-0.5, device=values.device)
    cross = torch.tensor([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], dtype=values.dtype, device=values.device) * 3**-0.5
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    # Rodrigues: rotation by `angle` about the unit gray axis, (B, 3, 3)
    rotation = cos * torch.eye(3, device=values.device) + sin * cross + (1 - cos) * torch.outer(axis, axis)
    gray = values.mean(dim=1, keepdim=True)  # (B, 1, F, H, W)
    chroma = values - gray  # (B, 3, F, H, W)
    chroma = torch.einsum("bij,bjfhw->bifhw", rotation, chroma) * scale[:, None, None, None, None]
    strength = chroma.norm(dim=1, keepdim=True)  # (B, 1, F, H, W)
    strength = strength / strength.flatten(1).amax(1).clamp_min(1e-6)[:, None, None, None, None]
    gray = gray + shift[:, None, None, None, None] * strength
    return (gray + chroma).clamp(-1, 1).to(pixel_values.dtype)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parses and checks the flags; a bad value raises a ValueError that names its flag."""
    args = build_parser().parse_args(argv)
    check_data_arguments(args)
    flags.check_run_arguments(args)
    if not 0 <= args.kl_weight < float("inf"):
        raise ValueError(f"--kl_weight must be 0 or more, got {args.kl_weight}")
    if not 0 <= args.saturation_weight < float("inf"):
        raise ValueError(f"--saturation_weight must be 0 or more, got {args.saturation_weight}")
    if not 0 <= args.color_augmentation <= 1:
        raise ValueError(f"--color_augmentation must be a probability in [0, 1], got {args.color_augmentation}")
    if args.train_decoder_only and not args.pretrained_vae_path:
        raise ValueError("--train_decoder_only needs --pretrained_vae_path (the frozen encoder comes from it)")
    if not 0 <= args.adversarial_weight < float("inf"):
        raise ValueError(f"--adversarial_weight must be 0 or more, got {args.adversarial_weight}")
    if args.adversarial_start_step < 0:
        raise ValueError(f"--adversarial_start_step must be 0 or more, got {args.adversarial_start_step}")
    if args.discriminator_channels < 4 or args.discriminator_channels % 4:
        raise ValueError(
            f"--discriminator_channels must be a positive multiple of 4, got {args.discriminator_channels}"
        )
    if args.discriminator_layers < 1:
        raise ValueError(f"--discriminator_layers must be at least 1, got {args.discriminator_layers}")
    if args.discriminator_learning_rate is not None and not 0 < args.discriminator_learning_rate < float("inf"):
        raise ValueError(f"--discriminator_learning_rate must be positive, got {args.discriminator_learning_rate}")
    if args.stats_num_samples < 1:
        raise ValueError(f"--stats_num_samples must be at least 1, got {args.stats_num_samples}")
    if args.validation_data_dir is None and args.num_validation_clips < 1:
        raise ValueError(
            f"--num_validation_clips must be at least 1 without --validation_data_dir, got {args.num_validation_clips}"
        )
    return args


class _AutoencoderWithPosterior(torch.nn.Module):
    """Encode -> sample -> decode in one forward, so DDP/FSDP see every parameter used through `forward`."""

    def __init__(self, vae: AutoencoderKLSpacetime, train_decoder_only: bool = False):
        super().__init__()
        self.vae = vae
        self.train_decoder_only = train_decoder_only

    def forward(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None):
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.train_decoder_only):
            posterior = self.vae.encode(pixel_values).latent_dist
        reconstruction = self.vae.decode(posterior.sample(generator=generator)).sample  # (B, 3, F, H, W)
        return reconstruction, posterior.mean, posterior.logvar


@torch.no_grad()
def validation_psnr(vae: AutoencoderKLSpacetime, dataset, device: torch.device) -> float:
    """Mean PSNR of decode(mode(encode(x))) over a dataset, one clip at a time."""
    was_training = vae.training
    vae.eval()
    values = []
    for index in range(len(dataset)):
        pixel_values = dataset[index]["pixel_values"][None].to(device)  # (1, 3, F, H, W)
        latents = vae.encode(pixel_values).latent_dist.mode()
        values.append(psnr(pixel_values, vae.decode(latents).sample.float().clamp(-1, 1), data_range=2.0))
    vae.train(was_training)
    return float(np.mean(values))


@torch.no_grad()
def latent_statistics(vae, dataset, accelerator, num_samples: int, batch_size: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of posterior samples over up to `num_samples` clips, sharded over processes.

    Samples, not modes: the text-to-video script trains on posterior samples, so these are the statistics of what
    the transformer sees (early in VAE training the posterior std still dominates the spread of the means).
    """
    indices = list(range(min(num_samples, len(dataset))))[accelerator.process_index :: accelerator.num_processes]
    subset = torch.utils.data.Subset(dataset, indices)
    sampler = FrameCountBatchSampler(
        [dataset.batch_keys[i] for i in indices], batch_size, shuffle=False, drop_last=False
    )
    loader = torch.utils.data.DataLoader(subset, batch_sampler=sampler, collate_fn=collate_videos)
    channels = vae.config.latent_channels
    totals = torch.zeros(3, channels, dtype=torch.float64, device=accelerator.device)  # count, sum, sum of squares
    vae.eval()
    generator = torch.Generator(device=accelerator.device).manual_seed(accelerator.process_index)
    for batch in loader:
        posterior = vae.encode(batch["pixel_values"].to(accelerator.device)).latent_dist
        latents = posterior.sample(generator=generator).double()  # (B, C, F', h, w)
        latents = latents.transpose(0, 1).flatten(1)  # (C, B*F*H*W)
        totals[0] += latents.shape[1]
        totals[1] += latents.sum(1)
        totals[2] += latents.pow(2).sum(1)
    totals = accelerator.reduce(totals, reduction="sum")
    mean = totals[1] / totals[0]
    std = (totals[2] / totals[0] - mean.pow(2)).clamp_min(1e-12).sqrt()
    return mean.tolist(), std.tolist()


def load_autoencoder(args: argparse.Namespace) -> AutoencoderKLSpacetime:
    """The VAE to train (--pretrained_vae_path or a fresh --vae_config), after checking the clip sizes fit it."""
    if args.pretrained_vae_path:
        vae = AutoencoderKLSpacetime.from_pretrained(args.pretrained_vae_path, use_safetensors=True)
    else:
        vae = AutoencoderKLSpacetime.from_config(json.loads(Path(args.vae_config).read_text()))
    temporal, spatial = vae.temporal_compression_ratio, vae.spatial_compression_ratio
    if (args.num_frames - 1) % temporal:
        raise ValueError(f"--num_frames must be 1 + k * {temporal} for this VAE, got {args.num_frames}")
    if args.height % spatial or args.width % spatial:
        raise ValueError(f"--height and --width must be multiples of {spatial}, got {args.height}x{args.width}")
    for frames, height, width in args.buckets or ():
        if (frames - 1) % temporal or height % spatial or width % spatial:
            raise ValueError(
                f"--buckets {frames}x{height}x{width}: frames must be 1 + k * {temporal} and height and width "
                f"multiples of {spatial} for this VAE"
            )
    if args.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    if args.train_decoder_only:
        vae.encoder.requires_grad_(False)
        if vae.config.latents_mean is None:
            raise ValueError("--train_decoder_only needs a VAE with latents_mean/latents_std in its config")
    return vae


def make_discriminator(args: argparse.Namespace, accelerator):
    """(discriminator, its optimizer), prepared; (None, None) without --adversarial_weight."""
    if args.adversarial_weight <= 0:
        return None, None
    discriminator = adversarial.SpacetimePatchDiscriminator(3, args.discriminator_channels, args.discriminator_layers)
    optimizer = torch.optim.AdamW(
        discriminator.parameters(), lr=args.discriminator_learning_rate or args.learning_rate, betas=(0.5, 0.9)
    )
    return accelerator.prepare(discriminator, optimizer)


def autoencoder_loss_step(
    args, accelerator, model, discriminator, discriminator_optimizer, batch, generator, global_step
) -> MicroStep:
    """Reconstruction + KL (+ the adversarial term after its warm-up) of one micro-batch; the discriminator's own
    update runs after the autoencoder's."""
    pixel_values = batch["pixel_values"]  # (B, 3, F, H, W) in [-1, 1]
    if args.color_augmentation:
        pixel_values = color_augmentation(pixel_values, generator, args.color_augmentation)
    reconstruction, mean, logvar = model(pixel_values, generator)
    reconstruction = reconstruction.float()
    error = reconstruction - pixel_values
    error = error.abs() if args.reconstruction_loss == "l1" else error.pow(2)
    if args.saturation_weight:
        error = error * saturation_weights(pixel_values, args.saturation_weight)
    reconstruction_loss = error.mean()
    mean, logvar = mean.float(), logvar.float()
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).sum() / pixel_values.numel()
    loss = reconstruction_loss + args.kl_weight * kl
    step = MicroStep(loss, {"reconstruction": reconstruction_loss, "kl": kl})
    if discriminator is None:
        return step
    zero = torch.zeros((), device=loss.device)
    step.logs["adversarial"] = step.logs["discriminator"] = zero
    if global_step < args.adversarial_start_step:
        return step
    # the generator's pass: the discriminator's weights get no gradient from it
    critic = accelerator.unwrap_model(discriminator).requires_grad_(False)
    generator_loss = adversarial.generator_adversarial_loss(critic(reconstruction))
    critic.requires_grad_(True)
    last_layer = accelerator.unwrap_model(model).vae.decoder.conv_out.weight
    balance = adversarial.adaptive_adversarial_weight(reconstruction_loss, generator_loss, last_layer)
    step.loss = loss + args.adversarial_weight * balance * generator_loss
    step.logs["adversarial"] = generator_loss
    del step.logs["discriminator"]

    def update_discriminator() -> dict[str, torch.Tensor]:
        # real and reconstructed clips in one pass (one DDP forward per backward)
        logits = discriminator(torch.cat([pixel_values, reconstruction.detach().to(pixel_values.dtype)]))
        discriminator_loss = adversarial.discriminator_hinge_loss(*logits.float().chunk(2))
        accelerator.backward(discriminator_loss)
        discriminator_optimizer.step()
        discriminator_optimizer.zero_grad(set_to_none=True)
        return {"discriminator": discriminator_loss}

    step.after_update = update_discriminator
    return step


def split_data(args: argparse.Namespace):
    """(training clips, held-out clips for PSNR): --validation_data_dir, or --num_validation_clips of the data."""
    dataset = dataset_from_args(args)
    if args.validation_data_dir:
        train_dataset, validation_dataset = dataset, dataset_from_args(args, args.validation_data_dir)
    else:
        train_dataset, validation_dataset = dataset.split(args.num_validation_clips, seed=args.seed)
    logger.info(
        f"Data {dataset.format_summary()}; {len(train_dataset)} training, {len(validation_dataset)} validation"
    )
    return train_dataset, validation_dataset


def main(args: argparse.Namespace) -> dict:
    """Trains; returns {"losses": [per-step loss], "global_step", "validation_psnr", "latents_mean", "latents_std",
    "vae_path"} (and "hub_commit" with --push_to_hub)."""
    output_dir = Path(args.output_dir)
    accelerator = make_accelerator(args, "train_autoencoder")
    vae = load_autoencoder(args)
    model = _AutoencoderWithPosterior(vae, args.train_decoder_only)

    train_dataset, validation_dataset = split_data(args)
    train_dataloader = make_dataloader(
        train_dataset, args.train_batch_size, seed=args.seed, num_workers=args.dataloader_num_workers
    )
    batch_sampler = train_dataloader.batch_sampler
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], args)
    model, optimizer, train_dataloader = accelerator.prepare(model, optimizer, train_dataloader)
    discriminator, discriminator_optimizer = make_discriminator(args, accelerator)

    def validate(step: int, max_train_steps: int) -> None:
        if step % args.validation_steps == 0:
            if accelerator.is_main_process:
                value = validation_psnr(vae, validation_dataset, accelerator.device)
                accelerator.log({"validation_psnr": value}, step=step)
                logger.info(f"Step {step}: validation PSNR {value:.2f} dB")
            accelerator.wait_for_everyone()

    run = train(
        accelerator, args, model, optimizer,
        partial(autoencoder_loss_step, args, accelerator, model, discriminator, discriminator_optimizer),
        folder_batches(accelerator, train_dataloader, batch_sampler, train_dataset),
        num_batches=len(train_dataloader), num_clips=len(train_dataset),
        also_accumulate=() if discriminator is None else (discriminator,), after_step=validate,
    )  # fmt: skip

    # Latent statistics, final validation, save (and push)
    if args.train_decoder_only:  # the frozen encoder's latents: keep the statistics its transformers were trained with
        latents_mean, latents_std = list(vae.config.latents_mean), list(vae.config.latents_std)
    else:
        latents_mean, latents_std = latent_statistics(
            vae, train_dataset, accelerator, args.stats_num_samples, args.train_batch_size
        )
    result = {"losses": run.losses, "global_step": run.global_step, "latents_mean": latents_mean}
    result["latents_std"] = latents_std
    if accelerator.is_main_process:
        result["validation_psnr"] = validation_psnr(vae, validation_dataset, accelerator.device)
        accelerator.log({"validation_psnr": result["validation_psnr"]}, step=run.global_step)
        vae.register_to_config(latents_mean=latents_mean, latents_std=latents_std)
        result["vae_path"] = str(checkpointing.save_folder_atomically(vae.save_pretrained, output_dir / "vae"))
        write_results(output_dir, result)
        logger.info(f"Saved {result['vae_path']}; validation PSNR {result['validation_psnr']:.2f} dB")
        if args.push_to_hub:
            result["hub_commit"] = push_autoencoder(args, accelerator, vae, run, len(train_dataset), result)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def push_autoencoder(args, accelerator, vae: AutoencoderKLSpacetime, run, num_clips: int, result: dict) -> str | None:
    """Uploads the VAE with its card (diffusers' `push_to_hub`, the project's card); returns the commit id."""
    results = {
        "Validation PSNR (dB)": {
            "value": round(result["validation_psnr"], 2),
            "note": "held-out clips, posterior mode",
        },
        **training_loss_results(args.output_dir),
    }
    training = training_facts(args, accelerator, run, num_clips)
    commit = vae.push_to_hub(args.hub_model_id, token=args.hub_token, training=training, results=results)
    logger.info(f"Pushed the VAE to {args.hub_model_id}")
    return getattr(commit, "oid", None)


if __name__ == "__main__":
    main(parse_args())
