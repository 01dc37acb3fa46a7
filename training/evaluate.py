"""Measure on a trained pipeline whether spacetime attention beats per-frame generation.

Generates a video for each evaluation prompt (combinations seen in training and held-out ones) with the pipeline and,
with `--baseline_transformer`, with the same pipeline whose transformer is the per-frame baseline
(`attention_span="frame"`, same data and steps). Every video is scored by `diffusers_spacetime.evaluation` (a detector
that knows the synthetic geometry): prompt adherence, trajectory jitter, appearance flicker, persistence and
re-emergence after occlusion. The ground-truth clips of the same prompts are scored too: what a perfect generator
gets. Also measured: the VAE's reconstruction PSNR on held-out synthetic clips and on ffmpeg's `mandelbrot` and `life`
sources, image-to-video / continuation (first-frame PSNR, start position, the seam), and how much each model's loss on
the ground-truth clips rises when their captions are changed (direction reversed or turned, color changed, dropped):
whether it uses those words at all.

Usage:
    python training/evaluate.py --model checkpoints/spacetime-shapes \
        --baseline_transformer checkpoints/spacetime-shapes-perframe-transformer --output_dir runs/eval
Writes results.json and results.md (the README's table) to --output_dir.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file: find `training`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers_spacetime import SpacetimeDiTModel, SpacetimeImageToVideoPipeline, SpacetimeVideoPipeline, evaluation
from diffusers_spacetime.evaluation import psnr
from training import make_shapes_dataset as shapes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Pipeline folder (or Hub id) to evaluate.")
    parser.add_argument(
        "--baseline_transformer", default=None, help="SpacetimeDiTModel folder of the per-frame baseline."
    )
    parser.add_argument("--output_dir", required=True, help="Where results.json, results.md and samples go.")
    parser.add_argument(
        "--holdout",
        action="append",
        default=None,
        help="Held-out combination(s) as for make_shapes_dataset.py; default: the checkpoint's training hold-outs "
        "(red,circle,left_to_right and blue,triangle,top_to_bottom).",
    )
    counts = (  # (flag, default, help): the sizes of the evaluation, checked below
        ("num_seen", 24, "Seen combinations to evaluate (sampled, seeded)."),
        ("num_held_out", 8, "Held-out combinations to evaluate."),
        ("num_held_out_phrasing", None, "Seen combinations prompted in held-out phrasings (templates and words never "
         "in the training captions); default: a third of --num_seen."),
        ("seeds", 1, "Videos per prompt (seeds 0..n-1)."),
        ("steps", 25, "Denoising steps."),
    )  # fmt: skip
    for name, default, text in counts:
        parser.add_argument(f"--{name}", type=int, default=default, help=text)
    parser.add_argument("--guidance_scale", type=float, default=5.0, help="Classifier-free guidance scale.")
    parser.add_argument("--skip_vae", action="store_true", help="Skip the VAE reconstruction PSNR.")
    parser.add_argument("--skip_image_to_video", action="store_true", help="Skip image-to-video and continuation.")
    parser.add_argument(
        "--skip_sensitivity",
        action="store_true",
        help="Skip the loss with the captions changed (caption_sensitivity).",
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the prompt sampling.")
    parser.add_argument(
        "--new_color",
        action="append",
        default=[],
        help="A color word added for a LoRA concept, as for make_shapes_dataset.py ('pink=240,100,170'); evaluate "
        "it with --holdout color=pink --num_seen 0.",
    )
    parser.add_argument(
        "--lora_weights", default=None, help="LoRA adapter folder (train_lora.py's output_dir/lora) to load first."
    )
    args = parser.parse_args(argv)
    if args.num_held_out_phrasing is None:
        args.num_held_out_phrasing = args.num_seen // 3
    for name, _, _ in counts:
        if getattr(args, name) < (0 if name.startswith("num_") else 1):
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    return args


# 1. Prompts
def evaluation_combinations(
    holdouts, num_seen: int, num_held_out: int, seed: int, num_held_out_phrasing: int = 0
) -> list[dict]:
    """Seen and held-out attribute combinations, each tagged with `split` and its `prompt`: the canonical caption,
    or for the "held_out_phrasing" split (seen combinations) one in templates and words kept out of training."""
    rng = np.random.default_rng(seed)
    seen = shapes.combination_grid(holdouts)
    held_out = shapes.combination_grid(holdouts, only_holdout=True)
    picks = []
    splits = (("seen", seen, num_seen), ("held_out", held_out, num_held_out))
    for split, grid, count in splits + (("held_out_phrasing", seen, num_held_out_phrasing),):
        for index in rng.choice(len(grid), size=min(count, len(grid)), replace=False):
            phrasing = "held_out" if split == "held_out_phrasing" else "canonical"
            picks.append({**grid[index], "split": split, "prompt": shapes.varied_caption(grid[index], rng, phrasing)})
    return picks


def reference_clip(attributes: dict, seed: int, height: int, width: int, num_frames: int) -> np.ndarray:
    """The ground-truth rendering of a combination: uint8 (F, H, W, 3)."""
    rng = np.random.default_rng(seed)
    spec = shapes.make_clip_spec(
        {k: v for k, v in attributes.items() if k in shapes.ATTRIBUTES}, rng, height, width, num_frames
    )
    return shapes.render_clip(spec)


# 2. Scoring
def score(frames: np.ndarray, attributes: dict) -> dict:
    metrics = evaluation.evaluate_video(frames, attributes)
    return {**metrics, "split": attributes["split"], "occluder": attributes["occluder"]}


def summarize_by_split(results: list[dict]) -> dict:
    groups = {
        "all": results,
        "seen": [r for r in results if r["split"] == "seen"],
        "held_out": [r for r in results if r["split"] == "held_out"],
        "held_out_phrasing": [r for r in results if r["split"] == "held_out_phrasing"],
        "occluded": [r for r in results if r["occluder"] != "none"],
    }
    return {name: evaluation.summarize(rows) for name, rows in groups.items() if rows}


def generate_and_score(pipe, combinations, args, height, width, num_frames, keep: set[int] = frozenset()):
    """Scores one video per (prompt, seed); returns the scores and the seed-0 videos of the prompts in `keep`."""
    results, kept = [], {}
    for index, attributes in enumerate(combinations):
        prompt = attributes["prompt"]
        for seed in range(args.seeds):
            generator = torch.Generator().manual_seed(seed)
            frames = pipe(
                prompt,
                height=height,
                width=width,
                num_frames=num_frames,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance_scale,
                generator=generator,
            ).frames[0]  # (F, H, W, 3) in [0, 1]
            results.append({**score(frames, attributes), "prompt": prompt, "seed": seed})
            if seed == 0 and index in keep:
                kept[index] = (frames * 255).round().astype(np.uint8)
    return results, kept


def sample_indices(combinations: list[dict], count: int = 4) -> list[int]:
    """The prompts to show: the first held-out one, the first behind the wall, then the first others."""
    picks = []
    for wanted in (lambda c: c["split"] == "held_out", lambda c: c["occluder"] != "none"):
        picks += [i for i, c in enumerate(combinations) if wanted(c) and i not in picks][:1]
    picks += [i for i in range(len(combinations)) if i not in picks]
    return sorted(picks[:count])


def write_samples(samples_dir: Path, combinations: list[dict], rows: dict[str, dict[int, np.ndarray]]) -> list[dict]:
    """Per sample prompt, the rows' videos (ground truth, spacetime, per-frame: uint8 (F, H, W, 3)) side by side as a
    GIF (2x nearest upscale, one panel per row) and stacked as a PNG strip of every other frame."""
    from PIL import Image

    samples_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index in next(iter(rows.values())):
        videos = [rows[name][index] for name in rows]
        num_frames = min(len(video) for video in videos)
        gap = np.full((num_frames, videos[0].shape[1], 2, 3), 255, np.uint8)  # white 2 px column between panels
        side = np.concatenate([part for video in videos for part in (video[:num_frames], gap)][:-1], axis=2)
        side = side.repeat(2, axis=1).repeat(2, axis=2)  # (F, 2H, 2W', 3)
        gif = [Image.fromarray(frame) for frame in side]
        gif[0].save(samples_dir / f"{index:02d}.gif", save_all=True, append_images=gif[1:], duration=125, loop=0)
        strip = np.concatenate([np.concatenate(list(video[:num_frames:2]), axis=1) for video in videos], axis=0)
        Image.fromarray(strip).save(samples_dir / f"{index:02d}.png", optimize=True)
        written.append({"index": index, "prompt": combinations[index]["prompt"], "rows": list(rows),
                        "split": combinations[index]["split"]})  # fmt: skip
    (samples_dir / "samples.json").write_text(json.dumps(written, indent=2) + "\n")
    return written


# 3. The VAE's reconstruction
def to_model_video(clips: np.ndarray) -> torch.Tensor:
    """uint8 clips (B, F, H, W, 3) -> (B, 3, F, H, W) float32 in [-1, 1], what the VAE reads."""
    return torch.as_tensor(np.array(clips)).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """(B, 3, F, H, W) in [-1, 1] -> uint8 (B, F, H, W, 3): the inverse of `to_model_video`, clamped."""
    return ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1).cpu().numpy()


@torch.no_grad()
def reconstruct(vae, frames: np.ndarray) -> np.ndarray:
    """uint8 (F, H, W, 3) -> the VAE's reconstruction (posterior mode), uint8."""
    video = to_model_video(frames[None]).to(vae.device, vae.dtype)  # (1, 3, F, H, W)
    return to_uint8(vae.decode(vae.encode(video).latent_dist.mode()).sample)[0]


