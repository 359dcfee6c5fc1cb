"""A local HTTP double of the Hugging Face Hub's file API, driven by `huggingface_hub` itself.

Point `HF_ENDPOINT` at `HubDouble.url` and `snapshot_download`, `hf_hub_download`,
`HfApi.model_info` / `list_repo_files` / `list_repo_tree` talk to it as they would to the Hub
(huggingface_hub 2.4, read from its source):

  GET      /api/models/{repo}[/revision/{rev}]         model info: sha, siblings, gated
  GET      /api/models/{repo}/tree/{rev}[/{path}]      listing: oid, size, lfs {oid, size, pointerSize}
  POST     /api/models/{repo}/paths-info/{rev}         entries for the form's `paths` that exist
  HEAD/GET /{repo}/resolve/{rev}/{path}                small files: 200, ETag = git blob sha1
                                                       LFS files: 302 to the CDN with X-Linked-Etag
                                                       (sha256) and X-Linked-Size
  GET      /api/agent-harnesses                        the registry huggingface_hub reads for its user agent
  HEAD/GET {cdn}/repos/{id}/{sha256}?X-Amz-Signature=  the CDN: another origin (port), so clients drop
                                                       the token; like S3 it refuses a request that also
                                                       carries Authorization; honours Range

Every Hub response carries X-Repo-Commit. Errors carry the Hub's X-Error-Code / X-Error-Message:
RepoNotFound (401 without a token, 404 with one: the Hub does not reveal private repos), GatedRepo
(401 without a token, 403 with a token that has no access), RevisionNotFound and EntryNotFound (404),
and an unknown token is 401 "Invalid credentials in Authorization header" on every endpoint.
Dataset repos (`add_repo(..., repo_type="dataset")`) answer the same routes under /api/datasets/ and
/datasets/{repo}/resolve/, which is what `datasets.load_dataset("org/name")` uses.
Renamed repos answer 307 to their new name. `requests` records what the double saw (headers included),
and `throttle()` slows one file down after some bytes so a test can interrupt a download.

Standalone: `python tests/hub_double.py org/name=MODEL_DIR ...` serves dirs and prints HF_ENDPOINT.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import mimetypes
import threading
import time
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

# Suffixes the Hub's default .gitattributes stores in LFS; files over 10 MiB go to LFS too.
LFS_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".gguf",
    ".onnx",
    ".h5",
    ".msgpack",
    ".model",
    ".npy",
    ".npz",
    ".pkl",
    ".pickle",
    ".zip",
    ".tar",
    ".gz",
    ".zst",
    ".parquet",
    ".arrow",
)
LFS_THRESHOLD = 10 * 1024 * 1024
_DATE = "2025-01-01T00:00:00.000Z"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class HubFile:
    path: str
    data: bytes

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES) or len(self.data) > LFS_THRESHOLD

    @cached_property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n".encode()

    @cached_property
    def oid(self) -> str:
        """The git oid: of the LFS pointer for LFS files, as on the Hub."""
        return git_blob_oid(self.pointer if self.lfs else self.data)

    def tree_entry(self) -> dict:
        entry = {"type": "file", "oid": self.oid, "size": len(self.data), "path": self.path}
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": len(self.data), "pointerSize": len(self.pointer)}
        return entry


@dataclass
class Repo:
    repo_id: str
    repo_type: str = "model"  # or "dataset"
    gated: bool | str = False  # False, "auto" or "manual", as in the Hub's model info
    private: bool = False
    granted: set[str] = field(default_factory=set)  # user names with access (gated/private)
    commits: dict[str, dict[str, HubFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)  # branch or tag -> commit sha

    def commit_for(self, rev: str) -> str | None:
        if rev in self.refs:
            return self.refs[rev]
        return rev if rev in self.commits else None


@dataclass
class Request:
    server: str  # "hub" or "cdn"
    method: str
    path: str  # decoded, without the query
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    status: int = 0


@dataclass
class _Throttle:
    after: int  # bytes sent at full speed
    rate: int  # then bytes per second


def _load_files(files: dict | Path | str) -> dict[str, bytes]:
    if isinstance(files, (str, Path)):
        root = Path(files)
        return {
            p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
        }
    out = {}
    for name, content in files.items():
        if isinstance(content, Path):
            content = content.read_bytes()
        elif isinstance(content, str):
            content = content.encode()
        out[name] = content
    return out


class HubDouble:
    """The Hub's file API on two loopback ports (hub + CDN). Use as a context manager or start()/stop()."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.renamed: dict[str, str] = {}
        self.users: dict[str, str] = {}  # token -> user name
        self.requests: list[Request] = []
        self.throttles: dict[str, _Throttle] = {}  # sha256 -> throttle
        self.sent: dict[str, int] = {}  # sha256 -> bytes of content sent (all requests)
        self._secret = b"hub-double-signing-key"
        self._servers: list[ThreadingHTTPServer] = []
        self.url = self.cdn_url = ""

    # ------------------------------------------------------------------ building repos

    def add_repo(
        self,
        repo_id: str,
        files: dict | Path | str,
        *,
        revision: str = "main",
        gated: bool | str = False,
        private: bool = False,
        repo_type: str = "model",
    ) -> str:
        """Add a commit with `files` (a directory, or {path: bytes | str | Path}) as branch/tag `revision`.

        Returns the commit sha. Calling it again for the same repo adds another revision.
        """
        repo = self.repos.setdefault(_key(repo_id, repo_type), Repo(repo_id, repo_type))
        repo.gated = gated or repo.gated
        repo.private = private or repo.private
        tree = {path: HubFile(path, data) for path, data in _load_files(files).items()}
        listing = "\n".join(f"{f.path} {f.oid}" for f in tree.values())
        sha = hashlib.sha1(f"{repo_id}\n{revision}\n{len(repo.commits)}\n{listing}".encode()).hexdigest()
        repo.commits[sha] = tree
        repo.refs[revision] = sha
        return sha

    def add_user(self, token: str, name: str, *, access: tuple[str, ...] = ()) -> None:
        """A valid token for user `name`, with access to the gated/private repos in `access`."""
        self.users[token] = name
        for repo_id in access:
            self.repos[repo_id].granted.add(name)

    def rename(self, old: str, new: str) -> None:
        self.renamed[old] = new

    def file(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> HubFile:
        repo = self.repos[_key(repo_id, repo_type)]
        return repo.commits[repo.commit_for(revision)][path]

    def throttle(self, repo_id: str, path: str, *, after: int = 0, rate: int = 64 * 1024) -> None:
        """Send this file at `rate` bytes/s once `after` bytes of it went out at full speed."""
        self.throttles[self.file(repo_id, path).sha256] = _Throttle(after, rate)

    def unthrottle(self) -> None:
        self.throttles.clear()

    def seen(self, method: str | None = None, contains: str = "", server: str | None = None) -> list[Request]:
        return [
            r
            for r in list(self.requests)
            if (method is None or r.method == method)
            and contains in r.path
            and (server is None or r.server == server)
        ]

    # ------------------------------------------------------------------ server lifecycle

    def start(self) -> HubDouble:
        for kind in ("hub", "cdn"):
            server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self, kind))
            server.daemon_threads = True
            threading.Thread(target=server.serve_forever, daemon=True, name=f"hub-double-{kind}").start()
            self._servers.append(server)
        self.url = f"http://127.0.0.1:{self._servers[0].server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self._servers[1].server_address[1]}"
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()

    def __enter__(self) -> HubDouble:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers for the handler

    def sign(self, sha256: str) -> str:
        return hmac.new(self._secret, sha256.encode(), hashlib.sha256).hexdigest()[:32]

    def cdn_location(self, repo_id: str, f: HubFile) -> str:
        bucket = hashlib.sha256(repo_id.encode()).hexdigest()[:16]
        disposition = quote(f'inline; filename="{f.path.rsplit("/", 1)[-1]}";')
        return (
            f"{self.cdn_url}/repos/{bucket}/{f.sha256}?response-content-disposition={disposition}"
            f"&X-Amz-Expires=3600&X-Amz-Signature={self.sign(f.sha256)}"
        )

    def blob(self, sha256: str) -> HubFile | None:
        for repo in self.repos.values():
            for tree in repo.commits.values():
                for f in tree.values():
                    if f.sha256 == sha256:
                        return f
        return None


