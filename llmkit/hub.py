"""The Hugging Face Hub: download a model repo, resume partial downloads, find cached snapshots.

Everything that touches huggingface_hub (its errors, cache layout, HTTP session and download
internals) lives here, so an upgrade of it touches this file only. `sources.resolve()` is the
entry point; it checks the directory this module returns.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from llmkit.errors import SourceError, first_line
from llmkit.files import sha256_file
from llmkit.ui import info, warn

# What a model needs, and nothing that can execute code: safetensors weights, configs,
# tokenizer and chat-template files, from the repo's top level. Pickle weights only on request.
DEFAULT_PATTERNS = [
    "*.json",
    "*.safetensors",
    "tokenizer.model",
    "*.tiktoken",
    "*.jinja",
    "merges.txt",
    "vocab.txt",
]
PICKLE_PATTERNS = ["*.bin", "*.pt", "*.pth"]
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def download(
    repo_id: str,
    *,
    revision: str | None = None,
    include=(),
    exclude=(),
    allow_pickle: bool = False,
    token: str | None = None,
) -> Path:
    """Download a model repo into the standard HF cache; only safe files unless asked. Returns the
    snapshot directory (the caller checks it is a usable model directory).

    huggingface_hub writes each file to a process-unique `.incomplete` blob and renames it when
    complete, so no partial file is ever final; it does not resume across processes, so the
    blobs a killed pull left behind are resumed here (a Range request) before the snapshot.
    """
    import glob

    from huggingface_hub import constants, get_token, snapshot_download
    from huggingface_hub import errors as hf_errors

    from llmkit.files import human_size

    token = token or get_token()  # --token, else HF_TOKEN, else the token saved by `hf auth login`
    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        if not constants.HF_HUB_OFFLINE:
            _probe(constants.ENDPOINT)
        files = _check_weights_format(repo_id, revision, token, allow_pickle, include, exclude)
        if not constants.HF_HUB_OFFLINE:
            size = human_size(sum(f.size for f in files))
            info(f"Downloading {where} from {constants.ENDPOINT}: {len(files)} files, {size}")
            _resume_partial_downloads(repo_id, revision, files, token)
        # The exact files chosen above, so the offline completeness check agrees with them;
        # with no cached listing, the patterns (the snapshot is then missing anyway).
        patterns = [*DEFAULT_PATTERNS, *include] if files is None else [glob.escape(f.path) for f in files]
        path = snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=patterns,
            ignore_patterns=list(exclude) or None,
            token=token or False,
        )
        if constants.HF_HUB_OFFLINE:  # said only now: the snapshot above raised if it was not cached
            info(f"Using the cached copy of {where} (HF_HUB_OFFLINE is set)")
    except hf_errors.GatedRepoError:
        raise SourceError(
            f"{repo_id} is gated: access needs an accepted license and a token"
            + (" (the token given has no access)" if token else ""),
            "accept the terms on the model page, then set HF_TOKEN or pass --token",
        ) from None
    except hf_errors.RevisionNotFoundError:
        raise SourceError(
            f"revision '{revision}' not found in {repo_id}", "check the branch, tag or commit"
        ) from None
    except hf_errors.RepositoryNotFoundError:
        raise SourceError(
            f"model '{repo_id}' not found on the Hub",
            "check the spelling (org/name); private repos need HF_TOKEN or --token",
        ) from None
    except hf_errors.IncompleteSnapshotError:
        raise SourceError(
            f"the cached copy of {where} is incomplete (an interrupted download) and the Hub cannot be reached"
            + (" (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""),
            f"run `llmkit pull {where}` online to finish it",
        ) from None
    except (hf_errors.LocalEntryNotFoundError, hf_errors.OfflineModeIsEnabled):
        raise SourceError(
            f"{where} is not in the local cache and the Hub cannot be reached"
            + (" (HF_HUB_OFFLINE is set)" if constants.HF_HUB_OFFLINE else ""),
            "connect to the network and run `llmkit pull` once, or use a local dir / .gguf file",
        ) from None
    except hf_errors.HfHubHTTPError as exc:
        if exc.response is not None and exc.response.status_code == 401:  # a token the Hub does not know
            raise SourceError(
                f"the Hub rejected the token for {where} (invalid or expired)",
                "set HF_TOKEN or pass --token with a valid token (huggingface.co/settings/tokens)",
            ) from None
        raise SourceError(f"the Hub refused {where}: {first_line(exc)}") from None
    except (OSError, *_network_errors()) as exc:  # the Hub is unreachable (or the disk is full)
        cached = _cached_snapshot(repo_id, revision, include, exclude)
        if cached is None:
            raise SourceError(
                f"cannot download {where} and it is not in the local cache: {first_line(exc)}",
                "check the network and free disk; HF_HUB_OFFLINE=1 uses only the cache",
            ) from None
        warn(f"the Hub is unreachable ({first_line(exc)}); using the cached copy of {where}")
        path = cached
    return Path(path)


def _probe(endpoint: str) -> None:
    """One quick request, so an unreachable Hub is known in seconds rather than after the ~30 s of
    retries huggingface_hub spends on each call; raises the HTTP client's transport error."""
    from huggingface_hub.utils import get_session

    get_session().head(endpoint, timeout=5)  # any HTTP answer means the Hub is reachable


