"""One reader for `llmkit train` and `llmkit embed`: the same file gives the same texts in both, and
bad input is a one-line error (message and hint) that names the file and the place."""

from __future__ import annotations

import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from llmkit import data
from llmkit.errors import DataError
from llmkit.readers import Bad, read_records, read_rows

TEXTS = ["alpha", "beta, with a comma", 'gamma "quoted"']
PARAGRAPHS = ["first line\nsecond line", "alone", "x\ny\nz"]


def _txt(path, texts, sep="\n"):
    path.write_text(sep.join(texts) + "\n")


def _put(path, text: str) -> None:
    path.write_text(text)


def _csv(path, texts):
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, ["text", "n"])
        writer.writeheader()
        writer.writerows({"text": t, "n": i} for i, t in enumerate(texts))


def _parquet_dir(path, texts):
    (path / "b").mkdir(parents=True)
    pq.write_table(pa.table({"text": texts[:2]}), path / "a.parquet")
    pq.write_table(pa.table({"text": texts[2:]}), path / "b" / "c.parquet")


def _saved(path, texts):
    import datasets

    datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(path))


def _hf(path, texts):
    (path / "data").mkdir(parents=True)
    pq.write_table(pa.table({"text": texts}), path / "data" / "train-00000-of-00001.parquet")
    return f"hf:{path}"


WRITERS = {  # name → (file name, write(path, texts) → optional input string, sample_by, texts)
    "txt lines": ("d.txt", _txt, "line", TEXTS),
    "txt paragraphs": ("d.txt", lambda p, t: _txt(p, t, "\n\n\n"), "paragraph", PARAGRAPHS),
    "txt document": ("d.txt", lambda p, t: _put(p, f"\n{t[0]}\n"), "document", ["one\n\ntwo"]),
    "json array": ("d.json", lambda p, t: _put(p, json.dumps([{"text": x} for x in t], indent=2)), "line", TEXTS),
    "json data": ("d.json", lambda p, t: _put(p, json.dumps({"data": [{"text": x} for x in t]})), "line", TEXTS),
    "json lines in .json": ("d.json", lambda p, t: _put(p, "".join(json.dumps({"text": x}) + "\n" for x in t)), "line", TEXTS),
    "jsonl": ("d.jsonl", lambda p, t: _put(p, "".join(json.dumps({"text": x}) + "\n\n" for x in t)), "line", TEXTS),
    "csv": ("d.csv", _csv, "line", TEXTS),
    "parquet": ("d.parquet", lambda p, t: pq.write_table(pa.table({"text": t}), p), "line", TEXTS),
    "parquet dir": ("shards", _parquet_dir, "line", TEXTS),
    "save_to_disk dir": ("saved", _saved, "line", TEXTS),
    "hf:NAME": ("repo", _hf, "line", TEXTS),
}  # fmt: skip


@pytest.mark.parametrize("kind", list(WRITERS))
def test_training_and_embedding_read_the_same_texts(tmp_path, kind):
    name, write, sample_by, texts = WRITERS[kind]
    path = tmp_path / name
    source = write(path, texts) or path
    trained = [row["text"] for row in data.read_rows(source, sample_by=sample_by)]
    embedded = [row.text for row in read_rows(source, sample_by=sample_by)]
    assert trained == embedded == texts


def test_embed_rows_keep_their_line_numbers_and_other_columns(tmp_path):
    _txt(tmp_path / "p.txt", PARAGRAPHS, "\n\n")
    assert [r.line for r in read_rows(tmp_path / "p.txt", sample_by="paragraph")] == [1, 4, 6]
    _csv(tmp_path / "d.csv", TEXTS)
    rows = list(read_rows(tmp_path / "d.csv", id_column="n"))
    assert [(r.id, r.line, r.extra) for r in rows][0] == ("0", 2, {"text": "alpha"})
    with pytest.raises(DataError, match="sample_by must be one of line, paragraph, document"):
        read_rows(tmp_path / "d.csv", sample_by="sentence")


def _both(path) -> list[DataError]:
    """The error from the training reader and from the embed reader (raised before any row)."""
    errors = []
    for read in (data.read_rows, read_rows):
        with pytest.raises(DataError) as err:
            read(path)
        errors.append(err.value)
    return errors


