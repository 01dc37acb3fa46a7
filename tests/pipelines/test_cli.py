"""`spacetime-generate` / `python -m diffusers_spacetime`: files written, messages printed, user errors."""

import os
import subprocess
import sys

import imageio
import PIL.Image
import pytest

from diffusers_spacetime import cli

from .conftest import make_pipeline

FAST = ["--steps", "2", "--height", "32", "--width", "32", "--num-frames", "5"]


def count_video_frames(path) -> tuple[int, tuple]:
    reader = imageio.get_reader(path)
    frames = [frame for frame in reader]  # noqa: C416  (list(reader) asks len(): inf for mp4)
    reader.close()
    return len(frames), frames[0].shape


def gif_duration_and_size(path) -> tuple[int, tuple]:
    """Total playback time in ms (PIL merges identical consecutive frames, keeping their time) and frame size."""
    with PIL.Image.open(path) as gif:
        total = 0
        for index in range(gif.n_frames):
            gif.seek(index)
            total += gif.info["duration"]
        return total, gif.size


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("cli") / "tiny-pipeline"
    make_pipeline(tokenizer, default_height=16, default_width=24, default_num_frames=9).save_pretrained(path)
    return path


def test_tiny_random_mp4_and_gif(tmp_path, capsys):
    output = tmp_path / "out.mp4"
    status = cli.main(
        ["a red circle", "--model", "tiny-random", *FAST, "--output", str(output), "--gif", "--seed", "1"]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "randomly initialised" in captured.err and "NOT a trained model" in captured.err
    assert f"Wrote {output} (5 frames, 32x32, 8 fps)" in captured.out
    assert f"Wrote {output.with_suffix('.gif')} (5 frames" in captured.out
    assert count_video_frames(output) == (5, (32, 32, 3))
    duration, size = gif_duration_and_size(output.with_suffix(".gif"))
    assert size == (32, 32) and abs(duration - 5 * 125) <= 5 * 10  # GIF stores delays in 10 ms units


def test_saved_folder_uses_its_defaults_and_a_named_scheduler(saved_pipeline, tmp_path, capsys):
    output = tmp_path / "clip.gif"
    status = cli.main(
        [
            "a blue square",
            "--model",
            str(saved_pipeline),
            "--steps",
            "2",
            "--scheduler",
            "unipc",
            "--output",
            str(output),
        ]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "randomly initialised" not in captured.err
    assert f"Wrote {output} (9 frames, 24x16, 8 fps)" in captured.out
    duration, size = gif_duration_and_size(output)
    assert size == (24, 16) and abs(duration - 9 * 125) <= 9 * 10


@pytest.mark.parametrize("name", list(cli.SCHEDULERS))
def test_every_scheduler_name_builds(saved_pipeline, name):
    from diffusers import FlowMatchEulerDiscreteScheduler

    current = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler = cli._make_scheduler(name, current)
    assert type(scheduler).__name__ == cli.SCHEDULERS[name][0]
    if name in ("unipc", "dpm"):
        assert scheduler.config.prediction_type == "flow_prediction" and scheduler.config.use_flow_sigmas
        assert scheduler.config.flow_shift == 3.0


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--height", "36"], r"`height` \(36\) must be divisible by 8"),
        (["--num-frames", "6"], r"`num_frames` must be 1 \+ k \* 4"),
        (["--steps", "0"], r"`num_inference_steps` must be a positive int"),
        (
            ["--scheduler", "magic"],
            r"unknown --scheduler 'magic'; choose one of: euler, heun, unipc, dpm, ddim, euler-discrete",
        ),
        (["--output", "{tmp}/missing/out.mp4"], r"folder '.*missing' does not exist"),
        (["--output", "{tmp}/out.avi"], r"use a .mp4 or .gif file name"),
        (["--model", "{tmp}/no_such_model"], r"--model '.*no_such_model': no such folder"),
        (["--model", "{tmp}"], r"is a folder without model_index.json"),
    ],
)
def test_user_errors_are_one_line(saved_pipeline, tmp_path, capsys, arguments, message):
    import re

    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    base = ["a prompt", "--model", str(saved_pipeline), "--steps", "2", "--output", str(tmp_path / "x.mp4")]
    status = cli.main(base + arguments)
    captured = capsys.readouterr()
    assert status == 1
    lines = captured.err.strip().splitlines()
    assert lines[-1].startswith("spacetime-generate: error: "), captured.err
    assert re.search(message, lines[-1]), lines[-1]
    assert sum("error" in line for line in lines) == 1, captured.err
    assert "Traceback" not in captured.err
    assert not (tmp_path / "x.mp4").exists()


