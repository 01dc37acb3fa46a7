"""SpacetimeVideoPipeline end to end on tiny real components: shapes, outputs, schedulers, guidance, callbacks,
determinism, normalisation, bad inputs, save/load in a fresh process, and mp4 export."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FlowMatchHeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from diffusers.utils import export_to_video
from diffusers.utils.torch_utils import randn_tensor

from diffusers_spacetime import SpacetimeImageToVideoPipeline, SpacetimeVideoPipeline, SpacetimeVideoPipelineOutput
from diffusers_spacetime.pipelines.pipeline_spacetime import GenerationInputs, TextConditioning

from .conftest import LATENT_CHANNELS, assert_rejects, call_kwargs, make_components, make_pipeline

SPATIAL, TEMPORAL = 4, 4  # the tiny VAE's compression


def latent_shape(batch, height=32, width=32, num_frames=5):
    return (batch, LATENT_CHANNELS, (num_frames - 1) // TEMPORAL + 1, height // SPATIAL, width // SPATIAL)


class TestOutputs:
    @pytest.mark.parametrize("height, width, num_frames", [(32, 32, 5), (16, 48, 1), (48, 32, 9)])
    def test_sizes_and_frame_counts(self, pipe, height, width, num_frames):
        frames = pipe(**call_kwargs(height=height, width=width, num_frames=num_frames)).frames
        assert frames.shape == (1, num_frames, height, width, 3)
        assert frames.dtype == np.float32 and frames.min() >= 0.0 and frames.max() <= 1.0

    def test_output_types(self, pipe):
        np_frames = pipe(**call_kwargs(output_type="np")).frames
        pt_frames = pipe(**call_kwargs(output_type="pt")).frames
        pil_frames = pipe(**call_kwargs(output_type="pil")).frames
        latents = pipe(**call_kwargs(output_type="latent")).frames

        assert isinstance(pt_frames, torch.Tensor) and pt_frames.shape == (1, 5, 3, 32, 32)
        np.testing.assert_allclose(pt_frames.permute(0, 1, 3, 4, 2).numpy(), np_frames, atol=1e-6)
        assert len(pil_frames) == 1 and len(pil_frames[0]) == 5
        assert all(isinstance(im, PIL.Image.Image) and im.size == (32, 32) for im in pil_frames[0])
        assert latents.shape == latent_shape(1)

    def test_return_tuple(self, pipe):
        out = pipe(**call_kwargs(return_dict=False))
        assert isinstance(out, tuple) and out[0].shape == (1, 5, 32, 32, 3)
        assert isinstance(pipe(**call_kwargs()), SpacetimeVideoPipelineOutput)

    def test_defaults_come_from_config(self, tokenizer):
        pipe = make_pipeline(tokenizer, default_height=16, default_width=24, default_num_frames=9)
        assert pipe(**call_kwargs()).frames.shape == (1, 9, 16, 24, 3)

    def test_missing_default_raises(self, tokenizer):
        pipe = SpacetimeVideoPipeline(**make_components(tokenizer))
        pipe.set_progress_bar_config(disable=True)
        with pytest.raises(ValueError, match="`height` was not given"):
            pipe(**call_kwargs())
        assert pipe(**call_kwargs(height=16, width=16, num_frames=1)).frames.shape == (1, 1, 16, 16, 3)

    def test_num_videos_per_prompt(self, pipe):
        frames = pipe(**call_kwargs(prompt=["a red circle", "a blue square"], num_videos_per_prompt=2)).frames
        assert frames.shape == (4, 5, 32, 32, 3)
        # Different noise per video.
        assert not np.allclose(frames[0], frames[1])

    def test_generator_list_matches_single_runs(self, pipe):
        seeds = [3, 7]
        batched = pipe(
            **call_kwargs(num_videos_per_prompt=2, generator=[torch.Generator().manual_seed(s) for s in seeds])
        ).frames
        for index, seed in enumerate(seeds):
            single = pipe(**call_kwargs(seed=seed)).frames[0]
            np.testing.assert_allclose(batched[index], single, atol=1e-5)


class TestSchedulers:
    SCHEDULERS = {
        "flow-euler": lambda config: FlowMatchEulerDiscreteScheduler.from_config(config),
        "flow-heun": lambda config: FlowMatchHeunDiscreteScheduler.from_config(config),
        "unipc-flow": lambda config: UniPCMultistepScheduler.from_config(
            config, prediction_type="flow_prediction", use_flow_sigmas=True
        ),
        "dpm-flow": lambda config: DPMSolverMultistepScheduler.from_config(
            config, prediction_type="flow_prediction", use_flow_sigmas=True
        ),
        "ddim": lambda config: DDIMScheduler.from_config(config),
        "euler-discrete": lambda config: EulerDiscreteScheduler.from_config(config),
    }

    @pytest.mark.parametrize("name", list(SCHEDULERS))
    def test_scheduler_runs(self, pipe, name):
        pipe.scheduler = self.SCHEDULERS[name](pipe.scheduler.config)
        first = pipe(**call_kwargs(num_inference_steps=3)).frames
        second = pipe(**call_kwargs(num_inference_steps=3)).frames
        assert first.shape == (1, 5, 32, 32, 3) and np.isfinite(first).all()
        np.testing.assert_array_equal(first, second)

    def test_scheduler_choice_matters(self, pipe):
        euler = pipe(**call_kwargs(num_inference_steps=3)).frames
        pipe.scheduler = self.SCHEDULERS["unipc-flow"](pipe.scheduler.config)
        unipc = pipe(**call_kwargs(num_inference_steps=3)).frames
        assert not np.allclose(euler, unipc)


class TransformerSpy:
    """Records each transformer call's cache context and keyword arguments."""

    def __init__(self, transformer):
        self.contexts, self.calls = [], []
        original_context = transformer.cache_context

        def cache_context(name, **kwargs):
            self.contexts.append(name)
            return original_context(name, **kwargs)

        transformer.cache_context = cache_context
        transformer.register_forward_pre_hook(lambda module, args, kwargs: self.calls.append(kwargs), with_kwargs=True)


