"""Seeking decode (start at the sampled frame, same frames as decoding from the start) and buckets (each file to the
bucket that keeps most of it, batches of one bucket, counts reported)."""

import logging

import numpy as np
import pytest
from PIL import Image

from training import data
from training.data import VideoFolderDataset, make_dataloader, parse_buckets, read_video_frames

from .test_data import _write_gif, _write_metadata, _write_video


def _write_noise_video(path, num_frames, codec="libx264", gop=10, height=32, width=32):
    """Every frame different (seeded noise), a keyframe every `gop` frames."""
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=24)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        for _ in range(num_frames):
            frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


@pytest.fixture
def count_decoded(monkeypatch):
    """Counts the frames the seeking reader decodes."""
    decoded = []
    real = data._pyav_numbered_frames

    def counting(*args):
        for item in real(*args):
            decoded.append(item[0])
            yield item

    monkeypatch.setattr(data, "_pyav_numbered_frames", counting)
    return decoded


@pytest.mark.parametrize("name, codec", [("clip.mp4", "libx264"), ("clip.webm", "libvpx"), ("clip.mov", "mpeg4")])
def test_seeking_decode_gives_the_frames_of_decoding_from_the_start(name, codec, tmp_path, count_decoded):
    path = tmp_path / name
    _write_noise_video(path, 120, codec=codec)
    for indices in ([97, 99, 101, 103], [1, 2, 3], list(range(40, 57))):
        seeking = read_video_frames(path, indices)
        assert np.array_equal(seeking, data._read_frames_pyav_from_start(path, indices)), indices
    assert 0 < len(count_decoded) < 3 * 25  # decoded from the keyframes before 97, 1 and 40 only, not 100+ each


def test_seeking_falls_back_to_decoding_from_the_start(tmp_path, monkeypatch):
    _write_gif(tmp_path / "a.gif", 12)
    monkeypatch.setattr(data, "_read_frames_pyav_seeking", lambda *args: 1 / 0)
    levels = read_video_frames(tmp_path / "a.gif", [5, 7])[:, 0, 0, 0]
    assert np.allclose(levels, [8 * 5 + 16, 8 * 7 + 16], atol=2)
    with pytest.raises(ValueError, match="needs frame 20 but has 12 frames"):
        read_video_frames(tmp_path / "a.gif", [3, 20])


def test_parse_buckets_names_the_flag_and_the_rule():
    assert parse_buckets("1x256x256, 17x256x256,33X192x320") == ((1, 256, 256), (17, 256, 256), (33, 192, 320))
    for bad in ("17x256", "0x64x64", "17x64x64.5", "17x64x64,"):
        with pytest.raises(ValueError, match=r"--buckets takes FRAMESxHEIGHTxWIDTH items of positive ints"):
            parse_buckets(bad)
    with pytest.raises(ValueError, match="lists a bucket twice"):
        parse_buckets("5x16x16,5x16x16")


@pytest.fixture
def mixed_sizes_dir(tmp_path):
    """Landscape and portrait clips of 12 frames, a 6-frame and a 3-frame clip, a square and a wide image."""
    _write_video(tmp_path / "wide.mp4", 12, height=16, width=32)
    _write_video(tmp_path / "tall.mp4", 12, height=32, width=16)
    _write_video(tmp_path / "wide_short.mp4", 6, height=16, width=32)
    _write_video(tmp_path / "tiny.mp4", 3, height=16, width=32)
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(tmp_path / "square.png")
    Image.fromarray(np.full((16, 32, 3), 90, np.uint8)).save(tmp_path / "wide.png")
    names = ["wide.mp4", "tall.mp4", "wide_short.mp4", "tiny.mp4", "square.png", "wide.png"]
    _write_metadata(tmp_path, [(name, f"caption of {name}") for name in names])
    return tmp_path


BUCKETS = ((1, 16, 16), (1, 16, 32), (5, 16, 32), (9, 16, 32), (9, 32, 16))


def test_each_file_goes_to_the_bucket_that_keeps_most_of_it(mixed_sizes_dir, caplog):
    with caplog.at_level(logging.INFO, logger="training.data"):
        dataset = VideoFolderDataset(mixed_sizes_dir, num_frames=5, height=16, width=16, buckets=BUCKETS)
    assigned = {entry.file_name: entry.bucket for entry in dataset.entries}
    assert assigned == {
        "wide.mp4": (9, 16, 32),  # 9 of 12 frames, all of its area
        "tall.mp4": (9, 32, 16),  # portrait stays portrait
        "wide_short.mp4": (5, 16, 32),  # too short for 9 frames
        "tiny.mp4": (1, 16, 32),  # too short for any clip bucket: one frame of it
        "square.png": (1, 16, 16),
        "wide.png": (1, 16, 32),
    }
    assert dataset.summary["buckets"] == {"9x16x32": 1, "9x32x16": 1, "5x16x32": 1, "1x16x32": 2, "1x16x16": 1}
    assert "buckets 1x16x16: 1, 1x16x32: 2, 5x16x32: 1, 9x16x32: 1, 9x32x16: 1" in caplog.text
    for index, entry in enumerate(dataset.entries):
        assert tuple(dataset[index]["pixel_values"].shape) == (3, *entry.bucket)

    loader = make_dataloader(dataset, batch_size=1, seed=0)
    shapes = sorted(tuple(batch["pixel_values"].shape[2:]) for batch in loader)
    assert shapes == sorted(entry.bucket for entry in dataset.entries)  # every file, each in its bucket's shape
    two = VideoFolderDataset(mixed_sizes_dir, num_frames=5, height=16, width=16, buckets=BUCKETS)
    batches = list(make_dataloader(two, batch_size=2, seed=0))
    assert [tuple(batch["pixel_values"].shape[2:]) for batch in batches] == [(1, 16, 32)]  # the one full bucket


def test_files_that_fit_no_bucket_are_skipped_and_named(mixed_sizes_dir):
    dataset = VideoFolderDataset(mixed_sizes_dir, num_frames=5, height=16, width=16, buckets=((5, 16, 32),))
    assert dataset.summary["skipped_files"] == {
        "too_short": ["tiny.mp4"],
        "no_bucket": ["square.png", "wide.png"],
    }
    assert dataset.summary["buckets"] == {"5x16x32": 3}
    with pytest.raises(ValueError, match=r"buckets must be \(frames, height, width\) triples of positive ints"):
        VideoFolderDataset(mixed_sizes_dir, num_frames=5, height=16, width=16, buckets=((5, 16),))
