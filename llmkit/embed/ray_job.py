"""The batch job on a Ray cluster: the same input, output, order, dedup and error report as
`job.embed_file`, with the encoding spread over a pool of Ray actors.

    llmkit embed corpus.jsonl -o vectors.parquet --ray auto          # RAY_ADDRESS / running cluster
    llmkit embed corpus.jsonl -o vectors.parquet --ray 10.0.0.5:6379 # a given cluster
    llmkit embed corpus.jsonl -o vectors.parquet --ray local         # start one in this process

How: the driver streams the input through the same readers as the local job and cuts it into
input shards of `commit_every` rows (Parquet, in the job's work dir; each shard's texts
deduplicated). Ray Data reads the shards that have no output yet and `map_batches` them through
an actor pool (`workers` actors, each loads the encoder once, one CPU each). Order is preserved,
so the driver writes output part k as soon as shard k's rows are back (temp + rename), exactly like
the local job's parts, and merges them at the end. A killed job, rerun with the same arguments,
skips the shards whose parts are written. The path (auto/fast) is measured once on the driver and
the actors use that exact path, so every row comes from the same kernels.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from llmkit.embed.encoders import DEFAULT_MODEL, load_encoder
from llmkit.errors import DataError, InvalidArgument, RayError
from llmkit.files import write_json
from llmkit.readers import Bad, Row, read_rows


class _EncodeActor:
    """One per Ray worker: loads the encoder once, encodes batches, isolates failing rows."""

    def __init__(self, model: str, backend: str, precision: str, normalize: bool, chunk: bool):
        self.encoder = load_encoder(model, backend, precision, normalize)
        self.encoder.chunk_long = chunk

    def __call__(self, batch: dict) -> dict:
        from llmkit.embed.job import _encode_isolating

        texts = [str(t) for t in batch["text"]]
        before = (self.encoder.truncated, self.encoder.chunked)
        vecs, bad = _encode_isolating(self.encoder, texts)
        zeros = [0] * (len(texts) - 1)
        return {
            "shard": batch["shard"],
            "pos": batch["pos"],
            "vector": vecs.astype(np.float32),
            "error": np.array([bad.get(i, "") for i in range(len(texts))], dtype=object),
            # this call's count on its first row, so that the driver's sum is exact
            "truncated": np.array([self.encoder.truncated - before[0], *zeros], np.int64),
            "chunked": np.array([self.encoder.chunked - before[1], *zeros], np.int64),
        }


def connect(address: str):
    try:
        import ray
    except ImportError as exc:
        raise RayError("--ray needs the ray package", "pip install 'llmkit[ray]'") from exc
    if not ray.is_initialized():
        _check_reachable(address)
        try:
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayError(
                f"cannot connect to the Ray cluster at {address!r}: {str(exc).splitlines()[0][:200]}",
                "start one (ray start --head) or pass its address, e.g. --ray 127.0.0.1:6379; "
                "--ray local starts one in this process",
            ) from exc
    return ray


def _check_reachable(address: str) -> None:
    """ray.init retries an unreachable HOST:PORT for minutes; say so in seconds instead."""
    import socket

    host, _, port = address.rpartition(":")
    if address in ("auto", "local") or "://" in address or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise RayError(
            f"cannot connect to the Ray cluster at {address!r}: {exc}",
            "start one (ray start --head) or pass its address, e.g. --ray 127.0.0.1:6379; "
            "--ray local starts one in this process",
        ) from exc


def embed_ray(
    input,
    output: Path,
    *,
    address: str = "auto",
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
    split: str = "train",
    sample_by: str = "line",
    workers: int = 2,
    batch_size: int = 256,
):
    from llmkit.embed.job import (
        JobResult,
        _prepare_work_dir,
        _State,
        check_output,
        job_key,
        text_hash,
        work_dir,
    )
    from llmkit.embed.vectorfile import merge_parts, write_parquet

    output = check_output(output)
    if workers < 1:
        raise InvalidArgument(f"--workers must be at least 1, not {workers}", "e.g. --workers 2")
    rows_iter = read_rows(input, column, id_column, split, sample_by)
    first = next(rows_iter, None)
    if first is None:
        raise DataError(f"{input} has no rows", "give a file with at least one non-blank row")
    work = work_dir(output)
    key = job_key(
        input,
        split,
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
        ray=True,
    )
    done_parts = _prepare_work_dir(work, key)
    ray = connect(address)
    # measure/choose the path once, here; the actors load exactly that path
    probe = load_encoder(model, backend, precision, normalize)
    info = {**probe.info(), "normalized": normalize, "input": str(input), "column": column or "text"}
    if probe.choice:
        info["path_choice"] = probe.choice
    info["ray"] = {"address": address, "workers": workers}
    path_backend, path_precision = probe.backend, probe.precision
    del probe
    errors_path = output.with_name(output.name + ".errors.jsonl")
    if not done_parts:
        errors_path.unlink(missing_ok=True)
    start = time.perf_counter()
    resumed = sum(p["rows"] for p in done_parts)

    # 1. the driver cuts the input into shards (streaming); shards with a written part are done
    shards = _write_input_shards(work, _chain(first, rows_iter), commit_every, skip_bad, input, text_hash)
    todo = [s for s in shards if not (work / f"part-{s['no']:06d}.json").exists()]
    state = _State(probe_stub(path_backend, path_precision, model), work, errors_path, keep_text)
    truncated = chunked = 0
    if todo:
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # rows come back in input order
        ctx.enable_progress_bars = False
        import pyarrow.parquet as pq

        # the pending shards go to the object store as blocks (spilled to disk when large); no
        # read tasks: with one CPU per actor a CPU-holding read task could wait for ever
        ds = ray.data.from_arrow([pq.read_table(work / f"input-{s['no']:06d}.parquet") for s in todo])
        ds = ds.map_batches(
            _EncodeActor,
            fn_constructor_kwargs={
                "model": model,
                "backend": path_backend,
                "precision": path_precision,
                "normalize": normalize,
                "chunk": chunk,
            },
            batch_size=batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_cpus=1,
        )
        by_no = {s["no"]: s for s in todo}
        pending: dict[int, list] = {}
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            truncated += int(batch["truncated"].sum())
            chunked += int(batch["chunked"].sum())
            for i, no in enumerate(batch["shard"].tolist()):
                pending.setdefault(no, []).append(
                    (int(batch["pos"][i]), batch["vector"][i], str(batch["error"][i]))
                )
            for no in sorted(pending):
                if len(pending[no]) == by_no[no]["unique"]:
                    _write_part(work, by_no[no], pending.pop(no), state, write_parquet)
    if resumed + state.rows == 0:
        shutil.rmtree(work, ignore_errors=True)
        raise DataError(f"{input} has no usable rows", "every row was bad or blank")
    total_rows = merge_parts(work, output, info)
    failed = sum(json.loads(p.read_text())["failed"] for p in work.glob("part-*.json"))
    skipped = sum(json.loads(p.read_text())["skipped_bad"] for p in work.glob("part-*.json"))
    shutil.rmtree(work, ignore_errors=True)
    if failed == 0 and errors_path.exists():
        errors_path.unlink()
    return JobResult(
        output,
        total_rows,
        state.encoded,
        truncated,
        chunked,
        failed,
        skipped,
        time.perf_counter() - start,
        resumed,
        info,
    )


def probe_stub(backend: str, precision: str, model: str):
    """_State wants an encoder only for its dim on failure; the driver encodes nothing itself."""

    class _Stub:
        dim = 0

    stub = _Stub()
    stub.backend, stub.precision, stub.model = backend, precision, model
    return stub


def _chain(first, rest):
    yield first
    yield from rest


def _write_input_shards(work: Path, rows, commit_every: int, skip_bad: bool, input, text_hash) -> list[dict]:
    """Shard k = rows [k·n, (k+1)·n) of the input, texts deduplicated (pos → unique text)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    shards, block, bad, no = [], [], [], 0

    def flush():
        nonlocal block, bad, no
        meta_path = work / f"input-{no:06d}.json"
        if meta_path.exists():  # cut by an earlier run (same arguments: same rows)
            shards.append(json.loads(meta_path.read_text()))
        else:
            if bad and not skip_bad:
                lines = ", ".join(str(b.line) for b in bad[:10]) + (" …" if len(bad) > 10 else "")
                raise DataError(
                    f"{input}: bad rows at line(s) {lines}: {bad[0].reason}",
                    "fix the file, or pass --skip-bad to skip (and report) them",
                )
            hashes = [text_hash(r.text) for r in block]
            unique: dict[str, int] = {}
            for h in hashes:
                unique.setdefault(h, len(unique))
            texts = [""] * len(unique)
            for h, r in zip(hashes, block, strict=True):
                texts[unique[h]] = r.text
            rows_table = pa.table(
                {
                    "row": [json.dumps([r.index, r.line, r.text, r.id, r.extra], default=str) for r in block],
                    "hash": hashes,
                }
            )
            _atomic_parquet(rows_table, work / f"rows-{no:06d}.parquet", pq)
            texts_table = pa.table(
                {"text": texts, "shard": [no] * len(texts), "pos": list(range(len(texts)))}
            )
            _atomic_parquet(texts_table, work / f"input-{no:06d}.parquet", pq)
            meta = {
                "no": no,
                "rows": len(block),
                "unique": len(texts),
                "bad": [[b.line, b.reason] for b in bad],
            }
            write_json(meta_path, meta)
            shards.append(meta)
        block, bad, no = [], [], no + 1

    for item in rows:
        if isinstance(item, Bad):
            bad.append(item)
            continue
        block.append(item)
        if len(block) == commit_every:
            flush()
    if block or bad:
        flush()
    return [s for s in shards if s["unique"]]


