"""AutoencoderKLSpacetime: the causal video VAE that compresses space and time ("the loaf").

Scope: one self-contained module with the causal time convolution, the residual and resampling blocks, the encoder,
the decoder, spatio-temporal tiling and the model. A video `(B, C, F, H, W)` in [-1, 1] with `F = 1 + k*r` frames
becomes a latent `(B, latent_channels, 1 + k, H/s, W/s)` (s = spatial, r = temporal compression ratio). Frame 0 is
encoded on its own (an image is a one-frame video), every later latent frame summarises `r` frames, and nothing
depends on the future: encoding the first `1 + j*r` frames gives the first `1 + j` latent frames of the whole clip.

Design choices, and why (the default is 8x8 spatial, 4x temporal, 16 channels, as diffusers' `AutoencoderKLWan`,
and has to decode >= 1.5x faster than it):

1. (2+1)D factorised convolutions. Every 3x3 convolution is spatial: a `Conv2d` over frames folded into the batch.
   Time is mixed by a causal (3, 1, 1) convolution inside each residual block (between its two spatial convs) and by
   the temporal resamplers. A causal 3x3x3 convolution costs 27*C^2 MACs per voxel; ours cost 9*C^2, plus 3*C^2 where
   time is mixed. This is the main saving over Wan's VAE, which uses 3x3x3 everywhere.
2. Time is mixed only where it is compressed. Residual blocks carry a time convolution only in stages at or beyond
   the first temporal downsampling (and their mirror in the decoder). With the default `(False, True, True)` the
   full-resolution stage, the most expensive one, is purely spatial: its frames are already tied together by the
   lower-resolution stages, so per-frame convolutions there cost little quality and save a third of the FLOPs.
3. The decoder has `layers_per_block` residual blocks per stage, like the encoder (diffusers' `AutoencoderKL` uses
   one more). Its upsamplers narrow to the next stage's width at the low resolution (Wan 2.1 does the same), so no
   residual block needs a shortcut convolution. Together with 1-2 this puts the default decoder at about 0.55x Wan's
   MACs per output pixel although our widths (128..512) are larger than Wan's (96..384). Measured on an H100 (bf16,
   33 frames at 480x832, `benchmarks/bench_vae.py`): decode 3.5x faster than `AutoencoderKLWan`, encode 2.6x.
4. Per-pixel RMS norm over channels (as Wan), not GroupNorm: it works at any width (tiny test configs), needs no
   statistics across frames (causal) or pixels (no tile-dependent statistics), and is one fused `F.rms_norm` on a
   channels-last view, with no fp32 copy of the activation.
5. No attention in the middle block: Wan's single-head spatial attention is quadratic in the latent area and gives
   every pixel a global receptive field, which makes tiles disagree with the untiled output. Convolutions only.
6. Channels-last memory throughout: videos are stored as (B, F, H, W, C), so folding frames into the batch for the
   2D convolutions, the per-pixel norm and the time convolutions (`(k, 1)` convs on `(B, C, F, H*W)`) are views, never
   copies, and cuDNN/oneDNN pick their fast NHWC kernels.
7. Sub-pixel upsampling: a 3x3 convolution at the low resolution to 4x the channels, then depth-to-space. Same MACs
   as nearest-upsample + conv, but the 4x-larger upsampled input is never materialised (lower peak memory), and an
   ICNR initialisation (the 4 sub-pixel kernels start equal) avoids checkerboard artifacts when training starts.
   Time is upsampled the same way (a causal conv to 2x the channels, then depth-to-time).
8. Causal chunks with a convolution cache (as Wan's VAE does with `feat_cache`): the encoder sees frame 0, then
   `r` frames at a time; the decoder one latent frame at a time. Each time-mixing layer keeps the last frames it saw
   in a per-chunk dict, so activation memory is that of one chunk, whatever the clip length. The cache is
   functional (a chunk reads `past`, writes a new `present`), so gradient checkpointing can recompute a chunk after
   later chunks ran, and checkpointed gradients equal plain ones.
9. Tiling accumulates linearly blended tiles straight into a preallocated output and divides by the (separable) sum
   of the blend weights: memory is the output plus one tile, not every tile held in a list as in Wan's VAE. Spatial
   tiles are spread evenly at full size (no thin edge tile) and differ from the untiled output near their seams, as
   in every tiled VAE. Temporal tiles do not restart from a warm-up frame as LTX-Video's do: each continues the
   causal cache that its predecessor reached at its first frame (the functional cache makes that snapshot free), so
   they reproduce the untiled output exactly and need no overlap. Since chunks already bound memory in time, temporal
   tiles mainly bound the size of each tile's output buffer.
10. The decoded video is not clamped: the pipeline's video processor clamps, and training wants the gradient.

`latents_mean` / `latents_std` are stored in the config only; the pipeline normalises latents with them.
"""

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook

# 1. Causal time: the chunk cache and the frames-as-batch views


class _CausalCache(NamedTuple):
    """Tail frames that the time-mixing layers carry from one causal chunk to the next, keyed by layer.

    `past` is what the previous chunk left and is only read; `present` collects what this chunk leaves. A new
    `present` per chunk makes each chunk a pure function of its inputs, which gradient checkpointing relies on when it
    recomputes a chunk after later chunks have run.
    """

    past: dict
    present: dict

    def advance(self) -> "_CausalCache":
        return _CausalCache(past=self.present, present={})


def _fold_frames(hidden_states: torch.Tensor) -> torch.Tensor:
    # (B, C, F, H, W) -> (B*F, C, H, W). Going through the (B, F, H, W, C) view makes this free on channels-last
    # memory and gives canonical strides even for B*F == 1 (else oneDNN falls back to NCHW for single frames).
    return hidden_states.movedim(1, -1).flatten(0, 1).movedim(-1, 1)


