"""Data larger than the disk: webdataset-style tar shards read as an endless, resumable stream of batches.

A shard is a tar file whose members are grouped by key (the name up to its first dot), in the order written:
`000001.mp4` + `000001.txt` (the caption, UTF-8) or `000001.json` (the caption under `caption_column`); any video or
image extension of `training.data`. Shards are local paths or http(s) URLs, read front to back without seeking, so
nothing is stored. `expand_shards("data/{00000..00099}.tar")` lists them.

Order and resumption: epoch e visits the shards in a permutation drawn from (seed, e); process r of n reads every
n-th shard of it; epochs follow one another without end (the run's length is `--max_train_steps`). Batches are
formed from what the tar says, before any decoding (one frame count per batch: videos `num_frames`, images 1), so
the first k batches of a process can be skipped without decoding them: `start_batch=k` resumes mid-epoch exactly.
A sample that fails to decode (or is too short) is replaced by another sample of its batch and named in the batch's
`skipped` list, so every process keeps the same number of steps; samples without media or caption are counted, and
each process logs its counts when it finishes an epoch.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import re
import tarfile
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from training.data import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, read_video_frames, resize_and_center_crop

logger = logging.getLogger(__name__)


def expand_shards(spec: str) -> list[str]:
    """Comma-separated shard paths or URLs; `{000..099}` ranges (zero-padded as written) and `*` globs expand."""
    shards = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        ranges = re.search(r"\{(\d+)\.\.(\d+)\}", item)
        if ranges:
            first, last = ranges.groups()
            names = [
                item[: ranges.start()] + str(i).zfill(len(first)) + item[ranges.end() :]
                for i in range(int(first), int(last) + 1)
            ]
            shards += [shard for name in names for shard in expand_shards(name)]
        elif "*" in item and "://" not in item:
            matches = sorted(glob.glob(item))
            if not matches:
                raise ValueError(f"--train_shards: {item!r} matches no file")
            shards += matches
        else:
            shards.append(item)
    if not shards:
        raise ValueError(f"--train_shards {spec!r} names no shard")
    return shards


def _open_shard(shard: str):
    if shard.startswith(("http://", "https://")):
        return urllib.request.urlopen(shard)  # noqa: S310 (the user's own shard URLs)
    return open(shard, "rb")


def read_shard(shard: str, caption_column: str = "text") -> Iterator[dict]:
    """The samples of one tar shard, in order: {"key", "media_name", "media" (bytes or None), "caption" (or None)}."""
    with _open_shard(shard) as handle, tarfile.open(fileobj=handle, mode="r|*") as archive:
        sample = None
        for member in archive:
            if not member.isfile():
                continue
            directory, _, name = member.name.rpartition("/")
            key, _, extension = name.partition(".")
            key = f"{directory}/{key}" if directory else key
            if sample is not None and sample["key"] != key:
                yield sample
                sample = None
            if sample is None:
                sample = {"key": key, "media_name": None, "media": None, "caption": None}
            suffix = "." + extension.lower().rsplit(".", 1)[-1]
            if suffix in VIDEO_EXTENSIONS + IMAGE_EXTENSIONS and sample["media"] is None:
                sample["media_name"], sample["media"] = name, archive.extractfile(member).read()
            elif suffix == ".txt":
                sample["caption"] = archive.extractfile(member).read().decode("utf-8").strip()
            elif suffix == ".json":
                value = json.loads(archive.extractfile(member).read()).get(caption_column)
                sample["caption"] = None if value is None else str(value)
        if sample is not None:
            yield sample


class TarShardStream(torch.utils.data.IterableDataset):
    """Batches `{"pixel_values": (B, 3, F, H, W) in [-1, 1], "captions", "file_names", "skipped"}` from tar shards
    (see the module docstring); use with `DataLoader(stream, batch_size=None)`.

    Args:
        shards (`list[str]`): shard paths or URLs (`expand_shards`).
        batch_size (`int`): samples per batch (per process).
        num_frames, height, width (`int`): video sample size; images give one frame.
        frame_stride (`int`): take every n-th source frame, from the first.
        caption_column (`str`): the key of a `.json` member that holds the caption.
        seed (`int`): seed of the shard order.
        process_index, num_processes (`int`): this process's share: every `num_processes`-th shard.
        start_batch (`int`): batches to skip (without decoding) before the first one yielded: resumption.
        include_images (`bool`): keep image samples (one-frame batches).
    """

    def __init__(
        self,
        shards: Sequence[str],
        batch_size: int,
        num_frames: int,
        height: int,
        width: int,
        frame_stride: int = 1,
        caption_column: str = "text",
        seed: int = 0,
        process_index: int = 0,
        num_processes: int = 1,
        start_batch: int = 0,
        include_images: bool = True,
    ):
        if len(shards) < num_processes:
            raise ValueError(f"--train_shards has {len(shards)} shards, fewer than the {num_processes} processes")
        self.shards, self.batch_size = list(shards), batch_size
        self.num_frames, self.height, self.width, self.frame_stride = num_frames, height, width, frame_stride
        self.caption_column, self.seed, self.include_images = caption_column, seed, include_images
        self.process_index, self.num_processes, self.start_batch = process_index, num_processes, start_batch

    def _shards_of_epoch(self, epoch: int) -> list[str]:
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.shards))
        return [self.shards[index] for index in order[self.process_index :: self.num_processes]]

    def __iter__(self) -> Iterator[dict]:
        buffers: dict[int, list[dict]] = {}
        made, epoch = 0, 0
        while True:
            counts = Counter()
            for shard in self._shards_of_epoch(epoch):
                for sample in read_shard(shard, self.caption_column):
                    counts["samples"] += 1
                    if sample["media"] is None:
                        counts["no_media"] += 1
                        continue
                    is_image = sample["media_name"].lower().endswith(IMAGE_EXTENSIONS)
                    if is_image and not self.include_images:
                        counts["images_left_out"] += 1
                        continue
                    counts["no_caption"] += not sample["caption"]
                    buffer = buffers.setdefault(1 if is_image else self.num_frames, [])
                    buffer.append(sample)
                    if len(buffer) == self.batch_size:
                        if made >= self.start_batch:
                            yield self._decode_batch(buffer)
                        made += 1
                        buffers[1 if is_image else self.num_frames] = []
            if counts["samples"] == 0:
                raise ValueError(f"The shards of process {self.process_index} in epoch {epoch} hold no sample")
            logger.info(f"Process {self.process_index}, epoch {epoch} of the shards: {dict(counts)}")
            epoch += 1

    def _decode(self, sample: dict) -> torch.Tensor:
        if sample["media_name"].lower().endswith(IMAGE_EXTENSIONS):
            from PIL import Image

            with Image.open(io.BytesIO(sample["media"])) as image:
                frames = np.array(image.convert("RGB"))[None]
        else:
            indices = [step * self.frame_stride for step in range(self.num_frames)]
            frames = read_video_frames(io.BytesIO(sample["media"]), indices)
        return resize_and_center_crop(frames, self.height, self.width)

    def _decode_batch(self, samples: list[dict]) -> dict:
        decoded, skipped = [], []
        for sample in samples:
            name = f"{sample['key']} ({sample['media_name']})"
            try:
                decoded.append((sample, self._decode(sample)))
            except Exception as error:  # never stop a run for one bad sample
                logger.warning(f"Could not decode {name} ({' '.join(str(error).split())[:200]}); using another sample")
                skipped.append(name)
        if not decoded:
            raise RuntimeError(f"Every sample of a batch failed to decode: {skipped}")
        decoded += [decoded[index % len(decoded)] for index in range(len(samples) - len(decoded))]
        return {
            "pixel_values": torch.stack([pixels for _, pixels in decoded]),
            "captions": [sample["caption"] or "" for sample, _ in decoded],
            "file_names": [sample["key"] for sample, _ in decoded],
            "skipped": skipped,
        }
