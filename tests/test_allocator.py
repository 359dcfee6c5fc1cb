"""The CLI's training commands restart once on tcmalloc/jemalloc (llmkit.allocator): real execs of
real processes, read back from their own memory maps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from llmkit import allocator
from llmkit.errors import LlmkitError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD is Linux's")

# Restarts itself as the CLI does, then reports what it runs on.
PROBE = textwrap.dedent(
    """
    import json, os, sys
    from llmkit.allocator import in_use, restart_preloaded
    restart_preloaded(sys.argv[1:])
    print(json.dumps({"malloc": in_use(), "pid": os.getpid(), "argv": sys.argv[1:],
                      "LD_PRELOAD": os.environ.get("LD_PRELOAD"),
                      "mark": "_LLMKIT_PRELOAD_WAS" in os.environ}))
    """
)


def _probe(tmp_path, *argv, **env):
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    full = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "LLMKIT_ALLOCATOR")}
    full.update(env)
    proc = subprocess.Popen(
        [sys.executable, str(script), *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=full,
        text=True,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    report = json.loads(out)
    assert report["pid"] == proc.pid  # replaced in place: a kill -9 or a wait on the PID still hits it
    return report, err


def test_a_training_command_restarts_on_the_allocator_and_hands_children_the_env_as_it_was(tmp_path):
    library = allocator.find()
    if library is None:
        pytest.skip(f"no tcmalloc/jemalloc on this machine ({allocator.INSTALL}); CI installs one")
    report, _ = _probe(tmp_path, "train", "tiny", "train.lr=1e-4")
    assert report == {
        "malloc": allocator.kind(library),
        "pid": report["pid"],
        "argv": ["train", "tiny", "train.lr=1e-4"],
        "LD_PRELOAD": None,  # what this process's own children (llama.cpp, go, ollama) get
        "mark": False,
    }
    # a user's own preload stays, after ours, and comes back as it was
    report, _ = _probe(tmp_path, "--debug", "run", "tiny", LD_PRELOAD="libm.so.6")
    assert report["malloc"] == allocator.kind(library) and report["LD_PRELOAD"] == "libm.so.6"


def test_other_commands_and_an_opt_out_stay_on_the_system_allocator(tmp_path):
    for argv in (["embed", "texts.txt"], ["export", "runs/x"], ["--version"]):
        assert _probe(tmp_path, *argv)[0]["malloc"] == "system"
    assert _probe(tmp_path, "train", "tiny", LLMKIT_ALLOCATOR="system")[0]["malloc"] == "system"


def test_a_library_that_will_not_load_restarts_once_then_trains_on_the_system_allocator(tmp_path):
    """ld.so ignores a preload it cannot load: the restarted process must not restart again."""
    bogus = tmp_path / "libnot.so"
    bogus.write_text("not an ELF file")
    report, err = _probe(tmp_path, "train", "tiny", LLMKIT_ALLOCATOR=str(bogus))
    assert report["malloc"] == "system" and report["LD_PRELOAD"] is None and not report["mark"]
    assert err.count("cannot be preloaded") == 1  # one restart, no loop


def test_allocator_choice_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMKIT_ALLOCATOR", "system")
    assert allocator.find() is None and not allocator.missing()
    monkeypatch.setenv("LLMKIT_ALLOCATOR", str(tmp_path / "nope.so"))
    with pytest.raises(LlmkitError, match="LLMKIT_ALLOCATOR=.*nope.so: no such file") as err:
        allocator.find()
    assert "system" in err.value.hint
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    monkeypatch.setenv("LLMKIT_ALLOCATOR", str(lib))
    assert allocator.find() == lib and allocator.kind(lib) == "tcmalloc"
    env = allocator.preloaded_env({"LD_PRELOAD": "libm.so.6", "HOME": "/h"})
    assert env["LD_PRELOAD"] == f"{lib}:libm.so.6" and env["HOME"] == "/h"
