"""Streaming readers for the embedding job: .txt, .jsonl, .csv, .parquet → one record per row.

Every reader yields `Row`s (or `Bad` for a line that is not UTF-8 / not JSON) one at a time, so
memory does not depend on the file size. Line numbers are 1-based, as editors show them.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import DataError

FORMATS = (".txt", ".jsonl", ".csv", ".parquet")


@dataclass
class Row:
    index: int  # position among the file's rows (0-based)
    line: int  # where it starts in the file (1-based; 0 for parquet)
    text: str
    id: object
    extra: dict


@dataclass
class Bad:
    line: int
    reason: str


def input_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".json":
        suffix = ".jsonl"
    if suffix not in FORMATS:
        raise DataError(
            f"{path}: unsupported input format {path.suffix or '(none)'}", f"use one of {', '.join(FORMATS)}"
        )
    return suffix


def check_input(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"input file {path} not found", "check the path")
    fmt = input_format(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty", "give a file with at least one row")
    return fmt


def count_rows(path: Path) -> int | None:
    """Cheap row count for the progress bar (None where it would need a full parse)."""
    fmt = input_format(path)
    if fmt == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if fmt == ".csv":
        return None
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def read_rows(path: Path, column: str | None = None, id_column: str | None = None) -> Iterator[Row | Bad]:
    fmt = check_input(path)
    if fmt == ".txt":
        if column not in (None, "text"):
            raise DataError(
                f"{path}: a .txt file has a single column 'text', not {column!r}",
                "drop --column for .txt input",
            )
        return _read_txt(path)
    column = column or "text"
    if fmt == ".jsonl":
        return _read_jsonl(path, column, id_column)
    if fmt == ".csv":
        return _read_csv(path, column, id_column)
    return _read_parquet(path, column, id_column)


def _lines(path: Path) -> Iterator[tuple[int, str | None]]:
    """(line number, decoded line) — None for a line that is not valid UTF-8."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError:
                yield number, None


def _read_txt(path: Path) -> Iterator[Row | Bad]:
    index = 0
    for number, line in _lines(path):
        if line is None:
            yield Bad(number, "not valid UTF-8")
            continue
        text = line.rstrip("\r\n")
        if not text.strip():
            continue  # blank lines are not rows
        yield Row(index, number, text, index, {"text": text})
        index += 1


def _missing(path: Path, what: str, name: str, available) -> DataError:
    return DataError(
        f"{path}: no {what} {name!r}; available columns: {', '.join(map(str, available)) or '(none)'}",
        "pick one with --column / --id-column",
    )


def _split(path, record: dict, column: str, id_column: str | None, index: int, number: int) -> Row:
    text = record.get(column)
    ident = record.get(id_column) if id_column else index
    extra = {k: v for k, v in record.items() if k != id_column}
    return Row(index, number, "" if text is None else str(text), ident, extra)


def _read_jsonl(path: Path, column: str, id_column: str | None) -> Iterator[Row | Bad]:
    index, checked = 0, False
    for number, line in _lines(path):
        if line is None:
            yield Bad(number, "not valid UTF-8")
            continue
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Bad(number, f"not JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            yield Bad(number, "not a JSON object")
            continue
        if not checked:
            for name, what in ((column, "text column"), (id_column, "id column")):
                if name and name not in record:
                    raise _missing(path, what, name, record)
            checked = True
        yield _split(path, record, column, id_column, index, number)
        index += 1


def _read_csv(path: Path, column: str, id_column: str | None) -> Iterator[Row | Bad]:
    bad: list[Bad] = []

    def decoded():
        for number, line in _lines(path):
            if line is None:
                bad.append(Bad(number, "not valid UTF-8"))
                continue
            yield line

    reader = csv.DictReader(decoded())
    if reader.fieldnames is None:
        raise DataError(f"{path} has no header row", "the first line of a .csv names its columns")
    for name, what in ((column, "text column"), (id_column, "id column")):
        if name and name not in reader.fieldnames:
            raise _missing(path, what, name, reader.fieldnames)
    for index, record in enumerate(reader):
        while bad:
            yield bad.pop(0)
        yield _split(path, record, column, id_column, index, reader.line_num)
    yield from bad


def _read_parquet(path: Path, column: str, id_column: str | None) -> Iterator[Row | Bad]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise DataError(f"{path} is not a readable Parquet file ({exc})", "check the file") from exc
    names = pf.schema_arrow.names
    for name, what in ((column, "text column"), (id_column, "id column")):
        if name and name not in names:
            raise _missing(path, what, name, names)
    index = 0
    for batch in pf.iter_batches(batch_size=4096):
        for record in batch.to_pylist():
            yield _split(path, record, column, id_column, index, 0)
            index += 1
