r"""diffusers' speed and memory features on `SpacetimeDiTModel` and `SpacetimeVideoPipeline`: does each work, and what
does it buy and cost.

Scope: one process, random weights, one table (Markdown, with the device name). Every case is guarded: a feature that
raises becomes a `failed: <error>` row and the run goes on; one that cannot run here is `skipped: <reason>`.
Sections, each with its own baseline row (speed-up = baseline time / time):

1. `forward`: one DiT forward (`torch.no_grad`) at the preset's latent size, with a padded text mask as the pipeline
   passes it. `set_attention_backend(...)`: `native` and `_native_flash` everywhere (PyTorch has a CPU flash
   kernel); on CUDA also `_native_cudnn`, `_native_efficient`, and `flash` when flash-attn is installed. A backend
   that rejects the text mask is timed without it (drift then against an unmasked baseline) and the row says so; one
   whose drift against the masked baseline is large is also compared against the unmasked baseline to tell "ignores
   the mask" from "inaccurate".
2. `denoising loop`: `--loop-steps` flow-matching Euler steps over the DiT, run as the pipeline runs them (one
   `cache_context("cond")` call per step, plus `cache_context("uncond")` with guidance > 1). `enable_cache` with
   FirstBlockCacheConfig, PyramidAttentionBroadcastConfig and TaylorSeerCacheConfig (with
   `cache_identifiers=[r"blocks\.\d+\.attn[12]"]`: its default patterns match no module of this model, which the
   table also shows). Drift = relative L2 of the final latents against the loop without cache; `attn calls` = the
   attention kernels actually run, as a share of the uncached loop's.
3. `layerwise casting`: `enable_layerwise_casting(storage_dtype=float8_e4m3fn, compute_dtype=...)`: bf16 compute on
   CUDA; on CPU fp32 and bf16 compute (plus plain bf16, to split the bf16 from the fp8 error). Same forward as 1.
4. `group offload` (CUDA): `enable_group_offload` block_level (1 block per group) and leaf_level, both with CUDA
   streams, weights on the CPU. Same forward as 1.
5. `pipeline`: a whole `SpacetimeVideoPipeline` call (the `bench_pipeline.py` components for the preset): all on the
   device, VAE tiling, `enable_model_cpu_offload()` (CUDA), and both. Drift against the first call's video.
6. `context parallel`: `enable_parallelism(ContextParallelConfig(ulysses_degree=N))` over the model's `_cp_plan`,
   only with more than one GPU (one process per GPU, compared with the single-GPU output); otherwise a skipped row.
7. `compile`: `compile_repeated_blocks(fullgraph=True)`; it runs right after the caches, its first call (the
   compile) stopped by a timer so that ~55 s of `--time-budget` stay for the sections after it.

Columns: time (median of `--repeats` after `--warmup` on CUDA, minimum on a CPU; CUDA runs each loop and pipeline
call once, a CPU five and two times), peak memory and resident memory. CUDA: `max_memory_allocated` during the step,
absolute (one model on the device at a time, so it is weights + inputs + activations) and `memory_allocated` before
it. CPU: resident = parameters and buffers; peak = resident + `measure.peak_mib` of a separate untimed run (the peak
of CPU tensor storage it allocates, tracked by a `TorchDispatchMode`; `n/a` for compiled code, which bypasses it).

Presets (random weights):
- `cpu`: the package's tiny test DiT (4 heads x 32, 4 layers, FFN 512, text width 128), latent 16x5x16x16 (320
  tokens), 32 text tokens of which 8 are real; 20-step loop, with and without guidance; the `cpu` pipeline of
  `bench_pipeline.py` at 17x128x128, 2 steps.
- `gpu`: the DiT at Wan2.1-1.3B dimensions (text width 4096, 512 text tokens of which 64 are real), latent
  16x21x60x104 (81x480x832 video, 32,760 tokens); 10-step loop with guidance 5 (`--quick`: 8 steps without guidance);
  the `gpu` pipeline of `bench_pipeline.py` at 81x480x832, 2 steps.
`--dry-run` shrinks the preset to toy sizes and runs the CUDA-only cases on the CPU too (they may fail there): a
check of the script's own code before a one-shot GPU run.

Usage:
    python benchmarks/bench_features.py --device cpu --output-dir benchmarks/results
    python benchmarks/bench_features.py --device cuda --dtype bf16 --quick --time-budget 170 --output-dir "$OUT"
    python benchmarks/bench_features.py --device cpu --preset gpu --dry-run --output-dir /tmp/dry
"""

import argparse
import contextlib
import importlib.util
import json
import os
import signal
import statistics
import sys
import traceback
from dataclasses import asdict, dataclass, field, replace

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_pipeline as bp  # noqa: E402  (also puts the repository root on sys.path)
import report  # noqa: E402
import torch  # noqa: E402
from bench_vae import tiling_arguments  # noqa: E402
from measure import DTYPES, TimeBudget, device_name, free_memory, peak_mib, synchronize, timed  # noqa: E402

TAYLORSEER_IDENTIFIERS = [r"blocks\.\d+\.attn[12]"]

