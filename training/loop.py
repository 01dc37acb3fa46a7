"""The one training loop of the accelerate scripts: setup, resume, accumulation, NaN check, clipping, optimizer and
schedule steps, EMA, logging, checkpoints and the time limit. A script hands it a loss step.

    accelerator = make_accelerator(args, "train_autoencoder")
    ...  # models, data, optimizer (accelerator.prepare), checkpoint hooks
    run = train(accelerator, args, model, optimizer, loss_step, folder_batches(...), num_batches=len(loader), ...)

The loop reads the flags of `training.flags` (optimisation and checkpoint groups). Each micro-step draws its random
numbers from a generator seeded by (seed, global micro-batch) and seeds the global RNG (dropout) the same way, so a
resumed run reproduces the uninterrupted run's losses and P processes train what one process with P times the
gradient accumulation does.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm

from training import checkpointing
from training.optimization import make_lr_scheduler
from training.run_log import append_train_log, tracker_config
from training.seeding import micro_batch_seed, step_generator

logger = get_logger(__name__)


@dataclass
class MicroStep:
    """What a loss step returns for one micro-batch.

    Args:
        loss: the scalar backward runs on.
        logs: more scalars (tensors) to average over processes and micro-batches and log next to the loss.
        after_update: runs after the optimizer step, inside the accumulation context (e.g. a discriminator's own
            update); returns more scalars to log.
    """

    loss: torch.Tensor
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    after_update: Callable[[], dict[str, torch.Tensor]] | None = None


@dataclass
class LoopResult:
    losses: list[float]  # this run's per-step losses (a resumed run: the steps after its checkpoint)
    global_step: int
    num_epochs: int
    train_time_s: float  # seconds of this run's loop


def make_accelerator(args: argparse.Namespace, project_name: str) -> Accelerator:
    """The run's accelerator, logging, seed, run folder (leftovers of killed runs removed) and trackers."""
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    # Subnormal floats in freshly initialised models slow the first CPU steps of the tiny configs many times over;
    # flushing them to zero changes nothing a training run can see (the CPU flag; a no-op elsewhere).
    torch.set_flush_denormal(True)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        checkpointing.remove_stale(output_dir)
        accelerator.init_trackers(project_name, config=tracker_config(args))
    return accelerator


