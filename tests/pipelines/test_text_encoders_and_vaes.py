"""Other libraries' text encoders (T5, UMT5, CLIP, BERT) and video VAEs (Wan, LTX-Video, CogVideoX) in the pipeline:
loading the encoder only, generation, latent normalisation as each VAE's own pipeline does it, save/load."""

import json

import pytest
import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    AutoencoderKLLTXVideo,
    AutoencoderKLWan,
    FlowMatchEulerDiscreteScheduler,
)
from transformers import (
    AutoTokenizer,
    BertModel,
    CLIPTextModel,
    T5EncoderModel,
    T5ForConditionalGeneration,
    UMT5EncoderModel,
)

from diffusers_spacetime import AutoencoderKLSpacetime, SpacetimeDiTModel, SpacetimeVideoPipeline
from diffusers_spacetime.pipelines.pipeline_spacetime import load_text_encoder
from diffusers_spacetime.pipelines.video_vae import vae_latent_space
from tests.tiny_models import (
    CLIP_POSITIONS,
    LATENT_CHANNELS,
    TEXT_DIM,
    TEXT_ENCODER_KINDS,
    VAE_KINDS,
    make_vae,
    save_text_encoder,
)

ENCODER_CLASSES = {"t5": T5EncoderModel, "umt5": UMT5EncoderModel, "clip": CLIPTextModel, "bert": BertModel}
VAE_CLASSES = {
    "spacetime": AutoencoderKLSpacetime,
    "wan": AutoencoderKLWan,
    "ltx": AutoencoderKLLTXVideo,
    "cogvideox": AutoencoderKLCogVideoX,
}


@pytest.fixture(scope="module")
def text_encoder_dirs(tmp_path_factory):
    return {kind: save_text_encoder(kind, tmp_path_factory.mktemp(kind)) for kind in TEXT_ENCODER_KINDS}


def make_pipeline(tokenizer, text_encoder, vae) -> SpacetimeVideoPipeline:
    torch.manual_seed(0)
    transformer = SpacetimeDiTModel(
        in_channels=LATENT_CHANNELS, patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16,
        num_layers=1, ffn_dim=32, text_embed_dim=TEXT_DIM,
    ).eval()  # fmt: skip
    pipe = SpacetimeVideoPipeline(
        tokenizer, text_encoder, transformer, vae, FlowMatchEulerDiscreteScheduler(),
        default_height=32, default_width=32, default_num_frames=9,
    )  # fmt: skip
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, **kwargs):
    return pipe(
        "a red circle moves right", num_inference_steps=2, guidance_scale=3.0,
        generator=torch.Generator().manual_seed(0), **kwargs,
    ).frames  # fmt: skip


@pytest.mark.parametrize("kind", TEXT_ENCODER_KINDS)
def test_load_text_encoder_loads_the_encoder_only(kind, text_encoder_dirs):
    encoder = load_text_encoder(str(text_encoder_dirs[kind]))
    assert type(encoder) is ENCODER_CLASSES[kind]
    tokens = AutoTokenizer.from_pretrained(text_encoder_dirs[kind])(["a red circle"], return_tensors="pt")
    states = encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
    assert states.shape == (1, tokens.input_ids.shape[1], TEXT_DIM)
    if kind == "t5":  # the saved encoder-decoder's encoder, weights included
        full = T5ForConditionalGeneration.from_pretrained(text_encoder_dirs[kind]).eval()
        expected = full.encoder(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        torch.testing.assert_close(states, expected)


@pytest.mark.parametrize("kind", TEXT_ENCODER_KINDS)
def test_pipeline_generates_with_each_text_encoder_and_round_trips(kind, text_encoder_dirs, tmp_path):
    folder = text_encoder_dirs[kind]
    pipe = make_pipeline(AutoTokenizer.from_pretrained(folder), load_text_encoder(str(folder)), make_vae("spacetime"))
    frames = generate(pipe)
    assert frames.shape == (1, 9, 32, 32, 3) and frames.min() >= 0 and frames.max() <= 1
    if kind == "clip":  # the tokenizer allows 512 tokens; CLIP's positions stop before the default budget
        embeds, mask, _, _ = pipe.encode_prompt("a red circle", do_classifier_free_guidance=False)
        assert embeds.shape[1] == mask.shape[1] == CLIP_POSITIONS

    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", ENCODER_CLASSES[kind].__name__]
    loaded = SpacetimeVideoPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.text_encoder) is ENCODER_CLASSES[kind]
    assert abs(generate(loaded) - frames).max() < 1e-5


