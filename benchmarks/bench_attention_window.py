"""Windowed vs full self-attention: `SpacetimeDiTModel(attention_span="window")` forward time as the clip grows.

Scope: one process builds diffusers' `WanTransformer3DModel` (full attention, the reference) and
`SpacetimeDiTModel` at equal dimensions (`bench_transformer.py`'s presets), then Spacetime variants with the same
weights and other spans: full `spacetime`, `window` of a few frames (and any `--windows` given), and the per-frame
`frame` span. It times one inference forward of each, interleaved, at several clip lengths (same frame size, more
frames), and reports the median time, tokens/s, the share of (query, key) pairs each span attends to, and the speed
against full spacetime attention. Full attention grows with the square of the clip's length, a frames-only window
linearly.

Windowed layers run plain SDPA over gathered neighbouring frames (frames-only windows) or a dense boolean mask (other
windows) with the default backend; `--window-backend flex` runs them as FlexAttention block masks (compile them, with
`--compile`, for fused kernels: on a GPU).

Usage:
    python benchmarks/bench_attention_window.py --device cpu --threads 1 --output results_window_cpu.md
    python benchmarks/bench_attention_window.py --device cuda --dtype bf16 --preset wan1.3b \\
        --cases 21x60x104 41x60x104 --window-backend flex --compile --output results_window_gpu.md
"""

import argparse
import sys
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_transformer import (  # noqa: E402 - the sibling script's presets and timing, one definition of each
    DTYPES,
    PRESETS,
    build_models,
    device_name,
    make_inputs,
    num_tokens,
    time_interleaved,
)

# ----------------------------------------------------------------------------------------------------------------
# 1. Variants
# ----------------------------------------------------------------------------------------------------------------

# Latent (frames, height, width) on CPU: 256 tokens per frame (patch 1x2x2), 4 to 16 frames.
CPU_CASES = [(4, 32, 32), (8, 32, 32), (16, 32, 32)]


def parse_window(text: str) -> tuple[int | None, int | None, int | None]:
    """`"3xallxall"` -> `(3, None, None)`: sizes in latent patches, `all` for the whole axis."""
    sizes = tuple(None if size == "all" else int(size) for size in text.lower().split("x"))
    if len(sizes) != 3:
        raise ValueError(f"a window is FxHxW with 'all' for a whole axis, got {text!r}")
    return sizes


def attended_share(window, grid: tuple[int, int, int]) -> float:
    """Fraction of the N x N (query, key) pairs inside the window (1.0: full attention)."""
    share = 1.0
    for size, length in zip(window, grid):
        if size is None:
            continue
        positions = torch.arange(length)
        share *= float(((positions[:, None] - positions[None]).abs() <= (size - 1) // 2).float().mean())
    return share


def spacetime_variants(spacetime, windows) -> dict:
    """Models with the Spacetime model's weights (and dtypes) and other spans: name -> (model, window)."""
    from diffusers_spacetime import SpacetimeDiTModel

    # Public keys only: `from_config` resets the keys listed in the private `_use_default_values` to their defaults.
    config = {key: value for key, value in spacetime.config.items() if not key.startswith("_")}

    def with_span(**overrides):
        model = SpacetimeDiTModel.from_config({**config, **overrides}).to(spacetime.device)
        if model.layer_spans[0] != overrides["attention_span"]:
            raise RuntimeError(f"the variant did not take its span: {overrides}")
        reference = dict(spacetime.named_parameters())
        for name, parameter in model.named_parameters():
            parameter.data = reference[name].data.clone()  # the same values in the same dtype (fp32-kept modules)
        return model

    variants = {"spacetime": (spacetime, (None, None, None))}
    for window in windows:
        name = "window " + "x".join("all" if size is None else str(size) for size in window)
        variants[name] = (with_span(attention_span="window", attention_window=window), window)
    variants["frame"] = (with_span(attention_span="frame"), (1, None, None))
    return variants


# ----------------------------------------------------------------------------------------------------------------
# 2. Run
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="Where to run.")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="Default: fp32 on CPU, bf16 on CUDA.")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="Model dimensions.")
    parser.add_argument("--cases", nargs="+", default=None, help="Latent sizes FxHxW (default: 4, 8, 16 x 32x32).")
    parser.add_argument(
        "--windows",
        nargs="+",
        default=["3xallxall", "5xallxall"],
        help="Windows FxHxW in latent patches, 'all' = the whole axis.",
    )
    parser.add_argument("--steps", type=int, default=3, help="Timed repetitions per row.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed repetitions before timing.")
    parser.add_argument("--window-backend", default=None, help="diffusers attention backend of the window models.")
    parser.add_argument("--compile", action="store_true", help="compile_repeated_blocks(fullgraph=True) every model.")
    parser.add_argument("--no-wan", action="store_true", help="Skip diffusers' Wan reference row.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--output", default=None, help="Write the Markdown table here.")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    try:
        args.windows = [parse_window(text) for text in args.windows]
        args.cases = (
            [tuple(int(size) for size in case.lower().split("x")) for case in args.cases] if args.cases else CPU_CASES
        )
    except ValueError as error:
        parser.error(str(error))
    return args


