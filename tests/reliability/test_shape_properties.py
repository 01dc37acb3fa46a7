"""Shape properties over drawn sizes (hypothesis): a valid (F, H, W) gives the right output shape; an invalid one a
ValueError, never another exception.

Tiny models are built once per module; examples are few, derandomized (the same draws in every run) and have no
deadline (a busy CI machine is not a failure).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.pipelines.conftest import make_pipeline

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)
SPATIAL, TEMPORAL = 4, 4  # the tiny VAE's compression
VIDEO_SIDE = st.integers(0, 26)  # valid and invalid heights and widths around the tiny VAE's grid
PATCH = (1, 2, 2)  # the tiny DiT's patch


@pytest.fixture(scope="module")
def tubelet_dit():
    from diffusers_spacetime import SpacetimeDiTModel

    from .conftest import TINY_DIT

    torch.manual_seed(0)
    return SpacetimeDiTModel(**{**TINY_DIT, "patch_size": (2, 2, 2)}).eval()


def _call(function, *args, **kwargs):
    """The result, or the exception the call raised (asserted on by the caller)."""
    try:
        return function(*args, **kwargs)
    except Exception as error:  # any type: the property is that only ValueError appears
        return error


def _assert_value_error(result, *words):
    assert isinstance(result, ValueError), f"expected a ValueError, got {type(result).__name__}: {result}"
    assert all(word in str(result) for word in words), str(result)


# 1. The VAE: valid iff F = 1 + k*r and H, W are positive multiples of s


@SETTINGS
@given(k=st.integers(0, 3), rows=st.integers(1, 6), columns=st.integers(1, 6), batch_size=st.integers(1, 2))
def test_vae_valid_sizes_round_trip(vae, k, rows, columns, batch_size):
    video = torch.rand(batch_size, 3, 1 + k * TEMPORAL, rows * SPATIAL, columns * SPATIAL) * 2 - 1
    with torch.no_grad():
        latents = vae.encode(video).latent_dist.mode()
        assert latents.shape == (batch_size, 4, 1 + k, rows, columns)
        assert vae.decode(latents).sample.shape == video.shape


@SETTINGS
@given(num_frames=st.integers(0, 14), height=VIDEO_SIDE, width=VIDEO_SIDE, batch_size=st.integers(1, 2))
def test_vae_any_size_is_valid_or_a_value_error(vae, num_frames, height, width, batch_size):
    video = torch.rand(batch_size, 3, num_frames, height, width) * 2 - 1
    with torch.no_grad():
        result = _call(vae.encode, video)
    frames_ok = num_frames >= 1 and (num_frames - 1) % TEMPORAL == 0
    sizes_ok = all(size >= 1 and size % SPATIAL == 0 for size in (height, width))
    if not (frames_ok and sizes_ok):
        _assert_value_error(result, "x")
        return
    assert not isinstance(result, Exception), result
    latents = result.latent_dist.mode()
    expected = (batch_size, 4, 1 + (num_frames - 1) // TEMPORAL, height // SPATIAL, width // SPATIAL)
    assert latents.shape == expected
    with torch.no_grad():
        assert vae.decode(latents).sample.shape == video.shape


@SETTINGS
@given(num_latent_frames=st.integers(0, 4), height=st.integers(0, 6), width=st.integers(0, 6))
def test_vae_decode_any_latent_size(vae, num_latent_frames, height, width):
    with torch.no_grad():
        result = _call(vae.decode, torch.randn(1, 4, num_latent_frames, height, width))
    if min(num_latent_frames, height, width) < 1:
        _assert_value_error(result, "z must have at least one frame, row and column")
        return
    expected = (1, 3, 1 + (num_latent_frames - 1) * TEMPORAL, height * SPATIAL, width * SPATIAL)
    assert result.sample.shape == expected


# 2. The DiT: valid iff every size is a positive multiple of its patch; the output has the input's shape


@SETTINGS
@given(num_frames=st.integers(1, 4), rows=st.integers(1, 4), columns=st.integers(1, 4), batch_size=st.integers(1, 2))
def test_dit_valid_sizes(dit, num_frames, rows, columns, batch_size):
    hidden_states = torch.randn(batch_size, 4, num_frames, rows * 2, columns * 2)
    with torch.no_grad():
        output = dit(hidden_states, torch.full((batch_size,), 500.0), torch.randn(batch_size, 3, 32)).sample
    assert output.shape == hidden_states.shape


@SETTINGS
@given(
    num_frames=st.integers(0, 5),
    height=st.integers(0, 9),
    width=st.integers(0, 9),
    batch_size=st.integers(1, 2),
    per_frame_timestep=st.booleans(),
)
def test_dit_any_size_is_valid_or_a_value_error(dit, num_frames, height, width, batch_size, per_frame_timestep):
    hidden_states = torch.randn(batch_size, 4, num_frames, height, width)
    timestep = torch.full((batch_size, num_frames) if per_frame_timestep else (batch_size,), 500.0)
    text = torch.randn(batch_size, 3, 32)
    with torch.no_grad():
        result = _call(dit, hidden_states, timestep, text)
    sizes_ok = all(size >= 1 and size % patch == 0 for size, patch in zip((num_frames, height, width), PATCH))
    if not sizes_ok:
        _assert_value_error(result, "hidden_states")
        return
    assert not isinstance(result, Exception), result
    assert result.sample.shape == hidden_states.shape


@SETTINGS
@given(num_frames=st.integers(1, 6), timestep_frames=st.integers(1, 6))
def test_dit_tubelet_frames_and_timesteps(tubelet_dit, num_frames, timestep_frames):
    # patch_size[0] = 2: frames must pair up, and a per-frame timestep needs one level per frame
    model = tubelet_dit
    hidden_states = torch.randn(1, 4, num_frames, 2, 2)
    with torch.no_grad():
        result = _call(model, hidden_states, torch.full((1, timestep_frames), 500.0), torch.randn(1, 3, 32))
    if num_frames % 2:
        _assert_value_error(result, "num_frames", "patch size 2")
    elif timestep_frames != num_frames:
        _assert_value_error(result, "one noise level per latent frame")
    else:
        assert result.sample.shape == hidden_states.shape


# 3. The pipeline's input check: any height, width and frame count, of any type


@pytest.fixture(scope="module")
def pipe(tokenizer):
    return make_pipeline(tokenizer)


SIZE = st.one_of(st.integers(-8, 80), st.sampled_from([None, 8.0, "32", True, float("nan")]))


@SETTINGS
@given(height=SIZE, width=SIZE, num_frames=SIZE)
def test_pipeline_check_inputs_any_size(pipe, height, width, num_frames):
    result = _call(pipe.check_inputs, "a prompt", None, height, width, num_frames, 2, 5.0, 1)

    def is_int(value):
        return isinstance(value, int) and not isinstance(value, bool)

    valid = (
        all(is_int(size) and size > 0 and size % (SPATIAL * 2) == 0 for size in (height, width))
        and is_int(num_frames)
        and num_frames > 0
        and (num_frames - 1) % TEMPORAL == 0
    )
    if valid:
        assert result is None, result
    else:
        _assert_value_error(result)


@settings(max_examples=4, deadline=None, derandomize=True)
@given(latent_frames=st.integers(1, 3), latent_height=st.integers(1, 3), latent_width=st.integers(1, 3))
def test_pipeline_output_shape(pipe, latent_frames, latent_height, latent_width):
    height, width = latent_height * SPATIAL * 2, latent_width * SPATIAL * 2
    num_frames = 1 + (latent_frames - 1) * TEMPORAL
    frames = pipe(
        "a prompt",
        height=height,
        width=width,
        num_frames=num_frames,
        num_inference_steps=1,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
    ).frames
    assert frames.shape == (1, num_frames, height, width, 3)