def test_a_corrupt_parquet_file_or_shard_is_named(tmp_path):
    (tmp_path / "d.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "shards").mkdir()
    pq.write_table(pa.table({"text": ["ok"]}), tmp_path / "shards" / "a.parquet")
    (tmp_path / "shards" / "b.parquet").write_bytes(b"text,n\nx,1\n")
    for path, named in ((tmp_path / "d.parquet", "d.parquet"), (tmp_path / "shards", "b.parquet")):
        for err in _both(path):
            assert f"{named} is not a readable Parquet file (" in err.message, err.message
            assert "write it again" in err.hint and "\n" not in err.message


@pytest.mark.parametrize(
    "content,said",
    [
        ("42", "holds a number, not a list of objects"),
        ('"text"', "holds a string, not a list of objects"),
        ('["a", "b"]', "holds a JSON array of strings, not of objects"),
        ('{"data": [[1], [2]]}', "holds a 'data' list of arrays, not of objects"),
        ('[{"text": "a"}, 7]', "element 1 of a JSON array is a number, not an object"),
        ('[{"text": "a"},\n {"text": "b"}', "is not valid JSON: line 2 column 15: Expecting ',' delimiter"),
        (
            '{\n  "data": [\n    {"text": "a"}\n  ]\n',
            "is not valid JSON: line 5 column 1: Expecting ',' delimiter",
        ),
    ],
)
def test_a_json_file_that_is_not_a_list_of_objects(tmp_path, content, said):
    (tmp_path / "d.json").write_text(content)
    for err in _both(tmp_path / "d.json"):
        assert err.message == f"{tmp_path / 'd.json'} {said}".replace(" element", ": element")
        assert "a JSON array of objects" in err.hint and "JSON Lines" in err.hint


@pytest.mark.parametrize("name", ["d.jsonl", "d.json"])
def test_invalid_json_lines_name_the_line(tmp_path, name):
    path = tmp_path / name
    path.write_text('{"text": "a"}\n{"text": "b",}\n["c"]\n{"text": "d"}\n')
    with pytest.raises(DataError) as err:
        data.read_rows(path)
    assert err.value.message.startswith(f"{path} line 2: invalid JSON (Expecting property name")
    assert err.value.hint == "each line must be one JSON object; fix or remove line 2"
    rows = list(read_rows(path))  # embed gets the bad lines as Bad, to stop on or --skip-bad
    assert [r.text for r in rows if not isinstance(r, Bad)] == ["a", "d"]
    assert [(b.line, b.reason.split(" (")[0]) for b in rows if isinstance(b, Bad)] == [
        (2, "invalid JSON"),
        (3, "not a JSON object but an array"),
    ]


@pytest.mark.parametrize(
    "name,content,line,offset",
    [
        ("d.txt", b"caf\xc3\xa9\nna\xefve\n", 2, 8),
        ("d.jsonl", b'{"text": "ok"}\n{"text": "\xe9t\xe9"}\n', 2, 25),
        ("d.csv", b"text\nok\n\xe9t\xe9\n", 3, 8),
        ("d.json", b'[{"text": "ok"},\n {"text": "\xe9t\xe9"}]', 2, 28),
    ],
)
def test_non_utf8_data_names_line_and_byte_and_how_to_reencode(tmp_path, name, content, line, offset):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        data.read_rows(path)
    byte = content[offset]
    assert (
        err.value.message
        == f"{path} line {line}: not valid UTF-8 (byte 0x{byte:02x} at byte offset {offset})"
    )
    assert "iconv -f latin1 -t utf-8" in err.value.hint
    if name == "d.json":  # one document: no row can be read without the rest
        with pytest.raises(DataError, match="not valid UTF-8"):
            read_rows(path)
    else:
        bad = [b for b in read_rows(path) if isinstance(b, Bad)]
        assert [(b.line, b.reason) for b in bad] == [(line, err.value.message.split(": ", 1)[1])]
        assert "iconv" in bad[0].hint


@pytest.mark.parametrize(
    "name,content", [("d.jsonl", ""), ("d.txt", "\n  \n"), ("d.csv", "text,label\n"), ("d.json", "[]")]
)
def test_an_empty_data_file_says_it_is_empty(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as err:
        data.read_rows(path)
    assert err.value.message == f"{path} is empty (no rows)" and err.value.hint
    if content:  # embed reads no rows (the job then says "has no rows")
        assert list(read_rows(path)) == []
    else:
        with pytest.raises(DataError, match=r"is empty \(no rows\)"):
            read_rows(path)


def test_missing_files_keep_their_messages(tmp_path):
    with pytest.raises(DataError, match="dataset file not found") as err:
        data.read_rows(tmp_path / "nope.jsonl")
    assert "data.path" in err.value.hint
    with pytest.raises(DataError, match="input file .*nope.jsonl not found"):
        read_rows(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="unsupported input format .tsv"):
        (tmp_path / "d.tsv").write_text("a\tb\n")
        read_records(tmp_path / "d.tsv")
