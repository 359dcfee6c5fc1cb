"""One reader for training data and embedding input: the same file gives the same records everywhere.

Inputs, following Hugging Face `datasets`' conventions:
    .txt        one record {"text": ...} per non-blank line; sample_by="paragraph" (blank-line
                separated) or "document" (the whole file) on request
    .json       a JSON array of objects, an object with a list under "data", or JSON Lines (sniffed)
    .jsonl      one JSON object per line
    .csv        a header row, then one record per row
    .parquet    one record per row; also a directory of .parquet files (name order, as one table)
    a `save_to_disk` dataset dir (memory-mapped), and a Hugging Face dataset: hf:NAME, or a bare
    `name` / `org/name` that is not a local path (one rule for train and embed: `as_input`)
    any of the files and .parquet dirs above in an object store (s3://, gs://, …; remote.py)

An input is opened once (`open_input`) into an `Input` that knows what it is (and, for a folder,
its files): the reader, the row counter and the resume fingerprint take that object, so a job
classifies its input once and lists a folder (a LIST on an object store) once.

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
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import DataError, first_line
from llmkit.remote import RemotePath, hint_for, is_uri

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


_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def as_input(value) -> Path | RemotePath | str:
    """What an input reference means, one rule for `train` and `embed`: `hf:NAME` is a Hugging
    Face dataset, and so is a bare `name` or `org/name` that is not a local path and has no data
    file suffix (returned as "hf:NAME"); an object-store URI is a RemotePath; else a local Path.
    A Path or RemotePath is kept as it is (the caller already said it is a path)."""
    if isinstance(value, Input):
        return value.path
    if isinstance(value, RemotePath | Path):
        return value
    text = str(value)
    if text.startswith(HF_PREFIX):
        return text
    if is_uri(text):
        return RemotePath(text)
    local = Path(text).expanduser()
    hub = (
        not local.exists()
        and not text.startswith((".", "/", "~"))
        and local.suffix.lower() not in FORMATS
        and _HUB_NAME.fullmatch(text)
    )
    return HF_PREFIX + text if hub else local


@dataclass(frozen=True)
class Input:
    """An input opened once (`open_input`): what it is, and a folder's files, decided here."""

    path: Path | RemotePath | str
    kind: str  # file | parquet-dir | hf-disk (a save_to_disk dir) | hf (a dataset by name)
    format: str | None = None  # a file's format (its suffix)
    files: tuple = ()  # a parquet-dir's .parquet files, in name order

    def __str__(self) -> str:
        return str(self.path)


def open_input(value) -> Input:
    """Classify an input (and list a folder) once; a missing, empty or unsupported file is a
    one-line DataError here, before any model loads."""
    if isinstance(value, Input):
        return value
    path = as_input(value)
    if isinstance(path, str):
        return Input(path, "hf")
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            if not isinstance(path, Path):
                raise DataError(
                    f"{path} is a saved dataset in an object store, which is not read directly",
                    "read its .parquet files instead (Dataset.to_parquet), or load it by name as hf:NAME",
                )
            return Input(path, "hf-disk")
        files = parquet_files(path)
        if not files:
            raise DataError(
                f"{path} is a directory with no .parquet files and no saved dataset",
                "give a file, a directory of .parquet files, a `save_to_disk` dir or hf:NAME",
            )
        return Input(path, "parquet-dir", files=tuple(files))
    if not path.is_file():
        raise DataError(
            f"input file {path} not found", "check the path" if isinstance(path, Path) else hint_for(path)
        )
    fmt = input_format(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (no rows)", "give a file with at least one row")
    return Input(path, "file", fmt)


def parquet_files(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))


