"""Synthetic captioned clips of moving shapes: the training data of the shipped model and the ground truth of its evaluation.

Every clip shows one shape (circle, square or triangle) in one palette color moving in a straight line (left to
right, right to left, top to bottom or bottom to top), at one of two speeds, either straight across or bouncing off
the far edge and coming back, optionally passing behind a gray wall and coming out again, on a plain or a checkered
background. The caption says exactly that, e.g. "a red circle moves from left to right behind a gray wall".

The geometry lives in the module-level constants below and in `ground_truth(spec)`, which returns the object's
center, size, bounding box and visible fraction for every frame, so that a detector that "knows the synthetic
geometry" can be validated against it. Coordinates are in pixels with the origin at the top-left corner of the
image, x to the right and y down; pixel (row i, column j) covers [j, j+1) x [i, i+1), so its center is
(j + 0.5, i + 0.5). A shape's center is the center of its bounding box (for the triangle too).

Output folder (the video-folder convention of `training/data.py`):
    00000.mp4 ...        one clip each, H.264 at --crf (10: visually lossless), yuv444p so that colors keep full
                         resolution at 64x64 (decoded colors are within a few levels of the palette)
    metadata.jsonl       {"file_name": "00000.mp4", "text": "a red circle moves from left to right"}
    ground_truth.jsonl   the attributes and per-frame ground truth of each clip (see `clip_record`)
    dataset_info.json    the arguments, the constants and the hold-outs used

Usage:
    python training/make_shapes_dataset.py --output_dir data/shapes --num_clips 2000 --holdout "red,circle,left_to_right"
    python training/make_shapes_dataset.py --output_dir data/shapes_eval --seed 1 --num_clips 64 \
        --holdout "red,circle,left_to_right" --only_holdout
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from diffusers_spacetime import evaluation

# 1. Geometry and appearance (permanent: the ground truth of every written folder)
FRAME_HEIGHT = 64  # default frame size: small because the default training runs on CPU
FRAME_WIDTH = 64
NUM_FRAMES = 17  # 1 + 4 * 4: four latent frames after a causal VAE with temporal compression 4
FPS = 8

# The colors, shapes and directions are the evaluation detector's tables (the package owns what it scores).
PALETTE = evaluation.SHAPES_PALETTE  # the same dict: `add_color` extends what the detector knows
SHAPES = tuple(evaluation.SHAPE_FILL_RATIOS)  # triangle: isosceles, apex up, base = height = the object size
OBJECT_SIZE_FRACTION = 0.1875  # side of the shape's bounding box, as a fraction of min(height, width): 12 px at 64
EDGE_MARGIN_FRACTION = 1 / 32  # gap kept between the shape and the frame edge, fraction of min(height, width)

# Direction -> unit vector (dx, dy) in image coordinates (y down) and the caption phrase.
DIRECTIONS = evaluation.DIRECTION_VECTORS
REVERSED_DIRECTIONS = {"left_to_right": "right_to_left", "right_to_left": "left_to_right",
                       "top_to_bottom": "bottom_to_top", "bottom_to_top": "top_to_bottom"}  # fmt: skip
DIRECTION_PHRASES = {
    "left_to_right": "from left to right",
    "right_to_left": "from right to left",
    "top_to_bottom": "from top to bottom",
    "bottom_to_top": "from bottom to top",
}

# Speed -> path length over the whole clip, as a fraction of the travel range (the distance the center can move
# between the two frame edges along the motion axis, margins kept). So speeds are relative to the clip: a longer
# --num_frames moves the object by the same distance, in more frames.
SPEEDS = {"normal": 0.9, "slow": 0.45}
SPEED_ADVERBS = {"normal": "", "slow": "slowly"}  # "a red circle moves slowly from ..."; normal speed is unmarked

MOTIONS = ("straight", "bounce")
BOUNCE_PATH_FACTOR = 1.5  # a bounce travels 1.5x the straight path at the same speed: to the far edge and back
BOUNCE_MIN_RETURN = 0.2  # after the bounce it comes back at least this fraction of the travel range
BOUNCE_MAX_START = 0.6  # and starts within this fraction of the travel range from its own edge
BOUNCE_PHRASE = "and bounces back"

# The occluder: a gray wall across the middle of the frame, perpendicular to the motion, spanning the whole frame
# along the other axis, drawn over the object. Wall clips move straight at normal speed on a path centered on the
# frame, so the object starts fully visible on one side, is fully hidden for a few frames, and ends fully visible
# on the other side (a slow path is too short to clear a wall this thick; a bounce would come back behind it).
OCCLUDERS = ("none", "wall")
OCCLUDER_COLOR_NAME = "gray"
OCCLUDER_RGB = (128, 128, 128)
WALL_THICKNESS_FRACTION = 0.3  # of the frame side along the motion, rounded to an even number of pixels: 20 px at 64
WALL_SPEEDS = ("normal",)
WALL_MOTIONS = ("straight",)
OCCLUDER_PHRASE = f"behind a {OCCLUDER_COLOR_NAME} wall"

BACKGROUNDS = ("plain", "checkered")
BACKGROUND_PLAIN_RGB = (236, 236, 236)
BACKGROUND_CHECKER_RGB = ((206, 206, 206), (242, 242, 242))  # the cell at the top-left corner has the first color
CHECKER_CELL_FRACTION = 0.125  # cell side as a fraction of min(height, width), rounded to pixels: 8 px at 64
BACKGROUND_PHRASES = {"plain": "", "checkered": "on a checkered background"}

MIN_COLOR_SATURATION = 100  # a color added with add_color: max(RGB) - min(RGB), so the detector sees it as object
MIN_COLOR_DISTANCE = 80  # and its RGB distance to every palette color, so nearest-color naming stays unambiguous

SUPERSAMPLING = 4  # each pixel averages 4 x 4 samples: anti-aliased edges and sub-pixel motion

# Attribute name -> its values, in caption order. Every value is unique across attributes, so a hold-out can name
# bare values ("red,circle,left_to_right") as well as key=value pairs ("color=red,shape=circle").
ATTRIBUTES = {
    "color": tuple(PALETTE),
    "shape": SHAPES,
    "direction": tuple(DIRECTIONS),
    "speed": tuple(SPEEDS),
    "motion": MOTIONS,
    "occluder": OCCLUDERS,
    "background": BACKGROUNDS,
}
# The combinations the shipped model never saw in training: its held-out evaluation.
SHIPPED_HOLDOUTS = ("red,circle,left_to_right", "blue,triangle,top_to_bottom")
VALUE_TO_ATTRIBUTE = {value: name for name, values in ATTRIBUTES.items() for value in values}
assert len(VALUE_TO_ATTRIBUTE) == sum(len(values) for values in ATTRIBUTES.values()), "attribute values must be unique"


def add_color(name: str, rgb: Sequence[int]) -> None:
    """Adds a color to the palette for this process: a concept the shipped model never saw (its LoRA fine-tune).

    The detector separates the object from the neutral scene by saturation and names it by the nearest palette color,
    so a new color must be saturated and far from every existing one.
    """
    if not isinstance(name, str) or not re.fullmatch(r"[a-z]+", name):
        raise ValueError(f"new color name must be one lowercase word, got {name!r}")
    if name in VALUE_TO_ATTRIBUTE:
        raise ValueError(f"new color name {name!r} is already a {VALUE_TO_ATTRIBUTE[name]} value")
    rgb = tuple(int(value) for value in rgb)
    if len(rgb) != 3 or not all(0 <= value <= 255 for value in rgb):
        raise ValueError(f"new color {name!r} must be three integers in 0..255, got {rgb}")
    if max(rgb) - min(rgb) < MIN_COLOR_SATURATION:
        raise ValueError(f"new color {name!r} {rgb} must have max - min >= {MIN_COLOR_SATURATION} (saturated)")
    nearest = min(PALETTE, key=lambda other: np.linalg.norm(np.subtract(PALETTE[other], rgb)))
    if np.linalg.norm(np.subtract(PALETTE[nearest], rgb)) < MIN_COLOR_DISTANCE:
        raise ValueError(f"new color {name!r} {rgb} is within {MIN_COLOR_DISTANCE} (RGB L2) of {nearest!r}")
    PALETTE[name] = rgb
    ATTRIBUTES["color"] = tuple(PALETTE)
    VALUE_TO_ATTRIBUTE[name] = "color"


def parse_new_color(spec: str) -> tuple[str, tuple[int, ...]]:
    """'pink=240,100,170' -> ('pink', (240, 100, 170))."""
    name, _, values = spec.partition("=")
    try:
        rgb = tuple(int(value) for value in values.split(","))
    except ValueError:
        rgb = ()
    if not name or len(rgb) != 3:
        raise ValueError(f"--new_color must look like 'pink=240,100,170', got {spec!r}")
    return name.strip(), rgb


# 2. Combinations, captions and hold-outs
def is_valid_combination(attributes: dict[str, str]) -> bool:
    """Whether a combination can be drawn as captioned (wall clips move straight at normal speed)."""
    if attributes["occluder"] == "wall":
        return attributes["speed"] in WALL_SPEEDS and attributes["motion"] in WALL_MOTIONS
    return True


def caption(attributes: dict[str, str]) -> str:
    """The exact caption of a clip, e.g. "a red circle moves slowly from left to right and bounces back"."""
    words = ["a", attributes["color"], attributes["shape"], "moves", SPEED_ADVERBS[attributes["speed"]]]
    words.append(DIRECTION_PHRASES[attributes["direction"]])
    if attributes["motion"] == "bounce":
        words.append(BOUNCE_PHRASE)
    if attributes["occluder"] == "wall":
        words.append(OCCLUDER_PHRASE)
    words.append(BACKGROUND_PHRASES[attributes["background"]])
    return " ".join(word for word in words if word)


# Free phrasings: the same attributes said in other words and word orders, so that a model learns what the words
# mean rather than where they sit in one template. Each entry is (words used in training, words held out of it): a
# caption drawn with `phrasing="held_out"` uses at least one held-out template or word, so it measures how well the
# model generalises to phrasings it never read.
VERBS = (("moves", "is moving", "slides", "travels", "glides"), ("drifts", "is gliding"))
GERUNDS = (("moving", "sliding", "traveling"), ("drifting",))  # "there is a red circle moving ..."
DIRECTION_SYNONYMS = {
    "left_to_right": (("from left to right", "to the right", "rightward", "towards the right", "from the left side to the right side"),
                      ("toward the right edge", "rightwards")),
    "right_to_left": (("from right to left", "to the left", "leftward", "towards the left", "from the right side to the left side"),
                      ("toward the left edge", "leftwards")),
    "top_to_bottom": (("from top to bottom", "downward", "down", "towards the bottom", "from the top to the bottom"),
                      ("toward the bottom edge", "downwards")),
    "bottom_to_top": (("from bottom to top", "upward", "up", "towards the top", "from the bottom to the top"),
                      ("toward the top edge", "upwards")),
}  # fmt: skip
SPEED_SYNONYMS = {"normal": (("",), ("",)), "slow": (("slowly", "at a slow pace"), ("leisurely",))}
BOUNCE_SYNONYMS = (("and bounces back", "and bounces off the edge", "then comes back"), ("and rebounds",))
OCCLUDER_SYNONYMS = (
    ("behind a gray wall", "behind a grey wall", "passing behind a gray wall"),
    ("behind the gray wall",),
)
BACKGROUND_SYNONYMS = {
    "plain": (("", "on a plain background", "on a light gray background"), ("on a blank background",)),
    "checkered": (("on a checkered background", "on a checkerboard", "over a checkered background"),
                  ("on a checkerboard pattern",)),
}  # fmt: skip
# {subject} "a red circle"; {path} direction and speed; {bounce}; {rest} wall and background.
CAPTION_TEMPLATES = (
    (
        "{subject} {verb} {path}{bounce}{rest}",
        "{subject} {gerund} {path}{bounce}{rest}",
        "{background_first}{subject} {verb} {path}{bounce}{wall}",
        "{path_first}, {subject} {verb}{bounce}{rest}",
    ),
    ("there is {subject} {gerund} {path}{bounce}{rest}", "the {color} {shape} {verb} {path}{bounce}{rest}"),
)
PHRASINGS = ("canonical", "train", "held_out")


def varied_caption(attributes: dict[str, str], rng: np.random.Generator, phrasing: str = "train") -> str:
    """A caption of `attributes` in free words, e.g. "on a checkerboard, a red circle slides slowly to the right".

    `phrasing`: "canonical" is `caption(attributes)`; "train" draws every template and word from the training sets
    (the canonical ones among them); "held_out" draws at least one part from the held-out sets, so that no
    held-out caption can come out of "train".
    """
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing must be one of {PHRASINGS}, got {phrasing!r}")
    if phrasing == "canonical":
        return caption(attributes)
    parts = ["template", "verb", "direction", "background"]
    parts += ["speed"] if attributes["speed"] == "slow" else []
    parts += ["bounce"] if attributes["motion"] == "bounce" else []
    parts += ["wall"] if attributes["occluder"] == "wall" else []
    held = set()
    while phrasing == "held_out" and not held:  # a random non-empty set of parts in held-out words
        held = {part for part in parts if rng.random() < 0.4}

    def pick(part: str, choices: tuple[tuple[str, ...], tuple[str, ...]]) -> str:
        options = choices[1] if part in held else choices[0]
        return options[rng.integers(len(options))]

    template = pick("template", CAPTION_TEMPLATES)
    direction = pick("direction", DIRECTION_SYNONYMS[attributes["direction"]])
    speed = pick("speed", SPEED_SYNONYMS[attributes["speed"]])
    path = f"{speed} {direction}" if speed and rng.random() < 0.5 else " ".join(w for w in (direction, speed) if w)
    bounce = " " + pick("bounce", BOUNCE_SYNONYMS) if attributes["motion"] == "bounce" else ""
    wall = " " + pick("wall", OCCLUDER_SYNONYMS) if attributes["occluder"] == "wall" else ""
    background = pick("background", BACKGROUND_SYNONYMS[attributes["background"]])
    return template.format(
        subject=f"a {attributes['color']} {attributes['shape']}",
        color=attributes["color"],
        shape=attributes["shape"],
        verb=pick("verb", VERBS),
        gerund=pick("verb", GERUNDS),
        path=path,
        bounce=bounce,
        rest=wall + (" " + background if background else ""),
        wall=wall,
        background_first=f"{background}, " if background else "",
        path_first=path[0].upper() + path[1:],
    )


_CAPTION_PATTERN = re.compile(
    r"^a (?P<color>\w+) (?P<shape>\w+) moves(?: (?P<adverb>\w+))? (?P<direction>from \w+ to \w+)"
    rf"(?P<bounce> {BOUNCE_PHRASE})?(?P<wall> {OCCLUDER_PHRASE})?(?: (?P<background>on a \w+ background))?$"
)


def parse_caption(text: str) -> dict[str, str]:
    """Inverse of `caption`: the attributes a caption states. Raises ValueError for text the generator cannot write."""
    match = _CAPTION_PATTERN.match(text.strip())
    if match is None:
        raise ValueError(f"Not a shapes-dataset caption: {text!r}")
    adverb_to_speed = {adverb: speed for speed, adverb in SPEED_ADVERBS.items()}
    phrase_to_direction = {phrase: name for name, phrase in DIRECTION_PHRASES.items()}
    phrase_to_background = {phrase: name for name, phrase in BACKGROUND_PHRASES.items()}
    attributes = {
        "color": match["color"],
        "shape": match["shape"],
        "direction": phrase_to_direction.get(match["direction"]),
        "speed": adverb_to_speed.get(match["adverb"] or ""),
        "motion": "bounce" if match["bounce"] else "straight",
        "occluder": "wall" if match["wall"] else "none",
        "background": phrase_to_background.get(match["background"] or ""),
    }
    for name, value in attributes.items():
        if value not in ATTRIBUTES[name]:
            raise ValueError(f"Not a shapes-dataset caption ({name} {value!r} unknown): {text!r}")
    return attributes


def parse_holdout(spec: str) -> dict[str, str]:
    """Parses one hold-out, "red,circle,left_to_right" or "color=red,shape=circle", into {attribute: value}."""
    holdout = {}
    for token in (token.strip() for token in spec.split(",")):
        if not token:
            continue
        if "=" in token:
            name, value = (part.strip() for part in token.split("=", 1))
            if name not in ATTRIBUTES:
                raise ValueError(f"Unknown attribute {name!r} in hold-out {spec!r}; attributes: {list(ATTRIBUTES)}")
            if value not in ATTRIBUTES[name]:
                raise ValueError(f"Unknown {name} {value!r} in hold-out {spec!r}; values: {list(ATTRIBUTES[name])}")
        elif token in VALUE_TO_ATTRIBUTE:
            name, value = VALUE_TO_ATTRIBUTE[token], token
        else:
            raise ValueError(f"Unknown value {token!r} in hold-out {spec!r}; values: {sorted(VALUE_TO_ATTRIBUTE)}")
        if holdout.get(name, value) != value:
            raise ValueError(f"Hold-out {spec!r} names two values of {name}")
        holdout[name] = value
    if not holdout:
        raise ValueError(f"Empty hold-out {spec!r}")
    return holdout


def parse_holdouts(specs: Iterable[str] | None) -> list[dict[str, str]]:
    """Parses --holdout values; each may hold several hold-outs separated by ';'."""
    return [parse_holdout(part) for spec in specs or () for part in spec.split(";") if part.strip()]


def matches_holdout(attributes: dict[str, str], holdouts: Sequence[dict[str, str]]) -> bool:
    """Whether a combination has every attribute value of at least one hold-out."""
    return any(all(attributes[name] == value for name, value in holdout.items()) for holdout in holdouts)


def combination_grid(holdouts: Sequence[dict[str, str]] = (), only_holdout: bool = False) -> list[dict[str, str]]:
    """All valid attribute combinations, without the held-out ones (or only those, for an evaluation set)."""
    grid = []
    for values in itertools.product(*ATTRIBUTES.values()):
        attributes = dict(zip(ATTRIBUTES, values))
        if is_valid_combination(attributes) and matches_holdout(attributes, holdouts) == only_holdout:
            grid.append(attributes)
    return grid


# 3. Clip geometry and ground truth
@dataclasses.dataclass(frozen=True)
class ShapesClipSpec:
    """Everything that determines one clip: its attributes plus the two continuous parameters drawn from the seed."""

    color: str
    shape: str
    direction: str
    speed: str
    motion: str
    occluder: str
    background: str
    start_offset: float  # distance (px) of the first center from its starting edge's extreme position
    cross_position: float  # the center's coordinate (px) on the axis perpendicular to the motion
    height: int = FRAME_HEIGHT
    width: int = FRAME_WIDTH
    num_frames: int = NUM_FRAMES
    fps: int = FPS

    @property
    def attributes(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ATTRIBUTES}

    @property
    def caption(self) -> str:
        return caption(self.attributes)


def object_size(height: int, width: int) -> float:
    """Side (px) of every shape's bounding box."""
    return OBJECT_SIZE_FRACTION * min(height, width)


