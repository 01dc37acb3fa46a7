"""Push and pull through the real Hub client (against tests/hub/fake_hub.py): VAE, DiT, pipeline, LoRA, CLI, cards.

Each test pushes what it pulls, so tests stay independent under xdist (each worker has its own fake Hub).
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from transformers import AutoTokenizer

from diffusers_spacetime import AutoencoderKLSpacetime, SpacetimeDiTModel, SpacetimeVideoPipeline
from diffusers_spacetime.cli import main as cli_main
from diffusers_spacetime.model_card import files_to_upload, push_folder_to_hub, push_lora_to_hub

from ..models.test_transformer_spacetime import CONFIG as DIT_CONFIG
from ..pipelines.conftest import call_kwargs, make_pipeline, minilm_path

REPO_ROOT = Path(__file__).resolve().parents[2]
TRAINING = {
    "steps": 2,
    "batch_size": 1,
    "learning_rate": 1e-4,
    "dataset": "none (random init, test fixture)",
    "hardware": "1 CPU core",
    "wall_time_s": 0.5,
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_path())


def tiny_vae() -> AutoencoderKLSpacetime:
    torch.manual_seed(0)
    return AutoencoderKLSpacetime(
        block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, temporal_downsample=(True, True)
    ).eval()


def tiny_dit() -> SpacetimeDiTModel:
    torch.manual_seed(0)
    return SpacetimeDiTModel(**DIT_CONFIG).eval()  # text_embed_dim 32


@torch.no_grad()
def vae_output(vae) -> torch.Tensor:
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1  # (B, C, F, H, W)
    latents = vae.encode(video.to(vae.dtype)).latent_dist.mode()  # (1, 4, 2, 4, 4)
    return vae.decode(latents).sample.float()


@torch.no_grad()
def dit_output(dit) -> torch.Tensor:
    generator = torch.Generator().manual_seed(2)
    latents = torch.randn(1, 4, 3, 8, 8, generator=generator)  # (B, C, F, H, W)
    text = torch.randn(1, 7, 32, generator=generator)  # (B, L, D)
    return dit(latents, torch.tensor([500.0]), text).sample


def frames(pipe) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(**call_kwargs()).frames


def usage_snippet(card: ModelCard) -> str:
    """The card's first ```python block, which must run as written."""
    match = re.search(r"```python\n(.*?)```", card.text, flags=re.DOTALL)
    assert match is not None, "the card has no python usage snippet"
    return match.group(1)


def run_snippet(snippet: str, folder: Path, monkeypatch) -> dict:
    monkeypatch.chdir(folder)
    namespace: dict = {}
    exec(compile(snippet, "<model card usage>", "exec"), namespace)  # noqa: S102 (our own rendered card)
    return namespace


def check_card_metadata(card: ModelCard, kind_tag: str) -> None:
    data = card.data
    assert data.library_name == "diffusers"
    assert data.pipeline_tag == "text-to-video"
    assert data.license == "apache-2.0"
    assert "diffusers-spacetime" in data.tags and kind_tag in data.tags


def test_vae_push_pull_revision_dtype_and_card(hub, monkeypatch, tmp_path):
    vae = tiny_vae()
    expected = vae_output(vae)
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    mse = torch.mean((expected - video) ** 2).item()
    results = {"Reconstruction MSE": {"value": mse, "note": "one random 5x16x16 clip in [-1, 1], untrained weights"}}
    first = vae.push_to_hub("user/tiny-vae", token=hub.token, training=TRAINING, results=results)

    # A second version without card facts keeps the card that is already there.
    with torch.no_grad():
        for parameter in vae.parameters():
            parameter.add_(0.01)
    changed = vae_output(vae)
    vae.push_to_hub("user/tiny-vae", token=hub.token)
    vae.push_to_hub("user/tiny-vae", revision="experiment", token=hub.token)  # a new branch

    cache = hub.fresh_cache("vae")
    pinned = AutoencoderKLSpacetime.from_pretrained(
        "user/tiny-vae", revision=first.oid, cache_dir=cache, token=hub.token, torch_dtype=torch.float32
    )
    torch.testing.assert_close(vae_output(pinned), expected, rtol=0, atol=0)
    latest = AutoencoderKLSpacetime.from_pretrained("user/tiny-vae", cache_dir=cache, torch_dtype=torch.float32)
    torch.testing.assert_close(vae_output(latest), changed, rtol=0, atol=0)
    branch = AutoencoderKLSpacetime.from_pretrained("user/tiny-vae", revision="experiment", cache_dir=cache)
    torch.testing.assert_close(vae_output(branch), changed, rtol=0, atol=0)
    half = AutoencoderKLSpacetime.from_pretrained("user/tiny-vae", cache_dir=cache, torch_dtype=torch.bfloat16)
    assert {parameter.dtype for parameter in half.parameters()} == {torch.bfloat16}

    card = ModelCard.load("user/tiny-vae")
    check_card_metadata(card, "autoencoder")
    assert "| Compression (time x height x width) | 4 x 4 x 4 |" in card.text
    assert f"{mse:.4g}" in card.text and "Optimizer steps | 2" in card.text
    namespace = run_snippet(usage_snippet(card), tmp_path, monkeypatch)
    assert namespace["reconstruction"].shape == (1, 3, 9, 16, 16)


