"""The batch job on a Ray cluster: the same input, output, order, dedup and error report as
the local job (job.py), with the encoding spread over a pool of Ray actors. What the two share
(work dir, parts, row isolation) is workdir.py; neither runner imports the other.

    llmkit embed corpus.jsonl -o vectors.parquet --ray auto          # RAY_ADDRESS / running cluster
    llmkit embed corpus.jsonl -o vectors.parquet --ray 10.0.0.5:6379 # a given cluster
    llmkit embed corpus.jsonl -o vectors.parquet --ray local         # start one in this process

How: the driver streams the input through the same readers as the local job and cuts it into
input shards of `commit_every` rows (Parquet, in the job's work dir). It dedups as the local job
does: exactly within a shard, and across shards through the same bounded LRU of hashes, replayed
row by row while cutting; a text still in it is not sent again, and the shard's meta records
which earlier shard's part holds its vector (`refs`). Ray Data `map_batches` the texts of the
pending shards through an actor pool (`workers` actors, each loads the encoder once, one CPU
each). Order is preserved, so the driver writes output part k as soon as shard k's texts are back
(temp + rename), exactly like the local job's parts, taking the referenced vectors from its own
copy of that LRU (at most CACHE_ROWS vectors) or, when a resumed run lacks them, from the earlier
part's file; it merges the parts at the end. A killed job, rerun with the same arguments, skips
the shards whose parts are written. The path (auto/fast) is measured once on the driver and the
actors use that exact path, so every row comes from the same kernels.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import OrderedDict
from contextlib import contextmanager, redirect_stdout
from itertools import islice
from pathlib import Path

import numpy as np

from llmkit.embedding import workdir
from llmkit.embedding.encoders import load_encoder
from llmkit.embedding.options import JobOptions
from llmkit.embedding.workdir import CACHE_ROWS, JobResult, PartWriter, text_hash
from llmkit.errors import DataError, InvalidArgument, RayError, first_line
from llmkit.files import write_json
from llmkit.readers import Bad, Row, fingerprint, open_input, read_rows


class _EncodeActor:
    """One per Ray worker: loads the encoder once, encodes batches, isolates failing rows.
    `encoder`: load_encoder's keyword arguments (the path the driver measured)."""

    def __init__(self, encoder: dict):
        self.encoder = load_encoder(**encoder)

    def __call__(self, batch: dict) -> dict:
        texts = [str(t) for t in batch["text"]]
        before = (self.encoder.truncated, self.encoder.chunked)
        vecs, bad = workdir.encode_isolating(self.encoder, texts)
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


