"""Pipeline-level LoRA (SpacetimeLoraLoaderMixin): load/save layouts, scale, enable/disable, fuse, mix, and errors."""

import json

import numpy as np
import pytest
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file

from .conftest import call_kwargs, make_pipeline

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def add_adapter(pipe, name: str, seed: int, trained: bool = True, rank: int = 4, alpha: int = 8) -> None:
    """A LoRA adapter on the transformer; `trained=False` is peft's fresh init (lora_B = 0), else random weights."""
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=not trained)
    pipe.transformer.add_adapter(config, adapter_name=name)
    if trained:  # peft's init_lora_weights=False draws lora_B too; scale up so the effect is unmistakable
        for param_name, param in pipe.transformer.named_parameters():
            if f"lora_B.{name}" in param_name:
                param.data.normal_(0.0, 0.5)


def adapter_state(pipe, name: str) -> tuple[dict, dict]:
    layers = get_peft_model_state_dict(pipe.transformer, adapter_name=name)
    return layers, pipe.transformer.peft_config[name].to_dict()


def frames(pipe, **overrides):
    return pipe(**call_kwargs(**overrides)).frames


@pytest.fixture
def base(pipe):
    return frames(pipe)


def test_fresh_adapter_leaves_output_unchanged(pipe, base):
    add_adapter(pipe, "fresh", seed=1, trained=False)
    np.testing.assert_array_equal(frames(pipe), base)
    assert pipe.get_active_adapters() == ["fresh"]


def test_save_then_load_into_fresh_pipeline(pipe, base, tokenizer, tmp_path):
    add_adapter(pipe, "style", seed=1)
    with_lora = frames(pipe)
    assert not np.allclose(with_lora, base)

    layers, metadata = adapter_state(pipe, "style")
    pipe.save_lora_weights(tmp_path, transformer_lora_layers=layers, transformer_lora_adapter_metadata=metadata)
    saved = load_file(tmp_path / "pytorch_lora_weights.safetensors")
    assert saved and all(key.startswith("transformer.") and "lora" in key for key in saved)

    fresh = make_pipeline(tokenizer)
    np.testing.assert_array_equal(frames(fresh), base)
    fresh.load_lora_weights(tmp_path, adapter_name="style")
    np.testing.assert_array_equal(frames(fresh), with_lora)

    # The file itself (and weight_name inside the folder) load too.
    by_file = make_pipeline(tokenizer)
    by_file.load_lora_weights(tmp_path / "pytorch_lora_weights.safetensors")
    np.testing.assert_array_equal(frames(by_file), with_lora)
    by_name = make_pipeline(tokenizer)
    by_name.load_lora_weights(str(tmp_path), weight_name="pytorch_lora_weights.safetensors", adapter_name="x")
    np.testing.assert_array_equal(frames(by_name), with_lora)


def test_scale_zero_and_disable_equal_base(pipe, base):
    add_adapter(pipe, "style", seed=1)
    with_lora = frames(pipe)
    np.testing.assert_allclose(frames(pipe, attention_kwargs={"scale": 0.0}), base, atol=1e-6)
    half = frames(pipe, attention_kwargs={"scale": 0.5})
    assert not np.allclose(half, base) and not np.allclose(half, with_lora)
    pipe.disable_lora()
    np.testing.assert_array_equal(frames(pipe), base)
    pipe.enable_lora()
    np.testing.assert_array_equal(frames(pipe), with_lora)


def test_fuse_then_unload_keeps_effect(pipe, base):
    add_adapter(pipe, "style", seed=1)
    with_lora = frames(pipe)
    pipe.fuse_lora(lora_scale=1.0)
    assert pipe.num_fused_loras == 1
    np.testing.assert_allclose(frames(pipe), with_lora, atol=1e-4)
    pipe.unload_lora_weights()
    assert pipe.get_list_adapters() == {}
    np.testing.assert_allclose(frames(pipe), with_lora, atol=1e-4)


def test_unfuse_restores_base_weights(pipe, base):
    add_adapter(pipe, "style", seed=1)
    with_lora = frames(pipe)
    pipe.fuse_lora()
    pipe.unfuse_lora()
    assert pipe.num_fused_loras == 0
    np.testing.assert_allclose(frames(pipe), with_lora, atol=1e-4)  # unfused, the adapter still runs unmerged
    pipe.unload_lora_weights()
    np.testing.assert_allclose(frames(pipe), base, atol=1e-5)


def test_two_adapters_mix(pipe, base):
    add_adapter(pipe, "a", seed=1)
    add_adapter(pipe, "b", seed=2)
    pipe.set_adapters("a")
    only_a = frames(pipe)
    pipe.set_adapters("b")
    only_b = frames(pipe)
    pipe.set_adapters(["a", "b"], [0.7, 0.7])
    assert sorted(pipe.get_active_adapters()) == ["a", "b"]
    mixed = frames(pipe)
    for other in (base, only_a, only_b):
        assert not np.allclose(mixed, other)
    pipe.delete_adapters("a")
    assert pipe.get_list_adapters() == {"transformer": ["b"]}


