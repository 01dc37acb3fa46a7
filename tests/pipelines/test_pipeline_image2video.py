"""SpacetimeImageToVideoPipeline: image-to-video and continuation on tiny components, with per-frame noise levels."""

import logging

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    EulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils import export_to_video

from diffusers_spacetime import SpacetimeImageToVideoPipeline, SpacetimeVideoPipeline

from .conftest import DEFAULT_SIZE, assert_rejects, call_kwargs, make_components
from .test_pipeline_spacetime import TransformerSpy


@pytest.fixture
def i2v(tokenizer) -> SpacetimeImageToVideoPipeline:
    pipe = SpacetimeImageToVideoPipeline(**make_components(tokenizer), **DEFAULT_SIZE)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def gradient_image(height=32, width=32) -> np.ndarray:
    """A smooth uint8 RGB test image (H, W, 3)."""
    rows = np.linspace(0, 255, height)[:, None]
    cols = np.linspace(0, 255, width)[None, :]
    return np.stack([rows + 0 * cols, 0 * rows + cols, (rows + cols) / 2], axis=-1).astype(np.uint8)


def clip(num_frames=9, height=32, width=32) -> np.ndarray:
    """A clip of floats in [0, 1], (F, H, W, 3), whose frames differ."""
    base = gradient_image(height, width).astype(np.float32) / 255
    return np.stack([np.roll(base, shift=2 * i, axis=1) for i in range(num_frames)])


def expected_condition_latents(pipe, frames, height=32, width=32, resize_mode="default"):
    pixels = pipe._resize([pipe._to_pil(f, "x") for f in frames], height, width, resize_mode)
    with torch.no_grad():
        return pipe.encode_conditioning(pixels)


class TestImageToVideo:
    @pytest.mark.parametrize(
        "height, width, num_frames, image",
        [
            (32, 32, 5, PIL.Image.fromarray(gradient_image())),
            (16, 48, 9, gradient_image(20, 40)),  # uint8 array, resized (aspect changes: warned)
            (48, 32, 5, torch.from_numpy(gradient_image(48, 32)).permute(2, 0, 1).float() / 255),  # (3, H, W)
        ],
    )
    def test_sizes_and_input_types(self, i2v, height, width, num_frames, image):
        frames = i2v(image, **call_kwargs(height=height, width=width, num_frames=num_frames)).frames
        assert frames.shape == (1, num_frames, height, width, 3)
        assert np.isfinite(frames).all() and frames.min() >= 0 and frames.max() <= 1

    @pytest.mark.parametrize(
        "scheduler",
        [
            None,  # the default flow Euler
            lambda c: UniPCMultistepScheduler.from_config(c, prediction_type="flow_prediction", use_flow_sigmas=True),
            lambda c: FlowMatchHeunDiscreteScheduler.from_config(c),
            lambda c: EulerDiscreteScheduler.from_config(c),
            lambda c: DDIMScheduler.from_config(c),
        ],
    )
    def test_conditioning_latent_passes_through_unchanged(self, i2v, scheduler):
        if scheduler is not None:
            i2v.scheduler = scheduler(i2v.scheduler.config)
        image = gradient_image()
        latents = i2v(image, **call_kwargs(num_frames=9, num_inference_steps=3, output_type="latent")).frames
        expected = expected_condition_latents(i2v, [image])
        assert latents.shape == (1, 4, 3, 8, 8)
        torch.testing.assert_close(latents[:, :, :1], expected, atol=0, rtol=0)
        assert not torch.allclose(latents[:, :, 1:2], expected, atol=1e-2)

    def test_per_frame_timesteps_reach_the_transformer(self, i2v):
        spy = TransformerSpy(i2v.transformer)
        i2v(gradient_image(), **call_kwargs(num_frames=9, num_inference_steps=2))
        assert len(spy.calls) == 4  # 2 steps x (cond, uncond)
        for call in spy.calls:
            timestep = call["timestep"]
            assert timestep.shape == (1, 3)
            assert timestep[0, 0] == 0 and (timestep[0, 1:] > 0).all()
            assert torch.equal(call["hidden_states"][:, :, :1], expected_condition_latents(i2v, [gradient_image()]))

    def test_image_matters_and_is_deterministic(self, i2v):
        image = gradient_image()
        first = i2v(image, **call_kwargs()).frames
        np.testing.assert_array_equal(first, i2v(image, **call_kwargs()).frames)
        other = i2v(255 - image, **call_kwargs()).frames
        assert not np.allclose(first, other)

    def test_batch_shares_the_image(self, i2v):
        latents = i2v(
            gradient_image(), **call_kwargs(prompt=["a", "b"], num_videos_per_prompt=2, output_type="latent")
        ).frames
        assert latents.shape[0] == 4
        for index in range(1, 4):
            torch.testing.assert_close(latents[index, :, :1], latents[0, :, :1], atol=0, rtol=0)

    def test_resize_modes(self, i2v, caplog):
        wide = gradient_image(20, 60)
        for mode in ("crop", "fill"):
            assert i2v(wide, **call_kwargs(resize_mode=mode)).frames.shape == (1, 5, 32, 32, 3)
        with caplog.at_level(logging.WARNING):
            i2v(wide, **call_kwargs())
        assert "changing the aspect ratio" in caplog.text

    def test_from_text_to_video_components(self, tokenizer):
        t2v = SpacetimeVideoPipeline(**make_components(tokenizer), **DEFAULT_SIZE)
        i2v = SpacetimeImageToVideoPipeline.from_pipe(t2v)
        assert (
            i2v.transformer is t2v.transformer and i2v.config.default_num_frames == DEFAULT_SIZE["default_num_frames"]
        )
        i2v.set_progress_bar_config(disable=True)
        assert i2v(gradient_image(), **call_kwargs()).frames.shape == (1, 5, 32, 32, 3)


