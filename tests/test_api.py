"""The Python API mirrors the CLI: `llmkit.pull/train/export/embed`, whatever was imported first."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_import_llmkit_is_light():
    code = "import sys, llmkit; print([m for m in ('torch', 'transformers') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.slow
def test_api_functions_stay_callable_after_submodule_imports(tmp_path):
    import llmkit
    import llmkit.embedding.encoders  # noqa: F401
    import llmkit.exporter.gguf  # noqa: F401
    import llmkit.training  # noqa: F401

    run_dir = llmkit.train("tiny", [f"train.output_dir={tmp_path / 'run'}", "train.max_steps=2"])
    assert (run_dir / "adapter" / "adapter_config.json").is_file()
    result = llmkit.export(run_dir, gguf="f16")
    assert result.gguf.read_bytes()[:4] == b"GGUF"
    vectors = llmkit.embed(["a phrase", "another phrase"])
    assert vectors.shape == (2, 384) and vectors.dtype.name == "float32"
    assert llmkit.pull("tiny-llama").joinpath("config.json").is_file()
