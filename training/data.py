"""The video-folder dataset both training scripts share: captioned clips and images as (C, F, H, W) tensors in [-1, 1].

A data folder holds video files (mp4, webm, mov, mkv, avi, gif) and images (png, jpg, jpeg, webp, bmp), with a
`metadata.jsonl` whose lines are `{"file_name": "clip.mp4", "text": "a caption"}` (the diffusers/datasets
image-folder convention; `file_name` is relative to the folder). Without `metadata.jsonl` every media file under
the folder is used with an empty caption (enough for the VAE).

Each video is sampled to `num_frames` frames, every `frame_stride`-th source frame (or the stride that brings its
frame rate nearest `target_fps`), from the first frame or from a start drawn from (seed, epoch, index); resized so
that it covers `height` x `width` and center-cropped. An image is a one-frame video, so images and videos train
together (the latent of one frame is one layer of patches).

Batches hold one frame count: `FrameCountBatchSampler` groups indices by frame count (num_frames for videos, 1 for
images) and `collate_videos` refuses mixed counts. Sharding across processes is accelerate's: `prepare` wraps the
batch sampler so that each process takes every n-th batch.

Bad files never stop an epoch. At index time every file is opened and its frame count read (decoding to count
where the container does not say); unreadable, too-short, missing and unsupported files are skipped with a
warning and counted in `summary`. A file that fails later, at decode time, is replaced by the next good file
with the same frame count and reported in the batch's `skipped` list.

Decoding uses PyAV (fast seeking and webm/mov/gif support; the one video dependency of training), with imageio's
ffmpeg reader as the fallback.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".gif")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
METADATA_FILE = "metadata.jsonl"
SKIP_REASONS = ("missing", "unsupported", "unreadable", "too_short")
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


# 1. Decoding
def _open_video_stream(container):
    if not container.streams.video:
        raise ValueError("no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    return stream


def probe_video(path: str | os.PathLike, min_frames: int) -> tuple[int, float | None]:
    """(frame count, fps) of a video; decodes to count, up to `min_frames`, when the container gives no count.

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
        decoded = 0
        for _ in container.decode(stream):
            decoded += 1
            if decoded >= (1 if count else min_frames):
                break
        if decoded == 0:
            raise ValueError("no decodable frame")
        return (count or decoded), fps


def _probe_imageio(path, min_frames):
    reader = _imageio_reader(path)
    try:
        fps = reader.get_meta_data().get("fps")
        decoded = 0
        for _ in reader:  # count by decoding: the ffmpeg reader's nframes is unreliable (inf for mp4)
            decoded += 1
            if decoded >= min_frames:
                break
        if decoded == 0:
            raise ValueError("no decodable frame")
        return decoded, float(fps) if fps else None
    finally:
        reader.close()


def _imageio_reader(path):
    import imageio.v2 as imageio

    return imageio.get_reader(str(path), format=None if str(path).lower().endswith(".gif") else "ffmpeg")


def read_video_frames(path: str | os.PathLike, frame_indices: Sequence[int]) -> np.ndarray:
    """The given frames of a video as uint8 RGB (F, H, W, 3); PyAV first, imageio's ffmpeg reader as fallback."""
    try:
        return _read_frames_pyav(path, frame_indices)
    except Exception as pyav_error:  # any decoder failure: try the other decoder, then report both
        try:
            return _read_frames_imageio(path, frame_indices)
        except Exception as imageio_error:
            raise ValueError(f"PyAV: {pyav_error}; imageio: {imageio_error}") from imageio_error


def _collect(frames: Iterator[np.ndarray], frame_indices: Sequence[int]) -> np.ndarray:
    wanted, last, found = set(frame_indices), max(frame_indices), {}
    for index, frame in enumerate(frames):
        if index in wanted:
            found[index] = frame
        if index >= last:
            break
    if len(found) < len(wanted):
        raise ValueError(f"needs frame {last} but has {len(found) and max(found) + 1} frames")
    return np.stack([found[index] for index in frame_indices])  # (F, H, W, 3)


def _read_frames_pyav(path, frame_indices):
    import av

    with av.open(str(path)) as container:
        stream = _open_video_stream(container)
        frames = (frame.to_ndarray(format="rgb24") for frame in container.decode(stream))
        return _collect(frames, frame_indices)


