"""A loopback Hugging Face hub: the file API huggingface_hub speaks, served from a temporary folder.

Point ``HF_ENDPOINT`` at :attr:`LoopbackHub.url` and huggingface_hub downloads from (and uploads
to) this server, so hub code is tested without leaving the machine. No library serves the hub's
API locally, hence this one. What it serves, as the real hub does:

- ``GET /api/models/{repo}/revision/{rev}``: the repository's info at a revision (``sha``, ``siblings``);
- ``GET /api/models/{repo}/tree/{rev}``: the file listing (path, size, git blob id);
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: a file, with ``X-Repo-Commit``, ``ETag`` and
  ``Content-Length`` headers and ``Range`` requests (206);
- ``POST /api/repos/create``, ``POST /api/models/{repo}/preupload/{rev}`` and
  ``POST /api/models/{repo}/commit/{rev}``: what ``create_repo`` and ``upload_folder`` call (every
  file is uploaded inline, "regular" mode, so no LFS storage is needed).

Errors carry the hub's ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound), which
huggingface_hub turns into its typed exceptions. Each commit is a folder ``{root}/{repo}/{sha}``;
branches live in ``{root}/{repo}/refs.json``. :attr:`LoopbackHub.requests` records every request,
and :meth:`LoopbackHub.cut_after` makes the next download of a file stop half-way, as a dropped
connection does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


class LoopbackHub:
    """A hub on 127.0.0.1 serving ``root``; use as a context manager."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.requests: list[Request] = []
        self._cuts: dict[str, int] = {}
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> LoopbackHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- the repositories ----------------------------------------------------------------------

    def commit(
        self, repo: str, files: dict[str, bytes] | str | Path, *, branch: str = "main", deleted: tuple[str, ...] = ()
    ) -> str:
        """Add a commit on ``branch`` holding ``files`` (a folder, or path -> bytes) over the branch's tip; return its sha."""
        with self._lock:
            if isinstance(files, (str, Path)):
                folder = Path(files)
                files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
            refs = self.refs(repo)
            parent = refs.get(branch)
            tree = dict(self.files(repo, parent)) if parent else {}
            for name in deleted:
                tree.pop(name, None)
            tree.update(files)
            sha = hashlib.sha1(
                json.dumps([parent, sorted((k, _blob_id(v)) for k, v in tree.items())]).encode()
            ).hexdigest()
            target = self.root / repo / sha
            if not target.exists():
                for name, data in tree.items():
                    path = target / name
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                target.mkdir(parents=True, exist_ok=True)
            refs[branch] = sha
            self._write_refs(repo, refs)
            return sha

    def create(self, repo: str) -> bool:
        """Create an empty repository (a main branch with no commit yet); False if it exists."""
        with self._lock:
            if (self.root / repo / "refs.json").is_file():
                return False
            (self.root / repo).mkdir(parents=True, exist_ok=True)
            self._write_refs(repo, {})
            return True

    def refs(self, repo: str) -> dict[str, str]:
        path = self.root / repo / "refs.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def exists(self, repo: str) -> bool:
        return (self.root / repo / "refs.json").is_file()

    def resolve(self, repo: str, revision: str) -> str | None:
        """The commit sha a branch name or a sha stands for."""
        if _COMMIT.match(revision) and (self.root / repo / revision).is_dir():
            return revision
        return self.refs(repo).get(revision)

    def files(self, repo: str, sha: str) -> dict[str, bytes]:
        folder = self.root / repo / sha
        return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}

    def cut_after(self, path_suffix: str, size: int) -> None:
        """The next GET of a file whose URL ends with ``path_suffix`` sends ``size`` bytes, then drops the connection."""
        self._cuts[path_suffix] = size

    def fail_next(self, path_suffix: str, status: int = 500) -> None:
        """The next GET of a file whose URL ends with ``path_suffix`` answers ``status`` (a hub having a bad moment)."""
        self._failures[path_suffix] = status

    def downloads(self, name: str) -> list[Request]:
        """The GET requests that fetched file ``name`` (any revision)."""
        return [r for r in self.requests if r.method == "GET" and "/resolve/" in r.path and r.path.endswith("/" + name)]

    def _write_refs(self, repo: str, refs: dict[str, str]) -> None:
        (self.root / repo).mkdir(parents=True, exist_ok=True)
        (self.root / repo / "refs.json").write_text(json.dumps(refs))

    @staticmethod
    def _take(pending: dict[str, int], path: str) -> int | None:
        for suffix in list(pending):
            if path.endswith(suffix):
                return pending.pop(suffix)
        return None


