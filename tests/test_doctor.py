"""`llmkit doctor`: the table of what is present, never the token itself."""

from __future__ import annotations

import json

import pytest

from llmkit import allocator


@pytest.mark.slow
def test_doctor_json_reports_hardware_and_tools(llmkit_cli):
    secret = "hf_SECRETtokenVALUE123"
    result = llmkit_cli("doctor", "--json", env={"HF_TOKEN": secret})
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in (
        "python",
        "torch",
        "cpu",
        "bf16",
        "QLoRA (4-bit)",
        "bitsandbytes",
        "accelerate config",
        "HF token",
        "HF cache",
        "ollama binary",
        "ollama server",
        "llama-cpp-python",
        "free disk (llmkit home)",
    ):
        assert key in data, key
    assert data["HF token"] == "yes"
    assert data["ollama server"] == "not running"  # conftest points OLLAMA_HOST at a closed port
    assert data["QLoRA (4-bit)"] == "no"  # CPU-only CI
    library = allocator.find()  # what `llmkit train` will preload, or the tip to install one
    assert data["training malloc"] == (
        library.name if library else "glibc" if allocator.missing() else "system"
    )
    assert secret not in result.stdout + result.stderr


@pytest.mark.slow
def test_doctor_table_shows_running_server(llmkit_cli, ollama_double):
    result = llmkit_cli("doctor")
    assert result.returncode == 0, result.stderr
    assert "llmkit doctor" in result.stdout
    line = next(row for row in result.stdout.splitlines() if "ollama server" in row)
    assert ollama_double.version in line
    token = llmkit_cli("doctor", "--json", env={"HF_TOKEN": ""})
    assert json.loads(token.stdout)["HF token"] == "no"


def test_thread_pool_counts_only_idle_cores(monkeypatch):
    """With every core of our affinity set taken by another process, torch gets one thread (a
    thread per busy core spins at OpenMP barriers and collapses throughput)."""
    import os
    import subprocess
    import sys

    import torch

    from llmkit.devices import free_cpus, use_free_cpus

    n = len(os.sched_getaffinity(0))
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        import time

        time.sleep(0.5)  # let them get scheduled
        assert free_cpus(sample=0.5) == 1
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        before = torch.get_num_threads()
        try:
            assert use_free_cpus() == 1
        finally:
            torch.set_num_threads(before)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
