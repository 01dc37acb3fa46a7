"""`SpacetimeVideoPipeline` end to end: seconds per video, and the cost curve against clip length and resolution.

Scope: one process builds a randomly initialised pipeline (weights do not change the cost), generates one video per
point and times each stage of the call, synchronising the device around it:

- `text`: `encode_prompt` (prompt and, with guidance, the negative prompt);
- `DiT`: every transformer forward (two per step with classifier-free guidance: the pipeline runs the conditional and
  unconditional branches as two calls); `DiT/step` is that total divided by the steps;
- `decode`: `decode_latents` (VAE decode + post-processing to a `(B, F, 3, H, W)` tensor);
- `other`: the rest of the call (scheduler, noise, checks).

Points: the preset's main size, then a *length series* (more frames at the main resolution) and a *resolution series*
(more pixels at the main frame count); "cost grows with the spacetime volume" is the plot of seconds per video
against frames x height x width, and of `DiT/step` against the token count with a fitted `a + b N + c N^2`
(attention is the quadratic term). Outputs in `--output-dir`: `pipeline_<device>.md` (the tables), `.json` (raw
numbers) and `pipeline_curve_<device>.png`.

Presets (random weights; state them when quoting numbers):
- `cpu`: the package's tiny test DiT (4 heads x 32, 4 layers, FFN 512, text width 128), the VAE at equal small
  widths as in `bench_vae.py` (32, 64, 128, 128; 8x8x4 compression, 16 channels), a 2-layer random BERT of width 128,
  32 text tokens; 17x128x128 main, 4 steps, guidance 5.
- `gpu`: the DiT at Wan2.1-1.3B dimensions (12 heads x 128, 30 layers, FFN 8960) with `text_embed_dim=384`, the
  default VAE (128, 256, 512, 512), and a random BERT at all-MiniLM-L6-v2 dimensions (384 wide, 6 layers: the
  package's default text encoder) with the pipeline's default 128 text tokens; 81x480x832 main, 4 steps, guidance 5.
  The 50-step figure is an extrapolation (text + 50 x DiT/step + decode), labelled as such.
The tokenizer is a word-piece vocabulary written to a temporary folder at run time (no download, no MiniLM package).

`--dry-run` shrinks any preset to toy sizes (same points, same code paths) to check the script on CPU before a GPU run.

Usage:
    python benchmarks/bench_pipeline.py --device cpu --output-dir benchmarks/results
    python benchmarks/bench_pipeline.py --device cuda --dtype bf16 --quick --output-dir "$OUT"
    python benchmarks/bench_pipeline.py --device cpu --preset gpu --dry-run --output-dir /tmp/dry
"""

import argparse
import functools
import json
import os
import string
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace

from measure import DTYPES, TimeBudget, device_name, free_memory, synchronize, timed
from report import (
    REPO,
    add_device_arguments,
    add_one_shot_arguments,
    markdown_table,
    one_line,
    one_shot_defaults,
    versions,
    write_results,
)

if REPO not in sys.path:
    sys.path.insert(0, REPO)  # `import diffusers_spacetime` from a checkout, without installing it

import torch  # noqa: E402

PROMPT = "a red circle moves from the left to the right over a blue square"

# ----------------------------------------------------------------------------------------------------------------
# 1. Presets
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class PipelinePreset:
    transformer: dict  # SpacetimeDiTModel kwargs
    vae: dict  # AutoencoderKLSpacetime kwargs
    text_encoder: dict  # BertConfig kwargs (vocab_size added at build time)
    max_sequence_length: int | None  # None: the pipeline's default (128)
    steps: int
    guidance_scale: float
    main: tuple[int, int, int]  # frames, height, width (pixels)
    length_series: list[int] = field(default_factory=list)  # frames at the main height x width
    resolution_series: list[tuple[int, int]] = field(default_factory=list)  # height x width at the main frames
    warmup: tuple[int, int, int] = (5, 64, 64)  # one 1-step call first: kernels, allocator, lazy init


TINY_DIT = {"num_attention_heads": 4, "attention_head_dim": 32, "num_layers": 4, "ffn_dim": 512, "text_embed_dim": 128}
# Wan2.1-1.3B dimensions are the model's defaults; only the text width follows the package's MiniLM encoder.
WAN13B_DIT = {"text_embed_dim": 384}
MINILM_DIMS = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}

