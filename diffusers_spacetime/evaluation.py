"""Temporal-coherence metrics for generated videos of one colored object on a neutral scene: the shapes world.

Per-frame generation flickers where spacetime generation stays coherent; these functions measure how much, on
videos of the shapes world whose tables live here (`SHAPES_PALETTE`, `SHAPE_FILL_RATIOS`, `DIRECTION_VECTORS`): one
saturated object (circle, square or triangle) on a gray-scale background, possibly behind a gray wall. The synthetic
training data (`training/make_shapes_dataset.py`) draws from the same tables. The detector needs no learning: the
scene is neutral (R = G = B) and the object is saturated, so a pixel's saturation separates object from scene, and
the object's geometry (fill ratio of its bounding box) names its shape.

Metrics, per video:
    adherence      color, shape and direction match the prompt's (booleans; averaged to % over a set)
    jitter         mean deviation (px) of the object's center from the midpoint of its neighbours' centers,
                   i.e. half the second difference of the path: 0 for uniform motion, large when it jumps
    color_flicker  mean frame-to-frame change of the object's mean color (RGB in [0, 1], L2)
    size_flicker   mean frame-to-frame relative change of the object's area
    background_flicker  mean frame-to-frame absolute change of the pixels that are background in both frames
    persistence    share of the frames in which the object is found (where it should be visible)
    reemerged      for occluder prompts: the object is seen before and after the wall with the same color and shape,
                   and it came out on the far side (a consistent trajectory)
Plus `psnr`, the reconstruction metric of a VAE.

Frames are `(F, H, W, 3)` arrays: floats in [0, 1] (the pipelines' `output_type="np"`) or uint8.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

# Saturated colors, far apart in RGB, so that nearest-palette classification of a pixel is unambiguous; every
# background and the wall are neutral gray (R = G = B), so saturation alone separates the object from the rest.
# A mutable dict: `make_shapes_dataset.add_color` extends it for the process (a LoRA's new color word).
SHAPES_PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (150, 60, 190),
    "cyan": (30, 180, 200),
}
# Fill ratio of the bounding box for each shape: a disc covers pi/4 of its square, an isosceles triangle half.
SHAPE_FILL_RATIOS = {"circle": np.pi / 4, "square": 1.0, "triangle": 0.5}
# Direction -> unit vector (dx, dy) in image coordinates (y down).
DIRECTION_VECTORS = {
    "left_to_right": (1, 0),
    "right_to_left": (-1, 0),
    "top_to_bottom": (0, 1),
    "bottom_to_top": (0, -1),
}


@dataclasses.dataclass
class ObjectTrack:
    """Per-frame detections of the saturated object in a clip (F frames)."""

    present: np.ndarray  # (F,) bool
    # (F, 2) area centroid x, y in px (NaN where absent); pixel (i, j) has its center at (j + 0.5, i + 0.5)
    center: np.ndarray
    area: np.ndarray  # (F,) px
    color: np.ndarray  # (F, 3) mean RGB in [0, 1] of the object's core pixels (NaN where absent)
    bbox: np.ndarray  # (F, 4) x0, y0, x1, y1 in px of the thresholded mask (NaN where absent)
    extent: np.ndarray  # (F, 2) sub-pixel width and height: per column (row) the most the object covers, summed
    object_mask: np.ndarray  # (F, H, W) bool

    @property
    def num_frames(self) -> int:
        return len(self.present)


def _numpy(value) -> np.ndarray:
    """An array or a torch tensor (any device, any float dtype) as a numpy array."""
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().float().numpy()
    return np.asarray(value)


def _as_float_frames(frames) -> np.ndarray:
    """Validates and converts frames to float64 (F, H, W, 3) in [0, 1]."""
    frames = _numpy(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"`frames` must have shape (F, H, W, 3), got {tuple(frames.shape)}")
    if frames.dtype == np.uint8:
        return frames.astype(np.float64) / 255.0
    if not np.issubdtype(frames.dtype, np.floating):
        raise TypeError(f"`frames` must be uint8 or floating point, got {frames.dtype}")
    return np.clip(frames.astype(np.float64), 0.0, 1.0)


def track_object(frames, saturation_threshold: float = 0.2, min_area: int = 4) -> ObjectTrack:
    """Finds the one saturated object in every frame.

    Args:
        frames: `(F, H, W, 3)` video, floats in [0, 1] or uint8.
        saturation_threshold: a pixel is object when max(RGB) - min(RGB) exceeds this (scene pixels are gray: 0).
        min_area: fewer object pixels than this counts as "not present" (a few stray saturated pixels are noise).
    """
    frames = _as_float_frames(frames)
    num_frames, height, width, _ = frames.shape
    saturation = frames.max(axis=-1) - frames.min(axis=-1)  # (F, H, W)
    # Anti-aliased edges blend object and scene: count a pixel by the share of it the object covers, estimated
    # from its saturation relative to the object's core (most saturated) pixels.
    mask = saturation > saturation_threshold  # (F, H, W)
    rows, cols = np.mgrid[0:height, 0:width]
    present = np.zeros(num_frames, dtype=bool)
    center = np.full((num_frames, 2), np.nan)
    area = np.zeros(num_frames)
    color = np.full((num_frames, 3), np.nan)
    bbox = np.full((num_frames, 4), np.nan)
    extent = np.full((num_frames, 2), np.nan)
    for index in range(num_frames):
        frame_mask = mask[index]
        count = int(frame_mask.sum())
        if count < min_area:
            continue
        core_level = np.percentile(saturation[index][frame_mask], 90)
        coverage = np.clip(saturation[index] / max(core_level, 1e-6), 0.0, 1.0) * frame_mask  # (H, W) in [0, 1]
        total = coverage.sum()
        present[index] = True
        area[index] = total
        center[index] = ((cols + 0.5) * coverage).sum() / total, ((rows + 0.5) * coverage).sum() / total
        core = frame_mask & (saturation[index] >= core_level * 0.8)
        color[index] = frames[index][core].mean(axis=0)
        ys, xs = np.nonzero(frame_mask)
        bbox[index] = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        # Anti-aliased edge columns count by how much of them the object covers, so a 12 px square measures 12.
        extent[index] = coverage.max(axis=0).sum(), coverage.max(axis=1).sum()
    return ObjectTrack(
        present=present, center=center, area=area, color=color, bbox=bbox, extent=extent, object_mask=mask
    )


def classify_color(rgb: Sequence[float], palette: Mapping[str, Sequence[int]] | None = None) -> str:
    """The palette name (default: `SHAPES_PALETTE`) nearest to `rgb` (in [0, 1]) by hue-carrying chroma: the color
    minus its own gray level."""
    rgb = np.asarray(rgb, dtype=np.float64)
    best, best_distance = None, np.inf
    for name, reference in (SHAPES_PALETTE if palette is None else palette).items():
        reference = np.asarray(reference, dtype=np.float64) / 255.0
        # Compare chroma (color minus mean): robust to the lighter/darker cast a decoder may add.
        distance = np.linalg.norm((rgb - rgb.mean()) - (reference - reference.mean()))
        if distance < best_distance:
            best, best_distance = name, distance
    return best


def _full_view_frames(track: ObjectTrack) -> np.ndarray:
    """Indices of frames where the object is seen whole: its area is within 85% of the largest area in the clip."""
    if not track.present.any():
        return np.zeros(0, dtype=int)
    return np.nonzero(track.present & (track.area >= 0.85 * track.area.max()))[0]


def classify_shape(track: ObjectTrack) -> str | None:
    """Circle, square or triangle from the median fill ratio (area / width x height) over fully visible frames."""
    indices = _full_view_frames(track)
    if len(indices) == 0:
        return None
    box_areas = track.extent[indices, 0] * track.extent[indices, 1]
    fill = float(np.median(track.area[indices] / np.maximum(box_areas, 1.0)))
    return min(SHAPE_FILL_RATIOS, key=lambda name: abs(SHAPE_FILL_RATIOS[name] - fill))


def classify_direction(track: ObjectTrack) -> str | None:
    """The initial motion direction: where the object first moves clearly away from its first sighting.

    "Clearly" is a quarter of the farthest it ever gets from there (at least 1.5 px). The first leg, not the net
    displacement, keeps the answer right for objects that bounce back past their start.
    """
    indices = np.nonzero(track.present)[0]
    if len(indices) < 2:
        return None
    offsets = track.center[indices] - track.center[indices[0]]  # (n, 2)
    distances = np.linalg.norm(offsets, axis=1)
    threshold = max(1.5, 0.25 * distances.max())
    if distances.max() < threshold:  # moved less than 1.5 px: no direction
        return None
    first_leg = offsets[np.argmax(distances >= threshold)]
    return max(DIRECTION_VECTORS, key=lambda name: float(np.dot(DIRECTION_VECTORS[name], first_leg)))


def trajectory_jitter(track: ObjectTrack) -> float:
    """Mean distance (px) of each center from the midpoint of its two neighbours' (triples of consecutive sightings).

    Uniform motion scores 0; a bounce adds one turning point; per-frame generation that places the object anew in
    every frame scores high. NaN when no three consecutive frames hold the object.
    """
    present = track.present
    triples = present[:-2] & present[1:-1] & present[2:]
    if not triples.any():
        return float("nan")
    center = track.center
    deviation = center[1:-1] - 0.5 * (center[:-2] + center[2:])  # (F-2, 2)
    return float(np.linalg.norm(deviation[triples], axis=1).mean())


def appearance_flicker(frames, track: ObjectTrack) -> dict[str, float]:
    """Frame-to-frame change of the object's color and size, and of the background."""
    frames = _as_float_frames(frames)
    present = track.present
    pairs = present[:-1] & present[1:]
    if pairs.any():
        color_change = np.linalg.norm(track.color[1:] - track.color[:-1], axis=1)[pairs]
        mean_area = np.maximum(0.5 * (track.area[1:] + track.area[:-1]), 1.0)
        size_change = (np.abs(track.area[1:] - track.area[:-1]) / mean_area)[pairs]
        color_flicker, size_flicker = float(color_change.mean()), float(size_change.mean())
    else:
        color_flicker = size_flicker = float("nan")
    # Background: pixels that are scene in both frames, away from the object (one pixel of margin for its edges).
    scene = ~_dilate(track.object_mask)  # (F, H, W)
    both = scene[1:] & scene[:-1]
    change = np.abs(frames[1:] - frames[:-1]).mean(axis=-1)  # (F-1, H, W)
    background_flicker = float(change[both].mean()) if both.any() else float("nan")
    return {"color_flicker": color_flicker, "size_flicker": size_flicker, "background_flicker": background_flicker}