def fingerprint(source, split: str) -> dict:
    """What identifies the input for resuming: a changed input starts the job afresh."""
    src = open_input(source)
    path = src.path
    if src.kind == "hf":
        return {"input": str(path), "split": split}
    if src.kind == "file":
        st = path.stat()
        return {"input": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    files = src.files if src.kind == "parquet-dir" else sorted(path.rglob("*.arrow"))
    listing = []
    for f in files:
        st = f.stat()  # a listed RemotePath carries its size and time: no request per file
        listing.append([str(f.relative_to(path)), st.st_size, st.st_mtime_ns])
    return {"input": str(path.resolve()), "files": listing, "split": split}


def count_rows(source, split: str = "train", sample_by: str = "line") -> int | None:
    """Cheap row count for the progress bar (None where it would need a full parse)."""
    src = open_input(source)
    path, fmt = src.path, src.format
    if src.kind == "parquet-dir":
        return sum(_parquet(f).metadata.num_rows for f in src.files)
    if src.kind == "hf-disk":
        return len(_load_from_disk(path, split))
    if fmt == ".parquet":
        return _parquet(path).metadata.num_rows
    if fmt in (".jsonl", ".txt") and sample_by == "line" and isinstance(path, Path):
        # local only: counting a remote file would download it twice
        with path.open("rb") as fh:
            return sum(1 for line in fh if line.strip())
    return None


def read_rows(
    source,
    column: str | None = None,
    id_column: str | None = None,
    split: str = "train",
    sample_by: str = "line",
) -> Iterator[Row | Bad]:
    """Embedding input: `Row`s with the text of `column` (default "text"), or `Bad` lines, streamed.

    Missing columns, unreadable files and a .json that holds no objects raise here, before the
    caller loads a model.
    """
    src = open_input(source)
    path = src.path
    if src.format == ".txt" and column not in (None, "text"):
        raise DataError(
            f"{path}: a .txt file has a single column 'text', not {column!r}", "drop --column for .txt input"
        )
    column = column or "text"
    schemas, records = _open(src, split, sample_by)
    for where, names in schemas:
        _check_columns(where, names, column, id_column)
    return _rows(path, records, column, id_column, checked=bool(schemas))


def read_records(
    source, *, split: str = "train", config: str | None = None, sample_by: str = "line"
) -> list[dict]:
    """Training data: every record as a dict (all columns); a bad line or no rows is an error.
    A Hub dataset is loaded whole (through the datasets cache) rather than streamed: training
    holds every record anyway."""
    src = open_input(source)
    path = src.path
    _, records = _open(src, split, sample_by, config, streaming=False)
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


def _open(src: Input, split: str, sample_by: str, config: str | None = None, streaming: bool = True):
    if sample_by not in SAMPLE_BY:
        raise DataError(f"sample_by must be one of {', '.join(SAMPLE_BY)}, not {sample_by!r}", "e.g. line")
    path = src.path
    if src.kind == "parquet-dir":
        source = _parquet_dir_source(src.files)
    elif src.kind in ("hf", "hf-disk"):
        source = _hf_source(path, src.kind, split, config, streaming)
    else:
        make = {
            ".txt": lambda p: _txt_source(p, sample_by),
            ".json": _json_source,
            ".jsonl": _jsonl_source,
            ".csv": _csv_source,
            ".parquet": _parquet_source,
        }[src.format]
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
    first = first_line(exc, 200)
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


def _parquet_dir_source(files):
    """The .parquet files of a folder in name order, as one table (row index runs on)."""
    # every file opened first: a bad file found late would waste the run
    opened = [(f, _parquet(f)) for f in files]
    yield [(f, pf.schema_arrow.names) for f, pf in opened]
    for f, pf in opened:
        yield from _parquet_records(f, pf)


def _load_from_disk(path: Path, split: str):
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # missing or damaged arrow files
        raise DataError(
            f"cannot load the saved dataset {path}: {first_line(exc, 200)}",
            "save it again with Dataset.save_to_disk",
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(
                f"{path}: no split {split!r}; available: {', '.join(ds)}", "pick one with --split"
            )
        ds = ds[split]
    return ds


def _hf_source(path, kind: str, split: str, config: str | None, streaming: bool = True):
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
        try:  # streaming (embed): rows arrive as they are read, nothing is loaded whole
            ds = datasets.load_dataset(
                name, config, split=split, **({"streaming": True} if streaming else {})
            )
        except Exception as exc:  # Hub unreachable, unknown name, bad split ...
            first = first_line(exc, 200)
            raise DataError(
                f"cannot load Hugging Face dataset '{name}' (split {split}): {first}",
                "check the name and split (a local file needs its suffix, e.g. data.jsonl); "
                "offline, use a local dataset dir or one in the HF cache",
            ) from None
        names = list(ds.features) if ds.features else None
    yield [] if names is None else [(path, names)]
    yield from ((0, dict(record)) for record in ds)
