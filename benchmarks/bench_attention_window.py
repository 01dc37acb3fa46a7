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

import torch
from bench_transformer import PRESETS, build_models, make_inputs, num_tokens  # the same models at the same sizes
from measure import DTYPES, device_name, time_interleaved_or_alone
from report import add_device_arguments, device_defaults, parse_sizes, write_text

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
    add_device_arguments(parser)
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
    args = device_defaults(parser.parse_args(argv))
    try:
        args.windows = [parse_window(text) for text in args.windows]
        args.cases = parse_sizes(args.cases) if args.cases else CPU_CASES
    except ValueError as error:
        parser.error(str(error))
    return args


def models_to_compare(args) -> dict:
    """name -> (model, window): diffusers' Wan (unless --no-wan) and the Spacetime variants, set up for inference."""
    reference = build_models(PRESETS[args.preset], DTYPES[args.dtype], args.device)
    models = {} if args.no_wan else {"Wan (diffusers)": (reference["Wan"], (None, None, None))}
    models.update(spacetime_variants(reference["Spacetime"], args.windows))
    for name, (model, _) in models.items():
        # Every model names its backend: diffusers 0.42 makes the last one set process-wide for the others.
        windowed = name.startswith("window")
        model.set_attention_backend(args.window_backend if windowed and args.window_backend else "native")
        model.eval()
        if args.compile:
            model.compile_repeated_blocks(fullgraph=True)
    return models


def time_case(models: dict, case, args) -> list[tuple]:
    """`(case, tokens, model name, share of pairs attended, seconds or the error as text)` per model."""
    device, dtype, preset = args.device, DTYPES[args.dtype], PRESETS[args.preset]
    latents, timestep, text, _ = make_inputs(preset, case, dtype, device)
    grid = tuple(size // patch for size, patch in zip(case, preset.patch_size))
    steps = {}
    for name, (model, _) in models.items():

        def step(model=model):
            with torch.no_grad():
                model(latents, timestep, text)

        steps[name] = step
    times = time_interleaved_or_alone(steps, device, args.warmup, args.steps)
    label, tokens = f"{case[0]}x{case[1]}x{case[2]}", num_tokens(preset, case)
    return [(label, tokens, name, attended_share(window, grid), times[name]) for name, (_, window) in models.items()]


def format_table(rows: list[tuple], args) -> str:
    preset = PRESETS[args.preset]
    by_case = {(row[0], row[2]): row[4] for row in rows}
    lines = [
        f"Device: {device_name(args.device)}; dtype {args.dtype}; preset `{args.preset}` "
        f"({preset.num_attention_heads} heads x {preset.attention_head_dim}, {preset.num_layers} layers, "
        f"ffn {preset.ffn_dim}, {preset.text_tokens} text tokens); window backend {args.window_backend or 'default'}; "
        f"compile {'on' if args.compile else 'off'}; "
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
    return "\n".join(lines)


def main(args) -> str:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    print(f"device: {device_name(args.device)}", flush=True)
    models = models_to_compare(args)
    rows = []
    for case in args.cases:
        for row in time_case(models, case, args):
            rows.append(row)
            print(row, flush=True)
    table = format_table(rows, args)
    print(table)
    write_text(table, args.output)
    return table


if __name__ == "__main__":
    main(parse_args())