# ----------------------------------------------------------------------------------------------------------------
# 1. Presets
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class FeaturePreset:
    transformer: dict
    latent: tuple[int, int, int]  # latent frames, height, width
    text_tokens: int
    text_valid: int  # real (unpadded) text tokens; the rest is masked as the pipeline masks padding
    loop_steps: int
    loop_guidance: list[float] = field(default_factory=lambda: [5.0])
    pipeline: str = "cpu"  # bench_pipeline preset
    pipeline_size: tuple[int, int, int] = (17, 128, 128)
    pipeline_steps: int = 2
    # vae.enable_tiling() arguments; {} = the VAE's defaults (256 px tiles every 192 px, 16-frame temporal tiles)
    tiling: dict = field(default_factory=dict)


FEATURE_PRESETS = {
    "cpu": FeaturePreset(
        transformer=bp.TINY_DIT,
        latent=(5, 16, 16),
        text_tokens=32,
        text_valid=8,
        loop_steps=20,
        loop_guidance=[1.0, 5.0],
        pipeline="cpu",
        pipeline_size=(17, 128, 128),
        pipeline_steps=2,
        # 128 px frames: smaller tiles than the default 256 px, or nothing would be tiled (as bench_vae's long clip)
        tiling=tiling_arguments(64, 48),
    ),
    "gpu": FeaturePreset(
        transformer={"text_embed_dim": 4096},  # Wan2.1-1.3B dimensions are the defaults
        latent=(21, 60, 104),
        text_tokens=512,
        text_valid=64,
        loop_steps=10,
        loop_guidance=[5.0],
        pipeline="gpu",
        pipeline_size=(81, 480, 832),
        pipeline_steps=2,
    ),
}


def dry_run_preset(preset: FeaturePreset) -> FeaturePreset:
    return replace(
        preset,
        transformer=bp.DRY_DIT,
        latent=(3, 4, 6),
        text_tokens=8,
        text_valid=3,
        loop_steps=min(preset.loop_steps, 8),
        pipeline_size=(9, 32, 48),
        pipeline_steps=1,
        tiling=tiling_arguments(16, 8, frames=4),
    )


# ----------------------------------------------------------------------------------------------------------------
# 2. Measuring
# ----------------------------------------------------------------------------------------------------------------


class CaseTimeout(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float | None):
    """Raise `CaseTimeout` in the main thread after `seconds` (SIGALRM; no limit when None or not on POSIX)."""
    if seconds is None or not hasattr(signal, "setitimer") or seconds == float("inf"):
        yield
        return

    def handler(signum, frame):
        raise CaseTimeout(f"stopped after {seconds:.0f} s (time budget)")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1.0))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def relative_l2(value: torch.Tensor, reference: torch.Tensor) -> float:
    value, reference = value.detach().float().cpu(), reference.detach().float().cpu()
    return float((value - reference).norm() / reference.norm().clamp_min(1e-30))


class Context:
    def __init__(self, args, preset: FeaturePreset):
        self.args = args
        self.preset = preset
        self.device = args.device
        self.cuda = args.device == "cuda"
        self.dtype = DTYPES[args.dtype]
        self.budget = TimeBudget(args.time_budget)
        self.rows: list[dict] = []

    # -- timing and memory ---------------------------------------------------------------------------------------

    def measure(
        self,
        function,
        warmup: int | None = None,
        repeats: int | None = None,
        track_cpu_peak=True,
        resident_module=None,
    ) -> dict:
        """Time of `function()` after warm-up (median on CUDA; minimum on a CPU, where a shared host's load only ever
        adds), its last output, and resident / peak memory in MiB."""
        warmup = self.args.warmup if warmup is None else warmup
        repeats = self.args.repeats if repeats is None else repeats
        output = None
        for _ in range(warmup):
            output = function()
        synchronize(self.device)
        resident = peak = None
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            resident = torch.cuda.memory_allocated() / 2**20
        times = []
        for _ in range(max(1, repeats)):
            output, seconds = timed(function, self.device)
            times.append(seconds)
        if self.cuda:
            peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            resident = bp.model_bytes(resident_module) / 2**20 if resident_module is not None else None
            if track_cpu_peak:
                peak = (resident or 0.0) + peak_mib(function, "cpu")
        time_s = statistics.median(times) if self.cuda else min(times)
        return {"time_s": time_s, "output": output, "resident_mib": resident, "peak_mib": peak}

    def measure_forward(self, model, inputs: dict, use_mask: bool = True) -> dict:
        """`measure` of one DiT forward, the model's weights as the resident memory."""
        return self.measure(forward_fn(model, inputs, use_mask), resident_module=model)

    # -- rows ----------------------------------------------------------------------------------------------------

    def add(
        self,
        section: str,
        feature: str,
        status: str = "ok",
        result: dict | None = None,
        baseline=None,
        drift=None,
        note: str = "",
        unit: str = "ms",
        extra: dict | None = None,
    ) -> dict:
        result = result or {}
        time_s = result.get("time_s")
        row = {
            "section": section,
            "feature": feature,
            "status": status,
            "time_s": time_s,
            "unit": unit,
            "speedup": (baseline / time_s) if (baseline and time_s) else None,
            "peak_mib": result.get("peak_mib"),
            "resident_mib": result.get("resident_mib"),
            "drift": drift,
            "note": note,
            **(extra or {}),
        }
        self.rows.append(row)
        shown = "" if time_s is None else (f" {time_s * 1e3:.2f} ms" if unit == "ms" else f" {time_s:.3f} s")
        print(
            f"  [{section}] {feature}: {status}{shown}"
            f"{'' if drift is None else f', drift {drift:.2e}'}{f' ({note})' if note else ''}",
            flush=True,
        )
        return row

    def add_against(
        self,
        section: str,
        feature: str,
        result: dict,
        baseline: dict | None,
        note: str = "",
        unit: str = "ms",
        **extra,
    ) -> dict:
        """An `ok` row with the speed-up and drift of `result` against `baseline` (a measured result: `time_s`,
        `output`; None where the baseline failed)."""
        drift = relative_l2(result["output"], baseline["output"]) if baseline else None
        base_time = baseline["time_s"] if baseline else None
        return self.add(section, feature, "ok", result, base_time, drift, note, unit, extra)

    def run_case(self, section: str, feature: str, body, needs_s: float = 0.0, unit: str = "ms") -> None:
        """Run `body()` (which adds its own rows) guarded: an exception or an exhausted budget becomes a row."""
        if not self.budget.allows(needs_s):
            self.add(
                section,
                feature,
                f"skipped: time budget ({self.budget.left():.0f} s left, needs ~{needs_s:.0f})",
                unit=unit,
            )
            return
        try:
            body()
        except Exception as error:  # the run goes on
            traceback.print_exc()
            self.add(section, feature, f"failed: {report.one_line(error)}", unit=unit)
        finally:
            free_memory(self.device)


