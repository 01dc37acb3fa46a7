"""The shapes clips of `make_shapes_dataset.py`, drawn in batches as tensors on any device: data at GPU speed.

The geometry stays where it is defined (`make_clip_spec`, `trajectory`, `wall_box`, `background`): this module only
rasterises many clips at once instead of one per call, with the same 4 x 4 supersampling, in float64, so a clip
comes out pixel for pixel as `render_clip` draws it (tested). No mp4 round trip: a GPU trainer renders what it needs.

    specs = draw_specs(shapes.combination_grid(holdouts), 4096, np.random.default_rng(0))
    video = render_specs(specs, device="cuda")  # (4096, 3, 17, 64, 64) floats in [-1, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from training import make_shapes_dataset as shapes


def draw_specs(
    grid: Sequence[dict[str, str]],
    count: int,
    rng: np.random.Generator,
    height: int = shapes.FRAME_HEIGHT,
    width: int = shapes.FRAME_WIDTH,
    num_frames: int = shapes.NUM_FRAMES,
) -> list[shapes.ShapesClipSpec]:
    """`count` clips whose combinations cycle through `grid` (each cycle reshuffled), positions drawn from `rng`."""
    if count < 1 or not grid:
        raise ValueError(
            f"draw_specs needs count >= 1 and a non-empty grid, got count={count}, {len(grid)} combinations"
        )
    order = np.concatenate([rng.permutation(len(grid)) for _ in range(-(-count // len(grid)))])[:count]
    return [shapes.make_clip_spec(grid[index], rng, height, width, num_frames) for index in order]


def _scene(specs: Sequence[shapes.ShapesClipSpec], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per clip, the background (B, H, W, 3) in [0, 255] and the wall's coverage (B, H, W, 1), float64."""
    first = specs[0]
    backgrounds, walls = {}, {}
    for spec in specs:
        if spec.background not in backgrounds:
            backgrounds[spec.background] = torch.from_numpy(shapes.background(spec))
        if spec.occluder == "wall" and spec.direction not in walls:
            x0, y0, x1, y1 = shapes.wall_box(spec.direction, first.height, first.width)
            walls[spec.direction] = torch.zeros(first.height, first.width, dtype=torch.float64)
            walls[spec.direction][y0:y1, x0:x1] = 1.0
    no_wall = torch.zeros(first.height, first.width, dtype=torch.float64)
    base = torch.stack([backgrounds[spec.background] for spec in specs]).to(device)
    wall = torch.stack([walls[spec.direction] if spec.occluder == "wall" else no_wall for spec in specs])
    return base, wall.to(device)[..., None]


def _coverage(specs: Sequence[shapes.ShapesClipSpec], device) -> torch.Tensor:
    """Per-frame object coverage in [0, 1] before occlusion, (B, F, H, W) float64: `_object_coverages`, batched."""
    first = specs[0]
    height, width, samples = first.height, first.width, shapes.SUPERSAMPLING
    half = shapes.object_size(height, width) / 2
    centers = torch.from_numpy(np.stack([shapes.trajectory(spec) for spec in specs])).to(device)  # (B, F, 2)
    xs = (torch.arange(width * samples, device=device, dtype=torch.float64) + 0.5) / samples  # (W*S,)
    ys = (torch.arange(height * samples, device=device, dtype=torch.float64) + 0.5) / samples  # (H*S,)
    dx = xs - centers[..., 0, None]  # (B, F, W*S)
    dy = ys - centers[..., 1, None]  # (B, F, H*S)
    kind = torch.tensor([shapes.SHAPES.index(spec.shape) for spec in specs], device=device)[:, None, None, None]
    dx, dy = dx[:, :, None, :], dy[:, :, :, None]  # (B, F, 1, W*S), (B, F, H*S, 1)
    circle = dx**2 + dy**2 <= half**2
    square = (dx.abs() <= half) & (dy.abs() <= half)
    # Apex at the top middle of the box: `top = cy - half`, `|x - cx| <= (y - top) / 2`, `top <= y <= cy + half`.
    triangle = (dy >= -half) & (dy <= half) & (dx.abs() <= (dy + half) / 2)
    inside = torch.where(kind == 0, circle, torch.where(kind == 1, square, triangle))  # (B, F, H*S, W*S)
    return inside.to(torch.float64).unflatten(3, (width, samples)).unflatten(2, (height, samples)).mean((3, 5))


def render_specs(
    specs: Sequence[shapes.ShapesClipSpec],
    device: torch.device | str = "cpu",
    colors: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> torch.Tensor:
    """Draws clips as `render_clip` does, in chunks of `chunk_size` on `device`.

    Args:
        specs: clips of one size (height, width, num_frames).
        colors: optional `(B, 3)` RGB in [0, 255] drawn instead of each spec's palette color.
    Returns:
        `(B, 3, F, H, W)` float32 in [-1, 1]: the uint8 frames of `render_clip` mapped by `x / 127.5 - 1`.
    """
    sizes = {(spec.height, spec.width, spec.num_frames) for spec in specs}
    if len(sizes) != 1:
        raise ValueError(f"render_specs needs clips of one size, got (height, width, num_frames) in {sorted(sizes)}")
    if colors is not None and tuple(colors.shape) != (len(specs), 3):
        raise ValueError(f"colors must be (B, 3) = ({len(specs)}, 3), got {tuple(colors.shape)}")
    gray = torch.tensor(shapes.OCCLUDER_RGB, dtype=torch.float64, device=device)
    out = []
    for start in range(0, len(specs), chunk_size):
        part = specs[start : start + chunk_size]
        if colors is None:
            rgb = torch.tensor([shapes.PALETTE[spec.color] for spec in part], dtype=torch.float64)
        else:
            rgb = colors[start : start + chunk_size].to(torch.float64)
        rgb = rgb.to(device)[:, None, None, None, :]  # (b, 1, 1, 1, 3)
        base, wall = _scene(part, device)  # (b, H, W, 3), (b, H, W, 1)
        coverage = _coverage(part, device)[..., None]  # (b, F, H, W, 1)
        frames = base[:, None] * (1 - coverage) + rgb * coverage  # (b, F, H, W, 3)
        frames = frames * (1 - wall[:, None]) + gray * wall[:, None]
        frames = frames.round().clamp(0, 255)
        out.append((frames / 127.5 - 1).to(torch.float32).permute(0, 4, 1, 2, 3))  # (b, 3, F, H, W)
    return torch.cat(out)
