"""train_text_to_video.py: a few steps in-process, resume == uninterrupted, caches, conditioning frames, the final
pipeline folder, NaN stop, and a two-process accelerate launch."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from diffusers_spacetime import SpacetimeVideoPipeline
from training import checkpointing, flow_matching, run_log, train_autoencoder, train_text_to_video

from .conftest import HEIGHT, NUM_FRAMES, WIDTH, free_port, killed_run, launch_two_processes, nan_on_second_call

REPO = Path(__file__).resolve().parents[2]
TINY_VAE = str(REPO / "training" / "configs" / "vae_tiny.json")


def _args(data_dir, output_dir, *extra):
    return train_text_to_video.parse_args(
        ["--data_dir", str(data_dir), "--output_dir", str(output_dir), "--num_frames", str(NUM_FRAMES),
         "--height", str(HEIGHT), "--width", str(WIDTH), "--train_batch_size", "2", "--lr_warmup_steps", "1",
         "--report_to", "none", *extra]
    )  # fmt: skip


@pytest.fixture(scope="module")
def trained_vae(shapes_dir, tmp_path_factory):
    """A tiny VAE after one step of train_autoencoder.py: its config carries latents_mean / latents_std."""
    output_dir = tmp_path_factory.mktemp("vae")
    train_autoencoder.main(
        train_autoencoder.parse_args(
            ["--data_dir", str(shapes_dir), "--output_dir", str(output_dir), "--num_frames", "5",
             "--height", str(HEIGHT), "--width", str(WIDTH), "--train_batch_size", "2", "--max_train_steps", "1",
             "--stats_num_samples", "4", "--num_validation_clips", "2", "--report_to", "none"]
        )
    )  # fmt: skip
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return output_dir / "vae"


def test_every_flag_has_help():
    for action in train_text_to_video.build_parser()._actions:
        assert action.help, action.dest


def test_exactly_one_vae_source(shapes_dir, tmp_path):
    with pytest.raises(SystemExit):
        train_text_to_video.parse_args(["--data_dir", str(shapes_dir), "--output_dir", str(tmp_path)])


def test_a_few_steps_write_a_pipeline_that_loads_and_generates(shapes_dir, trained_vae, tmp_path):
    result = train_text_to_video.main(
        _args(shapes_dir, tmp_path, "--pretrained_vae_path", str(trained_vae), "--max_train_steps", "2",
              "--gradient_accumulation_steps", "2", "--use_ema", "--gradient_checkpointing", "--cache_latents",
              "--condition_frames_prob", "0.5", "--max_condition_frames", "2", "--checkpointing_steps", "1",
              "--checkpoints_total_limit", "1", "--validation_steps", "1", "--validation_inference_steps", "2",
              "--validation_prompts", "a red circle moves from left to right")
    )  # fmt: skip
    assert len(result["losses"]) == 2 and all(torch.isfinite(torch.tensor(result["losses"])))
    assert [step for step, _ in checkpointing.list_checkpoints(tmp_path)] == [2]
    assert (tmp_path / "checkpoint-2" / "custom_checkpoint_0.pkl").exists()  # the EMA state
    assert (tmp_path / "validation" / "step-1" / "00.mp4").exists() and result["validation_videos"]

    pipe = SpacetimeVideoPipeline.from_pretrained(result["pipeline_path"])
    assert (pipe.config.default_height, pipe.config.default_width, pipe.config.default_num_frames) == (
        HEIGHT,
        WIDTH,
        NUM_FRAMES,
    )
    assert list(pipe.vae.config.latents_mean) == list(
        json.loads((trained_vae / "config.json").read_text())["latents_mean"]
    )
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    video = pipe("a blue square moves slowly from top to bottom", num_inference_steps=2, output_type="np").frames
    assert video.shape == (1, NUM_FRAMES, HEIGHT, WIDTH, 3) and ((0 <= video) & (video <= 1)).all()


def test_resume_reproduces_the_uninterrupted_losses(shapes_dir, tmp_path):
    # 12 clips, batch 2, accumulation 2: 3 steps per epoch, so step 5 resumes inside epoch 1 (not at a boundary)
    common = ["--vae_config", TINY_VAE, "--max_train_steps", "6", "--gradient_accumulation_steps", "2",
              "--checkpointing_steps", "2", "--use_ema", "--condition_frames_prob", "0.5", "--validation_prompts"]  # fmt: skip
    full = train_text_to_video.main(_args(shapes_dir, tmp_path / "full", *common))
    for step in (2, 4):
        # What a kill leaves behind: a half-written checkpoint and one without its completion marker
        resumed_dir = killed_run(tmp_path / "full", step, tmp_path / f"from-{step}", half_written=step + 2)
        shutil.copytree(tmp_path / "full" / f"checkpoint-{step}", resumed_dir / "checkpoint-99")
        (resumed_dir / "checkpoint-99" / checkpointing.COMPLETE_MARKER).unlink()
        assert checkpointing.latest_checkpoint(resumed_dir).name == f"checkpoint-{step}"
        resumed = train_text_to_video.main(
            _args(shapes_dir, resumed_dir, *common, "--resume_from_checkpoint", "latest")
        )
        assert resumed["losses"] == pytest.approx(full["losses"][step:], rel=1e-6), step
        assert not (resumed_dir / f".tmp-checkpoint-{step + 2}").exists()


def test_cached_latents_give_the_same_loss(shapes_dir, tmp_path):
    common = ["--vae_config", TINY_VAE, "--max_train_steps", "1", "--validation_prompts", "--caption_dropout", "0.5"]
    plain = train_text_to_video.main(_args(shapes_dir, tmp_path / "plain", *common))
    cached = train_text_to_video.main(_args(shapes_dir, tmp_path / "cached", *common, "--cache_latents"))
    assert cached["losses"] == pytest.approx(plain["losses"], rel=1e-4)
    cache = tmp_path / "cached" / "cache"
    assert len(list(cache.glob("*.safetensors"))) == 12
    # A second run on the same cache reuses it and leaves its fingerprint alone (runs may share a cache at once)
    fingerprint_mtime = (cache / "fingerprint.json").stat().st_mtime_ns
    again = train_text_to_video.main(
        _args(shapes_dir, tmp_path / "again", *common, "--cache_latents", "--cache_dir", str(cache))
    )
    assert again["losses"] == pytest.approx(cached["losses"], rel=1e-6)
    assert (cache / "fingerprint.json").stat().st_mtime_ns == fingerprint_mtime
    assert sorted(path.name for path in cache.iterdir() if path.suffix not in (".safetensors", ".json")) == []


def test_attention_span_frame_trains_the_per_frame_baseline(shapes_dir, tmp_path):
    result = train_text_to_video.main(
        _args(shapes_dir, tmp_path, "--vae_config", TINY_VAE, "--max_train_steps", "1", "--attention_span", "frame",
              "--validation_prompts")
    )  # fmt: skip
    config = json.loads((Path(result["pipeline_path"]) / "transformer" / "config.json").read_text())
    assert config["attention_span"] == "frame"


def test_position_embeddings_added_to_a_pretrained_transformer_start_from_its_outputs(shapes_dir, tmp_path):
    common = ["--vae_config", TINY_VAE, "--max_train_steps", "3", "--validation_prompts", "--seed", "3"]
    base = train_text_to_video.main(_args(shapes_dir, tmp_path / "base", *common))
    transformer = Path(base["pipeline_path"]) / "transformer"
    plain = train_text_to_video.main(
        _args(shapes_dir, tmp_path / "plain", *common, "--pretrained_transformer_path", str(transformer))
    )
    extended = train_text_to_video.main(
        _args(shapes_dir, tmp_path / "extended", *common, "--pretrained_transformer_path", str(transformer),
              "--use_absolute_positional_embeddings", "--use_text_positional_embeddings")
    )  # fmt: skip
    assert extended["losses"][0] == pytest.approx(plain["losses"][0], rel=1e-6)  # zero-initialised: same model
    assert extended["losses"][2] != pytest.approx(plain["losses"][2], rel=1e-6)  # then the new map trains
    config = json.loads((Path(extended["pipeline_path"]) / "transformer" / "config.json").read_text())
    assert config["use_absolute_positional_embeddings"] is True and config["use_text_positional_embeddings"] is True


def test_nan_loss_stops_naming_the_step(shapes_dir, tmp_path, monkeypatch):
    nan_on_second_call(monkeypatch)
    with pytest.raises(FloatingPointError, match="at step 2 "):
        train_text_to_video.main(_args(shapes_dir, tmp_path, "--vae_config", TINY_VAE, "--max_train_steps", "3"))


class _RecordingTransformer(torch.nn.Module):
    """Returns the flow target on noisy frames and garbage on clean ones; records the timestep it got."""

    def __init__(self, latents, noise_holder):
        super().__init__()
        self.latents, self.noise_holder, self.timesteps = latents, noise_holder, []

    def forward(self, hidden_states, timestep, encoder_hidden_states, encoder_attention_mask, return_dict, **kwargs):
        self.timesteps.append(timestep)
        noise = self.noise_holder[0]
        prediction = (noise - self.latents).clone()
        clean = (hidden_states == self.latents).flatten(3).all(-1).all(1)  # (B, F): inputs equal to x0
        prediction[clean[:, None, :, None, None].expand_as(prediction)] = 1e6
        return (prediction,)


def test_conditioning_frames_are_clean_at_timestep_zero_and_out_of_the_loss(monkeypatch):
    latents = torch.randn(4, 4, 5, 2, 2, generator=torch.Generator().manual_seed(123))  # not the noise's seed
    noise_holder = []
    original_randn = torch.randn

    def recording_randn(*args, **kwargs):
        value = original_randn(*args, **kwargs)
        noise_holder.append(value)
        return value

    monkeypatch.setattr(flow_matching.torch, "randn", recording_randn)
    transformer = _RecordingTransformer(latents, noise_holder)
    density = flow_matching.TimestepDensity("logit_normal", logit_mean=0.0, logit_std=1.0, mode_scale=1.29)
    loss = flow_matching.flow_matching_loss(
        transformer, latents, torch.zeros(4, 3, 8), torch.ones(4, 3), FlowMatchEulerDiscreteScheduler(), density,
        torch.Generator().manual_seed(0), patch_frames=1, condition=flow_matching.ConditionFrames(1.0, max_frames=2),
    )  # fmt: skip
    assert loss.item() == 0.0  # the garbage predicted for clean frames is not in the loss
    timestep = transformer.timesteps[0]
    assert timestep.shape == (4, 5)
    assert (timestep[:, 0] == 0).all() and (timestep[:, 2:] > 0).all()  # 1 or 2 clean frames, never all
    assert {int((row == 0).sum()) for row in timestep} <= {1, 2}

    flow_matching.flow_matching_loss(  # conditioning off: a (B,) timestep, as plain text-to-video
        transformer, latents, torch.zeros(4, 3, 8), torch.ones(4, 3), FlowMatchEulerDiscreteScheduler(), density,
        torch.Generator().manual_seed(0), patch_frames=1, condition=flow_matching.ConditionFrames(0.0, max_frames=2),
    )  # fmt: skip
    assert transformer.timesteps[1].shape == (4,)


def test_condition_mask_respects_tubelets():
    mask = flow_matching.condition_mask(64, 6, 1.0, 4, 2, torch.Generator().manual_seed(0))
    counts = mask.sum(1)
    assert set(counts.tolist()) <= {2, 4} and (mask[:, 0]).all()  # whole tubelets of 2, one noisy tubelet kept
    assert not flow_matching.condition_mask(8, 1, 1.0, 4, 1, torch.Generator()).any()  # one frame: none


def _launch_two_processes(output_dir, *extra):
    """train_text_to_video.py under `accelerate launch` with cpu_2proc.yaml (2 processes, gloo)."""
    return launch_two_processes(
        "train_text_to_video.py", "--output_dir", str(output_dir), "--num_frames", str(NUM_FRAMES),
        "--height", str(HEIGHT), "--width", str(WIDTH), "--train_batch_size", "2", "--lr_warmup_steps", "1",
        "--report_to", "none", *extra,
    )  # fmt: skip


def test_two_process_accelerate_launch(shapes_dir, tmp_path):
    """DDP: 2 processes x batch 2 == 1 process x batch 2 x accumulation 2 (losses, final weights); kill + resume."""
    common = ["--data_dir", str(shapes_dir), "--vae_config", TINY_VAE, "--max_train_steps", "4",
              "--checkpointing_steps", "2", "--use_ema", "--caption_dropout", "0.3", "--validation_prompts"]  # fmt: skip
    _launch_two_processes(tmp_path / "two", *common)
    two = tmp_path / "two"
    assert sorted(path.name for path in (two / "checkpoint-2").glob("random_states_*")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    rows = run_log.read_train_log(two)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]  # only the main process writes
    assert (two / "pipeline" / "model_index.json").exists()

    one = train_text_to_video.main(
        _args(shapes_dir, tmp_path / "one", *common[2:], "--gradient_accumulation_steps", "2")
    )
    assert [row["loss"] for row in rows] == pytest.approx(one["losses"], rel=1e-5)
    assert_same_weights(two / "pipeline" / "transformer", tmp_path / "one" / "pipeline" / "transformer")

    # Killed after checkpoint-2 (a half-written checkpoint-4 left behind): the resumed 2-process run continues exactly
    resumed = killed_run(two, 2, tmp_path / "resumed", half_written=4)
    _launch_two_processes(resumed, *common, "--resume_from_checkpoint", "latest")
    assert [row["loss"] for row in run_log.read_train_log(resumed)] == pytest.approx(
        [row["loss"] for row in rows[2:]], rel=1e-6
    )
    assert_same_weights(resumed / "pipeline" / "transformer", two / "pipeline" / "transformer", rtol=1e-6)


def assert_same_weights(folder, expected_folder, rtol=1e-5) -> None:
    from safetensors.torch import load_file

    expected = load_file(str(next(Path(expected_folder).glob("*.safetensors"))))
    actual = load_file(str(next(Path(folder).glob("*.safetensors"))))
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=rtol, atol=1e-6, msg=key)


@pytest.mark.slow
def test_short_real_run_learns(tmp_path):
    """The README's recipe at small scale: VAE then DiT on 128 generated 17 x 64 x 64 clips; both losses fall."""
    from training import make_shapes_dataset

    data = tmp_path / "shapes"
    make_shapes_dataset.generate_dataset(data, 128, seed=0)
    size = ["--num_frames", "17", "--height", "64", "--width", "64", "--report_to", "none"]
    vae = train_autoencoder.main(
        train_autoencoder.parse_args(
            ["--data_dir", str(data), "--output_dir", str(tmp_path / "vae"), *size, "--max_train_steps", "100",
             "--learning_rate", "1e-3", "--lr_warmup_steps", "10", "--stats_num_samples", "32"]
        )
    )  # fmt: skip
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    dit = train_text_to_video.main(
        train_text_to_video.parse_args(
            ["--data_dir", str(data), "--output_dir", str(tmp_path / "dit"), *size, "--pretrained_vae_path",
             vae["vae_path"], "--max_train_steps", "300", "--learning_rate", "1e-3", "--lr_warmup_steps", "20",
             "--cache_latents", "--use_ema", "--validation_prompts"]
        )
    )  # fmt: skip
    for losses in (vae["losses"], dit["losses"]):
        assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10