PIPELINE_PRESETS = {
    "cpu": PipelinePreset(
        transformer=TINY_DIT,
        vae={"block_out_channels": (32, 64, 128, 128)},
        text_encoder={"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 256},
        max_sequence_length=32,
        steps=4,
        guidance_scale=5.0,
        main=(17, 128, 128),
        length_series=[9, 17, 33],
        resolution_series=[(64, 64), (128, 128), (192, 192)],
        warmup=(5, 64, 64),
    ),
    "gpu": PipelinePreset(
        transformer=WAN13B_DIT,
        vae={},
        text_encoder=MINILM_DIMS,
        max_sequence_length=None,
        steps=4,
        guidance_scale=5.0,
        main=(81, 480, 832),
        length_series=[17, 33, 49, 81],
        resolution_series=[(240, 416), (352, 624), (480, 832)],
        warmup=(5, 64, 64),
    ),
}

# Toy components for --dry-run: every code path, seconds on a CPU.
DRY_DIT = {"num_attention_heads": 2, "attention_head_dim": 12, "num_layers": 2, "ffn_dim": 32, "text_embed_dim": 24}
DRY_VAE = {"block_out_channels": (8, 16, 16, 16), "layers_per_block": 1}
DRY_TEXT = {"hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}


def dry_run_preset(preset: PipelinePreset) -> PipelinePreset:
    """Same structure (number of points, guidance, steps capped at 2), toy widths and sizes."""
    lengths = [1 + 4 * (i + 1) for i in range(len(preset.length_series))]
    resolutions = [(16 * (i + 1), 16 * (i + 2)) for i in range(len(preset.resolution_series))]
    main = (lengths[-1] if lengths else 5, *(resolutions[-1] if resolutions else (32, 48)))
    return replace(
        preset,
        transformer=DRY_DIT,
        vae=DRY_VAE,
        text_encoder=DRY_TEXT,
        max_sequence_length=16,
        steps=min(preset.steps, 2),
        main=main,
        length_series=lengths,
        resolution_series=resolutions,
        warmup=(5, 16, 16),
    )


# ----------------------------------------------------------------------------------------------------------------
# 2. Building blocks shared with bench_features.py
# ----------------------------------------------------------------------------------------------------------------


def model_bytes(module: torch.nn.Module, device: str | None = None) -> int:
    """Bytes of parameters and buffers (only those on `device` when given)."""
    total = 0
    for tensor in (*module.parameters(), *module.buffers()):
        if device is None or tensor.device.type == device:
            total += tensor.numel() * tensor.element_size()
    return total


def cast_like_from_pretrained(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """As `from_pretrained(torch_dtype=dtype)` loads a model: `_keep_in_fp32_modules` in fp32, the rest in `dtype`."""
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, param in model.named_parameters():
        param.data = param.data.to(torch.float32 if any(k in name.split(".") for k in keep) else dtype)
    return model


def build_transformer(config: dict, device: str, dtype: torch.dtype, seed: int = 0):
    """A random `SpacetimeDiTModel`, initialised on `device` (fast for 1.3B parameters); equal seeds, equal weights."""
    from diffusers_spacetime import SpacetimeDiTModel

    with torch.device(device):
        torch.manual_seed(seed)
        model = SpacetimeDiTModel(**config)
    return cast_like_from_pretrained(model, dtype).eval()


def build_vae(config: dict, device: str, dtype: torch.dtype, seed: int = 1):
    from diffusers_spacetime import AutoencoderKLSpacetime

    with torch.device(device):
        torch.manual_seed(seed)
        vae = AutoencoderKLSpacetime(**config)
    return (vae if dtype == torch.float32 else vae.to(dtype)).eval()


_TOKENIZER_DIR = None


def make_tokenizer():
    """A BERT word-piece tokenizer over a small vocabulary written to a temporary folder: offline, no model package."""
    global _TOKENIZER_DIR
    from transformers import BertTokenizer

    if _TOKENIZER_DIR is None:
        _TOKENIZER_DIR = tempfile.mkdtemp(prefix="spacetime_bench_tokenizer_")
        words = (
            "a an the of to from over under and with in on left right up down red green blue yellow white black "
            "circle square triangle ball box moves move slides bounces falls rises grows shrinks turns spins "
            "slowly quickly background foreground video frame camera"
        ).split()
        letters = list(string.ascii_lowercase + string.digits)
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.punctuation, *letters]
        vocab += [f"##{c}" for c in letters] + words
        with open(os.path.join(_TOKENIZER_DIR, "vocab.txt"), "w") as handle:
            handle.write("\n".join(dict.fromkeys(vocab)) + "\n")
    # from_pretrained on a folder: the same call works across transformers 4.x and 5.x constructors
    return BertTokenizer.from_pretrained(_TOKENIZER_DIR, model_max_length=512)


def build_pipeline(preset: PipelinePreset, device: str, dtype: torch.dtype, seed: int = 0):
    """Random tokenizer-compatible BERT + DiT + VAE + flow-matching Euler, every component on `device` in `dtype`."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import BertConfig, BertModel

    from diffusers_spacetime import SpacetimeVideoPipeline

    tokenizer = make_tokenizer()
    with torch.device(device):
        torch.manual_seed(seed + 2)
        text_encoder = BertModel(BertConfig(vocab_size=len(tokenizer), **preset.text_encoder))
    text_encoder = text_encoder.to(dtype).eval()
    transformer = build_transformer(preset.transformer, device, dtype, seed)
    vae = build_vae(preset.vae, device, dtype, seed + 1)
    frames, height, width = preset.main
    pipe = SpacetimeVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        default_height=height,
        default_width=width,
        default_num_frames=frames,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latent_shape(pipe, frames: int, height: int, width: int) -> tuple[int, int, int]:
    temporal, spatial = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
    return (frames - 1) // temporal + 1, height // spatial, width // spatial


def num_tokens(pipe, frames: int, height: int, width: int) -> int:
    pf, ph, pw = pipe.transformer.config.patch_size
    lf, lh, lw = latent_shape(pipe, frames, height, width)
    return (lf // pf) * (lh // ph) * (lw // pw)


class StageTimer:
    """Wall time per pipeline stage, the device synchronised at every boundary."""

    def __init__(self, device: str):
        self.device = device
        self.totals = defaultdict(float)
        self.counts = defaultdict(int)
        self._open = {}
        self._handles = []

    def reset(self) -> None:
        self.totals.clear()
        self.counts.clear()

    def _begin(self, name: str) -> None:
        synchronize(self.device)
        self._open[name] = time.perf_counter()

    def _end(self, name: str) -> None:
        synchronize(self.device)
        self.totals[name] += time.perf_counter() - self._open.pop(name)
        self.counts[name] += 1

    def wrap(self, function, name: str):
        # `functools.wraps` keeps `function`'s signature visible: the pipeline reads it to pick the arguments it passes
        @functools.wraps(function)
        def timed(*args, **kwargs):
            self._begin(name)
            try:
                return function(*args, **kwargs)
            finally:
                self._end(name)

        return timed

    def attach(self, pipe) -> None:
        """Time `encode_prompt`, every transformer forward and `decode_latents` of `pipe`."""
        pipe.encode_prompt = self.wrap(pipe.encode_prompt, "text")
        pipe.decode_latents = self.wrap(pipe.decode_latents, "decode")
        self._handles.append(pipe.transformer.register_forward_pre_hook(lambda module, args: self._begin("dit")))
        self._handles.append(pipe.transformer.register_forward_hook(lambda module, args, output: self._end("dit")))

    def detach(self, pipe) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for name in ("encode_prompt", "decode_latents"):
            pipe.__dict__.pop(name, None)


def call_pipeline(pipe, preset: PipelinePreset, frames: int, height: int, width: int, steps: int, seed: int = 0):
    return pipe(
        prompt=PROMPT,
        num_frames=frames,
        height=height,
        width=width,
        num_inference_steps=steps,
        guidance_scale=preset.guidance_scale,
        generator=torch.Generator().manual_seed(seed),
        max_sequence_length=preset.max_sequence_length,
        output_type="pt",
    ).frames


# ----------------------------------------------------------------------------------------------------------------
# 3. The measurement
# ----------------------------------------------------------------------------------------------------------------


def measure_point(pipe, timer: StageTimer, preset, device: str, frames: int, height: int, width: int, repeats: int):
    """Best of `repeats` calls, stage by stage (a load spike on a shared host hits one call, not all); `other` is
    the rest of the fastest call; peak device memory of the last call."""
    best, stage_best = None, {}
    for _ in range(max(1, repeats)):
        timer.reset()
        free_memory(device)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _, total = timed(lambda: call_pipeline(pipe, preset, frames, height, width, preset.steps), device)
        stages = dict(timer.totals)
        for name, value in stages.items():
            stage_best[name] = min(value, stage_best.get(name, float("inf")))
        if best is None or total < best["total_s"]:
            best = {"total_s": total, **{f"{k}_s": v for k, v in stages.items()}, "dit_calls": timer.counts["dit"]}
    best["other_s"] = max(0.0, best["total_s"] - sum(best.get(f"{k}_s", 0.0) for k in ("text", "dit", "decode")))
    best.update({f"{k}_s": v for k, v in stage_best.items()})
    best["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    lf, lh, lw = latent_shape(pipe, frames, height, width)
    best.update(
        frames=frames,
        height=height,
        width=width,
        latent=f"{lf}x{lh}x{lw}",
        tokens=num_tokens(pipe, frames, height, width),
        mvoxels=frames * height * width / 1e6,
    )
    best["dit_step_s"] = best.get("dit_s", 0.0) / preset.steps
    return best


def fit_quadratic(points: list[dict]):
    """Least-squares `DiT/step = a + b N + c N^2` over the measured points (None with fewer than 3 token counts)."""
    import numpy as np

    tokens = sorted({p["tokens"] for p in points})
    if len(tokens) < 3:
        return None
    n = np.array([p["tokens"] for p in points], dtype=float)
    y = np.array([p["dit_step_s"] for p in points], dtype=float)
    design = np.stack([np.ones_like(n), n, n**2], axis=1)
    coeffs, *_ = np.linalg.lstsq(design, y, rcond=None)
    return [float(c) for c in coeffs]


def plot_curve(points: list[dict], fit, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (ax_volume, ax_tokens) = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = {"length": ("tab:blue", "o"), "resolution": ("tab:orange", "s")}
    for series, (color, marker) in styles.items():
        chosen = sorted((p for p in points if series in p["series"]), key=lambda p: p["mvoxels"])
        if not chosen:
            continue
        x = [p["mvoxels"] for p in chosen]
        label = "more frames" if series == "length" else "more pixels per frame"
        ax_volume.plot(x, [p["total_s"] for p in chosen], color=color, marker=marker, label=f"total ({label})")
        for key, line_style, stage in (("dit_s", "--", "DiT"), ("decode_s", ":", "VAE decode")):
            values = [p.get(key, 0) for p in chosen]
            ax_volume.plot(x, values, color=color, marker=marker, ls=line_style, alpha=0.7, label=f"{stage} ({label})")
        for p in chosen:
            ax_volume.annotate(
                f"{p['frames']}x{p['height']}x{p['width']}",
                (p["mvoxels"], p["total_s"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=7,
            )
        ax_tokens.scatter(
            [p["tokens"] for p in chosen],
            [p["dit_step_s"] for p in chosen],
            color=color,
            marker=marker,
            label=label,
            zorder=3,
        )
    ax_volume.set_xlabel("spacetime volume: frames x height x width (millions of pixels)")
    ax_volume.set_ylabel("seconds per video")
    ax_volume.set_title("seconds per video vs volume")
    ax_volume.grid(alpha=0.3)
    ax_volume.legend(fontsize=7)
    if fit is not None:
        grid = np.linspace(0, max(p["tokens"] for p in points) * 1.05, 200)
        a, b, c = fit
        ax_tokens.plot(
            grid, a + b * grid + c * grid**2, color="gray", ls="--", label=f"fit {a:.3g} + {b:.3g} N + {c:.3g} N^2"
        )
    ax_tokens.set_xlabel("video tokens N (latent patches)")
    ax_tokens.set_ylabel("DiT seconds per denoising step (all guidance branches)")
    ax_tokens.set_title("DiT cost per step vs tokens")
    ax_tokens.grid(alpha=0.3)
    ax_tokens.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_report(args, preset, points, failures, fit, device_label, plot_name, component_line) -> str:
    guidance_calls = 2 if preset.guidance_scale > 1 else 1
    lines = [
        f"### Pipeline end to end: {device_label}, {args.dtype}{' (DRY RUN, toy sizes)' if args.dry_run else ''}",
        "",
        f"{versions()}; preset `{args.preset}`; {preset.steps} steps, guidance {preset.guidance_scale} "
        f"({guidance_calls} DiT calls per step); random weights. {component_line}",
        "",
        f"Command: `{args.command}`",
        "",
    ]
    main = next((p for p in points if "main" in p["series"]), None)
    if main is not None:
        extrapolated = main.get("text_s", 0) + 50 * main["dit_step_s"] + main.get("decode_s", 0) + main["other_s"]
        memory = f", peak GPU memory {main['peak_mib'] / 1024:.1f} GiB" if main["peak_mib"] is not None else ""
        lines += [
            f"**Seconds per video at {main['frames']}x{main['height']}x{main['width']} "
            f"({main['tokens']:,} tokens), {preset.steps} steps: {main['total_s']:.2f} s** (text "
            f"{main.get('text_s', 0):.2f} s, DiT {main.get('dit_s', 0):.2f} s = {main['dit_step_s']:.3f} s/step, "
            f"VAE decode {main.get('decode_s', 0):.2f} s, other {main['other_s']:.2f} s){memory}. "
            f"Extrapolated to 50 steps (text + 50 x DiT/step + decode + other; not measured): {extrapolated:.1f} s.",
            "",
        ]
    header = [
        "series",
        "frames x H x W",
        "latent F x H x W",
        "tokens",
        "Mpixels",
        "text s",
        "DiT s",
        "DiT s/step",
        "decode s",
        "other s",
        "total s",
        "s per Mpixel",
        "peak GiB",
    ]
    rows = []
    for p in points:
        rows.append(
            [
                ", ".join(p["series"]),
                f"{p['frames']}x{p['height']}x{p['width']}",
                p["latent"],
                f"{p['tokens']:,}",
                f"{p['mvoxels']:.2f}",
                fmt(p.get("text_s")),
                fmt(p.get("dit_s")),
                fmt(p["dit_step_s"]),
                fmt(p.get("decode_s")),
                fmt(p["other_s"]),
                fmt(p["total_s"]),
                fmt(p["total_s"] / p["mvoxels"]),
                fmt(p["peak_mib"] / 1024, 2) if p["peak_mib"] is not None else "n/a",
            ]
        )
    for failure in failures:
        rows.append([failure["series"], failure["size"], "", "", "", "", "", "", "", "", failure["status"], "", ""])
    lines += [markdown_table(header, rows), ""]
    if fit is not None:
        a, b, c = fit
        lines.append(f"Fit of DiT s/step over the points: {a:.4g} + {b:.4g} N + {c:.4g} N^2 (N tokens).")
        if b < 0 or c < 0:
            lines.append(
                "(A negative coefficient: at these sizes and this noise the fit does not separate the linear "
                "and N^2 terms; read the points, not the fit.)"
            )
        elif main is not None:
            n = main["tokens"]
            quadratic = c * n * n / max(a + b * n + c * n * n, 1e-12)
            lines.append(f"At the main point the N^2 term is {100 * quadratic:.0f}% of the fitted step time.")
        lines.append("")
    lines.append(f"![cost curve]({plot_name})")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_device_arguments(parser)
    parser.add_argument("--preset", choices=sorted(PIPELINE_PRESETS), help="Default: the device's.")
    parser.add_argument("--steps", type=int, default=None, help="Denoising steps (default: the preset's).")
    parser.add_argument("--repeats", type=int, help="Calls per point, best kept (default 2 CPU, 1 CUDA).")
    parser.add_argument("--quick", action="store_true", help="One call per point, no extras (the one-shot GPU run).")
    parser.add_argument("--dry-run", action="store_true", help="Toy sizes of the preset: check the code paths.")
    add_one_shot_arguments(parser, budget_help="Skip points once this many seconds passed since start")
    args = one_shot_defaults(parser.parse_args(argv), __file__, argv)
    args.repeats = args.repeats or (1 if args.quick or args.device == "cuda" else 2)
    return args


def run_preset(args) -> PipelinePreset:
    preset = PIPELINE_PRESETS[args.preset]
    if args.dry_run:
        preset = dry_run_preset(preset)
    if args.steps is not None:
        preset = replace(preset, steps=args.steps)
    return preset


def describe_components(pipe, preset: PipelinePreset) -> str:
    params = {
        name: sum(p.numel() for p in getattr(pipe, name).parameters()) / 1e6
        for name in ("text_encoder", "transformer", "vae")
    }
    return (
        f"Components: DiT {params['transformer']:.0f}M parameters ({json.dumps(preset.transformer)} over the "
        f"defaults), VAE {params['vae']:.0f}M ({json.dumps(preset.vae)} over the defaults), random BERT text encoder "
        f"{params['text_encoder']:.0f}M ({json.dumps(preset.text_encoder)}), "
        f"{preset.max_sequence_length or 128} text tokens."
    )


def plan_points(preset: PipelinePreset) -> dict:
    """`(frames, height, width) -> series names`, the main point first so that a tight budget still measures it."""
    frames0, height0, width0 = preset.main
    plan = {preset.main: ["main"]}
    for frames in preset.length_series:
        plan.setdefault((frames, height0, width0), []).append("length")
    for height, width in preset.resolution_series:
        plan.setdefault((frames0, height, width), []).append("resolution")
    return plan


def measure_points(pipe, timer: StageTimer, preset: PipelinePreset, args, budget: TimeBudget):
    """`(points, failures)` over `plan_points`: a point that raises or finds the budget spent becomes a failure row."""
    points, failures = [], []
    for index, (size, series) in enumerate(plan_points(preset).items()):
        tag = "x".join(str(value) for value in size)
        if index > 0 and not budget.allows():
            failures.append({"series": ", ".join(series), "size": tag, "status": "skipped: time budget"})
            continue
        try:
            with torch.no_grad():
                point = measure_point(pipe, timer, preset, args.device, *size, args.repeats)
            point["series"] = series
            points.append(point)
            print(
                f"  {tag}: total {point['total_s']:.3f} s, DiT/step {point['dit_step_s']:.3f} s, decode "
                f"{point.get('decode_s', 0):.3f} s, tokens {point['tokens']}",
                flush=True,
            )
        except Exception as error:  # one failing point becomes a row; the run goes on
            traceback.print_exc()
            failures.append({"series": ", ".join(series), "size": tag, "status": f"failed: {one_line(error)}"})
            free_memory(args.device)
    return points, failures


def main(args) -> str:
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 2)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is visible")
    preset, budget, label = run_preset(args), TimeBudget(args.time_budget), device_name(args.device)
    os.makedirs(args.output_dir, exist_ok=True)
    dry_run = " (dry run)" if args.dry_run else ""
    print(f"[bench_pipeline] {label}, {args.dtype}, preset {args.preset}{dry_run}", flush=True)

    pipe = build_pipeline(preset, args.device, DTYPES[args.dtype])
    component_line = describe_components(pipe, preset)
    print(component_line, flush=True)
    timer = StageTimer(args.device)
    timer.attach(pipe)
    with torch.no_grad():  # warm-up: one small 1-step call (CUDA context, kernels, allocator, lazy init)
        call_pipeline(pipe, preset, *preset.warmup, steps=1)
    points, failures = measure_points(pipe, timer, preset, args, budget)

    fit = fit_quadratic(points)
    suffix = f"{args.device}{'_dry' if args.dry_run else ''}"
    plot_name = f"pipeline_curve_{suffix}.png"
    title = f"SpacetimeVideoPipeline, {label}, {args.dtype}, {preset.steps} steps, guidance {preset.guidance_scale}"
    try:
        if points:
            plot_curve(points, fit, os.path.join(args.output_dir, plot_name), title)
    except Exception as error:
        traceback.print_exc()
        plot_name = f"(plot failed: {one_line(error)})"
    text = format_report(args, preset, points, failures, fit, label, plot_name, component_line)
    results = {"device": label, "dtype": args.dtype, "preset": asdict(preset), "points": points}
    results.update(failures=failures, fit=fit, elapsed_s=budget.elapsed())
    write_results(args.output_dir, f"pipeline_{suffix}", text, results)
    print(f"[bench_pipeline] done in {budget.elapsed():.1f} s; outputs in {args.output_dir}", flush=True)
    return text


if __name__ == "__main__":
    main(parse_args())
