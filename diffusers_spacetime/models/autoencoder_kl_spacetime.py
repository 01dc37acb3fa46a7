"""AutoencoderKLSpacetime: the causal video VAE that compresses space and time ("the loaf").

Scope: one self-contained module with the causal time convolution, the residual and resampling blocks, the encoder,
the decoder, spatio-temporal tiling and the model. A video `(B, C, F, H, W)` in [-1, 1] with `F = 1 + k*r` frames
becomes a latent `(B, latent_channels, 1 + k, H/s, W/s)` (s = spatial, r = temporal compression ratio). Frame 0 is
encoded on its own (an image is a one-frame video), every later latent frame summarises `r` frames, and nothing
depends on the future: encoding the first `1 + j*r` frames gives the first `1 + j` latent frames of the whole clip.

Design choices, and why (the default is 8x8 spatial, 4x temporal, 16 channels, as diffusers' `AutoencoderKLWan`,
and decodes faster than it: `benchmarks/README.md` has the figures):

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
   residual block needs a shortcut convolution. Together with 1-2 this keeps the default decoder's MACs per output
   pixel well below Wan's although its widths (128..512) are larger than Wan's (96..384).
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

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils.accelerate_utils import apply_forward_hook

from ..hub.push import SpacetimeHubMixin
from .nearest_sizes import nearest_valid_sizes

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
    copy; oneDNN has no fast path for a `(k, 1, 1)` `Conv3d`, while both cuDNN and oneDNN run
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


class _SpacetimeStage(nn.Module):
    r"""
    Residual blocks at one resolution, then an optional resampler. The resampler, if any, is set after construction
    under `resampler_name` (a checkpoint key), so that parameters are created in the order of the forward.

    Args:
        widths (`tuple[int, ...]`): Channels into the first block, then out of each block (one block per step).
        temporal (`bool`): Whether the blocks mix time (see `SpacetimeResnetBlock`).
    """

    resampler_name = "resampler"

    def __init__(self, widths: tuple[int, ...], temporal: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(
            SpacetimeResnetBlock(in_channels, out_channels, temporal)
            for in_channels, out_channels in zip(widths, widths[1:])
        )
        setattr(self, self.resampler_name, None)

    def forward(self, hidden_states: torch.Tensor, cache: _CausalCache | None = None) -> torch.Tensor:
        for resnet in self.resnets:
            hidden_states = resnet(hidden_states, cache)
        resampler = getattr(self, self.resampler_name)
        return hidden_states if resampler is None else resampler(hidden_states, cache)


class SpacetimeDownBlock(_SpacetimeStage):
    r"""Residual blocks at one resolution (the first one widens), then an optional `SpacetimeDownsample`."""

    resampler_name = "downsampler"


class SpacetimeUpBlock(_SpacetimeStage):
    r"""Residual blocks at one resolution, then an optional `SpacetimeUpsample` that narrows to the next width."""

    resampler_name = "upsampler"


class SpacetimeMidBlock(_SpacetimeStage):
    r"""Residual blocks at the lowest resolution, where they are cheap (no attention: see the module docstring)."""


# 4. Encoder and decoder


class _StagePlan(NamedTuple):
    """The widths and time mixing of the encoder's stages; the decoder mirrors them (see `AutoencoderKLSpacetime`)."""

    block_out_channels: tuple[int, ...]
    layers_per_block: int
    temporal_downsample: tuple[bool, ...]  # one flag per downsampling step

    def mixes_time(self, stage: int) -> bool:
        """Encoder stage `stage` mixes time once time is (about to be) compressed: any flag up to its own."""
        return any(self.temporal_downsample[: stage + 1])


