"""The video-folder dataset both training scripts share: captioned clips and images as (C, F, H, W) tensors in [-1, 1].

A data folder holds video files (mp4, webm, mov, mkv, avi, gif) and images (png, jpg, jpeg, webp, bmp), with a
`metadata.jsonl` whose lines are `{"file_name": "clip.mp4", "text": "a caption"}` or a `metadata.csv` with a
`file_name` column and a caption column (the diffusers/datasets image-folder convention; `file_name` is relative to
the folder; the caption column is `caption_column`, "text" by default). Without metadata every media file under the
folder is used with an empty caption (enough for the VAE). Rows without a caption are kept with an empty one and
counted (`no_caption`), media files that the metadata does not list are counted (`unlisted`): both are reported
at startup with the skipped files.

Each video is sampled to `num_frames` frames, every `frame_stride`-th source frame (or the stride that brings its
frame rate nearest `target_fps`), from the first frame or from a start drawn from (seed, epoch, index); resized so
that it covers `height` x `width` and center-cropped. An image is a one-frame video, so images and videos train
together (the latent of one frame is one layer of patches).

Batches hold one frame count: `FrameCountBatchSampler` groups indices by frame count (num_frames for videos, 1 for
images) and `collate_videos` refuses mixed counts. Sharding across processes is accelerate's: `prepare` wraps the
batch sampler so that each process takes every n-th batch.

Bad files never stop an epoch. At index time every file is opened and its frame count read (decoding to count
where the container does not say); unreadable, too-short, missing and unsupported files are skipped with a
warning and counted in `summary`. With `index_cache` (the training scripts: output_dir/data_index/), what was read
is kept per file (size and mtime as its key), so a rerun, a resume or another process reads no file again;
`dataset_from_args` indexes on the main process first and the others read its cache. A file that fails later, at decode time, is replaced by the next good file
with the same frame count and reported in the batch's `skipped` list.

Decoding uses PyAV (fast seeking and webm/mov/gif support; the one video dependency of training), with imageio's
ffmpeg reader as the fallback.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA_FILES = ("metadata.jsonl", "metadata.csv")
INDEX_CACHE_VERSION = 1
SKIP_REASONS = ("missing", "unsupported", "unreadable", "too_short", "no_bucket")
MAX_SUBSTITUTIONS = 16  # decode-time failures in a row before giving up on a sample


@dataclasses.dataclass(frozen=True)
class VideoFolderEntry:
    """One usable file of the folder."""

    path: str
    file_name: str
    caption: str
    is_image: bool
    num_source_frames: int  # 1 for images
    fps: float | None  # None for images and for videos whose container gives no rate
    source_size: tuple[int, int] | None = None  # (height, width) of the file's frames
    bucket: tuple[int, int, int] | None = None  # (frames, height, width) of its samples, with buckets


class VideoProbe(NamedTuple):
    """What indexing reads of a video."""

    frames: int
    fps: float | None
    exact: bool  # False when counting stopped at the frames asked for: the video has at least `frames`
    height: int
    width: int


# 1. Decoding
def _open_video_stream(container):
    if not container.streams.video:
        raise ValueError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def probe_video(path: str | os.PathLike, min_frames: int) -> VideoProbe:
    """Frame count, fps and frame size of a video; decodes to count, up to `min_frames`, when the container gives no
    count (then `exact` is False when it stopped there: the video has at least that many frames).

    Raises on unreadable files. Always decodes the first frame, so a file whose codec cannot be decoded fails here.
    PyAV first; imageio's ffmpeg reader where PyAV is missing or fails.
    """
    try:
        return _probe_pyav(path, min_frames)
    except Exception as pyav_error:  # any reason: try the other decoder, then report both
        try:
            return _probe_imageio(path, min_frames)
        except Exception as imageio_error:
            raise ValueError(f"PyAV: {pyav_error}; imageio: {imageio_error}") from imageio_error


def _probe_pyav(path, min_frames):
    import av

    with av.open(str(path)) as container:
        stream = _open_video_stream(container)
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        count = int(stream.frames or 0)
        decoded, size = 0, None
        for frame in container.decode(stream):
            decoded, size = decoded + 1, size or (frame.height, frame.width)
            if decoded >= (1 if count else min_frames):
                break
        if decoded == 0:
            raise ValueError("no decodable frame")
        return VideoProbe(count or decoded, fps, bool(count) or decoded < min_frames, *size)


def _probe_imageio(path, min_frames):
    reader = _imageio_reader(path)
    try:
        fps = reader.get_meta_data().get("fps")
        decoded, size = 0, None
        for frame in reader:  # count by decoding: the ffmpeg reader's nframes is unreliable (inf for mp4)
            decoded, size = decoded + 1, size or tuple(np.asarray(frame).shape[:2])
            if decoded >= min_frames:
                break
        if decoded == 0:
            raise ValueError("no decodable frame")
        return VideoProbe(decoded, float(fps) if fps else None, decoded < min_frames, *size)
    finally:
        reader.close()


def _imageio_reader(path):
    import imageio.v2 as imageio

    return imageio.get_reader(str(path), format=None if str(path).lower().endswith(".gif") else "ffmpeg")


def read_video_frames(path: str | os.PathLike | io.BytesIO, frame_indices: Sequence[int]) -> np.ndarray:
    """The given frames of a video as uint8 RGB (F, H, W, 3); PyAV first, imageio's ffmpeg reader as fallback (for
    files; a video in memory, `io.BytesIO`, is PyAV's only)."""
    try:
        return _read_frames_pyav(path, frame_indices)
    except Exception as pyav_error:  # any decoder failure: try the other decoder, then report both
        if isinstance(path, io.BytesIO):
            raise
        try:
            return _read_frames_imageio(path, frame_indices)
        except Exception as imageio_error:
            raise ValueError(f"PyAV: {pyav_error}; imageio: {imageio_error}") from imageio_error


