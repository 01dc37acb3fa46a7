"""train_autoencoder.py in-process on generated clips: a few steps, the saved VAE, its latent statistics, NaN stop."""

import json
from pathlib import Path

import pytest
import torch

from diffusers_spacetime import AutoencoderKLSpacetime
from training import checkpointing, run_log, train_autoencoder

from .conftest import HEIGHT, WIDTH, killed_run, launch_two_processes

REPO = Path(__file__).resolve().parents[2]


def _args(data_dir, output_dir, *extra):
    return train_autoencoder.parse_args(
        ["--data_dir", str(data_dir), "--output_dir", str(output_dir), "--num_frames", "5",
         "--height", str(HEIGHT), "--width", str(WIDTH), "--train_batch_size", "2", "--lr_warmup_steps", "0",
         "--num_validation_clips", "2", "--stats_num_samples", "4", "--report_to", "none", *extra]
    )  # fmt: skip


def test_every_flag_has_help():
    for action in train_autoencoder.build_parser()._actions:
        assert action.help, action.dest


def test_a_few_steps_save_a_vae_with_latent_statistics(shapes_dir, tmp_path):
    result = train_autoencoder.main(
        _args(shapes_dir, tmp_path, "--max_train_steps", "3", "--checkpointing_steps", "2", "--validation_steps", "2",
              "--checkpoints_total_limit", "1", "--report_to", "tensorboard")
    )  # fmt: skip
    assert len(result["losses"]) == 3 and all(torch.isfinite(torch.tensor(result["losses"])))
    assert result["global_step"] == 3 and 0 < result["validation_psnr"] < 60
    vae = AutoencoderKLSpacetime.from_pretrained(tmp_path / "vae")
    assert list(vae.config.latents_mean) == pytest.approx(result["latents_mean"])
    assert len(vae.config.latents_std) == vae.config.latent_channels and min(vae.config.latents_std) > 0
    assert [step for step, _ in checkpointing.list_checkpoints(tmp_path)] == [2]
    rows = run_log.read_train_log(tmp_path)
    assert [row["step"] for row in rows] == [1, 2, 3] and rows[0]["loss"] == pytest.approx(result["losses"][0])
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["first_loss"] == pytest.approx(result["losses"][0])
    assert any((tmp_path / "logs").rglob("events.out.tfevents*"))


def test_resume_continues_from_the_checkpoint(shapes_dir, tmp_path):
    full = train_autoencoder.main(
        _args(shapes_dir, tmp_path / "a", "--max_train_steps", "3", "--checkpointing_steps", "2")
    )
    resumed_dir = killed_run(tmp_path / "a", 2, tmp_path / "b")
    resume = ["--max_train_steps", "3", "--checkpointing_steps", "2", "--resume_from_checkpoint", "latest"]
    resumed = train_autoencoder.main(_args(shapes_dir, resumed_dir, *resume))
    assert resumed["losses"] == pytest.approx(full["losses"][2:], rel=1e-5, abs=1e-6)


def test_bad_clip_size_is_a_clear_error(shapes_dir, tmp_path):
    with pytest.raises(ValueError, match="num_frames must be 1 \\+ k \\* 4"):
        train_autoencoder.main(_args(shapes_dir, tmp_path, "--num_frames", "6", "--max_train_steps", "1"))


def test_nan_loss_stops_naming_the_step(shapes_dir, tmp_path, monkeypatch):
    original = AutoencoderKLSpacetime.decode

    def nan_decode(self, *args, **kwargs):
        output = original(self, *args, **kwargs)
        output.sample = output.sample * float("nan")
        return output

    monkeypatch.setattr(AutoencoderKLSpacetime, "decode", nan_decode)
    with pytest.raises(FloatingPointError, match="at step 1 "):
        train_autoencoder.main(_args(shapes_dir, tmp_path, "--max_train_steps", "2"))


def test_saturation_weights_favour_the_colored_object():
    video = torch.full((2, 3, 1, 4, 4), 0.8)  # neutral gray scene in [-1, 1]
    video[0, :, 0, 1, 1] = torch.tensor([0.7, -0.7, -0.7])  # one saturated (red) pixel
    weights = train_autoencoder.saturation_weights(video, 10.0)
    assert weights.shape == (2, 1, 1, 4, 4) and weights.mean().item() == pytest.approx(1.0)
    assert weights[0, 0, 0, 1, 1] / weights[0, 0, 0, 0, 0] == pytest.approx(1 + 10 * 0.7)
    with pytest.raises(ValueError, match="3 channels"):
        train_autoencoder.saturation_weights(torch.zeros(1, 1, 1, 4, 4), 10.0)


def test_saturation_weight_trains_and_rejects_negatives(shapes_dir, tmp_path):
    result = train_autoencoder.main(_args(shapes_dir, tmp_path, "--max_train_steps", "1", "--saturation_weight", "10"))
    assert result["global_step"] == 1 and all(torch.isfinite(torch.tensor(result["losses"])))
    with pytest.raises(ValueError, match="--saturation_weight must be 0 or more"):
        _args(shapes_dir, tmp_path, "--saturation_weight", "-1")