def _dilate(mask: np.ndarray) -> np.ndarray:
    """One-pixel binary dilation over the last two axes (4-neighbourhood plus diagonals)."""
    padded = np.pad(mask, [(0, 0)] * (mask.ndim - 2) + [(1, 1), (1, 1)])
    height, width = mask.shape[-2:]
    out = np.zeros_like(mask)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            out |= padded[..., dy : dy + height, dx : dx + width]
    return out


def persistence(track: ObjectTrack, expected_visible: Sequence[bool] | None = None) -> float:
    """Share of the frames where the object should be visible (all, by default) in which it is found."""
    expected = np.ones(track.num_frames, dtype=bool) if expected_visible is None else np.asarray(expected_visible)
    if expected.shape != track.present.shape:
        raise ValueError(f"`expected_visible` must have {track.num_frames} entries, got {expected.shape}")
    if not expected.any():
        return float("nan")
    return float((track.present & expected).sum() / expected.sum())


def reemergence(track: ObjectTrack, palette: Mapping[str, Sequence[int]], direction: str) -> dict[str, bool]:
    """Whether an object that passes behind an occluder comes out again as itself.

    The clip is split at its longest run of frames without the object (the occlusion). The object must be seen
    before and after it, with the same color and shape on both sides, and the exit must lie farther along
    `direction` than the entry (it went through, not back).
    """
    present = track.present
    result = {"occluded": False, "reemerged": False, "same_color": False, "same_shape": False, "went_through": False}
    gaps, start = [], None
    for index, seen in enumerate(present):
        if not seen and start is None:
            start = index
        if seen and start is not None:
            gaps.append((start, index))
            start = None
    if not gaps or not present.any():
        return result
    gap_start, gap_end = max(gaps, key=lambda gap: gap[1] - gap[0])
    before, after = np.arange(gap_start), np.arange(gap_end, track.num_frames)
    before, after = before[present[before]], after[present[after]]
    result["occluded"] = True
    if len(before) == 0 or len(after) == 0:
        return result
    result["reemerged"] = True

    def side(indices):
        sub = _subtrack(track, indices)
        color = classify_color(np.nanmedian(track.color[indices], axis=0), palette)
        return color, classify_shape(sub), track.center[indices[-1]], track.center[indices[0]]

    color_before, shape_before, last_before, _ = side(before)
    color_after, shape_after, _, first_after = side(after)
    result["same_color"] = color_before == color_after
    result["same_shape"] = shape_before == shape_after
    result["went_through"] = float(np.dot(DIRECTION_VECTORS[direction], first_after - last_before)) > 0
    return result


