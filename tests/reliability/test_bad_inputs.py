"""Bad inputs get a short ValueError/TypeError naming the argument and the rule (the CLI: one line, exit status != 0).

The cases here complete the ones the component tests already hold (tests/models, tests/pipelines, tests/training):
wrong dtypes and ranks, empty batches, sizes off the compression/patch grid, non-finite numbers, mistyped callbacks
and generators, and the training scripts' flags, checked in `parse_args` before any model loads.
"""

import re

import numpy as np
import pytest
import torch

from diffusers_spacetime import SpacetimeImageToVideoPipeline, cli
from tests.pipelines.conftest import DEFAULT_SIZE, assert_rejects, make_components, make_pipeline
from training import make_shapes_dataset, train_autoencoder, train_lora, train_text_to_video
from training.data import FrameCountBatchSampler, VideoFolderDataset

# ----------------------------------------------------------------------------------------------------------------
# 1. AutoencoderKLSpacetime
# ----------------------------------------------------------------------------------------------------------------

VIDEO = (1, 3, 5, 16, 16)
LATENT = (1, 4, 2, 4, 4)

VAE_CASES = {
    "video int64": ("encode", torch.zeros(VIDEO, dtype=torch.int64), TypeError, r"x must be a floating-point tensor, got dtype torch.int64"),
    "video uint8 frames": ("encode", torch.zeros(VIDEO, dtype=torch.uint8), TypeError, r"got dtype torch.uint8 \(uint8 frames: x.float\(\) / 127.5 - 1\)"),
    "video bool": ("forward", torch.zeros(VIDEO, dtype=torch.bool), TypeError, r"sample must be a floating-point tensor"),
    "video float64 into float32": ("encode", torch.zeros(VIDEO, dtype=torch.float64), TypeError, r"x has dtype torch.float64 but the model computes in torch.float32"),
    "video bfloat16 into float32": ("encode", torch.zeros(VIDEO, dtype=torch.bfloat16), TypeError, r"x has dtype torch.bfloat16 .* x.to\(torch.float32\)"),
    "video empty batch": ("encode", torch.zeros(0, 3, 5, 16, 16), ValueError, r"x must hold at least one video \(batch >= 1\)"),
    "video rank 6": ("encode", torch.zeros(1, 1, 3, 5, 16, 16), ValueError, r"x must be 5D \(batch, channels, num_frames, height, width\)"),
    "latent int32": ("decode", torch.zeros(LATENT, dtype=torch.int32), TypeError, r"z must be a floating-point tensor, got dtype torch.int32"),
    "latent float64 into float32": ("decode", torch.zeros(LATENT, dtype=torch.float64), TypeError, r"z has dtype torch.float64 but the model computes in torch.float32"),
    "latent empty batch": ("decode", torch.zeros(0, 4, 2, 4, 4), ValueError, r"z must hold at least one latent \(batch >= 1\)"),
    "latent numpy": ("decode", np.zeros(LATENT, np.float32), TypeError, r"z must be a torch.Tensor"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(VAE_CASES))
def test_vae_bad_input(vae, name):
    method, value, error, match = VAE_CASES[name]
    with torch.no_grad(), pytest.raises(error, match=match):
        getattr(vae, method)(value)


def test_vae_dtype_check_leaves_autocast_alone(vae):
    # Under autocast a bfloat16 video into a float32 model is the user's intent, not a mistake.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert vae.encode(torch.zeros(VIDEO, dtype=torch.bfloat16)).latent_dist.mean.shape == (1, 4, 2, 4, 4)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"latents_std": "1"}, r"latents_std must be a list of numbers \(one per latent channel\) or None, got '1'"),
        ({"latents_mean": (0.0, "a", 0.0, 0.0)}, r"latents_mean must be a list of numbers"),
        ({"latent_channels": 4.0}, r"latent_channels must be a positive int, got 4.0"),
    ],
)
def test_vae_bad_config(overrides, match):
    from diffusers_spacetime import AutoencoderKLSpacetime

    from .conftest import TINY_VAE

    with pytest.raises(ValueError, match=match):
        AutoencoderKLSpacetime(**{**TINY_VAE, **overrides})


# ----------------------------------------------------------------------------------------------------------------
# 2. SpacetimeDiTModel
# ----------------------------------------------------------------------------------------------------------------