class _SpacetimeCoder(nn.Module):
    r"""The encoder's and decoder's shared forward: `conv_in`, the stages in order, then norm, SiLU and `conv_out`."""

    def stages(self) -> tuple[nn.Module, ...]:
        raise NotImplementedError

    def forward(self, hidden_states: torch.Tensor, cache: _CausalCache | None = None) -> torch.Tensor:
        # 1. Input projection
        hidden_states = self.conv_in(hidden_states)  # (B, C_first, F, H, W)

        # 2. Resolution stages
        for block in self.stages():
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states, cache)
            else:
                hidden_states = block(hidden_states, cache)

        # 3. Output projection
        return self.conv_out(F.silu(self.norm_out(hidden_states)))  # (B, C_out, F', H', W')


class SpacetimeEncoder(_SpacetimeCoder):
    r"""Video `(B, C, F, H, W)` -> posterior moments `(B, 2*latent_channels, 1 + (F-1)/r, H/s, W/s)`."""

    def __init__(self, in_channels: int, latent_channels: int, plan: _StagePlan) -> None:
        super().__init__()
        widths, num_stages = plan.block_out_channels, len(plan.block_out_channels)

        # 1. Pixels -> features, per frame
        self.conv_in = SpacetimeConv2d(in_channels, widths[0], kernel_size=3, padding=1)

        # 2. Down stages: every stage but the last halves space (and time where its flag says so)
        self.down_blocks = nn.ModuleList()
        for index, num_channels in enumerate(widths):
            stage_widths = (widths[max(index - 1, 0)],) + (num_channels,) * plan.layers_per_block
            block = SpacetimeDownBlock(stage_widths, plan.mixes_time(index))
            if index < num_stages - 1:
                block.downsampler = SpacetimeDownsample(num_channels, plan.temporal_downsample[index])
            self.down_blocks.append(block)

        # 3. Middle
        self.mid_block = SpacetimeMidBlock((widths[-1],) * 3, temporal=any(plan.temporal_downsample))

        # 4. Features -> moments (mean, logvar)
        self.norm_out = SpacetimeRMSNorm(widths[-1])
        self.conv_out = SpacetimeConv2d(widths[-1], 2 * latent_channels, kernel_size=3, padding=1)

        self.gradient_checkpointing = False

    def stages(self) -> tuple[nn.Module, ...]:
        return (*self.down_blocks, self.mid_block)


class SpacetimeDecoder(_SpacetimeCoder):
    r"""Latent `(B, latent_channels, T, h, w)` -> video `(B, out_channels, 1 + (T-1)*r, h*s, w*s)`."""

    def __init__(self, latent_channels: int, out_channels: int, plan: _StagePlan) -> None:
        super().__init__()
        widths = tuple(reversed(plan.block_out_channels))
        num_stages = len(widths)

        # 1. Latent -> features
        self.conv_in = SpacetimeConv2d(latent_channels, widths[0], kernel_size=3, padding=1)

        # 2. Middle
        self.mid_block = SpacetimeMidBlock((widths[0],) * 3, temporal=any(plan.temporal_downsample))

        # 3. Up stages, mirroring the encoder: up stage j is encoder stage (num_stages - 1 - j)
        self.up_blocks = nn.ModuleList()
        for index, num_channels in enumerate(widths):
            block = SpacetimeUpBlock(
                (num_channels,) * (plan.layers_per_block + 1), plan.mixes_time(num_stages - 1 - index)
            )
            if index < num_stages - 1:
                temporal_upsample = plan.temporal_downsample[num_stages - 2 - index]
                block.upsampler = SpacetimeUpsample(num_channels, widths[index + 1], temporal_upsample)
            self.up_blocks.append(block)

        # 4. Features -> pixels
        self.norm_out = SpacetimeRMSNorm(widths[-1])
        self.conv_out = SpacetimeConv2d(widths[-1], out_channels, kernel_size=3, padding=1)

        self.gradient_checkpointing = False

    def stages(self) -> tuple[nn.Module, ...]:
        return (self.mid_block, *self.up_blocks)


# 5. Tiling helpers