def _axis_lengths(direction: str, height: int, width: int) -> tuple[int, int]:
    """(frame length along the motion, frame length across it)."""
    dx, _ = DIRECTIONS[direction]
    return (width, height) if dx else (height, width)


def _center_range(length: int, height: int, width: int) -> tuple[float, float]:
    """(lowest, highest) center coordinate that keeps the shape and its margin inside a frame side of `length`."""
    half = object_size(height, width) / 2 + EDGE_MARGIN_FRACTION * min(height, width)
    return half, length - half


def wall_box(direction: str, height: int, width: int) -> tuple[int, int, int, int]:
    """The wall's (x0, y0, x1, y1) in pixels (exclusive end): a centered band perpendicular to the motion."""
    along, _ = _axis_lengths(direction, height, width)
    half = int(round(WALL_THICKNESS_FRACTION * along / 2))
    start, end = along // 2 - half, along // 2 + half
    return (start, 0, end, height) if DIRECTIONS[direction][0] else (0, start, width, end)


def make_clip_spec(
    attributes: dict[str, str],
    rng: np.random.Generator,
    height: int = FRAME_HEIGHT,
    width: int = FRAME_WIDTH,
    num_frames: int = NUM_FRAMES,
    fps: int = FPS,
) -> ShapesClipSpec:
    """Draws the start offset and the cross-axis position of a clip with the given attributes."""
    if not is_valid_combination(attributes):
        raise ValueError(
            f"Invalid combination {attributes}: a wall needs {WALL_MOTIONS} motion at {WALL_SPEEDS} speed"
        )
    if num_frames < 2:
        raise ValueError(f"A moving shape needs at least 2 frames, got num_frames={num_frames}")
    along, across = _axis_lengths(attributes["direction"], height, width)
    low, high = _center_range(along, height, width)
    travel_range = high - low
    path = SPEEDS[attributes["speed"]] * travel_range
    if attributes["occluder"] == "wall":
        start_offset = (travel_range - path) / 2  # centered on the wall
    elif attributes["motion"] == "bounce":
        path *= BOUNCE_PATH_FACTOR
        lowest = max(0.0, (1 + BOUNCE_MIN_RETURN) * travel_range - path)
        highest = min(2 * travel_range - path, BOUNCE_MAX_START * travel_range)
        start_offset = rng.uniform(lowest, max(lowest, highest))
    else:
        start_offset = rng.uniform(0.0, travel_range - path)
    cross_low, cross_high = _center_range(across, height, width)
    cross_position = rng.uniform(cross_low, cross_high)
    return ShapesClipSpec(
        **attributes,
        start_offset=float(start_offset),
        cross_position=float(cross_position),
        height=height,
        width=width,
        num_frames=num_frames,
        fps=fps,
    )


