"""The VAE trainer's optional adversarial term: a 3D PatchGAN discriminator, hinge losses and the adaptive weight.

As in taming-transformers / LDM's `LPIPSWithDiscriminator` (Esser et al. 2021, https://arxiv.org/abs/2012.09841), with
a discriminator over (frames, height, width) patches so flicker between frames is penalised too: after a warm-up of
reconstruction-only steps, the discriminator learns real against reconstructed clips with the hinge loss, and the
autoencoder gets `weight * lambda * -mean(D(reconstruction))`, where `lambda = |grad L_rec| / |grad L_adv|` at the
decoder's last layer balances the two gradients (clamped to [0, 1e4]).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SpacetimePatchDiscriminator(nn.Module):
    """A PatchGAN over videos: `(B, 3, F, H, W)` in [-1, 1] -> logits `(B, 1, F, H / 2^n, W / 2^n)`, one per patch.

    Strided 3D convolutions halve height and width `num_layers` times and keep the frame count (kernel 3 in time, so
    a patch sees its neighbouring frames; a 1-frame image works too). GroupNorm rather than BatchNorm: batches hold
    one bucket and may be small, and DDP needs no synchronised statistics.
    """

    def __init__(self, in_channels: int = 3, channels: int = 64, num_layers: int = 3):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, channels, (3, 4, 4), stride=(1, 2, 2), padding=1),
            nn.LeakyReLU(0.2),
        ]
        width = channels
        for index in range(1, num_layers):
            out = channels * min(2**index, 8)
            layers += [
                nn.Conv3d(width, out, (3, 4, 4), stride=(1, 2, 2), padding=1, bias=False),
                nn.GroupNorm(min(32, out // 4), out),
                nn.LeakyReLU(0.2),
            ]
            width = out
        layers.append(nn.Conv3d(width, 1, 3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layers(pixel_values)  # (B, 1, F, h, w)


def discriminator_hinge_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """mean(relu(1 - D(real))) + mean(relu(1 + D(fake))), halved (taming's `hinge_d_loss`)."""
    return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())


def generator_adversarial_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()


def adaptive_adversarial_weight(
    reconstruction_loss: torch.Tensor, adversarial_loss: torch.Tensor, last_layer: torch.Tensor
) -> torch.Tensor:
    """|d L_rec / d w| / (|d L_adv / d w| + 1e-4) at the decoder's last weight `w`, clamped to [0, 1e4], detached."""
    reconstruction_grad = torch.autograd.grad(reconstruction_loss, last_layer, retain_graph=True)[0]
    adversarial_grad = torch.autograd.grad(adversarial_loss, last_layer, retain_graph=True)[0]
    weight = reconstruction_grad.norm() / (adversarial_grad.norm() + 1e-4)
    return weight.clamp(0.0, 1e4).detach()
