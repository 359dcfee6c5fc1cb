"""A faster memory allocator for training: tcmalloc (or jemalloc) preloaded into `llmkit train`.

A CPU training step allocates and frees activation-sized buffers at every layer, thousands per
step. With glibc's malloc that costs a sixth to a fifth of the run: SmolLM2-135M LoRA on an Intel
Xeon, 128 conversations, 39.6 -> 33.5 s in fp32 and 29.7 -> 23.5 s in bf16 with tcmalloc (2
alternating pairs each; jemalloc sits between). An allocator replaces malloc only if it is loaded
before anything else (`LD_PRELOAD`), so the CLI restarts its own process once, with the library
preloaded, for the commands that train (`TRAINING_COMMANDS`), when the machine has one. The library
comes from the system (Debian/Ubuntu: `apt install libtcmalloc-minimal4`); PyPI ships none.

Only training gets it: OpenVINO's `compile_model` (an embedding path) aborts under a preloaded
allocator, and child processes (llama.cpp, Go, Ollama) get the environment as it was.
`LLMKIT_ALLOCATOR=system` keeps glibc; `LLMKIT_ALLOCATOR=/path/lib.so` names one.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

TRAINING_COMMANDS = ("train", "run")
# Best first: tcmalloc was faster than jemalloc in every pair measured (module docstring).
LIBRARIES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libjemalloc.so.2")
KINDS = ("tcmalloc", "jemalloc")  # the allocators in_use() recognises in a process's memory map
INSTALL = "apt install libtcmalloc-minimal4 (Debian/Ubuntu; gperftools elsewhere)"
GAIN = "1.1–1.4x"  # whole training runs against glibc (README: Intel Xeon, SmolLM2 / Gemma 3 / MoE)
_MARK = "_LLMKIT_PRELOAD_WAS"  # set across the restart: LD_PRELOAD as it was, and "done once"


def _search_dirs() -> list[Path]:
    dirs = [Path(sys.prefix) / "lib"]
    if os.environ.get("CONDA_PREFIX"):
        dirs.append(Path(os.environ["CONDA_PREFIX"]) / "lib")
    machine = os.uname().machine  # find() looks on Linux only
    dirs += [
        Path(f"/usr/lib/{machine}-linux-gnu"),
        Path("/usr/lib64"),
        Path("/usr/lib"),
        Path("/usr/local/lib"),
    ]
    return dirs


def find() -> Path | None:
    """The allocator library to preload: LLMKIT_ALLOCATOR's path, else the first of LIBRARIES found
    on this machine; None on a machine without one, off Linux, or with LLMKIT_ALLOCATOR=system."""
    choice = os.environ.get("LLMKIT_ALLOCATOR", "").strip()
    if choice == "system" or not sys.platform.startswith("linux"):
        return None
    if choice:
        path = Path(choice).expanduser()
        if not path.is_file():
            from llmkit.errors import LlmkitError

            raise LlmkitError(
                f"LLMKIT_ALLOCATOR={choice}: no such file",
                hint="name a shared library (e.g. /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4), or 'system'",
            )
        return path
    for name in LIBRARIES:
        for folder in _search_dirs():
            if (folder / name).is_file():
                return folder / name
    return None


def in_use() -> str:
    """The allocator this process runs on: 'tcmalloc', 'jemalloc' or 'system' (read from its own
    memory map, so it is what was loaded, not what was asked for)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "system"
    return next((name for name in KINDS if f"lib{name}" in maps), "system")


def kind(library: Path) -> str:
    """'tcmalloc' or 'jemalloc': what a process preloading `library` reports as in_use()."""
    return next((name for name in KINDS if name in library.name), "system")


def missing() -> bool:
    """True where a training run goes without a faster allocator only because none is installed
    (Linux, none found, none loaded, LLMKIT_ALLOCATOR not 'system'): worth a one-line tip."""
    if os.environ.get("LLMKIT_ALLOCATOR", "").strip() == "system" or not sys.platform.startswith("linux"):
        return False
    return in_use() == "system" and find() is None


def restart_preloaded(argv: list[str]) -> None:
    """For a training command, replace this process by the same command with the allocator
    preloaded (`os.execv`: same PID, same terminal, nothing printed yet). Returns when there is
    nothing to do: another command, no library, already loaded, or this is the restarted process
    (which puts LD_PRELOAD back as it was, so its own children start as the user's would)."""
    if _MARK in os.environ:
        was = os.environ.pop(_MARK)
        if was:
            os.environ["LD_PRELOAD"] = was
        else:
            os.environ.pop("LD_PRELOAD", None)
        return
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in TRAINING_COMMANDS or in_use() != "system":
        return
    env = preloaded_env(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def preloaded_env(env) -> dict | None:
    """A copy of `env` that starts a process on the faster allocator (LD_PRELOAD with find()'s
    library first; its LD_PRELOAD as it was kept in _LLMKIT_PRELOAD_WAS for the restarted CLI
    to put back), or None where there is none to preload."""
    library = find()
    if library is None:
        return None
    env = dict(env)
    env[_MARK] = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = ":".join(filter(None, (str(library), env[_MARK])))
    # tcmalloc reports every allocation over 1 GB on stderr (a big vocabulary's logits): not news.
    env.setdefault("TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD", str(1 << 40))
    return env
