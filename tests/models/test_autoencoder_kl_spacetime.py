"""Tests for AutoencoderKLSpacetime: shapes, causality, tiling, slicing, checkpointing, save/load, input checks.

Real classes at tiny size on CPU, random weights. Tolerances are stated where outputs are compared.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution
from diffusers.models.modeling_outputs import AutoencoderKLOutput

from diffusers_spacetime import AutoencoderKLSpacetime

# The tiny config: 4x4 spatial, 4x temporal, 4 latent channels
TINY = {
    "block_out_channels": (16, 32, 32),
    "layers_per_block": 1,
    "latent_channels": 4,
    "temporal_downsample": (True, True),
}

# (block_out_channels, temporal_downsample) -> spatial ratio s, temporal ratio r
COMPRESSION_CONFIGS = [
    pytest.param((16, 32, 32), (True, True), id="s4-r4"),
    pytest.param((16, 32, 32), (False, True), id="s4-r2"),
    pytest.param((16, 16, 32, 32), (False, True, True), id="s8-r4"),
    pytest.param((16, 32), (True,), id="s2-r2"),
    pytest.param((16, 32, 32), (False, False), id="s4-r1"),
]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Tensors this small gain nothing from threads (see `one_thread`)."""


def make_model(seed: int = 0, **overrides) -> AutoencoderKLSpacetime:
    torch.manual_seed(seed)
    return AutoencoderKLSpacetime(**{**TINY, **overrides}).eval()