HIDDEN = torch.zeros(2, 4, 3, 4, 4)
TIMESTEP = torch.tensor([500.0, 500.0])
TEXT = torch.zeros(2, 5, 32)

DIT_CASES = {
    "hidden_states int64": ((HIDDEN.long(), TIMESTEP, TEXT), TypeError, r"hidden_states must be a floating-point tensor, got dtype torch.int64"),
    "hidden_states float64": ((HIDDEN.double(), TIMESTEP, TEXT), TypeError, r"hidden_states has dtype torch.float64 but the model computes in torch.float32"),
    "hidden_states rank 6": ((HIDDEN[None], TIMESTEP, TEXT), ValueError, r"hidden_states must be 5-D \(B, C, F, H, W\)"),
    "hidden_states empty batch": ((HIDDEN[:0], TIMESTEP[:0], TEXT[:0]), ValueError, r"hidden_states must have at least one sample, frame, row and column"),
    "hidden_states zero frames": ((HIDDEN[:, :, :0], TIMESTEP, TEXT), ValueError, r"at least one sample, frame, row and column, got shape \(2, 4, 0, 4, 4\)"),
    "encoder_hidden_states float64": ((HIDDEN, TIMESTEP, TEXT.double()), TypeError, r"encoder_hidden_states has dtype torch.float64 but the model computes in torch.float32"),
    "encoder_hidden_states int64": ((HIDDEN, TIMESTEP, TEXT.long()), TypeError, r"encoder_hidden_states must be a floating-point tensor"),
    "encoder_hidden_states rank 2": ((HIDDEN, TIMESTEP, TEXT[0]), ValueError, r"encoder_hidden_states must be \(B, L, text_embed_dim=32\), got shape \(5, 32\)"),
    "encoder_hidden_states None": ((HIDDEN, TIMESTEP, None), TypeError, r"encoder_hidden_states must be a torch.Tensor, got NoneType"),
    "timestep str": ((HIDDEN, "500", TEXT), TypeError, r"timestep must be a number, a list of numbers or a torch.Tensor, got str"),
    "timestep None": ((HIDDEN, None, TEXT), TypeError, r"timestep must be a number, a list of numbers or a torch.Tensor, got NoneType"),
    "timestep bool": ((HIDDEN, torch.tensor([True, False]), TEXT), TypeError, r"timestep must hold real numbers \(noise levels\), got dtype torch.bool"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(DIT_CASES))
def test_dit_bad_input(dit, name):
    args, error, match = DIT_CASES[name]
    with torch.no_grad(), pytest.raises(error, match=match):
        dit(*args)


def test_dit_dtype_check_leaves_autocast_alone(dit):
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert dit(HIDDEN.bfloat16(), TIMESTEP, TEXT.bfloat16()).sample.shape == HIDDEN.shape


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"attention_head_dim": 16.0}, r"attention_head_dim must be even and at least 6 .* got 16.0"),
        ({"out_channels": "4"}, r"out_channels must be a positive int or None \(= in_channels\), got '4'"),
        ({"eps": "1e-6"}, r"eps must be a positive number, got '1e-6'"),
        ({"rope_theta": 0}, r"rope_theta must be a positive number, got 0"),
    ],
)
def test_dit_bad_config(overrides, match):
    from diffusers_spacetime import SpacetimeDiTModel

    from .conftest import TINY_DIT

    with pytest.raises(ValueError, match=match):
        SpacetimeDiTModel(**{**TINY_DIT, **overrides})


# ----------------------------------------------------------------------------------------------------------------
# 3. The pipelines
# ----------------------------------------------------------------------------------------------------------------

EMBEDS = torch.zeros(1, 4, 32)

