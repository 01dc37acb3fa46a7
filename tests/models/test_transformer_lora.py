"""Model-level LoRA of `SpacetimeDiTModel` through diffusers' `PeftAdapterMixin` (diffusers 0.42.1, peft 0.21).

Covers `add_adapter`, the `save_lora_adapter` / `load_lora_adapter` round trip, `set_adapters` weights, `fuse_lora` /
`unfuse_lora`, `unload_lora` and hotswapping (eager and under `torch.compile`). Pipeline-level behaviour (the
`SpacetimeLoraLoaderMixin`) is in tests/pipelines/test_lora.py.

Limitations of the model-level API, pinned here so that a diffusers upgrade that changes them shows up:
- `load_lora_adapter` filters keys by `prefix="transformer"` by default, and `save_lora_adapter` writes bare keys:
  the round trip needs `prefix=None`, else nothing loads (only a warning).
- From a folder it needs `weight_name` (without it, it looks for `pytorch_lora_weights.bin`); from a file path it
  needs `use_safetensors=True`, else the file's LoRA metadata is dropped and `lora_alpha` silently falls back to
  the rank (a different scale). The pipeline's `load_lora_weights` has none of these three pitfalls.
- `fuse_lora(lora_scale=s)` scales the adapter by `s` before merging and `unfuse_lora` does not undo the scaling:
  after an unfuse the adapter runs at `s`, not at 1.
- Hotswapping: call `enable_lora_hotswap(target_rank=max rank)` before the first adapter is loaded (later raises);
  then adapters with other ranks (up to `target_rank`) and alphas swap in, also under `torch.compile` without a
  recompilation. Without it a compiled model recompiles when the alpha changes. The new adapter may target fewer
  layers than the loaded one, never more; a failed hotswap removes the loaded adapter altogether.
- `set_adapters` and `delete_adapters` accept unknown adapter names (`set_adapters(["typo"])` then silently runs no
  adapter); the singular `set_adapter` raises. The pipeline's methods raise for all three.
"""

import pytest
import torch
from peft import LoraConfig
from safetensors import safe_open

from ..pipelines.conftest import _one_thread  # noqa: F401  (autouse: tiny models run on one thread)
from .test_transformer_spacetime import CONFIG, make_model

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
ALL_LINEAR = (*ATTENTION, "ff.net.0.proj", "ff.net.2")
WEIGHT_NAME = "pytorch_lora_weights.safetensors"


def add_adapter(model, name, seed, rank=4, alpha=8, targets=ALL_LINEAR, trained=True) -> None:
    """An adapter with random (trained-like) weights, or peft's fresh init (lora_B = 0) with `trained=False`."""
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=not trained)
    model.add_adapter(config, adapter_name=name)
    if trained:
        for param_name, param in model.named_parameters():
            if f"lora_B.{name}" in param_name:
                param.data.normal_(0.0, 0.5)


def saved_adapter(folder, seed, rank=4, alpha=8, targets=ALL_LINEAR):
    """Saves an adapter of a fresh model to `folder`; returns the model's output with it."""
    model = make_model()
    add_adapter(model, "saved", seed, rank, alpha, targets)
    model.save_lora_adapter(folder, adapter_name="saved")
    return run(model)


def _inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden_states (1, 4, 3, 8, 8), timestep (1,), encoder_hidden_states (1, 5, 32))."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, 3, 8, 8, generator=generator), torch.tensor([500.0]),
            torch.randn(1, 5, 32, generator=generator))  # fmt: skip


INPUTS = _inputs()


def run(model, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(*INPUTS, **kwargs).sample


@pytest.fixture
def base_output():
    """The plain model's output; per test, after `_one_thread` (thread counts change the last bits)."""
    return run(make_model())


def test_add_adapter_freezes_the_base_and_starts_as_identity(base_output):
    model = make_model()
    add_adapter(model, "fresh", seed=1, targets=ALL_LINEAR, trained=False)
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_modules() if name.endswith("lora_A")}
    assert len(adapted) == CONFIG["num_layers"] * (2 * len(ATTENTION) + 2)  # both attentions and the feed-forward
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    assert trainable and all(".lora_" in name for name in trainable)  # peft freezes everything else
    torch.testing.assert_close(run(model), base_output, rtol=0, atol=0)


def test_save_and_load_round_trip_restores_alpha(base_output, tmp_path):
    expected = saved_adapter(tmp_path, seed=1, rank=4, alpha=16)  # alpha != rank: the metadata matters
    with safe_open(str(tmp_path / WEIGHT_NAME), framework="pt") as handle:
        assert all(key.startswith("blocks.") for key in handle.keys())  # bare keys, no `transformer.` prefix
    model = make_model()
    model.load_lora_adapter(tmp_path, weight_name=WEIGHT_NAME, prefix=None, adapter_name="style")
    assert model.peft_config["style"].lora_alpha == 16
    torch.testing.assert_close(run(model), expected, rtol=0, atol=0)
    assert not torch.allclose(expected, base_output, atol=1e-3)

    model = make_model()  # a file path with use_safetensors=True works as well
    model.load_lora_adapter(tmp_path / WEIGHT_NAME, prefix=None, use_safetensors=True, adapter_name="style")
    torch.testing.assert_close(run(model), expected, rtol=0, atol=0)


