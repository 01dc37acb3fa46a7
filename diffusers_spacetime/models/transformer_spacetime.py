r"""`SpacetimeDiTModel`: a diffusion transformer over spacetime patches of a video latent.

Scope: one self-contained module holding the attention processor, the 3D rotary embedding, the transformer block
and the model. The latent `(B, C, F, H, W)` is cut into tubelets by a 3D convolution, every block attends over all
patches of the clip (or, with `attention_span="frame"`, over the patches of one frame), cross-attends to the text
tokens and applies a feed-forward; the noise level enters every block through shift/scale/gate modulation
(adaLN as in DiT, https://arxiv.org/abs/2212.09748, with Wan's per-block learned table and initialisation).

The layout follows diffusers' `WanTransformer3DModel` (`diffusers/models/transformers/transformer_wan.py`), so the
defaults match Wan2.1-1.3B's dimensions and benchmarks compare like with like. The matmuls and attention are the same
FLOPs as Wan's, so the eager speed-up comes only from what surrounds them (with `torch.compile` both fuse the same);
`benchmarks/README.md` has the numbers.
Choices made for speed, with reasons:

1. Feed-forward and text projection use exact (erf) GELU. On CPU, ATen's tanh-approximate GELU is several times
   slower than the erf one; on GPU both are memory-bound and cost the same.
2. No fp32 copies of the large activations. LayerNorm runs in the activation dtype (its kernels accumulate the
   statistics in fp32 anyway); the modulation is computed in fp32 on the small `(B, T, 6, D)` tensor and cast once
   per block; `x * (1 + scale) + shift` is one `addcmul`, the gated residual `x + gate * y` is another (each rounds
   once, as Wan's fp32 arithmetic followed by a cast does). When one noise level covers the whole call (batch 1 and
   one timestep per sample) the modulation is folded into `F.layer_norm`'s affine: one kernel for norm + modulate.
3. Rotary embedding: one real-valued cos/sin table per forward (no complex numbers: compile- and bf16-friendly), in
   "rotate-half" layout with the sign folded into the sine table, so applying it costs `cat + mul + addcmul` per
   query/key instead of Wan's strided slicing and scattered writes. Tables are built in fp32 and cast once to the
   activation dtype (as HF transformers' Llama does).
4. QK-norm per head with `F.rms_norm` (one fused kernel on CUDA), applied to the `(B, N, heads, head_dim)` view;
   per head rather than across heads (Wan) so that it needs no reduction across a head-sharded layout.
5. The text mask becomes an additive bias `(B, 1, 1, L)` once per forward, not once per layer; no mask means no bias.
6. Per-frame noise levels run the timestep MLP on `B * F` rows only and broadcast through a free view
   `(B, F, H*W, D)` of the tokens, instead of expanding the modulation to every token (Wan 2.2's route).
7. `attention_span="frame"` reshapes `(B, F*H*W, heads, d)` to `(B*F, H*W, heads, d)`: a view, no dense mask.
   `attention_span="window"` folds frames into the batch the same way, each with the keys of its neighbouring frames
   (`SpacetimeAttentionWindow`), so its cost grows linearly with the clip; `layer_attention_spans` mixes spans.
8. Optional fused projections (`model.fuse_qkv_projections()`, diffusers' pattern): one GEMM for Q, K and V.

Optional, off by default (Wan has neither): absolute patch positions and text-token positions, each a zero-initialised
linear map of fixed sinusoids added to the tokens, for text that names places, times and word order.

Numerics: the timestep MLP and the modulation tables stay fp32 (`_keep_in_fp32_modules`); attention, norms and
residuals run in the activation dtype with fp32 accumulation inside the kernels.

diffusers features: `set_attention_backend`, context parallelism (`_cp_plan`; tokens split in whole frames when
per-frame timesteps or the frame span are used), `compile_repeated_blocks`, gradient checkpointing, LoRA, and the
caches: FirstBlockCache/MagCache (the block is registered below), PyramidAttentionBroadcast, and TaylorSeer, whose
default patterns only match modules named `...attn`: pass `cache_identifiers=[r"blocks\.\d+\.attn[12]"]` or
`use_lite_mode=True`.
"""

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.hooks._helpers import (
    AttentionProcessorMetadata,
    AttentionProcessorRegistry,
    TransformerBlockMetadata,
    TransformerBlockRegistry,
)
from diffusers.loaders import PeftAdapterMixin
from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput
from diffusers.models.attention import AttentionMixin, AttentionModuleMixin
from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry, dispatch_attention_fn
from diffusers.models.cache_utils import CacheMixin
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_outputs import Transformer2DModelOutput
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import apply_lora_scale
from diffusers.utils.torch_utils import maybe_allow_in_graph

from ..hub.push import SpacetimeHubMixin
from .nearest_sizes import nearest_valid_sizes

ATTENTION_SPANS = ("spacetime", "frame", "window")
QK_NORMS = ("rms_norm", None)


# ----------------------------------------------------------------------------------------------------------------
# Rotary embedding
# ----------------------------------------------------------------------------------------------------------------


