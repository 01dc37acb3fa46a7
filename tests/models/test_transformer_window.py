"""`SpacetimeDiTModel(attention_span="window")` at tiny size: a window over the whole clip is spacetime attention, a
one-frame window is the frame span, nothing outside the window reaches a patch, FlexAttention block masks and plain
SDPA give the same outputs, spans mix per layer, bad windows raise, and the window survives save/load."""

import json

import pytest
import torch

from diffusers_spacetime import SpacetimeDiTModel
from diffusers_spacetime.models.transformer_spacetime import SpacetimeAttentionWindow, _window_keep
from tests.models.test_transformer_spacetime import CONFIG, TEXT_DIM, make_model

# Latent (F, H, W) = (7, 10, 12) -> a (7, 5, 6) patch grid.
NUM_FRAMES, HEIGHT, WIDTH = 7, 10, 12


def make_inputs(batch_size=2, num_frames=NUM_FRAMES, height=HEIGHT, width=WIDTH, seed=1):
    generator = torch.Generator().manual_seed(seed)
    hidden_states = torch.randn(batch_size, 4, num_frames, height, width, generator=generator)
    text = torch.randn(batch_size, 5, TEXT_DIM, generator=generator)
    return hidden_states, torch.linspace(100.0, 900.0, batch_size), text


def run(model, hidden_states, timestep, text):
    with torch.no_grad():
        return model(hidden_states, timestep, text).sample