# ----------------------------------------------------------------------------------------------------------------
# 3. Inputs and the DiT forward
# ----------------------------------------------------------------------------------------------------------------


def make_inputs(ctx: Context, text_embed_dim: int, seed: int = 0) -> dict:
    preset = ctx.preset
    generator = torch.Generator().manual_seed(seed)
    frames, height, width = preset.latent
    noise = torch.randn(1, 16, frames, height, width, generator=generator)
    text = torch.randn(1, preset.text_tokens, text_embed_dim, generator=generator)
    negative = torch.randn(1, preset.text_tokens, text_embed_dim, generator=generator)
    mask = torch.zeros(1, preset.text_tokens, dtype=torch.long)
    mask[:, : preset.text_valid] = 1
    negative_mask = torch.zeros_like(mask)
    negative_mask[:, :2] = 1  # an empty negative prompt: [CLS] [SEP]
    text, negative = text * mask[..., None], negative * negative_mask[..., None]  # padded positions zeroed, as encoded
    device = ctx.device
    return {
        "noise": noise.to(device),
        "latents": noise.to(device, ctx.dtype),
        "timestep": torch.tensor([500.0], device=device),
        "text": text.to(device, ctx.dtype),
        "mask": mask.to(device),
        "negative": negative.to(device, ctx.dtype),
        "negative_mask": negative_mask.to(device),
    }


def cast_inputs(inputs: dict, dtype: torch.dtype) -> dict:
    out = dict(inputs)
    for key in ("latents", "text", "negative"):
        out[key] = inputs[key].to(dtype)
    return out


def forward_fn(model, inputs: dict, use_mask: bool = True):
    def forward():
        with torch.no_grad():
            return model(
                inputs["latents"],
                inputs["timestep"],
                inputs["text"],
                encoder_attention_mask=inputs["mask"] if use_mask else None,
                return_dict=False,
            )[0]

    return forward


def fresh_transformer(ctx: Context, dtype: torch.dtype | None = None, device: str | None = None):
    """The baseline's weights again (same seed, same device: same values)."""
    return bp.build_transformer(ctx.preset.transformer, device or ctx.device, dtype or ctx.dtype, seed=0)


# ----------------------------------------------------------------------------------------------------------------
# 4. Sections
# ----------------------------------------------------------------------------------------------------------------


def attention_backends(ctx: Context, model, inputs: dict, state: dict) -> None:
    section = "forward"
    baseline = state["forward"]
    names = ["native", "_native_cudnn", "_native_flash", "_native_efficient", "flash"]

    def unmasked_baseline():
        if "forward_nomask" not in state:
            model.set_attention_backend("native")
            state["forward_nomask"] = forward_fn(model, inputs, use_mask=False)().float().cpu()
        return state["forward_nomask"]

    for name in names:
        feature = f"set_attention_backend('{name}')"
        # PyTorch's CPU SDPA has the math and flash kernels only; flash-attn is CUDA-only
        if name not in ("native", "_native_flash") and not ctx.cuda and not ctx.args.dry_run:
            ctx.add(section, feature, "skipped: CUDA-only kernel")
            continue
        if name == "flash" and importlib.util.find_spec("flash_attn") is None:
            ctx.add(section, feature, "skipped: flash-attn is not installed")
            continue

        def body(name=name, feature=feature):
            note = ""
            try:
                model.set_attention_backend(name)
                try:
                    result = ctx.measure_forward(model, inputs)
                    drift = relative_l2(result["output"], baseline["output"])
                    if drift > 2e-2:  # far beyond kernel rounding: does it ignore the padding mask?
                        unmasked = forward_fn(model, inputs, use_mask=False)().float().cpu()
                        drift_nomask = relative_l2(unmasked, unmasked_baseline())
                        model.set_attention_backend(name)
                        note = (
                            f"drift vs masked baseline {drift:.2e}, unmasked run vs unmasked baseline "
                            f"{drift_nomask:.2e}: "
                            + ("the text padding mask is ignored" if drift_nomask < drift / 10 else "inaccurate")
                        )
                except Exception as masked_error:
                    if "forward_nomask" not in state:
                        unmasked_baseline()
                        model.set_attention_backend(name)
                    result = ctx.measure_forward(model, inputs, use_mask=False)
                    drift = relative_l2(result["output"], state["forward_nomask"])
                    note = f"rejects the text mask ({report.one_line(masked_error, 110)}); timed without it"
                    state.setdefault("mask_rejected", []).append(name)
                ctx.add(section, feature, "ok", result, baseline["time_s"], drift, note)
            finally:
                model.set_attention_backend("native")  # also resets the process-wide active backend

        ctx.run_case(section, feature, body, needs_s=5 if ctx.cuda else 0)
        if name not in state.get("mask_rejected", []):
            continue

        # The pipeline always passes the text mask (to cross-attention only): per-module backends keep it working.
        feature = f"'{name}' on self-attention only (blocks[i].attn1.set_attention_backend)"

        def self_attention_only(name=name, feature=feature):
            try:
                for block in model.blocks:
                    block.attn1.set_attention_backend(name)
                result = ctx.measure_forward(model, inputs)
                ctx.add_against(
                    section, feature, result, baseline, "cross-attention stays native and keeps the text mask"
                )
            finally:
                model.set_attention_backend("native")

        ctx.run_case(section, feature, self_attention_only, needs_s=5 if ctx.cuda else 0)


