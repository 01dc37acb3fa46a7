"""Side-by-side speed of `SpacetimeDiTModel` and diffusers' `WanTransformer3DModel` at equal dimensions.

Scope: one process builds both models with the same widths, heads, layers, feed-forward, patch and channels, feeds
them the same random latents, timestep and text states (same token count), and times, interleaved so that machine
noise hits both alike:

- `fwd`: inference forward (`torch.no_grad`);
- `fwd+bwd`: a training step, forward + backward of `sample` against a fixed random gradient (with
  `--gradient-checkpointing`, both models recompute each block in backward);

each in eager mode and, unless `--no-compile`, with `compile_repeated_blocks(fullgraph=True)` (regional compile,
diffusers' recommended route; a failing compile is reported in the table and the run goes on).

Reported per row: median wall time of `--steps` runs after `--warmup`, tokens/s (video tokens), achieved TFLOP/s,
that as a fraction of a square-matmul ceiling measured in the same run and dtype, and peak memory of one step.

FLOPs (multiply-add = 2), per forward, batch B, N video tokens, L text tokens, width D, feed-forward width Fd,
T text-encoder width, P = C * prod(patch_size) values per patch, n blocks:
    blocks: n * B * (8 N D^2 [self q,k,v,o] + 4 N^2 D [QK^T, AV] + 4 N D^2 [cross q,o] + 4 L D^2 [cross k,v]
                    + 4 N L D [cross QK^T, AV] + 4 N D Fd [feed-forward])
    edges:  B * (2 N P D [patch embedding] + 2 N D P [proj_out] + 2 L (T D + D^2) [text projection])
A training step counts 3x the forward (backward = 2x); recomputation under gradient checkpointing is not counted
(the usual MFU convention), so checkpointed rows show the useful-work rate.

Peak memory: CUDA, `torch.cuda.max_memory_allocated` during one step minus the memory allocated before it. CPU,
each model runs in its own subprocess with glibc's mmap threshold pinned (so freed activations go back to the OS);
the peak RSS (`VmHWM`, reset through `/proc/self/clear_refs`) during one step minus the RSS before it.

Usage:
    python benchmarks/bench_transformer.py --device cpu --output benchmarks/results_transformer_cpu.md
    python benchmarks/bench_transformer.py --device cuda --dtype bf16 --preset wan1.3b --gradient-checkpointing \\
        --output benchmarks/results_transformer_h100.md
"""

import argparse
import copy
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, field, replace

import torch
from bench_pipeline import cast_like_from_pretrained
from measure import DTYPES, device_name, peak_mib, time_interleaved, time_interleaved_or_alone
from report import add_device_arguments, device_defaults, parse_sizes, write_text

# ----------------------------------------------------------------------------------------------------------------
# 1. Configurations
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Preset:
    num_attention_heads: int
    attention_head_dim: int
    num_layers: int
    ffn_dim: int
    text_embed_dim: int
    text_tokens: int
    in_channels: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    # Latent (frames, height, width) per case; tokens = prod / prod(patch_size)
    cases: list[tuple[int, int, int]] = field(default_factory=list)


PRESETS = {
    # The package's tiny test config: 4 heads x 32, 4 layers, ~300 tokens, plus a ~1k-token case.
    "tiny": Preset(4, 32, 4, 512, 128, 64, cases=[(3, 20, 20), (4, 32, 32)]),
    # Wan2.1-1.3B dimensions (the contract defaults): 480x832, 81 frames -> latent 21x60x104, 32,760 tokens.
    "wan1.3b": Preset(12, 128, 30, 8960, 4096, 512, cases=[(21, 60, 104)]),
}


def build_models(preset: Preset, dtype: torch.dtype, device: str, seed: int = 0):
    from diffusers import WanTransformer3DModel

    from diffusers_spacetime import SpacetimeDiTModel

    common = {
        "num_attention_heads": preset.num_attention_heads,
        "attention_head_dim": preset.attention_head_dim,
        "num_layers": preset.num_layers,
        "ffn_dim": preset.ffn_dim,
        "in_channels": preset.in_channels,
        "out_channels": preset.in_channels,
        "patch_size": preset.patch_size,
    }
    with torch.device(device):  # initialise on the device: random init of 1.3B parameters on CPU takes a while
        torch.manual_seed(seed)
        wan = WanTransformer3DModel(text_dim=preset.text_embed_dim, **common)
        torch.manual_seed(seed)
        spacetime = SpacetimeDiTModel(text_embed_dim=preset.text_embed_dim, **common)
    return {"Wan": cast_like_from_pretrained(wan, dtype), "Spacetime": cast_like_from_pretrained(spacetime, dtype)}