def apply_rotary_emb(hidden_states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `hidden_states` `(B, N, heads, d)` by the tables `(1, N, 1, d)` of `SpacetimeRotaryPosEmbed`.

    Rotate-half layout: pair `i` is `(x[i], x[i + d/2])`. `sin` already carries the sign (`[-sin, sin]`), so
    `x * cos + swap_halves(x) * sin` is the rotation: `x1 cos - x2 sin`, `x2 cos + x1 sin`.
    """
    half = hidden_states.shape[-1] // 2
    swapped = torch.cat((hidden_states[..., half:], hidden_states[..., :half]), dim=-1)  # (B, N, heads, d)
    return torch.addcmul(hidden_states * cos, swapped, sin)


def _per_patch(frames: torch.Tensor, rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """Per-axis features `(F, a)`, `(H, b)`, `(W, c)` -> one row per patch, frame-major: `(F*H*W, a+b+c)`."""
    grid = (frames.shape[0], rows.shape[0], columns.shape[0], -1)
    return torch.cat(
        [frames[:, None, None, :].expand(grid), rows[None, :, None, :].expand(grid), columns[None, None].expand(grid)],
        dim=-1,
    ).flatten(0, 2)


class SpacetimeRotaryPosEmbed(nn.Module):
    """3D rotary position embedding over (frame, row, column) of the patch grid.

    The head dimension is shared out as in Wan (`rows = columns = 2 * (d // 6)`, frames get the rest); each axis
    uses frequencies `theta ** (-2i / axis_dim)`. Positions are integers of the patch grid, so one set of weights
    serves any duration, resolution and aspect ratio, including a single frame. Adapted from diffusers'
    `WanRotaryPosEmbed`, in rotate-half layout and computed on the fly (no buffers that `model.to(bf16)` would round).

    Args:
        attention_head_dim (`int`): Channels per head; even, at least 6.
        theta (`float`, defaults to `10000.0`): Base of the frequencies.
    """

    def __init__(self, attention_head_dim: int, theta: float = 10000.0):
        super().__init__()
        rows = columns = 2 * (attention_head_dim // 6)
        frames = attention_head_dim - rows - columns
        self.axes_dim = (frames, rows, columns)
        self.theta = theta

    def forward(
        self, num_frames: int, height: int, width: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return `(cos, sin)`, each `(1, num_frames * height * width, 1, attention_head_dim)` in `dtype`."""
        # 1. Per-pair inverse frequencies, axis by axis: (d/2,)
        exponents = torch.cat(
            [torch.arange(dim // 2, device=device, dtype=torch.float32) * (2.0 / dim) for dim in self.axes_dim]
        )
        inv_freq = torch.pow(self.theta, -exponents)
        # 2. Angles for every position along the longest axis, then the axis' own columns: (size, axis_dim/2)
        positions = torch.arange(max(num_frames, height, width), device=device, dtype=torch.float32)
        angles = torch.outer(positions, inv_freq)  # (P, d/2)
        split_frames, split_rows, _ = (dim // 2 for dim in self.axes_dim)
        angles_frames = angles[:num_frames, :split_frames]
        angles_rows = angles[:height, split_frames : split_frames + split_rows]
        angles_columns = angles[:width, split_frames + split_rows :]
        angles = _per_patch(angles_frames, angles_rows, angles_columns)  # (F*H*W, d/2)
        # 3. Rotate-half tables; the sine carries the sign of the first half.
        cos, sin = angles.cos(), angles.sin()
        cos = torch.cat((cos, cos), dim=-1).to(dtype)  # (N, d)
        sin = torch.cat((-sin, sin), dim=-1).to(dtype)  # (N, d)
        return cos[None, :, None, :], sin[None, :, None, :]  # (1, N, 1, d)


def _zero_linear(in_features: int, out_features: int) -> nn.Linear:
    """A linear map that outputs zeros until trained: a new input to a trained model changes nothing at first."""
    linear = nn.Linear(in_features, out_features)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    return linear


class SpacetimeAbsolutePosEmbed(nn.Module):
    """Where a patch sits in the clip, as a learned function of its normalised (frame, row, column) coordinates.

    Rotary attention only sees offsets between patches, so "starts at the left edge" or "ends at the bottom" must be
    inferred from the clip's boundaries. This adds to every token a linear map of fixed features
    `sin(pi k u), cos(pi k u)`, `k = 1..num_freqs`, of each axis' coordinate `u = (i + 0.5) / size` in (0, 1):
    normalised, so the left edge is the left edge at any resolution, and the first frame the first at any duration.
    The map starts at zero, so enabling it on a trained model leaves its outputs unchanged until it is fine-tuned.

    Args:
        dim (`int`): Token width.
        num_freqs (`int`, defaults to `8`): Frequencies per axis (6 * num_freqs features).
    """

    def __init__(self, dim: int, num_freqs: int = 8):
        super().__init__()
        self.num_freqs = num_freqs
        self.proj = _zero_linear(6 * num_freqs, dim)

    def forward(self, num_frames: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Return `(1, num_frames * height * width, dim)` in the projection's dtype."""
        harmonics = torch.arange(1, self.num_freqs + 1, device=device, dtype=torch.float32) * math.pi  # (K,)
        features = []
        for size in (num_frames, height, width):
            angles = torch.outer((torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size, harmonics)
            features.append(torch.cat((angles.sin(), angles.cos()), dim=-1))  # (size, 2K)
        features = _per_patch(*features)  # (F*H*W, 6K)
        return self.proj(features.to(self.proj.weight.dtype))[None]  # (1, N, D)


# ----------------------------------------------------------------------------------------------------------------
# Attention
# ----------------------------------------------------------------------------------------------------------------


def _grid_coordinates(index: torch.Tensor, grid: tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
    """Token index in frame-major order -> its (frame, row, column) on the patch grid `(F', H', W')`."""
    _, height, width = grid
    return index // (height * width), (index // width) % height, index % width


def _window_keep(
    query_index: torch.Tensor, key_index: torch.Tensor, grid: tuple[int, int, int], half: tuple[int | None, ...]
) -> torch.Tensor:
    """True where the key lies within `half` patches of the query along every restricted axis (None: any)."""
    keep = torch.ones_like(query_index - key_index, dtype=torch.bool)
    for query_coordinate, key_coordinate, axis_half in zip(
        _grid_coordinates(query_index, grid), _grid_coordinates(key_index, grid), half
    ):
        if axis_half is not None:
            keep = keep & ((query_coordinate - key_coordinate).abs() <= axis_half)
    return keep


@dataclass(frozen=True)
class SpacetimeAttentionWindow:
    """Local self-attention for one forward: a patch attends to the patches within `half` steps along each axis.

    Built once per forward by `SpacetimeDiTModel` and shared by its windowed layers. Three routes, same outputs:
    `block_mask` (a FlexAttention `BlockMask`, when the attention backend is `"flex"`: blocks outside the window are
    skipped; compile the blocks for fused kernels), windows limited in time (each frame's queries attend to the keys
    of the `2 * half + 1` frames around it, gathered with `unfold`, a spatial window masking within them: the cost
    grows linearly with the clip), and windows over every frame, limited in space, as a dense `(1, 1, N, N)` boolean
    `mask` (plain SDPA at full cost).

    Args:
        grid (`tuple[int, int, int]`): Patches per axis `(F', H', W')`.
        half (`tuple`): Half widths per axis in patches; `None` = the whole axis.
        block_mask (*optional*): FlexAttention `BlockMask` over `F'*H'*W'` tokens.
        mask (`torch.Tensor`, *optional*): Boolean, True attends: `(1, 1, N, N)` over all tokens; or, over the
            gathered frames, `(F', (2 * half + 1) * H'*W')` (keys inside the clip) or `(F', H'*W', (2 * half + 1) *
            H'*W')` (and inside the spatial window).
    """

    grid: tuple[int, int, int]
    half: tuple[int | None, int | None, int | None]
    block_mask: Any = None
    mask: torch.Tensor | None = None

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, backend) -> torch.Tensor:
        """`query`, `key`, `value` `(B, N, heads, d)` -> `(B, N, heads, d)`."""
        if self.block_mask is not None or self.mask.ndim == 4:
            attn_mask = self.block_mask if self.block_mask is not None else self.mask
            return dispatch_attention_fn(query, key, value, attn_mask=attn_mask, backend=backend)
        # Frame window: frames become batch entries, each with the keys of its neighbouring frames.
        batch_size, num_tokens, heads, head_dim = query.shape
        num_frames, frame_length = self.grid[0], self.grid[1] * self.grid[2]
        width = 2 * self.half[0] + 1
        query = query.unflatten(1, (num_frames, frame_length)).flatten(0, 1)  # (B*F', H'W', heads, d)
        key, value = (
            F.pad(tensor.unflatten(1, (num_frames, frame_length)), (0, 0, 0, 0, 0, 0, self.half[0], self.half[0]))
            .unfold(1, width, 1)  # (B, F', H'W', heads, d, width)
            .permute(0, 1, 5, 2, 3, 4)  # (B, F', width, H'W', heads, d)
            .reshape(batch_size * num_frames, width * frame_length, heads, head_dim)  # (B*F', width*H'W', heads, d)
            for tensor in (key, value)
        )
        # Per frame: (F', width*H'W') keys inside the clip, or (F', H'W', width*H'W') with a spatial window too.
        attn_mask = self.mask[None].expand(batch_size, *self.mask.shape).flatten(0, 1)  # (B*F', [H'W',] width*H'W')
        attn_mask = attn_mask[:, None, None, :] if attn_mask.ndim == 2 else attn_mask[:, None]  # (B*F', 1, *, *)
        hidden_states = dispatch_attention_fn(query, key, value, attn_mask=attn_mask, backend=backend)
        return hidden_states.reshape(batch_size, num_tokens, heads, head_dim)  # (B, N, heads, d)


class SpacetimeAttnProcessor:
    """Self- or cross-attention through diffusers' `dispatch_attention_fn` (attention backends, context parallel).

    Self-attention applies the rotary embedding; with `frame_length` set it attends within each frame by folding
    frames into the batch, with `window` set within a local window (`SpacetimeAttentionWindow`). Cross-attention
    takes the additive text-padding bias as `attention_mask`.
    """

    _attention_backend = None
    _parallel_config = None

    def __call__(
        self,
        attn: "SpacetimeAttention",
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        frame_length: int | None = None,
        window: SpacetimeAttentionWindow | None = None,
    ) -> torch.Tensor:
        """`hidden_states` `(B, N, D)`, keys/values from `encoder_hidden_states` `(B, L, D')` (None: self-attention)
        and an additive `attention_mask` `(B, 1, 1, L)`; `rotary_emb` `(cos, sin)` each `(1, N, 1, d)`;
        `frame_length` (tokens per frame) or `window` restrict self-attention. Returns `(B, N, D)`."""
        batch_size = hidden_states.shape[0]

        # 1. Projections: (B, N, heads*d) each; fused layers when `fuse_projections()` was called.
        if encoder_hidden_states is None:
            if attn.fused_projections:
                query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
            else:
                query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        else:
            query = attn.to_q(hidden_states)
            if attn.fused_projections:
                key, value = attn.to_kv(encoder_hidden_states).chunk(2, dim=-1)
            else:
                key, value = attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)

        # 2. Heads and per-head QK-norm.
        query = attn.norm_q(query.unflatten(2, (attn.heads, -1)))  # (B, N, heads, d)
        key = attn.norm_k(key.unflatten(2, (attn.heads, -1)))  # (B, N or L, heads, d)
        value = value.unflatten(2, (attn.heads, -1))  # (B, N or L, heads, d)

        # 3. Positions (self-attention only).
        if rotary_emb is not None:
            query = apply_rotary_emb(query, *rotary_emb)
            key = apply_rotary_emb(key, *rotary_emb)

        # 4. Attention. Frame span: frames become batch entries, so no token sees another frame; each frame is
        # local to one rank under context parallelism (tokens are split in whole frames), so no parallel config.
        parallel_config = self._parallel_config if encoder_hidden_states is None else None
        if frame_length is not None:
            query = query.unflatten(1, (-1, frame_length)).flatten(0, 1)  # (B*F, H*W, heads, d)
            key = key.unflatten(1, (-1, frame_length)).flatten(0, 1)  # (B*F, H*W, heads, d)
            value = value.unflatten(1, (-1, frame_length)).flatten(0, 1)  # (B*F, H*W, heads, d)
            parallel_config = None
        if window is not None:
            if parallel_config is not None:
                raise ValueError("attention_span='window' does not support context parallelism.")
            hidden_states = window.attend(query, key, value, self._attention_backend)
        else:
            hidden_states = dispatch_attention_fn(
                query,
                key,
                value,
                attn_mask=attention_mask,
                dropout_p=0.0,
                is_causal=False,
                backend=self._attention_backend,
                parallel_config=parallel_config,
            )
        hidden_states = hidden_states.reshape(batch_size, -1, attn.inner_dim)  # (B, N, heads*d)
        return attn.to_out[0](hidden_states)


class SpacetimeAttention(nn.Module, AttentionModuleMixin):
    """Multi-head attention with per-head RMS QK-norm; layer names follow diffusers (`to_q`, ..., `to_out.0`).

    Args:
        dim (`int`): Width of the token stream (queries).
        heads (`int`): Number of heads.
        head_dim (`int`): Channels per head.
        cross_attention_dim (`int`, *optional*): Width of the keys/values' source; `None` for self-attention.
        qk_norm (`str`, *optional*, defaults to `"rms_norm"`): `"rms_norm"` (per head) or `None`.
        eps (`float`, defaults to `1e-6`): Epsilon of the QK-norm.
        processor (*optional*): Attention processor; defaults to `SpacetimeAttnProcessor`.
    """

    _default_processor_cls = SpacetimeAttnProcessor
    _available_processors = [SpacetimeAttnProcessor]

    def __init__(
        self,
        dim: int,
        heads: int,
        head_dim: int,
        cross_attention_dim: int | None = None,
        qk_norm: str | None = "rms_norm",
        eps: float = 1e-6,
        processor=None,
    ):
        super().__init__()
        self.heads = heads
        self.inner_dim = heads * head_dim
        self.is_cross_attention = cross_attention_dim is not None
        self.use_bias = True  # read by AttentionModuleMixin.fuse_projections
        kv_dim = cross_attention_dim if self.is_cross_attention else dim

        self.to_q = nn.Linear(dim, self.inner_dim, bias=True)
        self.to_k = nn.Linear(kv_dim, self.inner_dim, bias=True)
        self.to_v = nn.Linear(kv_dim, self.inner_dim, bias=True)
        self.to_out = nn.ModuleList([nn.Linear(self.inner_dim, dim, bias=True)])
        if qk_norm == "rms_norm":
            self.norm_q = nn.RMSNorm(head_dim, eps=eps)
            self.norm_k = nn.RMSNorm(head_dim, eps=eps)
        else:
            self.norm_q = self.norm_k = nn.Identity()

        self.set_processor(processor if processor is not None else self._default_processor_cls())

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask=None,
        **kwargs,
    ) -> torch.Tensor:
        """`kwargs` (`rotary_emb`, `frame_length`, `window`) go to the processor: see `SpacetimeAttnProcessor`."""
        return self.processor(self, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Feed-forward, conditioning, block
# ----------------------------------------------------------------------------------------------------------------


class SpacetimeGELU(nn.Module):
    """Linear projection followed by exact GELU (erf: faster than tanh-GELU on CPU, the same on GPU)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(hidden_states))


class SpacetimeFeedForward(nn.Module):
    """`Linear -> GELU -> Linear` with diffusers' `FeedForward` layer names (`net.0.proj`, `net.2`)."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        # net.1 is dropout in diffusers' FeedForward; an identity keeps the indices, and thus LoRA target names.
        self.net = nn.ModuleList([SpacetimeGELU(dim, inner_dim), nn.Identity(), nn.Linear(inner_dim, dim)])

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](hidden_states))


class SpacetimeTimestepEmbedding(nn.Module):
    """Noise level -> `temb` (for the output norm) and the per-block modulation `temb_proj` (6 rows: shift, scale,
    gate for self-attention and for the feed-forward). Runs on `B` or `B * F` rows; kept in fp32.

    Args:
        dim (`int`): Model width.
        freq_dim (`int`): Channels of the sinusoidal embedding.
    """

    def __init__(self, dim: int, freq_dim: int):
        super().__init__()
        self.freq_dim = freq_dim
        self.linear_1 = nn.Linear(freq_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)
        self.time_proj = nn.Linear(dim, 6 * dim)
        # `x * (1 + scale)`: the 1 is added here once per forward instead of once per block and norm.
        self.register_buffer("scale_offset", torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 0.0])[:, None], persistent=False)

    def forward(
        self, timestep: torch.Tensor, text_condition: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`timestep` `(B,)` or `(B, T)` (and a pooled text vector `(B, D)`, added to every row) -> `temb`
        `(B, [T,] D)`, `temb_proj` `(B, [T,] 6, D)`."""
        sinusoid = get_timestep_embedding(
            timestep.flatten(), self.freq_dim, flip_sin_to_cos=True, downscale_freq_shift=0
        )
        sinusoid = sinusoid.to(self.linear_1.weight.dtype).unflatten(0, timestep.shape)  # (B, [T,] freq_dim)
        temb = self.linear_2(F.silu(self.linear_1(sinusoid)))  # (B, [T,] D)
        if text_condition is not None:
            text_condition = text_condition.to(temb.dtype)
            temb = temb + (text_condition[:, None] if temb.ndim == 3 else text_condition)
        temb_proj = self.time_proj(F.silu(temb)).unflatten(-1, (6, -1))  # (B, [T,] 6, D)
        return temb, temb_proj + self.scale_offset.to(temb_proj.dtype)


class SpacetimeTextProjection(nn.Module):
    """Text encoder states -> model width: `Linear -> GELU -> Linear`."""

    def __init__(self, text_embed_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(text_embed_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.gelu(self.linear_1(encoder_hidden_states)))


class SpacetimeTextPosEmbed(nn.Module):
    """Which text token is which: a learned function of each token's index, added to the projected text states.

    Cross-attention sees the text as a set, so word order reaches it only through the encoder's contextual states,
    and a sentence encoder can all but lose it: MiniLM's "left" in "from left to right" and "right" in "from right
    to left" are 0.91 cosine-similar, and the two captions differ by little more. With the index added, the two
    become different sets. Sinusoids of the index (`get_timestep_embedding`, 2 * `num_freqs` features) through a
    linear map that starts at zero, so enabling it on a trained model leaves its outputs unchanged.

    Args:
        dim (`int`): Token width.
        num_freqs (`int`, defaults to `16`): Frequencies of the index features.
    """

    def __init__(self, dim: int, num_freqs: int = 16):
        super().__init__()
        self.num_freqs = num_freqs
        self.proj = _zero_linear(2 * num_freqs, dim)

    def forward(self, length: int, device: torch.device) -> torch.Tensor:
        """Return `(1, length, dim)` in the projection's dtype."""
        positions = torch.arange(length, device=device, dtype=torch.float32)
        features = get_timestep_embedding(positions, 2 * self.num_freqs, flip_sin_to_cos=True, max_period=1000)
        return self.proj(features.to(self.proj.weight.dtype))[None]  # (1, L, D)


class SpacetimeTextRefinerLayer(nn.Module):
    """One pre-norm transformer layer over the text tokens: self-attention (padding masked) and a feed-forward."""

    def __init__(self, dim: int, ffn_dim: int, num_attention_heads: int, attention_head_dim: int, qk_norm, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        # Keys and values from the same tokens: the cross-attention path of the processor, which applies the padding
        # bias and never takes a rotary embedding or a context-parallel split (text is not sharded).
        self.attn = SpacetimeAttention(dim, num_attention_heads, attention_head_dim, dim, qk_norm, eps)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.ff = SpacetimeFeedForward(dim, ffn_dim)

    def forward(self, text: torch.Tensor, attention_bias: torch.Tensor | None) -> torch.Tensor:
        """`text` `(B, L, D)`, `attention_bias` `(B, 1, 1, L)` additive or None -> `(B, L, D)`."""
        normed = self.norm1(text)
        text = text + self.attn(normed, normed, attention_bias)
        return text + self.ff(self.norm2(text))


class SpacetimeTextRefiner(nn.Module):
    """A few self-attention layers over the projected text tokens, before any cross-attention reads them.

    Cross-attention treats the text as a set of tokens, so "from left to right" and "from right to left" reach the
    video as nearly the same set. Letting the tokens attend to each other first (HunyuanVideo's token refiner does
    this) lets the model turn word order into features: "left" after "from" and "left" after "to" become different
    tokens. The last layer's output projections start at zero, so the refiner starts as the identity.

    Args:
        dim (`int`): Token width.
        num_layers (`int`): Layers.
        num_attention_heads (`int`), attention_head_dim (`int`): Heads and channels per head.
        ffn_dim (`int`): Hidden width of each feed-forward.
        qk_norm (`str`, *optional*), eps (`float`): As the transformer's blocks.
    """

    def __init__(
        self, dim: int, num_layers: int, num_attention_heads: int, attention_head_dim: int, ffn_dim: int, qk_norm, eps
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            [
                SpacetimeTextRefinerLayer(dim, ffn_dim, num_attention_heads, attention_head_dim, qk_norm, eps)
                for _ in range(num_layers)
            ]
        )
        for layer in self.layers:
            for linear in (layer.attn.to_out[0], layer.ff.net[2]):
                nn.init.zeros_(linear.weight)
                nn.init.zeros_(linear.bias)

    def forward(self, text: torch.Tensor, attention_bias: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            text = layer(text, attention_bias)
        return text


class SpacetimeTextPooling(nn.Module):
    """The whole caption as one vector for the timestep modulation: a learned query attends over the text tokens.

    Global facts of the caption (which way the object goes) then steer every block through its adaLN scale and
    shift, as a pooled text embedding does in SD3 and HunyuanVideo, instead of only through per-patch
    cross-attention. The output map starts at zero, so enabling it on a trained model changes nothing at first.
    """

    def __init__(self, dim: int, num_attention_heads: int, attention_head_dim: int, qk_norm, eps: float):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, dim) / dim**0.5)
        self.attn = SpacetimeAttention(dim, num_attention_heads, attention_head_dim, dim, qk_norm, eps)
        self.proj = _zero_linear(dim, dim)

    def forward(self, text: torch.Tensor, attention_bias: torch.Tensor | None) -> torch.Tensor:
        """`text` `(B, L, D)`, `attention_bias` `(B, 1, 1, L)` or None -> `(B, D)` in fp32."""
        query = self.query.expand(text.shape[0], -1, -1).to(text.dtype)  # (B, 1, D)
        pooled = self.attn(query, text, attention_bias)[:, 0]  # (B, D)
        return self.proj(F.silu(pooled)).float()


def _modulated_layer_norm(
    hidden_states: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float
) -> torch.Tensor:
    """`LayerNorm(x) * scale + shift`, with `scale` already holding the `1 +`.

    `x` is `(B, T, S, D)`; `shift` and `scale` are `(B, T, 1, D)`: one modulation per sample and token group.
    """
    dim = hidden_states.shape[-1]
    if shift.shape[0] * shift.shape[1] == 1 and hidden_states.shape[0] == 1:
        # One modulation for every token: it is LayerNorm's own affine, fused into the norm kernel.
        return F.layer_norm(hidden_states, (dim,), scale.reshape(dim), shift.reshape(dim), eps)
    return torch.addcmul(shift, F.layer_norm(hidden_states, (dim,), eps=eps), scale)


@maybe_allow_in_graph
class SpacetimeDiTBlock(nn.Module):
    """Self-attention over the clip (or frame), cross-attention to text, feed-forward; adaLN modulation.

    Args:
        dim (`int`): Model width.
        ffn_dim (`int`): Hidden width of the feed-forward.
        num_attention_heads (`int`): Heads.
        attention_head_dim (`int`): Channels per head.
        qk_norm (`str`, *optional*): `"rms_norm"` or `None`.
        eps (`float`): Epsilon of every norm.
    """

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        num_attention_heads: int,
        attention_head_dim: int,
        qk_norm: str | None = "rms_norm",
        eps: float = 1e-6,
    ):
        super().__init__()
        self.eps = eps
        # 1. Self-attention (pre-norm is a plain LayerNorm without affine: the modulation is its affine)
        self.attn1 = SpacetimeAttention(dim, num_attention_heads, attention_head_dim, None, qk_norm, eps)
        # 2. Cross-attention
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=True)
        self.attn2 = SpacetimeAttention(dim, num_attention_heads, attention_head_dim, dim, qk_norm, eps)
        # 3. Feed-forward
        self.ff = SpacetimeFeedForward(dim, ffn_dim)
        # 4. Per-block offsets of the 6 modulation rows (Wan's table; DiT's per-block adaLN linear, shared here)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temb: torch.Tensor,
        rotary_emb: tuple[torch.Tensor, torch.Tensor],
        encoder_attention_mask: torch.Tensor | None = None,
        frame_length: int | None = None,
        window: SpacetimeAttentionWindow | None = None,
    ) -> torch.Tensor:
        """
        Args:
            hidden_states (`torch.Tensor` of shape `(B, N, D)`): Tokens, frame-major.
            encoder_hidden_states (`torch.Tensor` of shape `(B, L, D)`): Projected text tokens.
            temb (`torch.Tensor` of shape `(B, 6, D)` or `(B, T, 6, D)`): Modulation for the whole sample, or for
                each of `T` equal, consecutive token groups (frames).
            rotary_emb (`tuple[torch.Tensor, torch.Tensor]`): `(cos, sin)`, each `(1, N, 1, head_dim)`.
            encoder_attention_mask (`torch.Tensor` of shape `(B, 1, 1, L)`, *optional*): Additive text-padding bias.
            frame_length (`int`, *optional*): Tokens per frame; set to restrict self-attention to frames.
            window (`SpacetimeAttentionWindow`, *optional*): Set to restrict self-attention to a local window.
        """
        # 0. Modulation in fp32 on the small tensor, then one cast: (B, T, 6, D) -> 6 x (B, T, 1, D)
        if temb.ndim == 3:
            temb = temb.unsqueeze(1)  # (B, 1, 6, D)
        modulation = (self.scale_shift_table + temb.float()).to(hidden_states.dtype)
        shift_msa, scale_msa, gate_msa, shift_ff, scale_ff, gate_ff = modulation.unsqueeze(3).unbind(2)
        num_groups = modulation.shape[1]

        # 1. Self-attention
        grouped = hidden_states.unflatten(1, (num_groups, -1))  # (B, T, N/T, D)
        norm_hidden_states = _modulated_layer_norm(grouped, shift_msa, scale_msa, self.eps).flatten(1, 2)  # (B, N, D)
        attn_output = self.attn1(norm_hidden_states, rotary_emb=rotary_emb, frame_length=frame_length, window=window)
        grouped = torch.addcmul(grouped, attn_output.unflatten(1, (num_groups, -1)), gate_msa)  # (B, T, N/T, D)

        # 2. Cross-attention (no modulation, as in Wan)
        hidden_states = grouped.flatten(1, 2)  # (B, N, D)
        attn_output = self.attn2(self.norm2(hidden_states), encoder_hidden_states, encoder_attention_mask)
        hidden_states = hidden_states + attn_output

        # 3. Feed-forward
        grouped = hidden_states.unflatten(1, (num_groups, -1))  # (B, T, N/T, D)
        norm_hidden_states = _modulated_layer_norm(grouped, shift_ff, scale_ff, self.eps).flatten(1, 2)  # (B, N, D)
        ff_output = self.ff(norm_hidden_states)
        grouped = torch.addcmul(grouped, ff_output.unflatten(1, (num_groups, -1)), gate_ff)  # (B, T, N/T, D)
        return grouped.flatten(1, 2)  # (B, N, D)


