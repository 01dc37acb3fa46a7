"""The optimisation side the accelerate training scripts share: the "optimisation" flag group, AdamW from those
flags, and the learning-rate schedule over the run's optimizer steps.

Each script passes its own defaults and help texts, so its `--help` and defaults stay its own.
"""

from __future__ import annotations

import argparse
import math


def add_optimization_arguments(
    parser: argparse.ArgumentParser,
    *,
    output_dir_help: str,
    seed_help: str,
    train_batch_size: int,
    max_train_time: bool = True,
    learning_rate_help: str = "Peak learning rate.",
    lr_scheduler: str = "constant_with_warmup",
    lr_scheduler_help: str = "diffusers.optimization.get_scheduler name: linear, cosine, constant, constant_with_warmup, ...",
    lr_warmup_steps: int = 100,
    adam_weight_decay: float = 1e-4,
    adam_weight_decay_help: str = "AdamW weight decay.",
    mixed_precision_help: str,
) -> argparse._ArgumentGroup:
    """Adds the "optimisation" group: run folder, seed, batch and step counts, AdamW, schedule, precision, tracker.

    `max_train_time=False` leaves out `--max_train_time` (a script whose loop does not stop on time).
    """
    group = parser.add_argument_group("optimisation")
    group.add_argument("--output_dir", required=True, help=output_dir_help)
    group.add_argument("--seed", type=int, default=0, help=seed_help)
    group.add_argument(
        "--train_batch_size", type=int, default=train_batch_size, help="Clips per process per micro-batch."
    )
    group.add_argument("--num_train_epochs", type=int, default=1, help="Epochs, unless --max_train_steps is set.")
    group.add_argument(
        "--max_train_steps", type=int, default=None, help="Optimizer steps in total; overrides --num_train_epochs."
    )
    if max_train_time:
        group.add_argument(
            "--max_train_time",
            type=float,
            default=None,
            help="Stop after this many seconds of training in this run (a job's time limit), then save as at the end. "
            "With --lr_scheduler constant_with_warmup the result equals a run of that many steps.",
        )
    group.add_argument("--gradient_accumulation_steps", type=int, default=1, help="Micro-batches per optimizer step.")
    group.add_argument("--learning_rate", type=float, default=1e-4, help=learning_rate_help)
    group.add_argument("--lr_scheduler", default=lr_scheduler, help=lr_scheduler_help)
    group.add_argument("--lr_warmup_steps", type=int, default=lr_warmup_steps, help="Warm-up optimizer steps.")
    group.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    group.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta2.")
    group.add_argument("--adam_weight_decay", type=float, default=adam_weight_decay, help=adam_weight_decay_help)
    group.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    group.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm.")
    group.add_argument("--mixed_precision", choices=("no", "fp16", "bf16"), default=None, help=mixed_precision_help)
    group.add_argument(
        "--report_to", default="tensorboard", help="accelerate tracker: tensorboard, wandb, all or none."
    )
    return group


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