class TestGuidance:
    def test_guidance_on_runs_cond_and_uncond_in_cache_contexts(self, pipe):
        spy = TransformerSpy(pipe.transformer)
        pipe(**call_kwargs(guidance_scale=4.0, num_inference_steps=2))
        assert spy.contexts == ["cond", "uncond", "cond", "uncond"]
        assert len(spy.calls) == 4 and all(call["hidden_states"].shape[0] == 1 for call in spy.calls)

    @pytest.mark.parametrize("guidance_scale", [0.0, 1.0])
    def test_guidance_off_runs_cond_only(self, pipe, guidance_scale):
        spy = TransformerSpy(pipe.transformer)
        pipe(**call_kwargs(guidance_scale=guidance_scale, num_inference_steps=2))
        assert spy.contexts == ["cond", "cond"]

    def test_guidance_and_negative_prompt_change_the_video(self, pipe):
        off = pipe(**call_kwargs(guidance_scale=1.0)).frames
        on = pipe(**call_kwargs(guidance_scale=6.0)).frames
        negative = pipe(**call_kwargs(guidance_scale=6.0, negative_prompt="a green triangle")).frames
        assert not np.allclose(off, on) and not np.allclose(on, negative)
        # Without guidance the negative prompt is not used.
        np.testing.assert_array_equal(off, pipe(**call_kwargs(guidance_scale=1.0, negative_prompt="xyz")).frames)

    def test_attention_mask_reaches_transformer(self, pipe, tokenizer):
        spy = TransformerSpy(pipe.transformer)
        pipe(**call_kwargs(max_sequence_length=16, num_inference_steps=1))
        expected = tokenizer(
            ["a red circle moves right"], padding="max_length", max_length=16, return_tensors="pt"
        ).attention_mask
        cond, uncond = spy.calls
        torch.testing.assert_close(cond["encoder_attention_mask"], expected)
        assert cond["encoder_hidden_states"].shape == (1, 16, 32)
        assert uncond["encoder_attention_mask"].sum() == 2  # "" -> [CLS] [SEP]

    def test_padding_length_does_not_change_the_video(self, pipe):
        short = pipe(**call_kwargs(max_sequence_length=12)).frames
        long = pipe(**call_kwargs(max_sequence_length=40)).frames
        np.testing.assert_allclose(short, long, atol=1e-5)

    def test_prompt_embeds_equal_prompt(self, pipe):
        from_prompt = pipe(**call_kwargs(negative_prompt="blurry")).frames
        # (prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask)
        text = pipe.encode_prompt("a red circle moves right", "blurry")
        from_embeds = pipe(**call_kwargs(prompt=None, **TextConditioning(*text)._asdict())).frames
        np.testing.assert_array_equal(from_prompt, from_embeds)