def test_dit_private_subfolder_and_card(hub, monkeypatch, tmp_path):
    dit = tiny_dit()
    expected = dit_output(dit)
    repo_id = HfApi(token=hub.token).create_repo("tiny-parts", private=True).repo_id
    dit.push_to_hub(repo_id, subfolder="transformer", token=hub.token)

    cache = hub.fresh_cache("dit")
    with pytest.raises(OSError, match="token|not a valid model identifier"):  # private: the token is needed
        SpacetimeDiTModel.from_pretrained(repo_id, subfolder="transformer", cache_dir=cache)
    pulled = SpacetimeDiTModel.from_pretrained(
        repo_id, subfolder="transformer", cache_dir=cache, token=hub.token, torch_dtype=torch.float32
    )
    torch.testing.assert_close(dit_output(pulled), expected, rtol=0, atol=0)

    dit.push_to_hub("tiny-dit", token=hub.token, training=TRAINING)  # a bare name: the token's namespace
    card = ModelCard.load("user/tiny-dit")
    assert 'from_pretrained(\n    "user/tiny-dit"' in card.text
    check_card_metadata(card, "transformer")
    assert "| Patch size (t, h, w) | 1 x 2 x 2 |" in card.text and "| Attention span | spacetime |" in card.text
    namespace = run_snippet(usage_snippet(card), tmp_path, monkeypatch)
    assert namespace["prediction"].shape == namespace["latents"].shape


OFFLINE_CHILD = """
import sys

import numpy as np
import torch

import diffusers_spacetime
from diffusers_spacetime import SpacetimeVideoPipeline
from diffusers_spacetime.cli import main

sys.path.insert(0, {root!r})
from tests.pipelines.conftest import call_kwargs

pipe = SpacetimeVideoPipeline.from_pretrained("user/tiny-pipe", torch_dtype=torch.float32, use_safetensors=True)
pipe.set_progress_bar_config(disable=True)
np.save({out!r}, pipe(**call_kwargs()).frames)
sys.exit(main(["a red circle", "--model", "user/tiny-pipe", "--steps", "2", "--output", {video!r}]))
"""


