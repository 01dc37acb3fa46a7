"""train_lora.py: flags and their errors, a short run on generated shapes (lower fine-tune loss, changed outputs, the
adapter file, card, checkpoints and videos, the file reproducing the trained model in a fresh pipeline and from the
Hub), resume == uninterrupted, bf16, the NaN stop, and a two-process (DDP) launch."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import AutoTokenizer

from diffusers_spacetime import SpacetimeVideoPipeline
from tests.hub.conftest import fake_hub_server, hub  # noqa: F401  (fixtures: the in-test Hub)
from tests.pipelines.conftest import make_pipeline, minilm_path
from training import checkpointing, run_log, train_lora
from training.data import collate_videos, dataset_from_args

from .conftest import HEIGHT, NUM_FRAMES, WIDTH, killed_run, launch_two_processes, nan_on_second_call

REPO = Path(__file__).resolve().parents[2]
PROMPT = "a red circle moves from left to right"
ALL_LINEAR = "to_q,to_k,to_v,to_out.0,ff.net.0.proj,ff.net.2"


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids oversubscription (see tests/pipelines/conftest.py)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A saved tiny SpacetimeVideoPipeline (the pipeline tests' components) whose default size is the clips'."""
    pipe = make_pipeline(AutoTokenizer.from_pretrained(minilm_path()), default_num_frames=NUM_FRAMES)
    folder = tmp_path_factory.mktemp("base") / "pipeline"
    pipe.save_pretrained(folder)
    return folder


def _args(data_dir, base, output_dir, *extra):
    return train_lora.parse_args(
        ["--pretrained_model_name_or_path", str(base), "--data_dir", str(data_dir), "--output_dir", str(output_dir),
         "--num_frames", str(NUM_FRAMES), "--height", str(HEIGHT), "--width", str(WIDTH), "--train_batch_size", "2",
         "--rank", "4", "--report_to", "none", *extra]
    )  # fmt: skip


def frames(pipe) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return pipe(PROMPT, num_inference_steps=2, guidance_scale=3.0, generator=generator, output_type="np").frames


def test_every_flag_has_help():
    for action in train_lora.build_parser()._actions:
        assert action.help, action.dest


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--rank", "0"], "--rank"),
        (["--lora_alpha", "-1"], "--lora_alpha"),
        (["--lora_dropout", "1"], "--lora_dropout"),
        (["--target_modules", " , "], "--target_modules"),
        (["--push_to_hub"], "--hub_model_id"),
        (["--push_to_hub", "--hub_model_id", "user/lora"], "--base_model"),  # a local base has no Hub id
    ],
)
def test_bad_flags_raise_value_errors_naming_the_flag(shapes_dir, base_dir, tmp_path, extra, flag):
    with pytest.raises(ValueError, match=flag):
        _args(shapes_dir, base_dir, tmp_path, *extra)


def test_bad_base_folder_and_targets_fail_before_training(shapes_dir, base_dir, tmp_path):
    with pytest.raises(ValueError, match="--pretrained_model_name_or_path: .* neither a folder nor a Hub id"):
        train_lora.main(_args(shapes_dir, tmp_path / "missing", tmp_path / "out"))
    with pytest.raises(ValueError, match="--pretrained_model_name_or_path: .* has no model_index.json"):
        train_lora.main(_args(shapes_dir, base_dir / "transformer", tmp_path / "out"))
    with pytest.raises(ValueError, match=r"--target_modules \['to_qkv'\] match no linear layer .*'attn1.to_q'"):
        train_lora.main(_args(shapes_dir, base_dir, tmp_path / "out", "--target_modules", "to_q,to_qkv"))
    assert not (tmp_path / "out" / "validation").exists()  # failed before rendering anything


def test_only_the_adapter_trains(base_dir):
    args = train_lora.parse_args(
        ["--pretrained_model_name_or_path", str(base_dir), "--data_dir", ".", "--output_dir", ".", "--rank", "2",
         "--target_modules", "attn2.to_q,ff.net.2"]
    )  # fmt: skip
    pipe = train_lora.load_base_pipeline(args)
    config = train_lora.add_lora(pipe.transformer, args)
    assert config.lora_alpha == 2  # default alpha = rank: scale 1
    trainable = {name for name, param in pipe.transformer.named_parameters() if param.requires_grad}
    num_layers = pipe.transformer.config.num_layers
    assert len(trainable) == 2 * 2 * num_layers  # lora_A and lora_B of two layers per block
    assert all(".attn2.to_q.lora_" in name or ".ff.net.2.lora_" in name for name in trainable)
    assert not any(param.requires_grad for param in pipe.text_encoder.parameters())
    assert not any(param.requires_grad for param in pipe.vae.parameters())