def _unfold_frames(hidden_states: torch.Tensor, batch_size: int) -> torch.Tensor:
    # (B*F, C, H, W) -> (B, C, F, H, W)
    return hidden_states.movedim(1, -1).unflatten(0, (batch_size, -1)).movedim(-1, 1)


# 2. Layers


class SpacetimeConv2d(nn.Conv2d):
    r"""A 2D convolution applied to every frame of a `(B, C, F, H, W)` video."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size = hidden_states.shape[0]
        # a no-op on channels-last memory; it pins the layout where a single frame's strides are ambiguous
        hidden_states = _fold_frames(hidden_states).contiguous(memory_format=torch.channels_last)  # (B*F, C, H, W)
        hidden_states = super().forward(hidden_states)  # (B*F, C_out, H', W')
        return _unfold_frames(hidden_states, batch_size)  # (B, C_out, F, H', W')


class SpacetimeCausalTimeConv(nn.Conv2d):
    r"""
    A causal convolution over time only: output frame t sees input frames t-k+1 .. t (strided: every `stride`-th).

    It runs as a `(k, 1)` 2D convolution on the `(B, C, F, H*W)` view of a channels-last video, a view that costs no
    copy; oneDNN has no fast path for a `(k, 1, 1)` `Conv3d` (3-5x slower on CPU), while both cuDNN and oneDNN run
    NHWC 2D convolutions well. Frames before the clip start are zeros unless `pad_start=False`. With a cache, the
    last `k - stride` input frames of one chunk are the left context of the next, so chunked and whole-clip outputs
    are equal.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size=(kernel_size, 1), stride=(stride, 1))
        self.context_frames = kernel_size - stride

    def forward(
        self, hidden_states: torch.Tensor, cache: _CausalCache | None = None, pad_start: bool = True
    ) -> torch.Tensor:
        past = cache.past.get(self) if cache is not None else None
        if past is not None:
            hidden_states = torch.cat([past, hidden_states], dim=2)  # (B, C, ctx+F, H, W)
        elif pad_start:
            # F.pad keeps the channels-last layout (a cat with new zeros would not)
            hidden_states = F.pad(hidden_states, (0, 0, 0, 0, self.context_frames, 0))  # (B, C, ctx+F, H, W)
        if cache is not None:
            # clone: a view would keep the whole chunk's activation alive until the next chunk
            cache.present[self] = hidden_states[:, :, -self.context_frames :].clone()
        height, width = hidden_states.shape[-2:]
        hidden_states = hidden_states.movedim(1, -1).flatten(2, 3).movedim(-1, 1)  # (B, C, ctx+F, H*W)
        hidden_states = hidden_states.contiguous(memory_format=torch.channels_last)  # a no-op, as in SpacetimeConv2d
        hidden_states = super().forward(hidden_states)  # (B, C_out, F', H*W)
        return hidden_states.movedim(1, -1).unflatten(2, (height, width)).movedim(-1, 1)  # (B, C_out, F', H, W)


class SpacetimeRMSNorm(nn.Module):
    r"""RMS norm over channels at every pixel of every frame (as Wan's): causal, no tile-dependent statistics."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = hidden_states.movedim(1, -1)  # (B, F, H, W, C): a view of channels-last memory
        hidden_states = F.rms_norm(hidden_states, (hidden_states.shape[-1],), self.weight, self.eps)
        return hidden_states.movedim(-1, 1)  # (B, C, F, H, W)


class SpacetimeResnetBlock(nn.Module):
    r"""
    Pre-norm residual block: norm, SiLU, 3x3 conv, norm, SiLU, [causal time conv], 3x3 conv, plus the shortcut.

    Args:
        in_channels (`int`): Channels in.
        out_channels (`int`): Channels out; a 1x1 convolution adapts the shortcut when they differ.
        temporal (`bool`): Whether to mix time with a causal (3, 1, 1) convolution before the second spatial conv,
            which makes the pair a factorised (2+1)D convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, temporal: bool) -> None:
        super().__init__()
        self.norm1 = SpacetimeRMSNorm(in_channels)
        self.conv1 = SpacetimeConv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.norm2 = SpacetimeRMSNorm(out_channels)
        self.time_conv = SpacetimeCausalTimeConv(out_channels, out_channels) if temporal else None
        self.conv2 = SpacetimeConv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (
            SpacetimeConv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, hidden_states: torch.Tensor, cache: _CausalCache | None = None) -> torch.Tensor:
        residual = hidden_states if self.conv_shortcut is None else self.conv_shortcut(hidden_states)
        hidden_states = self.conv1(F.silu(self.norm1(hidden_states)))
        hidden_states = F.silu(self.norm2(hidden_states))
        if self.time_conv is not None:
            hidden_states = self.time_conv(hidden_states, cache)
        return self.conv2(hidden_states) + residual


class SpacetimeDownsample(nn.Module):
    r"""
    Halve height and width (3x3 conv, stride 2) and, if `temporal`, the frames after the first (causal (3, 1, 1)
    conv, stride 2). Frame 0 of the clip passes through alone, so `1 + 2m` frames become `1 + m`.
    """

    def __init__(self, num_channels: int, temporal: bool) -> None:
        super().__init__()
        self.conv = SpacetimeConv2d(num_channels, num_channels, kernel_size=3, stride=2, padding=1)
        self.time_conv = SpacetimeCausalTimeConv(num_channels, num_channels, stride=2) if temporal else None

    def forward(self, hidden_states: torch.Tensor, cache: _CausalCache | None = None) -> torch.Tensor:
        hidden_states = self.conv(hidden_states)  # (B, C, F, H/2, W/2): space first, so time mixes at the lower res
        if self.time_conv is None:
            return hidden_states
        if cache is not None and self.time_conv in cache.past:
            # windows (t-1, t, t+1) for t = 0, 2, ...: the previous chunk's last frame is the left context
            return self.time_conv(hidden_states, cache)  # (B, C, F/2, h, w)
        # clip start: frame 0 passes through alone and is the left context of frames 1-2 (no zero padding)
        first_frame = hidden_states[:, :, :1]
        if hidden_states.shape[2] == 1:
            if cache is not None:
                cache.present[self.time_conv] = first_frame.clone()
            return first_frame
        hidden_states = self.time_conv(hidden_states, cache, pad_start=False)  # (B, C, (F-1)/2, h, w)
        return torch.cat([first_frame, hidden_states], dim=2)  # (B, C, 1 + (F-1)/2, h, w)


