"""Loading: broken files are clear errors, and nothing a file holds ever runs.

- Missing and truncated safetensors files, configs with wrong types, `model_index.json` naming unknown classes: each a
  clear error (the CLI: one line, naming the file).
- A planted malicious pickle (`.bin`/`.pkl` whose unpickling would `touch` a marker file) in a model folder, a
  pipeline folder, a LoRA folder and a training checkpoint: every loader of the package either never reads it
  (`use_safetensors=True`) or reads it weights-only (torch refuses the foreign global before running it), and fails
  with a message saying so. The marker never appears. A control shows the payload is live under plain `pickle`.
- What the package writes (pipelines, models, LoRA adapters) is safetensors only.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from diffusers import DiffusionPipeline

from diffusers_spacetime import AutoencoderKLSpacetime, SpacetimeDiTModel, SpacetimeVideoPipeline, cli
from diffusers_spacetime.model_card import PICKLE_SUFFIXES
from tests.pipelines.conftest import make_pipeline
from training import checkpointing

from .conftest import plant_pickle

WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    """A saved tiny pipeline folder (every component safetensors), copied per test with `fresh_copy`."""
    path = tmp_path_factory.mktemp("saved") / "pipeline"
    make_pipeline(tokenizer).save_pretrained(path)
    return path


@pytest.fixture
def fresh_copy(saved, tmp_path):
    def copy(name: str = "pipeline"):
        return shutil.copytree(saved, tmp_path / name)

    return copy


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _cli_error(model, tmp_path, capsys) -> str:
    status = cli.main(["a prompt", "--model", str(model), "--steps", "1", "--output", str(tmp_path / "out.mp4")])
    err = capsys.readouterr().err
    assert status == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("spacetime-generate: error: ") and sum("error:" in line for line in lines) == 1, err
    return lines[-1]


# 1. Missing and truncated weights


def test_missing_weights_name_the_file(fresh_copy):
    folder = fresh_copy()
    (folder / "vae" / WEIGHTS).unlink()
    with pytest.raises(OSError, match=rf"no file named {WEIGHTS} found in directory .*vae"):
        AutoencoderKLSpacetime.from_pretrained(folder / "vae", use_safetensors=True)
    with pytest.raises(OSError, match=rf"no file named {WEIGHTS} found in directory .*vae"):
        SpacetimeVideoPipeline.from_pretrained(folder, use_safetensors=True)


@pytest.mark.parametrize("keep", [0.5, 0.0001, 0.0], ids=["half", "inside-header", "empty"])
def test_truncated_model_weights_name_the_file(fresh_copy, keep):
    folder = fresh_copy()
    _truncate(folder / "transformer" / WEIGHTS, keep)
    # diffusers' own message: it names the file (not why); the CLI below adds the reason
    with pytest.raises(OSError, match=rf"Unable to load weights from checkpoint file for '.*transformer/{WEIGHTS}'"):
        SpacetimeDiTModel.from_pretrained(folder / "transformer", use_safetensors=True)


@pytest.mark.parametrize("component, weights", [("transformer", WEIGHTS), ("text_encoder", "model.safetensors")])
def test_cli_names_a_truncated_file_and_why(fresh_copy, tmp_path, capsys, component, weights):
    # Before: a truncated text encoder escaped the CLI as a SafetensorError traceback (transformers raises it as is).
    folder = fresh_copy()
    _truncate(folder / component / weights)
    line = _cli_error(folder, tmp_path, capsys)
    assert f"{component}/{weights} is not a readable safetensors file (truncated or corrupt: " in line, line


# 2. Configs with wrong types


@pytest.mark.parametrize(
    "component, key, value, match",
    [
        ("transformer", "num_layers", "2", r"num_layers must be a positive int, got '2'"),
        ("transformer", "patch_size", "122", r"patch_size must be three positive ints"),
        ("transformer", "attention_head_dim", 16.0, r"attention_head_dim must be even and at least 6 .* got 16.0"),
        ("transformer", "out_channels", "4", r"out_channels must be a positive int or None"),
        ("transformer", "rope_theta", "big", r"rope_theta must be a positive number, got 'big'"),
        ("vae", "block_out_channels", "16,32,32", r"block_out_channels must be a non-empty tuple of positive ints"),
        ("vae", "temporal_downsample", ["true", "true"], r"temporal_downsample must hold bools"),
        ("vae", "latents_std", "1", r"latents_std must be a list of numbers"),
        ("vae", "latent_channels", "4", r"latent_channels must be a positive int, got '4'"),
    ],
)
def test_config_with_wrong_types(fresh_copy, component, key, value, match):
    folder = fresh_copy() / component
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, key: value}))
    model_class = SpacetimeDiTModel if component == "transformer" else AutoencoderKLSpacetime
    with pytest.raises(ValueError, match=match):
        model_class.from_pretrained(folder, use_safetensors=True)


def test_config_that_is_not_json(fresh_copy, tmp_path, capsys):
    folder = fresh_copy()
    (folder / "transformer" / "config.json").write_text("{not json")
    with pytest.raises(OSError, match=r"config file at '.*transformer/config.json' is not a valid JSON file"):
        SpacetimeDiTModel.from_pretrained(folder / "transformer", use_safetensors=True)
    (folder / "model_index.json").write_text("{not json")
    assert "model_index.json' is not a valid JSON file" in _cli_error(folder, tmp_path, capsys)


# 3. model_index.json naming unknown classes


@pytest.mark.parametrize(
    "entry, match",
    [
        (
            ["diffusers_spacetime", "SpacetimeNoSuchModel"],
            r"`diffusers_spacetime` has no class `SpacetimeNoSuchModel`",
        ),
        (["diffusers", "NoSuchDiffusersModel"], r"`diffusers` has no class `NoSuchDiffusersModel`"),
        # never imported: importing a module a repository names would run its code
        (
            ["no_such_library", "Foo"],
            r"no_such_library is not one of the libraries Diffusers can load components from",
        ),
    ],
)
def test_model_index_naming_an_unknown_class(fresh_copy, tmp_path, capsys, entry, match):
    folder = fresh_copy()
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "transformer": entry}))
    with pytest.raises(ValueError, match=match):
        SpacetimeVideoPipeline.from_pretrained(folder, use_safetensors=True)
    with pytest.raises(ValueError, match=match):
        DiffusionPipeline.from_pretrained(folder, use_safetensors=True)
    assert "could not load --model" in _cli_error(folder, tmp_path, capsys)


# 4. Planted pickles: nothing runs


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PAYLOAD_RAN"
    yield path
    assert not path.exists(), "a planted pickle ran its payload"


def test_the_planted_payload_is_live(tmp_path):
    # Control: full unpickling (in a throwaway process) does run it, so its absence below means something.
    for torch_format in (True, False):
        path, marker = tmp_path / f"evil-{torch_format}.bin", tmp_path / f"ran-{torch_format}"
        plant_pickle(path, marker, torch_format=torch_format)
        load = f"import torch; torch.load({str(path)!r}, weights_only=False)" if torch_format else (
            f"import pickle; pickle.load(open({str(path)!r}, 'rb'))"
        )  # fmt: skip
        env = {**os.environ, "PYTHONPATH": os.getcwd()}
        subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, timeout=120)
        assert marker.exists()


@pytest.mark.parametrize("torch_format", [True, False], ids=["torch.save", "bare-pickle"])
def test_planted_model_pickle_runs_nothing(fresh_copy, tmp_path, capsys, marker, torch_format):
    folder = fresh_copy()
    (folder / "vae" / WEIGHTS).unlink()
    plant_pickle(folder / "vae" / "diffusion_pytorch_model.bin", marker, torch_format)
    # The package's loaders pass use_safetensors=True: the pickle is never opened.
    with pytest.raises(OSError, match=rf"no file named {WEIGHTS}"):
        AutoencoderKLSpacetime.from_pretrained(folder / "vae", use_safetensors=True)
    with pytest.raises(OSError, match=rf"no file named {WEIGHTS}"):
        SpacetimeVideoPipeline.from_pretrained(folder, use_safetensors=True)
    assert f"no file named {WEIGHTS}" in _cli_error(folder, tmp_path, capsys)
    # diffusers' default falls back to the .bin, read with torch.load(weights_only=True): refused before it runs.
    with pytest.raises(
        OSError, match=r"Unable to load weights from checkpoint file for '.*diffusion_pytorch_model.bin'"
    ):
        AutoencoderKLSpacetime.from_pretrained(folder / "vae")
    with pytest.raises(OSError, match=r"diffusion_pytorch_model.bin"):
        SpacetimeVideoPipeline.from_pretrained(folder)


@pytest.mark.parametrize("torch_format", [True, False], ids=["torch.save", "bare-pickle"])
def test_planted_lora_pickle_runs_nothing(tokenizer, tmp_path, marker, torch_format):
    pipe = make_pipeline(tokenizer)
    folder = tmp_path / "lora"
    folder.mkdir()
    plant_pickle(folder / "pytorch_lora_weights.bin", marker, torch_format)
    # Default (pickles allowed, weights-only): refused, and the message says why.
    with pytest.raises(
        OSError, match=r"Refused to load the LoRA pickle 'pytorch_lora_weights.bin': it holds more than"
    ):
        pipe.load_lora_weights(folder)
    with pytest.raises(OSError, match=r"Refused to load the LoRA pickle '.*pytorch_lora_weights.bin'"):
        pipe.load_lora_weights(folder / "pytorch_lora_weights.bin")
    # use_safetensors=True: before, the loader still picked the .bin; now it is never opened.
    with pytest.raises(
        ValueError, match=r"use_safetensors=True, but the LoRA weights '.*pytorch_lora_weights.bin' are not"
    ):
        pipe.load_lora_weights(folder, use_safetensors=True)
    assert pipe.get_list_adapters() == {}


def _accelerate_checkpoint(tmp_path, with_ema: bool):
    """A real `save_checkpoint` of a tiny model and optimizer (with an EMA, as train_text_to_video --use_ema)."""
    from accelerate import Accelerator
    from diffusers.training_utils import EMAModel

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    if with_ema:
        accelerator.register_for_checkpointing(EMAModel(model.parameters()))
    checkpointing.save_checkpoint(accelerator, tmp_path / "run", 1, None)
    return accelerator, tmp_path / "run" / "checkpoint-1"


def test_planted_pickle_in_a_training_checkpoint_runs_nothing(tmp_path, marker):
    accelerator, checkpoint = _accelerate_checkpoint(tmp_path, with_ema=True)
    assert checkpointing.resolve_resume_path(tmp_path / "run", "latest") == checkpoint  # real states pass
    # accelerate unpickles custom states (the EMA) with weights_only=False, and silently skips RNG states it cannot
    # read: resuming now reads both weights-only first and refuses a foreign one.
    for name in ("custom_checkpoint_0.pkl", "random_states_0.pkl"):
        shutil.copy(checkpoint / name, tmp_path / "original")
        plant_pickle(checkpoint / name, marker)
        for reference in ("latest", str(checkpoint)):
            with pytest.raises(ValueError, match=rf"refusing '.*{name}': it is not a plain state \(.*posix.system"):
                checkpointing.resolve_resume_path(tmp_path / "run", reference)
        shutil.copy(tmp_path / "original", checkpoint / name)
    # The optimizer state: accelerate reads it weights-only itself.
    plant_pickle(checkpoint / "optimizer.bin", marker)
    with pytest.raises(pickle.UnpicklingError, match=r"Weights only load failed"):
        accelerator.load_state(str(checkpoint))


# 5. What the package writes


def test_the_package_writes_no_pickles(saved, tokenizer, tmp_path):
    pipe = make_pipeline(tokenizer)
    from peft import LoraConfig

    pipe.transformer.add_adapter(LoraConfig(r=2, target_modules=["to_q"]), adapter_name="a")
    pipe.save_lora_weights(tmp_path / "lora", transformer_lora_layers=_lora_layers(pipe))
    pipe.vae.save_pretrained(tmp_path / "vae")
    written = [path for folder in (saved, tmp_path) for path in folder.rglob("*") if path.is_file()]
    assert any(path.suffix == ".safetensors" for path in written)
    assert not [path for path in written if path.name.lower().endswith(PICKLE_SUFFIXES)]


def _lora_layers(pipe):
    from peft.utils import get_peft_model_state_dict

    return get_peft_model_state_dict(pipe.transformer, adapter_name="a")