def make_inputs(preset: Preset, case, dtype, device, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    frames, height, width = case
    latents = torch.randn(1, preset.in_channels, frames, height, width, generator=generator)
    text = torch.randn(1, preset.text_tokens, preset.text_embed_dim, generator=generator)
    grad = torch.randn(latents.shape, generator=generator)
    timestep = torch.tensor([500.0], device=device)  # fp32: both models embed it in fp32
    return latents.to(device, dtype), timestep, text.to(device, dtype), grad.to(device, dtype)


def num_tokens(preset: Preset, case) -> int:
    return int(torch.tensor(case).prod()) // int(torch.tensor(preset.patch_size).prod())


def forward_flops(preset: Preset, case) -> float:
    """Matmul + attention FLOPs of one forward (formula in the module docstring), batch 1."""
    n_tok, text = num_tokens(preset, case), preset.text_tokens
    dim = preset.num_attention_heads * preset.attention_head_dim
    ffn, patch = preset.ffn_dim, preset.in_channels * int(torch.tensor(preset.patch_size).prod())
    block = (
        8 * n_tok * dim**2
        + 4 * n_tok**2 * dim
        + 4 * n_tok * dim**2
        + 4 * text * dim**2
        + 4 * n_tok * text * dim
        + 4 * n_tok * dim * ffn
    )
    edges = 2 * n_tok * patch * dim * 2 + 2 * text * (preset.text_embed_dim * dim + dim**2)
    return float(preset.num_layers * block + edges)


# ----------------------------------------------------------------------------------------------------------------
# 2. Timing
# ----------------------------------------------------------------------------------------------------------------


def make_step(model, mode: str, inputs):
    latents, timestep, text, grad = inputs

    if mode == "fwd":

        def step():
            with torch.no_grad():
                model(latents, timestep, text)

    else:

        def step():
            sample = model(latents, timestep, text).sample
            sample.backward(grad)
            model.zero_grad(set_to_none=True)

    return step


def matmul_ceiling(device: str, dtype: torch.dtype) -> float:
    """TFLOP/s of a large square matmul in this process: the practical ceiling for the rows below."""
    size = 8192 if device == "cuda" else 1024
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    seconds = time_interleaved({"mm": lambda: a @ b}, device, warmup=2, repeats=10)["mm"]
    return 2 * size**3 / seconds / 1e12


# ----------------------------------------------------------------------------------------------------------------
# 3. Peak memory
# ----------------------------------------------------------------------------------------------------------------


def _rss_kib(field_name: str) -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field_name):
                return int(line.split()[1])
    raise RuntimeError(f"{field_name} not in /proc/self/status")


def cpu_step_peak_mib(step) -> float | None:
    """Peak RSS growth during one step; needs Linux `clear_refs` (None elsewhere)."""
    try:
        step()  # warm caches (oneDNN primitives, allocator) so they count as baseline, not as the step's peak
        baseline = _rss_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # reset VmHWM to the current RSS
        step()
        return (_rss_kib("VmHWM") - baseline) / 1024
    except (OSError, RuntimeError):
        return None


def cpu_memory_probe(args) -> None:
    """Subprocess entry: one model, every case and mode, JSON on stdout."""
    preset, dtype = PRESETS[args.preset], DTYPES[args.dtype]
    model = build_models(preset, dtype, "cpu")[args._memory_probe]
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    results = {}
    for case in preset.cases:
        inputs = make_inputs(preset, case, dtype, "cpu")
        for mode in MODES:
            model.train(mode != "fwd")
            results[f"{case}|{mode}"] = cpu_step_peak_mib(make_step(model, mode, inputs))
    print("MEMORY " + json.dumps(results))