def trajectory(spec: ShapesClipSpec) -> np.ndarray:
    """The shape's center (x, y) in pixels at every frame: (num_frames, 2)."""
    along, _ = _axis_lengths(spec.direction, spec.height, spec.width)
    low, high = _center_range(along, spec.height, spec.width)
    travel_range = high - low
    path = SPEEDS[spec.speed] * travel_range * (BOUNCE_PATH_FACTOR if spec.motion == "bounce" else 1.0)
    distance = spec.start_offset + path * np.arange(spec.num_frames) / (spec.num_frames - 1)  # (F,)
    if spec.motion == "bounce":
        distance = np.where(distance > travel_range, 2 * travel_range - distance, distance)  # reflect off the edge
    dx, dy = DIRECTIONS[spec.direction]
    sign = dx + dy
    position = low + distance if sign > 0 else high - distance
    cross = np.full_like(position, spec.cross_position)
    return np.stack([position, cross] if dx else [cross, position], axis=1)  # (F, 2)


def _sample_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel sample coordinates (X, Y), each (height * SUPERSAMPLING, width * SUPERSAMPLING)."""
    ys = (np.arange(height * SUPERSAMPLING) + 0.5) / SUPERSAMPLING
    xs = (np.arange(width * SUPERSAMPLING) + 0.5) / SUPERSAMPLING
    return np.meshgrid(xs, ys)


def _downsample(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Averages SUPERSAMPLING x SUPERSAMPLING samples into pixel coverage in [0, 1]: (height, width)."""
    return mask.reshape(height, SUPERSAMPLING, width, SUPERSAMPLING).mean(axis=(1, 3))