def test_pipeline_push_pull_offline_cli_and_card(hub, tokenizer, monkeypatch, tmp_path):
    pipe = make_pipeline(tokenizer)
    expected = frames(pipe)
    commit = pipe.push_to_hub("user/tiny-pipe", token=hub.token)  # no card facts: the card from the configs alone
    check_card_metadata(ModelCard.load("user/tiny-pipe"), "pipeline")

    cache = hub.fresh_cache("pipe")
    pulled = SpacetimeVideoPipeline.from_pretrained(
        "user/tiny-pipe", revision=commit.oid, cache_dir=cache, token=hub.token, torch_dtype=torch.float32
    )
    np.testing.assert_array_equal(frames(pulled), expected)
    # The generic entry point resolves the class too (after `import diffusers_spacetime`), no remote code.
    generic = DiffusionPipeline.from_pretrained("user/tiny-pipe", cache_dir=cache, use_safetensors=True)
    assert type(generic) is SpacetimeVideoPipeline
    np.testing.assert_array_equal(frames(generic), expected)

    # The CLI pulls by repo id (default cache, public repo).
    assert (
        cli_main(
            ["a red circle", "--model", "user/tiny-pipe", "--steps", "2", "--output", str(tmp_path / "online.mp4")]
        )
        == 0
    )
    assert (tmp_path / "online.mp4").stat().st_size > 0

    # Offline: a fresh interpreter with HF_HUB_OFFLINE=1 (read at import) loads from `cache`; the Hub sees nothing.
    requests_before = len(hub.server.requests)
    script = OFFLINE_CHILD.format(
        root=str(REPO_ROOT), out=str(tmp_path / "offline.npy"), video=str(tmp_path / "offline.mp4")
    )
    env = {**hub.env, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=180)
    assert child.returncode == 0, child.stderr[-3000:]
    assert len(hub.server.requests) == requests_before
    np.testing.assert_array_equal(np.load(tmp_path / "offline.npy"), expected)
    assert (tmp_path / "offline.mp4").stat().st_size > 0

    # The card helper: facts from the configs, YAML the Hub accepts, a snippet that runs as written.
    results = {"Seconds per video (2 steps, CPU)": {"value": 0.1, "note": "test fixture, not a benchmark"}}
    pipe.push_to_hub(
        "user/tiny-pipe-card", token=hub.token, training=TRAINING, results=results, usage={"num_inference_steps": 2}
    )
    card = ModelCard.load("user/tiny-pipe-card")
    check_card_metadata(card, "pipeline")
    for fact in (
        "| `transformer` | SpacetimeDiTModel |",
        "| Default size (frames, height, width) | 5 x 32 x 32 |",
        "| Tokens per video at 5 x 32 x 32 | 32 (2 latent frames) |",
        "| Wall-clock time | 0 s |",
    ):
        assert fact in card.text, fact
    assert HfApi().model_info("user/tiny-pipe-card").pipeline_tag == "text-to-video"
    namespace = run_snippet(usage_snippet(card), tmp_path, monkeypatch)
    assert namespace["video"].shape == (5, 32, 32, 3) and (tmp_path / "video.mp4").exists()


def add_adapter(pipe, seed: int) -> LoraConfig:
    torch.manual_seed(seed)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
    )
    pipe.transformer.add_adapter(config, adapter_name="style")
    for name, parameter in pipe.transformer.named_parameters():
        if "lora_B.style" in name:
            parameter.data.normal_(0.0, 0.5)  # a clearly visible effect
    return config


def test_lora_push_load_by_repo_id_offline_and_card(hub, tokenizer, monkeypatch, tmp_path):
    pipe = make_pipeline(tokenizer)
    base = frames(pipe)
    pipe.push_to_hub("user/lora-base", token=hub.token)
    add_adapter(pipe, seed=1)
    with_lora = frames(pipe)
    assert not np.allclose(with_lora, base)
    pipe.save_lora_weights(
        tmp_path / "lora",
        get_peft_model_state_dict(pipe.transformer, adapter_name="style"),
        transformer_lora_adapter_metadata=pipe.transformer.peft_config["style"].to_dict(),
    )
    push_lora_to_hub(
        tmp_path / "lora",
        "user/tiny-lora",
        base_model="user/lora-base",
        token=hub.token,
        training={**TRAINING, "rank": 4},
        usage={"num_inference_steps": 2},
        trigger="sks style",
    )

    cache = hub.fresh_cache("lora")
    fresh = SpacetimeVideoPipeline.from_pretrained("user/lora-base", cache_dir=cache, torch_dtype=torch.float32)
    np.testing.assert_array_equal(frames(fresh), base)
    fresh.load_lora_weights("user/tiny-lora", adapter_name="style", cache_dir=cache)
    np.testing.assert_array_equal(frames(fresh), with_lora)

    # Offline, from the cache: with no `weight_name`, the loader takes the file `save_lora_weights` writes instead of
    # asking the Hub API (`model_info`) for the name, as diffusers 0.42 would.
    import diffusers.loaders.lora_base
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as offline_mode:
        offline_mode.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        offline_mode.setattr(diffusers.loaders.lora_base, "HF_HUB_OFFLINE", True)
        requests_before = len(hub.server.requests)
        offline = SpacetimeVideoPipeline.from_pretrained("user/lora-base", cache_dir=cache, torch_dtype=torch.float32)
        offline.load_lora_weights("user/tiny-lora", cache_dir=cache)
        np.testing.assert_array_equal(frames(offline), with_lora)
        assert len(hub.server.requests) == requests_before

    # A private adapter: the token travels with `token=`.
    push_lora_to_hub(
        tmp_path / "lora", "user/tiny-lora-private", base_model="user/lora-base", token=hub.token, private=True
    )
    private = SpacetimeVideoPipeline.from_pretrained("user/lora-base", cache_dir=cache, torch_dtype=torch.float32)
    with pytest.raises(OSError, match="private repository, make sure to pass a token"):
        private.load_lora_weights("user/tiny-lora-private", cache_dir=cache)
    private.load_lora_weights("user/tiny-lora-private", cache_dir=cache, token=hub.token)
    np.testing.assert_array_equal(frames(private), with_lora)

    card = ModelCard.load("user/tiny-lora")
    check_card_metadata(card, "lora")
    assert card.data.base_model == "user/lora-base" and card.data.base_model_relation == "adapter"
    for fact in ("| Rank / alpha | 4 / 8 |", "`attn1.to_q`", "| Adapted layers | 16 |", "`sks style`"):
        assert fact in card.text, fact
    namespace = run_snippet(usage_snippet(card), tmp_path, monkeypatch)
    assert namespace["video"].shape == (5, 32, 32, 3)


