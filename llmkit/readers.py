"""One reader for training data and embedding input: the same file gives the same records everywhere.

Inputs, following Hugging Face `datasets`' conventions:
    .txt        one record {"text": ...} per non-blank line; sample_by="paragraph" (blank-line
                separated) or "document" (the whole file) on request
    .json       a JSON array of objects, an object with a list under "data", or JSON Lines (sniffed)
    .jsonl      one JSON object per line
    .csv        a header row, then one record per row
    .parquet    one record per row; also a directory of .parquet files (name order, as one table)
    a `save_to_disk` dataset dir (memory-mapped), and hf:NAME (through `datasets`, streamed)
    any of the files and .parquet dirs above in an object store (s3://, gs://, …; remote.py)

Records stream one at a time, so memory does not depend on the file size; the exceptions are a
.json that is one document (an array or a "data" object: parsed whole, as `datasets` does) and
sample_by="document". A line that is not UTF-8 or not a JSON object comes as `Bad` (embed may skip
it, training stops on it); a file that cannot be read at all raises `DataError` before any row.
Line numbers are 1-based, as editors show them; 0 where there are no lines (Parquet, datasets).

Over 400 lines on purpose: `llmkit train` and `llmkit embed` read every format through this one
module, so its rules (and its error messages) cannot drift apart again.
"""

from __future__ import annotations

import contextlib
import csv
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import DataError
from llmkit.remote import as_input, hint_for

FORMATS = (".txt", ".json", ".jsonl", ".csv", ".parquet")
SAMPLE_BY = ("line", "paragraph", "document")
HF_PREFIX = "hf:"
UTF8_HINT = "re-encode the file as UTF-8, e.g. iconv -f latin1 -t utf-8 IN > OUT"
JSON_SHAPES = "a JSON array of objects, an object with a list under 'data', or JSON Lines (one object a line)"


@dataclass
class Row:
    index: int  # position among the input's rows (0-based)
    line: int  # where it starts in the file (1-based; 0 for parquet and datasets)
    text: str
    id: object
    extra: dict


@dataclass
class Bad:
    line: int
    reason: str
    hint: str = "fix or remove that line"

    def error(self, path) -> DataError:
        return DataError(f"{path} line {self.line}: {self.reason}", self.hint)