class TestCaching:
    def test_diffusers_first_block_cache_runs_through_cache_contexts(self, pipe):
        from diffusers import FirstBlockCacheConfig

        base = pipe(**call_kwargs(num_inference_steps=4)).frames
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.05))
        cached = pipe(**call_kwargs(num_inference_steps=4)).frames
        assert cached.shape == base.shape and np.isfinite(cached).all()
        pipe.transformer.disable_cache()
        np.testing.assert_array_equal(pipe(**call_kwargs(num_inference_steps=4)).frames, base)


class TestDeterminismAndLatents:
    def test_same_generator_same_frames(self, pipe):
        first = pipe(**call_kwargs(seed=11)).frames
        second = pipe(**call_kwargs(seed=11)).frames
        other = pipe(**call_kwargs(seed=12)).frames
        np.testing.assert_array_equal(first, second)
        assert not np.allclose(first, other)

    def test_user_latents_equal_generator_noise(self, pipe):
        noise = randn_tensor(latent_shape(1), generator=torch.Generator().manual_seed(5), dtype=torch.float32)
        from_generator = pipe(**call_kwargs(seed=5)).frames
        from_latents = pipe(**call_kwargs(generator=None, latents=noise)).frames
        np.testing.assert_array_equal(from_generator, from_latents)

    def test_latents_are_denormalised_before_decoding(self, pipe):
        mean = [0.5, -1.0, 0.25, 2.0]
        std = [2.0, 0.5, 1.5, 3.0]
        pipe.vae.register_to_config(latents_mean=mean, latents_std=std)
        latents = pipe(**call_kwargs(output_type="latent")).frames
        frames = pipe(**call_kwargs(output_type="pt")).frames
        view = (1, LATENT_CHANNELS, 1, 1, 1)
        raw = latents * torch.tensor(std).view(view) + torch.tensor(mean).view(view)
        with torch.no_grad():
            decoded = pipe.vae.decode(raw).sample  # (B, 3, F, H, W) in [-1, 1]
        expected = (decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 1, 3, 4)
        torch.testing.assert_close(frames, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(pipe.normalize_latents(raw), latents, atol=1e-5, rtol=1e-5)


class TestCallbacks:
    def test_callback_sees_every_step_and_can_edit_latents(self, pipe):
        seen = []

        def zero_at_last_step(pipeline, step, timestep, callback_kwargs):
            seen.append((step, sorted(callback_kwargs)))
            if step == pipeline.num_timesteps - 1:
                return {"latents": torch.zeros_like(callback_kwargs["latents"])}
            return {}

        latents = pipe(
            **call_kwargs(num_inference_steps=3, output_type="latent", callback_on_step_end=zero_at_last_step)
        ).frames
        assert seen == [(0, ["latents"]), (1, ["latents"]), (2, ["latents"])]
        assert torch.count_nonzero(latents) == 0

    def test_callback_can_replace_prompt_embeds(self, pipe):
        base = pipe(**call_kwargs(num_inference_steps=3)).frames

        def scramble(pipeline, step, timestep, callback_kwargs):
            assert callback_kwargs["negative_prompt_embeds"] is not None
            return {"prompt_embeds": torch.zeros_like(callback_kwargs["prompt_embeds"])}

        edited = pipe(
            **call_kwargs(
                num_inference_steps=3,
                callback_on_step_end=scramble,
                callback_on_step_end_tensor_inputs=["latents", "prompt_embeds", "negative_prompt_embeds"],
            )
        ).frames
        assert not np.allclose(base, edited)

    def test_interrupt_skips_remaining_steps(self, pipe):
        spy = TransformerSpy(pipe.transformer)

        def stop(pipeline, step, timestep, callback_kwargs):
            pipeline._interrupt = True
            return {}

        pipe(**call_kwargs(num_inference_steps=4, guidance_scale=1.0, callback_on_step_end=stop))
        assert len(spy.calls) == 1


class TestBadInputs:
    CASES = {
        "height not divisible": ({"height": 36}, r"`height` \(36\) must be divisible by 8"),
        "width not divisible": ({"width": 20}, r"`width` \(20\) must be divisible by 8"),
        "height float": ({"height": 32.0}, r"`height` must be a positive int"),
        "frames not 1+k*r": ({"num_frames": 6}, r"`num_frames` must be 1 \+ k \* 4"),
        "frames zero": ({"num_frames": 0}, r"`num_frames` must be 1 \+ k \* 4"),
        "zero steps": ({"num_inference_steps": 0}, r"`num_inference_steps` must be a positive int"),
        "negative steps": ({"num_inference_steps": -3}, r"`num_inference_steps` must be a positive int"),
        "negative guidance": ({"guidance_scale": -1.0}, r"`guidance_scale` must be a number >= 0"),
        "bad output type": ({"output_type": "mp4"}, r"`output_type` must be one of"),
        "bad callback input": (
            {"callback_on_step_end_tensor_inputs": ["latents", "noise_pred"]},
            r"`callback_on_step_end_tensor_inputs` may only name",
        ),
        "prompt and embeds": ({"prompt_embeds": torch.zeros(1, 4, 32)}, r"either `prompt` or `prompt_embeds`"),
        "neither prompt nor embeds": ({"prompt": None}, r"Pass `prompt` or `prompt_embeds`"),
        "prompt wrong type": ({"prompt": 3}, r"`prompt` must be a str or a list of str"),
        "negative list length": (
            {"prompt": ["a", "b"], "negative_prompt": ["x", "y", "z"]},
            r"`negative_prompt` has 3 entries but `prompt` has 2",
        ),
        "generator list length": (
            {"generator": [torch.Generator(), torch.Generator()]},
            r"`generator` is a list of 2 generators but the batch has 1",
        ),
        "latents wrong shape": (
            {"latents": torch.zeros(1, 4, 3, 8, 8)},
            r"`latents` must have shape \(1, 4, 2, 8, 8\) for these settings, got \(1, 4, 3, 8, 8\)",
        ),
        "latents NaN": (
            {"latents": torch.full((1, 4, 2, 8, 8), float("nan"))},
            r"`latents` contains NaN",
        ),
        "num_videos zero": ({"num_videos_per_prompt": 0}, r"`num_videos_per_prompt` must be a positive int"),
        "embeds wrong dim": (
            {"prompt": None, "prompt_embeds": torch.zeros(1, 4, 7)},
            r"`prompt_embeds` must be a tensor \(batch, tokens, 32\)",
        ),
        "embeds NaN": (
            {"prompt": None, "prompt_embeds": torch.full((1, 4, 32), float("nan"))},
            r"`prompt_embeds` contains NaN",
        ),
        "negative embeds batch": (
            {"prompt": None, "prompt_embeds": torch.zeros(1, 4, 32), "negative_prompt_embeds": torch.zeros(2, 4, 32)},
            r"`negative_prompt_embeds` has batch 2 but `prompt_embeds` has 1",
        ),
        "mask shape": (
            {"prompt": None, "prompt_embeds": torch.zeros(1, 4, 32), "prompt_attention_mask": torch.ones(1, 5)},
            r"`prompt_attention_mask` must have shape \(1, 4\)",
        ),
        "max_sequence_length too long": (
            {"max_sequence_length": 100_000},
            r"`max_sequence_length` \(100000\) exceeds",
        ),
    }

    @pytest.mark.parametrize("name", list(CASES))
    def test_bad_input_raises(self, pipe, name):
        assert_rejects(pipe, *self.CASES[name])

    def test_text_encoder_width_mismatch(self, tokenizer):
        from transformers import BertConfig, BertModel

        components = make_components(tokenizer)
        components["text_encoder"] = BertModel(
            BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=1, num_attention_heads=2)
        )
        with pytest.raises(ValueError, match=r"48-d hidden states but `transformer.config.text_embed_dim` is 32"):
            SpacetimeVideoPipeline(**components)

    def test_generation_inputs_mirror_the_call_signature(self):
        # `__call__` fills `GenerationInputs` positionally: same names, order and defaults.
        import dataclasses
        import inspect

        fields = [(field.name, field.default) for field in dataclasses.fields(GenerationInputs)]
        parameters = list(inspect.signature(SpacetimeVideoPipeline.__call__).parameters.values())[1:]
        assert fields == [(parameter.name, parameter.default) for parameter in parameters]
        i2v = inspect.signature(SpacetimeImageToVideoPipeline.__call__).parameters
        assert all(i2v[name].default == default for name, default in fields if name in i2v)

    def test_generation_inputs_name_what_the_checks_and_encoder_take(self):
        import inspect

        checks = list(inspect.signature(SpacetimeVideoPipeline.check_inputs).parameters)[1:]
        assert list(GenerationInputs.CHECKED_FIELDS) == checks
        encoder = inspect.signature(SpacetimeVideoPipeline.encode_prompt).parameters
        assert set(GenerationInputs.PROMPT_FIELDS) <= set(encoder)

    def test_text_encoder_swapped_after_init(self, pipe, tokenizer):
        from transformers import BertConfig, BertModel

        pipe.text_encoder = BertModel(
            BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=48, num_hidden_layers=1, num_attention_heads=2)
        )
        with pytest.raises(ValueError, match="text_embed_dim"):
            pipe(**call_kwargs())