def _atomic_parquet(table, path: Path, pq) -> None:
    from llmkit.files import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _write_part(work: Path, shard: dict, results: list, state, write_parquet) -> None:
    """Output part k from shard k's vectors: the same table the local job writes."""
    import pyarrow.parquet as pq

    no = shard["no"]
    results.sort(key=lambda r: r[0])
    rows_table = pq.read_table(work / f"rows-{no:06d}.parquet")
    hashes = rows_table.column("hash").to_pylist()
    rows = [Row(*json.loads(x)) for x in rows_table.column("row").to_pylist()]
    order = {}
    for h in hashes:
        order.setdefault(h, len(order))
    vectors = np.stack([r[1] for r in results]).astype(np.float32)
    errors = [r[2] for r in results]
    keep = [i for i, h in enumerate(hashes) if not errors[order[h]]]
    name = f"part-{no:06d}"
    if keep:
        idx = [order[hashes[i]] for i in keep]
        table = state._table([rows[i] for i in keep], [hashes[i] for i in keep], vectors[idx])
        write_parquet(table, work / f"{name}.parquet")
    failures = [i for i in range(len(rows)) if i not in set(keep)]
    if failures:
        with open(state.errors_path, "a", encoding="utf-8") as fh:
            for i in failures:
                fh.write(
                    json.dumps(
                        {"id": rows[i].id, "line": rows[i].line, "error": errors[order[hashes[i]]]},
                        default=str,
                    )
                    + "\n"
                )
    state.rows += len(keep)
    state.encoded += sum(1 for e in errors if not e)
    write_json(
        work / f"{name}.json",
        {
            "rows": len(keep),
            "failed": len(failures),
            "skipped_bad": len(shard["bad"]),
            "has_rows": bool(keep),
        },
    )
    for suffix in ("input", "rows"):  # the shard is done: its input copy is no longer needed
        (work / f"{suffix}-{no:06d}.parquet").unlink(missing_ok=True)