class TestModelLevelLoadingPitfalls:
    """What diffusers 0.42.1's model-level loader does with inputs that the pipeline loader handles."""

    def test_default_prefix_loads_nothing(self, base_output, tmp_path):
        saved_adapter(tmp_path, seed=1)
        model = make_model()
        model.load_lora_adapter(tmp_path, weight_name=WEIGHT_NAME, adapter_name="style")  # prefix="transformer"
        assert not getattr(model, "peft_config", {})
        torch.testing.assert_close(run(model), base_output, rtol=0, atol=0)

    def test_folder_without_weight_name_looks_for_a_bin_file(self, tmp_path):
        saved_adapter(tmp_path, seed=1)
        with pytest.raises(OSError, match="pytorch_lora_weights.bin"):
            make_model().load_lora_adapter(tmp_path, prefix=None, adapter_name="style")

    def test_file_path_without_use_safetensors_drops_alpha(self, tmp_path):
        expected = saved_adapter(tmp_path, seed=1, rank=4, alpha=16)
        model = make_model()
        model.load_lora_adapter(tmp_path / WEIGHT_NAME, prefix=None, adapter_name="style")
        assert model.peft_config["style"].lora_alpha == 4  # the rank: the stored alpha 16 was not read
        assert not torch.allclose(run(model), expected, atol=1e-3)


def test_set_adapters_weights(base_output):
    model = make_model()
    add_adapter(model, "a", seed=1)
    add_adapter(model, "b", seed=2)
    model.set_adapters("a")
    only_a = run(model)
    half_a = run(model, attention_kwargs={"scale": 0.5})
    model.set_adapters("b")
    only_b = run(model)
    model.set_adapters(["a"], [0.5])  # an adapter weight is the per-call scale, kept
    torch.testing.assert_close(run(model), half_a, rtol=0, atol=1e-6)
    model.set_adapters(["a", "b"], [1.0, 0.0])
    torch.testing.assert_close(run(model), only_a, rtol=0, atol=1e-6)
    model.set_adapters(["a", "b"], [0.7, 0.7])
    assert model.active_adapters() == ["a", "b"]
    mixed = run(model)
    for other in (base_output, only_a, only_b):
        assert not torch.allclose(mixed, other, atol=1e-3)


def test_unknown_adapter_names(base_output):
    model = make_model()
    add_adapter(model, "a", seed=1)
    with pytest.raises(ValueError, match="could not be found: nope"):
        model.set_adapter("nope")
    # Limitation: the plural `set_adapters` and `delete_adapters` accept unknown names silently; the first then runs
    # no adapter at all. The pipeline's methods raise instead.
    model.set_adapters(["nope"])
    assert model.active_adapters() == ["nope"]
    torch.testing.assert_close(run(model), base_output, rtol=0, atol=0)
    with pytest.warns(UserWarning, match="Adapter nope was active which is now deleted"):
        model.delete_adapters("nope")  # no error: peft only resets the active adapter
    assert list(model.peft_config) == ["a"] and model.active_adapters() == ["a"]