def cpu_memory(args) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    results = {}
    for name in ("Wan", "Spacetime"):
        command = [sys.executable, __file__, "--device", "cpu", "--dtype", args.dtype, "--preset", args.preset]
        command += ["--cases"] + [f"{f}x{h}x{w}" for f, h, w in PRESETS[args.preset].cases]
        command += ["--_memory-probe", name] + (["--gradient-checkpointing"] if args.gradient_checkpointing else [])
        if args.threads:
            command += ["--threads", str(args.threads)]
        completed = subprocess.run(command, capture_output=True, text=True, env=env)
        line = next((line for line in completed.stdout.splitlines() if line.startswith("MEMORY ")), None)
        if line is None:
            print(f"memory probe for {name} failed:\n{completed.stderr[-2000:]}", file=sys.stderr)
            continue
        for key, value in json.loads(line[len("MEMORY ") :]).items():
            results[(name, key)] = value
    return results


# ----------------------------------------------------------------------------------------------------------------
# 4. Main
# ----------------------------------------------------------------------------------------------------------------

MODES = ("fwd", "fwd+bwd")


@dataclass
class Row:
    case: str
    tokens: int
    mode: str
    compiled: bool
    model: str
    seconds: float | None = None
    tflops: float | None = None
    peak_mib: float | None = None
    note: str = ""


def format_table(rows: list[Row], ceiling: float, header: str) -> str:
    lines = [
        header,
        "",
        "| case (F x H x W latent) | tokens | step | compile | model | median ms | tokens/s | TFLOP/s "
        "| % of matmul ceiling | peak MiB | speed vs Wan |",
        "|---|---:|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r.case, r.mode, r.compiled, r.model): r for r in rows}
    for r in rows:
        wan = by_key.get((r.case, r.mode, r.compiled, "Wan"))
        if r.seconds is None:
            lines.append(
                f"| {r.case} | {r.tokens} | {r.mode} | {'yes' if r.compiled else 'no'} | {r.model} | {r.note} "
                "| | | | | |"
            )
            continue
        speed = f"{wan.seconds / r.seconds:.2f}x" if wan is not None and wan.seconds else ""
        peak = f"{r.peak_mib:.0f}" if r.peak_mib is not None else "n/a"
        lines.append(
            f"| {r.case} | {r.tokens} | {r.mode} | {'yes' if r.compiled else 'no'} | {r.model} "
            f"| {r.seconds * 1e3:.2f} "
            f"| {r.tokens / r.seconds:,.0f} | {r.tflops:.3f} | {100 * r.tflops / ceiling:.1f}% | {peak} | {speed} |"
        )
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_device_arguments(parser)
    parser.add_argument("--preset", choices=sorted(PRESETS), help="Default: tiny on CPU, wan1.3b on CUDA.")
    parser.add_argument("--steps", type=int, default=None, help="Timed repetitions per row (default 20 CPU, 10 CUDA).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed repetitions before timing.")
    parser.add_argument("--cases", nargs="+", default=None, help="Latent sizes FxHxW overriding the preset's.")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="Which steps to time.")
    parser.add_argument("--no-compile", action="store_true", help="Skip the compile_repeated_blocks rows.")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="Checkpoint every block in fwd+bwd.")
    parser.add_argument("--attention-backend", default=None, help="diffusers attention backend for both models.")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--no-memory", action="store_true", help="Skip the peak-memory measurement.")
    parser.add_argument("--output", default=None, help="Write the Markdown table here.")
    parser.add_argument("--_memory-probe", dest="_memory_probe", default=None, help=argparse.SUPPRESS)
    args = device_defaults(parser.parse_args(argv))
    args.preset = args.preset or ("wan1.3b" if args.device == "cuda" else "tiny")
    args.steps = args.steps or (10 if args.device == "cuda" else 20)
    if args.cases:
        try:
            PRESETS[args.preset] = replace(PRESETS[args.preset], cases=parse_sizes(args.cases))
        except ValueError as error:
            parser.error(f"--cases: {error}")
    return args


