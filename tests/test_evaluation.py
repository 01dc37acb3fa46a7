"""The coherence metrics, validated against the synthetic data's own ground truth."""

import numpy as np
import pytest

from diffusers_spacetime import evaluation
from training import make_shapes_dataset as shapes


def _clips(limit=None, **fixed):
    rng = np.random.default_rng(0)
    grid = [c for c in shapes.combination_grid() if all(c[k] == v for k, v in fixed.items())]
    if limit is not None:
        grid = [grid[i] for i in rng.choice(len(grid), size=min(limit, len(grid)), replace=False)]
    for attributes in grid:
        spec = shapes.make_clip_spec(attributes, rng)
        yield attributes, spec, shapes.render_clip(spec)


def test_detector_matches_ground_truth_on_every_kind_of_clip():
    results = []
    for attributes, spec, frames in _clips(limit=48):
        metrics = evaluation.evaluate_video(frames, attributes)
        assert metrics["adherent"], (attributes, metrics)
        track = evaluation.track_object(frames)
        truth = shapes.ground_truth(spec)
        for index, frame_truth in enumerate(truth):
            if frame_truth["visible_fraction"] == 1.0:
                assert track.present[index]
                expected = np.array(frame_truth["center"])  # bounding-box center; the detector gives the centroid
                if attributes["shape"] == "triangle":  # apex up: the centroid lies a sixth of the height lower
                    expected[1] += frame_truth["size"] / 6
                np.testing.assert_allclose(track.center[index], expected, atol=0.35)
            elif not frame_truth["visible"]:
                assert not track.present[index]
        results.append(metrics)
    summary = evaluation.summarize(results)
    assert summary["adherent_pct"] == 100.0
    assert summary["color_flicker"] < 0.02 and summary["background_flicker"] < 1e-6
    assert summary["color_error"] < 0.03  # the data draws the prompt's exact RGB


def test_color_error_sees_lightness_that_hue_naming_ignores():
    attributes, _, frames = next(_clips(color="red", occluder="none", background="plain"))
    darker = frames.astype(np.float64) / 255.0
    colored = darker.max(-1, keepdims=True) - darker.min(-1, keepdims=True) > 0.3
    darker = np.where(colored, darker * 0.6, darker)  # the same hue, 40% darker
    same, dark = (evaluation.evaluate_video(video, attributes, shapes.PALETTE) for video in (frames, darker))
    assert same["color_correct"] and dark["color_correct"]  # hue naming: still red
    assert same["color_error"] < 0.03 and dark["color_error"] > 0.2


def test_uniform_motion_has_no_jitter_and_random_placement_has_much():
    attributes, spec, frames = next(_clips(motion="straight", occluder="none", background="plain", speed="normal"))
    track = evaluation.track_object(frames)
    assert evaluation.trajectory_jitter(track) < 0.1
    assert evaluation.persistence(track) == 1.0
    # Per-frame generation: each frame draws the object somewhere else along the path.
    order = np.random.default_rng(1).permutation(len(frames))
    assert evaluation.trajectory_jitter(evaluation.track_object(frames[order])) > 3.0


def test_flicker_sees_color_and_size_changes():
    _, _, frames = next(_clips(motion="straight", occluder="none", background="plain"))
    flickering = frames.astype(np.float64) / 255.0
    flickering[1::2] = np.where(
        flickering[1::2].std(-1, keepdims=True) > 0.1, flickering[1::2] * 0.7, flickering[1::2]
    )
    steady = evaluation.appearance_flicker(frames, evaluation.track_object(frames))
    flicker = evaluation.appearance_flicker(flickering, evaluation.track_object(flickering))
    assert flicker["color_flicker"] > 5 * steady["color_flicker"] + 0.05


def test_reemergence_after_wall_and_failure_when_object_vanishes_or_turns():
    attributes, spec, frames = next(_clips(occluder="wall", background="plain"))
    metrics = evaluation.evaluate_video(frames, attributes)
    assert metrics["reemergence_correct"]
    track = evaluation.track_object(frames)
    truth = shapes.ground_truth(spec)
    hidden = [i for i, t in enumerate(truth) if not t["visible"]]
    # The object never comes out: everything after the wall is plain wall/background.
    vanished = frames.copy()
    vanished[hidden[0] :] = frames[hidden[0]]
    assert not evaluation.evaluate_video(vanished, attributes)["reemergence_correct"]
    # It comes out in another color.
    recolored = frames.copy()
    after = recolored[hidden[-1] + 1 :]
    other = np.array(shapes.PALETTE["green" if attributes["color"] != "green" else "red"], dtype=np.uint8)
    after[track.object_mask[hidden[-1] + 1 :]] = other
    assert not evaluation.evaluate_video(recolored, attributes)["reemergence_correct"]


@pytest.mark.parametrize(
    "frames, error",
    [
        (np.zeros((4, 8, 8)), ValueError),
        (np.zeros((4, 8, 8, 4)), ValueError),
        (np.zeros((4, 8, 8, 3), dtype=np.int32), TypeError),
    ],
)
def test_bad_frames(frames, error):
    with pytest.raises(error, match="frames"):
        evaluation.track_object(frames)


def test_bad_attributes():
    with pytest.raises(ValueError, match="shape"):
        evaluation.evaluate_video(np.zeros((3, 8, 8, 3)), {"color": "red", "direction": "left_to_right"})


def test_the_package_owns_the_shapes_world_the_data_draws_from():
    assert shapes.PALETTE is evaluation.SHAPES_PALETTE  # one dict: colors added for a LoRA reach the detector
    assert shapes.SHAPES == tuple(evaluation.SHAPE_FILL_RATIOS) and shapes.DIRECTIONS is evaluation.DIRECTION_VECTORS
    attributes, _, frames = next(_clips(color="blue", occluder="none"))
    palette = {"blue": shapes.PALETTE["blue"], "red": shapes.PALETTE["red"]}
    default, given = (evaluation.evaluate_video(frames, attributes, *extra) for extra in ((), (palette,)))
    assert default["detected_color"] == given["detected_color"] == "blue" and default["color_correct"]


def test_psnr_of_arrays_and_tensors():
    import torch

    reference = np.full((2, 4, 4, 3), 100, dtype=np.uint8)
    assert evaluation.psnr(reference, reference + 1) == pytest.approx(20 * np.log10(255.0))
    video = torch.zeros(1, 3, 2, 4, 4)  # [-1, 1]: a range 2 wide
    assert evaluation.psnr(video, video + 0.02, data_range=2.0) == pytest.approx(20 * np.log10(2 / 0.02), rel=1e-5)
