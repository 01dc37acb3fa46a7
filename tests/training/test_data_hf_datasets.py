"""Hugging Face `datasets` datasets as training data: a load_dataset-able local folder (parquet) whose video column
holds bytes or paths, written as a video folder once, every row accounted for; the training script's flags."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from training import train_text_to_video
from training.data import VideoFolderDataset, dataset_from_args, folder_from_hf_dataset

from .test_data import _write_video
from .test_train_own_videos import TINY_VAE

datasets = pytest.importorskip("datasets")


@pytest.fixture
def clips(tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for name, frames in (("a.mp4", 12), ("b.mp4", 12), ("c.mp4", 12)):
        _write_video(folder / name, frames, height=32, width=32)
    return folder


@pytest.fixture
def parquet_dataset(clips, tmp_path):
    """A local dataset folder (one parquet file): three clips as bytes, one row without a video, one without caption."""
    rows = {
        "video": [{"bytes": (clips / name).read_bytes(), "path": name} for name in ("a.mp4", "b.mp4", "c.mp4")]
        + [None, {"bytes": (clips / "a.mp4").read_bytes(), "path": "again.mp4"}],
        "caption": ["first", "second", "third", "no video", None],
    }
    dataset = datasets.Dataset.from_dict(rows).cast_column("video", datasets.Video(decode=False))
    folder = tmp_path / "hf"
    folder.mkdir()
    dataset.to_parquet(str(folder / "train.parquet"))
    return folder


def test_a_dataset_of_video_bytes_becomes_a_folder_with_every_row_accounted_for(parquet_dataset, tmp_path):
    dataset = datasets.load_dataset(str(parquet_dataset), split="train")
    folder = folder_from_hf_dataset(dataset, tmp_path / "out", video_column="video", caption_column="caption")
    videos = VideoFolderDataset(folder, num_frames=5, height=16, width=16, caption_column="caption")
    assert [entry.caption for entry in videos.entries] == ["first", "second", "third", ""]
    assert videos.summary["skipped_files"] == {"missing": ["row-00000003-has-no-file"]}
    assert videos.summary["no_caption"] == 1 and videos[0]["pixel_values"].shape == (3, 5, 16, 16)
    written = {path.name: path.stat().st_mtime_ns for path in (folder / "files").iterdir()}
    folder_from_hf_dataset(dataset, tmp_path / "out", video_column="video", caption_column="caption")
    assert {path.name: path.stat().st_mtime_ns for path in (folder / "files").iterdir()} == written  # not rewritten


def test_image_and_path_columns(clips, tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 24, 3), 200, np.uint8)).save(buffer, format="JPEG")
    images = datasets.Dataset.from_dict({"image": [{"bytes": buffer.getvalue(), "path": None}], "text": ["gray"]})
    images = images.cast_column("image", datasets.Image(decode=False))
    folder = folder_from_hf_dataset(images, tmp_path / "images", video_column="image")
    assert VideoFolderDataset(folder, num_frames=5, height=16, width=16).summary["images"] == 1

    paths = datasets.Dataset.from_dict({"video": [str(clips / "a.mp4")], "text": ["by path"]})
    folder = folder_from_hf_dataset(paths, tmp_path / "paths")
    entry = VideoFolderDataset(folder, num_frames=5, height=16, width=16).entries[0]
    assert entry.path == str(clips / "a.mp4") and entry.caption == "by path"
    with pytest.raises(ValueError, match=r"--video_column 'clip' is not a column of the dataset"):
        folder_from_hf_dataset(paths, tmp_path / "bad", video_column="clip")


def test_train_text_to_video_on_a_dataset_name(parquet_dataset, tmp_path):
    arguments = ["--dataset_name", str(parquet_dataset), "--caption_column", "caption", "--output_dir",
                 str(tmp_path / "run"), "--num_frames", "5", "--height", "16", "--width", "16", "--vae_config",
                 TINY_VAE, "--train_batch_size", "2", "--max_train_steps", "2", "--report_to", "none",
                 "--validation_prompts", "--lr_warmup_steps", "1"]  # fmt: skip
    args = train_text_to_video.parse_args(arguments)
    assert len(dataset_from_args(args)) == 4
    result = train_text_to_video.main(args)
    assert len(result["losses"]) == 2 and all(torch.isfinite(torch.tensor(result["losses"])))
    with pytest.raises(ValueError, match="pass exactly one of --data_dir, --dataset_name and --train_shards"):
        train_text_to_video.parse_args([*arguments, "--data_dir", str(tmp_path)])