def _shape_mask(shape: str, center_x: float, center_y: float, size: float, xs: np.ndarray, ys: np.ndarray):
    """Boolean inside-mask of a shape whose bounding box is `size` wide and centered at (center_x, center_y)."""
    half = size / 2
    if shape == "circle":
        return (xs - center_x) ** 2 + (ys - center_y) ** 2 <= half**2
    if shape == "square":
        return (np.abs(xs - center_x) <= half) & (np.abs(ys - center_y) <= half)
    if shape == "triangle":  # apex at the top middle of the box, base along its bottom edge
        top = center_y - half
        return (ys >= top) & (ys <= center_y + half) & (np.abs(xs - center_x) <= (ys - top) / 2)
    raise ValueError(f"Unknown shape {shape!r}; shapes: {SHAPES}")


def _wall_coverage(spec: ShapesClipSpec) -> np.ndarray:
    """Per-pixel wall coverage in [0, 1]: (height, width); zeros without a wall."""
    coverage = np.zeros((spec.height, spec.width))
    if spec.occluder == "wall":
        x0, y0, x1, y1 = wall_box(spec.direction, spec.height, spec.width)
        coverage[y0:y1, x0:x1] = 1.0
    return coverage


def _object_coverages(spec: ShapesClipSpec) -> np.ndarray:
    """Per-frame, per-pixel object coverage in [0, 1] before occlusion: (F, height, width)."""
    xs, ys = _sample_grid(spec.height, spec.width)
    size = object_size(spec.height, spec.width)
    return np.stack(
        [
            _downsample(_shape_mask(spec.shape, x, y, size, xs, ys), spec.height, spec.width)
            for x, y in trajectory(spec)
        ]
    )


