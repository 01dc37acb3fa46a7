"""train_text_to_video.py and encode_prompts.py with other libraries' text encoders (T5, UMT5, CLIP, BERT) and video
VAEs (Wan, LTX-Video, CogVideoX, Spacetime): a few steps each, and the saved pipeline loads and generates."""

import json

import pytest
import torch

from diffusers_spacetime import SpacetimeVideoPipeline
from tests.tiny_models import LATENT_CHANNELS, TEXT_DIM, make_vae, save_text_encoder
from training import encode_prompts, train_text_to_video

from .conftest import HEIGHT, NUM_FRAMES, WIDTH

# Each text encoder and each VAE once, in four runs.
PAIRS = (("t5", "wan"), ("umt5", "ltx"), ("clip", "cogvideox"), ("bert", "spacetime"))
VAE_CLASS_NAMES = {
    "wan": "AutoencoderKLWan",
    "ltx": "AutoencoderKLLTXVideo",
    "cogvideox": "AutoencoderKLCogVideoX",
    "spacetime": "AutoencoderKLSpacetime",
}


@pytest.fixture(scope="module")
def transformer_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("configs") / "dit.json"
    config = {"in_channels": LATENT_CHANNELS, "patch_size": [1, 2, 2], "num_attention_heads": 2,
              "attention_head_dim": 16, "num_layers": 1, "ffn_dim": 32, "text_embed_dim": TEXT_DIM}  # fmt: skip
    path.write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("text_kind, vae_kind", PAIRS)
def test_a_few_steps_with_each_text_encoder_and_vae(text_kind, vae_kind, shapes_dir, transformer_config, tmp_path):
    text_dir = save_text_encoder(text_kind, tmp_path / "text")
    vae_dir = tmp_path / "vae"
    make_vae(vae_kind).save_pretrained(vae_dir)
    result = train_text_to_video.main(
        train_text_to_video.parse_args(
            ["--data_dir", str(shapes_dir), "--output_dir", str(tmp_path / "run"), "--num_frames", str(NUM_FRAMES),
             "--height", str(HEIGHT), "--width", str(WIDTH), "--train_batch_size", "2", "--lr_warmup_steps", "1",
             "--report_to", "none", "--max_train_steps", "2", "--validation_prompts",
             "--text_encoder_path", str(text_dir), "--pretrained_vae_path", str(vae_dir),
             "--transformer_config", str(transformer_config)]
        )
    )  # fmt: skip
    assert len(result["losses"]) == 2 and all(torch.isfinite(torch.tensor(result["losses"])))
    index = json.loads((tmp_path / "run" / "pipeline" / "model_index.json").read_text())
    assert index["vae"][1] == VAE_CLASS_NAMES[vae_kind]
    pipe = SpacetimeVideoPipeline.from_pretrained(result["pipeline_path"])
    pipe.set_progress_bar_config(disable=True)
    frames = pipe("a red circle moves from left to right", num_inference_steps=2, output_type="np").frames
    assert frames.shape == (1, NUM_FRAMES, HEIGHT, WIDTH, 3)


def test_mismatched_widths_name_the_config_key(shapes_dir, tmp_path):
    vae_dir = tmp_path / "vae"
    make_vae("wan").save_pretrained(vae_dir)
    args = train_text_to_video.parse_args(
        ["--data_dir", str(shapes_dir), "--output_dir", str(tmp_path / "run"), "--num_frames", str(NUM_FRAMES),
         "--height", str(HEIGHT), "--width", str(WIDTH), "--report_to", "none", "--max_train_steps", "1",
         "--text_encoder_path", str(save_text_encoder("t5", tmp_path / "text")), "--pretrained_vae_path",
         str(vae_dir)]
    )  # fmt: skip
    # dit_tiny.json: 4 latent channels (the Wan VAE has 4 too) and 384-d text (this T5 is 32-d)
    with pytest.raises(
        ValueError, match=r"text encoder's hidden size is 32 but the transformer's text_embed_dim is 384"
    ):
        train_text_to_video.main(args)


def test_a_vae_folder_of_another_class_is_refused(tmp_path):
    from diffusers import AutoencoderKL

    AutoencoderKL(block_out_channels=(8,), norm_num_groups=2, latent_channels=4).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"holds a AutoencoderKL; it must be one of AutoencoderKLSpacetime"):
        train_text_to_video.load_vae(str(tmp_path))


def test_encode_prompts_with_a_t5_checkpoint(shapes_dir, tmp_path):
    text_dir = save_text_encoder("t5", tmp_path / "text")
    output = encode_prompts.main(
        encode_prompts.parse_args(
            ["--data_dir", str(shapes_dir), "--text_encoder_path", str(text_dir), "--output", str(tmp_path / "e.st")]
        )
    )
    rows, embeds, mask = encode_prompts.load_prompt_embeds(output)
    assert "" in rows and len(rows) > 1 and embeds.shape[-1] == TEXT_DIM and mask.shape == embeds.shape[:2]


def test_load_vae_reads_a_pipeline_folders_subfolder(tmp_path):
    make_vae("wan").save_pretrained(tmp_path / "vae")  # as in a diffusers pipeline folder
    assert type(train_text_to_video.load_vae(str(tmp_path), subfolder="vae")).__name__ == "AutoencoderKLWan"