@contextmanager
def connected(address: str):
    """Connected to the Ray cluster at `address` for the block. Ray's driver prints the cluster's
    error reports (a worker that exited, say) to stdout, where `llmkit embed --json` writes its
    summary, so for the block they go to stderr; a connection opened here is closed at the end
    (which also stops the thread that prints them)."""
    try:
        import ray
    except ImportError as exc:
        raise RayError("--ray needs the ray package", "pip install 'llmkit[ray]'") from exc
    with redirect_stdout(sys.stderr):
        if ray.is_initialized():  # the caller's own connection: theirs to close
            yield ray
            return
        _check_reachable(address)
        try:
            if address == "local":
                ray.init(include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayError(
                f"cannot connect to the Ray cluster at {address!r}: {first_line(exc, 200)}",
                "start one (ray start --head) or pass its address, e.g. --ray 127.0.0.1:6379; "
                "--ray local starts one in this process",
            ) from exc
        try:
            yield ray
        finally:
            ray.shutdown()


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
    output,
    options: JobOptions | None = None,
    *,
    address: str = "auto",
    workers: int = 2,
    batch_size: int = 256,
    **changes,
) -> JobResult:
    """The job of `options` (JobOptions, or keyword changes to its defaults) on the Ray cluster
    at `address` ("auto", "local", "HOST:PORT"), encoded by `workers` actors."""
    opts = JobOptions.of(options, **changes)
    output = workdir.check_output(output)
    if workers < 1:
        raise InvalidArgument(f"--workers must be at least 1, not {workers}", "e.g. --workers 2")
    src = open_input(input)
    rows_iter = read_rows(src, opts.column, opts.id_column, opts.split, opts.sample_by)
    first = next(rows_iter, None)
    if first is None:
        raise DataError(f"{src} has no rows", "give a file with at least one non-blank row")
    work = workdir.work_dir(output)
    done_parts = workdir.prepare(work, {**fingerprint(src, opts.split), **opts.key(), "ray": True})
    with connected(address):
        # measure/choose the path once, here; the actors load exactly that path
        probe = load_encoder(**opts.encoder())
        info = {
            **probe.info(),
            "normalized": opts.normalize,
            "input": str(src),
            "column": opts.column or "text",
        }
        if probe.choice:
            info["path_choice"] = probe.choice
        info["ray"] = {"address": address, "workers": workers}
        actor_encoder = {**opts.encoder(), "backend": probe.backend, "precision": probe.precision}
        del probe
        errors = workdir.errors_path(output)
        if not done_parts:
            errors.unlink(missing_ok=True)
        start = time.perf_counter()
        resumed = sum(p["rows"] for p in done_parts)

        # 1. the driver cuts the input into shards (streaming); shards with a written part are done
        shards = _write_input_shards(
            work, workdir.chain(first, rows_iter), opts.commit_every, opts.skip_bad, src
        )
        todo = [s for s in shards if not (work / f"part-{s['no']:06d}.json").exists()]
        parts = PartWriter(work, errors, opts.keep_text)
        # 2. the actors encode the texts the pending shards send; 3. the driver writes their parts in order
        counts = {"truncated": 0, "chunked": 0}
        encoded = _encode_on_ray(
            work, [s for s in todo if s["unique"]], actor_encoder, workers, batch_size, counts
        )
        _write_parts(work, todo, encoded, parts)
    if resumed + parts.rows == 0:
        shutil.rmtree(work, ignore_errors=True)
        if errors.exists():  # as the local job says it: the encoder, not the data
            raise workdir.all_failed(json.loads(errors.read_text(encoding="utf-8").splitlines()[0])["error"])
        raise DataError(f"{src} has no usable rows", "every row was bad or blank")
    metas = [json.loads(p.read_text()) for p in work.glob("part-*.json")]
    failed = sum(m["failed"] for m in metas)
    total_rows = workdir.finish(work, output, info, failed)
    return JobResult(
        output,
        total_rows,
        parts.encoded,
        counts["truncated"],
        counts["chunked"],
        failed,
        sum(m["skipped_bad"] for m in metas),
        time.perf_counter() - start,
        resumed,
        info,
    )


def _encode_on_ray(work: Path, shards: list[dict], encoder: dict, workers: int, batch_size: int, counts):
    """(shard, pos, vector, error) for each text the shards send, in order, from the actor pool;
    adds the actors' truncated/chunked counts to `counts`."""
    if not shards:
        return
    import pyarrow.parquet as pq
    import ray
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # rows come back in input order
    ctx.enable_progress_bars = False
    # the pending shards go to the object store as blocks, one at a time, so the driver holds one
    # shard, not the corpus (the store spills to disk when full); no read tasks: with one CPU per
    # actor a CPU-holding read task could wait for ever
    ds = ray.data.from_arrow_refs(
        [ray.put(pq.read_table(work / f"input-{s['no']:06d}.parquet")) for s in shards]
    )
    ds = ds.map_batches(
        _EncodeActor,
        fn_constructor_kwargs={"encoder": encoder},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=1,
        **({"num_gpus": 1} if encoder["backend"] == "cuda" else {}),  # a GPU path: on GPU nodes
    )
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        counts["truncated"] += int(batch["truncated"].sum())
        counts["chunked"] += int(batch["chunked"].sum())
        for i, no in enumerate(batch["shard"].tolist()):
            # a copy: a view would keep the whole batch alive in the driver's cache
            yield no, int(batch["pos"][i]), batch["vector"][i].copy(), str(batch["error"][i])


