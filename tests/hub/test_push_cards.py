"""The project's model card through diffusers' own Hub routes: `push_to_hub` and `save_pretrained(push_to_hub=True)`
of both pipelines and both models, and LoRA folders whose card `save_lora_weights` writes (against the fake Hub)."""

import pytest
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError
from peft.utils import get_peft_model_state_dict

from diffusers_spacetime import SpacetimeImageToVideoPipeline
from diffusers_spacetime.model_card import card_for, model_card, push_lora_to_hub

from ..pipelines.conftest import make_pipeline
from .test_hub_roundtrip import add_adapter, check_card_metadata, tiny_dit, tiny_vae, tokenizer  # noqa: F401


def test_image_to_video_pipeline_push_writes_the_project_card(hub, tokenizer):  # noqa: F811
    pipe = SpacetimeImageToVideoPipeline.from_pipe(make_pipeline(tokenizer))
    pipe.push_to_hub("user/tiny-i2v", token=hub.token, base_model="user/tiny-pipe")
    card = ModelCard.load("user/tiny-i2v")
    check_card_metadata(card, "pipeline")
    assert card.data.base_model == "user/tiny-pipe" and card.data.base_model_relation == "finetune"
    assert "| `transformer` | SpacetimeDiTModel |" in card.text
    assert HfApi().model_info("user/tiny-i2v").pipeline_tag == "text-to-video"


def test_save_pretrained_push_route_writes_the_project_card(hub, tmp_path):
    vae = tiny_vae()
    vae.save_pretrained(str(tmp_path / "vae"), push_to_hub=True, repo_id="user/saved-vae", token=hub.token)
    card = ModelCard.load("user/saved-vae")
    check_card_metadata(card, "autoencoder")
    assert "This model card has been automatically generated" not in card.text  # not diffusers' generic card
    assert (tmp_path / "vae" / "README.md").read_text() == card.content  # the local folder holds the same card


def test_plain_model_push_replaces_a_foreign_card_and_keeps_base_model(hub):
    api = HfApi(token=hub.token)
    api.create_repo("foreign-card")
    api.upload_file(
        repo_id="user/foreign-card",
        path_or_fileobj=b"---\nlicense: mit\n---\nSomeone's card.\n",
        path_in_repo="README.md",
    )
    dit = tiny_dit()
    dit.push_to_hub("user/foreign-card", token=hub.token)
    card = ModelCard.load("user/foreign-card")
    check_card_metadata(card, "transformer")
    assert "Someone's card" not in card.text and card.data.base_model is None

    dit.push_to_hub("user/tuned-dit", token=hub.token, base_model="user/foreign-card", tags=["shapes"])
    card = ModelCard.load("user/tuned-dit")
    check_card_metadata(card, "transformer")
    assert card.data.base_model == "user/foreign-card" and "shapes" in card.data.tags


def test_pickles_and_unknown_card_facts_are_refused_before_any_upload(hub):
    vae = tiny_vae()
    with pytest.raises(ValueError, match=r"\.safetensors only"):
        vae.push_to_hub("user/never-pickled", token=hub.token, safe_serialization=False)
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("user/never-pickled")
    with pytest.raises(TypeError, match="unexpected keyword argument 'trainig'"):
        vae.push_to_hub("user/typo-vae", token=hub.token, trainig={"steps": 2})
    with pytest.raises(RepositoryNotFoundError):
        HfApi().model_info("user/typo-vae")


def test_cards_are_chosen_by_class(tokenizer):  # noqa: F811
    assert "video-vae" in card_for(tiny_vae(), "user/v").data.tags
    assert "dit" in card_for(tiny_dit(), "user/d").data.tags
    assert "pipeline" in card_for(make_pipeline(tokenizer), "user/p").data.tags
    with pytest.raises(TypeError, match="No model card for dict"):
        card_for({"latent_channels": 4}, "user/x")  # a config-like object is not a VAE
    with pytest.raises(TypeError, match="AutoencoderKLSpacetime or a SpacetimeDiTModel"):
        model_card(make_pipeline(tokenizer), "user/p")


def test_lora_card_written_at_save_carries_base_model_to_the_hub(hub, tokenizer, tmp_path):  # noqa: F811
    pipe = make_pipeline(tokenizer)
    add_adapter(pipe, seed=1)
    layers = get_peft_model_state_dict(pipe.transformer, adapter_name="style")
    metadata = pipe.transformer.peft_config["style"].to_dict()
    pipe.save_lora_weights(tmp_path / "bare", layers, transformer_lora_adapter_metadata=metadata)
    assert not (tmp_path / "bare" / "README.md").exists()  # no base model named: no card
    with pytest.raises(ValueError, match="Pass `base_model`"):
        push_lora_to_hub(tmp_path / "bare", "user/no-base-lora", token=hub.token)

    pipe.save_lora_weights(
        tmp_path / "lora", layers, transformer_lora_adapter_metadata=metadata, base_model="user/lora-base", tags=["x"]
    )
    saved = ModelCard.load(tmp_path / "lora" / "README.md")
    assert saved.data.base_model == "user/lora-base" and "| Rank / alpha | 4 / 8 |" in saved.text

    push_lora_to_hub(tmp_path / "lora", "user/saved-lora", token=hub.token, trigger="sks style")
    card = ModelCard.load("user/saved-lora")
    check_card_metadata(card, "lora")
    assert card.data.base_model == "user/lora-base" and card.data.base_model_relation == "adapter"
    assert 'load_lora_weights(\n    "user/saved-lora"' in card.text and "`sks style`" in card.text