class AttentionCounter:
    """Counts attention kernels actually run (patches the module-level `dispatch_attention_fn` the processor calls)."""

    def __init__(self):
        from diffusers_spacetime.models import transformer_spacetime

        self.module = transformer_spacetime
        self.original = transformer_spacetime.dispatch_attention_fn
        self.calls = 0

    def __enter__(self):
        def counting(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)

        self.module.dispatch_attention_fn = counting
        return self

    def __exit__(self, *exc):
        self.module.dispatch_attention_fn = self.original


def denoising_loop(ctx: Context, model, inputs: dict, steps: int, guidance: float, clock: dict) -> torch.Tensor:
    """Flow-matching Euler over the DiT, cond / uncond as two calls in their cache contexts (as the pipeline does)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(steps, device=ctx.device)
    latents = inputs["noise"].clone().float()
    if hasattr(model, "_reset_stateful_cache"):
        model._reset_stateful_cache()
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            clock["t"] = float(t)  # PyramidAttentionBroadcast's current_timestep_callback reads it
            x = latents.to(ctx.dtype)
            timestep = t.expand(1)
            context = {
                "step_index": i,
                "num_inference_steps": steps,
                "timestep": t,
                "sigma": float(scheduler.sigmas[i]),
            }
            with model.cache_context("cond", **context):
                velocity = model(
                    x, timestep, inputs["text"], encoder_attention_mask=inputs["mask"], return_dict=False
                )[0].float()
            if guidance > 1:
                with model.cache_context("uncond", **context):
                    uncond = model(
                        x,
                        timestep,
                        inputs["negative"],
                        encoder_attention_mask=inputs["negative_mask"],
                        return_dict=False,
                    )[0].float()
                velocity = uncond + guidance * (velocity - uncond)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
    return latents


def hooked_modules(model, marker: str) -> int:
    count = 0
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is not None and any(marker in name for name in registry.hooks):
            count += 1
    return count


CACHE_MARKERS = {"FirstBlockCache": "fbc", "PyramidAttentionBroadcast": "pyramid", "TaylorSeer": "taylorseer"}
NO_CACHE = "no cache (baseline)"


def cache_configs(clock: dict, taylor_dtype: torch.dtype) -> dict:
    """Cache name -> a function making its config (a fresh config per run: the hooks keep their state in it)."""
    from diffusers import FirstBlockCacheConfig, PyramidAttentionBroadcastConfig, TaylorSeerCacheConfig

    return {
        "FirstBlockCache(threshold=0.05)": lambda: FirstBlockCacheConfig(threshold=0.05),
        # random weights change the first block's residual more between steps than a trained model does
        "FirstBlockCache(threshold=0.2)": lambda: FirstBlockCacheConfig(threshold=0.2),
        "PyramidAttentionBroadcast(spatial 2, cross 3, t in (100, 800))": lambda: PyramidAttentionBroadcastConfig(
            spatial_attention_block_skip_range=2,
            cross_attention_block_skip_range=3,
            spatial_attention_timestep_skip_range=(100, 800),
            cross_attention_timestep_skip_range=(100, 800),
            current_timestep_callback=lambda: clock["t"],
        ),
        "TaylorSeer(interval 5, warm-up 3, order 1, attn1/attn2)": lambda: TaylorSeerCacheConfig(
            cache_interval=5,
            disable_cache_before_step=3,
            max_order=1,
            taylor_factors_dtype=taylor_dtype,
            cache_identifiers=TAYLORSEER_IDENTIFIERS,
        ),
    }


def cached_loop(ctx: Context, model, loop, name: str, make_config, record: dict, first: bool) -> None:
    """One loop under `name`'s cache into `record`; the first round also keeps the output, counts attention calls
    and (CPU) tracks memory."""
    try:
        if make_config is not None:
            model.enable_cache(make_config())
            marker = next(value for key, value in CACHE_MARKERS.items() if name.startswith(key))
            record["hooked"] = hooked_modules(model, marker)
        with AttentionCounter() as counter:
            result = ctx.measure(loop, warmup=0, repeats=1, track_cpu_peak=first, resident_module=model)
        record["times"].append(result["time_s"])
        if first:
            record.update(result)
            record["attn_calls"] = counter.calls // (1 if ctx.cuda else 2)  # + the CPU tracking run
        elif ctx.cuda and result["peak_mib"] is not None:
            record["peak_mib"] = max(record["peak_mib"], result["peak_mib"])
    finally:
        if getattr(model, "is_cache_enabled", False):
            model.disable_cache()


def cache_rounds(ctx: Context, model, loop, candidates: dict, per_loop_s: float) -> dict:
    """name -> record of every candidate's loops (`times`, the first round's result), or its `error` / `skipped`.

    Every candidate runs once per round, so a load change on a shared host hits all of them alike; loops are cheap
    on the CPU preset and its host is noisy, so a CPU runs five rounds.
    """
    records = {name: {"times": []} for name in candidates}
    for round_index in range(1 if ctx.cuda else 5):
        for name, make_config in candidates.items():
            record = records[name]
            if "error" in record or "skipped" in record:
                continue
            if not ctx.budget.allows(per_loop_s):
                if round_index == 0:
                    record["skipped"] = f"skipped: time budget ({ctx.budget.left():.0f} s left)"
                continue  # later rounds keep the rounds done so far
            try:
                cached_loop(ctx, model, loop, name, make_config, record, first=round_index == 0)
            except Exception as error:
                traceback.print_exc()
                record["error"] = f"failed: {report.one_line(error)}"
            finally:
                free_memory(ctx.device)
    return records


def cache_rows(ctx: Context, section: str, records: dict, guidance: float) -> None:
    base = records[NO_CACHE]
    for name, record in records.items():
        feature = name if name == NO_CACHE else f"enable_cache({name})"
        if "error" in record or "skipped" in record:
            ctx.add(section, feature, record.get("error") or record["skipped"], unit="s")
            continue
        record["time_s"] = min(record["times"]) if not ctx.cuda else statistics.median(record["times"])
        if name == NO_CACHE:
            note = f"{record['attn_calls']} attention calls; {len(record['times'])} run(s)"
            ctx.add(section, feature, "ok", record, record["time_s"], 0.0, unit="s", note=note)
            continue
        share = record["attn_calls"] / max(base.get("attn_calls", 0), 1)
        note = f"attn calls {100 * share:.0f}% of baseline; {record['hooked']} modules hooked"
        if name.startswith("PyramidAttentionBroadcast") and guidance > 1:
            note += (
                "; PAB keeps one cache per attention module, shared by the cond and uncond calls: "
                "the uncond call reuses the cond call's attention output"
            )
        ctx.add_against(section, feature, record, base if "output" in base else None, note, "s", attn_share=share)


def caches(ctx: Context, model, inputs: dict) -> None:
    """Section 2: the denoising loop under each cache, per guidance scale, then TaylorSeer's default patterns."""
    clock = {"t": 1000.0}
    quick = ctx.args.quick and ctx.cuda
    steps = ctx.args.loop_steps or (8 if quick else ctx.preset.loop_steps)
    candidates = {NO_CACHE: None, **cache_configs(clock, ctx.dtype)}
    for guidance in [1.0] if quick else ctx.preset.loop_guidance:
        # a loop costs ~steps x calls forwards: on CUDA ask the budget for that
        per_loop = (steps * (2 if guidance > 1 else 1) * ctx.args.forward_estimate_s) if ctx.cuda else 0

        def loop(guidance=guidance):
            return denoising_loop(ctx, model, inputs, steps, guidance, clock)

        records = cache_rounds(ctx, model, loop, candidates, per_loop)
        cache_rows(ctx, f"denoising loop, {steps} steps, guidance {guidance:g}", records, guidance)
    ctx.run_case("denoising loop", "TaylorSeer default patterns", lambda: default_taylorseer(ctx, model), unit="s")