def background(spec: ShapesClipSpec) -> np.ndarray:
    """The static background, float RGB in [0, 255]: (height, width, 3)."""
    if spec.background == "plain":
        return np.broadcast_to(np.array(BACKGROUND_PLAIN_RGB, dtype=np.float64), (spec.height, spec.width, 3)).copy()
    cell = max(1, int(round(CHECKER_CELL_FRACTION * min(spec.height, spec.width))))
    rows, cols = np.arange(spec.height)[:, None] // cell, np.arange(spec.width)[None, :] // cell
    parity = ((rows + cols) % 2)[..., None]  # (H, W, 1)
    first, second = (np.array(rgb, dtype=np.float64) for rgb in BACKGROUND_CHECKER_RGB)
    return np.where(parity == 0, first, second)


def ground_truth(spec: ShapesClipSpec) -> list[dict]:
    """Per-frame ground truth of a clip.

    Returns one dict per frame: `frame` (index), `center` [x, y] (px, bounding-box center), `size` (px, side of the
    bounding box), `bbox` [x0, y0, x1, y1] (px), `visible_fraction` (share of the shape's area not behind the wall,
    in [0, 1]) and `visible` (visible_fraction > 0).
    """
    size = object_size(spec.height, spec.width)
    coverages = _object_coverages(spec)  # (F, H, W)
    unoccluded = 1.0 - _wall_coverage(spec)  # (H, W)
    frames = []
    for index, ((x, y), coverage) in enumerate(zip(trajectory(spec), coverages)):
        area = coverage.sum()
        visible_fraction = float((coverage * unoccluded).sum() / area) if area > 0 else 0.0
        frames.append(
            {
                "frame": index,
                "center": [round(float(x), 4), round(float(y), 4)],
                "size": round(size, 4),
                "bbox": [round(float(value), 4) for value in (x - size / 2, y - size / 2, x + size / 2, y + size / 2)],
                "visible_fraction": round(visible_fraction, 4),
                "visible": visible_fraction > 0,
            }
        )
    return frames


