"""Batched tensor rendering of the shapes clips: pixel for pixel what `render_clip` draws, on any device."""

import numpy as np
import pytest
import torch

from training import make_shapes_dataset as shapes
from training.shapes_render import draw_specs, render_specs


def _as_uint8(video: torch.Tensor) -> np.ndarray:
    return ((video.permute(0, 2, 3, 4, 1) + 1) * 127.5).round().to(torch.uint8).numpy()  # (B, F, H, W, 3)


def test_batch_rendering_equals_render_clip_exactly():
    grid = shapes.combination_grid()
    # Every shape, direction, motion, wall and background, and a size other than the default.
    specs = draw_specs(grid, 40, np.random.default_rng(0)) + draw_specs(grid, 6, np.random.default_rng(1), 48, 80, 9)
    for size in ((64, 64, 17), (48, 80, 9)):
        part = [spec for spec in specs if (spec.height, spec.width, spec.num_frames) == size]
        video = render_specs(part, chunk_size=7)  # chunks that do not divide the batch
        assert video.shape == (len(part), 3, size[2], size[0], size[1]) and video.dtype == torch.float32
        np.testing.assert_array_equal(_as_uint8(video), np.stack([shapes.render_clip(spec) for spec in part]))
    assert {spec.shape for spec in specs} == set(shapes.SHAPES) and {spec.occluder for spec in specs} == {
        "none",
        "wall",
    }


def test_draw_specs_cycles_through_the_grid_without_hold_outs():
    holdouts = shapes.parse_holdouts(["red,circle,left_to_right"])
    grid = shapes.combination_grid(holdouts)
    specs = draw_specs(grid, 2 * len(grid), np.random.default_rng(0))
    counts = {}
    for spec in specs:
        counts[tuple(spec.attributes.values())] = counts.get(tuple(spec.attributes.values()), 0) + 1
    assert set(counts.values()) == {2} and len(counts) == len(grid)  # every combination exactly twice
    assert not any(shapes.matches_holdout(spec.attributes, holdouts) for spec in specs)


def test_colors_override_and_bad_input():
    specs = draw_specs(shapes.combination_grid(), 2, np.random.default_rng(0))
    pink = torch.tensor([[240.0, 100.0, 170.0]] * 2)
    frames = _as_uint8(render_specs(specs, colors=pink))
    saturated = frames.max(-1).astype(int) - frames.min(-1) > 50  # the object's pixels, (B, F, H, W)
    inner = frames[saturated & (np.abs(frames.astype(int) - [240, 100, 170]).max(-1) <= 1)]
    assert len(inner) > 0 and saturated.sum() > 0
    with pytest.raises(ValueError, match=r"colors must be \(B, 3\) = \(2, 3\)"):
        render_specs(specs, colors=pink[:1])
    other = draw_specs(shapes.combination_grid(), 1, np.random.default_rng(0), 32, 32, 9)
    with pytest.raises(ValueError, match="clips of one size"):
        render_specs(specs + other)
    with pytest.raises(ValueError, match="count >= 1"):
        draw_specs(shapes.combination_grid(), 0, np.random.default_rng(0))
