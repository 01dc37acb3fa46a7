"""Streamed tar shards: shard lists, batches formed before decoding, exact mid-epoch resumption (data and training),
bad samples replaced and named, the training script's flags."""

import functools
import io
import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from training import run_log, train_text_to_video
from training.streaming import TarShardStream, expand_shards

from .conftest import free_port
from .resume_check import run_and_resume
from .test_data import _write_video
from .test_train_own_videos import REPO, TINY_VAE


def _add(archive, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three shards of 4 samples: clips (mp4 + txt), images (png + json), one broken clip, one caption without media."""
    folder = tmp_path_factory.mktemp("shards")
    clip = folder / "clip.mp4"
    paths = []
    for shard in range(3):
        path = folder / f"shard-{shard:03d}.tar"
        with tarfile.open(path, "w") as archive:
            for item in range(4):
                key = f"{shard}{item:02d}"
                if item == 3 and shard == 0:
                    _add(archive, f"{key}.mp4", b"not a video" * 20)
                    _add(archive, f"{key}.txt", b"broken")
                elif item == 3 and shard == 1:
                    _add(archive, f"{key}.txt", b"a caption without media")
                elif item % 2 == 0:
                    _write_video(clip, 6 + shard + item, height=16, width=24)
                    _add(archive, f"{key}.mp4", clip.read_bytes())
                    _add(archive, f"{key}.txt", f"clip {key}".encode())
                else:
                    buffer = io.BytesIO()
                    Image.fromarray(np.full((16, 16, 3), 40 * shard + item, np.uint8)).save(buffer, format="PNG")
                    _add(archive, f"{key}.png", buffer.getvalue())
                    _add(archive, f"{key}.json", json.dumps({"text": f"image {key}"}).encode())
        paths.append(str(path))
    return paths


def _take(stream, count):
    iterator = iter(stream)
    return [next(iterator) for _ in range(count)]


def _stream(shards, **overrides):
    return TarShardStream(shards, **{"batch_size": 2, "num_frames": 5, "height": 8, "width": 8, **overrides})


def test_expand_shards(shards, tmp_path):
    folder = shards[0].rsplit("/", 1)[0]
    assert expand_shards(f"{folder}/shard-{{000..002}}.tar") == shards
    assert expand_shards(f"{folder}/shard-*.tar") == shards
    assert expand_shards("https://host/a-{08..10}.tar,b.tar") == [
        "https://host/a-08.tar", "https://host/a-09.tar", "https://host/a-10.tar", "b.tar",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="matches no file"):
        expand_shards(f"{tmp_path}/*.tar")


def test_batches_hold_one_frame_count_and_bad_samples_are_replaced_and_named(shards):
    batches = _take(_stream(shards), 10)
    assert {tuple(batch["pixel_values"].shape) for batch in batches} == {(2, 3, 5, 8, 8), (2, 3, 1, 8, 8)}
    for batch in batches:
        kind = "clip" if batch["pixel_values"].shape[2] == 5 else "image"
        assert all(caption.startswith(kind) for caption in batch["captions"]), batch["captions"]
    skipped = [name for batch in batches for name in batch["skipped"]]
    assert skipped and set(skipped) == {"003 (003.mp4)"}


def test_resuming_mid_epoch_gives_the_same_batches_without_decoding_the_skipped_ones(shards, monkeypatch):
    full = _take(_stream(shards, seed=3), 9)
    decoded = []
    real_decode = TarShardStream._decode
    monkeypatch.setattr(TarShardStream, "_decode", lambda self, sample: decoded.append(1) or real_decode(self, sample))
    resumed = _take(_stream(shards, seed=3, start_batch=5), 4)
    assert len(decoded) == 4 * 2  # only the yielded batches were decoded
    for expected, got in zip(full[5:], resumed):
        assert expected["captions"] == got["captions"] and torch.equal(expected["pixel_values"], got["pixel_values"])


def test_processes_split_each_epochs_shards_and_epochs_reshuffle(shards):
    orders = []
    for epoch in range(4):
        mine = [_stream(shards, process_index=rank, num_processes=2)._shards_of_epoch(epoch) for rank in range(2)]
        assert not set(mine[0]) & set(mine[1]) and sorted(mine[0] + mine[1]) == sorted(shards)
        orders.append(_stream(shards)._shards_of_epoch(epoch))
    assert len({tuple(order) for order in orders}) > 1  # each epoch draws its own order
    with pytest.raises(ValueError, match="3 shards, fewer than the 4 processes"):
        _stream(shards, num_processes=4)


def _train_args(shards, output_dir, *extra):
    return train_text_to_video.parse_args(
        ["--train_shards", ",".join(shards), "--output_dir", str(output_dir), "--num_frames", "5", "--height", "8",
         "--width", "8", "--vae_config", TINY_VAE, "--train_batch_size", "2", "--report_to", "none",
         "--validation_prompts", "--lr_warmup_steps", "1", *extra]
    )  # fmt: skip


def test_training_on_shards_resumes_to_the_uninterrupted_losses(shards, tmp_path):
    make_args = functools.partial(_train_args, shards)
    full, resumed, resumed_dir = run_and_resume(train_text_to_video.main, make_args, tmp_path, max_train_steps=4)
    assert len(full["losses"]) == 4 and resumed["losses"] == pytest.approx(full["losses"][2:], rel=1e-5, abs=1e-6)
    assert [row["step"] for row in run_log.read_train_log(resumed_dir)] == [3, 4]


def test_shard_flags_are_checked(shards, tmp_path):
    with pytest.raises(ValueError, match="--train_shards needs --max_train_steps"):
        _train_args(shards, tmp_path)
    with pytest.raises(ValueError, match="--train_shards does not support --cache_latents, --buckets"):
        _train_args(shards, tmp_path, "--max_train_steps", "1", "--cache_latents", "--buckets", "5x8x8")
    with pytest.raises(ValueError, match="pass exactly one of --data_dir, --dataset_name and --train_shards"):
        _train_args(shards, tmp_path, "--max_train_steps", "1", "--data_dir", str(tmp_path))


def test_two_processes_stream_their_own_shards(shards, tmp_path):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(REPO / "training" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", str(free_port()),
        str(REPO / "training" / "train_text_to_video.py"), "--train_shards", ",".join(shards), "--output_dir",
        str(tmp_path), "--num_frames", "5", "--height", "8", "--width", "8", "--vae_config", TINY_VAE,
        "--train_batch_size", "2", "--report_to", "none", "--validation_prompts", "--max_train_steps", "3",
    ]  # fmt: skip
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "x 2 processes" in completed.stderr
    assert [row["step"] for row in run_log.read_train_log(tmp_path)] == [1, 2, 3]