def test_a_short_run_learns_saves_loads_and_pushes(shapes_dir, base_dir, tmp_path, hub):  # noqa: F811
    result = train_lora.main(
        _args(shapes_dir, base_dir, tmp_path, "--max_train_steps", "6", "--learning_rate", "3e-3",
              "--lora_alpha", "8", "--target_modules", ALL_LINEAR, "--gradient_checkpointing",
              "--checkpointing_steps", "3", "--checkpoints_total_limit", "1", "--num_eval_clips", "4",
              "--validation_prompt", PROMPT, "--validation_inference_steps", "2",
              "--push_to_hub", "--hub_model_id", "user/shapes-lora", "--hub_token", hub.token,
              "--base_model", "user/spacetime-base")
    )  # fmt: skip
    # Training lowered the loss on the fine-tune set (same clips, noise and timesteps before and after).
    assert len(result["losses"]) == 6 and np.isfinite(result["losses"]).all()
    assert result["eval_loss_after"] < result["eval_loss_before"]

    # The adapter file: diffusers keys prefixed `transformer.`, the LoRA config in its metadata.
    lora_path = tmp_path / "lora"
    with safe_open(str(lora_path / "pytorch_lora_weights.safetensors"), framework="pt") as handle:
        keys, metadata = list(handle.keys()), json.loads(handle.metadata()["lora_adapter_metadata"])
    assert keys and all(key.startswith("transformer.blocks.") and ".lora_" in key for key in keys)
    assert len(keys) == 2 * (2 * 4 + 2) * 2  # blocks x (attentions x projections + feed-forward) x (A, B)
    assert metadata["transformer.r"] == 4 and metadata["transformer.lora_alpha"] == 8
    assert sorted(metadata["transformer.target_modules"]) == sorted(ALL_LINEAR.split(","))
    assert result["adapter_bytes"] == (lora_path / "pytorch_lora_weights.safetensors").stat().st_size

    # Checkpoints hold the adapter, not the frozen base; the limit keeps the last one.
    assert [step for step, _ in checkpointing.list_checkpoints(tmp_path)] == [6]
    checkpoint_files = {path.name for path in (tmp_path / "checkpoint-6").iterdir()}
    assert "pytorch_lora_weights.safetensors" in checkpoint_files
    assert not any(name.startswith("model") for name in checkpoint_files)

    # Validation videos of the base (step 0) and of the saved adapter (step 6); the card.
    assert (tmp_path / "validation" / "step-0" / "00.mp4").exists()
    assert (tmp_path / "validation" / "step-6" / "00.mp4").exists()
    card = (lora_path / "README.md").read_text()
    for fact in ("base_model: user/spacetime-base", "rank 4, alpha 8", "| Optimizer steps | 6 |",
                 "Fine-tune set loss, with adapter", "`ff.net.2`", "| Gradient checkpointing | yes |"):  # fmt: skip
        assert fact in card, fact

    # A fresh pipeline with the saved file is the trained model: same fine-tune loss, other outputs than the base.
    fresh = SpacetimeVideoPipeline.from_pretrained(base_dir)
    fresh.set_progress_bar_config(disable=True)
    base = frames(fresh)
    fresh.load_lora_weights(lora_path, adapter_name="shapes")
    with_lora = frames(fresh)
    assert not np.allclose(with_lora, base, atol=1e-3)
    args = _args(shapes_dir, base_dir, tmp_path, "--num_eval_clips", "4")
    eval_set = train_lora.make_eval_set(
        dataset_from_args(args), collate_videos, fresh, args, torch.device("cpu"), torch.float32
    )
    scheduler = train_lora.FlowMatchEulerDiscreteScheduler.from_config(fresh.scheduler.config)
    reloaded_loss = train_lora.evaluate_loss(fresh.transformer, eval_set, scheduler, args, patch_frames=1)
    assert reloaded_loss == pytest.approx(result["eval_loss_after"], rel=1e-5)

    # The pushed repo: the card names the base, and the adapter loads by repo id.
    by_id = SpacetimeVideoPipeline.from_pretrained(base_dir)
    by_id.set_progress_bar_config(disable=True)
    by_id.load_lora_weights("user/shapes-lora", adapter_name="shapes", cache_dir=hub.cache_dir)
    np.testing.assert_array_equal(frames(by_id), with_lora)


