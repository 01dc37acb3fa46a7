"""Whether a string given for a model, pipeline or LoRA names a local path or a Hub repo."""

from __future__ import annotations

import os

from huggingface_hub.utils import HFValidationError, validate_repo_id


def is_hub_id(reference: str) -> bool:
    """Whether `reference` is a Hub repo id (`namespace/name`) rather than a local path.

    Anything that exists on disk, starts like a path (`.`, `/`, `~`), names a weight file, or is not exactly
    `namespace/name` is local: a bare word is a missing folder, not a repo of the logged-in user.
    """
    if os.path.exists(reference) or reference.startswith((".", "/", "~")):
        return False
    if reference.endswith((".safetensors", ".bin")) or reference.count("/") != 1:
        return False
    try:
        validate_repo_id(reference)
    except HFValidationError:
        return False
    return True