def _subtrack(track: ObjectTrack, indices: np.ndarray) -> ObjectTrack:
    return ObjectTrack(
        present=track.present[indices],
        center=track.center[indices],
        area=track.area[indices],
        color=track.color[indices],
        bbox=track.bbox[indices],
        extent=track.extent[indices],
        object_mask=track.object_mask[indices],
    )


def evaluate_video(frames, attributes: Mapping[str, str], palette: Mapping[str, Sequence[int]] | None = None) -> dict:
    """All metrics of one video against the attributes its prompt states.

    Args:
        frames: `(F, H, W, 3)` video, floats in [0, 1] or uint8.
        attributes: at least `color`, `shape`, `direction`; `occluder` ("wall" or "none") when known.
        palette: color name -> RGB (0..255); default: `SHAPES_PALETTE` (with any colors added to it).
    """
    palette = SHAPES_PALETTE if palette is None else palette
    for key in ("color", "shape", "direction"):
        if key not in attributes:
            raise ValueError(f"`attributes` must name the prompt's {key!r}; got keys {sorted(attributes)}")
    if attributes["direction"] not in DIRECTION_VECTORS:
        raise ValueError(f"`attributes['direction']` must be one of {list(DIRECTION_VECTORS)}")
    track = track_object(frames)
    occluded_prompt = attributes.get("occluder", "none") != "none"
    full = _full_view_frames(track)
    object_rgb = np.nanmedian(track.color[full], axis=0) if len(full) else None  # (3,) in [0, 1]
    color = classify_color(object_rgb, palette) if len(full) else None
    shape = classify_shape(track)
    direction = classify_direction(track)
    metrics = {
        "color_correct": color == attributes["color"],
        "shape_correct": shape == attributes["shape"],
        "direction_correct": direction == attributes["direction"],
        "detected_color": color,
        "detected_shape": shape,
        "detected_direction": direction,
        # Full RGB, lightness included: the hue-only naming above cannot tell pink from a darker magenta.
        "color_error": float(np.linalg.norm(object_rgb - np.asarray(palette[attributes["color"]]) / 255.0))
        if object_rgb is not None and attributes["color"] in palette
        else float("nan"),
        "jitter": trajectory_jitter(track),
        **appearance_flicker(frames, track),
        # Behind a wall the object must vanish for a while, so persistence only counts unoccluded prompts.
        "persistence": float("nan") if occluded_prompt else persistence(track),
    }
    metrics["adherent"] = metrics["color_correct"] and metrics["shape_correct"] and metrics["direction_correct"]
    if occluded_prompt:
        outcome = reemergence(track, palette, attributes["direction"])
        metrics["reemergence_correct"] = (
            outcome["reemerged"] and outcome["same_color"] and outcome["same_shape"] and outcome["went_through"]
        )
        metrics["reemergence_correct"] = metrics["reemergence_correct"] and color == attributes["color"]
    return metrics


