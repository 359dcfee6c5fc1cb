"""Streaming readers for the embedding job: .txt, .jsonl, .csv, .parquet → one record per row.

Also a directory of Parquet files (read file by file, batch by batch, in name order), a dataset
saved with `datasets` (`save_to_disk` dir, memory-mapped), and a Hugging Face dataset by name
(`hf:owner/name`, streamed; offline it reads the local cache or a local dataset dir).

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
HF_PREFIX = "hf:"


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


def input_kind(path: Path | str) -> str:
    """file | parquet-dir | hf-disk (save_to_disk dir) | hf (a dataset by name)."""
    text = str(path)
    if text.startswith(HF_PREFIX):
        return "hf"
    path = Path(path)
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return "hf-disk"
        if next(iter(sorted(path.rglob("*.parquet"))), None) is not None:
            return "parquet-dir"
        raise DataError(
            f"{path} is a directory with no .parquet files and no saved dataset",
            "give a file, a directory of .parquet files, a `save_to_disk` dir or hf:NAME",
        )
    return "file"


def parquet_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))


def fingerprint(path: Path | str, split: str) -> dict:
    """What identifies the input for resuming: a changed input starts the job afresh."""
    kind = input_kind(path)
    if kind == "hf":
        return {"input": str(path), "split": split}
    path = Path(path)
    if kind == "file":
        st = path.stat()
        return {"input": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    files = parquet_files(path) if kind == "parquet-dir" else sorted(path.rglob("*.arrow"))
    listing = [[str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return {"input": str(path.resolve()), "files": listing, "split": split}


def check_input(path: Path) -> str:
    if input_kind(path) != "file":
        return input_kind(path)
    if not path.is_file():
        raise DataError(f"input file {path} not found", "check the path")
    fmt = input_format(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty", "give a file with at least one row")
    return fmt


def count_rows(path: Path, split: str = "train") -> int | None:
    """Cheap row count for the progress bar (None where it would need a full parse)."""
    kind = input_kind(path)
    if kind == "parquet-dir":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in parquet_files(Path(path)))
    if kind == "hf-disk":
        return len(_load_from_disk(Path(path), split))
    if kind == "hf":
        return None
    fmt = input_format(path)
    if fmt == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    if fmt == ".csv":
        return None
    with open(path, "rb") as fh:
        return sum(1 for line in fh if line.strip())


def read_rows(
    path: Path, column: str | None = None, id_column: str | None = None, split: str = "train"
) -> Iterator[Row | Bad]:
    kind = check_input(path)
    if kind == "parquet-dir":
        return _read_parquet_dir(Path(path), column or "text", id_column)
    if kind in ("hf", "hf-disk"):
        return _read_hf(path, kind, column or "text", id_column, split)
    fmt = input_format(path)
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


def _read_parquet_dir(path: Path, column: str, id_column: str | None) -> Iterator[Row | Bad]:
    """Every .parquet file under `path` in name order, as one table (row index runs on)."""
    files = parquet_files(path)
    import pyarrow.parquet as pq

    for f in files:  # check every file's columns first: a bad file found late would waste the run
        names = pq.read_schema(f).names
        for name, what in ((column, "text column"), (id_column, "id column")):
            if name and name not in names:
                raise _missing(f, what, name, names)
    return _chain_files(files, column, id_column)


def _chain_files(files: list[Path], column: str, id_column: str | None) -> Iterator[Row | Bad]:
    index = 0
    for f in files:
        for row in _read_parquet(f, column, id_column):
            row.index = index
            if not id_column:
                row.id = index
            index += 1
            yield row


def _load_from_disk(path: Path, split: str):
    import datasets

    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(
                f"{path}: no split {split!r}; available: {', '.join(ds)}", "pick one with --split"
            )
        ds = ds[split]
    return ds


def _read_hf(path, kind: str, column: str, id_column: str | None, split: str) -> Iterator[Row | Bad]:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            "reading a Hugging Face dataset needs the datasets package", "pip install datasets"
        ) from exc
    if kind == "hf-disk":
        ds = _load_from_disk(Path(path), split)
        names = ds.column_names
    else:
        name = str(path)[len(HF_PREFIX) :]
        try:  # streaming: rows arrive as they are read, nothing is loaded whole
            ds = datasets.load_dataset(name, split=split, streaming=True)
        except Exception as exc:
            raise DataError(
                f"could not open dataset {name!r} split {split!r}: {str(exc).splitlines()[0][:200]}",
                "check the name and split; offline, use a local dataset dir or one in the HF cache",
            ) from exc
        names = list(ds.features) if ds.features else None
    if names is not None:
        for wanted, what in ((column, "text column"), (id_column, "id column")):
            if wanted and wanted not in names:
                raise _missing(path, what, wanted, names)
    return (_split(path, record, column, id_column, i, 0) for i, record in enumerate(ds))
