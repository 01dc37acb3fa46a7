"""The video-folder dataset: mixed formats, bad files skipped and counted, sampling, cropping, batching, sharding."""

import json
import sys

import numpy as np
import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from PIL import Image

from training.data import (
    FrameCountBatchSampler,
    VideoFolderDataset,
    collate_videos,
    make_dataloader,
    resize_and_center_crop,
)
from training.make_shapes_dataset import write_mp4


def _write_video(path, num_frames, height=24, width=40, fps=8, codec="libx264"):
    """A clip whose frame i is flat gray level (8 * i + 16) % 240 (so decoded frames tell their source index)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        for index in range(num_frames):
            frame = np.full((height, width, 3), (8 * index + 16) % 240, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _write_gif(path, num_frames, height=20, width=30):
    frames = [Image.fromarray(np.full((height, width, 3), 8 * i + 16, dtype=np.uint8)) for i in range(num_frames)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0)


def _write_metadata(folder, rows):
    with open(folder / "metadata.jsonl", "w") as handle:
        for name, text in rows:
            handle.write(json.dumps({"file_name": name, "text": text}) + "\n")


@pytest.fixture
def mixed_dir(tmp_path):
    """Good mp4/webm/mov/gif clips and png/jpg images, plus every kind of bad file."""
    (tmp_path / "sub").mkdir()
    _write_video(tmp_path / "a.mp4", 12)
    _write_video(tmp_path / "sub" / "b.webm", 12, codec="libvpx")
    _write_video(tmp_path / "c.mov", 12, codec="mpeg4")
    _write_gif(tmp_path / "d.gif", 12)
    Image.fromarray(np.full((30, 50, 3), 200, np.uint8)).save(tmp_path / "e.png")
    Image.fromarray(np.full((30, 50, 3), 100, np.uint8)).save(tmp_path / "f.jpg")
    _write_video(tmp_path / "short.mp4", 3)
    (tmp_path / "garbage.mp4").write_bytes(b"not a video" * 50)
    good_png = (tmp_path / "e.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(good_png[: len(good_png) // 2])
    (tmp_path / "notes.txt").write_text("not media")
    names = ["a.mp4", "sub/b.webm", "c.mov", "d.gif", "e.png", "f.jpg", "short.mp4", "garbage.mp4", "truncated.png",
             "missing.mp4", "notes.txt"]  # fmt: skip
    _write_metadata(tmp_path, [(name, f"caption of {name}") for name in names])
    return tmp_path


class TestIndexing:
    def test_mixed_folder_skips_and_counts(self, mixed_dir, caplog):
        dataset = VideoFolderDataset(mixed_dir, num_frames=5, height=16, width=16, frame_stride=2)
        summary = dataset.summary
        assert (summary["videos"], summary["images"], summary["skipped"]) == (4, 2, 5)
        assert summary["skipped_files"] == {
            "missing": ["missing.mp4"],
            "unsupported": ["notes.txt"],
            "unreadable": ["garbage.mp4", "truncated.png"],
            "too_short": ["short.mp4"],
        }
        assert "Skipping garbage.mp4" in caplog.text and "skipped 5" in dataset.format_summary()
        for index in range(len(dataset)):
            sample = dataset[index]
            frames = 1 if sample["file_name"].endswith((".png", ".jpg")) else 5
            assert sample["pixel_values"].shape == (3, frames, 16, 16)
            assert sample["pixel_values"].dtype == torch.float32
            assert -1 <= sample["pixel_values"].min() and sample["pixel_values"].max() <= 1
            assert sample["caption"] == f"caption of {sample['file_name']}"

    def test_without_metadata_every_media_file(self, tmp_path):
        _write_video(tmp_path / "a.mp4", 6)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "b.png")
        dataset = VideoFolderDataset(tmp_path, num_frames=5, height=8, width=8, include_images=False)
        assert [entry.file_name for entry in dataset.entries] == ["a.mp4"] and dataset.captions == [""]

    def test_bad_metadata_and_empty_folder_raise(self, tmp_path):
        (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.mp4"}\nnot json\n')
        with pytest.raises(ValueError, match="metadata.jsonl:2"):
            VideoFolderDataset(tmp_path, num_frames=1, height=8, width=8)
        (tmp_path / "metadata.jsonl").write_text('{"file_name": "gone.mp4", "text": "x"}\n')
        with pytest.raises(ValueError, match="No usable file"):
            VideoFolderDataset(tmp_path, num_frames=1, height=8, width=8)

    def test_imageio_fallback_without_pyav(self, mixed_dir, monkeypatch):
        monkeypatch.setitem(sys.modules, "av", None)  # `import av` now fails, as on a machine without PyAV
        dataset = VideoFolderDataset(mixed_dir, num_frames=5, height=16, width=16, frame_stride=2)
        assert (dataset.summary["videos"], dataset.summary["skipped"]) == (4, 5)
        assert all(dataset[index]["skipped"] == [] for index in range(len(dataset)))


class TestSampling:
    def test_stride_picks_source_frames(self, tmp_path):
        _write_video(tmp_path / "a.mp4", 12)
        dataset = VideoFolderDataset(tmp_path, num_frames=4, height=24, width=40, frame_stride=3)
        levels = (dataset[0]["pixel_values"].mean(dim=(0, 2, 3)) + 1) * 127.5  # (F,) mean gray level
        assert np.allclose(levels.numpy(), [8 * i + 16 for i in (0, 3, 6, 9)], atol=2)

    def test_target_fps_sets_the_stride(self, tmp_path):
        _write_video(tmp_path / "a.mp4", 12, fps=8)
        dataset = VideoFolderDataset(tmp_path, num_frames=3, height=24, width=40, target_fps=4)
        assert dataset.frame_indices(0) == [0, 2, 4]

    def test_random_start_depends_on_seed_epoch_and_index_only(self, tmp_path):
        _write_video(tmp_path / "a.mp4", 40)
        dataset = VideoFolderDataset(tmp_path, num_frames=3, height=8, width=8, random_start=True, seed=1)
        starts = []
        for epoch in range(6):
            dataset.set_epoch(epoch)
            starts.append(dataset.frame_indices(0)[0])
        dataset.set_epoch(0)
        assert dataset.frame_indices(0)[0] == starts[0] and len(set(starts)) > 1
        assert all(0 <= start <= 40 - 3 for start in starts)

    def test_resize_and_center_crop(self):
        frames = np.zeros((1, 20, 60, 3), np.uint8)  # wide: left third red, middle green, right third blue
        frames[:, :, :20, 0], frames[:, :, 20:40, 1], frames[:, :, 40:, 2] = 255, 255, 255
        video = resize_and_center_crop(frames, 10, 10)  # scale 0.5 -> 10 x 30, crop the middle 10 columns
        assert video.shape == (3, 1, 10, 10)
        assert torch.allclose(video[:, 0, 5, 5], torch.tensor([-1.0, 1.0, -1.0]))


class TestDecodeTimeFailure:
    def test_a_file_gone_after_indexing_is_replaced_and_reported(self, tmp_path):
        for name in ("a.mp4", "b.mp4"):
            _write_video(tmp_path / name, 6)
        _write_metadata(tmp_path, [("a.mp4", "first"), ("b.mp4", "second")])
        dataset = VideoFolderDataset(tmp_path, num_frames=5, height=8, width=8)
        (tmp_path / "a.mp4").write_bytes(b"corrupted later")
        sample = dataset[0]
        assert sample["file_name"] == "b.mp4" and sample["skipped"] == ["a.mp4"]
        assert collate_videos([sample, dataset[1]])["skipped"] == ["a.mp4"]


class TestBatching:
    def test_batches_never_mix_frame_counts(self, mixed_dir):
        dataset = VideoFolderDataset(mixed_dir, num_frames=5, height=16, width=16, frame_stride=2)
        loader = make_dataloader(dataset, batch_size=2, seed=0)
        shapes = [tuple(batch["pixel_values"].shape) for batch in loader]
        assert sorted(shapes) == [(2, 3, 1, 16, 16), (2, 3, 5, 16, 16), (2, 3, 5, 16, 16)]
        with pytest.raises(ValueError, match="mixes frame counts"):
            collate_videos([dataset[0], dataset[len(dataset) - 1]])

    def test_sampler_order_depends_on_seed_and_epoch(self):
        sampler = FrameCountBatchSampler([5] * 10 + [1] * 5, batch_size=2, seed=0)
        assert len(sampler) == 5 + 2 and all(len(batch) == 2 for batch in sampler)
        first = list(sampler)
        assert list(sampler) == first
        sampler.set_epoch(1)
        assert list(sampler) != first
        keep_last = FrameCountBatchSampler([5] * 10 + [1] * 5, batch_size=2, shuffle=False, drop_last=False)
        assert len(keep_last) == 5 + 3 and sorted(i for batch in keep_last for i in batch) == list(range(15))

    def test_accelerate_sharding_splits_batches_between_processes(self):
        sampler = FrameCountBatchSampler([9] * 16 + [1] * 8, batch_size=2, seed=0)
        shards = [list(BatchSamplerShard(sampler, num_processes=2, process_index=rank)) for rank in range(2)]
        assert len(shards[0]) == len(shards[1]) == len(sampler) // 2
        seen = [index for shard in shards for batch in shard for index in batch]
        assert sorted(seen) == list(range(24))  # disjoint and complete

    def test_dataloader_needs_a_full_batch(self, tmp_path):
        write_mp4(tmp_path / "a.mp4", np.zeros((5, 16, 16, 3), np.uint8), fps=8)
        dataset = VideoFolderDataset(tmp_path, num_frames=5, height=16, width=16)
        with pytest.raises(ValueError, match="No full batch"):
            make_dataloader(dataset, batch_size=2)