def _collect(numbered_frames: Iterator[tuple[int, object]], frame_indices: Sequence[int], to_array) -> np.ndarray:
    """The wanted frames of a stream of (frame number, frame), converted by `to_array` only when wanted."""
    wanted, last, found, seen = set(frame_indices), max(frame_indices), {}, -1
    for index, frame in numbered_frames:
        seen = max(seen, index)
        if index in wanted and index not in found:
            found[index] = to_array(frame)
        if index >= last:
            break
    if len(found) < len(wanted):
        raise ValueError(f"needs frame {min(wanted - set(found))} but has {seen + 1} frames")
    return np.stack([found[index] for index in frame_indices])  # (F, H, W, 3)


def _pyav_rgb(frame) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _pyav_numbered_frames(container, stream, origin: int, frames_per_tick) -> Iterator[tuple[int, object]]:
    """Decoded frames with their number, read from the timestamp: round((pts - origin) * time_base * fps)."""
    for frame in container.decode(stream):
        if frame.pts is None:
            raise ValueError("a frame without a timestamp")
        yield round((frame.pts - origin) * frames_per_tick), frame


def _read_frames_pyav(path, frame_indices):
    """Seeks to the keyframe before the first wanted frame and decodes from there (decoding from frame 0 to reach
    frame 1,400 takes seconds); decodes from the start where the stream has no rate or timestamps to seek by, or the
    seek lands after the wanted frame."""
    if min(frame_indices) > 0:
        try:
            return _read_frames_pyav_seeking(path, frame_indices)
        except Exception as error:  # any reason seeking fails: decode from the start (the slow, sure way)
            logger.debug(f"Seeking in {path} failed ({error}); decoding from the first frame")
    return _read_frames_pyav_from_start(path, frame_indices)


def _av_source(path):
    """What `av.open` takes: a file name, or an in-memory file rewound to its start."""
    if isinstance(path, io.BytesIO):
        path.seek(0)
        return path
    return str(path)


def _read_frames_pyav_seeking(path, frame_indices):
    import av

    with av.open(_av_source(path)) as container:
        stream = _open_video_stream(container)
        rate, time_base = stream.average_rate or stream.guessed_rate, stream.time_base
        if not rate or not time_base:
            raise ValueError("no frame rate or time base")
        origin = stream.start_time or 0
        frames_per_tick = time_base * rate  # exact (Fractions)
        first = min(frame_indices)
        container.seek(origin + int(first / frames_per_tick), stream=stream, backward=True, any_frame=False)
        numbered = _pyav_numbered_frames(container, stream, origin, frames_per_tick)
        start, frame = next(numbered)
        if start > first:
            raise ValueError(f"the seek landed at frame {start}, after frame {first}")
        return _collect(itertools.chain([(start, frame)], numbered), frame_indices, _pyav_rgb)


def _read_frames_pyav_from_start(path, frame_indices):
    import av

    with av.open(_av_source(path)) as container:
        stream = _open_video_stream(container)
        return _collect(enumerate(container.decode(stream)), frame_indices, _pyav_rgb)


def _read_frames_imageio(path, frame_indices):
    reader = _imageio_reader(path)
    try:  # iterate: the ffmpeg reader reports nframes = inf for mp4
        return _collect(enumerate(reader), frame_indices, lambda frame: np.asarray(frame)[..., :3])
    finally:
        reader.close()


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image as uint8 RGB (1, H, W, 3)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.array(image.convert("RGB"))[None]


