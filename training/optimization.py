"""The optimizer and learning-rate schedule the training scripts share: AdamW from the --learning_rate and --adam_*
flags (`training.flags.add_optimization_arguments`), and the schedule over the run's optimizer steps."""

from __future__ import annotations

import argparse
import math


def make_optimizer(params, args: argparse.Namespace):
    """AdamW over `params` with the --learning_rate and --adam_* flags."""
    import torch

    return torch.optim.AdamW(
        params,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
    )


def make_lr_scheduler(args: argparse.Namespace, accelerator, optimizer, num_batches: int):
    """(prepared lr scheduler, updates_per_epoch, max_train_steps, num_epochs) for `num_batches` per-process batches
    an epoch; the prepared scheduler steps once per process per optimizer step, hence the scaled step counts."""
    from diffusers.optimization import get_scheduler

    updates_per_epoch = math.ceil(num_batches / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    return accelerator.prepare(lr_scheduler), updates_per_epoch, max_train_steps, num_epochs
