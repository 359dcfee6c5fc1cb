"""`llmkit ollama serve`: use the server that answers, or start `ollama serve` in the background."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

from llmkit.errors import OllamaError
from llmkit.files import home
from llmkit.ollama.client import host_url, server_version

INSTALL_HINTS = {
    "linux": "install it with: curl -fsSL https://ollama.com/install.sh | sh",
    "darwin": "install it with: brew install ollama (or the app from https://ollama.com/download/mac)",
    "win32": "install it from https://ollama.com/download/windows (or: winget install Ollama.Ollama)",
}
# Ollama documents an invalid GPU id as the way to force CPU; these hide every GPU backend.
CPU_ONLY_ENV = {
    "CUDA_VISIBLE_DEVICES": "-1",
    "HIP_VISIBLE_DEVICES": "-1",
    "ROCR_VISIBLE_DEVICES": "-1",
    "GGML_VK_VISIBLE_DEVICES": "-1",
}


def serve(*, gpu: bool | None = None, timeout: float = 30.0) -> dict:
    """Return {"status": "running"|"started", "version", "host", and for a start "pid", "log"}.

    gpu=False hides the GPUs from the server; gpu=True undoes an inherited CPU-only setting;
    None leaves the environment as it is.
    """
    url = host_url()
    version = server_version()
    if version:
        return {"status": "running", "version": version, "host": url}
    binary = shutil.which("ollama")
    if binary is None:
        platform = "linux" if sys.platform.startswith("linux") else sys.platform
        raise OllamaError(
            f"no Ollama server answers at {url} and the `ollama` program is not installed (not on PATH)",
            INSTALL_HINTS.get(platform, "download it from https://ollama.com/download"),
        )
    env = dict(os.environ)
    if gpu is False:
        env.update(CPU_ONLY_ENV)
    elif gpu is True:
        for key, value in CPU_ONLY_ENV.items():
            if env.get(key) == value:
                env.pop(key)
    log_path = home() / "logs" / "ollama-serve.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, "serve"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # keeps running after llmkit exits; Ctrl-C here does not reach it
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise OllamaError(
                f"`ollama serve` exited with code {proc.returncode} before answering: {_tail(log_path)}",
                f"full log: {log_path}",
            )
        version = server_version(timeout=1.0)
        if version:
            return {
                "status": "started",
                "version": version,
                "host": url,
                "pid": proc.pid,
                "log": str(log_path),
            }
        time.sleep(0.25)
    proc.terminate()
    raise OllamaError(
        f"`ollama serve` did not answer at {url} within {timeout:.0f} s (stopped it)",
        f"see {log_path}; a first start can be slow: retry with a larger --timeout",
    )


def stop_hint(pid: int) -> str:
    return f"taskkill /PID {pid}" if sys.platform == "win32" else f"kill {pid}"


def _tail(path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"
