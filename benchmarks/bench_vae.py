"""Benchmark AutoencoderKLSpacetime: tiling on a long clip, and speed and memory against diffusers' AutoencoderKLWan.

Two sections, one Markdown report (stdout, and `--output`):

1. Tiling on a long clip (tiny config, 65 frames at 128x128 by default): the error of tiled against untiled encoding
   and decoding, and the peak memory of each, with the cache-free whole-clip pass as a reference for what the causal
   chunks save.
2. AutoencoderKLSpacetime against AutoencoderKLWan at equal compression (8x8 spatial, 4x temporal, 16 latent
   channels): encode and decode time and peak memory, untiled and tiled. On CUDA both use their default configs; on
   CPU both use the same small widths (`--width`, Wan's `base_dim`) so that the run fits a few minutes.

Peak memory (`measure.peak_mib`): on CUDA, `torch.cuda.max_memory_allocated` above what was allocated before the
call. On CPU, the peak of live tensor storage that the call allocates, tracked by a `TorchDispatchMode` (the CPU
analogue of `max_memory_allocated`; kernels' private scratch buffers are not seen). Both exclude weights and inputs
and include the output. Peak RSS (`ru_maxrss`) is not used: on some kernels it misses buffers that are mapped and
unmapped within the call. Each CPU case runs in a fresh subprocess. Weights are random: errors
are those of an untrained network, whose receptive field is as wide as a trained one's. Timings are the best of
`--repeats` runs after one warm-up run (the memory run).

    python benchmarks/bench_vae.py --output benchmarks/results/vae_cpu.md
    python benchmarks/bench_vae.py --device cuda --dtype bfloat16 --output benchmarks/results/vae_cuda.md
"""

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import sys

import torch
import torch.nn.functional as F
from measure import device_name, peak_mib, timed
from report import write_text

# Runs from a checkout without installing the package
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

TINY_CONFIG = {
    "block_out_channels": (16, 32, 32),
    "layers_per_block": 1,
    "latent_channels": 4,
    "temporal_downsample": (True, True),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda compares the default configs).")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="Compute dtype."
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads (1 gives stable timings on a shared host)."
    )
    parser.add_argument("--repeats", type=int, default=2, help="Timed runs per case after the warm-up run.")
    parser.add_argument("--output", default=None, help="Also write the Markdown report to this file.")
    parser.add_argument("--skip-tiling", action="store_true", help="Skip section 1 (tiling on a long clip).")
    parser.add_argument("--skip-wan", action="store_true", help="Skip section 2 (comparison with AutoencoderKLWan).")
    # Section 1
    parser.add_argument("--long-num-frames", type=int, default=65, help="Frames of the long clip (1 + 4k).")
    parser.add_argument("--long-size", type=int, default=128, help="Height and width of the long clip.")
    parser.add_argument("--long-tile", type=int, default=64, help="Spatial tile (px) for the long clip; stride 3/4.")
    parser.add_argument("--long-tile-frames", type=int, default=16, help="Temporal tile (frames) for the long clip.")
    # Section 2
    parser.add_argument("--width", type=int, default=32, help="CPU: base width of both models (Wan's base_dim).")
    parser.add_argument("--num-frames", type=int, default=None, help="Frames (default 17 on CPU, 33 on CUDA).")
    parser.add_argument("--height", type=int, default=None, help="Height (default 128 on CPU, 480 on CUDA).")
    parser.add_argument("--width-px", type=int, default=None, help="Width (default 128 on CPU, 832 on CUDA).")
    parser.add_argument(
        "--tile", type=int, default=None, help="Spatial tile (px) for both (default 96 CPU, 256 CUDA)."
    )
    parser.add_argument("--_case", default=None, help=argparse.SUPPRESS)  # internal: run one CPU case
    return parser.parse_args(argv)


# 1. Models and inputs