def _network_errors() -> tuple[type[Exception], ...]:
    """Transport errors of the HTTP client huggingface_hub uses (httpx, or httpx2 in 2.x)."""
    import importlib

    found = []
    for name in ("httpx", "httpx2"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _cached_snapshot(repo_id: str, revision: str | None, include=(), exclude=()) -> Path | None:
    """The cached snapshot of a repo, without the network; None when it is not (fully) cached."""
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                repo_id,
                revision=revision,
                local_files_only=True,
                allow_patterns=[*DEFAULT_PATTERNS, *include],
                # the default patterns mean top-level files only (as in `download`)
                ignore_patterns=[*exclude, *([] if any("/" in p for p in include) else ["*/*"])] or None,
            )
        )
    except Exception:  # not cached, or only partly
        return None


def _resume_partial_downloads(repo_id: str, revision: str | None, files: list, token: str | None) -> None:
    """Finish the LFS blobs a killed pull left as `<sha256>.<id>.incomplete`, from where they stopped.

    Partials of small files (`<git sha1>.<id>.incomplete`) are not worth a Range request: they
    are removed, and the snapshot download fetches those files again.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    from llmkit.files import human_size

    folder = repo_folder_name(repo_id=repo_id, repo_type="model")
    blobs = Path(constants.HF_HUB_CACHE) / folder / "blobs"
    for f in files if blobs.is_dir() else []:
        etag = f.lfs.sha256 if f.lfs else f.blob_id
        partials = sorted(blobs.glob(f"{etag}.*.incomplete"), key=lambda p: p.stat().st_size) if etag else []
        if not partials:
            continue
        # huggingface_hub holds this lock while it writes the blob: with it, no live process
        # is writing these partials.
        with WeakFileLock(Path(constants.HF_HUB_CACHE) / ".locks" / folder / f"{etag}.lock"):
            best = partials[-1]
            if f.lfs and not (blobs / etag).exists() and best.exists() and best.stat().st_size:
                url = hf_hub_url(repo_id, f.path, revision=revision)
                meta = get_hf_file_metadata(url, token=token or False)
                if meta.etag == etag:  # otherwise the file changed since: download it afresh
                    headers = build_hf_headers(token=token or False)
                    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
                        headers.pop("authorization", None)  # a presigned CDN URL: the token stays here
                    offset = best.stat().st_size
                    info(f"Resuming {f.path} from {human_size(offset)}")
                    with open(best, "ab") as fh:
                        http_get(
                            meta.location, fh, resume_size=offset, headers=headers, expected_size=meta.size
                        )
                    if sha256_file(best) == etag:
                        os.replace(best, blobs / etag)
            for p in partials:
                p.unlink(missing_ok=True)


def _check_weights_format(repo_id, revision, token, allow_pickle, include=(), exclude=()) -> list | None:
    """Refuse repos that only have pickle weights unless --allow-pickle was given.

    Returns the repo files to download: top-level files matching the default patterns (subfolders
    hold copies such as `original/consolidated.00.pth` or training checkpoints), plus files
    matching --include, minus --exclude. Offline, from the listing cached by an earlier pull
    (None if there is none).
    """
    from fnmatch import fnmatchcase

    from huggingface_hub import HfApi, constants, get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError
    from huggingface_hub.hf_api import RepoFile
    from huggingface_hub.utils import filter_repo_objects

    if constants.HF_HUB_OFFLINE:
        try:
            tree = get_cached_repo_tree(repo_id, revision=revision)
        except CachedRepoTreeNotFoundError:
            return None
    else:
        listing = HfApi().list_repo_tree(repo_id, recursive=True, revision=revision, token=token or False)
        tree = [f for f in listing if isinstance(f, RepoFile)]
    top = [f.path for f in tree if "/" not in f.path]
    has_safe = any(p.endswith(".safetensors") for p in top)
    has_pickle = any(p.endswith((".bin", ".pt", ".pth")) for p in top)
    if not has_safe and has_pickle and not allow_pickle:
        raise SourceError(
            f"{repo_id} only has pickle weights (.bin), which can run code when loaded",
            "pass --allow-pickle if you trust this repo",
        )
    if not has_safe and not has_pickle:
        raise SourceError(
            f"{repo_id} has no model weights (no *.safetensors or *.bin files at its top level)"
        )
    patterns = [*DEFAULT_PATTERNS, *(PICKLE_PATTERNS if allow_pickle else [])]
    wanted = {p for p in top if any(fnmatchcase(p, pat) for pat in patterns)}
    if include:
        wanted |= set(filter_repo_objects([f.path for f in tree], allow_patterns=list(include)))
    kept = set(filter_repo_objects(sorted(wanted), ignore_patterns=list(exclude) or None))
    return [f for f in tree if f.path in kept]


def config_snapshot(ref: str, revision: str | None) -> Path:
    """A Hub model's config and tokenizer files only (cached, else downloaded: kilobytes, no weights)."""
    from huggingface_hub import snapshot_download

    patterns = [p for p in DEFAULT_PATTERNS if p != "*.safetensors"]
    for local in (True, False):
        try:
            return Path(
                snapshot_download(ref, revision=revision, allow_patterns=patterns, local_files_only=local)
            )
        except Exception as exc:
            if not local:
                raise SourceError(
                    f"cannot read the config of {ref}: not cached, and the Hub says: {first_line(exc)}",
                    "check the name (org/name[@revision]); `llmkit pull` it once, or pass a local dir",
                ) from None
    raise AssertionError("unreachable")


def cached_models() -> list[dict]:
    """The model snapshots in the Hugging Face cache, one row per revision (for `llmkit models`)."""
    from huggingface_hub import scan_cache_dir

    rows: list[dict] = []
    try:
        for repo in sorted(scan_cache_dir().repos, key=lambda r: r.repo_id):
            if repo.repo_type != "model":
                continue
            for rev in repo.revisions:
                refs = ",".join(sorted(rev.refs)) or rev.commit_hash[:8]
                rows.append(
                    {
                        "name": f"{repo.repo_id}@{refs}",
                        "source": "hf cache",
                        "size": rev.size_on_disk,
                        "path": str(rev.snapshot_path),
                    }
                )
    except Exception as exc:  # no cache yet, or an unreadable one
        if "not found" not in str(exc).lower() and "does not exist" not in str(exc).lower():
            warn(f"could not scan the Hugging Face cache: {first_line(exc)}")
    return rows