@pytest.mark.parametrize("kind", VAE_KINDS)
def test_pipeline_generates_with_each_video_vae_and_round_trips(kind, text_encoder_dirs, tmp_path):
    folder = text_encoder_dirs["bert"]
    pipe = make_pipeline(AutoTokenizer.from_pretrained(folder), load_text_encoder(str(folder)), make_vae(kind))
    frames = generate(pipe)
    assert frames.shape == (1, 9, 32, 32, 3) and frames.min() >= 0 and frames.max() <= 1
    latents = generate(pipe, output_type="latent")
    spatial = 4 if kind == "spacetime" else 8
    assert latents.shape == (1, LATENT_CHANNELS, 3, 32 // spatial, 32 // spatial)

    pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    library = "diffusers_spacetime" if kind == "spacetime" else "diffusers"
    assert index["vae"] == [library, VAE_CLASSES[kind].__name__]
    loaded = SpacetimeVideoPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.vae) is VAE_CLASSES[kind]
    assert abs(generate(loaded) - frames).max() < 1e-5


@pytest.mark.parametrize("kind", VAE_KINDS)
def test_latent_normalisation_is_each_vaes_own_pipeline_convention(kind, pipe):
    vae = make_vae(kind)
    pipe.vae = vae  # the fixture's other components are irrelevant here
    z = torch.randn(2, LATENT_CHANNELS, 3, 4, 4)
    mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, -1, 1, 1, 1)
    std = torch.tensor([1.5, 0.5, 2.0, 1.0]).view(1, -1, 1, 1, 1)
    expected = {
        "spacetime": lambda: (z - mean) / std,
        "wan": lambda: (z - mean) / std,  # WanPipeline: latents / (1 / std) + mean to decode
        "ltx": lambda: (z - mean) * 0.5 / std,  # LTXPipeline._normalize_latents with scaling_factor 0.5
        "cogvideox": lambda: z * vae.config.scaling_factor,  # CogVideoX: latents * scaling_factor
    }[kind]()
    torch.testing.assert_close(pipe.normalize_latents(z), expected)
    torch.testing.assert_close(pipe.denormalize_latents(pipe.normalize_latents(z)), z)
    space = vae_latent_space(vae)
    assert (space.latent_channels, space.temporal_compression_ratio) == (LATENT_CHANNELS, 4)
    assert space.spatial_compression_ratio == (4 if kind == "spacetime" else 8)


def test_an_unsupported_vae_is_a_type_error_naming_the_supported_ones():
    from diffusers import AutoencoderKL

    with pytest.raises(TypeError, match=r"`vae` must be one of AutoencoderKLSpacetime, AutoencoderKLWan"):
        vae_latent_space(AutoencoderKL(block_out_channels=(8,), norm_num_groups=2, latent_channels=4))


@pytest.mark.parametrize("kind", ["wan", "ltx", "cogvideox"])
def test_image_to_video_and_the_model_card_with_diffusers_vaes(kind, text_encoder_dirs):
    import numpy as np

    from diffusers_spacetime import SpacetimeImageToVideoPipeline
    from diffusers_spacetime.model_card import pipeline_card

    folder = text_encoder_dirs["bert"]
    pipe = make_pipeline(AutoTokenizer.from_pretrained(folder), load_text_encoder(str(folder)), make_vae(kind))
    i2v = SpacetimeImageToVideoPipeline.from_pipe(pipe)
    image = np.full((32, 32, 3), 128, np.uint8)
    frames = i2v(image=image, prompt="a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert frames.frames.shape == (1, 9, 32, 32, 3)
    card = str(pipeline_card(pipe, "user/tiny"))
    assert VAE_CLASSES[kind].__name__ in card and "1 + k x 4" in card