class _TimeTile(NamedTuple):
    """Latent frames `[start, end)` of one temporal tile, and where the next tile starts (None: no next tile)."""

    start: int
    end: int
    next_start: int | None = None


# (output of a run of causal chunks, the cache snapshot for the next temporal tile or None)
_Chunks = tuple[torch.Tensor, _CausalCache | None]


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
    outer quarter next to a tile's own edge, where it saw the least context, is left to its neighbour, which gives
    smaller seams than a ramp across the whole overlap (`benchmarks/README.md`).
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


# 6. The model


class AutoencoderKLSpacetime(ModelMixin, ConfigMixin, AutoencoderMixin, SpacetimeHubMixin):
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

        plan = _StagePlan(block_out_channels, layers_per_block, temporal_downsample)
        self.encoder = SpacetimeEncoder(in_channels, latent_channels, plan)
        self.decoder = SpacetimeDecoder(latent_channels, out_channels, plan)

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
                f"{name}: num_frames={num_frames} is not 1 + k*{ratio}; nearest valid: {nearest_valid_sizes(num_frames, ratio, 1)}."
            )
        ratio = self.spatial_compression_ratio
        for dim_name, size in (("height", height), ("width", width)):
            if size < 1 or size % ratio:
                raise ValueError(
                    f"{name}: {dim_name}={size} is not a multiple of spatial_compression_ratio={ratio}; "
                    f"nearest valid: {nearest_valid_sizes(size, ratio)}."
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
                    f"nearest valid: {nearest_valid_sizes(value, ratio) if isinstance(value, int) else ratio}."
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

    # 6.3 Causal chunks and tiles, shared by encoding and decoding

    def _run_chunks(
        self,
        coder: nn.Module,
        inputs: torch.Tensor,
        spans: list[tuple[slice, slice]],
        num_outputs: int,
        cache: _CausalCache | None,
        tile: _TimeTile,
    ) -> _Chunks:
        r"""
        Run `coder` (the encoder or the decoder) one causal chunk, one latent frame, at a time, so memory is one
        chunk's activations. `spans` holds, per latent frame of `tile`, the frames of `inputs` it reads and the
        output frames (of `num_outputs`) it fills. `cache` is the state before `tile.start` (`None` at the clip
        start); the state before `tile.next_start` is returned with the output, for the next temporal tile.
        """
        cache = _CausalCache(past={}, present={}) if cache is None else cache
        output, snapshot = None, None
        for index, (source, target) in zip(range(tile.start, tile.end), spans):
            chunk = coder(inputs[:, :, source].contiguous(memory_format=torch.channels_last_3d), cache)
            if output is None:
                output = chunk.new_empty(*chunk.shape[:2], num_outputs, *chunk.shape[3:])
            output[:, :, target] = chunk
            cache = cache.advance()
            if index + 1 == tile.next_start:
                snapshot = cache
        return output, snapshot

    def _tiled(
        self,
        run_tile: Callable[[torch.Tensor, _TimeTile, _CausalCache | None], _Chunks],
        inputs: torch.Tensor,
        input_scale: int,
        spans: tuple[list[tuple[int, int]], ...],
        output_spans: tuple[list[tuple[int, int]], ...],
        output_size: tuple[int, int, int],
    ) -> torch.Tensor:
        r"""
        Run `run_tile` (`_encode_chunks` or `_decode_chunks`) on every tile and blend the outputs into one of
        `output_size` (frames, height, width).

        `spans` are the tiles in latent units along time, height and width (`input_scale` input pixels per latent
        pixel), `output_spans` the same tiles in output units. Space outer and time inner: spatial tiles overlap and
        are blended linearly; a temporal tile starts from the causal cache its predecessor reached at its first
        frame, so it reproduces the untiled output.
        """
        (time_spans, height_spans, width_spans), (frame_spans, row_spans, column_spans) = spans, output_spans
        (time_weights, time_total), (height_weights, height_total), (width_weights, width_total) = (
            _blend_weights(axis_spans, size) for axis_spans, size in zip(output_spans, output_size)
        )
        output = None
        for (h0, h1), (y0, y1), weight_h in zip(height_spans, row_spans, height_weights):
            for (w0, w1), (x0, x1), weight_w in zip(width_spans, column_spans, width_weights):
                tile_input = inputs[:, :, :, h0 * input_scale : h1 * input_scale, w0 * input_scale : w1 * input_scale]
                cache = None
                for index, ((t0, t1), (f0, f1), weight_t) in enumerate(zip(time_spans, frame_spans, time_weights)):
                    next_start = time_spans[index + 1][0] if index + 1 < len(time_spans) else None
                    tile, cache = run_tile(tile_input, _TimeTile(t0, t1, next_start), cache)  # (B, C, f, y, x)
                    weight = weight_t[:, None, None] * weight_h[:, None] * weight_w  # (f, y, x)
                    if output is None:
                        output = tile.new_zeros(*tile.shape[:2], *output_size)
                    output[:, :, f0:f1, y0:y1, x0:x1] += tile * weight.to(tile)
        return _normalise(output, time_total, height_total, width_total)

    # 6.4 Encoding

    def _encode_chunks(self, x: torch.Tensor, tile: _TimeTile, cache: _CausalCache | None = None) -> _Chunks:
        r"""Encode latent frames `[tile.start, tile.end)` of `x` (a clip from its first frame): frame 0 alone, then
        `r` frames per latent frame. Returns moments `(B, 2*L, tile.end - tile.start, h, w)` and the cache snapshot."""
        spans = [
            (
                slice(self._first_frame(index), self._first_frame(index + 1)),
                slice(index - tile.start, index - tile.start + 1),
            )
            for index in range(tile.start, tile.end)
        ]  # (video frames, latent frame)
        return self._run_chunks(self.encoder, x, spans, tile.end - tile.start, cache, tile)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        spatial = self.spatial_compression_ratio
        size = (1 + (x.shape[2] - 1) // self.temporal_compression_ratio, x.shape[3] // spatial, x.shape[4] // spatial)
        spans = self._tile_grid(*size)
        if not self.use_tiling or math.prod(map(len, spans)) == 1:
            return self._encode_chunks(x, _TimeTile(0, size[0]))[0]
        return self._tiled(self._encode_chunks, x, spatial, spans, spans, size)

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

    # 6.5 Decoding

    def _decode_chunks(self, z: torch.Tensor, tile: _TimeTile, cache: _CausalCache | None = None) -> _Chunks:
        r"""Decode latent frames `[tile.start, tile.end)` of `z`: latent 0 -> 1 frame, every later one -> `r` frames.
        Returns the frames `(B, C, ..., H, W)` of those latent frames and the cache snapshot."""
        first_frame = self._first_frame(tile.start)
        spans = [
            (
                slice(index, index + 1),
                slice(self._first_frame(index) - first_frame, self._first_frame(index + 1) - first_frame),
            )
            for index in range(tile.start, tile.end)
        ]  # (latent frame, video frames)
        return self._run_chunks(self.decoder, z, spans, self._first_frame(tile.end) - first_frame, cache, tile)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        spatial = self.spatial_compression_ratio
        spans = self._tile_grid(*z.shape[2:])
        if not self.use_tiling or math.prod(map(len, spans)) == 1:
            return self._decode_chunks(z, _TimeTile(0, z.shape[2]))[0]
        # Blend weights in frames and pixels
        frame_spans = [(self._first_frame(t0), self._first_frame(t1)) for t0, t1 in spans[0]]
        pixel_spans = [[(start * spatial, end * spatial) for start, end in axis_spans] for axis_spans in spans[1:]]
        size = (self._first_frame(z.shape[2]), z.shape[3] * spatial, z.shape[4] * spatial)
        return self._tiled(self._decode_chunks, z, 1, spans, (frame_spans, *pixel_spans), size)

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