class SpacetimeUpsample(nn.Module):
    r"""
    Double the frames after the first (if `temporal`) and the height and width, narrowing to `out_channels`.

    Both use depth-to-space: a convolution to 2x (time) or 4x (space) the channels at the low resolution, then a
    reshuffle, with the sub-kernels initialised equal (ICNR) so training starts from a nearest-neighbour upsampler.
    Frame 0 of the clip stays one frame, so `1 + m` latent frames become `1 + 2m`.
    """

    def __init__(self, in_channels: int, out_channels: int, temporal: bool) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.time_conv = SpacetimeCausalTimeConv(in_channels, 2 * in_channels) if temporal else None
        self.conv = SpacetimeConv2d(in_channels, 4 * out_channels, kernel_size=3, padding=1)
        self._init_icnr()

    @torch.no_grad()
    def _init_icnr(self) -> None:
        # output channel c*n + k (k = sub-position) starts as a copy of c*n + 0: https://arxiv.org/abs/1707.02937
        for conv, factor in ((self.time_conv, 2), (self.conv, 4)):
            if conv is None:
                continue
            weight = conv.weight.unflatten(0, (-1, factor))  # (C_out, n, C_in, kT?, kH, kW)
            weight.copy_(weight[:, :1].clone().expand_as(weight))
            bias = conv.bias.unflatten(0, (-1, factor))  # (C_out, n)
            bias.copy_(bias[:, :1].clone().expand_as(bias))

    def forward(self, hidden_states: torch.Tensor, cache: _CausalCache | None = None) -> torch.Tensor:
        if self.time_conv is not None:
            is_clip_start = cache is None or self.time_conv not in cache.past
            first_frame = hidden_states[:, :, :1]
            batch_size, num_channels, num_frames, height, width = hidden_states.shape
            hidden_states = self.time_conv(hidden_states, cache)  # (B, C*2, F, h, w)
            hidden_states = hidden_states.movedim(1, -1).unflatten(-1, (num_channels, 2))  # (B, F, h, w, C, 2)
            hidden_states = hidden_states.permute(0, 1, 5, 2, 3, 4)  # (B, F, 2, h, w, C)
            hidden_states = hidden_states.reshape(batch_size, 2 * num_frames, height, width, num_channels)
            hidden_states = hidden_states.movedim(-1, 1)  # (B, C, 2F, h, w), channels-last memory
            if is_clip_start:
                # an image latent decodes to one frame: keep frame 0 as it is, drop its two upsampled copies
                later_frames = hidden_states[:, :, 2:]
                hidden_states = torch.cat([first_frame, later_frames], dim=2) if num_frames > 1 else first_frame
                # (B, C, 2F-1, h, w)

        hidden_states = self.conv(hidden_states)  # (B, C_out*4, F', h, w)
        batch_size, _, num_frames, height, width = hidden_states.shape
        hidden_states = hidden_states.movedim(1, -1)  # (B, F', h, w, C_out*4)
        hidden_states = hidden_states.unflatten(-1, (self.out_channels, 2, 2))  # (B, F', h, w, C_out, 2, 2)
        hidden_states = hidden_states.permute(0, 1, 2, 5, 3, 6, 4)  # (B, F', h, 2, w, 2, C_out)
        hidden_states = hidden_states.reshape(batch_size, num_frames, 2 * height, 2 * width, self.out_channels)
        return hidden_states.movedim(-1, 1)  # (B, C_out, F', 2h, 2w), channels-last memory


# 3. Blocks: one resolution stage each (the unit of gradient checkpointing)


class SpacetimeDownBlock(nn.Module):
    r"""`num_layers` residual blocks at one resolution, then an optional downsampler."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        temporal: bool,
        add_downsample: bool,
        temporal_downsample: bool,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            SpacetimeResnetBlock(in_channels if index == 0 else out_channels, out_channels, temporal)
            for index in range(num_layers)
        )
        self.downsampler = SpacetimeDownsample(out_channels, temporal_downsample) if add_downsample else None

    def forward(self, hidden_states: torch.Tensor, cache: _CausalCache | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, cache)
        if self.downsampler is not None:
            hidden_states = self.downsampler(hidden_states, cache)
        return hidden_states


class SpacetimeUpBlock(nn.Module):
    r"""`num_layers` residual blocks at one resolution, then an optional upsampler to `out_channels`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_layers: int,
        temporal: bool,
        add_upsample: bool,
        temporal_upsample: bool,
    ) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            SpacetimeResnetBlock(in_channels, in_channels, temporal) for _ in range(num_layers)
        )
        self.upsampler = SpacetimeUpsample(in_channels, out_channels, temporal_upsample) if add_upsample else None

    def forward(self, hidden_states: torch.Tensor, cache: _CausalCache | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, cache)
        if self.upsampler is not None:
            hidden_states = self.upsampler(hidden_states, cache)
        return hidden_states


class SpacetimeMidBlock(nn.Module):
    r"""Two residual blocks at the lowest resolution, where they are cheap (no attention: see the module docstring)."""

    def __init__(self, num_channels: int, temporal: bool, num_layers: int = 2) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            SpacetimeResnetBlock(num_channels, num_channels, temporal) for _ in range(num_layers)
        )

    def forward(self, hidden_states: torch.Tensor, cache: _CausalCache | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, cache)
        return hidden_states


