"""Inputs people have: a directory of Parquet files, a dataset saved with `datasets`, and a
Hugging Face dataset read through `datasets` (hf:NAME; here a local dataset dir, no network)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli_inprocess as cli

SENTENCES = [f"sentence {i} about {['cats', 'rain', 'football', 'laptops'][i % 4]}" for i in range(30)]


def _vectors(path):
    table = pq.read_table(path)
    vec = table.column("vector").combine_chunks()
    return table, vec.flatten().to_numpy().reshape(len(vec), vec.type.list_size)


def test_parquet_directory_streams_every_file_in_name_order(capsys, tmp_path):
    shards = tmp_path / "shards"
    (shards / "b").mkdir(parents=True)
    pq.write_table(pa.table({"body": SENTENCES[:10], "n": list(range(10))}), shards / "a-000.parquet")
    pq.write_table(pa.table({"body": SENTENCES[10:25], "n": list(range(10, 25))}), shards / "a-001.parquet")
    pq.write_table(pa.table({"body": SENTENCES[25:], "n": list(range(25, 30))}), shards / "b" / "c.parquet")
    pq.write_table(pa.table({"body": SENTENCES}), tmp_path / "one.parquet")
    code, stdout, err = cli(
        capsys, "embed", str(shards), "-o", str(tmp_path / "d.parquet"), "--text-column", "body", "--json"
    )
    assert code == 0, err
    assert json.loads(stdout)["rows"] == 30
    table, vec = _vectors(tmp_path / "d.parquet")
    assert table.column("id").to_pylist() == list(range(30)) and table.column("n").to_pylist() == list(
        range(30)
    )
    code, _, err = cli(
        capsys, "embed", str(tmp_path / "one.parquet"), "-o", str(tmp_path / "o.parquet"), "--column", "body"
    )
    assert code == 0, err
    assert np.allclose(vec, _vectors(tmp_path / "o.parquet")[1], atol=1e-6)

    pq.write_table(pa.table({"title": ["x"]}), shards / "b" / "d.parquet")  # one file without the column
    code, _, err = cli(
        capsys, "embed", str(shards), "-o", str(tmp_path / "e.parquet"), "--text-column", "body"
    )
    assert code == 1 and "d.parquet: no text column 'body'; available columns: title" in err
    (tmp_path / "empty").mkdir()
    code, _, err = cli(capsys, "embed", str(tmp_path / "empty"), "-o", str(tmp_path / "f.parquet"))
    assert code == 1 and "a directory with no .parquet files" in err


@pytest.mark.slow
def test_saved_dataset_and_hf_dataset_by_name_offline(capsys, tmp_path):
    import datasets

    ds = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"sentence": SENTENCES[:20], "label": [i % 4 for i in range(20)]}
            ),
            "test": datasets.Dataset.from_dict(
                {"sentence": SENTENCES[20:], "label": [i % 4 for i in range(10)]}
            ),
        }
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    code, stdout, err = cli(
        capsys,
        "embed",
        str(tmp_path / "saved"),
        "-o",
        str(tmp_path / "s.parquet"),
        "--text-column",
        "sentence",
        "--split",
        "test",
        "--json",
    )
    assert code == 0, err
    table, saved_vec = _vectors(tmp_path / "s.parquet")
    assert table.column("sentence").to_pylist() == SENTENCES[20:] and json.loads(stdout)["rows"] == 10
    code, _, err = cli(
        capsys, "embed", str(tmp_path / "saved"), "-o", str(tmp_path / "x.parquet"), "--split", "dev"
    )
    assert code == 1 and "no split 'dev'; available: train, test" in err

    # a dataset by name through datasets.load_dataset (streaming): a local dataset repo dir
    repo = tmp_path / "acme-sentences" / "data"
    repo.mkdir(parents=True)
    pq.write_table(pa.table({"sentence": SENTENCES[20:]}), repo / "test-00000-of-00001.parquet")
    pq.write_table(pa.table({"sentence": SENTENCES[:20]}), repo / "train-00000-of-00001.parquet")
    code, stdout, err = cli(
        capsys,
        "embed",
        f"hf:{repo.parent}",
        "-o",
        str(tmp_path / "h.parquet"),
        "--text-column",
        "sentence",
        "--split",
        "test",
        "--json",
    )
    assert code == 0, err
    table, vec = _vectors(tmp_path / "h.parquet")
    assert table.column("sentence").to_pylist() == SENTENCES[20:]
    assert np.allclose(vec, saved_vec, atol=1e-6)
    code, _, err = cli(
        capsys, "embed", f"hf:{repo.parent}", "-o", str(tmp_path / "y.parquet"), "--text-column", "text"
    )
    assert code == 1 and "no text column 'text'; available columns: sentence" in err


def test_unreadable_inputs_fail_in_one_line_before_the_model_loads(capsys, tmp_path, monkeypatch):
    import llmkit.embedding.job as job

    def no_model(*args, **kwargs):
        raise AssertionError("the model loaded before the input was checked")

    monkeypatch.setattr(job, "load_encoder", no_model)
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "strings.json").write_text(json.dumps(SENTENCES[:3]))
    (tmp_path / "latin1.json").write_bytes('[{"text": "café"}]'.encode("latin-1"))
    cases = {
        "bad.parquet": "bad.parquet is not a readable Parquet file (",
        "strings.json": "strings.json holds a JSON array of strings, not of objects",
        "latin1.json": "latin1.json line 1: not valid UTF-8 (byte 0xe9 at byte offset 14)",
    }
    for name, said in cases.items():
        code, _, err = cli(capsys, "embed", str(tmp_path / name), "-o", str(tmp_path / "v.parquet"))
        assert code == 1 and said in err, err
        assert len(err.strip().splitlines()) == 2 and "hint:" in err  # message + hint, no traceback


@pytest.mark.slow
def test_json_array_input_and_its_bad_lines(capsys, tmp_path):
    (tmp_path / "a.json").write_text(
        json.dumps([{"text": s, "n": i} for i, s in enumerate(SENTENCES[:5])], indent=1)
    )
    code, stdout, err = cli(
        capsys, "embed", str(tmp_path / "a.json"), "-o", str(tmp_path / "a.parquet"), "--json"
    )
    assert code == 0, err
    assert pq.read_table(tmp_path / "a.parquet").column("n").to_pylist() == list(range(5))
    lines = [json.dumps({"text": s}) for s in SENTENCES[:3]]
    (tmp_path / "l.json").write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    code, _, err = cli(capsys, "embed", str(tmp_path / "l.json"), "-o", str(tmp_path / "l.parquet"))
    assert code == 1 and "bad rows at line(s) 2: invalid JSON" in err and "--skip-bad" in err
    code, stdout, err = cli(
        capsys, "embed", str(tmp_path / "l.json"), "-o", str(tmp_path / "l.parquet"), "--skip-bad", "--json"
    )
    assert code == 0, err
    assert json.loads(stdout)["rows"] == 3 and json.loads(stdout)["skipped_bad"] == 1
