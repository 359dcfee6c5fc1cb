"""Sentence-transformers encoders (BERT) exported to GGUF: llama.cpp embeds like sentence-transformers.

Real components throughout: the bundled all-MiniLM-L6-v2, gguf-py, llama.cpp (llama-cpp-python),
sentence-transformers, and the Ollama HTTP double driven through the official client.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli_inprocess as cli

from llmkit.errors import ExportError
from llmkit.exporter.encoder_gguf import (
    PROBE,
    encoder_source,
    export_encoder,
    llama_vectors,
    read_encoder,
    reference_vectors,
    write_encoder_gguf,
)

MINILM = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def minilm_dir():
    return encoder_source(MINILM)


@pytest.mark.slow
@pytest.mark.parametrize("out_type", ["f16", "f32"])
def test_minilm_exports_and_verifies(out_type, tmp_path, minilm_dir):
    result = export_encoder(MINILM, minilm_dir, gguf=out_type, output=tmp_path, verify=True)
    report = json.loads((tmp_path / "verify.json").read_text())
    assert report["passed"] and report["rows"] == len(PROBE) >= 30
    assert report["min_cosine"] >= 0.999
    import gguf

    reader = gguf.GGUFReader(str(result.gguf))
    kv = {f.name: f for f in reader.fields.values()}
    assert bytes(kv["general.architecture"].parts[-1]).decode() == "bert"
    assert int(kv["bert.pooling_type"].parts[-1][0]) == int(gguf.PoolingType.MEAN)
    assert bool(kv["bert.attention.causal"].parts[-1][0]) is False
    assert bytes(kv["tokenizer.ggml.model"].parts[-1]).decode() == "bert"
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert embd.tensor_type.name == out_type.upper()
    modelfile = (tmp_path / "Modelfile").read_text()
    assert "FROM ./model.gguf" in modelfile and "TEMPLATE" not in modelfile.replace("no TEMPLATE", "")
    assert "normalise" in modelfile
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.slow
def test_verify_failure_leaves_no_gguf(tmp_path, minilm_dir):
    """A GGUF that embeds differently (CLS pooling for a mean-pooled model) fails in one line, no file."""
    enc = read_encoder(minilm_dir, "minilm")
    enc.pooling = "CLS"
    with pytest.raises(ExportError) as err:
        write_encoder_gguf(enc, tmp_path / "model.gguf", "f16", verify=True)
    assert "\n" not in err.value.message and "cosine" in err.value.message and "row" in err.value.message
    assert list(tmp_path.iterdir()) == []


def _non_bert_encoder(tmp_path):
    """A sentence-transformers dir whose transformer is MPNet (llama.cpp's bert arch cannot run it)."""
    d = tmp_path / "mpnet-encoder"
    d.mkdir()
    (d / "config.json").write_text(
        json.dumps({"architectures": ["MPNetModel"], "model_type": "mpnet", "hidden_size": 8})
    )
    (d / "modules.json").write_text(
        json.dumps([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}])
    )
    return d


def test_non_bert_encoder_is_one_line_naming_bert(tmp_path):
    d = _non_bert_encoder(tmp_path)
    assert encoder_source(d) == d
    with pytest.raises(ExportError) as err:
        export_encoder(d, d, output=tmp_path / "out")
    assert "\n" not in err.value.message and "mpnet" in err.value.message
    assert "bert" in err.value.hint
    assert not (tmp_path / "out" / "model.gguf").exists()


def test_encoder_source_finds_runs_and_ignores_llms(tmp_path, minilm_dir):
    run = tmp_path / "runs" / "tuned"
    shutil.copytree(minilm_dir, run / "encoder")
    (run / "recipe.yaml").write_text("name: tuned\n")
    assert encoder_source(run) == run / "encoder"
    llm = tmp_path / "llm"
    llm.mkdir()
    (llm / "config.json").write_text(
        json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    )
    assert encoder_source(llm) is None
    assert encoder_source("not-a-thing") is None