def summarize(results: Iterable[Mapping]) -> dict[str, float]:
    """Averages per-video metrics over a set: booleans become percentages, NaNs (not applicable) are skipped."""
    results = list(results)
    summary = {"num_videos": len(results)}
    boolean_keys = ("color_correct", "shape_correct", "direction_correct", "adherent", "reemergence_correct")
    float_keys = ("color_error", "jitter", "color_flicker", "size_flicker", "background_flicker", "persistence")
    for key in boolean_keys:
        values = [bool(result[key]) for result in results if key in result]
        summary[f"{key}_pct"] = 100.0 * float(np.mean(values)) if values else float("nan")
    for key in float_keys:
        values = np.array([result[key] for result in results if key in result], dtype=np.float64)
        values = values[~np.isnan(values)]
        summary[key] = float(values.mean()) if len(values) else float("nan")
    return summary


def psnr(reference, reconstruction, data_range: float = 255.0) -> float:
    """PSNR (dB) of a reconstruction against its reference: arrays or tensors of one shape, values in a range
    `data_range` wide (255 for uint8 pixels, 2 for [-1, 1])."""
    mse = np.mean((_numpy(reference).astype(np.float64) - _numpy(reconstruction).astype(np.float64)) ** 2)
    return float(10 * np.log10(data_range**2 / max(mse, 1e-12)))
