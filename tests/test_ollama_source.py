"""The `ollama:NAME` model source: an Ollama store holding the real SmolLM2 GGUF, end to end into `llmkit chat`."""

from __future__ import annotations

import json

import pytest
from conftest import _free_port, run_llmkit

from llmkit.errors import SourceError
from llmkit.ollama import locate_model_gguf

TEMPLATE = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
PARAMS = {"stop": ["<|im_start|>", "<|im_end|>"], "temperature": 0.2}


@pytest.fixture
def smollm2_in_ollama(ollama_double, smollm2_gguf):
    """SmolLM2 stored the way `ollama pull smollm2:135m` leaves it (manifest + blobs)."""
    ollama_double.add_model(
        "smollm2:135m", smollm2_gguf, template=TEMPLATE, system="You are helpful.", parameters=PARAMS
    )
    return ollama_double


def test_locate_reads_the_store_and_warns_about_quantization(smollm2_in_ollama, smollm2_gguf, capsys):
    path, meta = locate_model_gguf("SmolLM2:135M")  # Ollama names are case-insensitive
    assert path == smollm2_in_ollama.blob_path(smollm2_in_ollama.model("smollm2:135m")["model_digest"])
    assert path.read_bytes()[:4] == b"GGUF" and path.stat().st_size == smollm2_gguf.stat().st_size
    assert meta["name"] == "smollm2:135m"
    assert (
        meta["template"] == TEMPLATE and meta["parameters"] == PARAMS and meta["system"] == "You are helpful."
    )
    assert meta["file_type"] == "Q4_1" and meta["quantized"] and meta["architecture"] == "llama"
    err = capsys.readouterr().err
    assert "quantized (Q4_1)" in err and "Prefer the original Hugging Face model" in err


def test_locate_asks_the_server_when_the_store_is_elsewhere(smollm2_in_ollama, tmp_path, monkeypatch):
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "empty"))  # e.g. a system service's own store
    path, meta = locate_model_gguf("smollm2:135m")
    assert path.parent == smollm2_in_ollama.models_dir / "blobs"
    assert (
        meta["template"] == TEMPLATE and meta["parameters"] == PARAMS and meta["system"] == "You are helpful."
    )


def test_locate_errors(ollama_double, monkeypatch):
    ollama_double.add_model("not-gguf", b"\x08\x00\x00\x00\x00\x00\x00\x00{}")  # a safetensors header, say
    with pytest.raises(SourceError, match="are not a GGUF file"):
        locate_model_gguf("not-gguf")
    with pytest.raises(SourceError, match="model 'ghost:latest' not found") as err:
        locate_model_gguf("ghost")
    assert "llmkit ollama list" in err.value.hint
    with pytest.raises(SourceError, match="not a valid Ollama model name"):
        locate_model_gguf("bad name!")
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{_free_port()}")
    with pytest.raises(SourceError, match="no Ollama server answers") as err:
        locate_model_gguf("ghost")
    assert "llmkit ollama pull ghost:latest" in err.value.hint


def test_truncated_blob_is_named_before_any_conversion(ollama_double, smollm2_gguf):
    """A blob cut off mid-write (a full disk, a killed copy): one line naming the file, no numpy error."""
    ollama_double.add_model("cut:latest", smollm2_gguf.read_bytes()[:5_000_000])
    r = run_llmkit("pull", "ollama:cut", env={"OLLAMA_HOST": ollama_double.host})
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    line = r.stderr.strip().splitlines()[0]
    assert line.startswith("Error: ") and "is truncated or not a GGUF file (its tensors need" in line
    assert "sha256-" in line  # the blob's own path


def test_pull_ollama_source_not_found_from_the_cli(ollama_double):
    r = run_llmkit("pull", "ollama:ghost", env={"OLLAMA_HOST": ollama_double.host})
    assert r.returncode == 1 and "model 'ghost:latest' not found" in r.stderr


@pytest.mark.slow
def test_chat_with_an_ollama_model_end_to_end(smollm2_in_ollama, smollm2_dir):
    # smollm2_dir converts the same GGUF once per session; the ollama: source then hits that cache.
    env = {"OLLAMA_HOST": smollm2_in_ollama.host, "OLLAMA_MODELS": str(smollm2_in_ollama.models_dir)}
    pulled = run_llmkit("pull", "ollama:smollm2:135m", "--json", env=env)
    assert pulled.returncode == 0, pulled.stderr
    model_dir = json.loads(pulled.stdout)["path"]
    assert (smollm2_dir / "config.json").is_file() and model_dir
    r = run_llmkit("chat", "ollama:smollm2:135m", "What is the capital of France?", env=env)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "quantized (Q4_1)" in r.stderr


@pytest.mark.slow
def test_export_of_an_ollama_base_keeps_its_parameters_and_system(smollm2_in_ollama, smollm2_dir, tmp_path):
    env = {"OLLAMA_HOST": smollm2_in_ollama.host, "OLLAMA_MODELS": str(smollm2_in_ollama.models_dir)}
    out = tmp_path / "export"
    r = run_llmkit("export", "ollama:smollm2:135m", "-o", str(out), "--json", env=env)
    assert r.returncode == 0, r.stderr
    modelfile = (out / "Modelfile").read_text()
    assert "PARAMETER temperature 0.2" in modelfile  # inherited from the Ollama base
    assert 'SYSTEM """You are helpful."""' in modelfile or "SYSTEM You are helpful." in modelfile
    assert 'PARAMETER stop "<|im_start|>"' in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    # the same weights reached as the built-in name carry no Ollama settings
    plain = run_llmkit("export", "smollm2-135m-instruct", "-o", str(tmp_path / "plain"))
    assert plain.returncode == 0, plain.stderr
    assert "temperature" not in (tmp_path / "plain" / "Modelfile").read_text()