def default_taylorseer(ctx: Context, model) -> None:
    """TaylorSeer with its default patterns, as a user would first try it: how many modules does it hook?"""
    from diffusers import TaylorSeerCacheConfig

    try:
        model.enable_cache(TaylorSeerCacheConfig())
        hooked = hooked_modules(model, "taylorseer")
    finally:
        if getattr(model, "is_cache_enabled", False):
            model.disable_cache()
    ctx.add(
        "denoising loop",
        "enable_cache(TaylorSeerCacheConfig()) default patterns",
        "ok" if hooked else "ok but inert",
        unit="s",
        note=f"{hooked} modules hooked (not run: {'hooks attach' if hooked else 'a no-op cache'}); pass "
        "cache_identifiers=[r'blocks\\.\\d+\\.attn[12]'] or use_lite_mode=True",
    )


def layerwise_casting(ctx: Context, inputs: dict, state: dict) -> None:
    section = "layerwise casting"
    fp8 = torch.float8_e4m3fn
    if ctx.cuda:
        cases = [(fp8, ctx.dtype)]
    else:
        cases = [(fp8, torch.float32), (None, torch.bfloat16), (fp8, torch.bfloat16)]
    baseline = state["forward"]
    for storage, compute in cases:
        compute_name = str(compute).replace("torch.", "")
        if storage is None:
            feature = f"plain {compute_name} model (reference for the fp8 row)"
        else:
            feature = f"enable_layerwise_casting(float8_e4m3fn -> {compute_name})"

        def body(storage=storage, compute=compute, feature=feature):
            model = fresh_transformer(ctx, dtype=compute)
            if storage is not None:
                model.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute)
            result = ctx.measure_forward(model, cast_inputs(inputs, compute))
            weights = bp.model_bytes(model) / 2**20
            ctx.add_against(
                section, feature, result, baseline, f"weights {weights:.0f} MiB vs {state['weights_mib']:.0f} MiB"
            )
            del model

        ctx.run_case(section, feature, body, needs_s=8 if ctx.cuda else 0)


