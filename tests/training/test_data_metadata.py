"""Folders as users bring them: metadata.csv or metadata.jsonl with any caption column, every file accounted for and
reported at startup (no caption, not listed, left out of every batch), and an index that reads each file once."""

import csv
import json
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from training import data, encode_prompts, train_text_to_video
from training.data import VideoFolderDataset, dataset_from_args, make_dataloader

from .test_data import _write_video


def _write_csv(folder, rows, columns=("file_name", "caption")):
    with open(folder / "metadata.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)


@pytest.fixture
def csv_dir(tmp_path):
    """Four clips and three images; one clip without a caption, one clip on disk but not in metadata.csv."""
    for name in ("a.mp4", "b.mp4", "c.mp4", "d.mp4", "unlisted.mp4"):
        _write_video(tmp_path / name, 6, height=16, width=16)
    for name in ("e.png", "f.png", "g.png"):
        Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / name)
    rows = [("a.mp4", "a red circle"), ("b.mp4", "a blue square, moving"), ("c.mp4", ""), ("d.mp4", "a triangle"),
            ("e.png", "an image"), ("f.png", "an image"), ("g.png", "an image")]  # fmt: skip
    _write_csv(tmp_path, rows)
    return tmp_path


def test_metadata_csv_with_a_caption_column_and_every_file_reported(csv_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="training.data"):
        dataset = VideoFolderDataset(csv_dir, num_frames=5, height=16, width=16, caption_column="caption")
    captions = dict(zip([entry.file_name for entry in dataset.entries], dataset.captions))
    assert captions["b.mp4"] == "a blue square, moving" and captions["c.mp4"] == ""
    summary = dataset.summary
    assert (summary["videos"], summary["images"], summary["no_caption"], summary["unlisted"]) == (4, 3, 1, 1)
    assert dataset.metadata_file == "metadata.csv" and dataset.unlisted == ["unlisted.mp4"]
    report = caplog.text
    assert "(metadata.csv): 4 videos, 3 images" in report
    assert "1 without a 'caption' caption" in report and "1 media files not in metadata.csv" in report


def test_a_caption_column_the_metadata_lacks_is_reported_and_refused_by_training(csv_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="training.data"):
        dataset = VideoFolderDataset(csv_dir, num_frames=5, height=16, width=16)  # default column "text"
    assert (
        "caption_column 'text' is not a column of metadata.csv (its columns: ['caption', 'file_name'])" in caplog.text
    )
    assert dataset.summary["no_caption"] == len(dataset)
    args = train_text_to_video.parse_args(
        ["--data_dir", str(csv_dir), "--output_dir", str(tmp_path / "run"), "--num_frames", "5", "--height", "16",
         "--width", "16", "--vae_config", train_text_to_video.CONFIG_DIR.joinpath("vae_tiny.json").as_posix(),
         "--report_to", "none", "--max_train_steps", "1"]
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"--caption_column 'text': no usable file of metadata.csv has a caption"):
        train_text_to_video.main(args)


def test_bad_metadata_files_are_named(tmp_path):
    _write_video(tmp_path / "a.mp4", 6)
    _write_csv(tmp_path, [("a.mp4", "x")], columns=("path", "caption"))
    with pytest.raises(
        ValueError, match=r"metadata.csv has no 'file_name' column \(its columns: \['path', 'caption'\]\)"
    ):
        VideoFolderDataset(tmp_path, num_frames=5, height=8, width=8)
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "a.mp4", "text": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"has both metadata.jsonl and metadata.csv: keep one"):
        VideoFolderDataset(tmp_path, num_frames=5, height=8, width=8)


def test_samples_left_out_of_every_batch_are_reported(csv_dir, caplog):
    dataset = VideoFolderDataset(csv_dir, num_frames=5, height=16, width=16, caption_column="caption")
    with caplog.at_level(logging.WARNING, logger="training.data"):
        loader = make_dataloader(dataset, batch_size=4)
    assert len(loader) == 1  # the 4 clips; the 3 images never make a batch
    assert "All 3 images (1 frame) are unused: fewer than a batch of 4" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="training.data"):
        make_dataloader(dataset, batch_size=3)
    assert "Each epoch leaves out 1 of 4 5-frame clips" in caplog.text


def test_the_index_cache_reads_each_file_once(csv_dir, tmp_path, monkeypatch):
    args = SimpleNamespace(
        data_dir=str(csv_dir), output_dir=str(tmp_path / "run"), num_frames=5, height=16, width=16, frame_stride=1,
        target_fps=None, random_start=False, seed=0, no_images=False, max_train_samples=None, caption_column="caption",
    )  # fmt: skip
    first = dataset_from_args(args)
    assert len(list((tmp_path / "run" / "data_index").glob("*.json"))) == 1

    probed = []
    real_probe = data.probe_video
    monkeypatch.setattr(data, "probe_video", lambda path, *rest: probed.append(path) or real_probe(path, *rest))
    again = dataset_from_args(args)  # another process, or a resumed run
    assert probed == [] and again.entries == first.entries
    _write_video(csv_dir / "a.mp4", 7, height=16, width=16)  # a changed file is read again, and only it
    changed = dataset_from_args(args)
    assert [str(path) for path in probed] == [str(csv_dir / "a.mp4")] and changed.entries[0].num_source_frames == 7


def test_encode_prompts_reads_metadata_csv(csv_dir):
    assert encode_prompts.read_captions(csv_dir, "caption") == [
        "a red circle", "a blue square, moving", "", "a triangle", "an image",
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"--caption_column 'text' is not a column of metadata.csv"):
        encode_prompts.read_captions(csv_dir)