def smooth_video(batch_size: int, num_frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A video in [-1, 1] with structure at several scales (smooth noise plus a little fine noise)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch_size, 3, max(num_frames // 4, 1) + 1, height // 4, width // 4, generator=generator)
    video = F.interpolate(coarse, size=(num_frames, height, width), mode="trilinear", align_corners=True)
    video = video + 0.1 * torch.randn(video.shape, generator=generator)
    return (video / video.abs().amax()).clamp(-1, 1)


# 1. Shapes and outputs


@pytest.mark.parametrize(
    "num_frames, height, width",
    [(1, 16, 16), (5, 16, 24), (9, 8, 32), (13, 24, 12)],
    ids=["image", "non-square", "wide", "tall"],
)
def test_shapes(num_frames, height, width):
    model = make_model()
    video = smooth_video(2, num_frames, height, width)
    with torch.no_grad():
        encoded = model.encode(video)
        assert isinstance(encoded, AutoencoderKLOutput)
        assert isinstance(encoded.latent_dist, DiagonalGaussianDistribution)
        latents = encoded.latent_dist.sample(generator=torch.Generator().manual_seed(0))
        assert latents.shape == (2, 4, 1 + (num_frames - 1) // 4, height // 4, width // 4)
        decoded = model.decode(latents)
        assert isinstance(decoded, DecoderOutput)
        assert decoded.sample.shape == video.shape
        assert model(video).sample.shape == video.shape
        assert (
            model(video, sample_posterior=True, generator=torch.Generator().manual_seed(0)).sample.shape == video.shape
        )
        (posterior,) = model.encode(video, return_dict=False)
        (sample,) = model.decode(posterior.mode(), return_dict=False)
        (reconstruction,) = model(video, return_dict=False)
    torch.testing.assert_close(sample, reconstruction, rtol=0, atol=0)


def test_compression_ratios():
    with torch.device("meta"):  # the default config (~95M parameters) without allocating it
        model = AutoencoderKLSpacetime()
    assert (model.spatial_compression_ratio, model.temporal_compression_ratio) == (8, 4)
    assert model.config.latent_channels == 16
    assert model.config.latents_mean is None and model.config.latents_std is None
    tiny = make_model()
    assert (tiny.spatial_compression_ratio, tiny.temporal_compression_ratio) == (4, 4)


# 2. Causality: the first 1 + j*r frames give the first 1 + j latent frames; decoding likewise


def assert_time_mixing(difference: torch.Tensor, ratio: int) -> None:
    """`difference[i]`: change at step 1 + i after a change at step 1. Time is mixed iff time is compressed."""
    if ratio > 1:
        assert (difference > 1e-4).all(), difference
    else:  # no temporal compression: a per-frame (image) VAE
        assert difference[0] > 1e-4 and (difference[1:] == 0).all(), difference


@pytest.mark.parametrize("block_out_channels, temporal_downsample", COMPRESSION_CONFIGS)
def test_encode_is_causal(block_out_channels, temporal_downsample):
    model = make_model(block_out_channels=block_out_channels, temporal_downsample=temporal_downsample)
    ratio, spatial = model.temporal_compression_ratio, model.spatial_compression_ratio
    video = smooth_video(1, 1 + 3 * ratio, 2 * spatial, 3 * spatial)
    with torch.no_grad():
        full = model.encode(video).latent_dist.mean  # (1, L, 4, 2, 3)
        for num_latent_frames in (1, 2, 3):
            prefix = model.encode(video[:, :, : 1 + (num_latent_frames - 1) * ratio]).latent_dist.mean
            torch.testing.assert_close(prefix, full[:, :, :num_latent_frames], rtol=0, atol=1e-5)
        # and time really is mixed: a change in frame 1 reaches latent frame 1 and, through the cache, later ones
        changed = video.clone()
        changed[:, :, 1] = -changed[:, :, 1]
        difference = (model.encode(changed).latent_dist.mean - full).abs().amax(dim=(0, 1, 3, 4))  # (T,)
    assert difference[0] == 0
    assert_time_mixing(difference[1:], ratio)


@pytest.mark.parametrize("block_out_channels, temporal_downsample", COMPRESSION_CONFIGS)
def test_decode_is_causal(block_out_channels, temporal_downsample):
    model = make_model(block_out_channels=block_out_channels, temporal_downsample=temporal_downsample)
    ratio = model.temporal_compression_ratio
    latents = torch.randn(1, 4, 4, 2, 3, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model.decode(latents).sample  # (1, 3, 1 + 3r, 2s, 3s)
        assert full.shape[2] == 1 + 3 * ratio
        for num_latent_frames in (1, 2, 3):
            prefix = model.decode(latents[:, :, :num_latent_frames]).sample
            torch.testing.assert_close(prefix, full[:, :, : 1 + (num_latent_frames - 1) * ratio], rtol=0, atol=1e-5)
        changed = latents.clone()
        changed[:, :, 1] = -changed[:, :, 1]
        difference = (model.decode(changed).sample - full).abs().amax(dim=(0, 1, 3, 4))  # (F,)
    assert difference[0] == 0
    assert_time_mixing(difference[1:], ratio)


def test_chunked_equals_whole_clip():
    # the convolution cache reproduces a single pass over the whole clip (the cache-free reference)
    model = make_model()
    video = smooth_video(2, 13, 16, 24)
    with torch.no_grad():
        chunked = model.encode(video).latent_dist.parameters
        whole = model.encoder(video, None)
        torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
        latents = chunked[:, :4]
        torch.testing.assert_close(model.decode(latents).sample, model.decoder(latents, None), rtol=0, atol=1e-5)


# 3. Tiling and slicing


TILES = {
    "tile_sample_min_height": 32,
    "tile_sample_min_width": 32,
    "tile_sample_stride_height": 24,
    "tile_sample_stride_width": 24,
    "tile_sample_min_num_frames": 8,
    "tile_sample_stride_num_frames": 4,
}


def count_calls(monkeypatch, model, name):
    calls = []
    original = getattr(model, name)

    def wrapper(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(model, name, wrapper)
    return calls


@torch.no_grad()
def encode_decode(model: AutoencoderKLSpacetime, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The posterior mean of `video` and its decoding."""
    latents = model.encode(video).latent_dist.mean
    return latents, model.decode(latents).sample


def count_chunk_calls(monkeypatch, model) -> tuple[list, list]:
    """Calls of the encoder's and the decoder's chunk runs (one per tile)."""
    return count_calls(monkeypatch, model, "_encode_chunks"), count_calls(monkeypatch, model, "_decode_chunks")


def test_temporal_tiling_is_exact(monkeypatch):
    # temporal tiles continue the causal cache of the previous one, so they reproduce the untiled output
    model = make_model()
    video = smooth_video(1, 21, 16, 16)
    latents, decoded = encode_decode(model, video)
    for stride in (4, 8):  # with and without overlap
        model.enable_tiling(tile_sample_min_num_frames=8, tile_sample_stride_num_frames=stride)
        encode_calls, decode_calls = count_chunk_calls(monkeypatch, model)
        with torch.no_grad():
            torch.testing.assert_close(model.encode(video).latent_dist.mean, latents, rtol=0, atol=1e-5)
            torch.testing.assert_close(model.decode(latents).sample, decoded, rtol=0, atol=1e-5)
        assert len(encode_calls) > 1 and len(decode_calls) > 1
        monkeypatch.undo()
        model.disable_tiling()


class _LocalEncoder(torch.nn.Module):
    """Stands in for the encoder: per-pixel moments (a 4x4 average), following the chunk protocol."""

    def forward(self, video, cache):
        mean = F.avg_pool3d(video, (video.shape[2], 4, 4))  # (B, 3, 1, h, w)
        mean = torch.cat([mean, mean[:, :1] ** 2], dim=1)  # (B, 4, 1, h, w)
        return torch.cat([mean, torch.zeros_like(mean)], dim=1)  # (B, 2*4, 1, h, w): mean, logvar


class _LocalDecoder(torch.nn.Module):
    """Stands in for the decoder: nearest upsampling in space, one frame for latent 0, then r frames."""

    def forward(self, latents, cache):
        num_frames = 4 if cache.past else 1
        cache.present[self] = latents
        frames = latents[:, :3].repeat_interleave(4, dim=-1).repeat_interleave(4, dim=-2)  # (B, 3, 1, H, W)
        ramp = torch.arange(num_frames, dtype=latents.dtype).view(1, 1, -1, 1, 1)
        return frames + ramp  # (B, 3, 1 or 4, H, W)


def test_tiling_bookkeeping_is_exact_for_a_local_model():
    # with a model that has no spatial context, blended tiles must reproduce the untiled output exactly
    model = make_model()
    model.encoder, model.decoder = _LocalEncoder(), _LocalDecoder()
    video = smooth_video(2, 17, 40, 56)
    latents = torch.randn(2, 4, 5, 10, 14)
    reference = (model.encode(video).latent_dist.parameters, model.decode(latents).sample)
    model.enable_tiling(**TILES)
    torch.testing.assert_close(model.encode(video).latent_dist.parameters, reference[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(model.decode(latents).sample, reference[1], rtol=0, atol=1e-5)


def test_tiled_close_to_untiled(monkeypatch):
    # Spatial tiles see less context at their seams, and random weights give every pixel a wide receptive field.
    # Measured here (48x48, 17 frames, 32 px tiles, i.e. two 8x8 latent tiles per axis on a 12x12 latent): encode
    # max 0.41 / mean 0.046 on latents of std 0.28; decode max 0.63 / mean 0.041 on samples of std 0.20. Asserted
    # with margin; the benchmark measures larger tiles on a long clip.
    model = make_model()
    video = smooth_video(1, 17, 48, 48)
    latents, decoded = encode_decode(model, video)
    model.enable_tiling(**TILES)
    encode_calls, decode_calls = count_chunk_calls(monkeypatch, model)
    with torch.no_grad():
        tiled_latents = model.encode(video).latent_dist.mean
        tiled_decoded = model.decode(latents).sample
    assert len(encode_calls) == len(decode_calls) == 2 * 2 * 4  # 2x2 spatial tiles, 4 temporal tiles
    latent_error, sample_error = (tiled_latents - latents).abs(), (tiled_decoded - decoded).abs()
    assert latent_error.max() < 0.6 and latent_error.mean() < 0.075, (latent_error.max(), latent_error.mean())
    assert sample_error.max() < 0.9 and sample_error.mean() < 0.06, (sample_error.max(), sample_error.mean())


def test_sliced_equals_unsliced():
    model = make_model()
    video = smooth_video(3, 9, 16, 16)
    with torch.no_grad():
        posterior = model.encode(video).latent_dist
        decoded = model.decode(posterior.mean).sample
        model.enable_slicing()
        torch.testing.assert_close(model.encode(video).latent_dist.parameters, posterior.parameters, rtol=0, atol=1e-5)
        torch.testing.assert_close(model.decode(posterior.mean).sample, decoded, rtol=0, atol=1e-5)


# 4. Training: gradient checkpointing, bf16


def test_gradient_checkpointing_matches_plain():
    model = make_model().train()
    checkpointed = copy.deepcopy(model)
    checkpointed.enable_gradient_checkpointing()
    assert checkpointed.encoder.gradient_checkpointing and checkpointed.decoder.gradient_checkpointing
    video = smooth_video(2, 9, 16, 16)

    def loss_and_grads(vae):
        posterior = vae.encode(video).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=torch.Generator().manual_seed(0))).sample
        loss = F.mse_loss(reconstruction, video) + 1e-3 * posterior.kl().mean()
        loss.backward()
        return loss.detach(), {name: parameter.grad for name, parameter in vae.named_parameters()}

    loss, grads = loss_and_grads(model)
    calls = []
    function = checkpointed.encoder._gradient_checkpointing_func
    for module in (checkpointed.encoder, checkpointed.decoder):
        module._gradient_checkpointing_func = lambda *args, **kwargs: calls.append(1) or function(*args, **kwargs)
    checkpointed_loss, checkpointed_grads = loss_and_grads(checkpointed)
    assert calls, "checkpointing was not used"
    torch.testing.assert_close(checkpointed_loss, loss, rtol=0, atol=1e-6)
    for name, grad in grads.items():
        assert grad is not None, name
        torch.testing.assert_close(checkpointed_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_forward_is_finite():
    model = make_model().to(torch.bfloat16)
    video = smooth_video(1, 9, 16, 16).to(torch.bfloat16)
    with torch.no_grad():
        reconstruction = model(video).sample
    assert reconstruction.dtype == torch.bfloat16
    assert torch.isfinite(reconstruction).all()


# 5. Save / load


def test_save_load_round_trip(tmp_path):
    latents_mean, latents_std = (0.1, -0.2, 0.3, 0.0), (1.0, 0.5, 2.0, 1.5)
    model = make_model(latents_mean=latents_mean, latents_std=latents_std)
    model.save_pretrained(tmp_path)
    loaded = AutoencoderKLSpacetime.from_pretrained(tmp_path).eval()
    assert list(loaded.config.latents_mean) == list(latents_mean)
    assert list(loaded.config.latents_std) == list(latents_std)
    assert tuple(loaded.config.block_out_channels) == TINY["block_out_channels"]
    video = smooth_video(1, 5, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(video).sample, model(video).sample, rtol=0, atol=0)


# 6. Input checks: short errors naming the argument, the rule and the nearest valid sizes


BAD_INPUTS = [
    ("encode", [[0.0]], TypeError, r"x must be a torch.Tensor"),
    ("decode", None, TypeError, r"z must be a torch.Tensor"),
    ("forward", 1.0, TypeError, r"sample must be a torch.Tensor"),
    ("encode", torch.zeros(1, 3, 16, 16), ValueError, r"x must be 5D .* got shape \(1, 3, 16, 16\); .*unsqueeze"),
    ("encode", torch.zeros(1, 4, 5, 16, 16), ValueError, r"x has 4 channels, but in_channels=3"),
    ("encode", torch.zeros(1, 3, 10, 16, 16), ValueError, r"num_frames=10 is not 1 \+ k\*4; nearest valid: 9 or 13"),
    ("encode", torch.zeros(1, 3, 0, 16, 16), ValueError, r"num_frames=0 is not 1 \+ k\*4; nearest valid: 1"),
    ("forward", torch.zeros(1, 3, 6, 16, 16), ValueError, r"sample: num_frames=6 .* nearest valid: 5 or 9"),
    ("encode", torch.zeros(1, 3, 5, 18, 16), ValueError, r"height=18 is not a multiple of spatial_compression_ratio=4; nearest valid: 16 or 20"),
    ("encode", torch.zeros(1, 3, 5, 16, 2), ValueError, r"width=2 is not a multiple .*; nearest valid: 4\."),
    ("decode", torch.zeros(1, 4, 2, 4), ValueError, r"z must be 5D"),
    ("decode", torch.zeros(1, 3, 2, 4, 4), ValueError, r"z has 3 channels, but latent_channels=4"),
    ("decode", torch.zeros(1, 4, 0, 4, 4), ValueError, r"z must have at least one frame"),
]  # fmt: skip


@pytest.mark.parametrize(
    "method, tensor, error, match",
    BAD_INPUTS,
    ids=lambda value: None if not isinstance(value, str) else value[:40],
)
def test_bad_input_raises(method, tensor, error, match):
    model = make_model()
    with pytest.raises(error, match=match):
        getattr(model, method)(tensor)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"temporal_downsample": (True,)}, r"len\(temporal_downsample\) must be len\(block_out_channels\) - 1 = 2"),
        ({"temporal_downsample": (1, 0)}, r"temporal_downsample must hold bools"),
        ({"block_out_channels": ()}, r"block_out_channels must be a non-empty tuple of positive ints"),
        ({"layers_per_block": 0}, r"layers_per_block must be a positive int"),
        (
            {"latents_mean": (0.0, 0.0)},
            r"latents_mean must have one value per latent channel \(latent_channels=4\), got 2",
        ),
        ({"latents_std": (1.0, 1.0, 0.0, 1.0)}, r"latents_std must be positive"),
    ],
)
def test_bad_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_model(**overrides)


@pytest.mark.parametrize(
    "settings, match",
    [
        (
            {"tile_sample_min_height": 30},
            r"tile_sample_min_height=30 is not a positive multiple of spatial_compression_ratio=4; nearest valid: 28 or 32",
        ),
        (
            {"tile_sample_stride_num_frames": 6},
            r"tile_sample_stride_num_frames=6 .* temporal_compression_ratio=4; nearest valid: 4 or 8",
        ),
        (
            {"tile_sample_min_width": 16, "tile_sample_stride_width": 24},
            r"tile_sample_stride_width=24 must not exceed tile_sample_min_width=16",
        ),
    ],
)
def test_bad_tiling_settings_raise(settings, match):
    model = make_model()
    with pytest.raises(ValueError, match=match):
        model.enable_tiling(**settings)
    assert not model.use_tiling