def group_offload(ctx: Context, inputs: dict, state: dict) -> None:
    section = "group offload"
    baseline = state["forward"]
    for offload_type in ("block_level", "leaf_level"):
        feature = (
            f"enable_group_offload({offload_type}{', 1 block per group' if offload_type == 'block_level' else ''}, "
        )
        feature += "streams)" if ctx.cuda else "no streams)"
        if not ctx.cuda and not ctx.args.dry_run:
            ctx.add(section, feature, "skipped: needs CUDA (onload device = offload device on a CPU)")
            continue

        def body(offload_type=offload_type, feature=feature):
            model = fresh_transformer(ctx).to("cpu")
            free_memory(ctx.device)
            kwargs = {"num_blocks_per_group": 1} if offload_type == "block_level" else {}
            model.enable_group_offload(
                onload_device=torch.device(ctx.device),
                offload_device=torch.device("cpu"),
                offload_type=offload_type,
                use_stream=ctx.cuda,
                **kwargs,
            )
            result = ctx.measure_forward(model, inputs)
            resident = bp.model_bytes(model, ctx.device) / 2**20
            ctx.add_against(
                section, feature, result, baseline, f"resident = {resident:.0f} MiB of weights on {ctx.device}"
            )
            del model

        ctx.run_case(section, feature, body, needs_s=10 if ctx.cuda else 0)


def pipeline_features(ctx: Context) -> None:
    section = "pipeline"
    preset = bp.PIPELINE_PRESETS[ctx.preset.pipeline]
    if ctx.args.dry_run:
        preset = bp.dry_run_preset(preset)
    frames, height, width = ctx.preset.pipeline_size
    steps = ctx.preset.pipeline_steps
    unit = "s"
    state = {}

    def build():
        pipe = bp.build_pipeline(preset, ctx.device, ctx.dtype)
        with torch.no_grad():  # warm-up: a small 1-step call
            bp.call_pipeline(pipe, preset, *preset.warmup, steps=1)
        state["pipe"] = pipe

    ctx.run_case(section, "build pipeline", build, needs_s=25 if ctx.cuda else 0, unit=unit)
    if "pipe" not in state:
        return
    pipe = state.pop("pipe")
    describe = f"{frames}x{height}x{width}, {steps} steps, guidance {preset.guidance_scale:g}"

    def call():
        with torch.no_grad():
            return bp.call_pipeline(pipe, preset, frames, height, width, steps).float().cpu()

    def measure_call():
        components = torch.nn.ModuleList([pipe.text_encoder, pipe.transformer, pipe.vae])  # no copy: references
        return ctx.measure(call, warmup=0, repeats=1 if ctx.cuda else 2, resident_module=components)

    def baseline_body():
        result = measure_call()
        state["base"] = result
        ctx.add(section, f"all on {ctx.device} ({describe})", "ok", result, result["time_s"], 0.0, unit=unit)

    ctx.run_case(section, "baseline", baseline_body, needs_s=8 if ctx.cuda else 0, unit=unit)
    base = state.get("base")

    def tiling_body():
        pipe.vae.enable_tiling(**ctx.preset.tiling)
        try:
            result = measure_call()
        finally:
            pipe.vae.disable_tiling()
        vae = pipe.vae
        note = f"tiles {vae.tile_sample_min_height} px every {vae.tile_sample_stride_height} px, "
        note += f"{vae.tile_sample_min_num_frames} frames"
        ctx.add_against(section, "vae.enable_tiling()", result, base, note, unit)

    ctx.run_case(section, "vae.enable_tiling()", tiling_body, needs_s=8 if ctx.cuda else 0, unit=unit)
    model_cpu_offload(ctx, pipe, measure_call, base)
    with contextlib.suppress(Exception):
        pipe.remove_all_hooks()
    pipe.__dict__.clear()  # drop the components now (the closures above still reference the pipeline object)