@pytest.mark.slow
def test_export_to_ollama_then_embed_through_it(capsys, ollama_double, tmp_path, minilm_dir):
    """llmkit export --ollama creates an embedding model; llmkit embed --backend ollama then gives
    sentence-transformers' vectors (the double runs the uploaded GGUF in llama.cpp, as Ollama does)."""
    out = tmp_path / "exp"
    code, stdout, err = cli(
        capsys, "export", MINILM, "--gguf", "f16", "-o", str(out), "--ollama", "minilm-st", "--json"
    )
    assert code == 0, err
    result = json.loads(stdout)
    assert result["ollama_model"] == "minilm-st" and result["gguf_type"] == "f16"
    model = ollama_double.model("minilm-st")
    assert model["config"]["model_family"] == "bert" and model["config"].get("embedding_only")
    assert model["template"] is None  # no TEMPLATE: an embedding model
    created = [b for m, p, b in ollama_double.requests if p == "/api/create"]
    assert created[-1]["parameters"] == {"num_ctx": 256} and "template" not in created[-1]

    ollama_double.embedder = llama_vectors
    src = tmp_path / "in.txt"
    texts = [t for t in PROBE if t.strip()][:20]
    src.write_text("\n".join(texts) + "\n")
    vectors = tmp_path / "v.parquet"
    code, _, err = cli(
        capsys, "embed", str(src), "-o", str(vectors), "--backend", "ollama", "--model", "minilm-st"
    )
    assert code == 0, err
    table = pq.read_table(vectors)
    got = np.asarray(table.column("vector").to_pylist(), dtype=np.float32)
    ref = reference_vectors(minilm_dir, table.column("text").to_pylist())
    cos = (got / np.linalg.norm(got, axis=1, keepdims=True) * ref).sum(axis=1)
    print(f"ollama (double running llama.cpp) vs sentence-transformers: min cosine {cos.min():.6f}")
    assert cos.min() >= 0.999


def test_cli_non_bert_encoder_is_one_line(capsys, tmp_path):
    d = _non_bert_encoder(tmp_path)
    code, _, err = cli(capsys, "export", str(d), "-o", str(tmp_path / "out"))
    assert code == 1
    assert "llama.cpp cannot run this encoder's architecture (mpnet" in err
    assert "supported encoder architectures: bert" in err
    assert not (tmp_path / "out" / "model.gguf").exists()


@pytest.mark.slow
def test_tuned_run_exports_into_the_run(tmp_path, minilm_dir):
    """An `embed train` run (encoder/ inside it) with changed weights exports into the run dir and verifies."""
    from safetensors.numpy import load_file, save_file

    from llmkit.exporter import export

    run = tmp_path / "runs" / "tuned"
    shutil.copytree(minilm_dir, run / "encoder")
    (run / "recipe.yaml").write_text("name: tuned\n")
    weights = load_file(str(run / "encoder" / "model.safetensors"))
    rng = np.random.default_rng(0)
    for name, value in weights.items():  # stand-in for fine-tuning: every matrix moves a little
        if value.ndim == 2:
            weights[name] = (value + rng.normal(0, 0.01, value.shape)).astype(value.dtype)
    save_file(weights, str(run / "encoder" / "model.safetensors"))
    result = export(run, verify=True)
    assert result.gguf == run / "model.gguf" and result.verify["min_cosine"] >= 0.999
    stock = reference_vectors(minilm_dir, PROBE[:4])
    tuned = llama_vectors(result.gguf, PROBE[:4])
    assert (stock * tuned).sum(axis=1).min() < 0.9999  # the tuned weights are what was exported


@pytest.mark.parametrize(
    ("written", "pooling"), [({"pooling_mode": "mean"}, "MEAN"), ({"pooling_mode": "cls"}, "CLS")]
)
def test_pooling_as_newer_sentence_transformers_write_it(written, pooling, tmp_path, minilm_dir):
    """sentence-transformers >= 5 saves `{"pooling_mode": "mean"}` (what `llmkit embed train` writes
    here), older versions `pooling_mode_mean_tokens: true`: both name the same llama.cpp pooling."""
    import json
    import shutil

    from llmkit.exporter.encoder_gguf import read_encoder

    model = tmp_path / "enc"
    shutil.copytree(minilm_dir, model)
    pooling_dir = next(p for p in model.iterdir() if p.name.endswith("Pooling"))
    (pooling_dir / "config.json").write_text(json.dumps({"embedding_dimension": 384, **written}))
    assert read_encoder(model, "enc").pooling == pooling