def _write_parts(work: Path, shards: list[dict], encoded, parts: PartWriter) -> None:
    """Write the parts of `shards` in order, each from the next `unique` rows of `encoded` (none
    for a shard made only of texts from earlier shards) and the vectors it refers to."""
    cache: OrderedDict[str, tuple] = OrderedDict()  # hash → (vector, error): the cut's LRU, replayed
    for shard in shards:
        results = list(islice(encoded, shard["unique"]))
        if len(results) != shard["unique"] or any(r[0] != shard["no"] for r in results):
            raise _out_of_order(shard["no"])
        _write_part(work, shard, [r[1:] for r in results], cache, parts)
    if next(encoded, None) is not None:  # also lets the Ray Data iteration finish
        raise _out_of_order(shards[-1]["no"])


def _out_of_order(no: int) -> RayError:
    return RayError(
        f"Ray Data returned the texts of shard {no} incomplete or out of order",
        "rerun the same command: it resumes from the parts written so far",
    )


def _replay_cache(cache: OrderedDict, hashes: list[str], refs: dict, value) -> None:
    """The moves of the local job's cache (`job._LocalParts._vectors`), row by row: a text taken from an
    earlier shard is touched if still there; one sent by this shard is remembered, the oldest
    evicted. (Unlike the local job, a text that failed is remembered too: the cut cannot know.)"""
    for h in hashes:
        if h in refs:
            if h in cache:
                cache.move_to_end(h)
        else:
            _remember(cache, h, value(h))


def _remember(cache: OrderedDict, h: str, value) -> None:
    cache[h] = value  # an entry already there keeps its place, as in the local job's cache
    if len(cache) > CACHE_ROWS:
        cache.popitem(last=False)


def _write_input_shards(work: Path, rows, commit_every: int, skip_bad: bool, input) -> list[dict]:
    """Shard k = rows [k·n, (k+1)·n) of the input: `unique` texts to send (pos → text) and `refs`,
    hash → earlier shard, for the texts that shard sent (their vectors are in its part)."""
    shards, block, bad, no = [], [], [], 0
    sent: OrderedDict[str, int] = OrderedDict()  # hash → the shard that sent it

    def flush():
        nonlocal block, bad, no
        hashes = [text_hash(r.text) for r in block]
        refs = {h: sent[h] for h in hashes if h in sent}  # taken before this shard's texts evict any
        _replay_cache(sent, hashes, refs, lambda h: no)
        meta_path = work / f"input-{no:06d}.json"
        if meta_path.exists():  # cut by an earlier run (same arguments: same rows, same refs)
            shards.append(json.loads(meta_path.read_text()))
        else:
            if bad and not skip_bad:
                raise workdir.bad_rows_error(input, bad)
            shards.append(_cut_shard(work, no, block, bad, hashes, refs))
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
    return shards


