"""Pushes that carry the project's model card: diffusers' `push_to_hub` hook for the pipelines and models, and
`push_lora_to_hub` for adapter folders.

    pipe.push_to_hub("user/shapes", token=token, training={...}, results={...})  # any pipeline of the package
    vae.push_to_hub("user/shapes-vae", token=token, training={...})  # AutoencoderKLSpacetime, SpacetimeDiTModel
    push_lora_to_hub("runs/lora/lora", "user/shapes-lora", base_model="user/shapes", token=token)

Only `.safetensors` weights travel: a folder holding pickle files is refused before anything is uploaded. Pulling is
plain diffusers (`from_pretrained(repo_id, use_safetensors=True)`, `load_lora_weights(repo_id)`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from diffusers.utils import PushToHubMixin
from huggingface_hub import CommitInfo, ModelCard
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

from .card_template import CARD_TAGS
from .upload import commit_folder, ensure_repo, files_to_upload

PROJECT_TAG = CARD_TAGS[0]


def existing_project_card(repo_id: str, token: str | None = None) -> ModelCard | None:
    """The repo's card when this package wrote it (it carries the `diffusers-spacetime` tag), else None."""
    try:
        card = ModelCard.load(repo_id, token=token)
    except (EntryNotFoundError, RepositoryNotFoundError, FileNotFoundError):
        return None
    return card if PROJECT_TAG in (card.data.tags or []) else None


class SpacetimeHubMixin(PushToHubMixin):
    """diffusers' `push_to_hub` for the package's pipelines and models, writing the project's model card.

    `push_to_hub` takes the card's facts as keyword arguments; diffusers' other route to the Hub,
    `save_pretrained(..., push_to_hub=True)`, ends in `_upload_folder`, overridden here. Both put the project's card
    (chosen by class in `hub.cards.card_for`) in place of diffusers' generic one and refuse pickles. A push without
    card facts keeps a card this package already wrote to the repo, so that the training records on it stay.
    """

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        create_pr: bool = False,
        safe_serialization: bool = True,
        variant: str | None = None,
        subfolder: str | None = None,
        revision: str | None = None,
        **card_kwargs: Any,
    ) -> CommitInfo:
        """Save as safetensors and upload with the project's card; returns the `CommitInfo`.

        Args:
            repo_id (`str`): `namespace/name`, or a bare name for the token's namespace; created if missing.
            commit_message, private, token, create_pr, variant: as in diffusers' `push_to_hub`.
            safe_serialization (`bool`, defaults to True): must be True; pickles are never published.
            subfolder (`str`, *optional*): upload into this folder of the repo, leaving the repo's card alone.
            revision (`str`, *optional*): the branch to commit to, created if missing (default: `main`).
            card_kwargs: the card's facts, [`~hub.cards.CardText`] fields (`training`, `results`, `datasets`,
                `base_model`, `license`, `tags`, `title`, `description`, `limitations`, `usage`).
        """
        from .cards import CardText

        if not safe_serialization:
            raise ValueError("push_to_hub publishes .safetensors only (loading a pickle can run arbitrary code).")
        CardText(**card_kwargs)  # a misspelt card fact fails here, before the repo is created
        repo_id = ensure_repo(repo_id, token=token, private=private, revision=revision)
        card = None if subfolder else self.hub_card(repo_id, token=token, **card_kwargs)
        upload = {"token": token, "create_pr": create_pr, "path_in_repo": subfolder, "revision": revision}
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder, safe_serialization=True, variant=variant)
            return self._publish(folder, repo_id, card, commit_message, **upload)

    def _upload_folder(
        self,
        working_dir: str | os.PathLike,
        repo_id: str,
        token: str | None = None,
        commit_message: str | None = None,
        create_pr: bool = False,
        subfolder: str | None = None,
    ) -> CommitInfo:
        """The last step of diffusers' `save_pretrained(..., push_to_hub=True)`: upload with the project's card."""
        card = None if subfolder else self.hub_card(repo_id, token=token)
        return self._publish(
            working_dir, repo_id, card, commit_message, token=token, create_pr=create_pr, path_in_repo=subfolder
        )

    def _publish(self, folder, repo_id: str, card: ModelCard | None, commit_message: str | None, **upload: Any):
        """Write `card` as the folder's README.md and upload the folder (safetensors only) in one commit."""
        if card is not None:
            card.save(os.path.join(folder, "README.md"))
        return commit_folder(
            folder, repo_id, commit_message=commit_message or f"Upload {type(self).__name__}", **upload
        )

    def hub_card(self, repo_id: str, token: str | None = None, **card_kwargs: Any) -> ModelCard:
        """The card a push writes: the project card already in the repo when no facts are given, else a new one."""
        from .cards import card_for

        existing = None if card_kwargs else existing_project_card(repo_id, token=token)
        return existing or card_for(self, repo_id, **card_kwargs)


def push_lora_to_hub(
    lora_path: str | os.PathLike,
    repo_id: str,
    *,
    base_model: str | None = None,
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    commit_message: str = "Upload LoRA adapter",
    ignore_patterns: Iterable[str] = (),
    **card_kwargs: Any,
) -> CommitInfo:
    """Push a LoRA adapter folder written by `save_lora_weights` (or one `.safetensors` file) with its card.

    Args:
        base_model (`str`, *optional*): the pipeline repo the adapter works on; read from the card that
            `save_lora_weights(..., base_model=...)` wrote into the folder when not given.
        ignore_patterns: files of the folder to leave out (e.g. `"checkpoint-*/*"` for accelerate states, which hold
            pickles and would otherwise make the push refuse).
        card_kwargs: `trigger` and the [`~hub.cards.CardText`] fields of the card.
    """
    from .cards import lora_card

    lora_path = Path(lora_path)
    base_model = base_model or _saved_base_model(lora_path)
    with tempfile.TemporaryDirectory() as staging:
        if lora_path.is_file():
            if not lora_path.name.endswith(".safetensors"):
                raise ValueError(f"Refusing to upload {lora_path.name}: only .safetensors LoRA files are published.")
            shutil.copyfile(lora_path, Path(staging) / lora_path.name)
            folder = Path(staging)
        else:
            folder = lora_path
        uploaded = files_to_upload(folder, ignore_patterns)
        weights = [path for path in uploaded if path.endswith(".safetensors") and "/" not in path]
        if len(weights) != 1:
            raise ValueError(f"Expected one .safetensors LoRA file at the top of {folder}, found {weights}.")
        repo_id = ensure_repo(repo_id, token=token, private=private, revision=revision)
        card = lora_card(folder / weights[0], repo_id, base_model=base_model, **card_kwargs)
        return commit_folder(
            folder,
            repo_id,
            card=card,
            token=token,
            revision=revision,
            commit_message=commit_message,
            ignore_patterns=ignore_patterns,
        )


def _saved_base_model(lora_path: Path) -> str:
    """The `base_model` of the card beside the adapter weights."""
    card_path = (lora_path if lora_path.is_dir() else lora_path.parent) / "README.md"
    base_model = ModelCard.load(card_path).data.base_model if card_path.is_file() else None
    if not base_model:
        raise ValueError(
            f"Pass `base_model` (the pipeline repo the adapter works on): {card_path} does not name one. "
            "`save_lora_weights(..., base_model=...)` writes it there."
        )
    return base_model