def _key(repo_id: str, repo_type: str) -> str:
    """Where a repo is kept in `HubDouble.repos`: models by id, other types as `datasets/id`."""
    return repo_id if repo_type == "model" else f"{repo_type}s/{repo_id}"


class _HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _handler(hub: HubDouble, kind: str):
    class Handler(_Handler):
        pass

    Handler.hub, Handler.kind = hub, kind
    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hub: HubDouble
    kind: str

    def log_message(self, format, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    # ------------------------------------------------------------------ plumbing

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        self.raw_path = split.path
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.record = Request(
            self.kind,
            self.command,
            unquote(split.path),
            self.query,
            {k.lower(): v for k, v in self.headers.items()},
        )
        self.hub.requests.append(self.record)
        try:
            if self.kind == "cdn":
                self._cdn()
            else:
                self._hub()
        except _HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            self._json(err.status, {"error": err.message}, headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _send(self, status: int, headers: dict, body: bytes = b"", content: HubFile | None = None) -> None:
        self.record.status = status
        self.send_response(status)
        headers = {"Content-Length": str(len(body)), **headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if content is None:
            self.wfile.write(body)
        else:
            self._stream(body, content)

    def _stream(self, body: bytes, content: HubFile) -> None:
        """Send file bytes, slowly if the file is throttled; count what went out."""
        offset = 0
        while offset < len(body):
            limit = self.hub.throttles.get(content.sha256)
            slow = limit is not None and self.hub.sent.get(content.sha256, 0) >= limit.after
            size = 8192 if slow else 256 * 1024
            chunk = body[offset : offset + size]
            self.wfile.write(chunk)
            offset += len(chunk)
            self.hub.sent[content.sha256] = self.hub.sent.get(content.sha256, 0) + len(chunk)
            if slow:
                time.sleep(len(chunk) / limit.rate)

    def _json(self, status: int, data, headers: dict | None = None) -> None:
        body = json.dumps(data).encode()
        self._send(status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body)

    def _range(self, size: int) -> tuple[int, int] | None:
        """Parse `Range: bytes=a-b` / `bytes=a-`; None for the whole file."""
        header = self.headers.get("Range")
        if not header:
            return None
        unit, _, spec = header.partition("=")
        start_s, _, end_s = spec.strip().partition("-")
        if unit.strip() != "bytes" or "," in spec or not start_s.isdigit():
            raise _HubError(416, None, f"unsupported range {header}", {"Content-Range": f"bytes */{size}"})
        start, end = int(start_s), int(end_s) if end_s.isdigit() else size - 1
        if start >= size or end < start:
            raise _HubError(
                416, None, "Requested Range Not Satisfiable", {"Content-Range": f"bytes */{size}"}
            )
        return start, min(end, size - 1)

    def _serve_bytes(self, f: HubFile, headers: dict) -> None:
        size = len(f.data)
        headers = {"Accept-Ranges": "bytes", "Content-Type": _content_type(f.path), **headers}
        span = self._range(size)
        if span is None:
            return self._send(200, headers, f.data, content=f)
        start, end = span
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(206, headers, f.data[start : end + 1], content=f)

    # ------------------------------------------------------------------ the Hub

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization")
        if not auth:
            return None
        token = auth.removeprefix("Bearer ").strip()
        user = self.hub.users.get(token)
        if user is None:
            raise _HubError(401, None, "Invalid credentials in Authorization header")
        return user

    def _repo(self, repo_id: str, user: str | None) -> Repo:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and user not in repo.granted):
            # Without a token the Hub answers 401, so as not to reveal that a private repo exists.
            raise _HubError(401 if user is None else 404, "RepoNotFound", "Repository not found")
        return repo

    def _commit(self, repo: Repo, rev: str) -> tuple[str, dict[str, HubFile]]:
        sha = repo.commit_for(rev)
        if sha is None:
            raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return sha, repo.commits[sha]

    def _redirect_renamed(self, repo_id: str, new_path: str) -> bool:
        if repo_id not in self.hub.renamed:
            return False
        query = urlsplit(self.path).query
        location = new_path + (f"?{query}" if query else "")
        self._send(
            307,
            {"Location": location, "Content-Type": "text/plain"},
            f"Temporary Redirect. Redirecting to {location}".encode(),
        )
        return True

    def _hub(self) -> None:
        parts = self.raw_path.strip("/").split("/")
        user = self._user()
        if parts == ["api", "agent-harnesses"]:  # huggingface_hub fetches this registry for its user agent
            return self._json(200, {"standardEnvVars": ["AI_AGENT", "AGENT"], "harnesses": {}})
        if len(parts) >= 4 and parts[0] == "api" and parts[1] in ("models", "datasets"):
            repo_type = parts[1].removesuffix("s")
            repo_id = f"{unquote(parts[2])}/{unquote(parts[3])}"
            rest = parts[4:]
            if self._redirect_renamed(
                repo_id,
                "/" + "/".join(["api", parts[1], *self.hub.renamed.get(repo_id, "").split("/"), *rest]),
            ):
                return
            repo = self._repo(_key(repo_id, repo_type), user)
            if self.command == "GET" and not rest:
                return self._model_info(repo, "main")
            if self.command == "GET" and rest[0] == "revision" and len(rest) == 2:
                return self._model_info(repo, unquote(rest[1]))
            if self.command == "GET" and rest[0] == "tree" and len(rest) >= 2:
                return self._tree(repo, unquote(rest[1]), unquote("/".join(rest[2:])))
            if self.command == "POST" and rest[0] == "paths-info" and len(rest) == 2:
                return self._paths_info(repo, unquote(rest[1]))
        elif self.command in ("GET", "HEAD") and "resolve" in parts[2:4]:
            repo_type = "dataset" if parts[0] == "datasets" else "model"
            at = parts.index("resolve")
            if at != (3 if repo_type == "dataset" else 2) or len(parts) < at + 3:
                raise _HubError(404, None, "Sorry, we can't find the page you are looking for.")
            repo_id = f"{unquote(parts[at - 2])}/{unquote(parts[at - 1])}"
            new = self.hub.renamed.get(repo_id, "")
            if repo_type == "model" and self._redirect_renamed(
                repo_id, "/" + "/".join([*new.split("/"), *parts[2:]])
            ):
                return
            return self._resolve(
                self._repo(_key(repo_id, repo_type), user),
                user,
                unquote(parts[at + 1]),
                unquote("/".join(parts[at + 2 :])),
            )
        raise _HubError(404, None, "Sorry, we can't find the page you are looking for.")

    def _model_info(self, repo: Repo, rev: str) -> None:
        sha, tree = self._commit(repo, rev)
        blobs = self.query.get("blobs", "").lower() == "true"
        siblings = []
        for f in tree.values():
            sib = {"rfilename": f.path}
            if blobs:
                sib.update(size=len(f.data), blobId=f.oid)
                if f.lfs:
                    sib["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": len(f.pointer)}
            siblings.append(sib)
        info = {
            "_id": sha[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": sha,
            "lastModified": _DATE,
            "createdAt": _DATE,
            "private": repo.private,
            "disabled": False,
            "gated": repo.gated,
            "downloads": 0,
            "likes": 0,
            "tags": ["transformers", "safetensors"],
            "library_name": "transformers",
            "pipeline_tag": "text-generation",
            "siblings": siblings,
            "usedStorage": sum(len(f.data) for f in tree.values()),
        }
        if "config.json" in tree:
            config = json.loads(tree["config.json"].data)
            info["config"] = {k: config[k] for k in ("architectures", "model_type") if k in config}
        self._json(200, info, {"X-Repo-Commit": sha})

    def _tree(self, repo: Repo, rev: str, base: str) -> None:
        sha, tree = self._commit(repo, rev)
        recursive = self.query.get("recursive", "false").lower() == "true"
        prefix = f"{base.strip('/')}/" if base.strip("/") else ""
        under = [f for f in tree.values() if f.path.startswith(prefix)]
        if prefix and not under:
            raise _HubError(404, "EntryNotFound", f'{base} does not exist on "{rev}"', {"X-Repo-Commit": sha})
        entries, dirs = [], set()
        for f in under:
            rel_parts = f.path[len(prefix) :].split("/")
            for depth in range(1, len(rel_parts)):
                if recursive or depth == 1:
                    dirs.add(prefix + "/".join(rel_parts[:depth]))
            if recursive or len(rel_parts) == 1:
                entries.append(f.tree_entry())
        for d in sorted(dirs):
            entries.append(
                {
                    "type": "directory",
                    "oid": hashlib.sha1(f"{sha}{d}".encode()).hexdigest(),
                    "size": 0,
                    "path": d,
                }
            )
        self._json(200, sorted(entries, key=lambda e: e["path"]), {"X-Repo-Commit": sha})

    def _paths_info(self, repo: Repo, rev: str) -> None:
        """The entries (files, or directories) among the form's `paths`; unknown paths are left out."""
        sha, tree = self._commit(repo, rev)
        length = int(self.headers.get("Content-Length") or 0)
        form = parse_qs(self.rfile.read(length).decode())
        entries = []
        for path in form.get("paths", []):
            path = path.strip("/")
            if path in tree:
                entries.append(tree[path].tree_entry())
            elif any(f.startswith(path + "/") for f in tree):
                oid = hashlib.sha1(f"{sha}{path}".encode()).hexdigest()
                entries.append({"type": "directory", "oid": oid, "size": 0, "path": path})
        self._json(200, entries, {"X-Repo-Commit": sha})

    def _resolve(self, repo: Repo, user: str | None, rev: str, path: str) -> None:
        sha, tree = self._commit(repo, rev)
        if repo.gated and user not in repo.granted:
            if user is None:
                raise _HubError(
                    401,
                    "GatedRepo",
                    f"Access to model {repo.repo_id} is restricted. You must have access to it and be authenticated "
                    "to access it. Please log in.",
                    {"X-Repo-Commit": sha},
                )
            raise _HubError(
                403,
                "GatedRepo",
                f"Access to model {repo.repo_id} is restricted and you are not in the authorized list. "
                f"Visit {self.hub.url}/{repo.repo_id} to ask for access.",
                {"X-Repo-Commit": sha},
            )
        f = tree.get(path)
        if f is None:
            raise _HubError(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": sha})
        headers = {"X-Repo-Commit": sha, "ETag": f'"{f.oid}"'}
        if not f.lfs:
            return self._serve_bytes(f, headers)
        location = self.hub.cdn_location(repo.repo_id, f)
        headers.update(
            {
                "Location": location,
                "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": str(len(f.data)),
                "Content-Type": "text/plain; charset=utf-8",
            }
        )
        self._send(302, headers, f"Found. Redirecting to {location}".encode())

    # ------------------------------------------------------------------ the CDN (S3-like, presigned URLs)

    def _cdn(self) -> None:
        sha256 = self.raw_path.rstrip("/").rsplit("/", 1)[-1]
        f = self.hub.blob(sha256)
        if f is None or not hmac.compare_digest(self.query.get("X-Amz-Signature", ""), self.hub.sign(sha256)):
            return self._xml(403, "AccessDenied", "Access Denied")
        if self.headers.get("Authorization"):
            return self._xml(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, Signature query string "
                "parameter or the Authorization header should be specified",
            )
        name = f.path.rsplit("/", 1)[-1]
        try:
            self._serve_bytes(
                f, {"ETag": f'"{f.sha256}"', "Content-Disposition": f'inline; filename="{name}";'}
            )
        except _HubError as err:  # a bad Range, answered the S3 way
            self.record.status = err.status
            self._xml(err.status, "InvalidRange", err.message, err.headers)

    def _xml(self, status: int, code: str, message: str, headers: dict | None = None) -> None:
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        self._send(status, {"Content-Type": "application/xml", **(headers or {})}, body.encode())


def _content_type(path: str) -> str:
    if path.endswith(".json"):
        return "application/json; charset=utf-8"
    guess = mimetypes.guess_type(path)[0]
    return guess if guess and guess.startswith("text/") else "application/octet-stream"


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Serve model directories as a local Hugging Face Hub.")
    parser.add_argument("repos", nargs="+", metavar="ORG/NAME=DIR")
    args = parser.parse_args(argv)
    hub = HubDouble()
    for spec in args.repos:
        repo_id, _, directory = spec.partition("=")
        hub.add_repo(repo_id, Path(directory))
    hub.start()
    print(f"HF_ENDPOINT={hub.url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        hub.stop()


if __name__ == "__main__":
    main()