class TestContinuation:
    def test_output_length_and_clean_prefix(self, i2v):
        video = clip(num_frames=9)
        frames = i2v(video=video, **call_kwargs(num_frames=13, num_conditioning_frames=5)).frames
        assert frames.shape == (1, 13, 32, 32, 3)
        latents = i2v(
            video=video, **call_kwargs(num_frames=13, num_conditioning_frames=5, output_type="latent")
        ).frames
        expected = expected_condition_latents(i2v, list(video[-5:]))  # the clip's LAST 5 frames
        assert expected.shape[2] == 2
        torch.testing.assert_close(latents[:, :, :2], expected, atol=0, rtol=0)

    def test_default_conditioning_is_two_latent_frames(self, i2v):
        spy = TransformerSpy(i2v.transformer)
        i2v(video=clip(), **call_kwargs(num_frames=9, num_inference_steps=1, guidance_scale=1.0))
        assert spy.calls[0]["timestep"][0].tolist()[:2] == [0, 0] and spy.calls[0]["timestep"][0, 2] > 0

    @pytest.mark.parametrize("kind", ["path", "pil-list", "tensor"])
    def test_video_input_kinds(self, i2v, tmp_path, kind):
        video = clip(num_frames=9)
        if kind == "path":
            source = export_to_video(list(video), str(tmp_path / "clip.mp4"), fps=8)
        elif kind == "pil-list":
            source = [PIL.Image.fromarray((f * 255).round().astype(np.uint8)) for f in video]
        else:
            source = torch.from_numpy(video).permute(0, 3, 1, 2)  # (F, 3, H, W)
        frames = i2v(video=source, **call_kwargs(num_frames=9)).frames
        assert frames.shape == (1, 9, 32, 32, 3)


