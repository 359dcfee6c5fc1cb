"""What both runners of the embedding job share (job.py runs it here, ray_job.py on a Ray
cluster): the work directory, its committed parts, the row-isolating encode and the result.

The work dir lives beside the output (`.<output>.llmkit-job`) until the job finishes. It holds
`job.json` (the key: the input's fingerprint and the job's options; a rerun with the same key
resumes, any other starts afresh) and output part k as `part-k.parquet` + `part-k.json` (rows
kept, failed, skipped; written last, so a part without its meta does not count). Every file is
written to a temp name and renamed, so a SIGKILL at any moment loses at most one part's work.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmkit.embedding.vectorfile import merge_parts, write_parquet
from llmkit.errors import DataError, EncoderError, InvalidArgument, LlmkitError
from llmkit.files import check_writable, write_json
from llmkit.readers import Bad, Row

RESERVED = ("id", "text_hash", "vector")
CACHE_ROWS = 16384  # cross-part dedup cache (16k × 384 floats ≈ 25 MB)


@dataclass
class JobResult:
    output: Path
    rows: int
    encoded: int  # texts actually sent to the encoder (after dedup)
    truncated: int
    chunked: int  # long texts embedded as the mean of their windows (chunk)
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


def check_output(output: str | Path) -> Path:
    """The output must be .parquet or .npy, somewhere writable: checked before any model loads."""
    output = Path(output)
    if output.suffix not in (".parquet", ".npy"):
        raise InvalidArgument(f"output {output} must end in .parquet or .npy", "e.g. -o vectors.parquet")
    return check_writable(output, "output")


def work_dir(output: Path) -> Path:
    """Committed parts live next to the output until the job finishes (and survive a kill)."""
    return output.with_name(f".{output.name}.llmkit-job")


def errors_path(output: Path) -> Path:
    return output.with_name(output.name + ".errors.jsonl")


def prepare(work: Path, key: dict) -> list[dict]:
    """The metas of the parts an earlier run with the same key committed; a fresh work dir otherwise."""
    job_file = work / "job.json"
    if job_file.exists():
        try:
            same = json.loads(job_file.read_text()) == key
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
    write_json(job_file, key)
    return []


@contextlib.contextmanager
def discard_if_nothing_committed(work: Path):
    """On failure, keep the work dir only if it holds committed parts for the next run to resume."""
    try:
        yield
    except BaseException:
        if not any(work.glob("part-*.json")):
            shutil.rmtree(work, ignore_errors=True)
        raise


def finish(work: Path, output: Path, info: dict, failed: int) -> int:
    """Merge the parts into the output (temp + rename), remove the work dir; rows written."""
    rows = merge_parts(work, output, info)
    shutil.rmtree(work, ignore_errors=True)
    if failed == 0:
        errors_path(output).unlink(missing_ok=True)
    return rows


def bad_rows_error(input, bad: list[Bad]) -> DataError:
    lines = ", ".join(str(b.line) for b in bad[:10]) + (" …" if len(bad) > 10 else "")
    return DataError(
        f"{input}: bad rows at line(s) {lines}: {bad[0].reason}",
        f"{bad[0].hint}; or pass --skip-bad to skip (and report) them",
    )


def chain(first, rest):
    yield first
    yield from rest


class PartWriter:
    """Writes output part k: the kept rows with their vectors, the failed rows' error lines and
    the part's meta (last, so the part counts only once whole); keeps the job's counts."""

    def __init__(self, work: Path, errors: Path, keep_text: bool):
        self.work, self.errors, self.keep_text = work, errors, keep_text
        self.rows = self.encoded = self.failed = self.skipped_bad = 0

    def write(
        self,
        no: int,
        rows: list[Row],
        hashes: list[str],
        vectors: np.ndarray,
        failures: list[tuple[Row, str]],
        bad_lines: list[int],
        meta: dict | None = None,
    ) -> None:
        name = f"part-{no:06d}"
        if rows:
            write_parquet(self._table(rows, hashes, vectors), self.work / f"{name}.parquet")
        if failures:
            with open(self.errors, "a", encoding="utf-8") as fh:
                for row, err in failures:
                    fh.write(json.dumps({"id": row.id, "line": row.line, "error": err}, default=str) + "\n")
        if bad_lines:
            from llmkit.ui import warn

            shown = ", ".join(str(n) for n in bad_lines[:10])
            warn(f"skipped {len(bad_lines)} bad row(s) at line(s) {shown}")
        self.rows += len(rows)
        self.failed += len(failures)
        self.skipped_bad += len(bad_lines)
        counts = {"rows": len(rows), "failed": len(failures), "skipped_bad": len(bad_lines)}
        write_json(self.work / f"{name}.json", {**counts, "has_rows": bool(rows), **(meta or {})})

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


def encode_isolating(encoder, texts: list[str], retries: int = 2) -> tuple[np.ndarray, dict[int, str]]:
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
    left, lbad = encode_isolating(encoder, texts[:mid], retries=0)
    right, rbad = encode_isolating(encoder, texts[mid:], retries=0)
    dim = max(encoder.dim, left.shape[1], right.shape[1])
    out = np.zeros((len(texts), dim), np.float32)
    if not lbad or len(lbad) < mid:
        out[:mid, : left.shape[1]] = left
    if not rbad or len(rbad) < len(texts) - mid:
        out[mid:, : right.shape[1]] = right
    return out, {**lbad, **{mid + k: v for k, v in rbad.items()}}


def all_failed(first_error: str) -> EncoderError:
    return EncoderError(
        f"every text failed to encode: {first_error}", "check the encoder (model name, server) and retry"
    )


def _fails_everywhere(encoder, texts: list[str], message: str) -> bool:
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
