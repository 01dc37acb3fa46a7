"""Fixtures that point the real `huggingface_hub` client at the in-test fake Hub (tests/hub/fake_hub.py).

`huggingface_hub` and diffusers read their settings (endpoint, cache, offline and xet switches) into module constants
at import, so setting environment variables is not enough in this process: the fixture patches the constants as well,
and sets the variables for subprocesses (`hub.env`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from .fake_hub import FakeHub

TOKEN = "hf_fake_write_token"  # the write token of user "user"
OTHER_TOKEN = "hf_fake_other_token"  # a valid token of another user, "other"
USER = "user"


@dataclass
class HubSession:
    """What a test needs to talk to the fake Hub: the server, a write token, and a fresh cache."""

    server: FakeHub
    endpoint: str
    token: str
    user: str
    home: Path
    cache_dir: Path
    env: dict[str, str]  # environment for subprocesses that should use the same fake Hub and cache

    def fresh_cache(self, name: str) -> Path:
        """Another empty cache folder, for "pull into a fresh cache" checks."""
        path = self.home.parent / f"cache_{name}"
        path.mkdir(parents=True, exist_ok=False)
        return path


@pytest.fixture(scope="session")
def fake_hub_server():
    """One server for the session; repos of different tests do not collide as long as their names differ."""
    with FakeHub(users={TOKEN: USER, OTHER_TOKEN: "other"}, orgs={"spacetime-org": [USER]}) as server:
        yield server


@pytest.fixture
def hub(fake_hub_server, tmp_path, monkeypatch) -> HubSession:
    """Points `huggingface_hub` (and diffusers/transformers through it) at the fake Hub, with an empty cache.

    No token is stored or exported: tests pass `token=` where the Hub needs one, so that a missing token fails.
    """
    import diffusers.loaders.lora_base
    import diffusers.utils.hub_utils
    import huggingface_hub.constants as constants
    import huggingface_hub.hf_api

    endpoint = fake_hub_server.endpoint
    home = tmp_path / "hf_home"
    cache_dir = home / "hub"
    cache_dir.mkdir(parents=True)

    env_vars = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache_dir),
        "HF_XET_CACHE": str(home / "xet"),
        # The fake Hub cannot speak xet: with hf_xet installed the client would otherwise upload through it.
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for name, value in env_vars.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)

    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"})
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(constants, "HF_ASSETS_CACHE", str(home / "assets"))
    monkeypatch.setattr(constants, "HF_XET_CACHE", str(home / "xet"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    # The module-level HfApi behind `huggingface_hub.create_repo`, `upload_folder`, ... kept the import-time endpoint.
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    # diffusers copied these flags at import.
    monkeypatch.setattr(diffusers.utils.hub_utils, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(diffusers.utils.hub_utils, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(diffusers.loaders.lora_base, "HF_HUB_OFFLINE", False)

    env = {key: value for key, value in os.environ.items() if key not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    return HubSession(
        server=fake_hub_server, endpoint=endpoint, token=TOKEN, user=USER, home=home, cache_dir=cache_dir, env=env
    )
