"""The fake Hub through the real `huggingface_hub` client: repos, commits, revisions, downloads, errors, offline."""

import huggingface_hub
import huggingface_hub.constants
import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from .conftest import OTHER_TOKEN

CARD = "---\nlicense: apache-2.0\nlibrary_name: diffusers\ntags:\n- diffusers-spacetime\n---\n# A card\n"


def make_folder(root, weights: bytes = b"\x00" * 300):
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "sub" / "model.safetensors").write_bytes(weights)
    (root / "README.md").write_text(CARD)
    return root


def test_whoami_and_create_repo(hub):
    api = HfApi(token=hub.token)
    assert api.whoami()["name"] == hub.user
    with pytest.raises(HfHubHTTPError, match="Invalid user token"):
        HfApi(token="hf_not_a_token").whoami()

    url = api.create_repo("fresh-model")  # no namespace: the token's user
    assert url.repo_id == f"{hub.user}/fresh-model" and url.startswith(hub.endpoint)
    with pytest.raises(HfHubHTTPError) as error:
        api.create_repo("fresh-model")
    assert error.value.response.status_code == 409
    api.create_repo("fresh-model", exist_ok=True)
    assert api.create_repo("spacetime-org/shared").repo_id == "spacetime-org/shared"  # an org the user is in
    with pytest.raises(HfHubHTTPError) as error:
        api.create_repo("someone-else/theirs")
    assert error.value.response.status_code == 403
    assert api.list_repo_files(f"{hub.user}/fresh-model") == [".gitattributes"]  # the Hub's initial commit


def test_upload_download_revisions(hub, tmp_path):
    api = HfApi(token=hub.token)
    repo_id = api.create_repo("files").repo_id
    first = api.upload_folder(repo_id=repo_id, folder_path=make_folder(tmp_path / "v1", b"\x01" * 300))
    assert len(first.oid) == 40

    # Unchanged files are skipped by the client (the preupload answer carries their oids): no new commit.
    assert api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "v1").oid == first.oid

    second = api.upload_folder(repo_id=repo_id, folder_path=make_folder(tmp_path / "v2", b"\x02" * 500))
    assert second.oid != first.oid
    assert [commit.commit_id for commit in api.list_repo_commits(repo_id)][:2] == [second.oid, first.oid]

    folder = snapshot_download(repo_id)
    assert (huggingface_hub.constants.HF_HUB_CACHE in folder) and folder.endswith(second.oid)
    assert open(f"{folder}/sub/model.safetensors", "rb").read() == b"\x02" * 500
    old = hf_hub_download(
        repo_id, "model.safetensors", subfolder="sub", revision=first.oid, cache_dir=hub.fresh_cache("old")
    )
    assert open(old, "rb").read() == b"\x01" * 300
    short = hf_hub_download(repo_id, "config.json", revision=first.oid[:7], cache_dir=hub.fresh_cache("short"))
    assert open(short).read() == '{"a": 1}'

    # Branches, and the tree listing with LFS info for weights.
    api.create_branch(repo_id, branch="dev", revision=first.oid)
    assert {ref.name for ref in api.list_repo_refs(repo_id).branches} == {"main", "dev"}
    assert api.model_info(repo_id, revision="dev").sha == first.oid
    files = {entry.path: entry for entry in api.list_repo_tree(repo_id, recursive=True) if hasattr(entry, "size")}
    assert files["sub/model.safetensors"].lfs.size == 500 and files["config.json"].lfs is None
    assert {entry.path for entry in api.list_repo_tree(repo_id)} == {
        ".gitattributes",
        "README.md",
        "config.json",
        "sub",
    }

    info = api.model_info(repo_id)
    assert info.sha == second.oid and info.library_name == "diffusers"
    assert {sibling.rfilename for sibling in info.siblings} >= {"config.json", "sub/model.safetensors"}
    card = ModelCard.load(repo_id)
    assert card.data.license == "apache-2.0" and card.data.tags == ["diffusers-spacetime"]


def test_pagination_and_deletes(hub, tmp_path, monkeypatch):
    api = HfApi(token=hub.token)
    repo_id = api.create_repo("many").repo_id
    (tmp_path / "many" / "folder").mkdir(parents=True)
    for index in range(7):
        (tmp_path / "many" / f"file_{index}.txt").write_text(str(index))
        (tmp_path / "many" / "folder" / f"nested_{index}.txt").write_text(str(index))
    api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "many")
    monkeypatch.setattr(hub.server, "page_size", 3)  # the client follows the `Link: rel="next"` header
    assert len(api.list_repo_files(repo_id)) == 15
    api.delete_file("file_0.txt", repo_id)
    api.delete_folder("folder", repo_id)
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", *[f"file_{i}.txt" for i in range(1, 7)]]
    with pytest.raises(EntryNotFoundError):
        api.delete_file("file_0.txt", repo_id)


def test_errors_map_to_client_exceptions(hub, tmp_path):
    api = HfApi(token=hub.token)
    repo_id = api.create_repo("errors").repo_id
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{hub.user}/no-such-repo", "config.json")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.json")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="no-such-branch")
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.upload_file(
            path_or_fileobj=b"---\n- a list, not a mapping\n---\n", path_in_repo="README.md", repo_id=repo_id
        )
    with pytest.raises(HfHubHTTPError) as error:  # a valid token, but not the owner's
        api.upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=repo_id, token=OTHER_TOKEN)
    assert error.value.response.status_code == 403


def test_private_repo_needs_the_token(hub):
    api = HfApi(token=hub.token)
    repo_id = api.create_repo("secret", private=True).repo_id
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "config.json")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_id, "config.json", token=OTHER_TOKEN)
    assert open(hf_hub_download(repo_id, "config.json", token=hub.token)).read() == "{}"


def test_offline_reuses_the_cache_without_requests(hub, tmp_path, monkeypatch):
    api = HfApi(token=hub.token)
    repo_id = api.create_repo("offline").repo_id
    api.upload_folder(repo_id=repo_id, folder_path=make_folder(tmp_path / "files"))
    online = snapshot_download(repo_id)

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    before = len(hub.server.requests)
    assert snapshot_download(repo_id) == online
    assert open(hf_hub_download(repo_id, "config.json")).read() == '{"a": 1}'
    assert len(hub.server.requests) == before
    with pytest.raises(Exception, match="offline|local"):
        snapshot_download(f"{hub.user}/never-downloaded")