def _cut_shard(work: Path, no: int, block: list[Row], bad: list[Bad], hashes: list[str], refs: dict) -> dict:
    """Write shard `no`'s rows and the texts it sends; return its meta (also written)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = {h: r.text for h, r in zip(hashes, block, strict=True) if h not in refs}  # first-seen order
    rows_table = pa.table(
        {
            "row": pa.array(
                [json.dumps([r.index, r.line, r.text, r.id, r.extra], default=str) for r in block],
                pa.string(),
            ),
            "hash": pa.array(hashes, pa.string()),
        }
    )
    _atomic_parquet(rows_table, work / f"rows-{no:06d}.parquet", pq)
    texts_table = pa.table(
        {
            "text": pa.array(list(texts.values()), pa.string()),
            "shard": pa.array([no] * len(texts), pa.int64()),
            "pos": pa.array(range(len(texts)), pa.int64()),
        }
    )
    _atomic_parquet(texts_table, work / f"input-{no:06d}.parquet", pq)
    meta = {
        "no": no,
        "rows": len(block),
        "unique": len(texts),
        "refs": refs,
        "bad": [[b.line, b.reason] for b in bad],
    }
    write_json(work / f"input-{no:06d}.json", meta)
    return meta


def _atomic_parquet(table, path: Path, pq) -> None:
    from llmkit.files import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def _write_part(work: Path, shard: dict, results: list, cache: OrderedDict, parts: PartWriter) -> None:
    """Output part k from the vectors shard k sent and those it refers to: the same table, error
    lines and counts the local job writes."""
    import pyarrow.parquet as pq

    no = shard["no"]
    rows_table = pq.read_table(work / f"rows-{no:06d}.parquet")
    hashes = rows_table.column("hash").to_pylist()
    rows = [Row(*json.loads(x)) for x in rows_table.column("row").to_pylist()]
    refs = shard.get("refs", {})  # metas cut before cross-shard dedup have none
    outcome = _referenced(work, refs, cache)  # looked up before this shard's texts evict any
    sent = [h for h in dict.fromkeys(hashes) if h not in refs]  # in pos order, as cut
    results.sort(key=lambda r: r[0])
    for h, (_, vec, err) in zip(sent, results, strict=True):
        outcome[h] = (None if err else vec, err)
    _replay_cache(cache, hashes, refs, outcome.__getitem__)
    keep = [i for i, h in enumerate(hashes) if not outcome[h][1]]
    vectors = np.stack([outcome[hashes[i]][0] for i in keep]).astype(np.float32) if keep else None
    parts.write(
        no,
        [rows[i] for i in keep],
        [hashes[i] for i in keep],
        vectors,
        [(rows[i], outcome[h][1]) for i, h in enumerate(hashes) if outcome[h][1]],
        [line for line, _ in shard["bad"]],
        # for later shards that refer to these texts after a resume
        meta={"errors": {h: outcome[h][1] for h in sent if outcome[h][1]}},
    )
    parts.encoded += sum(1 for _, _, err in results if not err)
    for suffix in ("input", "rows"):  # the shard is done: its input copy is no longer needed
        (work / f"{suffix}-{no:06d}.parquet").unlink(missing_ok=True)


def _referenced(work: Path, refs: dict, cache: OrderedDict) -> dict:
    """hash → (vector, error) of the texts a shard takes from earlier shards: from the driver's
    cache, else (a resumed run: the killed run wrote that part) from the earlier part's files,
    cached from then on."""
    found = {h: cache[h] for h in refs if h in cache}
    missing: dict[int, set] = {}
    for h, no in refs.items():
        if h not in found:
            missing.setdefault(no, set()).add(h)
    for no, wanted in sorted(missing.items()):
        for h, value in _read_part(work, no, wanted).items():
            found[h] = value
            _remember(cache, h, value)
    return found


def _read_part(work: Path, no: int, wanted: set) -> dict:
    """(vector, error) of the `wanted` texts that shard `no` sent, from its written part."""
    import pyarrow.parquet as pq

    errors = json.loads((work / f"part-{no:06d}.json").read_text())["errors"]
    found = {h: (None, errors[h]) for h in wanted if h in errors}
    if len(found) < len(wanted):
        table = pq.read_table(work / f"part-{no:06d}.parquet", columns=["text_hash", "vector"])
        vec = table.column("vector").combine_chunks()
        vectors = vec.flatten().to_numpy().reshape(len(vec), vec.type.list_size)
        for h, v in zip(table.column("text_hash").to_pylist(), vectors, strict=True):
            if h in wanted and h not in found:
                found[h] = (v.copy(), "")
    if len(found) < len(wanted):
        raise DataError(
            f"{work}: part {no} lacks {len(wanted) - len(found)} vector(s) that later shards refer to",
            f"delete {work} and rerun (the job starts over)",
        )
    return found