def model_cpu_offload(ctx: Context, pipe, measure_call, base: dict | None) -> None:
    """The pipeline rows of `enable_model_cpu_offload()`, without and with VAE tiling (the last rows on `pipe`:
    offloading is not undone)."""
    section, unit = "pipeline", "s"
    offload_cases = [("enable_model_cpu_offload()", False), ("enable_model_cpu_offload() + vae.enable_tiling()", True)]
    if not ctx.cuda and not ctx.args.dry_run:
        for feature, _ in offload_cases:
            ctx.add(section, feature, "skipped: needs an accelerator (diffusers raises on a CPU-only host)", unit=unit)
        return
    offloaded = {"done": False}
    for feature, tiled in offload_cases:

        def offload_body(feature=feature, tiled=tiled):
            if not offloaded["done"]:
                pipe.enable_model_cpu_offload(device=ctx.device if ctx.cuda else None)
                offloaded["done"] = True
                free_memory(ctx.device)
            if tiled:
                pipe.vae.enable_tiling(**ctx.preset.tiling)
            try:
                result = measure_call()
            finally:
                pipe.vae.disable_tiling()
            note = "text encoder, DiT and VAE moved to the GPU in turn"
            ctx.add_against(section, feature, result, base, note, unit)

        ctx.run_case(section, feature, offload_body, needs_s=10 if ctx.cuda else 0, unit=unit)


