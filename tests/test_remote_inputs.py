"""Inputs in an object store: a real S3 server (moto, on loopback) read through pyarrow's S3
filesystem, the one Ray Data uses. Every format must give exactly the rows of the local file."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import _free_port

from llmkit.errors import DataError
from llmkit.readers import count_rows, fingerprint, read_rows

BUCKET = "corpus"


@pytest.fixture(scope="module")
def s3_server():
    port = _free_port()
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("moto_server did not start")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3(s3_server, monkeypatch, tmp_path):
    """The store's usual environment, a bucket, and put(local file, key) to upload."""
    import pyarrow.fs as pafs

    for key, value in {
        "AWS_ACCESS_KEY_ID": "test-key",
        "AWS_SECRET_ACCESS_KEY": "test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_server,
    }.items():
        monkeypatch.setenv(key, value)
    fs = pafs.S3FileSystem(
        endpoint_override=s3_server,
        scheme="http",
        access_key="test-key",
        secret_key="test-secret",
        region="us-east-1",
        allow_bucket_creation=True,
    )
    fs.create_dir(BUCKET)

    def put(local: Path, key: str) -> str:
        with fs.open_output_stream(f"{BUCKET}/{key}") as out:
            out.write(local.read_bytes())
        return f"s3://{BUCKET}/{key}"

    return put


def _local_inputs(tmp_path: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = ["first row", "naïve café — déjà vu", "東京", "", "a\ttab  and  spaces", "last"]
    files = {}
    files["t.txt"] = tmp_path / "t.txt"
    files["t.txt"].write_text("\n".join(t for t in texts if t) + "\n\n", encoding="utf-8")
    files["t.jsonl"] = tmp_path / "t.jsonl"
    files["t.jsonl"].write_text(
        "".join(json.dumps({"text": t, "id": f"r{i}"}) + "\n" for i, t in enumerate(texts)), encoding="utf-8"
    )
    files["t.json"] = tmp_path / "t.json"
    files["t.json"].write_text(json.dumps([{"text": t} for t in texts]), encoding="utf-8")
    files["t.csv"] = tmp_path / "t.csv"
    files["t.csv"].write_text(
        "id,text\n" + "".join(f'{i},"{t}"\n' for i, t in enumerate(texts)), encoding="utf-8"
    )
    files["t.parquet"] = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), files["t.parquet"])
    return files


def _rows(source, **kw) -> list[tuple]:
    return [(r.index, r.line, r.text, r.id, r.extra) for r in read_rows(source, **kw)]


@pytest.mark.parametrize("name", ["t.txt", "t.jsonl", "t.json", "t.csv", "t.parquet"])
def test_every_format_reads_the_same_rows_from_s3(s3, tmp_path, name):
    local = _local_inputs(tmp_path)[name]
    uri = s3(local, f"in/{name}")
    id_column = None if name in ("t.txt", "t.json") else "id"
    assert _rows(uri, id_column=id_column) == _rows(local, id_column=id_column)
    # Parquet row counts come from the footer; text files are not downloaded twice to count
    assert count_rows(uri) == (count_rows(local) if name == "t.parquet" else None)


def test_a_folder_of_parquet_files_in_s3_reads_in_name_order(s3, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "shards"
    (folder / "sub").mkdir(parents=True)
    for name, texts in (("b.parquet", ["b1", "b2"]), ("a.parquet", ["a1"]), ("sub/c.parquet", ["c1", "c2"])):
        pq.write_table(pa.table({"text": texts}), folder / name)
        s3(folder / name, f"shards/{name}")
    uri = f"s3://{BUCKET}/shards"
    assert (
        [r.text for r in read_rows(uri)]
        == [r.text for r in read_rows(folder)]
        == ["a1", "b1", "b2", "c1", "c2"]
    )
    assert count_rows(uri) == 5
    # the resume key lists the objects with their sizes: a changed object starts the job afresh
    key = fingerprint(uri, "train")
    assert key["input"] == uri and [f[0] for f in key["files"]] == ["a.parquet", "b.parquet", "sub/c.parquet"]


def test_missing_objects_and_buckets_are_one_line_errors(s3, tmp_path):
    with pytest.raises(DataError, match=r"input file s3://corpus/nope\.jsonl not found"):
        list(read_rows(f"s3://{BUCKET}/nope.jsonl"))
    note = tmp_path / "README.md"
    note.write_text("not data\n")
    s3(note, "docs/README.md")
    with pytest.raises(DataError, match=r"s3://corpus/docs is a directory with no \.parquet files"):
        list(read_rows(f"s3://{BUCKET}/docs"))
    state = tmp_path / "state.json"
    state.write_text("{}")
    s3(state, "saved/state.json")
    with pytest.raises(DataError, match=r"s3://corpus/saved is a saved dataset in an object store"):
        list(read_rows(f"s3://{BUCKET}/saved"))
    with pytest.raises(DataError, match=r"s3://no-such-bucket/t\.jsonl"):
        list(read_rows("s3://no-such-bucket/t.jsonl"))


@pytest.mark.slow
def test_embed_reads_s3_through_the_cli_like_a_local_file(s3, tmp_path, monkeypatch):
    """The whole job, CLI included: `llmkit embed s3://…` writes the local run's vectors."""
    import numpy as np
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from llmkit.cli import app

    local = _local_inputs(tmp_path)["t.jsonl"]
    uri = s3(local, "in/t.jsonl")
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    for source, out in ((uri, "remote.parquet"), (str(local), "local.parquet")):
        result = runner.invoke(app, ["embed", source, "-o", out, "--id-column", "id", "--json"])
        assert result.exit_code == 0, result.output
    remote, here = pq.read_table(tmp_path / "remote.parquet"), pq.read_table(tmp_path / "local.parquet")
    assert remote.column("id").to_pylist() == here.column("id").to_pylist()
    assert np.allclose(
        np.stack(remote.column("vector").to_numpy(zero_copy_only=False)),
        np.stack(here.column("vector").to_numpy(zero_copy_only=False)),
        atol=1e-6,
    )