PIPELINE_CASES = {
    "prompt empty list": ({"prompt": []}, r"`prompt` is an empty list"),
    "prompt list holding None": ({"prompt": ["a", None]}, r"`prompt` must be a str or a list of str"),
    "negative prompt empty list": ({"negative_prompt": []}, r"`negative_prompt` is an empty list"),
    "negative prompts vs prompt_embeds": (
        {"prompt": None, "prompt_embeds": EMBEDS, "negative_prompt": ["x", "y"]},
        r"`negative_prompt` has 2 entries but `prompt_embeds` has batch 1",
    ),
    "negative embeds vs prompt": (
        {"negative_prompt_embeds": torch.zeros(2, 4, 32)},
        r"`negative_prompt_embeds` has batch 2 but `prompt` has 1 entries",
    ),
    "prompt_embeds int64": (
        {"prompt": None, "prompt_embeds": EMBEDS.long()},
        r"`prompt_embeds` must be floating point \(text encoder states\), got dtype torch.int64",
    ),
    "negative embeds wrong width": (
        {"prompt": None, "prompt_embeds": EMBEDS, "negative_prompt_embeds": torch.zeros(1, 4, 16)},
        r"`negative_prompt_embeds` must be a tensor \(batch, tokens, 32\), got \(1, 4, 16\)",
    ),
    "negative embeds inf": (
        {"prompt": None, "prompt_embeds": EMBEDS, "negative_prompt_embeds": torch.full((1, 4, 32), float("inf"))},
        r"`negative_prompt_embeds` contains NaN or infinite values",
    ),
    "mask without embeds": ({"prompt_attention_mask": torch.ones(1, 4)}, r"`prompt_attention_mask` was given without `prompt_embeds`"),
    "latents int64": ({"latents": torch.zeros(1, 4, 2, 8, 8, dtype=torch.int64)}, r"`latents` must be floating point \(unit Gaussian noise\)"),
    "latents inf": ({"latents": torch.full((1, 4, 2, 8, 8), float("inf"))}, r"`latents` contains NaN or infinite values"),
    "guidance NaN": ({"guidance_scale": float("nan")}, r"`guidance_scale` must be a number >= 0 and finite, got nan"),
    "guidance inf": ({"guidance_scale": float("inf")}, r"`guidance_scale` must be a number >= 0 and finite, got inf"),
    "guidance str": ({"guidance_scale": "5"}, r"`guidance_scale` must be a number >= 0"),
    "steps float": ({"num_inference_steps": 2.0}, r"`num_inference_steps` must be a positive int, got 2.0"),
    "steps bool": ({"num_inference_steps": True}, r"`num_inference_steps` must be a positive int, got True"),
    "height negative": ({"height": -8}, r"`height` must be a positive int, got -8"),
    "width zero": ({"width": 0}, r"`width` must be a positive int, got 0"),
    "num_frames float": ({"num_frames": 5.0}, r"`num_frames` must be 1 \+ k \* 4 .* got 5.0"),
    "num_frames negative": ({"num_frames": -3}, r"`num_frames` must be 1 \+ k \* 4 .* got -3"),
    "max_sequence_length zero": ({"max_sequence_length": 0}, r"`max_sequence_length` must be a positive int, got 0"),
    "output_type None": ({"output_type": None}, r"`output_type` must be one of \['np', 'pt', 'pil', 'latent'\], got None"),
    "generator is a seed": ({"generator": 0}, r"`generator` must be a torch.Generator or a list of them, got int"),
    "callback not callable": ({"callback_on_step_end": 3}, r"`callback_on_step_end` must be callable"),
    "attention_kwargs not a dict": ({"attention_kwargs": [("scale", 1.0)]}, r"`attention_kwargs` must be a dict or None, got list"),
}  # fmt: skip


@pytest.fixture(scope="module")
def pipe(tokenizer):
    return make_pipeline(tokenizer)


@pytest.mark.parametrize("name", list(PIPELINE_CASES))
def test_pipeline_bad_input(pipe, name):
    assert_rejects(pipe, *PIPELINE_CASES[name])


IMAGE = np.zeros((32, 32, 3), np.uint8)

I2V_CASES = {
    "image int64 tensor": ({"image": torch.zeros(3, 32, 32, dtype=torch.int64)}, r"`image` arrays must be uint8 or floats in \[0, 1\], got dtype int64"),
    "image NaN": ({"image": np.full((32, 32, 3), np.nan, np.float32)}, r"`image` float values must lie in \[0, 1\], got \[nan, nan\]"),
    "image bool": ({"image": np.zeros((32, 32, 3), bool)}, r"got dtype bool"),
    "video empty list": ({"video": [], "num_frames": 9}, r"`video` has 0 frames, fewer than `num_conditioning_frames` \(5\)"),
    "num_conditioning_frames bool": (
        {"video": np.zeros((9, 32, 32, 3), np.uint8), "num_frames": 13, "num_conditioning_frames": True},
        r"`num_conditioning_frames` must be 1 \+ k \* 4 .* got True",
    ),
    "guidance NaN": ({"image": IMAGE, "guidance_scale": float("nan")}, r"`guidance_scale` must be a number >= 0 and finite"),
    "latents int64": ({"image": IMAGE, "latents": torch.zeros(1, 4, 2, 8, 8, dtype=torch.int64)}, r"`latents` must be floating point"),
}  # fmt: skip