@pytest.mark.parametrize("layout", ["bare", "peft-prefixed", "adapter-name-in-keys"])
def test_bare_peft_key_layouts_load(pipe, tokenizer, tmp_path, layout):
    add_adapter(pipe, "style", seed=1, rank=4, alpha=4)  # alpha == rank: no metadata needed for the same scale
    with_lora = frames(pipe)
    layers, _ = adapter_state(pipe, "style")
    if layout == "peft-prefixed":
        layers = {f"base_model.model.{k}": v for k, v in layers.items()}
    elif layout == "adapter-name-in-keys":
        layers = {k.replace(".weight", ".style.weight"): v for k, v in layers.items()}
    save_file({k: v.contiguous() for k, v in layers.items()}, tmp_path / "lora.safetensors")

    fresh = make_pipeline(tokenizer)
    fresh.load_lora_weights(tmp_path / "lora.safetensors", adapter_name="style")
    np.testing.assert_array_equal(frames(fresh), with_lora)


def test_model_level_save_and_peft_folder_load(pipe, tokenizer, tmp_path):
    # alpha != rank: only the stored LoRA config reproduces the scale.
    add_adapter(pipe, "style", seed=1, rank=4, alpha=16)
    with_lora = frames(pipe)

    # `transformer.save_lora_adapter` writes bare keys with the config as metadata.
    pipe.transformer.save_lora_adapter(tmp_path / "model_level", adapter_name="style")
    fresh = make_pipeline(tokenizer)
    fresh.load_lora_weights(tmp_path / "model_level")
    np.testing.assert_array_equal(frames(fresh), with_lora)

    # A `PeftModel.save_pretrained` folder: `base_model.model.` keys, the config in adapter_config.json.
    layers, config = adapter_state(pipe, "style")
    folder = tmp_path / "peft_folder"
    folder.mkdir()
    save_file(
        {f"base_model.model.{k}": v.contiguous() for k, v in layers.items()}, folder / "adapter_model.safetensors"
    )
    config = {k: (sorted(v) if isinstance(v, set) else v) for k, v in config.items()}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    peft_loaded = make_pipeline(tokenizer)
    peft_loaded.load_lora_weights(folder)
    np.testing.assert_array_equal(frames(peft_loaded), with_lora)


class TestErrors:
    def test_missing_path(self, pipe, tmp_path):
        with pytest.raises(FileNotFoundError, match="neither a file, a folder nor a Hub repo id"):
            pipe.load_lora_weights(str(tmp_path / "nope" / "lora.safetensors"))
        with pytest.raises(FileNotFoundError, match="neither a file, a folder nor a Hub repo id"):
            pipe.load_lora_weights("missing_folder")

    def test_folder_without_weights(self, pipe, tmp_path):
        with pytest.raises(FileNotFoundError, match="has no .safetensors or .bin file"):
            pipe.load_lora_weights(tmp_path)

    def test_missing_weight_name(self, pipe, tmp_path):
        save_file({"transformer.x.lora_A.weight": torch.zeros(1, 1)}, tmp_path / "other.safetensors")
        with pytest.raises(FileNotFoundError, match="no file 'lora.safetensors'"):
            pipe.load_lora_weights(tmp_path, weight_name="lora.safetensors")

    def test_keys_matching_nothing(self, pipe, tmp_path):
        save_file(
            {
                "transformer.down_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 32),
                "transformer.down_blocks.0.attn.to_q.lora_B.weight": torch.zeros(32, 4),
            },
            tmp_path / "unet_lora.safetensors",
        )
        with pytest.raises(ValueError, match=r"LoRA keys do not match the transformer: none of the targeted modules"):
            pipe.load_lora_weights(tmp_path / "unet_lora.safetensors")
        assert pipe.get_list_adapters() == {}

    def test_keys_partly_matching(self, pipe, tmp_path):
        add_adapter(pipe, "style", seed=1)
        layers, _ = adapter_state(pipe, "style")
        pipe.delete_adapters("style")
        layers["blocks.99.attn1.to_q.lora_A.weight"] = torch.zeros(4, 32)
        with pytest.raises(ValueError, match=r"do not match the transformer: 1 of \d+ of the targeted modules"):
            pipe.load_lora_weights(layers)

    def test_not_lora_keys(self, pipe):
        with pytest.raises(ValueError, match="Not a LoRA state dict"):
            pipe.load_lora_weights({"transformer.proj_out.weight": torch.zeros(2, 2)})

    def test_other_component_keys(self, pipe):
        state = {
            "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 32),
            "text_encoder.encoder.layer.0.attention.self.query.lora_A.weight": torch.zeros(4, 32),
        }
        with pytest.raises(
            ValueError, match=r"into `transformer` only; the file also has keys for \['text_encoder'\]"
        ):
            pipe.load_lora_weights(state)

    def test_unknown_adapter_names(self, pipe):
        add_adapter(pipe, "style", seed=1)
        with pytest.raises(ValueError, match=r"Adapter name\(s\) \{'nope'\} not in the list of present adapters"):
            pipe.set_adapters(["nope"])
        with pytest.raises(ValueError, match=r"Unknown adapter name\(s\) \['nope'\]; loaded adapters: \['style'\]"):
            pipe.delete_adapters("nope")
        with pytest.raises(ValueError, match=r"Unknown adapter name\(s\) \['nope'\]"):
            pipe.fuse_lora(adapter_names=["nope"])

    def test_duplicate_adapter_name(self, pipe, tmp_path):
        add_adapter(pipe, "style", seed=1)
        layers, metadata = adapter_state(pipe, "style")
        with pytest.raises(ValueError, match="An adapter named 'style' is already loaded"):
            pipe.load_lora_weights(layers, adapter_name="style")

    def test_save_without_layers(self, pipe, tmp_path):
        with pytest.raises(ValueError, match="Pass `transformer_lora_layers`"):
            pipe.save_lora_weights(tmp_path)