# 4. Encoder and decoder


class SpacetimeEncoder(nn.Module):
    r"""Video `(B, C, F, H, W)` -> posterior moments `(B, 2*latent_channels, 1 + (F-1)/r, H/s, W/s)`."""

    def __init__(
        self,
        in_channels: int,
        latent_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        temporal_downsample: tuple[bool, ...],
    ) -> None:
        super().__init__()
        num_stages = len(block_out_channels)

        # 1. Pixels -> features, per frame
        self.conv_in = SpacetimeConv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)

        # 2. Down stages; stage i mixes time once time is (about to be) compressed: any(temporal_downsample[:i+1])
        self.down_blocks = nn.ModuleList()
        for index, num_channels in enumerate(block_out_channels):
            is_last = index == num_stages - 1
            self.down_blocks.append(
                SpacetimeDownBlock(
                    in_channels=block_out_channels[max(index - 1, 0)],
                    out_channels=num_channels,
                    num_layers=layers_per_block,
                    temporal=any(temporal_downsample[: index + 1]),
                    add_downsample=not is_last,
                    temporal_downsample=not is_last and temporal_downsample[index],
                )
            )

        # 3. Middle
        self.mid_block = SpacetimeMidBlock(block_out_channels[-1], temporal=any(temporal_downsample))

        # 4. Features -> moments (mean, logvar)
        self.norm_out = SpacetimeRMSNorm(block_out_channels[-1])
        self.conv_out = SpacetimeConv2d(block_out_channels[-1], 2 * latent_channels, kernel_size=3, padding=1)

        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, cache: _CausalCache | None = None) -> torch.Tensor:
        # 1. Input projection
        hidden_states = self.conv_in(hidden_states)  # (B, C0, F, H, W)

        # 2.-3. Down stages and middle
        for block in (*self.down_blocks, self.mid_block):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states, cache)
            else:
                hidden_states = block(hidden_states, cache)

        # 4. Output projection
        return self.conv_out(F.silu(self.norm_out(hidden_states)))  # (B, 2*L, f, h, w)


class SpacetimeDecoder(nn.Module):
    r"""Latent `(B, latent_channels, T, h, w)` -> video `(B, out_channels, 1 + (T-1)*r, h*s, w*s)`."""

    def __init__(
        self,
        latent_channels: int,
        out_channels: int,
        block_out_channels: tuple[int, ...],
        layers_per_block: int,
        temporal_downsample: tuple[bool, ...],
    ) -> None:
        super().__init__()
        num_stages = len(block_out_channels)
        reversed_channels = tuple(reversed(block_out_channels))

        # 1. Latent -> features
        self.conv_in = SpacetimeConv2d(latent_channels, reversed_channels[0], kernel_size=3, padding=1)

        # 2. Middle
        self.mid_block = SpacetimeMidBlock(reversed_channels[0], temporal=any(temporal_downsample))

        # 3. Up stages, mirroring the encoder: up stage j is encoder stage (num_stages - 1 - j)
        self.up_blocks = nn.ModuleList()
        for index, num_channels in enumerate(reversed_channels):
            is_last = index == num_stages - 1
            self.up_blocks.append(
                SpacetimeUpBlock(
                    in_channels=num_channels,
                    out_channels=reversed_channels[min(index + 1, num_stages - 1)],
                    num_layers=layers_per_block,
                    temporal=any(temporal_downsample[: num_stages - index]),
                    add_upsample=not is_last,
                    temporal_upsample=not is_last and temporal_downsample[num_stages - 2 - index],
                )
            )

        # 4. Features -> pixels
        self.norm_out = SpacetimeRMSNorm(reversed_channels[-1])
        self.conv_out = SpacetimeConv2d(reversed_channels[-1], out_channels, kernel_size=3, padding=1)

        self.gradient_checkpointing = False

    def forward(self, hidden_states: torch.Tensor, cache: _CausalCache | None = None) -> torch.Tensor:
        # 1. Input projection
        hidden_states = self.conv_in(hidden_states)  # (B, C_top, T, h, w)

        # 2.-3. Middle and up stages
        for block in (self.mid_block, *self.up_blocks):
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states, cache)
            else:
                hidden_states = block(hidden_states, cache)

        # 4. Output projection
        return self.conv_out(F.silu(self.norm_out(hidden_states)))  # (B, C_out, F, H, W)


# 5. Tiling helpers