def render_clip(spec: ShapesClipSpec) -> np.ndarray:
    """Draws a clip: uint8 RGB frames (num_frames, height, width, 3); the wall is drawn over the shape."""
    base = background(spec)  # (H, W, 3)
    color = np.array(PALETTE[spec.color], dtype=np.float64)
    wall = _wall_coverage(spec)[..., None]  # (H, W, 1)
    coverages = _object_coverages(spec)[..., None]  # (F, H, W, 1)
    frames = base * (1 - coverages) + color * coverages  # (F, H, W, 3)
    frames = frames * (1 - wall) + np.array(OCCLUDER_RGB, dtype=np.float64) * wall
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def clip_record(file_name: str, spec: ShapesClipSpec) -> dict:
    """The ground-truth line of one clip: file, caption, attributes, parameters, occluder box and per-frame truth."""
    occluder = None
    if spec.occluder == "wall":
        occluder = {
            "kind": "wall",
            "color": OCCLUDER_COLOR_NAME,
            "rgb": list(OCCLUDER_RGB),
            "box": list(wall_box(spec.direction, spec.height, spec.width)),
        }
    return {
        "file_name": file_name,
        "text": spec.caption,
        **spec.attributes,
        "rgb": list(PALETTE[spec.color]),
        "start_offset": round(spec.start_offset, 4),
        "cross_position": round(spec.cross_position, 4),
        "height": spec.height,
        "width": spec.width,
        "num_frames": spec.num_frames,
        "fps": spec.fps,
        "occluder_box": occluder,
        "frames": ground_truth(spec),
    }