def weight_dtype(accelerator: Accelerator) -> torch.dtype:
    """The autocast dtype, in which frozen models are stored."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def folder_batches(accelerator: Accelerator, dataloader, batch_sampler, dataset) -> Callable[[int, int], Iterable]:
    """`batches(epoch, skip)` for a prepared dataloader of `training.data`: the epoch's order, its first `skip`
    batches passed over (a resumed run)."""

    def batches(epoch: int, skip: int) -> Iterable[dict]:
        batch_sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        loader = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        # accelerate's loader re-sets the sampler's epoch from its own iteration counter, which counts from 0 in a
        # resumed run (and in a skip loader): give it the real epoch, or a resumed run sees another data order.
        loader.set_epoch(epoch)
        return loader

    return batches


def out_of_time(accelerator: Accelerator, start: float, limit: float | None) -> bool:
    """Whether `limit` seconds (--max_train_time) have passed since `start` (time.monotonic()), on any process.

    Every process gets the same answer (a max over processes), so all of them stop after the same step.
    """
    if not limit:
        return False
    expired = torch.tensor([float(time.monotonic() - start >= limit)], device=accelerator.device)
    return bool(accelerator.reduce(expired, reduction="max").item())


def train(
    accelerator: Accelerator,
    args: argparse.Namespace,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_step: Callable[[dict, torch.Generator, int], MicroStep],
    batches: Callable[[int, int], Iterable[dict]],
    *,
    num_batches: int,
    num_clips: int | str,
    also_accumulate: tuple[torch.nn.Module, ...] = (),
    ema=None,
    after_step: Callable[[int, int], None] | None = None,
) -> LoopResult:
    """Trains `model` (prepared) until --max_train_steps, the epochs or --max_train_time; returns the losses.

    Args:
        loss_step: `(batch, generator, global_step) -> MicroStep` for one micro-batch.
        batches: `(epoch, skip) -> the epoch's batches for this process`, the first `skip` passed over.
        num_batches: this process's batches per epoch (the schedule's length).
        num_clips: for the log line.
        also_accumulate: more prepared models that train in the same micro-steps (e.g. a discriminator).
        ema: a diffusers `EMAModel` of `model`'s parameters, stepped after each optimizer step and checkpointed.
        after_step: `(global_step, max_train_steps)`, on every process after each optimizer step and its checkpoint
            (validation).
    """
    output_dir = Path(args.output_dir)
    lr_scheduler, updates_per_epoch, max_train_steps, num_epochs = make_lr_scheduler(
        args, accelerator, optimizer, num_batches
    )
    global_step, first_epoch, skip_batches = resume_run(accelerator, args, updates_per_epoch, ema)
    logger.info(
        f"{num_clips} clips, {num_epochs} epochs, {max_train_steps} steps of {args.train_batch_size} x "
        f"{accelerator.num_processes} processes x {args.gradient_accumulation_steps} accumulation"
    )
    progress = tqdm(
        total=max_train_steps, initial=global_step, desc="Steps", disable=not accelerator.is_local_main_process
    )
    model.train()
    update = partial(_update, accelerator, args, (model, *also_accumulate), optimizer, lr_scheduler, loss_step)
    losses, sums, skipped_files = [], {}, set()
    micro_step, step_start = global_step * args.gradient_accumulation_steps, time.perf_counter()
    train_start = time.monotonic()
    for epoch in range(first_epoch, num_epochs):
        if global_step >= max_train_steps:  # resumed from the final step, or out of time: nothing left to train
            break
        for batch in batches(epoch, skip_batches if epoch == first_epoch else 0):
            skipped_files.update(batch["skipped"])
            for name, value in update(batch, micro_step, global_step, epoch).items():
                sums[name] = sums.get(name, 0.0) + value / args.gradient_accumulation_steps
            micro_step += 1
            if not accelerator.sync_gradients:
                continue
            if ema is not None:
                ema.step(model.parameters())
            global_step += 1
            step_time, step_start = time.perf_counter() - step_start, time.perf_counter()
            _log_step(accelerator, output_dir, progress, global_step, sums, lr_scheduler.get_last_lr()[0], step_time)
            losses.append(sums["loss"])
            sums = {}
            if global_step % args.checkpointing_steps == 0:
                checkpointing.save_checkpoint(
                    accelerator, output_dir, global_step, args.checkpoints_total_limit, epoch=epoch
                )
            if after_step is not None:
                after_step(global_step, max_train_steps)
            if global_step >= max_train_steps:
                break
            if out_of_time(accelerator, train_start, args.max_train_time):
                logger.info(f"--max_train_time {args.max_train_time:g} s reached at step {global_step}: stopping")
                max_train_steps = global_step
                break
    progress.close()
    if skipped_files:
        logger.warning(f"{len(skipped_files)} files failed to decode during training: {sorted(skipped_files)}")
    accelerator.wait_for_everyone()
    return LoopResult(losses, global_step, num_epochs, time.monotonic() - train_start)


def resume_run(accelerator: Accelerator, args: argparse.Namespace, updates_per_epoch: int, ema=None):
    """(global_step, first_epoch, skip_batches) after loading --resume_from_checkpoint; (0, 0, 0) for a fresh run."""
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    resume_path = checkpointing.resolve_resume_path(args.output_dir, args.resume_from_checkpoint)
    if args.resume_from_checkpoint and resume_path is None:
        logger.info("No complete checkpoint to resume from: starting a fresh run")
    # load_state puts an EMA's shadow weights on the CPU: move them back right after it
    return checkpointing.resume(
        accelerator, Path(args.output_dir), resume_path, updates_per_epoch, args.gradient_accumulation_steps, logger,
        after_load=(lambda: ema.to(accelerator.device)) if ema is not None else None,
    )  # fmt: skip


def _update(
    accelerator, args, models, optimizer, lr_scheduler, loss_step, batch, micro_step: int, global_step: int, epoch: int
) -> dict[str, float]:
    """One micro-step: loss, NaN check, backward, and (at the accumulation's end) clipping and the optimizer and
    schedule steps; returns the step's scalars averaged over processes."""
    seed = (args.seed, micro_step, accelerator.process_index)
    generator = step_generator(*seed, accelerator.device, accelerator.num_processes)
    torch.manual_seed(micro_batch_seed(*seed, accelerator.num_processes, stream=1))  # dropout draws from it
    with accelerator.accumulate(*models):
        step = loss_step(batch, generator, global_step)
        values = accelerator.gather(torch.stack([step.loss, *step.logs.values()]).detach()[None]).mean(0)
        if not torch.isfinite(values[0]):
            raise FloatingPointError(
                f"Loss is {values[0].item()} at step {global_step + 1} (epoch {epoch}): stopping. Lower "
                "--learning_rate, or resume from the last checkpoint with --mixed_precision no."
            )
        accelerator.backward(step.loss)
        if accelerator.sync_gradients:
            trainable = [param for param in models[0].parameters() if param.requires_grad]
            accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        logs = dict(zip(["loss", *step.logs], values.tolist()))
        for name, value in (step.after_update() if step.after_update is not None else {}).items():
            logs[name] = accelerator.gather(value.detach()[None]).mean().item()
    return logs


def _log_step(accelerator, output_dir: Path, progress, global_step: int, sums: dict, lr: float, step_time: float):
    """Logs an optimizer step's averaged scalars to the trackers, the progress bar and train_log.jsonl."""
    accelerator.log({**sums, "lr": lr}, step=global_step)
    progress.set_postfix(loss=f"{sums['loss']:.4f}", lr=f"{lr:.2e}")
    progress.update(1)
    if accelerator.is_main_process:
        append_train_log(output_dir, {"step": global_step, **sums, "lr": lr, "step_time": step_time})