def test_resume_reproduces_the_uninterrupted_losses_and_adapter(shapes_dir, base_dir, tmp_path):
    # 12 clips, batch 2, accumulation 2: 3 steps per epoch; resuming at step 2 skips 4 batches, then crosses an epoch.
    common = ["--max_train_steps", "5", "--gradient_accumulation_steps", "2", "--checkpointing_steps", "2",
              "--learning_rate", "1e-3", "--lora_dropout", "0.2", "--caption_dropout", "0.3", "--cache_latents",
              "--num_eval_clips", "0", "--validation_prompt"]  # fmt: skip
    full = train_lora.main(_args(shapes_dir, base_dir, tmp_path / "full", *common))
    resumed_dir = killed_run(tmp_path / "full", 2, tmp_path / "resumed", half_written=4)
    resumed = train_lora.main(_args(shapes_dir, base_dir, resumed_dir, *common, "--resume_from_checkpoint", "latest"))
    assert resumed["losses"] == pytest.approx(full["losses"][2:], rel=1e-6)
    assert not (resumed_dir / ".tmp-checkpoint-4").exists()
    assert_same_adapter(resumed_dir / "lora", tmp_path / "full" / "lora")

    # Resumed from a checkpoint at --max_train_steps (mid-epoch): nothing more trains, the checkpoint's adapter is saved.
    final_dir = killed_run(tmp_path / "full", 4, tmp_path / "final")
    common[1] = "4"
    done = train_lora.main(_args(shapes_dir, base_dir, final_dir, *common, "--resume_from_checkpoint", "latest"))
    assert done["losses"] == [] and done["global_step"] == 4
    assert_same_adapter(final_dir / "lora", final_dir / "checkpoint-4")


def assert_same_adapter(folder, expected_folder) -> None:
    name = "pytorch_lora_weights.safetensors"
    with safe_open(str(expected_folder / name), "pt") as expected, safe_open(str(folder / name), "pt") as actual:
        assert sorted(actual.keys()) == sorted(expected.keys())
        for key in expected.keys():
            torch.testing.assert_close(actual.get_tensor(key), expected.get_tensor(key), rtol=1e-5, atol=1e-7)


def test_bf16_keeps_the_adapter_float32(shapes_dir, base_dir, tmp_path):
    result = train_lora.main(
        _args(shapes_dir, base_dir, tmp_path, "--max_train_steps", "1", "--mixed_precision", "bf16",
              "--num_eval_clips", "1", "--validation_prompt")
    )  # fmt: skip
    assert np.isfinite(result["losses"]).all() and np.isfinite(result["eval_loss_after"])
    with safe_open(str(tmp_path / "lora" / "pytorch_lora_weights.safetensors"), "pt") as handle:
        assert {handle.get_tensor(key).dtype for key in handle.keys()} == {torch.float32}


def test_nan_loss_stops_naming_the_step(shapes_dir, base_dir, tmp_path, monkeypatch):
    nan_on_second_call(monkeypatch)
    with pytest.raises(FloatingPointError, match="at step 2 "):
        train_lora.main(
            _args(shapes_dir, base_dir, tmp_path, "--max_train_steps", "3", "--num_eval_clips", "0",
                  "--validation_prompt")
        )  # fmt: skip


def _launch_two_processes(base, output_dir, *extra):
    """train_lora.py under `accelerate launch` with cpu_2proc.yaml (2 processes, gloo)."""
    return launch_two_processes(
        "train_lora.py", "--pretrained_model_name_or_path", str(base), "--output_dir", str(output_dir),
        "--num_frames", str(NUM_FRAMES), "--height", str(HEIGHT), "--width", str(WIDTH), "--train_batch_size", "2",
        "--rank", "4", "--report_to", "none", *extra,
    )  # fmt: skip


def test_two_process_accelerate_launch(shapes_dir, base_dir, tmp_path):
    # DDP: the checkpoint hooks save the adapter once (main process) and every process its RNG state; 2 processes x
    # batch 2 train the adapter that 1 process x batch 2 x accumulation 2 trains; a killed run resumes exactly.
    common = ["--data_dir", str(shapes_dir), "--max_train_steps", "4", "--checkpointing_steps", "2",
              "--learning_rate", "1e-3", "--lora_dropout", "0.2", "--caption_dropout", "0.3", "--num_eval_clips", "1",
              "--validation_prompt"]  # fmt: skip
    two = tmp_path / "two"
    _launch_two_processes(base_dir, two, *common)
    files = sorted(path.name for path in (two / "checkpoint-2").iterdir())
    assert files == ["optimizer.bin", "pytorch_lora_weights.safetensors", "random_states_0.pkl",
                     "random_states_1.pkl", "scheduler.bin", "training_state.json"]  # fmt: skip
    rows = run_log.read_train_log(two)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    results = json.loads((two / "results.json").read_text())
    assert results["eval_loss_before"] is not None and (two / "lora" / "README.md").exists()

    one = train_lora.main(
        _args(shapes_dir, base_dir, tmp_path / "one", *common[2:], "--gradient_accumulation_steps", "2")
    )
    assert [row["loss"] for row in rows] == pytest.approx(one["losses"], rel=1e-5)
    assert_same_adapter(two / "lora", tmp_path / "one" / "lora")

    resumed = killed_run(two, 2, tmp_path / "resumed", half_written=4)
    _launch_two_processes(base_dir, resumed, *common, "--resume_from_checkpoint", "latest")
    assert [row["loss"] for row in run_log.read_train_log(resumed)] == pytest.approx(
        [row["loss"] for row in rows[2:]], rel=1e-6
    )
    assert_same_adapter(resumed / "lora", two / "lora")