def model_variants(models: dict, args) -> list[tuple[bool, dict]]:
    """`[(compiled, {name: model or the compile error as text})]`: the eager models, then (unless --no-compile)
    regionally compiled copies, each with the backend and gradient checkpointing that the flags ask for."""
    if args.attention_backend:
        for model in models.values():
            model.set_attention_backend(args.attention_backend)
    variants = [(False, models)]
    if not args.no_compile:
        compiled = {}
        for name, model in models.items():
            compiled[name] = copy.deepcopy(model)
            try:
                compiled[name].compile_repeated_blocks(fullgraph=True)
            except Exception as error:  # noqa: BLE001 - a failed compile becomes a table row, not a crash
                compiled[name] = f"compile failed: {type(error).__name__}"
        variants.append((True, compiled))
    if args.gradient_checkpointing:
        for _, group in variants:
            for model in group.values():
                if not isinstance(model, str):
                    model.enable_gradient_checkpointing()
    return variants


def time_group(group: dict, compiled: bool, case, mode: str, inputs, args) -> list[Row]:
    """One row per model of `group` for one case and step kind, the models timed interleaved."""
    preset, device = PRESETS[args.preset], args.device
    steps, failed = {}, {}
    for name, model in group.items():
        if isinstance(model, str):
            failed[name] = model
            continue
        model.train(mode != "fwd")
        steps[name] = make_step(model, mode, inputs)
    times = time_interleaved_or_alone(steps, device, args.warmup, args.steps)
    failed.update({name: value for name, value in times.items() if isinstance(value, str)})
    tokens, flops = num_tokens(preset, case), forward_flops(preset, case)
    rows = []
    for name in group:
        row = Row(f"{case[0]}x{case[1]}x{case[2]}", tokens, mode, compiled, name, note=failed.get(name, ""))
        if name not in failed:
            row.seconds = times[name]
            row.tflops = flops * (1 if mode == "fwd" else 3) / row.seconds / 1e12
            if device == "cuda" and not args.no_memory:
                try:
                    row.peak_mib = peak_mib(steps[name], device)
                except Exception:  # noqa: BLE001 - out of memory: the row keeps its time
                    torch.cuda.empty_cache()
        rows.append(row)
        print(asdict(row), flush=True)
    return rows


def table_header(args, ceiling: float) -> str:
    preset = PRESETS[args.preset]
    return (
        f"Device: {device_name(args.device)}; dtype {args.dtype}; preset `{args.preset}` "
        f"({preset.num_attention_heads} heads x {preset.attention_head_dim}, {preset.num_layers} layers, "
        f"ffn {preset.ffn_dim}, {preset.text_tokens} text tokens of width {preset.text_embed_dim}, "
        f"patch {preset.patch_size}); gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}; "
        f"attention backend {args.attention_backend or 'default'}; torch {torch.__version__}; median of "
        f"{args.steps} after {args.warmup} warm-up; matmul ceiling {ceiling:.2f} TFLOP/s. Peak memory: "
        + ("every row." if args.device == "cuda" else "eager rows (one subprocess per model).")
    )


def main(args) -> str:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args._memory_probe:
        cpu_memory_probe(args)
        return ""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible")
    device, dtype, preset = args.device, DTYPES[args.dtype], PRESETS[args.preset]
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # only affects fp32 runs; both models alike
    ceiling = matmul_ceiling(device, dtype)
    print(f"device: {device_name(device)}; matmul ceiling {ceiling:.2f} TFLOP/s ({args.dtype})", flush=True)

    variants = model_variants(build_models(preset, dtype, device), args)
    rows = []
    for case in preset.cases:
        inputs = make_inputs(preset, case, dtype, device)
        for mode in args.modes:
            for compiled, group in variants:
                rows += time_group(group, compiled, case, mode, inputs, args)

    if device == "cpu" and not args.no_memory:
        del variants  # freed before the probe subprocesses build their own models
        memory = cpu_memory(args)
        for row in rows:
            if not row.compiled:
                case = next(c for c in preset.cases if f"{c[0]}x{c[1]}x{c[2]}" == row.case)
                row.peak_mib = memory.get((row.model, f"{case}|{row.mode}"))

    table = format_table(rows, ceiling, table_header(args, ceiling))
    print(table)
    write_text(table, args.output)
    return table


if __name__ == "__main__":
    main(parse_args())