def test_color_augmentation_recolors_objects_and_keeps_grays():
    video = torch.full((8, 3, 2, 4, 4), 0.6)  # neutral gray scene in [-1, 1]
    video[:, :, :, 1, 1] = torch.tensor([0.7, -0.7, -0.7])[:, None]  # one red pixel per frame
    video[:, :, :, 2, 2] = torch.tensor([-0.2, -0.2, -0.2])[:, None]  # a darker gray one (the wall)
    augmented = train_autoencoder.color_augmentation(video, torch.Generator().manual_seed(0))
    assert augmented.shape == video.shape and augmented.abs().max() <= 1
    gray = torch.ones(4, 4, dtype=torch.bool)
    gray[1, 1] = False
    assert torch.allclose(augmented[..., gray], video[..., gray], atol=1e-6)
    colors = augmented[:, :, 0, 1, 1]  # (8, 3): eight different recolorings of the red pixel
    assert torch.cdist(colors, colors).add(torch.eye(8)).min() > 1e-3
    assert torch.equal(augmented[:, :, 0], augmented[:, :, 1])  # one recoloring per clip, the same in every frame
    again = train_autoencoder.color_augmentation(video, torch.Generator().manual_seed(0))
    assert torch.equal(augmented, again)
    untouched = train_autoencoder.color_augmentation(video, torch.Generator().manual_seed(0), probability=0.0)
    assert torch.allclose(untouched, video, atol=1e-6)
    with pytest.raises(ValueError, match="3 channels"):
        train_autoencoder.color_augmentation(torch.zeros(1, 1, 1, 4, 4))


def test_decoder_only_keeps_the_encoder_and_its_latent_statistics(shapes_dir, tmp_path):
    base = train_autoencoder.main(_args(shapes_dir, tmp_path / "base", "--max_train_steps", "1"))
    result = train_autoencoder.main(
        _args(shapes_dir, tmp_path / "dec", "--max_train_steps", "2", "--learning_rate", "1e-3",
              "--pretrained_vae_path", base["vae_path"], "--train_decoder_only", "--color_augmentation", "0.5")
    )  # fmt: skip
    before = AutoencoderKLSpacetime.from_pretrained(base["vae_path"])
    after = AutoencoderKLSpacetime.from_pretrained(result["vae_path"])
    for (name, old), new in zip(before.state_dict().items(), after.state_dict().values()):
        assert torch.equal(old, new) == (not name.startswith("decoder.")), name
    assert list(after.config.latents_mean) == list(before.config.latents_mean)
    assert list(after.config.latents_std) == list(before.config.latents_std)


def test_decoder_only_and_color_augmentation_flags_are_checked(shapes_dir, tmp_path):
    with pytest.raises(ValueError, match="--train_decoder_only needs --pretrained_vae_path"):
        _args(shapes_dir, tmp_path, "--train_decoder_only")
    with pytest.raises(ValueError, match="--color_augmentation must be a probability"):
        _args(shapes_dir, tmp_path, "--color_augmentation", "1.5")


def _launch_two_processes(output_dir, *extra):
    """train_autoencoder.py under `accelerate launch` with cpu_2proc.yaml (2 processes, gloo)."""
    return launch_two_processes(
        "train_autoencoder.py", "--output_dir", str(output_dir), "--num_frames", "5", "--height", str(HEIGHT),
        "--width", str(WIDTH), "--train_batch_size", "2", "--lr_warmup_steps", "0", "--num_validation_clips", "2",
        "--stats_num_samples", "4", "--report_to", "none", *extra,
    )  # fmt: skip


def test_two_process_accelerate_launch(shapes_dir, tmp_path):
    """DDP: 2 processes x batch 2 == 1 process x batch 2 x accumulation 2 (losses, weights); kill + resume."""
    from safetensors.torch import load_file

    # 8 training clips (4 held out): whole global batches of 4, so no process pads its epoch with repeated clips
    common = ["--data_dir", str(shapes_dir), "--max_train_steps", "4", "--checkpointing_steps", "2",
              "--learning_rate", "1e-3", "--num_validation_clips", "4"]  # fmt: skip
    two = tmp_path / "two"
    _launch_two_processes(two, *common)
    assert sorted(path.name for path in (two / "checkpoint-2").glob("random_states_*")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]
    rows = run_log.read_train_log(two)
    assert [row["step"] for row in rows] == [1, 2, 3, 4]
    one = train_autoencoder.main(
        _args(shapes_dir, tmp_path / "one", *common[2:], "--gradient_accumulation_steps", "2")
    )
    assert [row["loss"] for row in rows] == pytest.approx(one["losses"], rel=1e-5)

    def assert_same_vae(folder, expected_folder, rtol):
        expected = load_file(str(expected_folder / "vae" / "diffusion_pytorch_model.safetensors"))
        actual = load_file(str(folder / "vae" / "diffusion_pytorch_model.safetensors"))
        assert sorted(actual) == sorted(expected)
        for key, value in expected.items():
            torch.testing.assert_close(actual[key], value, rtol=rtol, atol=1e-6, msg=key)

    assert_same_vae(two, tmp_path / "one", rtol=1e-5)

    resumed = killed_run(two, 2, tmp_path / "resumed", half_written=4)
    _launch_two_processes(resumed, *common, "--resume_from_checkpoint", "latest")
    assert [row["loss"] for row in run_log.read_train_log(resumed)] == pytest.approx(
        [row["loss"] for row in rows[2:]], rel=1e-6
    )
    assert_same_vae(resumed, two, rtol=1e-6)