@pytest.fixture(scope="module")
def i2v(tokenizer):
    pipe = SpacetimeImageToVideoPipeline(**make_components(tokenizer), **DEFAULT_SIZE)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", list(I2V_CASES))
def test_image_to_video_bad_input(i2v, name):
    assert_rejects(i2v, *I2V_CASES[name])


# ----------------------------------------------------------------------------------------------------------------
# 4. The CLI: one line on stderr, exit status 1 (2 for argparse's own errors), no traceback, no output file
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_pipeline(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("cli") / "tiny-pipeline"
    make_pipeline(tokenizer, default_height=16, default_width=16, default_num_frames=5).save_pretrained(path)
    return path


CLI_CASES = {
    "negative guidance": (["--guidance-scale", "-1"], 1, r"`guidance_scale` must be a number >= 0"),
    "NaN guidance": (["--guidance-scale", "nan"], 1, r"`guidance_scale` must be a number >= 0 and finite, got nan"),
    "negative steps": (["--steps", "-2"], 1, r"`num_inference_steps` must be a positive int, got -2"),
    "width off the grid": (["--width", "20"], 1, r"`width` \(20\) must be divisible by 8 .* nearest valid values: 16 or 24"),
    "zero height": (["--height", "0"], 1, r"`height` must be a positive int, got 0"),
    "zero frames": (["--num-frames", "0"], 1, r"`num_frames` must be 1 \+ k \* 4"),
    "zero fps": (["--fps", "0"], 1, r"--fps must be positive, got 0"),
    "unknown device": (["--device", "bogus"], 1, r"--device 'bogus'"),
    "output is a folder": (["--output", "{tmp}/folder.mp4"], 1, r"--output '.*folder.mp4': a folder of that name exists"),
    "gif with a gif output": (["--output", "{tmp}/x.gif", "--gif"], 1, r"--gif adds a .gif beside an .mp4 output"),
    "output without suffix": (["--output", "{tmp}/video"], 1, r"--output '.*video': use a .mp4 or .gif file name"),
    "empty scheduler name": (["--scheduler", ""], 1, r"unknown --scheduler ''; choose one of: euler"),
    "steps not an int": (["--steps", "abc"], 2, r"argument --steps: invalid int value: 'abc'"),
    "unknown dtype": (["--dtype", "float64"], 2, r"argument --dtype: invalid choice: 'float64'"),
    "unknown resize mode": (["--resize-mode", "stretch"], 2, r"argument --resize-mode: invalid choice: 'stretch'"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli_bad_input(saved_pipeline, tmp_path, capsys, name):
    arguments, status, message = CLI_CASES[name]
    (tmp_path / "folder.mp4").mkdir()
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    base = ["a prompt", "--model", str(saved_pipeline), "--steps", "1", "--output", str(tmp_path / "out.mp4")]
    try:
        code = cli.main(base + arguments)
    except SystemExit as exit_:  # argparse exits by itself, after printing usage and one error line
        code = exit_.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == status, err
    assert "Traceback" not in err
    assert lines[-1].startswith("spacetime-generate: error: ") and re.search(message, lines[-1]), lines[-1]
    assert sum("error:" in line for line in lines) == 1, err
    assert not (tmp_path / "out.mp4").exists()


# ----------------------------------------------------------------------------------------------------------------
# 5. The dataset loader
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    make_shapes_dataset.generate_dataset(folder, 2, seed=0, height=16, width=16, num_frames=5)
    return folder


DATASET_CASES = {
    "num_frames float": ({"num_frames": 5.0}, TypeError, r"num_frames must be an int, got 5.0"),
    "height float": ({"height": 16.5}, TypeError, r"height must be an int, got 16.5"),
    "num_frames zero": ({"num_frames": 0}, ValueError, r"num_frames, height and width must be positive, got 0, 16, 16"),
    "frame_stride zero": ({"frame_stride": 0}, ValueError, r"frame_stride must be at least 1, got 0"),
    "target_fps negative": ({"target_fps": -8.0}, ValueError, r"target_fps must be positive, got -8.0"),
    "folder is a file": ({"data_dir": "metadata.jsonl"}, ValueError, r"Data folder '.*metadata.jsonl' does not exist"),
    "clips too short for num_frames": ({"num_frames": 50}, ValueError, r"No usable file .* skipped 2 \(2 too short\)"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(DATASET_CASES))
def test_dataset_bad_argument(tiny_clips, name):
    overrides, error, match = DATASET_CASES[name]
    arguments = {"num_frames": 5, "height": 16, "width": 16, **overrides}
    data_dir = tiny_clips / arguments.pop("data_dir", "")
    with pytest.raises(error, match=match):
        VideoFolderDataset(data_dir, **arguments)


def test_metadata_row_that_is_not_an_object(tmp_path):
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.mp4"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"metadata.jsonl:2 has no 'file_name'"):
        VideoFolderDataset(tmp_path, num_frames=5, height=16, width=16)


def test_batch_sampler_and_split_bad_sizes(tiny_clips):
    with pytest.raises(ValueError, match=r"batch_size must be at least 1, got 0"):
        FrameCountBatchSampler([5, 5], batch_size=0)
    dataset = VideoFolderDataset(tiny_clips, num_frames=5, height=16, width=16)
    with pytest.raises(ValueError, match=r"num_holdout must be in \[1, 1\], got 2"):
        dataset.split(2)


# ----------------------------------------------------------------------------------------------------------------
# 6. The training scripts' flags: ValueError naming the flag, from parse_args, before any model loads
# ----------------------------------------------------------------------------------------------------------------

# flag values that argparse accepts but training cannot use: parse_args rejects them, where they would otherwise fail
# late (a ZeroDivisionError after the first step for --checkpointing_steps 0) or silently (--max_train_steps 0 falling
# back to epochs, --checkpoints_total_limit 0 deleting every checkpoint as it is written)
SHARED_FLAG_CASES = {
    "--train_batch_size 0": (["--train_batch_size", "0"], r"--train_batch_size must be at least 1, got 0"),
    "--gradient_accumulation_steps 0": (["--gradient_accumulation_steps", "0"], r"--gradient_accumulation_steps must be at least 1"),
    "--max_train_steps 0": (["--max_train_steps", "0"], r"--max_train_steps must be at least 1, got 0"),
    "--num_train_epochs 0": (["--num_train_epochs", "0"], r"--num_train_epochs must be at least 1, got 0"),
    "--checkpointing_steps 0": (["--checkpointing_steps", "0"], r"--checkpointing_steps must be at least 1, got 0"),
    "--checkpoints_total_limit 0": (["--checkpoints_total_limit", "0"], r"--checkpoints_total_limit must be at least 1, got 0"),
    "--learning_rate negative": (["--learning_rate=-1e-4"], r"--learning_rate must be a positive number, got -0.0001"),
    "--learning_rate nan": (["--learning_rate", "nan"], r"--learning_rate must be a positive number, got nan"),
    "--lr_warmup_steps negative": (["--lr_warmup_steps", "-1"], r"--lr_warmup_steps must be 0 or more, got -1"),
    "--lr_scheduler unknown": (["--lr_scheduler", "cosine_annealing"], r"--lr_scheduler must be one of \['linear', 'cosine', .*got 'cosine_annealing'"),
    "--adam_epsilon negative": (["--adam_epsilon", "-1"], r"--adam_epsilon must be 0 or more, got -1.0"),
    "--max_grad_norm zero": (["--max_grad_norm", "0"], r"--max_grad_norm must be a positive number, got 0.0"),
    "--num_frames zero": (["--num_frames", "0"], r"--num_frames must be at least 1, got 0"),
    "--width negative": (["--width", "-16"], r"--width must be at least 1, got -16"),
    "--frame_stride zero": (["--frame_stride", "0"], r"--frame_stride must be at least 1, got 0"),
    "--target_fps zero": (["--target_fps", "0"], r"--target_fps must be a positive number, got 0.0"),
    "--dataloader_num_workers negative": (["--dataloader_num_workers", "-1"], r"--dataloader_num_workers must be 0 or more, got -1"),
    "--data_dir missing": (["--data_dir", "{tmp}/no_such_folder"], r"--data_dir '.*no_such_folder' is not a folder"),
}  # fmt: skip

SCRIPT_FLAG_CASES = {
    "autoencoder --max_train_time negative": ("autoencoder", ["--max_train_time", "-5"], r"--max_train_time must be a positive number, got -5.0"),
    "autoencoder --validation_steps 0": ("autoencoder", ["--validation_steps", "0"], r"--validation_steps must be at least 1, got 0"),
    "autoencoder --adam_beta1 1": ("autoencoder", ["--adam_beta1", "1.0"], r"--adam_beta1 must be in \[0, 1\), got 1.0"),
    "autoencoder --kl_weight negative": ("autoencoder", ["--kl_weight", "-1"], r"--kl_weight must be 0 or more, got -1.0"),
    "autoencoder --num_validation_clips 0": ("autoencoder", ["--num_validation_clips", "0"], r"--num_validation_clips must be at least 1 without --validation_data_dir"),
    "autoencoder --stats_num_samples 0": ("autoencoder", ["--stats_num_samples", "0"], r"--stats_num_samples must be at least 1, got 0"),
    "text_to_video --flow_shift 0": ("text_to_video", ["--flow_shift", "0"], r"--flow_shift must be a positive number, got 0.0"),
    "text_to_video --ema_decay 2": ("text_to_video", ["--ema_decay", "2"], r"--ema_decay must be in \[0, 1\], got 2.0"),
    "text_to_video --max_sequence_length 0": ("text_to_video", ["--max_sequence_length", "0"], r"--max_sequence_length must be at least 1, got 0"),
    "text_to_video --validation_inference_steps 0": ("text_to_video", ["--validation_inference_steps", "0"], r"--validation_inference_steps must be at least 1"),
    "text_to_video --validation_guidance_scale negative": ("text_to_video", ["--validation_guidance_scale", "-2"], r"--validation_guidance_scale must be 0 or more"),
    "lora --adam_weight_decay negative": ("lora", ["--adam_weight_decay", "-0.1"], r"--adam_weight_decay must be 0 or more, got -0.1"),
}  # fmt: skip


def _parse(script: str, data_dir, tmp_path, extra: list[str]):
    common = ["--data_dir", str(data_dir), "--output_dir", str(tmp_path / "run")]
    if script == "autoencoder":
        return train_autoencoder.parse_args(common + extra)
    if script == "text_to_video":
        return train_text_to_video.parse_args(common + ["--vae_config", "training/configs/vae_tiny.json", *extra])
    return train_lora.parse_args(common + ["--pretrained_model_name_or_path", str(tmp_path), *extra])


@pytest.mark.parametrize("script", ["autoencoder", "text_to_video", "lora"])
@pytest.mark.parametrize("name", list(SHARED_FLAG_CASES))
def test_training_flag_rejected_by_every_script(tiny_clips, tmp_path, script, name):
    extra, match = SHARED_FLAG_CASES[name]
    extra = [value.replace("{tmp}", str(tmp_path)) for value in extra]
    with pytest.raises(ValueError, match=match):
        _parse(script, tiny_clips, tmp_path, extra)


@pytest.mark.parametrize("name", list(SCRIPT_FLAG_CASES))
def test_training_script_flag(tiny_clips, tmp_path, name):
    script, extra, match = SCRIPT_FLAG_CASES[name]
    with pytest.raises(ValueError, match=match):
        _parse(script, tiny_clips, tmp_path, extra)


def test_good_flags_still_parse(tiny_clips, tmp_path):
    for script in ("autoencoder", "text_to_video", "lora"):
        args = _parse(script, tiny_clips, tmp_path, ["--checkpoints_total_limit", "1", "--lr_warmup_steps", "0"])
        assert args.checkpoints_total_limit == 1


def test_text_to_video_size_off_the_grid_names_the_flag(tiny_clips, tmp_path):
    # The VAE and patch sizes are known once the models are built: main checks before touching any data.
    args = _parse("text_to_video", tiny_clips, tmp_path, ["--num_frames", "5", "--height", "20", "--width", "16"])
    args.report_to = "none"
    with pytest.raises(ValueError, match=r"--height must be a multiple of 8 \(VAE 4 x patch 2\), got 20"):
        train_text_to_video.main(args)
