"""The model that ships in checkpoints/spacetime-shapes: the README's main command uses it by default, offline."""

import pytest
import torch

from diffusers_spacetime import SpacetimeVideoPipeline, cli, evaluation
from training.data import read_video_frames

pytestmark = pytest.mark.skipif(not cli.SHIPPED_CHECKPOINT.is_dir(), reason="no shipped checkpoint in this checkout")


def test_default_model_is_the_shipped_checkpoint_and_writes_a_real_clip(tmp_path, capsys):
    output = tmp_path / "video.mp4"
    status = cli.main(["a red circle moves from left to right", "--steps", "25", "--output", str(output), "--gif"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "NOT a trained model" not in captured.err and str(cli.SHIPPED_CHECKPOINT) in captured.out
    frames = read_video_frames(output, list(range(17)))  # the trained size: 17 frames at 64x64
    assert frames.shape == (17, 64, 64, 3) and output.with_suffix(".gif").is_file()
    # A trained model draws one saturated object on a gray scene in (nearly) every frame; noise would not.
    track = evaluation.track_object(frames)
    assert track.present.mean() >= 0.8


def test_shipped_folder_is_fp16_safetensors_and_loads_as_float32():
    files = {path.suffix for path in cli.SHIPPED_CHECKPOINT.rglob("*") if path.is_file()}
    assert ".safetensors" in files and not files & {".bin", ".pt", ".pkl", ".ckpt"}
    pipe = SpacetimeVideoPipeline.from_pretrained(cli.SHIPPED_CHECKPOINT, use_safetensors=True)
    assert pipe.transformer.dtype == pipe.vae.dtype == torch.float32
    assert (pipe.config.default_num_frames, pipe.config.default_height, pipe.config.default_width) == (17, 64, 64)
    assert pipe.transformer.config.attention_span == "spacetime"
