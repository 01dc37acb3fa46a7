"""Uploading a saved folder to the Hub in one commit: safetensors only, with the card as the repo's README."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Iterable
from pathlib import Path

from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi, ModelCard

# Suffixes of files that torch.load / pickle would deserialise. They never leave the machine through these helpers.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")


def files_to_upload(folder: str | os.PathLike, ignore_patterns: Iterable[str] = ()) -> list[str]:
    """Files under `folder` (POSIX paths relative to it) minus `ignore_patterns`; refuses pickles.

    Raises:
        `ValueError`: if any remaining file is a pickle (`.bin`, `.pt`, `.pth`, `.pkl`, `.pickle`, `.ckpt`,
            `.joblib`), or if no `.safetensors` file is left (nothing worth publishing).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder.")
    patterns = [*ignore_patterns, ".git/*", ".cache/*"]
    paths = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    paths = [path for path in paths if not any(fnmatch.fnmatch(path, pattern) for pattern in patterns)]
    pickles = [path for path in paths if path.lower().endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise ValueError(
            f"Refusing to upload pickle files from {folder}: {', '.join(pickles)}. Only .safetensors weights are "
            "published (loading a pickle can run arbitrary code). Save with `safe_serialization=True`, or exclude "
            "training state such as `checkpoint-*/*` with `ignore_patterns`."
        )
    if not any(path.endswith(".safetensors") for path in paths):
        raise ValueError(f"No .safetensors weights in {folder}: nothing to publish.")
    return paths


def ensure_repo(repo_id: str, *, token: str | None, private: bool | None, revision: str | None = None) -> str:
    """Create the repo (and branch) if missing; returns the full `namespace/name` (a bare name gets the user's)."""
    api = HfApi(token=token)
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return repo_id


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    card: ModelCard | None = None,
    path_in_repo: str | None = None,
    ignore_patterns: Iterable[str] = (),
    commit_message: str = "Upload diffusers-spacetime weights",
    token: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """Upload a saved folder (safetensors only) and its card in one commit; returns the `CommitInfo`.

    Creates the repo if needed (`private` applies then) and the branch `revision` if it does not exist. The card
    goes to the repo root as `README.md`; with `path_in_repo` the files go into that subfolder and no card is written.
    """
    files_to_upload(folder, ignore_patterns)  # refuse pickles before the repo is created
    repo_id = ensure_repo(repo_id, token=token, private=private, revision=revision)
    return commit_folder(
        folder,
        repo_id,
        card=card,
        path_in_repo=path_in_repo,
        ignore_patterns=ignore_patterns,
        commit_message=commit_message,
        token=token,
        revision=revision,
        create_pr=create_pr,
    )


def commit_folder(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    card: ModelCard | None = None,
    path_in_repo: str | None = None,
    ignore_patterns: Iterable[str] = (),
    commit_message: str = "Upload diffusers-spacetime weights",
    token: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> CommitInfo:
    """[`push_folder_to_hub`] into a repo (and branch) that exists already: the callers that made it with
    [`ensure_repo`] to learn its full id do not create it twice."""
    paths = files_to_upload(folder, ignore_patterns)
    prefix = f"{path_in_repo.strip('/')}/" if path_in_repo else ""
    with_card = card is not None and not prefix
    operations = [
        CommitOperationAdd(path_in_repo=prefix + path, path_or_fileobj=str(Path(folder) / path))
        for path in paths
        if not (with_card and path == "README.md")
    ]
    if with_card:
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode("utf-8")))
    return HfApi(token=token).create_commit(
        repo_id, operations=operations, commit_message=commit_message, revision=revision, create_pr=create_pr
    )
