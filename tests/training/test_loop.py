"""training/loop.py on a tiny linear model: the time limit, the logged scalars of a loss step, and the flags every
script shares through it."""

import argparse
import time

import pytest
import torch

from training import flags, run_log, train_autoencoder, train_lora, train_text_to_video
from training.loop import MicroStep, make_accelerator, train


def _args(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    flags.add_optimization_arguments(
        parser, output_dir_help="-", seed_help="-", train_batch_size=2, lr_warmup_steps=0, mixed_precision_help="-"
    )
    flags.add_checkpoint_arguments(parser)
    return parser.parse_args(["--output_dir", str(tmp_path), "--report_to", "none", *extra])


def _run(args, loss_step, num_batches=6):
    accelerator = make_accelerator(args, "test_loop")
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    model, optimizer = accelerator.prepare(model, optimizer)
    batches = [{"x": torch.full((2, 3), float(index)), "skipped": []} for index in range(num_batches)]

    def step(batch, generator, global_step):
        return loss_step(model, batch)

    run = train(
        accelerator, args, model, optimizer, step, lambda epoch, skip: batches[skip:], num_batches=num_batches,
        num_clips=2 * num_batches,
    )  # fmt: skip
    accelerator.end_training()
    return run


def test_max_train_time_stops_after_the_step_that_reaches_it(tmp_path):
    def slow_loss(model, batch):
        time.sleep(0.05)
        return MicroStep(model(batch["x"]).pow(2).mean())

    run = _run(_args(tmp_path, "--max_train_time", "0.01", "--num_train_epochs", "3"), slow_loss)
    assert run.global_step == 1 and len(run.losses) == 1
    assert [row["step"] for row in run_log.read_train_log(tmp_path)] == [1]


def test_logged_scalars_are_averaged_over_the_accumulated_micro_batches(tmp_path):
    def loss_with_parts(model, batch):
        loss = model(batch["x"]).pow(2).mean()
        value = batch["x"][0, 0]
        return MicroStep(loss, {"part": value}, after_update=lambda: {"second": 2 * value})

    run = _run(_args(tmp_path, "--gradient_accumulation_steps", "2", "--max_train_steps", "3"), loss_with_parts)
    rows = run_log.read_train_log(tmp_path)
    assert [row["part"] for row in rows] == [0.5, 2.5, 4.5]  # batches (0, 1), (2, 3), (4, 5)
    assert [row["second"] for row in rows] == [1.0, 5.0, 9.0]
    assert [row["loss"] for row in rows] == pytest.approx(run.losses)


@pytest.mark.parametrize("script", [train_autoencoder, train_text_to_video, train_lora])
def test_every_script_takes_the_loop_and_hub_flags(script):
    options = {option for action in script.build_parser()._actions for option in action.option_strings}
    assert {
        "--max_train_time",
        "--push_to_hub",
        "--hub_model_id",
        "--hub_token",
        "--resume_from_checkpoint",
    } <= options