def spacetime_vae_class():
    try:
        from diffusers_spacetime import AutoencoderKLSpacetime
    except Exception as error:
        # The VAE module is self-contained (models import nothing above them), so it loads alone where the rest of
        # the package cannot be imported, e.g. on a GPU image with another transformers major version.
        print(f"note: `import diffusers_spacetime` failed ({error!r}); loading the VAE module alone", file=sys.stderr)
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "diffusers_spacetime", "models")
        spec = importlib.util.spec_from_file_location(
            "autoencoder_kl_spacetime", os.path.join(path, "autoencoder_kl_spacetime.py")
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        AutoencoderKLSpacetime = module.AutoencoderKLSpacetime
    return AutoencoderKLSpacetime


def build_model(model: str, preset: str, width: int, device: str, dtype: torch.dtype):
    """`model` is 'spacetime' or 'wan'; `preset` 'tiny', 'small' (equal widths `width`) or 'default'."""
    torch.manual_seed(0)
    if model == "spacetime":
        AutoencoderKLSpacetime = spacetime_vae_class()
        if preset == "tiny":
            config = TINY_CONFIG
        elif preset == "small":
            config = {"block_out_channels": (width, 2 * width, 4 * width, 4 * width)}
        else:
            config = {}
        vae = AutoencoderKLSpacetime(**config)
    else:
        from diffusers import AutoencoderKLWan

        vae = AutoencoderKLWan(**({"base_dim": width} if preset == "small" else {}))
    return vae.to(device=device, dtype=dtype).eval()


def smooth_video(num_frames: int, height: int, width: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    """A video in [-1, 1] with coarse structure and a little fine noise (deterministic)."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randn(1, 3, num_frames // 4 + 1, height // 8, width // 8, generator=generator)
    video = F.interpolate(coarse, size=(num_frames, height, width), mode="trilinear", align_corners=True)
    video = video + 0.1 * torch.randn(video.shape, generator=generator)
    return (video / video.abs().amax()).clamp(-1, 1).to(device=device, dtype=dtype)


def tiling_arguments(size: int, stride: int, frames: int | None = None) -> dict:
    """`vae.enable_tiling()` arguments: `size`-px square tiles every `stride` px, and `frames`-frame temporal tiles
    end to end where given."""
    tiles = {"tile_sample_min_height": size, "tile_sample_min_width": size}
    tiles |= {"tile_sample_stride_height": stride, "tile_sample_stride_width": stride}
    if frames:
        tiles |= {"tile_sample_min_num_frames": frames, "tile_sample_stride_num_frames": frames}
    return tiles


def case_function(vae, case: dict, device: str, dtype: torch.dtype):
    """The call to measure, with its inputs built outside it."""
    spatial, temporal = 8 if case["preset"] != "tiny" else 4, 4
    num_frames, height, width = case["shape"]
    if case.get("tile"):
        frames = case.get("tile_frames") if case["model"] == "spacetime" else None  # Wan tiles space only
        vae.enable_tiling(**tiling_arguments(case["tile"], case["tile"] * 3 // 4, frames))
    if case["op"].startswith("encode"):
        video = smooth_video(num_frames, height, width, device, dtype)
        if case["op"] == "encode_whole":  # reference: one pass over the whole clip, no causal chunks
            return lambda: vae.encoder(video.contiguous(memory_format=torch.channels_last_3d), None)
        return lambda: vae.encode(video).latent_dist.mode()
    latent_channels = vae.config.latent_channels if case["model"] == "spacetime" else vae.config.z_dim
    latent_shape = (1, latent_channels, 1 + (num_frames - 1) // temporal, height // spatial, width // spatial)
    latents = torch.randn(latent_shape, generator=torch.Generator().manual_seed(1)).to(device=device, dtype=dtype)
    if case["op"] == "decode_whole":
        return lambda: vae.decoder(latents.contiguous(memory_format=torch.channels_last_3d), None)
    return lambda: vae.decode(latents).sample


# 2. Measuring one case


def measure(case: dict, device: str, dtype: torch.dtype, repeats: int, width: int) -> dict:
    vae = build_model(case["model"], case["preset"], width, device, dtype)
    function = case_function(vae, case, device, dtype)
    with torch.no_grad():
        gc.collect()
        peak, first = timed(lambda: peak_mib(function, device), device)  # the warm-up run
        times = [timed(function, device)[1] for _ in range(repeats)]
    return {"time_s": min(times) if times else first, "peak_mib": peak}


def run_case(case: dict, args) -> dict:
    dtype = getattr(torch, args.dtype)
    if args.device == "cuda":  # in-process: CUDA peak statistics are resettable
        result = measure(case, args.device, dtype, args.repeats, args.width)
        gc.collect()
        torch.cuda.empty_cache()
        return result
    # CPU: a fresh process per case, so one case's allocations cannot hide another's peak
    command = [sys.executable, os.path.abspath(__file__), "--_case", json.dumps(case), "--dtype", args.dtype]
    command += ["--threads", str(args.threads), "--repeats", str(args.repeats), "--width", str(args.width)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{completed.stderr[-3000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


# 3. Section 1: tiling on a long clip


def tiling_section(args) -> list[str]:
    AutoencoderKLSpacetime = spacetime_vae_class()
    num_frames, size = args.long_num_frames, args.long_size
    tile, tile_frames = args.long_tile, args.long_tile_frames
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    vae = AutoencoderKLSpacetime(**TINY_CONFIG).to(device=args.device, dtype=dtype).eval()
    video = smooth_video(num_frames, size, size, args.device, dtype)
    tiles = tiling_arguments(tile, tile * 3 // 4, tile_frames)
    with torch.no_grad():
        latents = vae.encode(video).latent_dist.mode()
        decoded = vae.decode(latents).sample
        vae.enable_tiling(**tiles)
        tiled_latents = vae.encode(video).latent_dist.mode()
        tiled_decoded = vae.decode(latents).sample  # the same latents, so only decoding differs
        vae.enable_tiling(**{**tiles, "tile_sample_min_height": size, "tile_sample_min_width": size})
        time_tiled_decoded = vae.decode(latents).sample  # temporal tiles only

    def error(tiled, reference):
        difference = (tiled.float() - reference.float()).abs()
        return f"{difference.max():.4f} / {difference.mean():.5f} (output std {reference.float().std():.3f})"

    shape = (num_frames, size, size)
    base = {"model": "spacetime", "preset": "tiny", "shape": shape}
    tiled = {"tile": tile, "tile_frames": tile_frames}
    cases = [
        ("encode", "whole clip, no chunks (reference)", {**base, "op": "encode_whole"}),
        ("encode", "causal chunks (untiled)", {**base, "op": "encode"}),
        ("encode", "chunks + tiles", {**base, "op": "encode", **tiled}),
        ("decode", "whole clip, no chunks (reference)", {**base, "op": "decode_whole"}),
        ("decode", "causal chunks (untiled)", {**base, "op": "decode"}),
        ("decode", "chunks + tiles", {**base, "op": "decode", **tiled}),
    ]
    output_mib = video.numel() * video.element_size() / 2**20
    lines = [
        f"## 1. Tiling on a long clip: {num_frames} frames at {size}x{size}, tiny config",
        "",
        f"Config `{TINY_CONFIG}` (4x4 spatial, 4x temporal), random weights. Tiles: {tile} px every "
        f"{tile * 3 // 4} px, {tile_frames} frames every {tile_frames} frames. "
        f"The decoded video alone is {output_mib:.1f} MiB.",
        "",
        "| | max / mean abs error, tiled vs untiled |",
        "|---|---|",
        f"| encode (latent mode) | {error(tiled_latents, latents)} |",
        f"| decode (same latents) | {error(tiled_decoded, decoded)} |",
        f"| decode, temporal tiles only | {error(time_tiled_decoded, decoded)} |",
        "",
        "| op | mode | peak memory (MiB) | time (s) |",
        "|---|---|---|---|",
    ]
    for op, mode, case in cases:
        result = run_case(case, args)
        lines.append(f"| {op} | {mode} | {result['peak_mib']:.1f} | {result['time_s']:.2f} |")
    return lines


# 4. Section 2: against AutoencoderKLWan


def wan_section(args) -> list[str]:
    on_cuda = args.device == "cuda"
    preset = "default" if on_cuda else "small"
    num_frames = args.num_frames or (33 if on_cuda else 17)
    height, width = args.height or (480 if on_cuda else 128), args.width_px or (832 if on_cuda else 128)
    tile = args.tile or (256 if on_cuda else 96)
    shape = (num_frames, height, width)
    if on_cuda:
        configs = "both default configs: ours `block_out_channels=(128, 256, 512, 512)`, Wan `base_dim=96`"
    else:
        w = args.width
        configs = f"equal widths: ours `block_out_channels=({w}, {2 * w}, {4 * w}, {4 * w})`, Wan `base_dim={w}`"
    lines = [
        "## 2. AutoencoderKLSpacetime vs AutoencoderKLWan (8x8 spatial, 4x temporal, 16 channels)",
        "",
        f"Video {num_frames} frames at {height}x{width}; {configs}; layers_per_block = num_res_blocks = 2. Tiled: "
        f"{tile} px tiles every {tile * 3 // 4} px for both (ours also tiles time, 16 frames, exact).",
        "",
        "| op | tiling | Wan time (s) | ours time (s) | speed-up | Wan peak (MiB) | ours peak (MiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for op in ("encode", "decode"):
        for tiled in (False, True):
            results = {}
            for model in ("wan", "spacetime"):
                case = {"model": model, "preset": preset, "shape": shape, "op": op}
                if tiled:
                    case |= {"tile": tile, "tile_frames": 16}
                results[model] = run_case(case, args)
            wan, ours = results["wan"], results["spacetime"]
            lines.append(
                f"| {op} | {'tiled' if tiled else 'untiled'} | {wan['time_s']:.2f} | {ours['time_s']:.2f} | "
                f"{wan['time_s'] / ours['time_s']:.2f}x | {wan['peak_mib']:.0f} | {ours['peak_mib']:.0f} |"
            )
    return lines


def main(args) -> None:
    import diffusers

    diffusers.utils.logging.set_verbosity_error()  # ModelMixin.to(dtype) warns about an empty fp32-module list
    torch.set_num_threads(args.threads)
    if args._case is not None:  # child process: one CPU case, one JSON line
        case = json.loads(args._case)
        case["shape"] = tuple(case["shape"])
        print(json.dumps(measure(case, "cpu", getattr(torch, args.dtype), args.repeats, args.width)))
        return

    lines = [
        "# VAE benchmark",
        "",
        f"Device: {device_name(args.device)}; dtype {args.dtype}; torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}. Time: best of {args.repeats} after a warm-up. Peak memory: "
        f"{'max_memory_allocated' if args.device == 'cuda' else 'peak live tensor storage'} during the call, above "
        "weights and inputs, output included.",
        "",
    ]
    if not args.skip_tiling:
        lines += tiling_section(args) + [""]
        print("\n".join(lines), flush=True)
        printed = len(lines)
    else:
        printed = 0
    if not args.skip_wan:
        lines += wan_section(args) + [""]
    print("\n".join(lines[printed:]), flush=True)
    write_text("\n".join(lines), args.output)


if __name__ == "__main__":
    main(parse_args())
