"""What a training script tells its model card: the run's facts (`training`) and measured numbers (`results`), the
keyword arguments of `push_to_hub(..., training=..., results=...)` and of the LoRA card."""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch

from training.loop import LoopResult
from training.run_log import read_train_log


def hardware_description(accelerator) -> str:
    """`<processes> x <device name>`, e.g. `1 x CPU (x86_64, 2 threads)`."""
    device = accelerator.device
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{device.type.upper()} ({platform.machine()}, {torch.get_num_threads()} threads)"
    return f"{accelerator.num_processes} x {name}"


def dataset_description(args: argparse.Namespace) -> str:
    if getattr(args, "train_shards", None):
        return "streamed tar shards"
    if args.data_dir:
        return f"`{Path(args.data_dir).resolve().name}` (a captioned video folder)"
    return f"`{args.dataset_name}` (a Hugging Face dataset)"


def training_facts(
    args: argparse.Namespace, accelerator, run: LoopResult, num_clips: int | None, optimizer: str = "AdamW"
) -> dict:
    """The card's training table: steps, batch sizes, schedule, precision, data, hardware, time (from the whole
    run's train log, resumes included), seed and final loss."""
    log = read_train_log(args.output_dir)
    return {
        "steps": run.global_step,
        "epochs": run.num_epochs,
        "batch_size": args.train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "total_batch_size": args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps,
        "learning_rate": args.learning_rate,
        "lr_scheduler": args.lr_scheduler,
        "lr_warmup_steps": args.lr_warmup_steps,
        "optimizer": optimizer,
        "mixed_precision": accelerator.mixed_precision,
        "gradient_checkpointing": args.gradient_checkpointing,
        "resolution": f"{args.height}x{args.width}",
        "num_frames": args.num_frames,
        "dataset": dataset_description(args),
        "num_clips": num_clips,
        "hardware": hardware_description(accelerator),
        "wall_time_s": sum(row.get("step_time", 0.0) for row in log),  # optimizer steps, resumes included
        "seed": args.seed,
        "final_loss": log[-1]["loss"] if log else None,
    }


def training_loss_results(output_dir) -> dict:
    """The card's "Training loss, first / last step" row, from the whole run's train log."""
    history = [row["loss"] for row in read_train_log(output_dir)]
    if not history:
        return {}
    return {
        "Training loss, first / last step": {
            "value": f"{history[0]:.4g} / {history[-1]:.4g}",
            "note": "one noise draw per step: noisy",
        }
    }