def ffmpeg_source(name: str, height: int, width: int, num_frames: int) -> np.ndarray:
    """Frames of one of ffmpeg's built-in video sources (real, non-trivial content, no files needed)."""
    import imageio_ffmpeg

    command = [
        imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i", f"{name}=size={width}x{height}:rate=8",
        "-frames:v", str(num_frames), "-f", "rawvideo", "-pix_fmt", "rgb24", "-",
    ]  # fmt: skip
    raw = subprocess.run(command, check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(num_frames, height, width, 3)


def vae_psnr(vae, combinations, height, width, num_frames) -> dict:
    synthetic = [psnr(clip, reconstruct(vae, clip)) for clip in
                 (reference_clip(c, 100 + i, height, width, num_frames) for i, c in enumerate(combinations))]  # fmt: skip
    result = {"synthetic_held_out": float(np.mean(synthetic))}
    for source in ("mandelbrot", "life"):
        clip = ffmpeg_source(source, height, width, num_frames)
        result[source] = psnr(clip, reconstruct(vae, clip))
    return result


def vae_detection(vae, combinations, height, width, num_frames) -> dict:
    """What the detector reads from the VAE's reconstructions of the prompts' ground-truth clips: an upper bound on
    what any transformer over these latents can score (a color the decoder cannot draw is never right)."""
    scores = [score(reconstruct(vae, reference_clip(c, 200 + i, height, width, num_frames)), c)
              for i, c in enumerate(combinations)]  # fmt: skip
    summary = evaluation.summarize(scores)
    return {f"{key}_correct_pct": summary[f"{key}_correct_pct"] for key in ("color", "shape", "direction")}


CAPTION_VARIANTS = {
    "direction reversed": shapes.REVERSED_DIRECTIONS,
    "direction turned 90 degrees": {"left_to_right": "top_to_bottom", "top_to_bottom": "left_to_right",
                                    "right_to_left": "bottom_to_top", "bottom_to_top": "right_to_left"},
    "color changed": None,  # the next palette color
    "caption dropped": None,  # the empty prompt
}  # fmt: skip


def changed_caption(attributes: dict, variant: str) -> str:
    """The canonical caption of `attributes` with one part changed as `variant` (a key of CAPTION_VARIANTS) says."""
    if variant == "caption dropped":
        return ""
    if variant == "color changed":
        colors = list(shapes.PALETTE)
        return shapes.caption({**attributes, "color": colors[(colors.index(attributes["color"]) + 1) % len(colors)]})
    return shapes.caption({**attributes, "direction": CAPTION_VARIANTS[variant][attributes["direction"]]})


@torch.no_grad()
def caption_sensitivity(pipe, clips, combinations, sigmas=(0.95, 0.8, 0.5), batch_size=16) -> dict:
    """Does the transformer use each part of the caption? Its flow-matching loss on the ground-truth clips with their
    own caption, and how much it rises (%) with the caption changed: a model that ignores the direction words has the
    same loss with the direction reversed. Same noise for every caption; the noise levels where layout and motion
    are chosen (0.95) down to where the clip is half visible (0.5)."""
    video = to_model_video(np.stack(clips))  # (N, 3, F, H, W)
    latents = pipe.normalize_latents(pipe.vae.encode(video.to(pipe.vae.dtype)).latent_dist.mode().float())
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))  # (N, C, F, H, W)
    captions = {"own caption": [shapes.caption(c) for c in combinations]}
    captions.update({variant: [changed_caption(c, variant) for c in combinations] for variant in CAPTION_VARIANTS})
    losses = {}  # caption -> sigma -> mean loss
    for name, texts in captions.items():
        totals = dict.fromkeys(sigmas, 0.0)
        for start in range(0, len(texts), batch_size):
            x0, n = latents[start : start + batch_size], noise[start : start + batch_size]
            embeds, _, mask, _ = pipe.encode_prompt(
                texts[start : start + batch_size], do_classifier_free_guidance=False
            )
            for sigma in sigmas:
                prediction = pipe.transformer(
                    hidden_states=((1 - sigma) * x0 + sigma * n).to(pipe.transformer.dtype),
                    timestep=torch.full((len(x0),), sigma * 1000.0),
                    encoder_hidden_states=embeds.to(pipe.transformer.dtype),
                    encoder_attention_mask=mask,
                    return_dict=False,
                )[0].float()
                totals[sigma] += ((prediction - (n - x0)) ** 2).mean(dim=(1, 2, 3, 4)).sum().item()
        losses[name] = {sigma: total / len(texts) for sigma, total in totals.items()}
    own = losses["own caption"]
    return {
        "loss": {f"{sigma}": own[sigma] for sigma in sigmas},
        "rise_pct": {name: {f"{sigma}": 100.0 * (losses[name][sigma] / own[sigma] - 1.0) for sigma in sigmas}
                     for name in CAPTION_VARIANTS},
    }  # fmt: skip