class TestExport:
    def test_export_to_video_reads_back(self, pipe, tmp_path):
        import imageio

        frames = pipe(**call_kwargs(num_frames=9)).frames[0]
        path = export_to_video(frames, str(tmp_path / "video.mp4"), fps=8)
        reader = imageio.get_reader(path)
        read = [frame for frame in reader]  # noqa: C416  (list(reader) asks len(): inf for mp4)
        reader.close()
        assert len(read) == 9 and read[0].shape == (32, 32, 3)


SUBPROCESS_SCRIPT = textwrap.dedent(
    """
    import sys, json
    import numpy as np
    import torch
    torch.set_num_threads(int(sys.argv[3]))
    import diffusers_spacetime  # the only import the user needs
    from diffusers_spacetime import SpacetimeVideoPipeline
    from diffusers import AutoModel, DiffusionPipeline, UniPCMultistepScheduler

    path, out = sys.argv[1], sys.argv[2]
    pipe = SpacetimeVideoPipeline.from_pretrained(path, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red circle moves right", num_inference_steps=2, guidance_scale=3.0,
                  generator=torch.Generator().manual_seed(0)).frames
    np.save(out, frames)

    generic = DiffusionPipeline.from_pretrained(path)
    transformer = AutoModel.from_pretrained(path, subfolder="transformer")
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True)
    overridden = SpacetimeVideoPipeline.from_pretrained(path, scheduler=scheduler)
    half = SpacetimeVideoPipeline.from_pretrained(path, dtype=torch.bfloat16)  # diffusers 0.42's new spelling
    print(json.dumps({
        "generic": type(generic).__name__,
        "transformer": type(transformer).__name__,
        "scheduler": type(overridden.scheduler).__name__,
        "dtype": str(half.transformer.dtype),
        "config": [pipe.config.default_height, pipe.config.default_width, pipe.config.default_num_frames],
    }))
    """
)


