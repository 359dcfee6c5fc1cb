"""The batch job, run here: a file of texts → vectors.parquet (or .npy), streaming and resumable.

Rows are read one at a time and committed in parts of `commit_every` input rows: each part is
encoded, written to its own Parquet file in the work dir (workdir.py) and forgotten. A rerun
with the same input and options finds the committed parts, skips those rows and carries on; at
the end the parts are merged into the output and the work dir removed. So a SIGKILL at any
moment loses at most one part of work, never a row.

Identical texts are encoded once (exactly within a part, through a bounded cache across parts,
so memory stays flat). A batch that fails is retried, then split in halves until the failing
rows are isolated; those are reported in `<output>.errors.jsonl` and the rest completes.
The same job on a Ray cluster is ray_job.py; `llmkit.embedding.embed_file` picks one.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import numpy as np

from llmkit.embedding import workdir
from llmkit.embedding.encoders import Encoder, load_encoder
from llmkit.embedding.options import JobOptions
from llmkit.embedding.workdir import CACHE_ROWS, JobResult, PartWriter, text_hash
from llmkit.errors import DataError
from llmkit.readers import Bad, Row, count_rows, fingerprint, open_input, read_rows


def embed_file(
    input, output, options: JobOptions | None = None, *, encoder: Encoder | None = None, **changes
) -> JobResult:
    """`input`: a file, a directory of .parquet files, a `save_to_disk` dataset dir or a Hugging
    Face dataset (see `llmkit.readers`); `options` (or keyword changes to the defaults): JobOptions.
    `encoder`: one already loaded (its options must match `options`' encoder fields)."""
    opts = JobOptions.of(options, **changes)
    output = workdir.check_output(output)
    src = open_input(input)  # once: what it is, a folder's files, an object store's region
    work = workdir.work_dir(output)
    key = {**fingerprint(src, opts.split), **opts.key()}
    # the first row is read now: a missing column or an unreadable file fails before the model loads
    rows_iter = read_rows(src, opts.column, opts.id_column, opts.split, opts.sample_by)
    first = next(rows_iter, None)
    if first is None:
        raise DataError(f"{src} has no rows", "give a file with at least one non-blank row")
    done_parts = workdir.prepare(work, key)
    errors = workdir.errors_path(output)
    with workdir.discard_if_nothing_committed(work):  # a failure before the first commit leaves nothing
        encoder = encoder or load_encoder(**opts.encoder())
        if not done_parts:
            errors.unlink(missing_ok=True)  # a report from an earlier, finished run
        state = _LocalParts(encoder, work, errors, opts.keep_text)
        total = count_rows(src, opts.split, opts.sample_by)
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
            for item in workdir.chain(first, rows_iter):
                if isinstance(item, Bad):
                    bad.append(item)
                    continue
                block.append(item)
                if len(block) == opts.commit_every:
                    part_no = state.commit(part_no, block, bad, done_parts, opts.skip_bad, src)
                    block, bad = [], []
                    bar.update(task, completed=resumed + state.rows, rate=_rate(state.rows, start))
            if block or bad:
                part_no = state.commit(part_no, block, bad, done_parts, opts.skip_bad, src)
                bar.update(task, completed=resumed + state.rows, rate=_rate(state.rows, start))
    if resumed + state.rows == 0:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
        raise DataError(f"{src} has no usable rows", "every row was bad or blank")
    info = {
        **encoder.info(),
        "normalized": opts.normalize,
        "input": str(src),
        "column": opts.column or "text",
    }
    if encoder.choice:  # auto/fast: which path was measured fastest here, and the numbers
        info["path_choice"] = encoder.choice
    total_rows = workdir.finish(work, output, info, state.failed)
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


def _rate(rows: int, start: float) -> str:
    return f"{rows / max(time.perf_counter() - start, 1e-9):,.0f}"


class _LocalParts(PartWriter):
    """Parts encoded in this process, through an LRU of vectors across parts."""

    def __init__(self, encoder: Encoder, work, errors, keep_text: bool):
        super().__init__(work, errors, keep_text)
        self.encoder = encoder
        self.cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def commit(self, part_no, block, bad, done_parts, skip_bad, input) -> int:
        if bad and not skip_bad:
            raise workdir.bad_rows_error(input, bad)
        if part_no < len(done_parts):  # committed by an earlier run: skip these rows
            return part_no + 1
        hashes = [text_hash(r.text) for r in block]
        vectors, failures = self._vectors([r.text for r in block], hashes)
        keep = [i for i in range(len(block)) if i not in failures]
        self.write(
            part_no,
            [block[i] for i in keep],
            [hashes[i] for i in keep],
            vectors[keep],
            [(block[i], err) for i, err in failures.items()],
            [b.line for b in bad],
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
        fresh, bad_unique = workdir.encode_isolating(self.encoder, unique) if unique else (None, {})
        self.encoded += len(unique) - len(bad_unique)
        if unique and len(bad_unique) == len(unique) and self.rows == 0 and self.encoded == 0:
            raise workdir.all_failed(next(iter(bad_unique.values())))
        out = np.zeros((len(texts), self.encoder.dim), np.float32)
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