def sensitivity_table(sensitivity: dict[str, dict]) -> str:
    names = list(sensitivity)
    sigmas = list(next(iter(sensitivity.values()))["loss"])
    lines = ["| loss rise (%) with the caption changed, at noise level " + " / ".join(sigmas) + " | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]  # fmt: skip
    for variant in CAPTION_VARIANTS:
        cells = [" / ".join(f"{sensitivity[n]['rise_pct'][variant][s]:+.1f}" for s in sigmas) for n in names]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# 4. Image-to-video and continuation
def image_to_video_metrics(pipe, combinations, args, height, width, num_frames) -> dict:
    """First-frame PSNR against the image, the start-position error, direction adherence; the seam of continuations."""
    i2v = SpacetimeImageToVideoPipeline.from_pipe(pipe)
    first_psnr, start_error, direction_ok, seam_jump, step_size = [], [], [], [], []
    ratio = pipe.vae.temporal_compression_ratio
    for index, attributes in enumerate(combinations):
        clip = reference_clip(attributes, 200 + index, height, width, num_frames)  # uint8 (F, H, W, 3)
        prompt = shapes.caption(attributes)
        generator = torch.Generator().manual_seed(0)
        kwargs = {"num_inference_steps": args.steps, "guidance_scale": args.guidance_scale, "generator": generator}
        frames = i2v(image=clip[0], prompt=prompt, height=height, width=width, num_frames=num_frames, **kwargs).frames[
            0
        ]
        first_psnr.append(psnr(clip[0], (frames[0] * 255).round()))
        generated, truth = evaluation.track_object(frames), evaluation.track_object(clip)
        if generated.present[0] and truth.present[0]:
            start_error.append(float(np.linalg.norm(generated.center[0] - truth.center[0])))
        direction_ok.append(evaluation.classify_direction(generated) == attributes["direction"])
        # Continuation: condition on the first 1 + r frames of the clip, generate the rest.
        head = clip[: 1 + ratio]
        generator = torch.Generator().manual_seed(0)
        kwargs["generator"] = generator
        continued = i2v(video=head, prompt=prompt, height=height, width=width, num_frames=num_frames, **kwargs).frames[
            0
        ]
        track = evaluation.track_object(continued)
        seam = len(head)
        if track.present[seam - 2 : seam + 1].all():
            # The jump at the seam against the steps just before it: 1.0 is a seamless continuation.
            before = np.linalg.norm(track.center[seam - 1] - track.center[seam - 2])
            across = np.linalg.norm(track.center[seam] - track.center[seam - 1])
            seam_jump.append(float(across))
            step_size.append(float(before))
    mean = lambda values: float(np.mean(values)) if values else float("nan")  # noqa: E731
    return {
        "first_frame_psnr": mean(first_psnr),
        "start_position_error_px": mean(start_error),
        "direction_correct_pct": 100 * mean(direction_ok),
        "continuation_seam_step_px": mean(seam_jump),
        "continuation_step_before_seam_px": mean(step_size),
    }


# 5. Report
def markdown_table(summaries: dict[str, dict]) -> str:
    rows = [
        ("Adherence, seen (%)", "seen", "adherent_pct", "{:.0f}"),
        ("Adherence, held-out (%)", "held_out", "adherent_pct", "{:.0f}"),
        ("Adherence, held-out phrasings (%)", "held_out_phrasing", "adherent_pct", "{:.0f}"),
        ("Color / shape / direction correct (%)", "all", ("color_correct_pct", "shape_correct_pct", "direction_correct_pct"), "{:.0f}"),
        ("Object color error vs the prompt's (RGB L2)", "all", "color_error", "{:.3f}"),
        ("Trajectory jitter (px, lower is better)", "all", "jitter", "{:.2f}"),
        ("Object color flicker (RGB L2)", "all", "color_flicker", "{:.3f}"),
        ("Object size flicker (relative)", "all", "size_flicker", "{:.3f}"),
        ("Background flicker (mean abs)", "all", "background_flicker", "{:.4f}"),
        ("Persistence (%)", "all", "persistence", "{:.0%}"),
        ("Re-emergence after the wall correct (%)", "occluded", "reemergence_correct_pct", "{:.0f}"),
    ]  # fmt: skip
    names = list(summaries)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for label, group, keys, fmt in rows:
        cells = []
        for name in names:
            summary = summaries[name].get(group, {})
            values = [summary.get(key, float("nan")) for key in (keys if isinstance(keys, tuple) else (keys,))]
            cells.append(" / ".join("n/a" if value != value else fmt.format(value) for value in values))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_lines(report: dict, args: argparse.Namespace) -> list[str]:
    """results.md: the metrics table, then one line per extra measurement that ran, then how to reproduce it."""
    lines = [markdown_table(report["summaries"]), ""]
    if "vae_psnr" in report:
        lines.append(
            "VAE reconstruction PSNR (dB): " + ", ".join(f"{k} {v:.1f}" for k, v in report["vae_psnr"].items())
        )
        lines.append(
            "Detector on the VAE's reconstructions of the ground truth (%): "
            + ", ".join(f"{k.split('_')[0]} {v:.0f}" for k, v in report["vae_detection"].items())
        )
    if "caption_sensitivity" in report:
        lines += ["", sensitivity_table(report["caption_sensitivity"]), ""]
    if "image_to_video" in report:
        lines.append(
            "Image-to-video / continuation: " + ", ".join(f"{k} {v:.2f}" for k, v in report["image_to_video"].items())
        )
    command = "python training/evaluate.py " + " ".join(sys.argv[1:])
    lines += ["", f"{report['num_videos'] // args.seeds} prompts x {args.seeds} seed(s), {args.steps} steps, "
              f"guidance {args.guidance_scale}; reproduce: `{command}`"]  # fmt: skip
    return lines


def load_models(args: argparse.Namespace) -> dict[str, SpacetimeVideoPipeline]:
    """The pipeline under test ("spacetime", LoRA loaded) and, with --baseline_transformer, the same pipeline with the
    per-frame transformer ("per-frame")."""
    pipe = SpacetimeVideoPipeline.from_pretrained(args.model, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    if args.lora_weights:
        pipe.load_lora_weights(args.lora_weights)
    models = {"spacetime": pipe}
    if args.baseline_transformer:
        baseline = SpacetimeDiTModel.from_pretrained(args.baseline_transformer, use_safetensors=True)
        if baseline.config.attention_span != "frame":
            raise ValueError(
                f"--baseline_transformer must have attention_span='frame', got {baseline.config.attention_span!r}"
            )
        models["per-frame"] = SpacetimeVideoPipeline.from_pipe(pipe, transformer=baseline)
    return models


def main(args: argparse.Namespace) -> dict:
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    for spec in args.new_color:
        shapes.add_color(*shapes.parse_new_color(spec))
    holdouts = shapes.parse_holdouts(args.holdout or list(shapes.SHIPPED_HOLDOUTS))
    models = load_models(args)
    pipe = models["spacetime"]
    size = (pipe.config.default_height, pipe.config.default_width, pipe.config.default_num_frames)
    combinations = evaluation_combinations(
        holdouts, args.num_seen, args.num_held_out, args.seed, args.num_held_out_phrasing
    )
    truth = [reference_clip(c, i, *size) for i, c in enumerate(combinations)]
    summaries = {"ground truth (data)": summarize_by_split([score(clip, c) for clip, c in zip(truth, combinations)])}
    keep = set(sample_indices(combinations))
    results, timings, shown = {}, {}, {"ground truth": {i: truth[i] for i in keep}}
    for name, model in models.items():
        start = time.perf_counter()
        results[name], shown[name] = generate_and_score(model, combinations, args, *size, keep)
        timings[name] = (time.perf_counter() - start) / max(len(results[name]), 1)
        summaries[name] = summarize_by_split(results[name])

    report = {"model": args.model, "baseline_transformer": args.baseline_transformer, "size": [size[2], *size[:2]],
              "steps": args.steps, "guidance_scale": args.guidance_scale, "num_videos": len(combinations) * args.seeds,
              "seconds_per_video": timings, "summaries": summaries, "videos": results}  # fmt: skip
    if not args.skip_vae:
        held_out = [c for c in combinations if c["split"] == "held_out"] or combinations
        report["vae_psnr"] = vae_psnr(pipe.vae, held_out, *size)
        report["vae_detection"] = vae_detection(pipe.vae, combinations, *size)
    if not args.skip_sensitivity:
        report["caption_sensitivity"] = {
            name: caption_sensitivity(model, truth, combinations) for name, model in models.items()
        }
    if not args.skip_image_to_video:
        report["image_to_video"] = image_to_video_metrics(pipe, combinations[:8], args, *size)
    if keep:
        report["samples"] = write_samples(output_dir / "samples", combinations, shown)
    lines = report_lines(report, args)
    (output_dir / "results.md").write_text("\n".join(lines) + "\n")
    (output_dir / "results.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main(parse_args())