def _read_frames_imageio(path, frame_indices):
    reader = _imageio_reader(path)
    try:  # iterate: the ffmpeg reader reports nframes = inf for mp4
        frames = (np.asarray(frame)[..., :3] for frame in reader)
        return _collect(frames, frame_indices)
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
        caption_column (`str`): the metadata key holding the caption.
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
        self.data_dir = Path(data_dir)
        if not self.data_dir.is_dir():
            raise ValueError(f"Data folder {str(self.data_dir)!r} does not exist")
        self.num_frames, self.height, self.width = num_frames, height, width
        self.frame_stride, self.target_fps = frame_stride, target_fps
        self.random_start, self.seed, self.epoch = random_start, seed, 0
        self.include_images, self.caption_column = include_images, caption_column
        self.skipped: dict[str, list[str]] = {reason: [] for reason in SKIP_REASONS}
        self.entries = self._index(max_samples)
        self._build_buckets()
        logger.info(self.format_summary())

    # 2a. Indexing
    def _listed_files(self) -> list[tuple[str, str]]:
        """(file_name, caption) pairs from metadata.jsonl, or every media file with an empty caption."""
        metadata = self.data_dir / METADATA_FILE
        if not metadata.exists():
            names = sorted(
                str(path.relative_to(self.data_dir))
                for path in self.data_dir.rglob("*")
                if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS
            )
            return [(name, "") for name in names]
        rows = []
        with open(metadata) as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{metadata}:{line_number} is not JSON: {error}") from error
                if not isinstance(row, dict) or "file_name" not in row:
                    raise ValueError(f"{metadata}:{line_number} has no 'file_name'")
                rows.append((str(row["file_name"]), str(row.get(self.caption_column) or "")))
        return rows

    def _skip(self, reason: str, file_name: str, detail: str = "") -> None:
        self.skipped[reason].append(file_name)
        detail = " ".join(detail.split())[:300]  # ffmpeg errors can carry its whole banner
        logger.warning(f"Skipping {file_name} ({reason.replace('_', ' ')}{': ' + detail if detail else ''})")

    def _index(self, max_samples: int | None) -> list[VideoFolderEntry]:
        entries = []
        for file_name, caption in self._listed_files():
            if max_samples is not None and len(entries) >= max_samples:
                break
            path = self.data_dir / file_name
            suffix = path.suffix.lower()
            if not path.is_file():
                self._skip("missing", file_name)
            elif suffix in IMAGE_EXTENSIONS:
                if not self.include_images:
                    continue
                try:
                    from PIL import Image

                    with Image.open(path) as image:
                        image.verify()  # reads the whole file: truncated and garbage files fail here
                except Exception as error:  # any reason a file cannot be read is a skip
                    self._skip("unreadable", file_name, str(error))
                    continue
                entries.append(VideoFolderEntry(str(path), file_name, caption, True, 1, None))
            elif suffix in VIDEO_EXTENSIONS:
                try:
                    count, fps = probe_video(path, self._needed_frames(None))
                except Exception as error:
                    self._skip("unreadable", file_name, str(error))
                    continue
                entry = VideoFolderEntry(str(path), file_name, caption, False, count, fps)
                if count < self._needed_frames(entry):
                    self._skip("too_short", file_name, f"{count} frames, needs {self._needed_frames(entry)}")
                    continue
                entries.append(entry)
            else:
                self._skip("unsupported", file_name, f"extension {suffix!r}")
        if not entries:
            raise ValueError(f"No usable file in {str(self.data_dir)!r}: {self.format_summary(entries)}")
        return entries

    def _stride(self, entry: VideoFolderEntry | None) -> int:
        if self.target_fps is None or entry is None or not entry.fps:
            return self.frame_stride
        return max(1, round(entry.fps / self.target_fps))

    def _needed_frames(self, entry: VideoFolderEntry | None) -> int:
        """Source frames a video needs: (num_frames - 1) * stride + 1."""
        return (self.num_frames - 1) * self._stride(entry) + 1

    def _build_buckets(self) -> None:
        self.buckets: dict[int, list[int]] = defaultdict(list)
        for index, count in enumerate(self.frame_counts):
            self.buckets[count].append(index)

    # 2b. Views and summary
    @property
    def frame_counts(self) -> list[int]:
        """Frames of each sample: num_frames for videos, 1 for images."""
        return [1 if entry.is_image else self.num_frames for entry in self.entries]

    @property
    def captions(self) -> list[str]:
        return [entry.caption for entry in self.entries]

    @property
    def summary(self) -> dict:
        """Counts of usable videos and images and of skipped files per reason (with their names)."""
        return {
            "videos": sum(not entry.is_image for entry in self.entries),
            "images": sum(entry.is_image for entry in self.entries),
            "skipped": sum(len(names) for names in self.skipped.values()),
            "skipped_files": {reason: list(names) for reason, names in self.skipped.items() if names},
        }

    def format_summary(self, entries: Sequence[VideoFolderEntry] | None = None) -> str:
        entries = self.entries if entries is None else entries
        videos = sum(not entry.is_image for entry in entries)
        text = f"{str(self.data_dir)!r}: {videos} videos, {len(entries) - videos} images"
        skipped = {reason: names for reason, names in self.skipped.items() if names}
        if skipped:
            details = ", ".join(f"{len(names)} {reason.replace('_', ' ')}" for reason, names in skipped.items())
            text += f"; skipped {sum(len(names) for names in skipped.values())} ({details})"
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
        view._build_buckets()
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
        return [start + step * stride for step in range(self.num_frames)]

    def load(self, index: int) -> torch.Tensor:
        """Sample `index` as (3, F, H, W) in [-1, 1]; raises if its file cannot be decoded."""
        entry = self.entries[index]
        frames = read_image(entry.path) if entry.is_image else read_video_frames(entry.path, self.frame_indices(index))
        return resize_and_center_crop(frames, self.height, self.width)

    def __getitem__(self, index: int) -> dict:
        bucket = self.buckets[self.frame_counts[index]]
        position, failed = bucket.index(index), []
        for attempt in range(min(MAX_SUBSTITUTIONS, len(bucket))):
            candidate = bucket[(position + attempt) % len(bucket)]
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


