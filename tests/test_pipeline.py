"""`llmkit run RECIPE`: pull → train → export → Ollama model, end to end on the tiny recipe."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.mark.slow
def test_run_tiny_recipe_into_ollama(llmkit_cli, ollama_double, tmp_path):
    run_dir = tmp_path / "run"
    result = llmkit_cli(
        "run",
        "tiny",
        f"train.output_dir={run_dir}",
        "train.max_steps=4",
        "export.ollama=tiny-llmkit",
        env={"OLLAMA_HOST": ollama_double.host},
    )
    assert result.returncode == 0, result.stderr
    assert "1/3 pull" in result.stderr and "2/3 train" in result.stderr and "3/3 export" in result.stderr
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    gguf = Path(next(x.split(": ", 1)[1] for x in result.stdout.splitlines() if x.startswith("gguf: ")))
    assert gguf.is_file() and gguf.read_bytes()[:4] == b"GGUF"
    assert "ollama: tiny-llmkit" in result.stdout
    model = ollama_double.model("tiny-llmkit")
    assert model is not None and "<|start_header_id|>" in model["template"]


def test_run_reports_recipe_errors_before_work(llmkit_cli, tmp_path):
    result = llmkit_cli("run", "tiny", "train.lrr=1")
    assert result.returncode == 1
    assert "train.lrr: unknown key (did you mean 'train.lr'?)" in result.stderr
    assert "1/3 pull" not in result.stderr
