"""The resume property every training script keeps: a run stopped at a checkpoint and resumed from it in another folder
ends with the losses of the run that went on."""


def run_and_resume(main, make_args, tmp_path, max_train_steps: int, every: int = 2):
    """Runs `main(make_args(folder, *flags))` for `max_train_steps` with a checkpoint every `every` steps, moves its
    first checkpoint into a fresh folder and resumes there. Returns (full result, resumed result, resumed folder)."""
    flags = ("--max_train_steps", str(max_train_steps), "--checkpointing_steps", str(every))
    full = main(make_args(tmp_path / "a", *flags))
    resumed_dir = tmp_path / "b"
    resumed_dir.mkdir()
    (tmp_path / "a" / f"checkpoint-{every}").rename(resumed_dir / f"checkpoint-{every}")
    resumed = main(make_args(resumed_dir, *flags, "--resume_from_checkpoint", "latest"))
    return full, resumed, resumed_dir
