"""Shared fixtures of the training tests: a small generated shapes folder and a clean accelerate state per test."""

import pytest

from training import make_shapes_dataset

# Clip size of the script tests: 9 frames = 1 + 2 * 4 (the tiny VAE compresses time by 4), 32 x 32 pixels.
NUM_FRAMES, HEIGHT, WIDTH = 9, 32, 32


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """12 generated clips (9 frames, 32 x 32) with metadata.jsonl and ground_truth.jsonl."""
    folder = tmp_path_factory.mktemp("shapes")
    make_shapes_dataset.generate_dataset(folder, 12, seed=0, height=HEIGHT, width=WIDTH, num_frames=NUM_FRAMES)
    return folder


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Scripts run in-process one after another: each starts from a fresh accelerate singleton state."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def restore_palette():
    """Undoes `make_shapes_dataset.add_color` (it extends module-level tables for the process)."""
    from training import make_shapes_dataset as shapes

    palette, colors, lookup = dict(shapes.PALETTE), shapes.ATTRIBUTES["color"], dict(shapes.VALUE_TO_ATTRIBUTE)
    yield
    shapes.PALETTE.clear()
    shapes.PALETTE.update(palette)
    shapes.ATTRIBUTES["color"] = colors
    shapes.VALUE_TO_ATTRIBUTE.clear()
    shapes.VALUE_TO_ATTRIBUTE.update(lookup)