def _blob_id(data: bytes) -> str:
    """The git blob id of a file, which the hub reports as ``oid`` and as the ETag of non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler(hub: LoopbackHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet: the requests are recorded instead
            pass

        # -- plumbing --------------------------------------------------------------------------

        def _record(self) -> str:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append(Request(self.command, path, {k: v for k, v in self.headers.items()}))
            return path

        def _send(
            self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, *, head: bool = False
        ) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            if "Content-Length" not in (headers or {}):
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, status: int, value: Any) -> None:
            self._send(status, json.dumps(value).encode(), {"Content-Type": "application/json"})

        def _error(self, status: int, code: str, message: str, *, head: bool = False) -> None:
            body = json.dumps({"error": message}).encode()
            self._send(
                status,
                body,
                {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message},
                head=head,
            )

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        # -- routes ----------------------------------------------------------------------------

        def do_HEAD(self) -> None:
            self._file(self._record(), head=True)

        def do_GET(self) -> None:
            path = self._record()
            if path.startswith("/api/models/"):
                return self._api_get(path.removeprefix("/api/models/"))
            self._file(path, head=False)

        def do_POST(self) -> None:
            path = self._record()
            body = self._body()
            if path == "/api/repos/create":
                return self._create(json.loads(body or b"{}"))
            match = re.match(r"^/api/models/([^/]+/[^/]+)/(preupload|commit)/(.+)$", path)
            if match is None:
                return self._error(404, "NotFound", f"no route {path}")
            repo, action, revision = match.groups()
            if not hub.exists(repo):
                return self._error(404, "RepoNotFound", f"Repository {repo} not found")
            if action == "preupload":
                files = json.loads(body)["files"]
                return self._json(
                    200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
                )
            self._commit(repo, revision, body)

        def _api_get(self, rest: str) -> None:
            match = re.match(r"^([^/]+/[^/]+)/(revision|tree)/([^/]+)(?:/(.*))?$", rest)
            if match is None:
                return self._error(404, "NotFound", f"no route /api/models/{rest}")
            repo, kind, revision, _sub = match.groups()
            if not hub.exists(repo):
                return self._error(404, "RepoNotFound", f"Repository {repo} not found")
            sha = hub.resolve(repo, revision)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            files = hub.files(repo, sha)
            if kind == "revision":
                return self._json(
                    200,
                    {
                        "id": repo,
                        "modelId": repo,
                        "sha": sha,
                        "private": False,
                        "siblings": [{"rfilename": name} for name in files],
                    },
                )
            self._json(
                200,
                [
                    {"type": "file", "path": name, "size": len(data), "oid": _blob_id(data)}
                    for name, data in files.items()
                ],
            )

        def _file(self, path: str, *, head: bool) -> None:
            match = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if match is None:
                return self._error(404, "NotFound", f"no route {path}", head=head)
            repo, revision, name = match.groups()
            if not hub.exists(repo):
                return self._error(404, "RepoNotFound", f"Repository {repo} not found", head=head)
            sha = hub.resolve(repo, revision)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
            data = hub.files(repo, sha).get(name)
            if data is None:
                return self._error(404, "EntryNotFound", f"{name} does not exist at {revision}", head=head)
            headers = {
                "X-Repo-Commit": sha,
                "ETag": f'"{_blob_id(data)}"',
                "Accept-Ranges": "bytes",
                "Content-Type": "application/octet-stream",
            }
            start = 0
            ranged = re.match(r"^bytes=(\d+)-$", self.headers.get("Range") or "")
            if ranged and not head:
                start = int(ranged.group(1))
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            headers["Content-Length"] = str(len(data) - start)
            failure = None if head else hub._take(hub._failures, path)
            if failure is not None:
                return self._error(failure, "ServerError", "the hub had a bad moment")
            cut = None if head else hub._take(hub._cuts, path)
            if cut is not None:  # a dropped connection: promise the whole file, send part of it, hang up
                self.send_response(206 if start else 200)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data[start : start + cut])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self._send(206 if start else 200, data[start:], headers, head=head)

        def _create(self, payload: dict[str, Any]) -> None:
            repo = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
            if hub.create(repo):
                return self._json(200, {"url": f"{hub.url}/{repo}", "name": repo, "id": repo})
            self._error(409, "RepoExists", "You already created this model repo")

        def _commit(self, repo: str, revision: str, body: bytes) -> None:
            files: dict[str, bytes] = {}
            deleted: list[str] = []
            for line in body.decode().splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] in ("deletedFile", "deletedFolder"):
                    deleted.append(value["path"])
                elif item["key"] == "lfsFile":
                    return self._error(400, "BadRequest", "this hub takes every file inline (preupload says regular)")
            sha = hub.commit(repo, files, branch=revision, deleted=tuple(deleted))
            self._json(
                200,
                {
                    "commitUrl": f"{hub.url}/{repo}/commit/{sha}",
                    "commitOid": sha,
                    "commitMessage": "",
                    "pullRequestUrl": None,
                },
            )

    return Handler