class TestBadInputs:
    CASES = {
        "neither": ({}, r"Pass exactly one of `image` \(image-to-video\) and `video`"),
        "both": ({"image": gradient_image(), "video": clip()}, r"Pass exactly one of `image`"),
        "image wrong type": ({"image": "frame.png"}, r"`image` must be one PIL image, numpy array or tensor"),
        "image list": ({"image": [gradient_image()]}, r"`image` must be one PIL image"),
        "image gray 2D": ({"image": np.zeros((32, 32), np.uint8)}, r"`image` frames as arrays must be \(H, W, 3\)"),
        "image RGBA array": ({"image": np.zeros((32, 32, 4), np.uint8)}, r"must be \(H, W, 3\) RGB"),
        "image float out of range": (
            {"image": np.full((32, 32, 3), 2.0)},
            r"`image` float values must lie in \[0, 1\]",
        ),
        "image tensor wrong shape": (
            {"image": torch.zeros(32, 32, 3)},
            r"`image` frames as tensors must be \(3, H, W\)",
        ),
        "image batch": ({"image": np.zeros((2, 32, 32, 3), np.uint8)}, r"`image` must be a single image"),
        "image empty": ({"image": np.zeros((0, 32, 3), np.uint8)}, r"`image` has an empty frame"),
        "image with more conditioning": (
            {"image": gradient_image(), "num_conditioning_frames": 5},
            r"`num_conditioning_frames` is 1 for an `image`",
        ),
        "clip too short": (
            {"video": clip(num_frames=3), "num_frames": 13, "num_conditioning_frames": 5},
            r"`video` has 3 frames, fewer than `num_conditioning_frames` \(5\)",
        ),
        "conditioning not 1+k*r": (
            {"video": clip(), "num_frames": 13, "num_conditioning_frames": 4},
            r"`num_conditioning_frames` must be 1 \+ k \* 4",
        ),
        "nothing left to generate": (
            {"video": clip(), "num_frames": 5, "num_conditioning_frames": 5},
            r"`num_frames` \(5\) leaves nothing to generate after 5 conditioning frame\(s\): use at least 9",
        ),
        "image and one frame": ({"image": gradient_image(), "num_frames": 1}, r"leaves nothing to generate"),
        "bad resize mode": ({"image": gradient_image(), "resize_mode": "stretch"}, r"`resize_mode` must be one of"),
        "missing video file": ({"video": "/nonexistent/clip.mp4", "num_frames": 9}, r"`video` file not found"),
        "unreadable video file": ({"video": __file__, "num_frames": 9}, r"could not be read as a video"),
        "video wrong ndim": (
            {"video": np.zeros((32, 32, 3), np.uint8), "num_frames": 9},
            r"`video` as an array must be \(F, H, W, 3\)",
        ),
        "video wrong type": ({"video": 3, "num_frames": 9}, r"`video` must be a file path, a list of frames"),
        "bad height still checked": (
            {"image": gradient_image(), "height": 30},
            r"`height` \(30\) must be divisible by 8",
        ),
    }

    @pytest.mark.parametrize("name", list(CASES))
    def test_bad_input_raises(self, i2v, name):
        assert_rejects(i2v, *self.CASES[name])


def test_lora_methods_are_there(i2v):
    from peft import LoraConfig

    base = i2v(gradient_image(), **call_kwargs()).frames
    i2v.transformer.add_adapter(LoraConfig(r=2, target_modules=["to_q"], init_lora_weights=False), adapter_name="x")
    assert i2v.get_active_adapters() == ["x"]
    i2v.disable_lora()
    np.testing.assert_array_equal(i2v(gradient_image(), **call_kwargs()).frames, base)


def test_save_and_generic_load(i2v, tmp_path):
    from diffusers import DiffusionPipeline

    expected = i2v(gradient_image(), **call_kwargs()).frames
    i2v.save_pretrained(tmp_path)
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded) is SpacetimeImageToVideoPipeline
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(loaded(gradient_image(), **call_kwargs()).frames, expected)