def test_fsdp_config_on_cpu_and_ema_under_fsdp_are_refused(shapes_dir, tmp_path):
    # accelerate 1.16 enables FSDP on GPUs only: launched on CPU with fsdp.yaml it would train plain DDP unnoticed.
    import yaml

    config = yaml.safe_load((REPO / "training" / "accelerate" / "fsdp.yaml").read_text())
    config.update(num_processes=2, mixed_precision="no", main_process_ip="127.0.0.1")
    config.pop("gpu_ids")
    config_file = tmp_path / "fsdp_cpu.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
        "--main_process_port", str(free_port()), str(REPO / "training" / "train_text_to_video.py"),
        "--data_dir", str(shapes_dir), "--output_dir", str(tmp_path / "run"), "--vae_config", TINY_VAE,
        "--max_train_steps", "1", "--report_to", "none", "--validation_prompts",
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode != 0
    assert "asks for FSDP, but accelerate runs MULTI_CPU" in completed.stderr

    fsdp = SimpleNamespace(distributed_type=train_text_to_video.DistributedType.FSDP)
    with pytest.raises(ValueError, match="--use_ema is not supported under FSDP"):
        train_text_to_video.check_parallelism(_args(shapes_dir, tmp_path, "--vae_config", TINY_VAE, "--use_ema"), fsdp)
    train_text_to_video.check_parallelism(_args(shapes_dir, tmp_path, "--vae_config", TINY_VAE), fsdp)