def _cp_worker(rank: int, world_size: int, config: dict, inputs: dict, port: int, queue) -> None:
    """One rank of the context-parallel check: Ulysses over all GPUs, native attention."""
    import torch.distributed as dist
    from diffusers import ContextParallelConfig

    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
        torch.cuda.set_device(rank)
        dist.init_process_group("nccl", rank=rank, world_size=world_size)
        model = bp.build_transformer(config["transformer"], "cuda", DTYPES[config["dtype"]], seed=0)
        model.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world_size))
        rank_inputs = {k: (v.to(f"cuda:{rank}") if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}
        forward = forward_fn(model, rank_inputs)
        forward()
        times = []
        for _ in range(config["repeats"]):
            torch.cuda.synchronize()
            dist.barrier()  # every rank starts the timed forward together
            output, seconds = timed(forward, "cuda")
            times.append(seconds)
        if rank == 0:
            queue.put(
                {
                    "time_s": statistics.median(times),
                    "output": output.float().cpu(),
                    "peak_mib": torch.cuda.max_memory_allocated() / 2**20,
                }
            )
        dist.destroy_process_group()
    except Exception as error:  # reported by rank 0's parent
        if rank == 0:
            queue.put({"error": report.one_line(error)})


def context_parallel(ctx: Context, inputs: dict, state: dict) -> None:
    section = "context parallel"
    count = torch.cuda.device_count() if ctx.cuda else 0
    if count < 2:
        ctx.add(
            section,
            "enable_parallelism(ContextParallelConfig(ulysses_degree=N)) via _cp_plan",
            f"skipped: NOT RUN, {count} GPU(s) visible; context parallelism needs at least 2",
        )
        return
    frames = ctx.preset.latent[0]
    world = (
        max(d for d in range(2, count + 1) if frames % d == 0)
        if any(frames % d == 0 for d in range(2, count + 1))
        else count
    )
    feature = f"enable_parallelism(ContextParallelConfig(ulysses_degree={world})) via _cp_plan"

    def body():
        import torch.multiprocessing as mp

        spawn_ctx = mp.get_context("spawn")
        queue = spawn_ctx.Queue()
        config = {"transformer": ctx.preset.transformer, "dtype": ctx.args.dtype, "repeats": ctx.args.repeats}
        cpu_inputs = {k: v.cpu() for k, v in inputs.items()}
        processes = [
            spawn_ctx.Process(target=_cp_worker, args=(r, world, config, cpu_inputs, 29517, queue))
            for r in range(world)
        ]
        for process in processes:
            process.start()
        result = queue.get(timeout=max(30.0, min(180.0, ctx.budget.left())))
        for process in processes:
            process.join(timeout=30)
        if "error" in result:
            raise RuntimeError(result["error"])
        ctx.add_against(
            section, feature, result, state["forward"], f"{world} GPUs, one process each; peak is rank 0's"
        )

    ctx.run_case(section, feature, body, needs_s=40)


def compile_blocks(ctx: Context, inputs: dict, state: dict) -> None:
    section = "compile"
    feature = "compile_repeated_blocks(fullgraph=True)"
    baseline = state["forward"]

    def body():
        model = fresh_transformer(ctx)
        model.compile_repeated_blocks(fullgraph=True)
        forward = forward_fn(model, inputs)
        # on CUDA leave ~55 s of the budget to the sections after this one
        reserve = 55.0 if ctx.cuda else 0.0
        limit = min(ctx.budget.left() - reserve, 90.0) if ctx.args.time_budget else None
        with time_limit(limit):
            _, compile_s = timed(forward, ctx.device)
        result = ctx.measure(forward, track_cpu_peak=False, resident_module=model)
        note = f"first call (compile) {compile_s:.1f} s" + ("" if ctx.cuda else "; CPU peak not tracked")
        ctx.add_against(section, feature, result, baseline, note)
        del model

    ctx.run_case(section, feature, body, needs_s=90 if ctx.cuda else 0)


# ----------------------------------------------------------------------------------------------------------------
# 5. Report
# ----------------------------------------------------------------------------------------------------------------


def format_rows(rows: list[dict]) -> str:
    header = [
        "section",
        "feature",
        "status",
        "time",
        "speed-up",
        "peak MiB",
        "resident MiB",
        "drift (rel. L2)",
        "notes",
    ]
    table = []
    for row in rows:
        time_s = row["time_s"]
        if time_s is None:
            shown = ""
        elif row["unit"] == "ms":
            shown = f"{time_s * 1e3:.2f} ms"
        else:
            shown = f"{time_s:.3f} s"
        table.append(
            [
                row["section"],
                row["feature"],
                row["status"].replace("|", "/"),
                shown,
                "" if row["speedup"] is None else f"{row['speedup']:.2f}x",
                "" if row["peak_mib"] is None else f"{row['peak_mib']:,.0f}",
                "" if row["resident_mib"] is None else f"{row['resident_mib']:,.0f}",
                "" if row["drift"] is None else f"{row['drift']:.2e}",
                row["note"].replace("|", "/"),
            ]
        )
    return report.markdown_table(header, table)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    report.add_device_arguments(parser)
    parser.add_argument("--preset", choices=sorted(FEATURE_PRESETS), help="Default: the device's.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed forwards before timing.")
    parser.add_argument("--repeats", type=int, default=None, help="Timed forwards, median (default 5 CPU, 3 CUDA).")
    parser.add_argument("--loop-steps", type=int, default=None, help="Steps of the cache loop (default: preset's).")
    quick_help = "The one-shot GPU run: 2 timed forwards, an 8-step loop without guidance."
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--dry-run", action="store_true", help="Toy sizes; CUDA-only cases run on the CPU too.")
    sections = ["backends", "caches", "casting", "offload", "pipeline", "cp", "compile"]
    parser.add_argument("--skip", nargs="*", default=[], choices=sections, help="Sections not to run.")
    report.add_one_shot_arguments(
        parser, budget_help="Seconds since start after which cases are skipped (compile stopped)"
    )
    args = report.one_shot_defaults(parser.parse_args(argv), __file__, argv)
    args.repeats = args.repeats or (2 if args.quick else (3 if args.device == "cuda" else 5))
    args.forward_estimate_s = 0.0  # the baseline forward's time, once measured: what the loops ask the budget for
    return args


def baseline_forward(ctx: Context, state: dict):
    """`(model, inputs)`: the baseline model and inputs, its forward measured into `state["forward"]` (absent, and
    a failed row, when it raises)."""
    model = inputs = None
    try:
        model = fresh_transformer(ctx)
        state["weights_mib"] = bp.model_bytes(model) / 2**20
        inputs = make_inputs(ctx, model.config.text_embed_dim)
        result = ctx.measure_forward(model, inputs)
        state["forward"] = {"time_s": result["time_s"], "output": result["output"].float().cpu()}
        ctx.args.forward_estimate_s = result["time_s"]
        preset = ctx.preset
        note = f"latent {preset.latent}, {preset.text_tokens} text tokens ({preset.text_valid} unmasked)"
        ctx.add("forward", "baseline: eager, default backend (native SDPA)", "ok", result, result["time_s"], 0.0, note)
    except Exception as error:
        traceback.print_exc()
        ctx.add("forward", "baseline", f"failed: {report.one_line(error)}")
    return model, inputs


def run_sections(ctx: Context, skip: list[str]) -> None:
    """The sections in order, the baseline model freed once the sections that share it are done."""
    state = {}
    model, inputs = baseline_forward(ctx, state)
    if "forward" in state:
        if "backends" not in skip:
            attention_backends(ctx, model, inputs, state)
        if "caches" not in skip:
            caches(ctx, model, inputs)
        del model
        free_memory(ctx.device)
        if "compile" not in skip:
            compile_blocks(ctx, inputs, state)
        if "casting" not in skip:
            layerwise_casting(ctx, inputs, state)
        if "offload" not in skip:
            group_offload(ctx, inputs, state)
    if "pipeline" not in skip:
        pipeline_features(ctx)
    if "forward" in state and "cp" not in skip:
        context_parallel(ctx, inputs, state)


def main(args) -> str:
    if args.threads or args.device == "cpu":
        torch.set_num_threads(args.threads or 2)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but no CUDA device is visible")
    preset = dry_run_preset(FEATURE_PRESETS[args.preset]) if args.dry_run else FEATURE_PRESETS[args.preset]
    ctx = Context(args, preset)
    os.makedirs(args.output_dir, exist_ok=True)
    label = device_name(args.device)
    dry_run = " (dry run)" if args.dry_run else ""
    print(f"[bench_features] {label}, {args.dtype}, preset {args.preset}{dry_run}", flush=True)

    run_sections(ctx, args.skip)

    lines = [
        f"### Speed and memory features: {label}, {args.dtype}{' (DRY RUN, toy sizes)' if args.dry_run else ''}",
        "",
        f"{report.versions()}; preset `{args.preset}` (DiT {json.dumps(preset.transformer)} over the Wan2.1-1.3B "
        f"defaults, random weights); forward: {'median' if args.device == 'cuda' else 'best'} of {args.repeats} after "
        f"{args.warmup} warm-up; run took {ctx.budget.elapsed():.0f} s.",
        "",
        f"Command: `{args.command}`",
        "",
        format_rows(ctx.rows),
        "",
    ]
    text = "\n".join(lines)
    results = {"device": label, "dtype": args.dtype, "preset": asdict(preset), "rows": ctx.rows}
    report.write_results(args.output_dir, f"features_{args.device}{'_dry' if args.dry_run else ''}", text, results)
    print(f"[bench_features] done in {ctx.budget.elapsed():.1f} s; outputs in {args.output_dir}", flush=True)
    return text


if __name__ == "__main__":
    main(parse_args())