# 3. Batching
class FrameCountBatchSampler(Sampler[list[int]]):
    """Batches of indices that share one frame count, shuffled by (seed, epoch).

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
    frame_counts = getattr(dataset, "frame_counts", None) or [item["pixel_values"].shape[1] for item in dataset]
    batch_sampler = FrameCountBatchSampler(frame_counts, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last)
    if len(batch_sampler) == 0:
        raise ValueError(
            f"No full batch of {batch_size}: the frame-count groups have {sorted(Counter(frame_counts).items())} samples"
        )
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
    group.add_argument(
        "--data_dir",
        required=True,
        help="Video folder: videos and images with metadata.jsonl lines {'file_name': ..., 'text': ...}.",
    )
    group.add_argument("--caption_column", default="text", help="Metadata key that holds the caption.")
    group.add_argument(
        "--num_frames", type=int, default=17, help="Frames per training clip; 1 + k * (VAE temporal compression)."
    )
    group.add_argument("--height", type=int, default=64, help="Clip height after resize and center crop.")
    group.add_argument("--width", type=int, default=64, help="Clip width after resize and center crop.")
    group.add_argument("--frame_stride", type=int, default=1, help="Take every n-th source frame.")
    group.add_argument(
        "--target_fps",
        type=float,
        default=None,
        help="Instead of --frame_stride: per video, the stride that brings its frame rate nearest this value.",
    )
    group.add_argument(
        "--random_start",
        action="store_true",
        help="Start each clip at a frame drawn from (seed, epoch, index) instead of the first frame.",
    )
    group.add_argument("--no_images", action="store_true", help="Ignore image files (otherwise one-frame samples).")
    group.add_argument(
        "--max_train_samples", type=int, default=None, help="Use only the first n usable files (debugging)."
    )
    group.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=0,
        help="DataLoader worker processes (0: decode in the training process).",
    )


def check_data_arguments(args) -> None:
    """ValueError naming the flag for a bad value of the flags of `add_data_arguments` (before any model loads)."""
    if not Path(args.data_dir).is_dir():
        raise ValueError(f"--data_dir {args.data_dir!r} is not a folder")
    for name in ("num_frames", "height", "width", "frame_stride", "max_train_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")
    if args.target_fps is not None and not 0 < args.target_fps < float("inf"):
        raise ValueError(f"--target_fps must be a positive number, got {args.target_fps}")
    if args.dataloader_num_workers < 0:
        raise ValueError(f"--dataloader_num_workers must be 0 or more, got {args.dataloader_num_workers}")


def dataset_from_args(args, data_dir: str | os.PathLike | None = None) -> VideoFolderDataset:
    """A `VideoFolderDataset` built from the flags of `add_data_arguments`."""
    return VideoFolderDataset(
        data_dir or args.data_dir,
        num_frames=args.num_frames,
        height=args.height,
        width=args.width,
        frame_stride=args.frame_stride,
        target_fps=args.target_fps,
        random_start=args.random_start,
        seed=args.seed,
        include_images=not args.no_images,
        max_samples=args.max_train_samples,
        caption_column=args.caption_column,
    )
