"""A fake Hugging Face Hub on 127.0.0.1 for tests. TEST CODE ONLY: never ship it, never point users at it.

No real Hub is reachable from the test machines, and no installable server implements the Hub's upload API. This
module speaks the part of the Hub HTTP API that `huggingface_hub` (2.x, with `HF_HUB_DISABLE_XET=1`) uses to create
repos, commit files and download them, so that `push_to_hub`, `upload_folder`, `hf_hub_download`,
`snapshot_download` and `from_pretrained("user/repo")` run through the real client, unchanged:

    GET  /api/whoami-v2                                   the token's user
    POST /api/validate-yaml                               README front matter must be a YAML mapping
    POST /api/repos/create                                409 when it exists; an initial commit with .gitattributes
    GET  /api/{type}s/{ns}/{name}[/revision/{rev}]        repo info: sha, siblings, cardData from the README
    GET  /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]     ?recursive=, ?expand=; paginated with a `Link` header
    POST /api/{type}s/{ns}/{name}/paths-info/{rev}        form or JSON `paths`
    GET  /api/{type}s/{ns}/{name}/refs                    branches
    GET  /api/{type}s/{ns}/{name}/commits/{rev}           history, newest first
    POST /api/{type}s/{ns}/{name}/branch/{branch}         `startingPoint`
    POST /api/{type}s/{ns}/{name}/preupload/{rev}         always uploadMode "regular" (bytes come inline, base64)
    POST /api/{type}s/{ns}/{name}/commit/{rev}            ndjson: header, file, lfsFile (copies only),
                                                          deletedFile, deletedFolder; `parentCommit` checked
    GET|HEAD /[{type}s/]{ns}/{name}/resolve/{rev}/{path}  X-Repo-Commit, ETag (git blob sha1), Content-Length,
                                                          X-Linked-Etag/X-Linked-Size (sha256) for LFS-tracked
                                                          suffixes, `Range: bytes=a-b`

Revisions are branch names or commit ids (full or a unique prefix of 7+ hex digits). Errors carry the headers the
client maps to its exceptions: `X-Error-Code: RepoNotFound` (RepositoryNotFoundError; 401 for a private repo without
the right token, as the Hub does), `RevisionNotFound`, `EntryNotFound` (with `X-Repo-Commit`, so the client caches
the absence). Writes need a known token whose user owns the namespace (403 otherwise). Not implemented: xet and LFS
uploads (the preupload answer never asks for them), pull requests, tags, spaces' runtime, search.

Storage: file contents live in a temp folder, content-addressed by sha256; commits (path -> blob tables) live in
memory, one lock around every change. `FakeHub.requests` logs each request, so a test can assert that a code path
made no request at all (offline mode).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import yaml

# Suffixes the initial `.gitattributes` tracks with LFS, as the Hub's default one does (a subset).
LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".pkl",
    ".pickle",
    ".h5",
    ".msgpack",
    ".onnx",
    ".npy",
    ".npz",
    ".gguf",
    ".zip",
    ".tar.gz",
    ".mp4",
)
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in LFS_SUFFIXES).encode()
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}

_REPO = r"(?P<repo>[^/]+/[^/]+)"
_API = rf"^/api/(?P<type>models|datasets|spaces)/{_REPO}"


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a blob: what the Hub reports as `oid` and `ETag` for a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class HubError(Exception):
    """An HTTP error answer, with the `X-Error-Code` the client maps to an exception."""

    def __init__(
        self, status: int, message: str, code: str | None = None, headers: dict | None = None, body: dict | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}
        self.body = {"error": message, **(body or {})}


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    git_oid: str
    size: int


@dataclass
class Commit:
    oid: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, StoredFile]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    @property
    def url_id(self) -> str:
        return _URL_PREFIX[self.repo_type] + self.repo_id


def _is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


class FakeHub:
    """The server's state and its HTTP front. `with FakeHub() as hub:` serves on `hub.endpoint`."""

    def __init__(
        self,
        users: dict[str, str] | None = None,
        orgs: dict[str, list[str]] | None = None,
        storage_dir: str | Path | None = None,
        page_size: int = 1000,
    ):
        # token -> user name; org name -> member user names
        self.users = dict(users if users is not None else {"hf_fake_write_token": "user"})
        self.orgs = dict(orgs or {})
        self._tmp = None if storage_dir is not None else tempfile.TemporaryDirectory(prefix="fake_hub_")
        self.storage = Path(storage_dir if storage_dir is not None else self._tmp.name)
        (self.storage / "blobs").mkdir(parents=True, exist_ok=True)
        self.page_size = page_size
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> FakeHub:
        handler = type("FakeHubHandler", (_Handler,), {"hub": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ---- state -----------------------------------------------------------------------------------------------
    def _store_blob(self, data: bytes) -> StoredFile:
        sha256 = hashlib.sha256(data).hexdigest()
        blob = self.storage / "blobs" / sha256
        if not blob.exists():
            tmp = blob.with_suffix(f".tmp{threading.get_ident()}")
            tmp.write_bytes(data)
            tmp.replace(blob)
        return StoredFile(sha256=sha256, git_oid=git_blob_sha1(data), size=len(data))

    def read_blob(self, stored: StoredFile) -> bytes:
        return (self.storage / "blobs" / stored.sha256).read_bytes()

    def _new_commit(
        self, repo: Repo, parent: str | None, files: dict[str, StoredFile], title: str, message: str, author: str
    ) -> Commit:
        self._counter += 1
        listing = json.dumps(sorted((path, f.git_oid) for path, f in files.items()))
        seed = f"{repo.repo_type}:{repo.repo_id}\n{parent}\n{title}\n{message}\n{listing}\n{self._counter}"
        commit = Commit(
            oid=hashlib.sha1(seed.encode()).hexdigest(),
            parent=parent,
            title=title,
            message=message,
            author=author,
            date=_now(),
            files=dict(files),
        )
        repo.commits[commit.oid] = commit
        return commit

    def create_repo(self, repo_type: str, repo_id: str, private: bool = False, author: str = "user") -> Repo:
        with self._lock:
            if (repo_type, repo_id) in self.repos:
                # The client reads `url` from this answer when `exist_ok=True`.
                url = f"{self.endpoint}/{_URL_PREFIX[repo_type]}{repo_id}"
                raise HubError(409, f"You already created this {repo_type} repo", body={"url": url})
            repo = Repo(repo_type=repo_type, repo_id=repo_id, private=private, created_at=_now())
            initial = self._new_commit(
                repo, None, {".gitattributes": self._store_blob(GITATTRIBUTES)}, "initial commit", "", author
            )
            repo.branches["main"] = initial.oid
            self.repos[(repo_type, repo_id)] = repo
            return repo

    def get_repo(self, repo_type: str, repo_id: str, user: str | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        if repo.private and not self._can_write(user, repo_id):
            # The Hub answers 401 for private repos to anonymous or foreign users: the client maps it to
            # RepositoryNotFoundError, which does not reveal that the repo exists.
            raise HubError(401, "Repository not found", "RepoNotFound")
        return repo

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """A branch name or a commit id (full, or a unique prefix of 7+ hex digits) -> the commit."""
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        if revision in repo.commits:
            return repo.commits[revision]
        if re.fullmatch(r"[0-9a-f]{7,39}", revision):
            matches = [oid for oid in repo.commits if oid.startswith(revision)]
            if len(matches) == 1:
                return repo.commits[matches[0]]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _namespaces(self, user: str | None) -> set[str]:
        if user is None:
            return set()
        return {user} | {org for org, members in self.orgs.items() if user in members}

    def _can_write(self, user: str | None, repo_id: str) -> bool:
        return repo_id.split("/")[0] in self._namespaces(user)

    def last_commit_touching(self, repo: Repo, head: Commit, path: str) -> Commit:
        """The newest commit in `head`'s history that changed `path` (for `expand=True` listings)."""
        commit = head
        while commit.parent is not None:
            parent = repo.commits[commit.parent]
            if parent.files.get(path) != commit.files.get(path):
                return commit
            commit = parent
        return commit

    def commit(self, repo: Repo, branch: str, lines: list[dict], user: str) -> Commit:
        """Apply an ndjson commit payload (see huggingface_hub `_commit_api._prepare_commit_payload`)."""
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The first line of a commit must be its header")
        header = lines[0]["value"]
        with self._lock:
            if branch not in repo.branches:
                raise HubError(404, f"Invalid rev id: {branch} (commits go to branches)", "RevisionNotFound")
            head = repo.commits[repo.branches[branch]]
            parent_commit = header.get("parentCommit")
            if parent_commit is not None and not head.oid.startswith(parent_commit):
                raise HubError(412, f"A commit has happened since {parent_commit}: the head of {branch} is {head.oid}")
            files = dict(head.files)
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value", {})
                path = value.get("path", "")
                _check_path(path)
                if key == "file":
                    if value.get("encoding") != "base64":
                        raise HubError(400, f"Unsupported encoding for {path}: {value.get('encoding')}")
                    files[path] = self._store_blob(base64.b64decode(value["content"]))
                elif key == "lfsFile":
                    # Only server-side copies reach here: preupload never asks for LFS uploads, so the blob must
                    # already be stored.
                    if not (self.storage / "blobs" / value["oid"]).exists():
                        raise HubError(422, f"LFS object {value['oid']} for {path} was never uploaded to this hub")
                    files[path] = self._store_blob((self.storage / "blobs" / value["oid"]).read_bytes())
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        raise HubError(404, f"Cannot delete {path}: no such file", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = path.rstrip("/") + "/"
                    for name in [name for name in files if name.startswith(prefix)]:
                        del files[name]
                else:
                    raise HubError(400, f"Unknown commit operation {key!r}")
            commit = self._new_commit(
                repo, head.oid, files, header.get("summary") or "update", header.get("description") or "", user
            )
            repo.branches[branch] = commit.oid
            return commit

    def card_data(self, repo: Repo, commit: Commit) -> dict | None:
        """The README's YAML front matter, as the Hub serves it in `cardData`."""
        if "README.md" not in commit.files:
            return None
        metadata, _ = split_front_matter(self.read_blob(commit.files["README.md"]).decode("utf-8", "replace"))
        return metadata if isinstance(metadata, dict) else None


def split_front_matter(text: str) -> tuple[object, str]:
    """`---\\nyaml\\n---\\nbody` -> (parsed yaml or None, body). Raises yaml.YAMLError on bad YAML."""
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.DOTALL)
    if match is None:
        return None, text
    return yaml.safe_load(match.group(1)), text[match.end() :]


def _check_path(path: str) -> None:
    parts = PurePosixPath(path).parts
    if not path or path.startswith("/") or ".." in parts or "." in parts or path.startswith(".git/"):
        raise HubError(400, f"Invalid path in repo: {path!r}")


def _file_entry(path: str, stored: StoredFile) -> dict:
    entry = {"type": "file", "oid": stored.git_oid, "size": stored.size, "path": path}
    if _is_lfs(path):
        entry["lfs"] = {"oid": stored.sha256, "size": stored.size, "pointerSize": 134}
    return entry


def _folder_entry(path: str, files: dict[str, StoredFile]) -> dict:
    prefix = path + "/"
    listing = json.dumps(sorted((name, f.git_oid) for name, f in files.items() if name.startswith(prefix)))
    return {"type": "directory", "oid": hashlib.sha1(listing.encode()).hexdigest(), "size": 0, "path": path}


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the `FakeHub` it is bound to (set as the class attribute `hub` by `FakeHub.start`)."""

    hub: FakeHub
    protocol_version = "HTTP/1.1"  # keep-alive, as the client expects; every answer sets Content-Length

    def log_message(self, format, *args):  # noqa: A002 (BaseHTTPRequestHandler's signature)
        pass  # quiet: pytest shows failures, not access logs

    # ---- plumbing --------------------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer ") :].strip() if auth.startswith("Bearer ") else None
        if token is None:
            return None
        if token not in self.hub.users:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.hub.users[token]

    def _writer(self, repo_id: str) -> str:
        user = self._user()
        if user is None:
            raise HubError(401, "You must be authenticated to write (pass a token)")
        if not self.hub._can_write(user, repo_id):
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return user

    def _send(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict | None = None,
        head_only: bool = False,
        length: int | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head_only and body:
            self.wfile.write(body)

    def _json(self, payload, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers=headers)

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        query = {key: values[-1] for key, values in parse_qs(split.query).items()}
        self.hub.requests.append((method, self.path))
        body = self._body() if method in ("POST", "PUT", "DELETE") else b""
        try:
            for route_method, pattern, name in _ROUTES:
                if route_method == method or (route_method == "GET" and method == "HEAD" and name == "resolve"):
                    match = re.match(pattern, split.path)
                    if match is not None:
                        getattr(self, f"_{name}")(match, query, body, method)
                        return
            raise HubError(404, f"The fake hub does not serve {method} {split.path}")
        except HubError as error:
            headers = dict(error.headers)
            if error.code is not None:
                headers["X-Error-Code"] = error.code
            headers["X-Error-Message"] = error.message
            self._send(error.status, json.dumps(error.body).encode(), headers=headers, head_only=method == "HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    # ---- helpers shared by routes ----------------------------------------------------------------------------
    def _repo(self, match: re.Match, repo_type: str | None = None) -> Repo:
        repo_type = repo_type or REPO_TYPES[match.group("type")]
        return self.hub.get_repo(repo_type, unquote(match.group("repo")), self._user())

    def _commit(self, repo: Repo, match: re.Match) -> Commit:
        return self.hub.resolve(repo, unquote(match.group("rev")))

    def _commit_url(self, repo: Repo, oid: str) -> str:
        return f"{self.hub.endpoint}/{repo.url_id}/commit/{oid}"

    # ---- routes ----------------------------------------------------------------------------------------------
    def _whoami(self, match, query, body, method):
        user = self._user()
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        orgs = [{"type": "org", "name": org} for org, members in self.hub.orgs.items() if user in members]
        self._json(
            {
                "type": "user",
                "id": hashlib.sha1(user.encode()).hexdigest()[:24],
                "name": user,
                "fullname": user,
                "email": f"{user}@example.invalid",
                "emailVerified": True,
                "isPro": False,
                "orgs": orgs,
                "auth": {"type": "access_token", "accessToken": {"displayName": "fake-hub", "role": "write"}},
            }
        )

    def _validate_yaml(self, match, query, body, method):
        content = json.loads(body or b"{}").get("content", "")
        try:
            metadata, _ = split_front_matter(content)
        except yaml.YAMLError as error:
            self._json({"errors": [{"message": f"YAML does not parse: {error}"}]}, status=400)
            return
        errors = []
        if metadata is not None and not isinstance(metadata, dict):
            errors.append({"message": "the YAML front matter must be a mapping"})
        elif isinstance(metadata, dict):
            for key in ("tags", "datasets", "language"):
                value = metadata.get(key)
                if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    if not isinstance(value, str):
                        errors.append({"message": f'"{key}" must be a string or a list of strings'})
            for key in ("license", "library_name", "pipeline_tag"):
                if metadata.get(key) is not None and not isinstance(metadata[key], str):
                    errors.append({"message": f'"{key}" must be a string'})
        warnings = [] if metadata else [{"message": "Empty or missing yaml metadata in repo card"}]
        self._json({"errors": errors, "warnings": warnings}, status=400 if errors else 200)

    def _create_repo(self, match, query, body, method):
        payload = json.loads(body or b"{}")
        user = self._user()
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo")
        namespace = payload.get("organization") or user
        repo_id = f"{namespace}/{payload['name']}"
        if not self.hub._can_write(user, repo_id):
            raise HubError(403, f"You don't have the rights to create a repo under {namespace}")
        repo_type = payload.get("type") or "model"
        private = bool(payload.get("private")) or payload.get("visibility") == "private"
        repo = self.hub.create_repo(repo_type, repo_id, private=private, author=user)
        self._json({"url": f"{self.hub.endpoint}/{repo.url_id}", "name": repo_id, "id": repo_id})

    def _repo_info(self, match, query, body, method):
        repo = self._repo(match)
        commit = self.hub.resolve(repo, unquote(match.group("rev") or "main"))
        card = self.hub.card_data(repo, commit) or {}
        with_blobs = query.get("blobs", "").lower() in ("1", "true")
        siblings = []
        for path, stored in sorted(commit.files.items()):
            sibling = {"rfilename": path}
            if with_blobs:
                sibling.update(size=stored.size, blobId=stored.git_oid)
                if _is_lfs(path):
                    sibling["lfs"] = {"size": stored.size, "sha256": stored.sha256, "pointerSize": 134}
            siblings.append(sibling)
        tags = list(card.get("tags") or []) if isinstance(card.get("tags"), list) else []
        for key in ("library_name", "license"):
            if isinstance(card.get(key), str):
                tags.append(card[key] if key == "library_name" else f"license:{card[key]}")
        self._json(
            {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "author": repo.repo_id.split("/")[0],
                "sha": commit.oid,
                "lastModified": commit.date,
                "createdAt": repo.created_at,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "downloads": 0,
                "likes": 0,
                "tags": tags,
                "library_name": card.get("library_name"),
                "pipeline_tag": card.get("pipeline_tag"),
                "cardData": card or None,
                "siblings": siblings,
            }
        )

    def _tree(self, match, query, body, method):
        repo = self._repo(match)
        commit = self._commit(repo, match)
        folder = unquote(match.group("path") or "").strip("/")
        recursive = query.get("recursive", "").lower() in ("1", "true")
        expand = query.get("expand", "").lower() in ("1", "true")
        if folder and not any(name.startswith(folder + "/") for name in commit.files):
            code = "EntryNotFound"
            raise HubError(404, f"{folder} is not a folder at {commit.oid}", code, {"X-Repo-Commit": commit.oid})
        prefix = folder + "/" if folder else ""
        entries, seen_folders = [], set()
        for path in sorted(commit.files):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            # Folders come before their content, as the Hub lists them.
            for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
                sub = prefix + "/".join(parts[:depth])
                if sub not in seen_folders:
                    seen_folders.add(sub)
                    entries.append(_folder_entry(sub, commit.files))
            if recursive or len(parts) == 1:
                entry = _file_entry(path, commit.files[path])
                if expand:
                    last = self.hub.last_commit_touching(repo, commit, path)
                    entry["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
                entries.append(entry)
        self._paginated(entries, query)

    def _paginated(self, entries: list, query: dict) -> None:
        cursor = int(query.get("cursor", 0))
        page = entries[cursor : cursor + self.hub.page_size]
        headers = {}
        if cursor + self.hub.page_size < len(entries):
            next_query = urlencode({**query, "cursor": cursor + self.hub.page_size})
            headers["Link"] = f'<{self.hub.endpoint}{urlsplit(self.path).path}?{next_query}>; rel="next"'
        self._json(page, headers=headers)

    def _paths_info(self, match, query, body, method):
        repo = self._repo(match)
        commit = self._commit(repo, match)
        if self.headers.get("Content-Type", "").startswith("application/json"):
            payload = json.loads(body or b"{}")
            paths, expand = payload.get("paths", []), bool(payload.get("expand"))
        else:
            form = parse_qs(body.decode())
            paths, expand = form.get("paths", []), form.get("expand", ["False"])[-1].lower() == "true"
        entries = []
        for path in paths:
            path = path.strip("/")
            if path in commit.files:
                entry = _file_entry(path, commit.files[path])
                if expand:
                    last = self.hub.last_commit_touching(repo, commit, path)
                    entry["lastCommit"] = {"id": last.oid, "title": last.title, "date": last.date}
                entries.append(entry)
            elif any(name.startswith(path + "/") for name in commit.files):
                entries.append(_folder_entry(path, commit.files))
        self._json(entries)

    def _refs(self, match, query, body, method):
        repo = self._repo(match)
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
            for name, oid in sorted(repo.branches.items())
        ]
        self._json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    def _commits(self, match, query, body, method):
        repo = self._repo(match)
        commit, history = self._commit(repo, match), []
        while commit is not None:
            history.append(
                {
                    "id": commit.oid,
                    "title": commit.title,
                    "message": commit.message,
                    "date": commit.date,
                    "authors": [{"user": commit.author}],
                }
            )
            commit = repo.commits[commit.parent] if commit.parent else None
        self._paginated(history, query)

    def _branch(self, match, query, body, method):
        repo = self._repo(match)
        self._writer(repo.repo_id)
        branch = unquote(match.group("branch"))
        start = json.loads(body or b"{}").get("startingPoint") or "main"
        with self.hub._lock:
            if branch in repo.branches:
                raise HubError(409, f"Branch {branch} already exists")
            repo.branches[branch] = self.hub.resolve(repo, start).oid
        self._json({})

    def _preupload(self, match, query, body, method):
        repo = self._repo(match)
        self._writer(repo.repo_id)
        if query.get("create_pr"):
            raise HubError(400, "The fake hub does not implement pull requests")
        revision = unquote(match.group("rev"))
        head = self.hub.resolve(repo, revision) if revision in repo.branches else None
        files = []
        for item in json.loads(body or b"{}").get("files", []):
            existing = head.files.get(item["path"]) if head is not None else None
            # "regular": the client then sends the bytes base64-encoded inside the ndjson commit. The oid lets the
            # client skip files that did not change, as with the Hub.
            files.append(
                {
                    "path": item["path"],
                    "uploadMode": "regular",
                    "shouldIgnore": False,
                    "oid": existing.git_oid if existing is not None else None,
                }
            )
        self._json({"files": files, "commitOid": head.oid if head is not None else None})

    def _commit_route(self, match, query, body, method):
        repo = self._repo(match)
        user = self._writer(repo.repo_id)
        if query.get("create_pr"):
            raise HubError(400, "The fake hub does not implement pull requests")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        commit = self.hub.commit(repo, unquote(match.group("rev")), lines, user)
        self._json(
            {
                "success": True,
                "commitOid": commit.oid,
                "commitUrl": self._commit_url(repo, commit.oid),
                "pullRequestUrl": None,
            }
        )

    def _resolve(self, match, query, body, method):
        repo_type = REPO_TYPES[match.group("type")] if match.group("type") else "model"
        repo = self._repo(match, repo_type)
        commit = self._commit(repo, match)
        path = unquote(match.group("path"))
        stored = commit.files.get(path)
        if stored is None:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{stored.git_oid}"', "Accept-Ranges": "bytes"}
        if _is_lfs(path):
            # The Hub redirects LFS files to a CDN and names the real blob in these headers; serving the bytes
            # here directly is what the client does after following the redirect.
            headers.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(stored.size)})
        data = self.hub.read_blob(stored)
        status, range_header = 200, self.headers.get("Range")
        range_match = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
        if range_match is not None:
            start = int(range_match.group(1))
            end = int(range_match.group(2)) if range_match.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            data, status = data[start : end + 1], 206
        self._send(status, data, content_type="application/octet-stream", headers=headers, head_only=method == "HEAD")


_ROUTES = [
    ("GET", r"^/api/whoami-v2$", "whoami"),
    ("POST", r"^/api/validate-yaml$", "validate_yaml"),
    ("POST", r"^/api/repos/create$", "create_repo"),
    ("GET", _API + r"(?:/revision/(?P<rev>[^/]+))?$", "repo_info"),
    ("GET", _API + r"/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$", "tree"),
    ("POST", _API + r"/paths-info/(?P<rev>[^/]+)$", "paths_info"),
    ("GET", _API + r"/refs$", "refs"),
    ("GET", _API + r"/commits/(?P<rev>[^/]+)$", "commits"),
    ("POST", _API + r"/branch/(?P<branch>[^/]+)$", "branch"),
    ("POST", _API + r"/preupload/(?P<rev>[^/]+)$", "preupload"),
    ("POST", _API + r"/commit/(?P<rev>[^/]+)$", "commit_route"),
    ("GET", rf"^/(?:(?P<type>datasets|spaces)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$", "resolve"),
]

__all__ = ["FakeHub", "HubError", "git_blob_sha1", "split_front_matter"]