def test_fuse_and_unfuse(base_output):
    model = make_model()
    add_adapter(model, "a", seed=1)
    layer = model.blocks[0].attn1.to_q
    base_weight = layer.base_layer.weight.detach().clone()
    unfused, half = run(model), run(model, attention_kwargs={"scale": 0.5})

    model.fuse_lora()
    assert not torch.allclose(layer.base_layer.weight, base_weight)
    torch.testing.assert_close(run(model), unfused, rtol=0, atol=1e-5)
    model.unfuse_lora()
    torch.testing.assert_close(layer.base_layer.weight, base_weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(run(model), unfused, rtol=0, atol=1e-5)

    model.fuse_lora(lora_scale=0.5)
    torch.testing.assert_close(run(model), half, rtol=0, atol=1e-5)
    model.unfuse_lora()
    torch.testing.assert_close(layer.base_layer.weight, base_weight, rtol=0, atol=1e-6)
    # Limitation: the fused scale stays on the adapter after unfusing.
    torch.testing.assert_close(run(model), half, rtol=0, atol=1e-5)


def test_unload_lora_restores_the_plain_model(base_output):
    model = make_model()
    plain_keys = set(model.state_dict())
    add_adapter(model, "a", seed=1)
    model.unload_lora()
    assert type(model.blocks[0].attn1.to_q) is torch.nn.Linear
    assert not getattr(model, "peft_config", None)
    assert set(model.state_dict()) == plain_keys
    torch.testing.assert_close(run(model), base_output, rtol=0, atol=1e-6)

    add_adapter(model, "a", seed=1)
    fused = run(model)
    model.fuse_lora()
    model.unload_lora()  # fused first: the effect stays in the plain weights
    assert type(model.blocks[0].attn1.to_q) is torch.nn.Linear
    torch.testing.assert_close(run(model), fused, rtol=0, atol=1e-5)


@pytest.fixture
def hotswap_files(tmp_path):
    """Three adapter folders with different ranks and alphas, and each one's output when loaded plainly."""
    specs = {"a": (1, 4, 8), "b": (2, 4, 4), "c": (3, 8, 16)}  # seed, rank, alpha
    files = {}
    for name, (seed, rank, alpha) in specs.items():
        folder = tmp_path / name
        files[name] = (folder, saved_adapter(folder, seed, rank, alpha))
    return files


def load(model, folder, **kwargs):
    model.load_lora_adapter(folder, weight_name=WEIGHT_NAME, prefix=None, adapter_name="x", **kwargs)


def test_hotswap_other_ranks_and_alphas(hotswap_files):
    model = make_model()
    model.enable_lora_hotswap(target_rank=8)
    load(model, hotswap_files["a"][0])
    torch.testing.assert_close(run(model), hotswap_files["a"][1], rtol=0, atol=1e-6)
    for name in ("b", "c", "a"):
        folder, expected = hotswap_files[name]
        load(model, folder, hotswap=True)
        torch.testing.assert_close(run(model), expected, rtol=0, atol=1e-6)
    assert list(model.peft_config) == ["x"]


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_hotswap_under_compile_does_not_recompile(hotswap_files, backend):
    # `eager` runs dynamo's guards (what decides recompilation) without code generation: seconds instead of ~30 s.
    torch._dynamo.reset()
    model = make_model()
    model.enable_lora_hotswap(target_rank=8)
    load(model, hotswap_files["a"][0])
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    with torch._dynamo.config.patch(error_on_recompile=True):
        torch.testing.assert_close(run(compiled), hotswap_files["a"][1], rtol=1e-4, atol=1e-5)
        for name in ("b", "c"):
            folder, expected = hotswap_files[name]
            load(model, folder, hotswap=True)
            torch.testing.assert_close(run(compiled), expected, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()


class TestHotswapLimitations:
    def test_without_enable_a_compiled_model_recompiles_for_another_alpha(self, hotswap_files):
        torch._dynamo.reset()
        model = make_model()
        load(model, hotswap_files["a"][0])
        compiled = torch.compile(model, fullgraph=True, backend="eager")
        with torch._dynamo.config.patch(error_on_recompile=True):
            run(compiled)
            load(model, hotswap_files["b"][0], hotswap=True)  # the weights swap fine uncompiled ...
            with pytest.raises(torch._dynamo.exc.RecompileError, match="scaling"):
                run(compiled)  # ... but the alpha is a Python float the compiled graph guards on
        torch._dynamo.reset()

    def test_enable_after_loading_raises(self, hotswap_files):
        model = make_model()
        load(model, hotswap_files["a"][0])
        with pytest.raises(RuntimeError, match="before loading the first adapter"):
            model.enable_lora_hotswap(target_rank=8)

    def test_rank_above_target_rank_raises(self, hotswap_files):
        model = make_model()
        model.enable_lora_hotswap(target_rank=2)
        with pytest.raises(ValueError, match="target rank 2, but the original rank is larger"):
            load(model, hotswap_files["a"][0])

    def test_unknown_name_raises(self, hotswap_files):
        with pytest.raises(ValueError, match="no existing adapter by that name"):
            load(make_model(), hotswap_files["a"][0], hotswap=True)

    def test_fewer_targets_swap_in_more_fail_and_drop_the_loaded_adapter(self, tmp_path, hotswap_files):
        fewer = saved_adapter(tmp_path / "fewer", seed=4, targets=("to_q",))
        model = make_model()
        model.enable_lora_hotswap(target_rank=8)
        load(model, hotswap_files["a"][0])
        load(model, tmp_path / "fewer", hotswap=True)
        torch.testing.assert_close(run(model), fewer, rtol=0, atol=1e-6)

        model = make_model()
        model.enable_lora_hotswap(target_rank=8)
        saved_adapter(tmp_path / "attention", seed=5, targets=ATTENTION)
        load(model, tmp_path / "attention")
        with pytest.raises(RuntimeError, match="unexpected keys found: blocks.0.ff.net"):
            load(model, hotswap_files["a"][0], hotswap=True)  # also targets the feed-forward
        assert not getattr(model, "peft_config", {})  # the adapter that was loaded is gone
