"""The batch job: a file of texts → vectors.parquet (or .npy), streaming and resumable.

Rows are read one at a time and committed in chunks of `commit_every` input rows: each chunk is
encoded, written to its own Parquet part (temp file + rename) in a work dir beside the output,
and forgotten. A rerun with the same arguments finds the committed parts, skips those rows and
carries on; at the end the parts are merged into the output (again temp + rename) and the work
dir removed. So a SIGKILL at any moment loses at most one chunk of work, never a row.

Identical texts are encoded once (exactly within a chunk, through a bounded cache across chunks,
so memory stays flat). A batch that fails is retried, then split in halves until the failing
rows are isolated; those are reported in `<output>.errors.jsonl` and the rest completes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmkit.embed.encoders import DEFAULT_MODEL, Encoder, EncoderError, load_encoder
from llmkit.embed.vectorfile import merge_parts, write_parquet
from llmkit.errors import DataError, InvalidArgument, LlmkitError
from llmkit.files import check_writable, write_json
from llmkit.readers import Bad, Row, check_input, count_rows, fingerprint, read_rows
from llmkit.remote import as_input

RESERVED = ("id", "text_hash", "vector")
CACHE_ROWS = 16384  # cross-chunk dedup cache (16k × 384 floats ≈ 25 MB)


@dataclass
class JobResult:
    output: Path
    rows: int
    encoded: int  # texts actually sent to the encoder (after dedup)
    truncated: int
    chunked: int  # long texts embedded as the mean of their windows (--chunk)
    failed: int
    skipped_bad: int
    seconds: float
    resumed_rows: int
    info: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "output": str(self.output),
            "rows": self.rows,
            "encoded": self.encoded,
            "duplicates": self.rows - self.resumed_rows - self.encoded,  # rows excludes failures
            "truncated": self.truncated,
            "chunked": self.chunked,
            "failed": self.failed,
            "skipped_bad": self.skipped_bad,
            "resumed_rows": self.resumed_rows,
            "seconds": round(self.seconds, 2),
            "rows_per_s": round((self.rows - self.resumed_rows) / max(self.seconds, 1e-9), 1),
            **self.info,
        }


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def embed_file(
    input: Path | str,
    output: Path,
    *,
    column: str | None = None,
    id_column: str | None = None,
    model: str = DEFAULT_MODEL,
    backend: str = "auto",
    precision: str = "auto",
    normalize: bool = True,
    chunk: bool = False,
    skip_bad: bool = False,
    keep_text: bool = True,
    commit_every: int = 4096,
    encoder: Encoder | None = None,
    split: str = "train",
    sample_by: str = "line",
    ray: str | None = None,
    workers: int = 2,
) -> JobResult:
    """`input`: a file, a directory of .parquet files, a `save_to_disk` dataset dir, or hf:NAME.

    `ray`: a Ray cluster address ("auto", "local", "HOST:PORT"): the same job on an actor pool
    of `workers` encoders (ray_job.py)."""
    # what the job's output depends on: passed to the Ray job, and the key a rerun resumes by
    options = dict(
        column=column,
        id_column=id_column,
        model=model,
        backend=backend,
        precision=precision,
        normalize=normalize,
        chunk=chunk,
        skip_bad=skip_bad,
        keep_text=keep_text,
        commit_every=commit_every,
        sample_by=sample_by,
    )
    input = as_input(input)  # once: an object-store URI is opened (and its region found) once
    if ray:
        from llmkit.embed.ray_job import embed_ray

        return embed_ray(input, output, address=ray, split=split, workers=workers, **options)
    output = check_output(output)
    check_input(input)
    work = work_dir(output)
    key = job_key(input, split, **options)
    # the first row is read now: a missing column or an unreadable file fails before the model loads
    rows_iter = read_rows(input, column, id_column, split, sample_by)
    first = next(rows_iter, None)
    if first is None:
        raise DataError(f"{input} has no rows", "give a file with at least one non-blank row")
    done_parts = _prepare_work_dir(work, key)
    with _discard_if_nothing_committed(work):  # a failure before the first commit leaves nothing
        encoder = encoder or load_encoder(model, backend, precision, normalize)
        if chunk:
            encoder.chunk_long = True  # type: ignore[attr-defined]
        errors_path = output.with_name(output.name + ".errors.jsonl")
        if not done_parts:
            errors_path.unlink(missing_ok=True)  # a report from an earlier, finished run
        state = _State(encoder, work, errors_path, keep_text)
        total = count_rows(input, split, sample_by)
        start = time.perf_counter()
        resumed = sum(p["rows"] for p in done_parts)
        state.failed = sum(p["failed"] for p in done_parts)
        state.skipped_bad = sum(p["skipped_bad"] for p in done_parts)

        from rich.progress import TextColumn

        from llmkit.ui import progress_items

        with progress_items(TextColumn("{task.fields[rate]} rows/s")) as bar:
            task = bar.add_task("Embedding", total=total, rate="-", completed=resumed)
            block: list[Row] = []
            bad: list[Bad] = []
            part_no = 0
            for item in _chain(first, rows_iter):
                if isinstance(item, Bad):
                    bad.append(item)
                    continue
                block.append(item)
                if len(block) == commit_every:
                    part_no = state.commit(part_no, block, bad, done_parts, skip_bad, input)
                    block, bad = [], []
                    bar.update(task, completed=resumed + state.rows, rate=_rate(state.rows, start))
            if block or bad:
                part_no = state.commit(part_no, block, bad, done_parts, skip_bad, input)
                bar.update(task, completed=resumed + state.rows, rate=_rate(state.rows, start))
    if resumed + state.rows == 0:
        shutil.rmtree(work, ignore_errors=True)
        raise DataError(f"{input} has no usable rows", "every row was bad or blank")
    info = {**encoder.info(), "normalized": normalize, "input": str(input), "column": column or "text"}
    if encoder.choice:  # auto/fast: which path was measured fastest here, and the numbers
        info["path_choice"] = encoder.choice
    total_rows = merge_parts(work, output, info)
    shutil.rmtree(work, ignore_errors=True)
    if state.failed == 0 and errors_path.exists():
        errors_path.unlink()
    return JobResult(
        output,
        total_rows,
        state.encoded,
        encoder.truncated,
        encoder.chunked,
        state.failed,
        state.skipped_bad,
        time.perf_counter() - start,
        resumed,
        info,
    )


def bad_rows_error(input, bad: list[Bad]) -> DataError:
    lines = ", ".join(str(b.line) for b in bad[:10]) + (" …" if len(bad) > 10 else "")
    return DataError(
        f"{input}: bad rows at line(s) {lines}: {bad[0].reason}",
        f"{bad[0].hint}; or pass --skip-bad to skip (and report) them",
    )


def warn_skipped(lines: list[int]) -> None:
    from llmkit.ui import warn

    warn(f"skipped {len(lines)} bad row(s) at line(s) {', '.join(str(n) for n in lines[:10])}")


def check_output(output: str | Path) -> Path:
    """The output must be .parquet or .npy, somewhere writable: checked before any model loads."""
    output = Path(output)
    if output.suffix not in (".parquet", ".npy"):
        raise InvalidArgument(f"output {output} must end in .parquet or .npy", "e.g. -o vectors.parquet")
    return check_writable(output, "output")


def work_dir(output: Path) -> Path:
    """Committed parts live next to the output until the job finishes (and survive a kill)."""
    return output.with_name(f".{output.name}.llmkit-job")


def job_key(input, split: str, **options) -> dict:
    """What makes two runs the same job (so the second resumes the first): the input's
    fingerprint and every option that changes the rows or the vectors."""
    return {**fingerprint(input, split), **options}


@contextlib.contextmanager
def _discard_if_nothing_committed(work: Path):
    """On failure, keep the work dir only if it holds committed parts for the next run to resume."""
    try:
        yield
    except BaseException:
        if not any(work.glob("part-*.json")):
            shutil.rmtree(work, ignore_errors=True)
        raise


def _chain(first, rest):
    yield first
    yield from rest


def _rate(rows: int, start: float) -> str:
    return f"{rows / max(time.perf_counter() - start, 1e-9):,.0f}"


def _prepare_work_dir(work: Path, fingerprint: dict) -> list[dict]:
    """Committed parts of an earlier run with the same arguments; a fresh work dir otherwise."""
    job_file = work / "job.json"
    if job_file.exists():
        try:
            same = json.loads(job_file.read_text()) == fingerprint
        except (OSError, json.JSONDecodeError):
            same = False
        if same:
            for tmp in work.glob(".*"):  # half-written files of the killed run
                tmp.unlink(missing_ok=True)
            parts = []
            for meta in sorted(work.glob("part-*.json")):
                part = json.loads(meta.read_text())
                if not part["has_rows"] or meta.with_suffix(".parquet").exists():
                    parts.append(part)
                else:
                    break
            if parts:
                from llmkit.ui import info

                info(f"Resuming: {sum(p['rows'] for p in parts)} rows already committed in {work}")
            return parts
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    write_json(job_file, fingerprint)
    return []


class _State:
    def __init__(self, encoder: Encoder, work: Path, errors_path: Path, keep_text: bool):
        self.encoder, self.work, self.errors_path, self.keep_text = encoder, work, errors_path, keep_text
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.rows = self.encoded = self.failed = self.skipped_bad = 0

    def commit(self, part_no, block, bad, done_parts, skip_bad, input) -> int:
        if bad and not skip_bad:
            raise bad_rows_error(input, bad)
        if part_no < len(done_parts):  # committed by an earlier run: skip these rows
            return part_no + 1
        hashes = [text_hash(r.text) for r in block]
        vectors, failures = self._vectors([r.text for r in block], hashes)
        keep = [i for i in range(len(block)) if i not in failures]
        name = f"part-{part_no:06d}"
        if keep:
            table = self._table([block[i] for i in keep], [hashes[i] for i in keep], vectors[keep])
            write_parquet(table, self.work / f"{name}.parquet")
        if failures:
            with open(self.errors_path, "a", encoding="utf-8") as fh:
                for i, err in failures.items():
                    fh.write(
                        json.dumps({"id": block[i].id, "line": block[i].line, "error": err}, default=str)
                        + "\n"
                    )
        if bad:
            warn_skipped([b.line for b in bad])
        self.rows += len(keep)
        self.failed += len(failures)
        self.skipped_bad += len(bad)
        write_json(
            self.work / f"{name}.json",
            {"rows": len(keep), "failed": len(failures), "skipped_bad": len(bad), "has_rows": bool(keep)},
        )
        return part_no + 1

    def _vectors(self, texts: list[str], hashes: list[str]) -> tuple[np.ndarray, dict[int, str]]:
        todo: dict[str, int] = {}  # hash → position in `unique`
        unique: list[str] = []
        cached: dict[str, np.ndarray] = {}  # taken now: remembering new vectors may evict these
        for text, h in zip(texts, hashes, strict=False):
            if h in self.cache:
                cached[h] = self.cache[h]
            elif h not in todo:
                todo[h] = len(unique)
                unique.append(text)
        fresh, bad_unique = _encode_isolating(self.encoder, unique) if unique else (None, {})
        self.encoded += len(unique) - len(bad_unique)
        if unique and len(bad_unique) == len(unique) and self.rows == 0 and self.encoded == 0:
            raise EncoderError(
                f"every text failed to encode: {next(iter(bad_unique.values()))}",
                "check the encoder (model name, server) and retry",
            )
        dim = self.encoder.dim
        out = np.zeros((len(texts), dim), np.float32)
        failures: dict[int, str] = {}
        for i, h in enumerate(hashes):
            if h in todo:
                j = todo[h]
                if j in bad_unique:
                    failures[i] = bad_unique[j]
                    continue
                out[i] = fresh[j]
                self._remember(h, fresh[j])
            else:
                if h in self.cache:
                    self.cache.move_to_end(h)
                out[i] = cached[h]
        return out, failures

    def _remember(self, h: str, vec: np.ndarray) -> None:
        self.cache[h] = vec.copy()
        if len(self.cache) > CACHE_ROWS:
            self.cache.popitem(last=False)

    def _table(self, rows: list[Row], hashes: list[str], vectors: np.ndarray):
        import pyarrow as pa

        dim = vectors.shape[1]
        columns = {
            "id": pa.array([r.id for r in rows]),
            "text_hash": pa.array(hashes, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
        }
        extra_names: list[str] = []
        for r in rows:
            for k in r.extra:
                if k not in extra_names:
                    extra_names.append(k)
        for k in extra_names:
            if not self.keep_text and k == "text":
                continue
            name = f"input_{k}" if k in RESERVED else str(k)
            values = [r.extra.get(k) for r in rows]
            if any(isinstance(v, (dict, list)) for v in values):
                values = [None if v is None else json.dumps(v) for v in values]
            columns[name] = pa.array(values)
        return pa.table(columns)


def _encode_isolating(
    encoder: Encoder, texts: list[str], retries: int = 2
) -> tuple[np.ndarray, dict[int, str]]:
    """Encode; on failure retry, then bisect so that only the failing rows are lost."""
    last: Exception | None = None
    for attempt in range(retries + 1):
        try:
            return encoder.encode(texts), {}
        except (KeyboardInterrupt, InvalidArgument):
            raise
        except Exception as exc:
            last = exc
            time.sleep(0.2 * attempt)
    if len(texts) == 1:
        return np.zeros((1, max(encoder.dim, 1)), np.float32), {0: _one_line(last)}
    if retries and _fails_everywhere(encoder, texts, _one_line(last)):
        if isinstance(last, LlmkitError):  # e.g. model not found, server unreachable: not a bad row
            raise last
        raise EncoderError(f"encoding failed for every row: {_one_line(last)}", "check the encoder and retry")
    mid = len(texts) // 2
    left, lbad = _encode_isolating(encoder, texts[:mid], retries=0)
    right, rbad = _encode_isolating(encoder, texts[mid:], retries=0)
    dim = max(encoder.dim, left.shape[1], right.shape[1])
    out = np.zeros((len(texts), dim), np.float32)
    if not lbad or len(lbad) < mid:
        out[:mid, : left.shape[1]] = left
    if not rbad or len(rbad) < len(texts) - mid:
        out[mid:, : right.shape[1]] = right
    return out, {**lbad, **{mid + k: v for k, v in rbad.items()}}


def _fails_everywhere(encoder: Encoder, texts: list[str], message: str) -> bool:
    """The first and the last row alone fail the same way as the batch: the encoder is broken,
    no row is to blame, and bisecting would only repeat the error."""
    for text in (texts[0], texts[-1]):
        try:
            encoder.encode([text])
            return False
        except Exception as exc:
            if _one_line(exc) != message:
                return False
    return True


def _one_line(exc: Exception | None) -> str:
    text = f"{type(exc).__name__}: {exc}" if exc else "unknown error"
    return text.strip().splitlines()[0][:300]