def _tile_spans(size: int, tile: int, stride: int, full_last: bool = True) -> list[tuple[int, int]]:
    """[start, end) of tiles along one axis, at most `stride` apart, covering `size`.

    With `full_last` (space), all tiles have full length and are spread evenly, so no thin edge tile sees too little
    context. Without it (time, where tiles are exact), tiles start every `stride` and the last one may be short.
    """
    if size <= tile:
        return [(0, size)]
    num_tiles = -(-(size - tile) // stride) + 1  # ceil
    if full_last:
        starts = [round(index * (size - tile) / (num_tiles - 1)) for index in range(num_tiles)]
    else:
        starts = [index * stride for index in range(num_tiles)]
    return [(start, min(start + tile, size)) for start in starts]


def _blend_weights(spans: list[tuple[int, int]], size: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-tile blend weights along one axis, and their sum per position (the normaliser).

    Over each overlap, the weight ramps linearly from one tile to the next across the overlap's middle half: the
    outer quarter next to a tile's own edge, where it saw the least context, is left to its neighbour. That halved
    the seam error against a ramp across the whole overlap (measured in `benchmarks/bench_vae.py`'s setting).
    """
    weights, total = [], torch.zeros(size)
    for index, (start, end) in enumerate(spans):
        positions = torch.arange(start, end, dtype=torch.float32)
        weight = torch.ones(end - start)
        if index > 0 and spans[index - 1][1] > start:  # overlap [start, previous end)
            overlap = spans[index - 1][1] - start
            margin = overlap // 4
            ramp = (positions - start - margin + 1) / (overlap - 2 * margin + 1)
            weight = torch.minimum(weight, ramp.clamp(0, 1))
        if index + 1 < len(spans) and spans[index + 1][0] < end:  # overlap [next start, end)
            overlap = end - spans[index + 1][0]
            margin = overlap // 4
            ramp = (end - margin - positions) / (overlap - 2 * margin + 1)
            weight = torch.minimum(weight, ramp.clamp(0, 1))
        weights.append(weight)
        total[start:end] += weight
    return weights, total


def _normalise(
    accumulated: torch.Tensor, time_total: torch.Tensor, height_total: torch.Tensor, width_total: torch.Tensor
) -> torch.Tensor:
    """Divide blended tiles by their summed weights, axis by axis: never an output-sized weight tensor."""
    accumulated /= time_total.to(accumulated)[:, None, None]
    accumulated /= height_total.to(accumulated)[:, None]
    accumulated /= width_total.to(accumulated)
    return accumulated


def _nearest_multiples(value: int, multiple: int, offset: int = 0) -> str:
    """'a or b': the valid sizes `offset + k*multiple` (at least max(offset, 1)) nearest to `value`."""
    smallest = offset if offset >= 1 else multiple
    if value <= smallest:
        return str(smallest)
    lower = offset + (value - offset) // multiple * multiple
    return f"{lower} or {lower + multiple}"


# 6. The model


class AutoencoderKLSpacetime(ModelMixin, ConfigMixin, AutoencoderMixin):
    r"""
    A causal KL video autoencoder that compresses space and time, with chunked (constant-memory) encoding and
    decoding and spatio-temporal tiling. See the module docstring for the design.

    Args:
        in_channels (`int`, defaults to 3): Channels of the input video.
        out_channels (`int`, defaults to 3): Channels of the decoded video.
        latent_channels (`int`, defaults to 16): Channels of the latent.
        block_out_channels (`tuple[int, ...]`, defaults to `(128, 256, 512, 512)`): Width of each encoder stage (the
            decoder mirrors them). Spatial compression is `2 ** (len(block_out_channels) - 1)`.
        layers_per_block (`int`, defaults to 2): Residual blocks per stage, in the encoder and the decoder.
        temporal_downsample (`tuple[bool, ...]`, defaults to `(False, True, True)`): Whether each downsampling step
            (one fewer than the stages) also halves time. Temporal compression is `2 ** sum(temporal_downsample)`.
        latents_mean (`tuple[float, ...]`, *optional*): Per-channel latent mean, applied by the pipeline (`None`: no
            normalisation).
        latents_std (`tuple[float, ...]`, *optional*): Per-channel latent standard deviation, likewise.
    """

    _supports_gradient_checkpointing = True
    # layerwise casting (e.g. fp8 storage) leaves these in the compute dtype: the norms and the first/last convs
    # set the scale of everything in between
    _skip_layerwise_casting_patterns = ["norm", "conv_in", "conv_out"]
    _no_split_modules = ["SpacetimeResnetBlock", "SpacetimeDownsample", "SpacetimeUpsample"]

    @register_to_config
    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        latent_channels: int = 16,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        temporal_downsample: tuple[bool, ...] = (False, True, True),
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
    ) -> None:
        super().__init__()
        # config.json stores lists; the layers want tuples
        block_out_channels = tuple(block_out_channels)
        temporal_downsample = tuple(temporal_downsample)
        self._check_config(
            in_channels,
            out_channels,
            latent_channels,
            block_out_channels,
            layers_per_block,
            temporal_downsample,
            latents_mean,
            latents_std,
        )

        self.encoder = SpacetimeEncoder(
            in_channels, latent_channels, block_out_channels, layers_per_block, temporal_downsample
        )
        self.decoder = SpacetimeDecoder(
            latent_channels, out_channels, block_out_channels, layers_per_block, temporal_downsample
        )

        # Opt-in memory savers (AutoencoderMixin's enable_slicing / enable_tiling switch them on)
        self.use_slicing = False
        self.use_tiling = False
        # Tile sizes in pixels and frames, scaled with the compression ratios so they stay valid for any config.
        # Space as Wan's VAE at 8x (256 / 192). Time as LTX-Video's at 4x (16 frames), but without overlap:
        # temporal tiles continue the causal cache, so they need no blending (see `_encode`).
        spatial, temporal = self.spatial_compression_ratio, self.temporal_compression_ratio
        self.tile_sample_min_height = self.tile_sample_min_width = 32 * spatial
        self.tile_sample_stride_height = self.tile_sample_stride_width = 24 * spatial
        self.tile_sample_min_num_frames = self.tile_sample_stride_num_frames = 4 * temporal

    @property
    def spatial_compression_ratio(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def temporal_compression_ratio(self) -> int:
        return 2 ** sum(bool(flag) for flag in self.config.temporal_downsample)

    @staticmethod
    def _check_config(
        in_channels, out_channels, latent_channels, block_out_channels, layers_per_block, temporal_downsample,
        latents_mean, latents_std,
    ) -> None:  # fmt: skip
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("latent_channels", latent_channels),
            ("layers_per_block", layers_per_block),
        ):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if not block_out_channels or not all(isinstance(c, int) and c > 0 for c in block_out_channels):
            raise ValueError(
                f"block_out_channels must be a non-empty tuple of positive ints, got {block_out_channels!r}."
            )
        if len(temporal_downsample) != len(block_out_channels) - 1:
            raise ValueError(
                f"len(temporal_downsample) must be len(block_out_channels) - 1 = {len(block_out_channels) - 1} (one "
                f"flag per downsampling step), got {len(temporal_downsample)}."
            )
        if not all(isinstance(flag, bool) for flag in temporal_downsample):
            raise ValueError(f"temporal_downsample must hold bools, got {temporal_downsample!r}.")
        for name, values in (("latents_mean", latents_mean), ("latents_std", latents_std)):
            if values is not None and (
                isinstance(values, (str, bytes))
                or not hasattr(values, "__len__")
                or not all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in values)
            ):
                raise ValueError(f"{name} must be a list of numbers (one per latent channel) or None, got {values!r}.")
            if values is not None and len(values) != latent_channels:
                raise ValueError(
                    f"{name} must have one value per latent channel (latent_channels={latent_channels}), "
                    f"got {len(values)}."
                )
        if latents_std is not None and not all(value > 0 for value in latents_std):
            raise ValueError(f"latents_std must be positive, got {list(latents_std)}.")

    # 6.1 Input checks: a short ValueError naming the argument, the rule and the nearest valid sizes

    def _check_video(self, video: torch.Tensor, name: str) -> None:
        if not isinstance(video, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor (batch, channels, num_frames, height, width), got {type(video).__name__}."
            )
        if video.ndim != 5:
            hint = "; for images add a frame axis: x.unsqueeze(2)" if video.ndim == 4 else ""
            raise ValueError(
                f"{name} must be 5D (batch, channels, num_frames, height, width), got shape {tuple(video.shape)}{hint}."
            )
        batch_size, num_channels, num_frames, height, width = video.shape
        if batch_size < 1:
            raise ValueError(f"{name} must hold at least one video (batch >= 1), got shape {tuple(video.shape)}.")
        if num_channels != self.config.in_channels:
            raise ValueError(f"{name} has {num_channels} channels, but in_channels={self.config.in_channels}.")
        self._check_dtype(video, name)
        ratio = self.temporal_compression_ratio
        if num_frames < 1 or (num_frames - 1) % ratio:
            raise ValueError(
                f"{name}: num_frames={num_frames} is not 1 + k*{ratio}; nearest valid: {_nearest_multiples(num_frames, ratio, 1)}."
            )
        ratio = self.spatial_compression_ratio
        for dim_name, size in (("height", height), ("width", width)):
            if size < 1 or size % ratio:
                raise ValueError(
                    f"{name}: {dim_name}={size} is not a multiple of spatial_compression_ratio={ratio}; "
                    f"nearest valid: {_nearest_multiples(size, ratio)}."
                )

    def _check_latent(self, latent: torch.Tensor, name: str) -> None:
        if not isinstance(latent, torch.Tensor):
            raise TypeError(
                f"{name} must be a torch.Tensor (batch, latent_channels, num_frames, height, width), got {type(latent).__name__}."
            )
        if latent.ndim != 5:
            raise ValueError(
                f"{name} must be 5D (batch, latent_channels, num_frames, height, width), got shape {tuple(latent.shape)}."
            )
        if latent.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"{name} has {latent.shape[1]} channels, but latent_channels={self.config.latent_channels}."
            )
        if min(latent.shape[2:]) < 1:
            raise ValueError(f"{name} must have at least one frame, row and column, got shape {tuple(latent.shape)}.")
        if latent.shape[0] < 1:
            raise ValueError(f"{name} must hold at least one latent (batch >= 1), got shape {tuple(latent.shape)}.")
        self._check_dtype(latent, name)

    def _check_dtype(self, tensor: torch.Tensor, name: str) -> None:
        # A TypeError here instead of the convolution's "Input type (long int) and bias type (float) should be the
        # same". `self.dtype` is the compute dtype under layerwise casting; autocast converts inputs itself.
        if not tensor.dtype.is_floating_point:
            hint = " (uint8 frames: x.float() / 127.5 - 1)" if tensor.dtype == torch.uint8 else ""
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {tensor.dtype}{hint}.")
        if next(self.parameters(), None) is None or torch.is_autocast_enabled(tensor.device.type):
            return
        expected = self.dtype
        if tensor.dtype != expected:
            raise TypeError(
                f"{name} has dtype {tensor.dtype} but the model computes in {expected}: cast it with "
                f"{name}.to({expected}) (or run under torch.autocast)."
            )

    # 6.2 Tiling settings

    def enable_tiling(
        self,
        tile_sample_min_height: int | None = None,
        tile_sample_min_width: int | None = None,
        tile_sample_min_num_frames: int | None = None,
        tile_sample_stride_height: int | None = None,
        tile_sample_stride_width: int | None = None,
        tile_sample_stride_num_frames: int | None = None,
    ) -> None:
        r"""
        Enable tiled encoding and decoding in space and time. Saves memory for large or long videos.

        Spatial tiles overlap, are processed one by one and are blended linearly over the overlap; they are spread
        evenly, at most the stride apart, so all have full size. Temporal tiles continue the causal cache of the
        previous tile, so they reproduce the untiled output exactly; an overlap is allowed but only costs time.

        Args:
            tile_sample_min_height (`int`, *optional*): Tile height in pixels (a multiple of the spatial ratio).
            tile_sample_min_width (`int`, *optional*): Tile width in pixels (likewise).
            tile_sample_min_num_frames (`int`, *optional*): Frames per temporal tile (a multiple of the temporal
                ratio `r`; a tile holds `tile_sample_min_num_frames / r` latent frames).
            tile_sample_stride_height (`int`, *optional*): Largest vertical distance between tiles; the overlap
                (at least `min - stride`) is blended.
            tile_sample_stride_width (`int`, *optional*): Largest horizontal distance between tiles.
            tile_sample_stride_num_frames (`int`, *optional*): Distance in frames between temporal tiles.
        """
        settings = {
            "tile_sample_min_height": tile_sample_min_height,
            "tile_sample_min_width": tile_sample_min_width,
            "tile_sample_min_num_frames": tile_sample_min_num_frames,
            "tile_sample_stride_height": tile_sample_stride_height,
            "tile_sample_stride_width": tile_sample_stride_width,
            "tile_sample_stride_num_frames": tile_sample_stride_num_frames,
        }
        settings = {name: getattr(self, name) if value is None else value for name, value in settings.items()}
        for name, value in settings.items():
            ratio_name = "temporal" if name.endswith("num_frames") else "spatial"
            ratio = getattr(self, f"{ratio_name}_compression_ratio")
            if not isinstance(value, int) or value < 1 or value % ratio:
                raise ValueError(
                    f"{name}={value!r} is not a positive multiple of {ratio_name}_compression_ratio={ratio}; "
                    f"nearest valid: {_nearest_multiples(value, ratio) if isinstance(value, int) else ratio}."
                )
        for axis in ("height", "width", "num_frames"):
            minimum, stride = settings[f"tile_sample_min_{axis}"], settings[f"tile_sample_stride_{axis}"]
            if stride > minimum:
                raise ValueError(
                    f"tile_sample_stride_{axis}={stride} must not exceed tile_sample_min_{axis}={minimum} "
                    "(tiles must meet or overlap)."
                )
        for name, value in settings.items():
            setattr(self, name, value)
        self.use_tiling = True

    def _tile_grid(self, num_latent_frames: int, latent_height: int, latent_width: int):
        """[start, end) tile spans in latent units along time, height and width."""
        spatial, temporal = self.spatial_compression_ratio, self.temporal_compression_ratio
        time_spans = _tile_spans(
            num_latent_frames,
            self.tile_sample_min_num_frames // temporal,
            self.tile_sample_stride_num_frames // temporal,
            full_last=False,
        )
        height_spans = _tile_spans(
            latent_height, self.tile_sample_min_height // spatial, self.tile_sample_stride_height // spatial
        )
        width_spans = _tile_spans(
            latent_width, self.tile_sample_min_width // spatial, self.tile_sample_stride_width // spatial
        )
        return time_spans, height_spans, width_spans

    def _first_frame(self, latent_index: int) -> int:
        # video frame where latent frame t starts: latent 0 is frame 0 alone, every later one r frames
        return 0 if latent_index == 0 else 1 + (latent_index - 1) * self.temporal_compression_ratio

    # 6.3 Encoding

    def _encode_chunks(
        self,
        x: torch.Tensor,
        cache: _CausalCache | None = None,
        start: int = 0,
        end: int | None = None,
        snapshot_at: int | None = None,
    ) -> tuple[torch.Tensor, _CausalCache | None]:
        r"""
        Encode latent frames `[start, end)` of `x` (a clip from its first frame) in causal chunks: frame 0 alone, then
        `r` frames per latent frame, so memory is one chunk's activations. `cache` is the state before `start` (`None`
        at the clip start); the state before latent frame `snapshot_at` is returned for the next temporal tile.
        """
        batch_size, _, num_frames, _, _ = x.shape
        end = 1 + (num_frames - 1) // self.temporal_compression_ratio if end is None else end
        cache = _CausalCache(past={}, present={}) if cache is None else cache
        moments, snapshot = None, None
        for index in range(start, end):
            chunk = x[:, :, self._first_frame(index) : self._first_frame(index + 1)]  # (B, C, 1 or r, H, W)
            chunk = self.encoder(chunk.contiguous(memory_format=torch.channels_last_3d), cache)  # (B, 2*L, 1, h, w)
            if moments is None:
                moments = chunk.new_empty(batch_size, chunk.shape[1], end - start, *chunk.shape[3:])
            moments[:, :, index - start : index - start + 1] = chunk
            cache = cache.advance()
            if index + 1 == snapshot_at:
                snapshot = cache
        return moments, snapshot  # (B, 2*L, end - start, h, w)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        _, _, num_frames, height, width = x.shape
        spatial = self.spatial_compression_ratio
        num_latent_frames = 1 + (num_frames - 1) // self.temporal_compression_ratio
        latent_height, latent_width = height // spatial, width // spatial
        time_spans, height_spans, width_spans = self._tile_grid(num_latent_frames, latent_height, latent_width)
        if not self.use_tiling or len(time_spans) * len(height_spans) * len(width_spans) == 1:
            return self._encode_chunks(x)[0]

        # Tiled, space outer and time inner. Spatial tiles overlap and are blended linearly. A temporal tile starts
        # from the causal cache its predecessor reached at that frame, so it reproduces the untiled latents.
        time_weights, time_total = _blend_weights(time_spans, num_latent_frames)
        height_weights, height_total = _blend_weights(height_spans, latent_height)
        width_weights, width_total = _blend_weights(width_spans, latent_width)
        moments = None
        for (h0, h1), weight_h in zip(height_spans, height_weights):
            for (w0, w1), weight_w in zip(width_spans, width_weights):
                x_tile = x[:, :, :, h0 * spatial : h1 * spatial, w0 * spatial : w1 * spatial]
                cache = None
                for index, ((t0, t1), weight_t) in enumerate(zip(time_spans, time_weights)):
                    snapshot_at = time_spans[index + 1][0] if index + 1 < len(time_spans) else None
                    tile, cache = self._encode_chunks(x_tile, cache, t0, t1, snapshot_at)  # (B, 2*L, t, h, w)
                    weight = weight_t[:, None, None] * weight_h[:, None] * weight_w  # (t, h, w)
                    if moments is None:
                        moments = tile.new_zeros(
                            tile.shape[0], tile.shape[1], num_latent_frames, latent_height, latent_width
                        )
                    moments[:, :, t0:t1, h0:h1, w0:w1] += tile * weight.to(tile)
        return _normalise(moments, time_total, height_total, width_total)

    @apply_forward_hook
    def encode(
        self, x: torch.Tensor, return_dict: bool = True
    ) -> AutoencoderKLOutput | tuple[DiagonalGaussianDistribution]:
        r"""
        Encode a batch of videos into latent distributions.

        Args:
            x (`torch.Tensor` of shape `(batch, in_channels, 1 + k*r, height, width)`): Videos in [-1, 1]; height and
                width are multiples of `spatial_compression_ratio`, `r` is `temporal_compression_ratio`.
            return_dict (`bool`, *optional*, defaults to `True`): Return an `AutoencoderKLOutput` instead of a tuple.

        Returns:
            `AutoencoderKLOutput` (or `(latent_dist,)`): a `DiagonalGaussianDistribution` over latents of shape
            `(batch, latent_channels, 1 + k, height / s, width / s)`.
        """
        self._check_video(x, "x")
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(x_slice) for x_slice in x.split(1)])
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    # 6.4 Decoding

    def _decode_chunks(
        self,
        z: torch.Tensor,
        cache: _CausalCache | None = None,
        start: int = 0,
        end: int | None = None,
        snapshot_at: int | None = None,
    ) -> tuple[torch.Tensor, _CausalCache | None]:
        r"""
        Decode latent frames `[start, end)` of `z` in causal chunks of one latent frame (latent 0 -> 1 frame, every
        later one -> `r` frames). `cache` and `snapshot_at` as in `_encode_chunks`.
        """
        batch_size, _, num_latent_frames, _, _ = z.shape
        end = num_latent_frames if end is None else end
        cache = _CausalCache(past={}, present={}) if cache is None else cache
        sample, snapshot = None, None
        first_frame = self._first_frame(start)
        for index in range(start, end):
            chunk = z[:, :, index : index + 1].contiguous(memory_format=torch.channels_last_3d)  # (B, L, 1, h, w)
            chunk = self.decoder(chunk, cache)  # (B, C, 1 or r, H, W)
            if sample is None:
                num_frames = self._first_frame(end) - first_frame
                sample = chunk.new_empty(batch_size, chunk.shape[1], num_frames, *chunk.shape[3:])
            frame = self._first_frame(index) - first_frame
            sample[:, :, frame : frame + chunk.shape[2]] = chunk
            cache = cache.advance()
            if index + 1 == snapshot_at:
                snapshot = cache
        return sample, snapshot  # (B, C, frames of [start, end), H, W)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        _, _, num_latent_frames, latent_height, latent_width = z.shape
        spatial = self.spatial_compression_ratio
        time_spans, height_spans, width_spans = self._tile_grid(num_latent_frames, latent_height, latent_width)
        if not self.use_tiling or len(time_spans) * len(height_spans) * len(width_spans) == 1:
            return self._decode_chunks(z)[0]

        # Tiled, as in `_encode`, with the blend weights in pixels and frames
        frame_spans = [(self._first_frame(t0), self._first_frame(t1)) for t0, t1 in time_spans]
        pixel_height_spans = [(h0 * spatial, h1 * spatial) for h0, h1 in height_spans]
        pixel_width_spans = [(w0 * spatial, w1 * spatial) for w0, w1 in width_spans]
        num_frames, height, width = (
            self._first_frame(num_latent_frames),
            latent_height * spatial,
            latent_width * spatial,
        )
        time_weights, time_total = _blend_weights(frame_spans, num_frames)
        height_weights, height_total = _blend_weights(pixel_height_spans, height)
        width_weights, width_total = _blend_weights(pixel_width_spans, width)
        sample = None
        for (h0, h1), (y0, y1), weight_h in zip(height_spans, pixel_height_spans, height_weights):
            for (w0, w1), (x0, x1), weight_w in zip(width_spans, pixel_width_spans, width_weights):
                z_tile = z[:, :, :, h0:h1, w0:w1]
                cache = None
                for index, ((t0, t1), (f0, f1), weight_t) in enumerate(zip(time_spans, frame_spans, time_weights)):
                    snapshot_at = time_spans[index + 1][0] if index + 1 < len(time_spans) else None
                    tile, cache = self._decode_chunks(z_tile, cache, t0, t1, snapshot_at)  # (B, C, f, H_t, W_t)
                    weight = weight_t[:, None, None] * weight_h[:, None] * weight_w  # (f, H_t, W_t)
                    if sample is None:
                        sample = tile.new_zeros(tile.shape[0], tile.shape[1], num_frames, height, width)
                    sample[:, :, f0:f1, y0:y1, x0:x1] += tile * weight.to(tile)
        return _normalise(sample, time_total, height_total, width_total)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple[torch.Tensor]:
        r"""
        Decode a batch of latents into videos.

        Args:
            z (`torch.Tensor` of shape `(batch, latent_channels, num_latent_frames, height, width)`): Latents.
            return_dict (`bool`, *optional*, defaults to `True`): Return a `DecoderOutput` instead of a tuple.

        Returns:
            `DecoderOutput` (or `(sample,)`): videos of shape `(batch, out_channels, 1 + (num_latent_frames - 1) * r,
            height * s, width * s)`, not clamped.
        """
        self._check_latent(z, "z")
        if self.use_slicing and z.shape[0] > 1:
            decoded = torch.cat([self._decode(z_slice) for z_slice in z.split(1)])
        else:
            decoded = self._decode(z)
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        r"""
        Encode and decode a batch of videos.

        Args:
            sample (`torch.Tensor` of shape `(batch, in_channels, 1 + k*r, height, width)`): Videos in [-1, 1].
            sample_posterior (`bool`, *optional*, defaults to `False`): Decode a sample of the posterior instead of
                its mode.
            return_dict (`bool`, *optional*, defaults to `True`): Return a `DecoderOutput` instead of a tuple.
            generator (`torch.Generator`, *optional*): Makes posterior sampling deterministic.
        """
        self._check_video(sample, "sample")
        posterior = self.encode(sample).latent_dist
        latents = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        decoded = self.decode(latents).sample
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)