def input_format(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise DataError(
            f"{path}: unsupported input format {path.suffix or '(none)'}", f"use one of {', '.join(FORMATS)}"
        )
    return suffix


def input_kind(path: Path | str) -> str:
    """file | parquet-dir | hf-disk (save_to_disk dir) | hf (a dataset by name)."""
    if str(path).startswith(HF_PREFIX):
        return "hf"
    path = as_input(path)  # a no-op for inputs already converted by the callers below
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            if not isinstance(path, Path):
                raise DataError(
                    f"{path} is a saved dataset in an object store, which is not read directly",
                    "read its .parquet files instead (Dataset.to_parquet), or load it by name as hf:NAME",
                )
            return "hf-disk"
        if parquet_files(path):
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
    path = as_input(path)
    kind = input_kind(path)
    if kind == "hf":
        return {"input": str(path), "split": split}
    if kind == "file":
        st = path.stat()
        return {"input": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    files = parquet_files(path) if kind == "parquet-dir" else sorted(path.rglob("*.arrow"))
    listing = [[str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return {"input": str(path.resolve()), "files": listing, "split": split}


def check_input(path: Path | str) -> str:
    path = as_input(path)
    kind = input_kind(path)
    if kind != "file":
        return kind
    if not path.is_file():
        raise DataError(
            f"input file {path} not found", "check the path" if isinstance(path, Path) else hint_for(path)
        )
    fmt = input_format(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (no rows)", "give a file with at least one row")
    return fmt


def count_rows(path: Path | str, split: str = "train", sample_by: str = "line") -> int | None:
    """Cheap row count for the progress bar (None where it would need a full parse)."""
    path = as_input(path)
    kind = input_kind(path)
    if kind == "parquet-dir":
        return sum(_parquet(f).metadata.num_rows for f in parquet_files(path))
    if kind == "hf-disk":
        return len(_load_from_disk(path, split))
    fmt = input_format(path) if kind == "file" else None
    if fmt == ".parquet":
        return _parquet(path).metadata.num_rows
    if fmt in (".jsonl", ".txt") and sample_by == "line" and isinstance(path, Path):
        # local only: counting a remote file would download it twice
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    return None


def read_rows(
    path: Path | str,
    column: str | None = None,
    id_column: str | None = None,
    split: str = "train",
    sample_by: str = "line",
) -> Iterator[Row | Bad]:
    """Embedding input: `Row`s with the text of `column` (default "text"), or `Bad` lines, streamed.

    Missing columns, unreadable files and a .json that holds no objects raise here, before the
    caller loads a model.
    """
    path = as_input(path)
    kind = check_input(path)
    if kind == ".txt" and column not in (None, "text"):
        raise DataError(
            f"{path}: a .txt file has a single column 'text', not {column!r}", "drop --column for .txt input"
        )
    column = column or "text"
    schemas, records = _open(path, kind, split, sample_by)
    for where, names in schemas:
        _check_columns(where, names, column, id_column)
    return _rows(path, records, column, id_column, checked=bool(schemas))


def read_records(
    path: Path | str, *, split: str = "train", config: str | None = None, sample_by: str = "line"
) -> list[dict]:
    """Training data: every record as a dict (all columns); a bad line or no rows is an error."""
    path = as_input(path)
    _, records = _open(path, check_input(path), split, sample_by, config)
    out = []
    for item in records:
        if isinstance(item, Bad):
            raise item.error(path)
        out.append(item[1])
    if not out:
        raise DataError(f"{path} is empty (no rows)", "give data with at least one non-blank row")
    return out


# ----------------------------------------------------------------------------- sources
# A source is a generator that first yields [(where, column names), ...] (the checks it can make
# before any row; [] where the columns show only in the rows), then (line, record) or Bad items.
# `_open` runs it up to that first yield, so a file that cannot be opened fails right there.


def _open(path, kind: str, split: str, sample_by: str, config: str | None = None):
    if sample_by not in SAMPLE_BY:
        raise DataError(f"sample_by must be one of {', '.join(SAMPLE_BY)}, not {sample_by!r}", "e.g. line")
    if kind == "parquet-dir":
        source = _parquet_dir_source(path)
    elif kind in ("hf", "hf-disk"):
        source = _hf_source(path, kind, split, config)
    else:
        make = {
            ".txt": lambda p: _txt_source(p, sample_by),
            ".json": _json_source,
            ".jsonl": _jsonl_source,
            ".csv": _csv_source,
            ".parquet": _parquet_source,
        }[kind]
        source = make(path)
    return next(source), source


def _check_columns(where, names, column: str, id_column: str | None) -> None:
    for name, what in ((column, "text column"), (id_column, "id column")):
        if name and name not in names:
            raise DataError(
                f"{where}: no {what} {name!r}; available columns: {', '.join(map(str, names)) or '(none)'}",
                "pick one with --column / --id-column",
            )


def _rows(path, records, column: str, id_column: str | None, checked: bool) -> Iterator[Row | Bad]:
    index = 0
    for item in records:
        if isinstance(item, Bad):
            yield item
            continue
        number, record = item
        if not checked:
            _check_columns(path, list(record), column, id_column)
            checked = True
        text = record.get(column)
        ident = record.get(id_column) if id_column else index
        extra = {k: v for k, v in record.items() if k != id_column}
        yield Row(index, number, "" if text is None else str(text), ident, extra)
        index += 1


def _lines(path: Path) -> Iterator[tuple[int, str] | Bad]:
    """(line number, text without its line end), or Bad for a line that is not UTF-8."""
    offset = 0
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield _not_utf8(number, raw[exc.start], offset + exc.start)
            else:
                yield number, (text.lstrip("\ufeff") if number == 1 else text).rstrip("\r\n")
            offset += len(raw)


def _not_utf8(number: int, byte: int, offset: int) -> Bad:
    return Bad(number, f"not valid UTF-8 (byte 0x{byte:02x} at byte offset {offset})", UTF8_HINT)


def _txt_source(path: Path, sample_by: str):
    yield [(path, ["text"])]
    if sample_by == "document":
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8").lstrip("\ufeff").strip()
        except UnicodeDecodeError as exc:
            yield _not_utf8(raw.count(b"\n", 0, exc.start) + 1, raw[exc.start], exc.start)
            return
        if text:
            yield 1, {"text": text}
        return
    para: list[str] = []
    start, spoiled = 0, False  # a paragraph with a bad line is dropped whole (its Bad is reported)
    for item in _lines(path):
        if isinstance(item, Bad):
            yield item
            spoiled = True
            continue
        number, line = item
        if not line.strip():
            if para and not spoiled:
                yield start, {"text": "\n".join(para).strip()}
            para, spoiled = [], False
        elif sample_by == "line":
            yield number, {"text": line}
        else:
            start = start if para else number
            para.append(line)
    if para and not spoiled:
        yield start, {"text": "\n".join(para).strip()}


def _jsonl_source(path: Path):
    yield []
    yield from _jsonl_records(_lines(path))


def _jsonl_records(lines) -> Iterator[tuple[int, dict] | Bad]:
    for item in lines:
        if isinstance(item, Bad):
            yield item
            continue
        number, line = item
        if not line.strip():
            continue
        hint = f"each line must be one JSON object; fix or remove line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Bad(number, f"invalid JSON ({exc.msg} at column {exc.colno})", hint)
            continue
        if not isinstance(record, dict):
            yield Bad(number, f"not a JSON object but {_what(record)}", hint)
            continue
        yield number, record


def _kind(value) -> str:
    for kind, name in ((dict, "object"), (list, "array"), (str, "string"), (bool, "boolean")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else "number"


def _what(value) -> str:
    kind = _kind(value)
    return kind if kind == "null" else f"{'an' if kind[0] in 'ao' else 'a'} {kind}"


def _first_char(path: Path) -> str:
    """The first character that is not blank (nor a UTF-8 byte-order mark); "" for a blank file."""
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(65536), b""):
            chunk = chunk.lstrip(b" \t\r\n\xef\xbb\xbf")
            if chunk:
                return chr(chunk[0])
    return ""


def _json_source(path: Path):
    """Sniff: `[` or a whole-document object with a "data" list → one document; else JSON Lines."""
    start, alone, number = _first_char(path), None, 0
    if start != "[":
        first = next((item for item in _lines(path) if isinstance(item, Bad) or item[1].strip()), None)
        if first is not None and not isinstance(first, Bad):
            number, line = first
            with contextlib.suppress(json.JSONDecodeError):
                alone = json.loads(line)
        if not number or (isinstance(alone, dict) and not isinstance(alone.get("data"), list)):
            yield []  # JSON Lines, the common case: no whole-document read
            yield from _jsonl_records(_lines(path))
            return
    try:  # one document: held whole, as `datasets` does
        doc = json.loads(_utf8_text(path))
    except json.JSONDecodeError as exc:
        if start == "[" or (start == "{" and alone is None and exc.lineno > number):
            raise DataError(
                f"{path} is not valid JSON: line {exc.lineno} column {exc.colno}: {exc.msg}",
                f"a .json file holds {JSON_SHAPES}",
            ) from None
        yield []  # several values: JSON Lines (its bad lines come as Bad)
        yield from _jsonl_records(_lines(path))
        return
    if isinstance(doc, dict):
        rows, what = (doc["data"], "a 'data' list") if isinstance(doc.get("data"), list) else ([doc], "")
    elif isinstance(doc, list):
        rows, what = doc, "a JSON array"
    else:
        raise DataError(
            f"{path} holds {_what(doc)}, not a list of objects", f"a .json file holds {JSON_SHAPES}"
        )
    for i, record in enumerate(rows):
        if not isinstance(record, dict):
            raise DataError(
                f"{path} holds {what} of {_kind(record)}s, not of objects"
                if i == 0
                else f"{path}: element {i} of {what} is {_what(record)}, not an object",
                f"a .json file holds {JSON_SHAPES}",
            )
    yield []
    yield from ((0, record) for record in rows)


def _utf8_text(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError as exc:
        bad = _not_utf8(raw.count(b"\n", 0, exc.start) + 1, raw[exc.start], exc.start)
        raise bad.error(path) from None


def _csv_source(path: Path):
    bad: list[Bad] = []

    def decoded():
        for item in _lines(path):
            if isinstance(item, Bad):
                bad.append(item)
            else:
                yield item[1] + "\n"

    reader = csv.DictReader(decoded())
    try:
        names = reader.fieldnames
    except csv.Error as exc:
        raise DataError(
            f"{path} is not a readable CSV file ({exc})", "check the quoting of the first row"
        ) from None
    if names is None:
        raise DataError(
            f"{path} is empty (no rows)", "the first line of a .csv names its columns; rows follow"
        )
    yield [(path, names)]
    try:
        for record in reader:
            yield from bad
            bad.clear()
            yield reader.line_num, record
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num}: {exc}", "check the quoting of that row") from None
    yield from bad


def _parquet(path: Path):
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path if isinstance(path, Path) else path.open())
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError, with the cause in the text
        raise _not_parquet(path, exc) from None


def _not_parquet(path: Path, exc: Exception) -> DataError:
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return DataError(
        f"{path} is not a readable Parquet file ({first})",
        "the file is damaged or not Parquet: write it again (pandas .to_parquet, pyarrow.parquet.write_table)",
    )


def _parquet_source(path: Path):
    pf = _parquet(path)
    yield [(path, pf.schema_arrow.names)]
    yield from _parquet_records(path, pf)


def _parquet_records(path: Path, pf) -> Iterator[tuple[int, dict]]:
    try:
        for batch in pf.iter_batches(batch_size=4096):
            yield from ((0, record) for record in batch.to_pylist())
    except (OSError, ValueError) as exc:  # a damaged page, found only when read
        raise _not_parquet(path, exc) from None


def _parquet_dir_source(path: Path):
    """Every .parquet file under `path` in name order, as one table (row index runs on)."""
    # every file opened first: a bad file found late would waste the run
    opened = [(f, _parquet(f)) for f in parquet_files(path)]
    yield [(f, pf.schema_arrow.names) for f, pf in opened]
    for f, pf in opened:
        yield from _parquet_records(f, pf)


def _load_from_disk(path: Path, split: str):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # missing or damaged arrow files
        raise DataError(
            f"cannot load the saved dataset {path}: {str(exc).splitlines()[0][:200]}",
            "save it again with Dataset.save_to_disk",
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(
                f"{path}: no split {split!r}; available: {', '.join(ds)}", "pick one with --split"
            )
        ds = ds[split]
    return ds


def _hf_source(path, kind: str, split: str, config: str | None):
    try:
        import datasets
    except ImportError as exc:
        raise DataError(
            "reading a Hugging Face dataset needs the datasets package", "pip install datasets"
        ) from exc
    if kind == "hf-disk":
        ds = _load_from_disk(path, split)
        names = ds.column_names
    else:
        name = str(path)[len(HF_PREFIX) :]
        try:  # streaming: rows arrive as they are read, nothing is loaded whole
            ds = datasets.load_dataset(name, config, split=split, streaming=True)
        except Exception as exc:
            raise DataError(
                f"could not open dataset {name!r} split {split!r}: {str(exc).splitlines()[0][:200]}",
                "check the name and split; offline, use a local dataset dir or one in the HF cache",
            ) from exc
        names = list(ds.features) if ds.features else None
    yield [] if names is None else [(path, names)]
    yield from ((0, dict(record)) for record in ds)
