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
         "--output_dir", str(tmp_path), "--num_seen", "2", "--num_held_out", "1", "--num_held_out_phrasing", "1",
         "--steps", "2"]
    )  # fmt: skip
    report = evaluate.main(args)
    truth = report["summaries"]["ground truth (data)"]
    assert truth["seen"]["adherent_pct"] == 100 and truth["held_out"]["adherent_pct"] == 100
    assert truth["held_out_phrasing"]["adherent_pct"] == 100
    assert set(report["summaries"]) == {"ground truth (data)", "spacetime", "per-frame"}
    assert report["num_videos"] == 4 and len(report["videos"]["per-frame"]) == 4
    prompts = {video["prompt"] for video in report["videos"]["spacetime"]}
    assert sum(1 for prompt in prompts if not _parses(prompt)) == 1  # the held-out phrasing: not the template
    assert {"synthetic_held_out", "mandelbrot", "life"} <= set(report["vae_psnr"])
    assert set(report["vae_detection"]) == {"color_correct_pct", "shape_correct_pct", "direction_correct_pct"}
    assert all(0 <= value <= 100 for value in report["vae_detection"].values())
    assert "first_frame_psnr" in report["image_to_video"]
    sensitivity = report["caption_sensitivity"]
    assert set(sensitivity) == {"spacetime", "per-frame"}
    assert set(sensitivity["spacetime"]["rise_pct"]) == set(evaluate.CAPTION_VARIANTS)
    table = (tmp_path / "results.md").read_text()
    assert "| Adherence, held-out (%) | 100 |" in table and "reproduce:" in table
    assert "| Adherence, held-out phrasings (%) | 100 |" in table
    assert "Detector on the VAE's reconstructions" in table
    assert "| direction reversed | " in table and "loss rise (%) with the caption changed" in table
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 2
    # Samples: ground truth, spacetime and per-frame side by side, as a GIF and a PNG strip per shown prompt
    from PIL import Image

    shown = report["samples"]
    assert len(shown) == 4 and shown[0]["rows"] == ["ground truth", "spacetime", "per-frame"]
    gif = Image.open(tmp_path / "samples" / f"{shown[0]['index']:02d}.gif")
    assert gif.n_frames == report["size"][0] and gif.size == (2 * (3 * 64 + 2 * 2), 2 * 64)
    strip = Image.open(tmp_path / "samples" / f"{shown[0]['index']:02d}.png")
    assert strip.size == (64 * ((report["size"][0] + 1) // 2), 3 * 64)


def _parses(prompt: str) -> bool:
    try:
        evaluate.shapes.parse_caption(prompt)
    except ValueError:
        return False
    return True


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


def test_new_color_concept_with_lora(tiny_checkpoint, tmp_path, restore_palette):
    """The LoRA concept evaluation: a color added at run time, only its combinations, an adapter loaded first."""
    from peft import LoraConfig, get_peft_model_state_dict

    from diffusers_spacetime import SpacetimeVideoPipeline

    pipe = SpacetimeVideoPipeline.from_pretrained(tiny_checkpoint / "pipe")
    pipe.transformer.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_v"]))
    pipe.save_lora_weights(tmp_path / "lora", transformer_lora_layers=get_peft_model_state_dict(pipe.transformer))
    report = evaluate.main(evaluate.parse_args(
        ["--model", str(tiny_checkpoint / "pipe"), "--output_dir", str(tmp_path / "eval"), "--steps", "1",
         "--new_color", "pink=240,100,170", "--holdout", "color=pink", "--num_seen", "0", "--num_held_out", "2",
         "--lora_weights", str(tmp_path / "lora"), "--skip_vae", "--skip_image_to_video"]
    ))  # fmt: skip
    assert [video["prompt"].split()[1] for video in report["videos"]["spacetime"]] == ["pink", "pink"]
    assert report["summaries"]["ground truth (data)"]["held_out"]["adherent_pct"] == 100


def test_sample_indices_show_held_out_and_occluded():
    combos = [{"split": "seen", "occluder": "none"}] * 3 + [{"split": "seen", "occluder": "wall"}]
    combos += [{"split": "held_out", "occluder": "none"}] * 2
    assert evaluate.sample_indices(combos, 4) == [0, 1, 3, 4]
    assert evaluate.sample_indices(combos[:1], 4) == [0]


def test_caption_sensitivity_is_zero_for_a_model_that_ignores_text(tiny_checkpoint):
    import torch

    from diffusers_spacetime import SpacetimeVideoPipeline

    pipe = SpacetimeVideoPipeline.from_pretrained(tiny_checkpoint / "pipe")
    combinations = evaluate.evaluation_combinations(evaluate.shapes.parse_holdouts([]), 3, 0, seed=0)
    clips = [evaluate.reference_clip(c, i, 64, 64, 9) for i, c in enumerate(combinations)]
    reacting = evaluate.caption_sensitivity(pipe, clips, combinations, sigmas=(0.9,))
    assert abs(reacting["rise_pct"]["caption dropped"]["0.9"]) > 1e-3  # a random model does read its text
    with torch.no_grad():  # text states all zero: the caption cannot matter
        pipe.transformer.text_embedder.linear_2.weight.zero_()
        pipe.transformer.text_embedder.linear_2.bias.zero_()
    deaf = evaluate.caption_sensitivity(pipe, clips, combinations, sigmas=(0.9,))
    assert all(abs(rise["0.9"]) < 1e-4 for rise in deaf["rise_pct"].values()), deaf
    assert deaf["loss"]["0.9"] > 0
