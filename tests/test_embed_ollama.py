"""The Ollama encoder through the real `ollama` client against the Ollama API double."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli_inprocess
from ollama_double import embed_text

REPO = Path(__file__).resolve().parent.parent


def _embedding_gguf(path: Path, dim: int) -> Path:
    """A small real GGUF whose metadata says embedding_length = dim."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "bert")
    writer.add_type("model")
    writer.add_file_type(1)
    writer.add_embedding_length(dim)
    writer.add_context_length(512)
    writer.add_tensor("token_embd.weight", np.zeros((4, dim), np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


cli = run_cli_inprocess


@pytest.mark.slow
def test_ollama_encoder_job_search_and_errors(capsys, ollama_double, tmp_path):
    ollama_double.add_model("nomic-embed-text", _embedding_gguf(tmp_path / "e.gguf", 64))
    src = tmp_path / "in.txt"
    texts = [f"question {i} about {['rain', 'football', 'pasta'][i % 3]}" for i in range(150)]
    src.write_text("\n".join(texts + texts[:10]) + "\n")  # 10 duplicates, encoded once
    out = tmp_path / "v.parquet"
    code, stdout, err = cli(
        capsys, "embed", str(src), "-o", str(out), "-m", "ollama:nomic-embed-text", "--json"
    )
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["rows"] == 160 and summary["encoded"] == 150
    assert (summary["model"], summary["backend"], summary["dim"]) == ("ollama:nomic-embed-text", "ollama", 64)
    posts = [body for method, path, body in ollama_double.requests if path == "/api/embed"]
    assert [len(b["input"]) for b in posts] == [64, 64, 22]  # batched requests
    assert all(b["model"] == "nomic-embed-text" for b in posts)
    vec = pq.read_table(out).column("vector").combine_chunks()
    first = np.asarray(vec[0].as_py())
    expected = np.asarray(embed_text(texts[0], 64))
    assert np.allclose(first, expected / np.linalg.norm(expected), atol=1e-6)

    code, stdout, err = cli(capsys, "similar", texts[4], "--index", str(out), "-k", "2", "--json")
    assert code == 0, err
    assert json.loads(stdout)[0]["hits"][0]["text"] == texts[4]  # queried with the index's own model
    code, _, err = cli(capsys, "similar", "rain", "--index", str(out), "--model", "all-minilm-l6-v2")
    assert (
        code == 1
        and "built with ollama:nomic-embed-text (dim 64), but the queries use "
        "sentence-transformers/all-MiniLM-L6-v2 (dim 384)"
        in err
    )

    code, _, err = cli(
        capsys, "embed", str(src), "-o", str(tmp_path / "w.parquet"), "-m", "ollama:no-such-model"
    )
    assert code == 1 and "Error: embed with no-such-model failed: model 'no-such-model' not found" in err
    bad = [b for _, p, b in ollama_double.requests if p == "/api/embed" and b["model"] == "no-such-model"]
    assert len(bad) == 5  # 3 tries + first and last row alone, then it stops: no bisecting a broken encoder