@pytest.fixture
def flex_backend():
    """Runs the test under diffusers' "flex" backend; sets native back (0.42 makes a backend process-wide)."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    yield
    SpacetimeDiTModel(**CONFIG).set_attention_backend("native")


@pytest.mark.parametrize("window", [(None, None, None), (13, 9, 11), (99, None, 99)])
def test_window_over_the_whole_clip_is_spacetime_attention(window):
    inputs = make_inputs()
    spacetime = run(make_model(), *inputs)
    windowed = run(make_model(attention_span="window", attention_window=window), *inputs)
    torch.testing.assert_close(windowed, spacetime, rtol=0, atol=0)


def test_one_frame_window_is_the_frame_span():
    inputs = make_inputs()
    frame = run(make_model(attention_span="frame"), *inputs)
    windowed = run(make_model(attention_span="window", attention_window=(1, None, None)), *inputs)
    torch.testing.assert_close(windowed, frame, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "window, reach",
    [((3, None, None), (2, None, None)), ((5, 3, None), (4, 2, None)), ((1, 3, 3), (0, 2, 2))],
)
def test_nothing_outside_the_window_reaches_a_patch(window, reach):
    # Two windowed layers: a patch sees 2 * (size // 2) patches away along each axis, and nothing further.
    model = make_model(attention_span="window", attention_window=window)
    hidden_states, timestep, text = make_inputs()
    frame, row, column = 1, 0, 0  # the perturbed patch on the (7, 5, 6) grid
    perturbed = hidden_states.clone()
    perturbed[:, :, frame, 2 * row : 2 * row + 2, 2 * column : 2 * column + 2] += 10.0
    change = (run(model, perturbed, timestep, text) - run(model, hidden_states, timestep, text)).abs()
    change = change.amax(dim=(0, 1)).unflatten(1, (5, 2)).unflatten(3, (6, 2)).amax(dim=(2, 4))  # (F', H', W')
    frames, rows, columns = torch.meshgrid(torch.arange(7), torch.arange(5), torch.arange(6), indexing="ij")
    inside = torch.ones_like(change, dtype=torch.bool)
    for coordinate, centre, axis_reach in zip((frames, rows, columns), (frame, row, column), reach):
        if axis_reach is not None:
            inside &= (coordinate - centre).abs() <= axis_reach
    assert change[~inside].max() == 0
    assert change[inside].min() > 0


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_block_mask_and_sdpa_give_the_same_outputs(flex_backend):
    inputs = make_inputs()
    # SDPA routes: gathered frames, gathered frames with a spatial mask, dense mask (every frame, limited in space).
    for window in [(3, None, None), (3, 3, 5), (None, 3, 5)]:
        model = make_model(attention_span="window", attention_window=window)
        sdpa = run(model, *inputs)
        model.set_attention_backend("flex")
        assert model._attention_window((7, 5, 6), torch.device("cpu")).block_mask is not None
        flex = run(model, *inputs)
        model.set_attention_backend("native")
        torch.testing.assert_close(flex, sdpa, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window", [(3, None, None), (3, 3, None), (5, 3, 5)])
def test_gathered_frames_equal_a_dense_mask(window):
    # The gathered-frames route against the same window written as a dense (1, 1, N, N) mask, one attention call.
    grid, half = (7, 5, 6), tuple(None if size is None else size // 2 for size in window)
    model = make_model(attention_span="window", attention_window=window)
    gathered = model._attention_window(grid, torch.device("cpu"))
    assert gathered.mask.ndim in (2, 3)  # the gathered route, not the dense one
    index = torch.arange(7 * 5 * 6)
    dense = SpacetimeAttentionWindow(
        grid, half, mask=_window_keep(index[:, None], index[None], grid, half)[None, None]
    )
    query, key, value = torch.randn(3, 2, 7 * 5 * 6, 2, 8).unbind(0)
    torch.testing.assert_close(
        gathered.attend(query, key, value, None), dense.attend(query, key, value, None), rtol=1e-5, atol=1e-6
    )


def test_spans_mix_per_layer_with_the_same_weights():
    inputs = make_inputs()
    spacetime = make_model()
    mixed = make_model(layer_attention_spans=("spacetime", "window"), attention_window=(1, None, None))
    assert mixed.state_dict().keys() == spacetime.state_dict().keys()  # a trained model switches spans as it is
    all_spacetime = make_model(layer_attention_spans=("spacetime", "spacetime"), attention_span="frame")
    torch.testing.assert_close(run(all_spacetime, *inputs), run(spacetime, *inputs), rtol=0, atol=0)
    # A one-frame window in the last layer: the same as the frame span there.
    frame_last = make_model(layer_attention_spans=("spacetime", "frame"))
    torch.testing.assert_close(run(mixed, *inputs), run(frame_last, *inputs), rtol=1e-6, atol=1e-6)
    assert (run(mixed, *inputs) - run(spacetime, *inputs)).abs().max() > 1e-3


def test_window_trains_with_gradient_checkpointing():
    model = make_model(attention_span="window", attention_window=(3, 3, None)).train()
    hidden_states, timestep, text = make_inputs()
    model(hidden_states, timestep, text).sample.square().mean().backward()
    plain = [parameter.grad.clone() for parameter in model.parameters()]
    model.zero_grad()
    model.enable_gradient_checkpointing()
    model(hidden_states, timestep, text).sample.square().mean().backward()
    for expected, parameter in zip(plain, model.parameters()):
        torch.testing.assert_close(parameter.grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"attention_window": (2, None, None)}, "attention_window must be"),
        ({"attention_window": (0, None, None)}, "attention_window must be"),
        ({"attention_window": (3, None)}, "attention_window must be"),
        ({"attention_window": (3.0, None, None)}, "attention_window must be"),
        ({"attention_window": (True, None, None)}, "attention_window must be"),
        ({"attention_window": 3}, "attention_window must be"),
        ({"layer_attention_spans": ("window",)}, "layer_attention_spans must give"),
        ({"layer_attention_spans": ("window", "local")}, "layer_attention_spans must give"),
    ],
)
def test_bad_window_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        SpacetimeDiTModel(**{**CONFIG, "attention_span": "window", **overrides})


def test_window_survives_save_and_load(tmp_path):
    model = make_model(attention_window=(3, 3, None), layer_attention_spans=("window", "spacetime"))
    model.save_pretrained(tmp_path)
    loaded = SpacetimeDiTModel.from_pretrained(tmp_path).eval()
    assert loaded.attention_window == (3, 3, None)
    assert loaded.layer_spans == ("window", "spacetime")
    inputs = make_inputs()
    torch.testing.assert_close(run(loaded, *inputs), run(model, *inputs), rtol=0, atol=0)


def test_configs_without_window_keys_load_unchanged(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path)
    config_path = tmp_path / "config.json"
    config = config_path.read_text()
    for key in ("attention_window", "layer_attention_spans"):
        assert key in config
    stripped = {k: v for k, v in json.loads(config).items() if k not in ("attention_window", "layer_attention_spans")}
    config_path.write_text(json.dumps(stripped))
    loaded = SpacetimeDiTModel.from_pretrained(tmp_path).eval()
    assert loaded.layer_spans == ("spacetime", "spacetime")
    inputs = make_inputs()
    torch.testing.assert_close(run(loaded, *inputs), run(model, *inputs), rtol=0, atol=0)


def test_a_saved_spacetime_model_switches_to_windows_at_load(tmp_path):
    make_model().save_pretrained(tmp_path)
    switched = SpacetimeDiTModel.from_pretrained(
        tmp_path, attention_span="window", attention_window=(1, None, None), layer_attention_spans=None
    ).eval()
    assert switched.layer_spans == ("window", "window")
    frame = make_model(attention_span="frame")
    inputs = make_inputs()
    torch.testing.assert_close(run(switched, *inputs), run(frame, *inputs), rtol=1e-6, atol=1e-6)


def test_window_compiles_and_runs_under_caches():
    from diffusers import FirstBlockCacheConfig

    model = make_model(attention_span="window", attention_window=(3, 3, None))
    inputs = make_inputs(batch_size=1, num_frames=3, height=4, width=6)
    eager = run(model, *inputs)
    model.enable_cache(FirstBlockCacheConfig(threshold=0.05))
    with model.cache_context("cond"):
        torch.testing.assert_close(run(model, *inputs), eager)
    model.disable_cache()
    model.compile_repeated_blocks(fullgraph=True)
    torch.testing.assert_close(run(model, *inputs), eager, rtol=1e-4, atol=1e-5)
