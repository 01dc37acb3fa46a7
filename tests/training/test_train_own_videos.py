"""A folder as a user brings it (mixed sizes, aspect ratios, durations, images, bad files, metadata.jsonl or
metadata.csv) trains with --buckets, in one process and in two, with every file accounted for at startup."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training import run_log, train_text_to_video
from training.data import dataset_from_args

from .conftest import launch_two_processes
from .test_data import _write_video
from .test_data_metadata import _write_csv

REPO = Path(__file__).resolve().parents[2]
TINY_VAE = str(REPO / "training" / "configs" / "vae_tiny.json")
BUCKETS = "1x32x32,1x32x64,5x32x32,9x32x64,9x64x32"
ROWS = [  # (file name, caption); "" is a row without a caption
    ("wide_a.mp4", "a wide clip"), ("wide_b.mp4", "another wide clip"), ("tall_a.mp4", "a tall clip"),
    ("tall_b.mp4", "another tall clip"), ("square_short.mp4", "a short square clip"), ("tiny.mp4", "three frames"),
    ("square.png", "a square image"), ("wide.png", "a wide image"), ("broken.mp4", "not a video"),
    ("gone.mp4", "listed, not on disk"), ("uncaptioned.mp4", ""),
]  # fmt: skip


@pytest.fixture(params=["jsonl", "csv"])
def user_dir(request, tmp_path):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("wide_a.mp4", "wide_b.mp4", "uncaptioned.mp4"):
        _write_video(folder / name, 12, height=36, width=64)  # 16:9-ish, cropped a little into 9x32x64
    for name in ("tall_a.mp4", "tall_b.mp4"):
        _write_video(folder / name, 14, height=64, width=36)
    _write_video(folder / "square_short.mp4", 6, height=40, width=40)
    _write_video(folder / "tiny.mp4", 3, height=32, width=32)
    _write_video(folder / "not_listed.mp4", 12, height=32, width=32)
    Image.fromarray(np.full((48, 48, 3), 90, np.uint8)).save(folder / "square.png")
    Image.fromarray(np.full((40, 80, 3), 160, np.uint8)).save(folder / "wide.png")
    (folder / "broken.mp4").write_bytes(b"not a video" * 40)
    if request.param == "csv":
        _write_csv(folder, ROWS, columns=("file_name", "text"))
    else:
        with open(folder / "metadata.jsonl", "w") as handle:
            for name, text in ROWS:
                handle.write(json.dumps({"file_name": name, **({"text": text} if text else {})}) + "\n")
    return folder


def _arguments(data_dir, output_dir, *extra):
    return ["--data_dir", str(data_dir), "--output_dir", str(output_dir), "--num_frames", "9", "--height", "32",
            "--width", "64", "--buckets", BUCKETS, "--vae_config", TINY_VAE, "--train_batch_size", "1",
            "--report_to", "none", "--validation_prompts", "--lr_warmup_steps", "1", *extra]  # fmt: skip


def test_every_file_is_accounted_for_and_trains_in_its_bucket(user_dir, tmp_path):
    args = train_text_to_video.parse_args(_arguments(user_dir, tmp_path / "run", "--max_train_steps", "8"))
    dataset = dataset_from_args(args)
    summary = dataset.summary
    on_disk = sorted(path.name for path in user_dir.iterdir() if not path.name.startswith("metadata"))
    accounted = sorted(
        [entry.file_name for entry in dataset.entries] + dataset.unlisted
        + [name for names in summary["skipped_files"].values() for name in names if name != "gone.mp4"]
    )  # fmt: skip
    assert accounted == on_disk
    assert summary["skipped_files"] == {"missing": ["gone.mp4"], "unreadable": ["broken.mp4"]}
    assert (summary["no_caption"], summary["unlisted"]) == (1, 1)
    assert summary["buckets"] == {"9x32x64": 3, "9x64x32": 2, "5x32x32": 1, "1x32x32": 2, "1x32x64": 1}

    result = train_text_to_video.main(args)  # batch 1: 8 steps reach every bucket in most orders; all finite
    assert len(result["losses"]) == 8 and all(torch.isfinite(torch.tensor(result["losses"])))
    assert (tmp_path / "run" / "pipeline" / "model_index.json").exists()


def test_bad_buckets_for_the_models_name_the_bucket(user_dir, tmp_path):
    args = train_text_to_video.parse_args(_arguments(user_dir, tmp_path / "run", "--buckets", "5x32x32,9x36x64"))
    with pytest.raises(ValueError, match=r"--buckets 9x36x64: its height must be a multiple of 8"):
        train_text_to_video.main(args)
    with pytest.raises(ValueError, match=r"--buckets takes FRAMESxHEIGHTxWIDTH items"):
        train_text_to_video.parse_args(_arguments(user_dir, tmp_path / "run", "--buckets", "9x32"))


@pytest.mark.parametrize("user_dir", ["csv"], indirect=True)  # one metadata form is enough here
def test_two_processes_index_once_and_train_on_buckets(user_dir, tmp_path):
    completed = launch_two_processes(  # asserts that both processes ran to the end
        "train_text_to_video.py",
        *_arguments(user_dir, tmp_path, "--max_train_steps", "3", "--checkpointing_steps", "3"),
    )
    # the main process read the folder's files; the other read the index cache the main process wrote
    assert completed.stderr.count("Indexed 10 files") == 2
    assert completed.stderr.count(": 10 read, 0 from") == 1 and completed.stderr.count(": 0 read, 10 from") == 1
    assert "buckets 1x32x32: 2, 1x32x64: 1, 5x32x32: 1, 9x32x64: 3, 9x64x32: 2" in completed.stderr
    assert len(list((tmp_path / "data_index").glob("*.json"))) == 1
    assert [row["step"] for row in run_log.read_train_log(tmp_path)] == [1, 2, 3]


@pytest.mark.parametrize("user_dir", ["jsonl"], indirect=True)
def test_the_vae_trains_on_buckets_too(user_dir, tmp_path):
    from training import train_autoencoder

    result = train_autoencoder.main(
        train_autoencoder.parse_args(
            ["--data_dir", str(user_dir), "--output_dir", str(tmp_path), "--num_frames", "5", "--height", "32",
             "--width", "32", "--buckets", BUCKETS, "--train_batch_size", "1", "--max_train_steps", "3",
             "--num_validation_clips", "2", "--stats_num_samples", "4", "--report_to", "none"]
        )
    )  # fmt: skip
    assert len(result["losses"]) == 3 and all(torch.isfinite(torch.tensor(result["losses"])))
    assert result["validation_psnr"] > 0 and (tmp_path / "vae" / "config.json").exists()
