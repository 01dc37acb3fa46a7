"""--push_to_hub of train_autoencoder.py and train_text_to_video.py, through the in-test Hub: the VAE and the pipeline
go up with the project's card (diffusers' `push_to_hub` hook), carrying the run's facts, and load by repo id.
(train_lora.py's push: tests/training/test_train_lora.py.)"""

import pytest
from huggingface_hub import HfApi, ModelCard

from diffusers_spacetime import AutoencoderKLSpacetime, SpacetimeVideoPipeline
from tests.hub.conftest import fake_hub_server, hub  # noqa: F401  (fixtures: the in-test Hub)
from training import train_autoencoder, train_text_to_video

from .conftest import HEIGHT, NUM_FRAMES
from .test_train_autoencoder import _args as autoencoder_args
from .test_train_text_to_video import TINY_VAE
from .test_train_text_to_video import _args as text_to_video_args


def check_project_card(repo_id: str, kind_tag: str) -> ModelCard:
    card = ModelCard.load(repo_id)
    assert card.data.library_name == "diffusers"
    assert card.data.pipeline_tag == "text-to-video"
    assert "diffusers-spacetime" in card.data.tags and kind_tag in card.data.tags
    assert HfApi().model_info(repo_id).pipeline_tag == "text-to-video"
    return card


@pytest.mark.parametrize("script", ["autoencoder", "text_to_video"])
def test_push_needs_a_repo_id(shapes_dir, tmp_path, script):
    parse = autoencoder_args if script == "autoencoder" else text_to_video_args
    extra = [] if script == "autoencoder" else ["--vae_config", TINY_VAE]
    with pytest.raises(ValueError, match="--push_to_hub needs --hub_model_id"):
        parse(shapes_dir, tmp_path, *extra, "--push_to_hub")


def test_autoencoder_pushes_the_vae_with_its_card(shapes_dir, tmp_path, hub):  # noqa: F811
    result = train_autoencoder.main(
        autoencoder_args(
            shapes_dir, tmp_path, "--max_train_steps", "1", "--push_to_hub", "--hub_model_id", "user/shapes-vae",
            "--hub_token", hub.token,
        )
    )  # fmt: skip
    assert result["hub_commit"]
    card = check_project_card("user/shapes-vae", "autoencoder")
    assert "| Optimizer steps | 1 |" in card.text and "Validation PSNR" in card.text
    pulled = AutoencoderKLSpacetime.from_pretrained("user/shapes-vae", cache_dir=hub.cache_dir)
    assert list(pulled.config.latents_mean) == pytest.approx(result["latents_mean"])


def test_text_to_video_pushes_the_pipeline_with_its_card(shapes_dir, tmp_path, hub):  # noqa: F811
    result = train_text_to_video.main(
        text_to_video_args(
            shapes_dir, tmp_path, "--vae_config", TINY_VAE, "--max_train_steps", "2", "--validation_prompts",
            "--push_to_hub", "--hub_model_id", "user/shapes-t2v", "--hub_token", hub.token,
        )
    )  # fmt: skip
    assert result["hub_commit"]
    card = check_project_card("user/shapes-t2v", "pipeline")
    assert "| Optimizer steps | 2 |" in card.text and "Training loss, first / last step" in card.text
    pulled = SpacetimeVideoPipeline.from_pretrained("user/shapes-t2v", cache_dir=hub.cache_dir)
    assert (pulled.config.default_height, pulled.config.default_num_frames) == (HEIGHT, NUM_FRAMES)