def resize_and_center_crop(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 (F, h, w, 3) -> float (3, F, height, width) in [-1, 1]: scaled to cover the target, then center-cropped."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()  # (F, 3, h, w)
    source_height, source_width = video.shape[-2:]
    scale = max(height / source_height, width / source_width)
    resized_height = max(height, round(source_height * scale))
    resized_width = max(width, round(source_width * scale))
    if (resized_height, resized_width) != (source_height, source_width):
        video = F.interpolate(video, size=(resized_height, resized_width), mode="bilinear", antialias=True)
    top, left = (resized_height - height) // 2, (resized_width - width) // 2
    video = video[:, :, top : top + height, left : left + width]  # (F, 3, H, W)
    return (video / 127.5 - 1.0).clamp(-1.0, 1.0).permute(1, 0, 2, 3).contiguous()  # (3, F, H, W)


def parse_buckets(text: str) -> tuple[tuple[int, int, int], ...]:
    """'1x256x256,17x256x256' -> ((1, 256, 256), (17, 256, 256)); ValueError naming --buckets and the rule."""
    buckets = []
    for item in text.split(","):
        parts = item.strip().lower().split("x")
        if len(parts) != 3 or not all(part.isdigit() and int(part) > 0 for part in parts):
            raise ValueError(
                f"--buckets takes FRAMESxHEIGHTxWIDTH items of positive ints, e.g. 17x256x256; got {item!r}"
            )
        buckets.append(tuple(int(part) for part in parts))
    if len(set(buckets)) != len(buckets):
        raise ValueError(f"--buckets lists a bucket twice: {text!r}")
    return tuple(buckets)


def format_bucket(bucket: tuple[int, int, int]) -> str:
    return "x".join(str(size) for size in bucket)


# 1b. Metadata
def find_metadata(data_dir: str | os.PathLike) -> Path | None:
    """The folder's metadata.jsonl or metadata.csv (ValueError if it has both), or None."""
    found = [Path(data_dir) / name for name in METADATA_FILES if (Path(data_dir) / name).is_file()]
    if len(found) > 1:
        raise ValueError(f"{str(data_dir)!r} has both {' and '.join(path.name for path in found)}: keep one")
    return found[0] if found else None


def read_metadata(metadata: Path) -> list[dict]:
    """The rows of metadata.jsonl or metadata.csv, each a dict with a 'file_name'."""
    if metadata.suffix == ".csv":
        with open(metadata, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if "file_name" not in (reader.fieldnames or []):
                raise ValueError(f"{metadata} has no 'file_name' column (its columns: {reader.fieldnames})")
            return list(reader)
    rows = []
    with open(metadata, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{metadata}:{line_number} is not JSON: {error}") from error
            if not isinstance(row, dict) or "file_name" not in row:
                raise ValueError(f"{metadata}:{line_number} has no 'file_name'")
            rows.append(row)
    return rows


# 2. The dataset
class VideoFolderDataset(Dataset):
    """Captioned videos and images of a folder as `{"pixel_values": (3, F, H, W) in [-1, 1], "caption": str, ...}`.

    Args:
        data_dir (`str`): the folder (see the module docstring for its layout).
        num_frames (`int`): frames per video sample; images give one frame.
        height (`int`), width (`int`): output size after resize and center crop.
        frame_stride (`int`): take every `frame_stride`-th source frame.
        target_fps (`float`, *optional*): if set, the stride per video is round(source fps / target_fps), at least 1.
        random_start (`bool`): draw the first frame from (seed, epoch, index) instead of starting at frame 0.
        seed (`int`): seed of `random_start`.
        include_images (`bool`): keep image files (one-frame samples).
        max_samples (`int`, *optional*): keep only the first `max_samples` usable files (debugging, tests).
        caption_column (`str`): the metadata key (jsonl) or column (csv) holding the caption.
        index_cache (`str`, *optional*): JSON file that keeps what indexing read of each file (see the module
            docstring); read if present, written when something new was read.
        buckets (`list[tuple[int, int, int]]`, *optional*): (frames, height, width) sample sizes; each file goes
            to the one that keeps most of it (`_assign_bucket`) and batches hold one bucket. Without it every video
            sample is (num_frames, height, width) and every image (1, height, width).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        num_frames: int,
        height: int,
        width: int,
        frame_stride: int = 1,
        target_fps: float | None = None,
        random_start: bool = False,
        seed: int = 0,
        include_images: bool = True,
        max_samples: int | None = None,
        caption_column: str = "text",
        index_cache: str | os.PathLike | None = None,
        buckets: Sequence[Sequence[int]] | None = None,
    ):
        sizes = {"num_frames": num_frames, "height": height, "width": width, "frame_stride": frame_stride}
        for name, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool):
                # else every file would later "fail to decode" on a float size, and the epoch would blame the files
                raise TypeError(f"{name} must be an int, got {value!r}")
        if num_frames < 1 or height < 1 or width < 1:
            raise ValueError(f"num_frames, height and width must be positive, got {num_frames}, {height}, {width}")
        if frame_stride < 1:
            raise ValueError(f"frame_stride must be at least 1, got {frame_stride}")
        if target_fps is not None and target_fps <= 0:
            raise ValueError(f"target_fps must be positive, got {target_fps}")
        for bucket in buckets or ():
            if len(bucket) != 3 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in bucket):
                raise ValueError(f"buckets must be (frames, height, width) triples of positive ints, got {bucket!r}")
        self.bucket_sizes = tuple(tuple(bucket) for bucket in buckets or ())
        self.data_dir = Path(data_dir)
        if not self.data_dir.is_dir():
            raise ValueError(f"Data folder {str(self.data_dir)!r} does not exist")
        self.num_frames, self.height, self.width = num_frames, height, width
        self.frame_stride, self.target_fps = frame_stride, target_fps
        self.random_start, self.seed, self.epoch = random_start, seed, 0
        self.include_images, self.caption_column = include_images, caption_column
        self.index_cache = Path(index_cache) if index_cache is not None else None
        self.skipped: dict[str, list[str]] = {reason: [] for reason in SKIP_REASONS}
        self.metadata_file: str | None = None  # set by indexing
        self.unlisted: list[str] = []  # media files that the metadata does not list
        self.excluded_images = 0  # image files left out by include_images=False
        self.entries = self._index(max_samples)
        self._build_groups()
        summary = self.summary
        noteworthy = summary["skipped"] or summary["no_caption"] or summary["unlisted"] or summary["excluded_images"]
        logger.log(logging.WARNING if noteworthy else logging.INFO, self.format_summary())

    # 2a. Indexing
    def _media_files(self) -> list[str]:
        return sorted(
            str(path.relative_to(self.data_dir))
            for path in self.data_dir.rglob("*")
            if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS
        )

    def _listed_files(self) -> list[tuple[str, str]]:
        """(file_name, caption) pairs from the metadata file, or every media file with an empty caption."""
        metadata = find_metadata(self.data_dir)
        media = self._media_files()
        if metadata is None:
            return [(name, "") for name in media]
        self.metadata_file = metadata.name
        rows = read_metadata(metadata)
        columns = sorted({key for row in rows for key in row})
        if rows and self.caption_column not in columns:
            logger.warning(
                f"caption_column {self.caption_column!r} is not a column of {self.metadata_file} (its columns: "
                f"{columns}): every caption is empty"
            )
        listed = [(str(row["file_name"]), str(row.get(self.caption_column) or "")) for row in rows]
        names = {os.path.normpath(name) for name, _ in listed}
        self.unlisted = [name for name in media if os.path.normpath(name) not in names]
        return listed

    def _skip(self, reason: str, file_name: str, detail: str = "") -> None:
        self.skipped[reason].append(file_name)
        detail = " ".join(detail.split())[:300]  # ffmpeg errors can carry its whole banner
        logger.warning(f"Skipping {file_name} ({reason.replace('_', ' ')}{': ' + detail if detail else ''})")

    def _read_index_cache(self) -> dict[str, dict]:
        if self.index_cache is None or not self.index_cache.is_file():
            return {}
        try:
            content = json.loads(self.index_cache.read_text())
        except (OSError, json.JSONDecodeError) as error:
            logger.warning(f"Ignoring the unreadable index cache {self.index_cache} ({error})")
            return {}
        return content.get("files", {}) if content.get("version") == INDEX_CACHE_VERSION else {}

    def _write_index_cache(self, records: dict[str, dict]) -> None:
        self.index_cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.index_cache.with_name(f".{self.index_cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"version": INDEX_CACHE_VERSION, "files": records}))
        os.replace(tmp, self.index_cache)  # atomic: another process may be reading it

    def _probe(self, path: Path, is_image: bool, min_frames: int, cached: dict | None) -> dict:
        """What indexing needs of a file: {"key", "frames", "fps", "exact", "size", "error"}; `cached` if valid."""
        stat = path.stat()
        key = [stat.st_size, stat.st_mtime_ns]
        if cached is not None and cached["key"] == key:
            if cached["error"] or cached["exact"] or cached["frames"] >= min_frames:
                return cached
        record = {"key": key, "frames": 1, "fps": None, "exact": True, "size": None, "error": None}
        try:
            if is_image:
                from PIL import Image

                with Image.open(path) as image:
                    record["size"] = [image.height, image.width]
                    image.verify()  # reads the whole file: truncated and garbage files fail here
            else:
                probe = probe_video(path, min_frames)
                record.update(frames=probe.frames, fps=probe.fps, exact=probe.exact, size=[probe.height, probe.width])
        except Exception as error:  # any reason a file cannot be read is a skip
            record["error"] = str(error)
        return record

    def _index(self, max_samples: int | None) -> list[VideoFolderEntry]:
        cache = self._read_index_cache()
        records, entries = {}, []
        for file_name, caption in self._listed_files():
            if max_samples is not None and len(entries) >= max_samples:
                break
            path = self.data_dir / file_name
            suffix = path.suffix.lower()
            if not path.is_file():
                self._skip("missing", file_name)
                continue
            if suffix not in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS:
                self._skip("unsupported", file_name, f"extension {suffix!r}")
                continue
            is_image = suffix in IMAGE_EXTENSIONS
            if is_image and not self.include_images:
                self.excluded_images += 1
                continue
            min_frames = max(self._needed_frames(None, frames) for frames in self._video_frame_counts())
            record = records[file_name] = self._probe(path, is_image, min_frames, cache.get(file_name))
            if record["error"]:
                self._skip("unreadable", file_name, record["error"])
                continue
            entry = VideoFolderEntry(
                str(path), file_name, caption, is_image, record["frames"], record["fps"], tuple(record["size"])
            )
            if self.bucket_sizes:
                bucket = self._assign_bucket(entry)
                if bucket is None:
                    if is_image:
                        self._skip("no_bucket", file_name, "an image, and no bucket has 1 frame")
                    else:
                        shortest = min(self._needed_frames(entry, f) for f, _, _ in self.bucket_sizes)
                        self._skip("too_short", file_name, f"{entry.num_source_frames} frames, needs {shortest}")
                    continue
                entry = dataclasses.replace(entry, bucket=bucket)
            elif not is_image and entry.num_source_frames < self._needed_frames(entry):
                detail = f"{entry.num_source_frames} frames, needs {self._needed_frames(entry)}"
                self._skip("too_short", file_name, detail)
                continue
            entries.append(entry)
        read = sum(cache.get(name) is not record for name, record in records.items())
        source = f", {len(records) - read} from {self.index_cache}" if self.index_cache is not None else ""
        logger.info(f"Indexed {len(records)} files of {str(self.data_dir)!r}: {read} read{source}")
        if self.index_cache is not None and read:
            self._write_index_cache({**cache, **records})
        if not entries:
            raise ValueError(f"No usable file in {str(self.data_dir)!r}: {self.format_summary(entries)}")
        return entries

    def _stride(self, entry: VideoFolderEntry | None) -> int:
        if self.target_fps is None or entry is None or not entry.fps:
            return self.frame_stride
        return max(1, round(entry.fps / self.target_fps))

    def _frames(self, entry: VideoFolderEntry) -> int:
        """Frames of the entry's samples: its bucket's, or num_frames for videos and 1 for images."""
        if entry.bucket is not None:
            return entry.bucket[0]
        return 1 if entry.is_image else self.num_frames

    def _video_frame_counts(self) -> list[int]:
        return [frames for frames, _, _ in self.bucket_sizes] if self.bucket_sizes else [self.num_frames]

    def _needed_frames(self, entry: VideoFolderEntry | None, frames: int | None = None) -> int:
        """Source frames a video needs for `frames` samples (default: the entry's): (frames - 1) * stride + 1."""
        frames = frames if frames is not None else (self._frames(entry) if entry is not None else self.num_frames)
        return (frames - 1) * self._stride(entry) + 1

    def _assign_bucket(self, entry: VideoFolderEntry) -> tuple[int, int, int] | None:
        """The bucket that keeps most of the file: the largest product of the share of its duration kept
        (bucket frames over the frames the stride can reach; 1 for images) and the share of its area that
        resize-to-cover then center-crop keeps (the smaller aspect ratio over the larger); ties go to the larger
        bucket. Images go to 1-frame buckets only; None when no bucket fits."""
        source_height, source_width = entry.source_size
        source_aspect = source_width / source_height
        best, best_score = None, None
        for frames, height, width in self.bucket_sizes:
            if entry.is_image and frames != 1:
                continue
            needed = self._needed_frames(entry, frames)
            if not entry.is_image and needed > entry.num_source_frames:
                continue
            time_kept = 1.0 if entry.is_image else needed / entry.num_source_frames
            aspect = width / height
            area_kept = min(aspect, source_aspect) / max(aspect, source_aspect)
            score = (round(time_kept * area_kept, 9), frames * height * width)
            if best_score is None or score > best_score:
                best, best_score = (frames, height, width), score
        return best

    def _build_groups(self) -> None:
        """Indices per batch key: a file that fails at decode time is replaced from its own group (same shape)."""
        self.groups: dict = defaultdict(list)
        for index, key in enumerate(self.batch_keys):
            self.groups[key].append(index)

    # 2b. Views and summary
    @property
    def frame_counts(self) -> list[int]:
        """Frames of each sample: its bucket's; without buckets num_frames for videos, 1 for images."""
        return [self._frames(entry) for entry in self.entries]

    @property
    def batch_keys(self) -> list:
        """What a batch shares: the frame count, or with buckets the bucket (frames, height, width)."""
        return [entry.bucket if entry.bucket is not None else self._frames(entry) for entry in self.entries]

    @property
    def captions(self) -> list[str]:
        return [entry.caption for entry in self.entries]

    def _without_caption(self, entries: Sequence[VideoFolderEntry]) -> list[str]:
        """Usable files whose metadata row has no caption (none without metadata: captions are not expected)."""
        if self.metadata_file is None:
            return []
        return [entry.file_name for entry in entries if not entry.caption.strip()]

    @property
    def summary(self) -> dict:
        """Counts of usable videos and images, of skipped files per reason (with their names), of usable files
        without a caption, of media files the metadata does not list and of images left out by include_images."""
        return {
            "videos": sum(not entry.is_image for entry in self.entries),
            "images": sum(entry.is_image for entry in self.entries),
            "skipped": sum(len(names) for names in self.skipped.values()),
            "skipped_files": {reason: list(names) for reason, names in self.skipped.items() if names},
            "no_caption": len(self._without_caption(self.entries)),
            "unlisted": len(self.unlisted),
            "excluded_images": self.excluded_images,
            "buckets": {format_bucket(bucket): count for bucket, count in Counter(self.batch_keys).items()}
            if self.bucket_sizes
            else {},
        }

    def format_summary(self, entries: Sequence[VideoFolderEntry] | None = None) -> str:
        entries = self.entries if entries is None else entries
        videos = sum(not entry.is_image for entry in entries)
        source = self.metadata_file or "no metadata file: every caption empty"
        text = f"{str(self.data_dir)!r} ({source}): {videos} videos, {len(entries) - videos} images"
        skipped = {reason: names for reason, names in self.skipped.items() if names}
        if skipped:
            details = ", ".join(f"{len(names)} {reason.replace('_', ' ')}" for reason, names in skipped.items())
            text += f"; skipped {sum(len(names) for names in skipped.values())} ({details})"
        without_caption = self._without_caption(entries)
        if without_caption:
            text += f"; {len(without_caption)} without a {self.caption_column!r} caption (trained with an empty one)"
        if self.unlisted:
            text += (
                f"; {len(self.unlisted)} media files not in {self.metadata_file} (unused, e.g. {self.unlisted[0]!r})"
            )
        if self.excluded_images:
            text += f"; {self.excluded_images} images left out (include_images=False)"
        if self.bucket_sizes:
            counts = Counter(entry.bucket for entry in entries)
            text += "; buckets " + ", ".join(f"{format_bucket(b)}: {counts.get(b, 0)}" for b in self.bucket_sizes)
        return text

    def split(self, num_holdout: int, seed: int = 0) -> tuple[VideoFolderDataset, VideoFolderDataset]:
        """(train, held-out) views; the held-out view takes `num_holdout` entries drawn by `seed`."""
        if not 0 < num_holdout < len(self.entries):
            raise ValueError(f"num_holdout must be in [1, {len(self.entries) - 1}], got {num_holdout}")
        held = set(np.random.default_rng(seed).choice(len(self.entries), size=num_holdout, replace=False).tolist())
        return (
            self._view([entry for index, entry in enumerate(self.entries) if index not in held]),
            self._view([entry for index, entry in enumerate(self.entries) if index in held]),
        )

    def _view(self, entries: list[VideoFolderEntry]) -> VideoFolderDataset:
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.entries = entries
        view._build_groups()
        return view

    def set_epoch(self, epoch: int) -> None:
        """Epoch for `random_start` (the draw depends on seed, epoch and index only, not on workers)."""
        self.epoch = epoch

    # 2c. Loading
    def __len__(self) -> int:
        return len(self.entries)

    def frame_indices(self, index: int) -> list[int]:
        """Source frame indices of a video sample."""
        entry = self.entries[index]
        stride = self._stride(entry)
        start = 0
        if self.random_start:
            latest = entry.num_source_frames - self._needed_frames(entry)
            start = int(np.random.default_rng([self.seed, self.epoch, index]).integers(0, latest + 1))
        return [start + step * stride for step in range(self._frames(entry))]

    def load(self, index: int) -> torch.Tensor:
        """Sample `index` as (3, F, H, W) in [-1, 1]; raises if its file cannot be decoded."""
        entry = self.entries[index]
        frames = read_image(entry.path) if entry.is_image else read_video_frames(entry.path, self.frame_indices(index))
        height, width = entry.bucket[1:] if entry.bucket is not None else (self.height, self.width)
        return resize_and_center_crop(frames, height, width)

    def __getitem__(self, index: int) -> dict:
        group = self.groups[self.batch_keys[index]]
        position, failed = group.index(index), []
        for attempt in range(min(MAX_SUBSTITUTIONS, len(group))):
            candidate = group[(position + attempt) % len(group)]
            try:
                pixel_values = self.load(candidate)
            except Exception as error:  # never stop an epoch for one bad file
                logger.warning(f"Could not decode {self.entries[candidate].file_name} ({error}); using the next file")
                failed.append(self.entries[candidate].file_name)
                continue
            entry = self.entries[candidate]
            return {
                "pixel_values": pixel_values,
                "caption": entry.caption,
                "file_name": entry.file_name,
                "index": index,  # the slot this sample fills (the file may be a substitute: see `skipped`)
                "skipped": failed,
            }
        raise RuntimeError(f"{len(failed)} files in a row failed to decode near {self.entries[index].file_name}")


# 2d. Hugging Face datasets
def folder_from_hf_dataset(
    dataset, folder: str | os.PathLike, video_column: str = "video", caption_column: str = "text"
) -> Path:
    """Writes a `datasets.Dataset` as a video folder that `VideoFolderDataset` reads: `folder/metadata.jsonl`, one
    line per row, naming the row's file by its absolute path, or, for files held as bytes, a copy written to
    `folder/files/` (left alone when already there, so a rerun re-reads nothing).

    `video_column` holds a path (str), bytes, or a `datasets.Video` / `datasets.Image` value ({"path", "bytes"};
    not decoded here). A row without a file gets a line naming no file, so the dataset counts it as missing.
    """
    from datasets import Image as ImageFeature
    from datasets import Video as VideoFeature

    if video_column not in dataset.column_names:
        raise ValueError(f"--video_column {video_column!r} is not a column of the dataset ({dataset.column_names})")
    feature = dataset.features[video_column]
    if isinstance(feature, (ImageFeature, VideoFeature)):
        dataset = dataset.cast_column(video_column, type(feature)(decode=False))  # paths and bytes, not decoded
    default_suffix = ".png" if isinstance(feature, ImageFeature) else ".mp4"  # decoders read the content, not this
    folder = Path(folder)
    (folder / "files").mkdir(parents=True, exist_ok=True)
    lines = []
    for row_index, row in enumerate(dataset):
        value, file_name = row[video_column], f"row-{row_index:08d}-has-no-file"
        path, data = (value.get("path"), value.get("bytes")) if isinstance(value, dict) else (None, None)
        if isinstance(value, str):
            path = value
        elif isinstance(value, bytes):
            data = value
        if data is not None:
            suffix = Path(path).suffix.lower() if path and Path(path).suffix else default_suffix
            target = folder / "files" / f"{row_index:08d}{suffix}"
            if not (target.is_file() and target.read_bytes() == data):
                tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
            file_name = str(target.relative_to(folder))
        elif path:
            file_name = str(Path(path).resolve())  # `folder / absolute path` is the absolute path
        caption = row.get(caption_column)
        lines.append(
            json.dumps({"file_name": file_name, **({caption_column: caption} if caption is not None else {})})
        )
    tmp = folder / f".metadata.jsonl.{os.getpid()}.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, folder / "metadata.jsonl")
    return folder


# 3. Batching
class FrameCountBatchSampler(Sampler[list[int]]):
    """Batches of indices that share one frame count (or any key: the dataset's `batch_keys`, e.g. its buckets),
    shuffled by (seed, epoch).

    Videos and images (one frame) never share a batch. Incomplete batches are dropped when `drop_last` (the
    default for training: every batch then has `batch_size` samples, which accelerate's per-process sharding
    expects); kept otherwise.
    """

    def __init__(
        self,
        frame_counts: Sequence[int],
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.frame_counts, self.batch_size = list(frame_counts), batch_size
        self.shuffle, self.seed, self.drop_last, self.epoch = shuffle, seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _buckets(self) -> dict[int, list[int]]:
        buckets = defaultdict(list)
        for index, count in enumerate(self.frame_counts):
            buckets[count].append(index)
        return dict(sorted(buckets.items()))

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = []
        for indices in self._buckets().values():
            order = rng.permutation(indices).tolist() if self.shuffle else indices
            for start in range(0, len(order), self.batch_size):
                batch = order[start : start + self.batch_size]
                if len(batch) == self.batch_size or not self.drop_last:
                    batches.append(batch)
        if self.shuffle:
            batches = [batches[index] for index in rng.permutation(len(batches))]
        yield from batches

    def dropped_per_epoch(self) -> list[str]:
        """One line per frame-count group that leaves samples out of every epoch (incomplete batches dropped)."""
        lines = []
        for count, indices in self._buckets().items():
            left_out = len(indices) % self.batch_size if self.drop_last else 0
            if isinstance(count, tuple):
                kind = f"samples of bucket {format_bucket(count)}"
            else:
                kind = "images (1 frame)" if count == 1 else f"{count}-frame clips"
            if left_out == len(indices):
                lines.append(f"All {len(indices)} {kind} are unused: fewer than a batch of {self.batch_size}")
            elif left_out:
                lines.append(
                    f"Each epoch leaves out {left_out} of {len(indices)} {kind} (drawn anew each epoch): "
                    f"{len(indices)} is not a multiple of the batch size {self.batch_size}"
                )
        return lines

    def __len__(self) -> int:
        rounding = math.floor if self.drop_last else math.ceil
        return sum(rounding(len(indices) / self.batch_size) for indices in self._buckets().values())


def collate_videos(examples: Sequence[dict]) -> dict:
    """Stacks samples of one frame count: `pixel_values` (B, 3, F, H, W), `captions`, `file_names`, `skipped`."""
    counts = sorted({example["pixel_values"].shape[1] for example in examples})
    if len(counts) > 1:
        raise ValueError(f"A batch mixes frame counts {counts}; batch with FrameCountBatchSampler")
    return {
        "pixel_values": torch.stack([example["pixel_values"] for example in examples]),
        "captions": [example["caption"] for example in examples],
        "file_names": [example["file_name"] for example in examples],
        "indices": torch.tensor([example["index"] for example in examples]),
        "skipped": [name for example in examples for name in example["skipped"]],
    }


def make_dataloader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    drop_last: bool = True,
    num_workers: int = 0,
) -> torch.utils.data.DataLoader:
    """A DataLoader over `dataset` with `FrameCountBatchSampler` and `collate_videos` (pass it to accelerate's prepare).

    Its own generator keeps DataLoader iteration from drawing on the global torch RNG, so a resumed run sees the
    same random numbers as an uninterrupted one.
    """
    frame_counts = getattr(dataset, "batch_keys", None) or getattr(dataset, "frame_counts", None)
    frame_counts = frame_counts or [item["pixel_values"].shape[1] for item in dataset]
    batch_sampler = FrameCountBatchSampler(frame_counts, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    if len(batch_sampler) == 0:
        raise ValueError(
            f"No full batch of {batch_size}: the frame-count groups have {sorted(Counter(frame_counts).items())} samples"
        )
    if drop_last:
        for line in batch_sampler.dropped_per_epoch():
            logger.warning(line)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=collate_videos,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


# 4. Command-line flags both scripts share
def add_data_arguments(parser) -> None:
    """Adds the data flags (folder, clip size and sampling, loader workers) to an argparse parser."""
    group = parser.add_argument_group("data")
    texts = (  # (flag, default, help)
        ("data_dir", None, "Video folder: videos and images with metadata.jsonl lines {'file_name': ..., 'text': ...} "
         "or a metadata.csv with file_name and caption columns."),
        ("dataset_name", None, "Instead of --data_dir: a Hugging Face dataset, anything `datasets.load_dataset` takes "
         "(a Hub id or a local folder of parquet/arrow/csv/jsonl files), with a video (or image) column of paths or "
         "bytes; needs the `datasets` package. Written as a video folder under output_dir/hf_dataset/."),
        ("dataset_config_name", None, "The config (subset) of --dataset_name."),
        ("dataset_split", "train", "The split of --dataset_name."),
        ("video_column", "video", "The --dataset_name column holding each row's video or image."),
        ("caption_column", "text", "Metadata key (jsonl) or column (csv) that holds the caption."),
        ("buckets", None, "Comma-separated FRAMESxHEIGHTxWIDTH sample sizes, e.g. 1x256x256,17x256x256,33x192x320: "
         "each file goes to the bucket that keeps most of it (resize, then center crop), batches hold one bucket, "
         "images go to 1-frame buckets; instead of one --num_frames x --height x --width (which stay the validation "
         "size)."),
    )  # fmt: skip
    numbers = (  # (flag, type, default, help)
        ("num_frames", int, 17, "Frames per training clip; 1 + k * (VAE temporal compression)."),
        ("height", int, 64, "Clip height after resize and center crop."),
        ("width", int, 64, "Clip width after resize and center crop."),
        ("frame_stride", int, 1, "Take every n-th source frame."),
        ("target_fps", float, None, "Instead of --frame_stride: per video, the stride that brings its frame rate "
         "nearest this value."),
        ("max_train_samples", int, None, "Use only the first n usable files (debugging)."),
        ("dataloader_num_workers", int, 0, "DataLoader worker processes (0: decode in the training process)."),
    )  # fmt: skip
    switches = (  # (flag, help)
        ("random_start", "Start each clip at a frame drawn from (seed, epoch, index) instead of the first frame."),
        ("no_images", "Ignore image files (otherwise one-frame samples)."),
    )
    for name, default, text in texts:
        group.add_argument(f"--{name}", default=default, help=text)
    for name, kind, default, text in numbers:
        group.add_argument(f"--{name}", type=kind, default=default, help=text)
    for name, text in switches:
        group.add_argument(f"--{name}", action="store_true", help=text)


def check_data_arguments(args) -> None:
    """ValueError naming the flag for a bad value of the flags of `add_data_arguments` (before any model loads)."""
    sources = [getattr(args, name, None) for name in ("data_dir", "dataset_name", "train_shards")]
    if sum(source is not None for source in sources) != 1:
        flags = "--data_dir, --dataset_name" + (" and --train_shards" if hasattr(args, "train_shards") else "")
        raise ValueError(f"pass exactly one of {flags}")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise ValueError(f"--data_dir {args.data_dir!r} is not a folder")
    for name in ("num_frames", "height", "width", "frame_stride", "max_train_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")
    if args.target_fps is not None and not 0 < args.target_fps < float("inf"):
        raise ValueError(f"--target_fps must be a positive number, got {args.target_fps}")
    if isinstance(args.buckets, str):
        args.buckets = parse_buckets(args.buckets)
    if args.dataloader_num_workers < 0:
        raise ValueError(f"--dataloader_num_workers must be 0 or more, got {args.dataloader_num_workers}")


def dataset_from_args(args, data_dir: str | os.PathLike | None = None) -> VideoFolderDataset:
    """A `VideoFolderDataset` built from the flags of `add_data_arguments`, indexed once: the main process reads the
    files first and keeps what it read in output_dir/data_index/, where the other processes (and reruns) find it."""
    from accelerate import PartialState

    if data_dir is None and getattr(args, "dataset_name", None):
        with PartialState().main_process_first():
            data_dir = _folder_from_dataset_args(args)
    data_dir = data_dir or args.data_dir
    index_cache = None
    if getattr(args, "output_dir", None):
        digest = hashlib.sha1(str(Path(data_dir).resolve()).encode()).hexdigest()[:16]
        index_cache = Path(args.output_dir) / "data_index" / f"{digest}.json"
    # The flags that share their name with a VideoFolderDataset argument.
    names = ("num_frames", "height", "width", "frame_stride", "target_fps", "random_start", "seed", "caption_column")
    with PartialState().main_process_first():
        return VideoFolderDataset(
            data_dir,
            **{name: getattr(args, name) for name in names},
            include_images=not args.no_images,
            max_samples=args.max_train_samples,
            index_cache=index_cache,
            buckets=getattr(args, "buckets", None),
        )


def _folder_from_dataset_args(args) -> Path:
    try:
        import datasets
    except ImportError as error:
        raise ValueError("--dataset_name needs the `datasets` package: pip install datasets") from error
    dataset = datasets.load_dataset(args.dataset_name, args.dataset_config_name, split=args.dataset_split)
    source = json.dumps([args.dataset_name, args.dataset_config_name, args.dataset_split, dataset._fingerprint])
    folder = Path(args.output_dir) / "hf_dataset" / hashlib.sha1(source.encode()).hexdigest()[:16]
    return folder_from_hf_dataset(dataset, folder, args.video_column, args.caption_column)