def clip_spec_from_record(record: dict) -> ShapesClipSpec:
    """Rebuilds the spec of a ground-truth line, e.g. to re-render a clip without decoding its video."""
    fields = {field.name for field in dataclasses.fields(ShapesClipSpec)}
    return ShapesClipSpec(**{key: value for key, value in record.items() if key in fields})


# 4. Writing the folder
def write_mp4(path: str | os.PathLike, frames: np.ndarray, fps: int, crf: int = 10, pix_fmt: str = "yuv444p") -> None:
    """Encodes uint8 RGB frames (F, H, W, 3) as H.264 in an mp4 with PyAV."""
    import av  # PyAV: the one video library the training code needs (decoding in data.py too)

    # bitexact: no creation time or encoder version in the file, so the same seed writes the same bytes in a quiet
    # run; heavy load can still change them, so tests compare the decoded pixels.
    with av.open(str(path), mode="w", container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        stream.options = {"crf": str(crf), "preset": "medium", "threads": "1"}
        stream.codec_context.thread_count = 1
        for index, frame in enumerate(frames):
            # Convert to the stream's pixel format here, with explicit timestamps: PyAV's implicit conversion in
            # the encoder is not byte-wise reproducible under CPU load.
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24").reformat(
                format=pix_fmt
            )
            video_frame.pts, video_frame.time_base = index, Fraction(1, fps)
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def dataset_constants() -> dict:
    """The module constants, as written to dataset_info.json."""
    return {
        "palette": {name: list(rgb) for name, rgb in PALETTE.items()},
        "shapes": list(SHAPES),
        "object_size_fraction": OBJECT_SIZE_FRACTION,
        "edge_margin_fraction": EDGE_MARGIN_FRACTION,
        "directions": {name: list(vector) for name, vector in DIRECTIONS.items()},
        "speeds": SPEEDS,
        "bounce_path_factor": BOUNCE_PATH_FACTOR,
        "occluder": {
            "color": OCCLUDER_COLOR_NAME,
            "rgb": list(OCCLUDER_RGB),
            "thickness_fraction": WALL_THICKNESS_FRACTION,
            "speeds": list(WALL_SPEEDS),
            "motions": list(WALL_MOTIONS),
        },
        "backgrounds": {
            "plain": list(BACKGROUND_PLAIN_RGB),
            "checkered": [list(rgb) for rgb in BACKGROUND_CHECKER_RGB],
            "checker_cell_fraction": CHECKER_CELL_FRACTION,
        },
        "attributes": {name: list(values) for name, values in ATTRIBUTES.items()},
    }