def test_image_to_video_and_continuation(saved_pipeline, tmp_path, capsys):
    import numpy as np
    from diffusers.utils import export_to_video

    image = tmp_path / "first.png"
    PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8)).save(image)
    output = tmp_path / "animated.mp4"
    base = ["the square moves", "--model", str(saved_pipeline), "--steps", "2"]
    status = cli.main([*base, "--image", str(image), "--resize-mode", "crop", "--output", str(output)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert f"Wrote {output} (9 frames, 24x16, 8 fps)" in captured.out and "image-to-video from" in captured.out
    assert count_video_frames(output) == (9, (16, 24, 3))

    clip = tmp_path / "clip.mp4"
    export_to_video([np.full((16, 24, 3), i / 10, np.float32) for i in range(7)], str(clip), fps=8)
    output = tmp_path / "continued.mp4"
    status = cli.main(
        [*base, "--video", str(clip), "--num-frames", "13", "--num-conditioning-frames", "5", "--output", str(output)]
    )
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert f"Wrote {output} (13 frames, 24x16, 8 fps)" in captured.out and "continuing" in captured.out
    assert count_video_frames(output) == (13, (16, 24, 3))


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--image", "{tmp}/a.png", "--video", "{tmp}/a.png"], r"pass --image \(image-to-video\) or --video"),
        (["--image", "{tmp}/missing.png"], r"--image '.*missing.png': no such file"),
        (["--image", "{tmp}/not_an_image.png"], r"--image '.*not_an_image.png': not a readable image"),
        (["--num-conditioning-frames", "5"], r"--num-conditioning-frames needs --video"),
        (["--video", "{tmp}/a.png", "--num-frames", "5"], r"`num_frames` \(5\) leaves nothing to generate"),
    ],
)
def test_conditioning_user_errors(saved_pipeline, tmp_path, capsys, arguments, message):
    import re

    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "not_an_image.png").write_text("hello")
    arguments = [a.replace("{tmp}", str(tmp_path)) for a in arguments]
    status = cli.main(["p", "--model", str(saved_pipeline), "--output", str(tmp_path / "x.mp4"), *arguments])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and "Traceback" not in "\n".join(err)
    assert re.search(message, err[-1]), err[-1]


def test_hub_id_that_cannot_load_is_a_user_error(tmp_path, capsys, monkeypatch):
    from diffusers_spacetime import SpacetimeVideoPipeline

    def offline(*args, **kwargs):
        raise OSError("Cannot load model user/missing: the model is not fully cached locally (offline)\nmore detail")

    monkeypatch.setattr(SpacetimeVideoPipeline, "from_pretrained", offline)
    status = cli.main(["x", "--model", "user/missing", "--output", str(tmp_path / "x.mp4")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert err[-1] == (
        "spacetime-generate: error: could not load --model 'user/missing': not a local folder, and not loadable "
        "from the Hub (Cannot load model user/missing: the model is not fully cached locally)"
    )


def test_module_entry_point_in_subprocess(tmp_path):
    output = tmp_path / "sub.mp4"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "diffusers_spacetime",
            "a red circle",
            "--model",
            "tiny-random",
            *FAST,
            "--output",
            str(output),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Wrote {output} (5 frames, 32x32, 8 fps)" in result.stdout
    assert count_video_frames(output) == (5, (32, 32, 3))
    # A user error in a real process: exit status 1, one line, no traceback.
    bad = subprocess.run(
        [sys.executable, "-m", "diffusers_spacetime", "x", "--model", "tiny-random", "--height", "30"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
    )
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines()[-1].startswith("spacetime-generate: error: `height` (30)")