def test_save_load_round_trip_in_fresh_process(pipe, tmp_path):
    expected = pipe(**call_kwargs()).frames
    pipe.save_pretrained(tmp_path / "pipe")

    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["_class_name"] == "SpacetimeVideoPipeline"
    assert index["transformer"] == ["diffusers_spacetime", "SpacetimeDiTModel"]
    assert index["vae"] == ["diffusers_spacetime", "AutoencoderKLSpacetime"]
    assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
    assert (index["default_height"], index["default_width"], index["default_num_frames"]) == (32, 32, 5)

    script = tmp_path / "load.py"
    script.write_text(SUBPROCESS_SCRIPT)
    out = tmp_path / "frames.npy"
    result = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "pipe"), str(out), str(torch.get_num_threads())],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {
        "generic": "SpacetimeVideoPipeline",
        "transformer": "SpacetimeDiTModel",
        "scheduler": "UniPCMultistepScheduler",
        "dtype": "torch.bfloat16",
        "config": [32, 32, 5],
    }
    np.testing.assert_array_equal(np.load(out), expected)


def test_flash_attention_backend_runs_the_pipeline(pipe):
    # Flash-style backends reject attention masks; one prompt per guidance pass lets the model cut the shared
    # padding instead, so the whole pipeline runs on them and matches the native backend.
    native = pipe(**call_kwargs()).frames
    pipe.transformer.set_attention_backend("_native_flash")
    try:
        flash = pipe(**call_kwargs()).frames
    finally:  # diffusers 0.42 also makes it the process-wide active backend
        pipe.transformer.set_attention_backend("native")
        pipe.transformer.reset_attention_backend()
    np.testing.assert_allclose(flash, native, atol=1e-5)