# ----------------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------------


def _drop_shared_padding(
    encoder_hidden_states: torch.Tensor, encoder_attention_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Cuts the padded tail off the text when every row keeps the same leading tokens, and drops the mask.

    Exact (masked keys contribute nothing), cheaper (fewer keys), and it lets mask-less attention backends (flash)
    run the cross-attention. That is the common case: the pipeline encodes one prompt per guidance pass. Rows with
    different lengths keep the mask.
    """
    keep = encoder_attention_mask.to(torch.bool)  # (B, L)
    length = int(keep[0].sum())
    prefix = torch.arange(keep.shape[1], device=keep.device) < length  # (L,)
    if length == 0 or not bool((keep == prefix).all()):
        return encoder_hidden_states, encoder_attention_mask
    return encoder_hidden_states[:, :length], None  # (B, length, C)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and value >= 1


def _is_positive_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _is_window(value: Any) -> bool:
    def is_size(size):
        return size is None or (isinstance(size, int) and not isinstance(size, bool) and size >= 1 and size % 2 == 1)

    return isinstance(value, (tuple, list)) and len(value) == 3 and all(is_size(size) for size in value)


def _check_config(config: dict[str, Any]) -> None:
    """Raise for a configuration `SpacetimeDiTModel` cannot be built from, naming the key, the rule and the value."""
    num_layers = config["num_layers"]
    rules = (  # (key, test, rule), in order: `layer_attention_spans` relies on a valid `num_layers`
        ("attention_span", lambda value: value in ATTENTION_SPANS, f"must be one of {ATTENTION_SPANS}"),
        ("qk_norm", lambda value: value in QK_NORMS, f"must be one of {QK_NORMS}"),
        (
            "patch_size",
            lambda value: isinstance(value, (tuple, list)) and len(value) == 3 and all(map(_is_count, value)),
            "must be three positive ints (frames, rows, columns)",
        ),
        (
            "attention_head_dim",
            lambda value: isinstance(value, int) and value >= 6 and value % 2 == 0,
            "must be even and at least 6 (the 3D rotary embedding rotates pairs along frames, rows and columns)",
        ),
        *(
            (key, _is_count, "must be a positive int")
            for key in ("in_channels", "num_attention_heads", "num_layers", "ffn_dim", "text_embed_dim", "freq_dim")
        ),
        ("freq_dim", lambda value: value % 2 == 0, "must be even (sine and cosine halves)"),
        (
            "out_channels",
            lambda value: value is None or _is_count(value),
            "must be a positive int or None (= in_channels)",
        ),
        ("eps", _is_positive_number, "must be a positive number"),
        ("rope_theta", _is_positive_number, "must be a positive number"),
        (
            "text_refiner_layers",
            lambda value: isinstance(value, int) and not isinstance(value, bool) and value >= 0,
            "must be an int >= 0",
        ),
        (
            "attention_window",
            _is_window,
            "must be (frames, rows, columns), each an odd positive int or None (whole axis)",
        ),
        (
            "layer_attention_spans",
            lambda value: (
                value is None
                or (
                    isinstance(value, (tuple, list))
                    and len(value) == num_layers
                    and all(v in ATTENTION_SPANS for v in value)
                )
            ),
            f"must give one of {ATTENTION_SPANS} for each of the {num_layers} layers",
        ),
    )
    for key, is_valid, rule in rules:
        if not is_valid(config[key]):
            raise ValueError(f"{key} {rule}, got {config[key]!r}.")
    for key in ("use_absolute_positional_embeddings", "use_text_positional_embeddings", "use_pooled_text_modulation"):
        if not isinstance(config[key], bool):
            raise TypeError(f"{key} must be a bool, got {type(config[key]).__name__}.")


def _timestep_tensor(timestep: Any, device: torch.device | None) -> torch.Tensor:
    """A number or a list of numbers -> a tensor on `device`; a tensor stays as it is (it is checked first)."""
    if isinstance(timestep, torch.Tensor):
        return timestep
    try:
        return torch.tensor(timestep, device=device)
    except (TypeError, RuntimeError, ValueError) as error:
        raise TypeError(
            f"timestep must be a number, a list of numbers or a torch.Tensor, got {type(timestep).__name__}."
        ) from error


class SpacetimeDiTModel(ModelMixin, ConfigMixin, PeftAdapterMixin, CacheMixin, AttentionMixin, SpacetimeHubMixin):
    r"""
    A diffusion transformer over spacetime patches (tubelets) of a video latent, conditioned on text and noise level.

    Args:
        in_channels (`int`, defaults to `16`): Latent channels of the input.
        out_channels (`int`, *optional*): Latent channels of the output; defaults to `in_channels`.
        patch_size (`tuple[int, int, int]`, defaults to `(1, 2, 2)`): Tubelet size (frames, rows, columns).
        num_attention_heads (`int`, defaults to `12`): Attention heads per layer.
        attention_head_dim (`int`, defaults to `128`): Channels per head (even, at least 6); width is the product.
        num_layers (`int`, defaults to `30`): Transformer blocks.
        ffn_dim (`int`, defaults to `8960`): Hidden width of each feed-forward.
        text_embed_dim (`int`, defaults to `4096`): Width of the text encoder's states.
        attention_span (`str`, defaults to `"spacetime"`): `"spacetime"` (self-attention over all patches of the
            clip), `"frame"` (only over patches of the same frame: the per-frame baseline) or `"window"` (over the
            patches within `attention_window` of each patch: cost grows linearly with the clip).
        freq_dim (`int`, defaults to `256`): Channels of the sinusoidal timestep embedding.
        qk_norm (`str`, *optional*, defaults to `"rms_norm"`): Per-head RMS norm of queries and keys, or `None`.
        eps (`float`, defaults to `1e-6`): Epsilon of every norm.
        rope_theta (`float`, defaults to `10000.0`): Base of the rotary frequencies.
        use_absolute_positional_embeddings (`bool`, defaults to `False`):
            Also add a learned function of each patch's normalised (frame, row, column) coordinates to its token
            (`SpacetimeAbsolutePosEmbed`, zero at initialisation), so that text can name absolute places and times
            ("from left to right"). Off: rotary embedding only, as Wan.
        use_text_positional_embeddings (`bool`, defaults to `False`):
            Also add a learned function of each text token's index to the text states (`SpacetimeTextPosEmbed`, zero
            at initialisation), so that word order counts in cross-attention ("from left to right" vs "from right
            to left"). Off: the text's order reaches the model only through the text encoder.
        text_refiner_layers (`int`, defaults to `0`):
            Self-attention layers over the text tokens before the blocks' cross-attention (`SpacetimeTextRefiner`,
            the identity at initialisation), so that word order can become features. 0: none.
        use_pooled_text_modulation (`bool`, defaults to `False`):
            Also add an attention-pooled vector of the text to the timestep embedding (`SpacetimeTextPooling`, zero
            at initialisation), so that the caption steers every block's modulation. Off: text reaches the blocks
            through cross-attention only.
        attention_window (`tuple[int | None, int | None, int | None]`, defaults to `(3, None, None)`):
            Window of the `"window"` span in latent patches (after patching), centred on each patch: odd sizes
            (frames, rows, columns), `None` for the whole axis. The default: the frame before, the frame itself and
            the frame after. A window limited in time runs as plain SDPA over the gathered neighbouring frames (cost
            linear in the clip's length), one over every frame as a dense mask (full cost); with
            `set_attention_backend("flex")` every window runs as a FlexAttention block mask.
        layer_attention_spans (`tuple[str, ...]`, *optional*):
            One span per layer, overriding `attention_span` (e.g. full `"spacetime"` in a few blocks, `"window"` in
            the rest); the weights are the same for every span, so a trained model can switch.

    Defaults equal the dimensions of Wan2.1's 1.3B transformer.

    Example:
        ```py
        >>> import torch
        >>> from diffusers_spacetime import SpacetimeDiTModel

        >>> model = SpacetimeDiTModel(
        ...     num_attention_heads=2, attention_head_dim=16, num_layers=2, ffn_dim=64, text_embed_dim=32
        ... )
        >>> latents = torch.randn(1, 16, 3, 8, 12)  # (B, C, F, H, W)
        >>> text = torch.randn(1, 7, 32)
        >>> model(latents, torch.tensor([500.0]), text).sample.shape
        torch.Size([1, 16, 3, 8, 12])
        >>> # image-to-video: frame 0 clean, the rest at noise level 500
        >>> model(latents, torch.tensor([[0.0, 500.0, 500.0]]), text).sample.shape
        torch.Size([1, 16, 3, 8, 12])
        ```
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["SpacetimeDiTBlock"]
    _skip_layerwise_casting_patterns = ["patch_embedding", "pos_embedding", "time_embedder", "text_embedder", "norm"]
    _keep_in_fp32_modules = ["time_embedder", "scale_shift_table"]
    _repeated_blocks = ["SpacetimeDiTBlock"]
    # Tokens are split along the sequence, in whole frames when per-frame timesteps or the frame span are used
    # (F/patch frames divisible by the world size): the per-frame modulation is split alongside.
    _cp_plan = {
        "rope": {
            0: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
            1: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
        },
        "time_embedder": {
            0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True),
            1: ContextParallelInput(split_dim=1, expected_dims=4, split_output=True),
        },
        "blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }

    @register_to_config
    def __init__(
        self,
        in_channels: int = 16,
        out_channels: int | None = None,
        patch_size: tuple[int, int, int] = (1, 2, 2),
        num_attention_heads: int = 12,
        attention_head_dim: int = 128,
        num_layers: int = 30,
        ffn_dim: int = 8960,
        text_embed_dim: int = 4096,
        attention_span: str = "spacetime",
        freq_dim: int = 256,
        qk_norm: str | None = "rms_norm",
        eps: float = 1e-6,
        rope_theta: float = 10000.0,
        use_absolute_positional_embeddings: bool = False,
        use_text_positional_embeddings: bool = False,
        text_refiner_layers: int = 0,
        use_pooled_text_modulation: bool = False,
        attention_window: tuple[int | None, int | None, int | None] = (3, None, None),
        layer_attention_spans: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()

        _check_config(self.config)
        patch_size = tuple(patch_size)
        inner_dim = num_attention_heads * attention_head_dim
        out_channels = out_channels or in_channels
        self.patch_size = patch_size
        self.out_channels = out_channels
        self.attention_window = tuple(attention_window)
        self.layer_spans = tuple(layer_attention_spans) if layer_attention_spans else (attention_span,) * num_layers

        # 1. Patch and position embedding
        self.patch_embedding = nn.Conv3d(in_channels, inner_dim, kernel_size=patch_size, stride=patch_size)
        self.rope = SpacetimeRotaryPosEmbed(attention_head_dim, theta=rope_theta)
        self.pos_embedding = SpacetimeAbsolutePosEmbed(inner_dim) if use_absolute_positional_embeddings else None

        # 2. Condition embeddings
        self.time_embedder = SpacetimeTimestepEmbedding(inner_dim, freq_dim)
        self.text_embedder = SpacetimeTextProjection(text_embed_dim, inner_dim)
        self.text_pos_embedding = SpacetimeTextPosEmbed(inner_dim) if use_text_positional_embeddings else None
        self.text_refiner = None
        if text_refiner_layers:
            self.text_refiner = SpacetimeTextRefiner(
                inner_dim, text_refiner_layers, num_attention_heads, attention_head_dim, ffn_dim, qk_norm, eps
            )
        self.text_pooling = None
        if use_pooled_text_modulation:
            self.text_pooling = SpacetimeTextPooling(inner_dim, num_attention_heads, attention_head_dim, qk_norm, eps)

        # 3. Transformer blocks
        self.blocks = nn.ModuleList(
            [
                SpacetimeDiTBlock(inner_dim, ffn_dim, num_attention_heads, attention_head_dim, qk_norm, eps)
                for _ in range(num_layers)
            ]
        )

        # 4. Output norm, modulation and projection back to tubelets
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, inner_dim) / inner_dim**0.5)
        self.proj_out = nn.Linear(inner_dim, out_channels * math.prod(patch_size))

        self.gradient_checkpointing = False

    # ------------------------------------------------------------------------------------------------------------

    def _check_inputs(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
    ) -> None:
        """Raise a short `TypeError`/`ValueError` naming the first bad argument and the rule it breaks."""
        for name, value in (("hidden_states", hidden_states), ("encoder_hidden_states", encoder_hidden_states)):
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}.")
        self._check_latent_shape(hidden_states)
        batch_size, num_frames = hidden_states.shape[0], hidden_states.shape[2]
        text_shape = tuple(encoder_hidden_states.shape)
        if len(text_shape) != 3 or text_shape[-1] != self.config.text_embed_dim:
            raise ValueError(
                f"encoder_hidden_states must be (B, L, text_embed_dim={self.config.text_embed_dim}), got shape "
                f"{text_shape}."
            )
        if text_shape[0] != batch_size:
            raise ValueError(
                f"encoder_hidden_states batch {text_shape[0]} does not match hidden_states batch {batch_size}."
            )
        # A TypeError here instead of a convolution's or matmul's dtype mismatch deep in the forward. The patch
        # embedding keeps the compute dtype under layerwise casting; autocast converts inputs itself.
        compute_dtype = self.patch_embedding.weight.dtype
        for name, value in (("hidden_states", hidden_states), ("encoder_hidden_states", encoder_hidden_states)):
            if not value.dtype.is_floating_point:
                raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}.")
            if value.dtype != compute_dtype and not torch.is_autocast_enabled(value.device.type):
                raise TypeError(
                    f"{name} has dtype {value.dtype} but the model computes in {compute_dtype}: cast it with "
                    f"{name}.to({compute_dtype}) (or run under torch.autocast)."
                )
        if timestep.dtype == torch.bool or timestep.dtype.is_complex:
            raise TypeError(f"timestep must hold real numbers (noise levels), got dtype {timestep.dtype}.")
        if encoder_attention_mask is not None and not isinstance(encoder_attention_mask, torch.Tensor):
            raise TypeError(
                f"encoder_attention_mask must be a torch.Tensor, got {type(encoder_attention_mask).__name__}."
            )
        if encoder_attention_mask is not None and tuple(encoder_attention_mask.shape) != text_shape[:2]:
            raise ValueError(
                f"encoder_attention_mask must be (B, L) = {text_shape[:2]} (1 keep, 0 padding), got shape "
                f"{tuple(encoder_attention_mask.shape)}."
            )
        if timestep.ndim > 2 or (timestep.ndim >= 1 and timestep.shape[0] not in (1, batch_size)):
            raise ValueError(
                f"timestep must be a scalar, (B,) or (B, F) with B={batch_size} (or 1) and F={num_frames} latent "
                f"frames, got shape {tuple(timestep.shape)}."
            )
        if timestep.ndim == 2 and timestep.shape[1] != num_frames:
            raise ValueError(
                f"timestep of shape (B, F) must give one noise level per latent frame: F={num_frames}, got shape "
                f"{tuple(timestep.shape)}."
            )

    def _check_latent_shape(self, hidden_states: torch.Tensor) -> None:
        """`(B, in_channels, F, H, W)`, non-empty, with `F`, `H`, `W` divisible by the patch size."""
        if hidden_states.ndim != 5:
            raise ValueError(f"hidden_states must be 5-D (B, C, F, H, W), got shape {tuple(hidden_states.shape)}.")
        batch_size, channels, num_frames, height, width = hidden_states.shape
        if min(batch_size, num_frames, height, width) < 1:
            raise ValueError(
                f"hidden_states must have at least one sample, frame, row and column, got shape "
                f"{tuple(hidden_states.shape)}."
            )
        if channels != self.config.in_channels:
            raise ValueError(
                f"hidden_states has {channels} channels but the model was built with in_channels="
                f"{self.config.in_channels}."
            )
        for axis, size, patch in zip(("num_frames", "height", "width"), (num_frames, height, width), self.patch_size):
            if size % patch:
                raise ValueError(
                    f"hidden_states {axis} {size} is not divisible by the patch size {patch} "
                    f"(patch_size={self.patch_size}); nearest valid {axis}: {nearest_valid_sizes(size, patch)}."
                )

    def _attention_window(self, grid: tuple[int, int, int], device: torch.device) -> SpacetimeAttentionWindow | None:
        """The window of this forward's `"window"` layers on the patch grid `(F', H', W')`; None if it covers it."""
        # An axis whose window reaches every patch from every patch is not restricted.
        half = tuple(
            None if size is None or (size - 1) // 2 >= length - 1 else (size - 1) // 2
            for size, length in zip(self.attention_window, grid)
        )
        if half == (None, None, None):
            return None  # the window covers the clip: spacetime attention, exactly
        num_tokens = math.prod(grid)
        window_layer = self.layer_spans.index("window")
        # The backend dispatch_attention_fn will use: the layer's own, else diffusers' process-wide active one.
        backend = self.blocks[window_layer].attn1.processor._attention_backend
        backend = backend if backend is not None else _AttentionBackendRegistry.get_active_backend()[0]
        if AttentionBackendName(backend) == AttentionBackendName.FLEX:
            from torch.nn.attention.flex_attention import create_block_mask

            def mask_mod(batch_index, head_index, query_index, key_index):
                return _window_keep(query_index, key_index, grid, half)

            block_mask = create_block_mask(mask_mod, None, None, num_tokens, num_tokens, device=device)
            return SpacetimeAttentionWindow(grid, half, block_mask=block_mask)
        if half[0] is not None:
            # Gathered key frames f - half .. f + half: True where that frame lies inside the clip.
            offsets = torch.arange(-half[0], half[0] + 1, device=device)  # (width,)
            frames = torch.arange(grid[0], device=device)[:, None] + offsets  # (F', width)
            inside = (frames >= 0) & (frames < grid[0])
            frame_length = grid[1] * grid[2]
            if half[1:] == (None, None):
                return SpacetimeAttentionWindow(grid, half, mask=inside.repeat_interleave(frame_length, dim=1))
            # And the spatial window within each gathered frame: (F', H'W', width, H'W') -> (F', H'W', width*H'W')
            index = torch.arange(frame_length, device=device)
            spatial = _window_keep(index[:, None], index[None, :], (1, *grid[1:]), (None, *half[1:]))  # (H'W', H'W')
            mask = inside[:, None, :, None] & spatial[None, :, None, :]
            return SpacetimeAttentionWindow(grid, half, mask=mask.flatten(2))
        index = torch.arange(num_tokens, device=device)
        mask = _window_keep(index[:, None], index[None, :], grid, half)  # (N, N)
        return SpacetimeAttentionWindow(grid, half, mask=mask[None, None])

    def _frame_timesteps(self, timestep: torch.Tensor) -> torch.Tensor:
        """`(B, F)` latent-frame noise levels -> `(B, F / patch_frames)` tubelet noise levels, or `(B,)` for one frame.

        A tubelet of `patch_size[0]` frames is one token, so its frames must share a noise level; that is checked
        in eager mode (a device sync, only for `patch_size[0] > 1`) and each tubelet takes its first frame's level.
        """
        patch_frames = self.patch_size[0]
        if patch_frames > 1:
            tubelets = timestep.unflatten(1, (-1, patch_frames))  # (B, F/p, p)
            if not torch.compiler.is_compiling() and not bool((tubelets == tubelets[..., :1]).all()):
                raise ValueError(
                    f"per-frame timesteps must be equal within each tubelet of patch_size[0]={patch_frames} "
                    f"frames (a tubelet is one token), got {timestep.tolist()}."
                )
            timestep = tubelets[..., 0]  # (B, F/p)
        if timestep.shape[1] == 1:
            timestep = timestep[:, 0]  # (B,): one frame is the whole-sample case
        return timestep

    def _condition(
        self,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor]:
        """The conditioning every block reads: noise level per sample `(B,)` or per tubelet frame `(B, F')`, text.

        Returns the projected text `(B, L, D)`, its additive padding bias `(B, 1, 1, L)` in `dtype` (None without a
        mask), `temb` `(B, [F',] D)` for the output norm and the blocks' modulation `temb_proj` `(B, [F',] 6, D)`.
        """
        if timestep.ndim == 0:
            timestep = timestep[None]  # (1,)
        elif timestep.ndim == 2:
            timestep = self._frame_timesteps(timestep)  # (B, F') or (B,)
        if encoder_attention_mask is not None and not torch.compiler.is_compiling():
            encoder_hidden_states, encoder_attention_mask = _drop_shared_padding(
                encoder_hidden_states, encoder_attention_mask
            )
        encoder_hidden_states = self.text_embedder(encoder_hidden_states)  # (B, L, D)
        if self.text_pos_embedding is not None:
            text_positions = self.text_pos_embedding(encoder_hidden_states.shape[1], encoder_hidden_states.device)
            encoder_hidden_states = encoder_hidden_states + text_positions.to(encoder_hidden_states.dtype)
        attention_bias = None
        if encoder_attention_mask is not None:
            # Additive bias (B, 1, 1, L): the most negative finite value keeps a fully padded row finite.
            keep = encoder_attention_mask.to(device=encoder_hidden_states.device, dtype=torch.bool)[:, None, None, :]
            attention_bias = torch.zeros(keep.shape, device=keep.device, dtype=dtype)
            attention_bias = attention_bias.masked_fill(~keep, torch.finfo(dtype).min)
        if self.text_refiner is not None:
            encoder_hidden_states = self.text_refiner(encoder_hidden_states, attention_bias)  # (B, L, D)
        text_condition = None
        if self.text_pooling is not None:
            text_condition = self.text_pooling(encoder_hidden_states, attention_bias)  # (B, D)
        temb, temb_proj = self.time_embedder(timestep, text_condition)  # (B, [F',] D), (B, [F',] 6, D)
        return encoder_hidden_states, attention_bias, temb, temb_proj

    @apply_lora_scale("attention_kwargs")
    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> Transformer2DModelOutput | tuple[torch.Tensor]:
        """
        Predict the denoising target for a noisy video latent.

        Args:
            hidden_states (`torch.Tensor` of shape `(B, C, F, H, W)`):
                Noisy latents; `F`, `H`, `W` divisible by `patch_size`.
            timestep (`torch.Tensor` or number):
                Noise level: a scalar, `(B,)`, or `(B, F)` with one level per latent frame (image-to-video and
                continuation keep conditioning frames at 0). A leading dimension of 1 broadcasts over the batch.
                With `patch_size[0] > 1`, frames of one tubelet must share their level. A `(B,)` timestep equals
                the same value repeated over `(B, F)`.
            encoder_hidden_states (`torch.Tensor` of shape `(B, L, text_embed_dim)`):
                Text encoder states.
            encoder_attention_mask (`torch.Tensor` of shape `(B, L)`, *optional*):
                1 keeps a text token, 0 marks padding; padded tokens then have no influence.
            attention_kwargs (`dict`, *optional*):
                `{"scale": s}` scales active LoRA layers.
            return_dict (`bool`, defaults to `True`):
                Return a `Transformer2DModelOutput` instead of a tuple.

        Returns:
            `Transformer2DModelOutput` with `sample` of shape `(B, out_channels, F, H, W)`, or `(sample,)`.
        """
        timestep = _timestep_tensor(timestep, getattr(hidden_states, "device", None))
        self._check_inputs(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask)
        timestep = timestep.to(hidden_states.device)
        batch_size, _, num_frames, height, width = hidden_states.shape
        patch_frames, patch_height, patch_width = self.patch_size
        grid = (num_frames // patch_frames, height // patch_height, width // patch_width)  # (F', H', W')

        # 1. Patch embedding: tubelets -> tokens, frame-major
        hidden_states = self.patch_embedding(hidden_states)  # (B, D, F', H', W')
        # One copy to token-major memory: a transposed residual stream would make every later op strided.
        hidden_states = hidden_states.flatten(2).transpose(1, 2).contiguous()  # (B, F'*H'*W', D)
        if self.pos_embedding is not None:
            position = self.pos_embedding(*grid, hidden_states.device)  # (1, N, D)
            hidden_states = hidden_states + position.to(hidden_states.dtype)
        rotary_emb = self.rope(*grid, hidden_states.device, hidden_states.dtype)

        # 2. Conditioning: noise level, text, padding bias; the self-attention layout of each span
        encoder_hidden_states, attention_bias, temb, temb_proj = self._condition(
            timestep, encoder_hidden_states, encoder_attention_mask, hidden_states.dtype
        )
        window = self._attention_window(grid, hidden_states.device) if "window" in self.layer_spans else None
        layouts = {"spacetime": (None, None), "frame": (grid[1] * grid[2], None), "window": (None, window)}

        # 3. Transformer blocks
        for block, span in zip(self.blocks, self.layer_spans):
            block_args = (encoder_hidden_states, temb_proj, rotary_emb, attention_bias, *layouts[span])
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden_states = self._gradient_checkpointing_func(block, hidden_states, *block_args)
            else:
                hidden_states = block(hidden_states, *block_args)

        # 4. Output norm with its own modulation (shift, scale per sample or frame), projection
        if temb.ndim == 2:
            temb = temb[:, None]  # (B, 1, D)
        shift, scale = (self.scale_shift_table[:, None] + temb[:, :, None].float()).unbind(2)  # (B, T, D) each
        shift, scale = shift.to(hidden_states.dtype)[:, :, None], (1 + scale).to(hidden_states.dtype)[:, :, None]
        grouped = hidden_states.unflatten(1, (shift.shape[1], -1))  # (B, T, N/T, D)
        hidden_states = _modulated_layer_norm(grouped, shift, scale, self.config.eps).flatten(1, 2)  # (B, N, D)
        hidden_states = self.proj_out(hidden_states)  # (B, N, C_out*pt*ph*pw)

        # 5. Unpatchify: tokens (B, N, C_out*pt*ph*pw) -> (B, F', H', W', pt, ph, pw, C_out) -> (B, C_out, F, H, W)
        hidden_states = hidden_states.reshape(batch_size, *grid, *self.patch_size, -1)
        hidden_states = hidden_states.permute(0, 7, 1, 4, 2, 5, 3, 6)  # (B, C_out, F', pt, H', ph, W', pw)
        output = hidden_states.reshape(batch_size, -1, num_frames, height, width)  # (B, C_out, F, H, W)
        if not return_dict:
            return (output,)
        return Transformer2DModelOutput(sample=output)


# ----------------------------------------------------------------------------------------------------------------
# Registration with diffusers' hooks (private API, pinned to diffusers 0.42 in pyproject)
# ----------------------------------------------------------------------------------------------------------------

# FirstBlockCache / MagCache / LayerSkip look blocks up by class: the block returns hidden_states only.
TransformerBlockRegistry.register(
    model_class=SpacetimeDiTBlock,
    metadata=TransformerBlockMetadata(return_hidden_states_index=0, return_encoder_hidden_states_index=None),
)


def _skip_attention_return_hidden_states(self, *args, **kwargs):
    """LayerSkip's replacement output for a skipped attention: its input hidden_states."""
    hidden_states = kwargs.get("hidden_states", None)
    if hidden_states is None and len(args) > 0:
        hidden_states = args[0]
    return hidden_states


AttentionProcessorRegistry.register(
    model_class=SpacetimeAttnProcessor,
    metadata=AttentionProcessorMetadata(skip_processor_output_fn=_skip_attention_return_hidden_states),
)