def main(args) -> str:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    device, dtype, preset = args.device, DTYPES[args.dtype], PRESETS[args.preset]
    print(f"device: {device_name(device)}", flush=True)

    reference = build_models(preset, dtype, device)
    variants = spacetime_variants(reference["Spacetime"], args.windows)
    models = {} if args.no_wan else {"Wan (diffusers)": (reference["Wan"], (None, None, None))}
    models.update(variants)
    for name, (model, _) in models.items():
        # Every model names its backend: diffusers 0.42 makes the last one set process-wide for the others.
        windowed = name.startswith("window")
        model.set_attention_backend(args.window_backend if windowed and args.window_backend else "native")
        model.eval()
        if args.compile:
            model.compile_repeated_blocks(fullgraph=True)

    rows = []
    for case in args.cases:
        latents, timestep, text, _ = make_inputs(preset, case, dtype, device)
        tokens = num_tokens(preset, case)
        grid = tuple(size // patch for size, patch in zip(case, preset.patch_size))
        steps = {}
        for name, (model, _) in models.items():

            def step(model=model):
                with torch.no_grad():
                    model(latents, timestep, text)

            steps[name] = step
        try:
            times = time_interleaved(steps, device, args.warmup, args.steps)
        except Exception:  # noqa: BLE001 - e.g. a compile error or out of memory: time the models one at a time
            traceback.print_exc()
            times = {}
            for name, step in steps.items():
                try:
                    times.update(time_interleaved({name: step}, device, args.warmup, args.steps))
                except Exception as error:  # noqa: BLE001 - the failure becomes the row
                    times[name] = f"{type(error).__name__}: {str(error)[:60]}"
                if device == "cuda":
                    torch.cuda.empty_cache()
        for name, (_, window) in models.items():
            row = (f"{case[0]}x{case[1]}x{case[2]}", tokens, name, attended_share(window, grid), times[name])
            rows.append(row)
            print(row, flush=True)

    by_case = {(row[0], row[2]): row[4] for row in rows}
    lines = [
        f"Device: {device_name(device)}; dtype {args.dtype}; preset `{args.preset}` ({preset.num_attention_heads} "
        f"heads x {preset.attention_head_dim}, {preset.num_layers} layers, ffn {preset.ffn_dim}, {preset.text_tokens} "
        f"text tokens); window backend {args.window_backend or 'default'}; compile {'on' if args.compile else 'off'}; "
        f"torch {torch.__version__}; one forward, median of {args.steps} after {args.warmup} warm-up.",
        "",
        "| case (F x H x W latent) | tokens | model | pairs attended | median ms | tokens/s | speed vs spacetime |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for label, tokens, name, share, seconds in rows:
        if isinstance(seconds, str) or isinstance(by_case[(label, "spacetime")], str):
            lines.append(f"| {label} | {tokens} | {name} | {100 * share:.0f}% | {seconds} | | |")
            continue
        speed = by_case[(label, "spacetime")] / seconds
        lines.append(
            f"| {label} | {tokens} | {name} | {100 * share:.0f}% | {seconds * 1e3:.1f} | {tokens / seconds:,.0f} "
            f"| {speed:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    if args.output:
        with open(args.output, "w") as handle:
            handle.write(table + "\n")
    return table


if __name__ == "__main__":
    main(parse_args())
