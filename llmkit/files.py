"""Where llmkit keeps things, and how it writes them without leaving half-written files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmkit.errors import OutputError


def home() -> Path:
    """LLMKIT_HOME (default ~/.cache/llmkit): converted models, logs, caches."""
    path = Path(os.environ.get("LLMKIT_HOME") or Path.home() / ".cache" / "llmkit").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_writable(path: Path, what: str = "output", *, is_dir: bool = False) -> Path:
    """Fail now, in one line, if `path` cannot be created later: the first ancestor that exists
    must be a writable directory. Checked before heavy work, so a typo costs no loading time."""
    path = Path(path).expanduser()
    if is_dir and path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a directory", "pick another path")
    parent = path if path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(
            f"cannot write {what} {path}: {parent} is a file, not a directory",
            "pick a path under a directory",
        )
    try:  # a real probe: permission bits say nothing for root, nor about read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".llmkit-write-check-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"cannot write {what} {path}: {parent}: {exc.strerror or exc}", "pick a writable path"
        ) from None
    return path


@contextlib.contextmanager
def atomic_dir(final: Path, *, replace: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory; rename it to `final` only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if final.exists():
            if not replace:
                raise FileExistsError(final)
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary sibling path (same suffix, for writers that go by it: pyarrow, numpy,
    gguf); it replaces `final` only if the block succeeds, fsynced first, so a crash leaves the
    old file or the new one, never half of one."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", suffix=final.suffix, dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        # mkstemp makes 0600: give the finished file the usual mode (keeping execute bits a writer set)
        os.chmod(tmp, (os.stat(tmp).st_mode | 0o666) & 0o777 & ~_umask())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_file(final: Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling file for writing; it replaces `final` on success (see atomic_path)."""
    with atomic_path(final) as tmp, open(tmp, mode, encoding=None if "b" in mode else "utf-8") as fh:
        yield fh


def write_json(path: Path, data: Any) -> None:
    with atomic_file(path) as fh:
        json.dump(data, fh, indent=2, default=str)
        fh.write("\n")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"