def test_pickles_are_refused_both_ways(hub, tokenizer, tmp_path):
    # Push: a folder with a pickle is refused before the repo is even created.
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "pickled_vae", safe_serialization=False)
    assert (tmp_path / "pickled_vae" / "diffusion_pytorch_model.bin").exists()
    with pytest.raises(ValueError, match=r"Refusing to upload pickle files .*diffusion_pytorch_model\.bin"):
        push_folder_to_hub(tmp_path / "pickled_vae", "user/never-created", token=hub.token)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("user/never-created")
    (tmp_path / "state" / "checkpoint-2").mkdir(parents=True)
    (tmp_path / "state" / "checkpoint-2" / "optimizer.bin").write_bytes(b"pickle")
    (tmp_path / "state" / "model.safetensors").write_bytes(b"weights")
    assert files_to_upload(tmp_path / "state", ignore_patterns=["checkpoint-*/*"]) == ["model.safetensors"]

    # Pull: repos that hold only pickles (pushed by someone else with plain huggingface_hub) are refused with
    # `use_safetensors=True`, and the pickles are not even downloaded.
    api = HfApi(token=hub.token)
    api.create_repo("pickle-vae")
    api.upload_folder(repo_id="user/pickle-vae", folder_path=tmp_path / "pickled_vae")
    pipe = make_pipeline(tokenizer)
    pipe.save_pretrained(tmp_path / "pickled_pipe", safe_serialization=False)
    api.create_repo("pickle-pipe")
    api.upload_folder(repo_id="user/pickle-pipe", folder_path=tmp_path / "pickled_pipe")

    cache = hub.fresh_cache("pickles")
    with pytest.raises(OSError, match=r"diffusion_pytorch_model\.safetensors"):
        AutoencoderKLSpacetime.from_pretrained("user/pickle-vae", cache_dir=cache, use_safetensors=True)
    with pytest.raises(OSError, match=r"Could not find the necessary `safetensors` weights"):
        SpacetimeVideoPipeline.from_pretrained("user/pickle-pipe", cache_dir=cache, use_safetensors=True)
    downloaded = [path.name for path in cache.rglob("*") if path.is_file()]
    assert not any(name.endswith(".bin") for name in downloaded), downloaded


def test_templates_ship_with_the_package():
    from diffusers_spacetime.model_card import template_dir

    assert {path.name for path in template_dir().glob("*.md")} >= {
        "pipeline.md",
        "vae.md",
        "lora.md",
        "transformer.md",
    }
    assert (
        os.path.samefile(template_dir() / "pipeline.md", REPO_ROOT / "model_cards" / "pipeline.md")
        or (template_dir() / "pipeline.md").read_text() == (REPO_ROOT / "model_cards" / "pipeline.md").read_text()
    )
