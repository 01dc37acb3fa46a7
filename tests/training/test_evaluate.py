"""training/evaluate.py end to end on a tiny untrained pipeline: it runs, scores the ground truth perfectly, and
writes its table."""

import json

import pytest

from diffusers_spacetime import SpacetimeDiTModel
from diffusers_spacetime.cli import build_tiny_random_pipeline
from training import evaluate


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    pipe = build_tiny_random_pipeline(seed=0)
    pipe.save_pretrained(folder / "pipe")
    SpacetimeDiTModel.from_config(pipe.transformer.config, attention_span="frame").save_pretrained(folder / "frame")
    return folder


def test_evaluate_writes_table_and_scores_ground_truth(tiny_checkpoint, tmp_path):
    args = evaluate.parse_args(
        ["--model", str(tiny_checkpoint / "pipe"), "--baseline_transformer", str(tiny_checkpoint / "frame"),
         "--output_dir", str(tmp_path), "--num_seen", "2", "--num_held_out", "1", "--steps", "2"]
    )  # fmt: skip
    report = evaluate.main(args)
    truth = report["summaries"]["ground truth (data)"]
    assert truth["seen"]["adherent_pct"] == 100 and truth["held_out"]["adherent_pct"] == 100
    assert set(report["summaries"]) == {"ground truth (data)", "spacetime", "per-frame"}
    assert report["num_videos"] == 3 and len(report["videos"]["per-frame"]) == 3
    assert {"synthetic_held_out", "mandelbrot", "life"} <= set(report["vae_psnr"])
    assert "first_frame_psnr" in report["image_to_video"]
    table = (tmp_path / "results.md").read_text()
    assert "| Adherence, held-out (%) | 100 |" in table and "reproduce:" in table
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 2


def test_baseline_must_be_per_frame(tiny_checkpoint, tmp_path):
    args = evaluate.parse_args(
        ["--model", str(tiny_checkpoint / "pipe"), "--baseline_transformer", str(tiny_checkpoint / "pipe" / "transformer"),
         "--output_dir", str(tmp_path), "--num_seen", "1", "--num_held_out", "0", "--skip_vae", "--skip_image_to_video"]
    )  # fmt: skip
    with pytest.raises(ValueError, match="attention_span='frame'"):
        evaluate.main(args)


def test_bad_counts_are_rejected():
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--model", "m", "--output_dir", "o", "--steps", "0"])
