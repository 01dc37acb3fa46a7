"""Validation videos of the text-to-video and LoRA scripts: each prompt rendered to
`output_dir/validation/step-<n>/<i>.mp4`, with frame strips for tensorboard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger
from diffusers.utils import export_to_video

from training.encode_prompts import PromptEmbedsTable

logger = get_logger(__name__)


def prompt_inputs(pipeline, prompt: str, prompt_embeds_file: str | None, device: torch.device) -> dict:
    """The pipeline's text arguments for `prompt`: the prompt itself, or, for a pipeline without a text encoder
    (--prompt_embeds_file), its stored embedding and the empty prompt's as the negative."""
    if pipeline.text_encoder is not None:
        return {"prompt": prompt}
    table = PromptEmbedsTable(prompt_embeds_file)
    embeds, mask = table.encode_prompt([prompt], device=device)[:2]
    negative, negative_mask = table.encode_prompt([""], device=device)[:2]
    text = {"prompt_embeds": embeds, "prompt_attention_mask": mask}
    text.update(negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask)
    return text


@torch.no_grad()
def log_validation(args, accelerator, pipeline, prompts: list[str], step: int) -> list[str]:
    """Renders each prompt to output_dir/validation/step-<step>/<i>.mp4 at the run's size (--height, --width,
    --num_frames, --validation_inference_steps, --validation_guidance_scale, seeded by --seed) and logs frame strips
    to tensorboard; returns the video paths.

    Under FSDP every process calls it (a sharded forward gathers weights from all of them); the main process writes.
    """
    folder = Path(args.output_dir) / "validation" / f"step-{step}"
    write = accelerator.is_main_process
    if write:
        folder.mkdir(parents=True, exist_ok=True)
    pipeline.set_progress_bar_config(disable=True)
    size = {"height": args.height, "width": args.width, "num_frames": args.num_frames}
    sampling = {
        "num_inference_steps": args.validation_inference_steps,
        "guidance_scale": args.validation_guidance_scale,
    }
    paths, strips = [], []
    for index, prompt in enumerate(prompts):
        generator = torch.Generator(device=accelerator.device).manual_seed(args.seed + index)
        text = prompt_inputs(pipeline, prompt, getattr(args, "prompt_embeds_file", None), accelerator.device)
        output = pipeline(**text, **size, **sampling, generator=generator, output_type="np")
        video = output.frames[0]  # (F, H, W, 3) in [0, 1]
        path = folder / f"{index:02d}.mp4"
        if write:
            export_to_video(list(video), str(path), fps=8)
        paths.append(str(path))
        strips.append(np.concatenate(list(video), axis=1))  # (H, F*W, 3)
    if not write:
        return paths
    (folder / "prompts.json").write_text(json.dumps(prompts, indent=2))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"validation": np.stack(strips)}, step, dataformats="NHWC")
    logger.info(f"Step {step}: validation videos in {folder}")
    return paths