def generate_dataset(
    output_dir: str | os.PathLike,
    num_clips: int,
    seed: int = 0,
    height: int = FRAME_HEIGHT,
    width: int = FRAME_WIDTH,
    num_frames: int = NUM_FRAMES,
    fps: int = FPS,
    holdouts: Sequence[dict[str, str]] = (),
    only_holdout: bool = False,
    crf: int = 10,
    pix_fmt: str = "yuv444p",
    phrasing: str = "canonical",
) -> list[dict]:
    """Writes `num_clips` clips and their metadata; returns the ground-truth records.

    Clips cycle through the valid combinations (minus the hold-outs, or only them), reshuffled by the seed each
    cycle, so that every combination appears about equally often. Clip `i` depends only on (seed, i, the grid).
    `phrasing` other than "canonical" words each caption with `varied_caption` (the records keep the attributes).
    """
    if phrasing not in PHRASINGS:
        raise ValueError(f"phrasing must be one of {PHRASINGS}, got {phrasing!r}")
    if num_clips < 1:
        raise ValueError(f"num_clips must be at least 1, got {num_clips}")
    if only_holdout and not holdouts:
        raise ValueError("--only_holdout needs at least one --holdout")
    grid = combination_grid(holdouts, only_holdout)
    if not grid:
        raise ValueError("The hold-outs leave no combination to draw")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    records, order = [], []
    for index in range(num_clips):
        cycle, position = divmod(index, len(grid))
        if position == 0:
            order = np.random.default_rng([seed, cycle, 0]).permutation(len(grid))
        spec = make_clip_spec(
            grid[order[position]], np.random.default_rng([seed, index, 1]), height, width, num_frames, fps
        )
        file_name = f"{index:05d}.mp4"
        write_mp4(output_dir / file_name, render_clip(spec), fps, crf=crf, pix_fmt=pix_fmt)
        record = clip_record(file_name, spec)
        if phrasing != "canonical":  # the attributes stay in the record; only the caption is said otherwise
            record["text"] = varied_caption(spec.attributes, np.random.default_rng([seed, index, 2]), phrasing)
        records.append(record)
    # Metadata last, each through a temporary file, so a folder with metadata is a complete folder.
    _write_lines(output_dir / "metadata.jsonl", ({"file_name": r["file_name"], "text": r["text"]} for r in records))
    _write_lines(output_dir / "ground_truth.jsonl", records)
    info = {
        "generator": "training/make_shapes_dataset.py",
        "num_clips": num_clips,
        "seed": seed,
        "height": height,
        "width": width,
        "num_frames": num_frames,
        "fps": fps,
        "crf": crf,
        "pix_fmt": pix_fmt,
        "phrasing": phrasing,
        "holdouts": list(holdouts),
        "only_holdout": only_holdout,
        "num_combinations": len(grid),
        "constants": dataset_constants(),
    }
    _write_text(output_dir / "dataset_info.json", json.dumps(info, indent=2) + "\n")
    return records


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_lines(path: Path, rows: Iterable[dict]) -> None:
    _write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def read_ground_truth(data_dir: str | os.PathLike) -> list[dict]:
    """Reads ground_truth.jsonl of a generated folder."""
    with open(Path(data_dir) / "ground_truth.jsonl") as handle:
        return [json.loads(line) for line in handle if line.strip()]


# 5. Command line
def build_parser() -> argparse.ArgumentParser:
    """The command-line flags, each with its help."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output_dir", required=True, help="Folder to write the clips, metadata.jsonl and ground_truth.jsonl to."
    )
    integers = (  # (flag, default, help)
        ("num_clips", 1000, "Number of clips to write."),
        ("seed", 0, "Seed: the same seed and arguments write the same clips."),
        ("height", FRAME_HEIGHT, "Frame height in pixels."),
        ("width", FRAME_WIDTH, "Frame width in pixels."),
        ("num_frames", NUM_FRAMES, "Frames per clip (1 + k * r suits a causal VAE)."),
        ("fps", FPS, "Frame rate stored in the mp4 files."),
        ("crf", 10, "x264 constant rate factor: 0 is lossless, 10 visually lossless."),
    )
    for name, default, text in integers:
        parser.add_argument(f"--{name}", type=int, default=default, help=text)
    parser.add_argument(
        "--holdout",
        action="append",
        default=[],
        help=(
            "Attribute combination to leave out, e.g. 'red,circle,left_to_right' or 'color=red,motion=bounce'; "
            "a clip is left out if it has all the named values. Repeat the flag or separate hold-outs with ';'."
        ),
    )
    parser.add_argument(
        "--only_holdout",
        action="store_true",
        help="Write only the held-out combinations (an evaluation set); use another --seed than the training set.",
    )
    parser.add_argument(
        "--new_color",
        action="append",
        default=[],
        help="Add a color word the shipped model never saw, e.g. 'pink=240,100,170' (a LoRA concept); combine with "
        "--holdout color=pink --only_holdout to write clips of that color only.",
    )
    parser.add_argument(
        "--phrasing",
        default="canonical",
        choices=PHRASINGS,
        help="Captions: the one template (canonical), free phrasings from the training sets (train), or phrasings "
        "with held-out templates and words (held_out, for an evaluation set); see varied_caption.",
    )
    parser.add_argument(
        "--pix_fmt",
        default="yuv444p",
        choices=("yuv444p", "yuv420p"),
        help="Pixel format: yuv444p keeps full color resolution; yuv420p plays in every browser.",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(args: argparse.Namespace) -> list[dict]:
    for spec in args.new_color:
        add_color(*parse_new_color(spec))
    holdouts = parse_holdouts(args.holdout)
    options = ("seed", "height", "width", "num_frames", "fps", "only_holdout", "crf", "pix_fmt", "phrasing")
    records = generate_dataset(
        args.output_dir, args.num_clips, holdouts=holdouts, **{name: getattr(args, name) for name in options}
    )
    print(
        f"Wrote {len(records)} clips to {args.output_dir} ({len(combination_grid(holdouts, args.only_holdout))} combinations)"
    )
    return records


if __name__ == "__main__":
    main(parse_args())
