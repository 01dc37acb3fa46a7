"""`SpacetimeVideoPipeline(batched_guidance=True)`: guidance in one call per step on `[uncond, cond]`, the same videos
as the two-call default, prompts of different lengths padded and masked, and diffusers' FasterCache running on it."""

import numpy as np
import pytest
import torch
from diffusers import FasterCacheConfig

from .conftest import TEXT_DIM, call_kwargs
from .test_pipeline_spacetime import TransformerSpy


def test_one_call_per_step_on_uncond_then_cond(pipe):
    spy = TransformerSpy(pipe.transformer)
    pipe(**call_kwargs(num_inference_steps=2, batched_guidance=True))
    assert spy.contexts == ["cond_uncond", "cond_uncond"]
    assert len(spy.calls) == 2 and all(call["hidden_states"].shape[0] == 2 for call in spy.calls)
    assert all(call["encoder_attention_mask"].shape[0] == 2 for call in spy.calls)


@pytest.mark.parametrize("overrides", [{}, {"negative_prompt": "blurry, still", "num_videos_per_prompt": 2}])
def test_same_videos_as_two_calls(pipe, overrides):
    two_calls = pipe(**call_kwargs(**overrides)).frames
    one_call = pipe(**call_kwargs(**overrides, batched_guidance=True)).frames
    np.testing.assert_allclose(one_call, two_calls, atol=1e-5)


def test_text_of_different_lengths_is_padded_and_masked(pipe):
    generator = torch.Generator().manual_seed(3)
    prompt_embeds = torch.randn(1, 7, TEXT_DIM, generator=generator)
    negative_prompt_embeds = torch.randn(1, 3, TEXT_DIM, generator=generator)
    kwargs = call_kwargs(prompt=None, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds)
    two_calls = pipe(**kwargs, output_type="latent").frames
    kwargs = call_kwargs(prompt=None, prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds)
    one_call = pipe(**kwargs, output_type="latent", batched_guidance=True).frames
    torch.testing.assert_close(one_call, two_calls, rtol=1e-5, atol=1e-5)


def test_without_guidance_the_option_changes_nothing(pipe):
    spy = TransformerSpy(pipe.transformer)
    pipe(**call_kwargs(guidance_scale=1.0, batched_guidance=True))
    assert spy.contexts == ["cond", "cond"]


def test_faster_cache_runs_with_batched_guidance(pipe):
    base = pipe(**call_kwargs(num_inference_steps=4, batched_guidance=True)).frames
    pipe.transformer.enable_cache(
        FasterCacheConfig(
            spatial_attention_block_skip_range=2,
            spatial_attention_timestep_skip_range=(-1, 1001),
            unconditional_batch_skip_range=2,
            unconditional_batch_timestep_skip_range=(-1, 1001),
            current_timestep_callback=lambda: pipe.current_timestep,
            attention_weight_callback=lambda _: 0.5,
        )
    )
    try:
        cached = pipe(**call_kwargs(num_inference_steps=4, batched_guidance=True)).frames
    finally:
        pipe.transformer.disable_cache()
    assert cached.shape == base.shape and np.isfinite(cached).all()
    assert not np.allclose(cached, base, atol=1e-6)  # the cache did skip work


def test_bad_value_raises(pipe):
    with pytest.raises(ValueError, match="batched_guidance"):
        pipe(**call_kwargs(batched_guidance="yes"))
