"""`llmkit embed --ray`: the same job on a real Ray cluster (started on loopback with 2 CPUs by
`ray start --head --block`, torn down with it), compared row by row with the local job. The
fixture checks that every socket the cluster's processes listen on is a loopback one."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import _free_port

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'llmkit[ray]')")
VENV_BIN = Path(sys.executable).parent
# Ray turns a --node-ip-address of 127.0.0.1 into the machine's address (resolve_ip_for_localhost),
# and its gRPC servers bind loopback only when the node's address is 127.0.0.1. With
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its single-machine mode, the default on Windows and macOS),
# get_node_ip_address answers 127.0.0.1 in `ray start` and in the driver alike, so the cluster and
# the job's driver stay on loopback (the driver needs it too, or it looks for the GCS at the
# machine's address)
ENV = {
    **os.environ,
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "OMP_NUM_THREADS": "1",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


@pytest.fixture(scope="module")
def cluster():
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="/tmp/llr")  # short: Ray's unix socket paths must fit 107 bytes
    head = subprocess.Popen(
        [
            str(VENV_BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
            # Ray always starts its client server (port 0 is refused); on a free port, not the fixed
            # 10001 that parallel test sessions would fight over (the jobs connect through the GCS)
            f"--ray-client-server-port={_free_port()}",
        ],
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the teardown ends exactly this cluster
    )
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    while subprocess.run(
        [str(VENV_BIN / "ray"), "status", f"--address={address}"], env=ENV, capture_output=True
    ).returncode:
        assert head.poll() is None and time.time() < deadline, "ray start --head did not come up"
        time.sleep(2)
    try:
        _assert_loopback_only(head.pid)
        yield address
        _assert_loopback_only(head.pid)  # the workers and actors the tests started, too
    finally:  # torn down whatever the checks found
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


def _listening(session: int) -> list[tuple[str, str, int]]:
    """(process, address, port) of each listening TCP socket of the processes in `session` (the
    cluster's: `ray start` leads its own session, and its processes stay in it)."""
    import psutil

    found = []
    for proc in psutil.process_iter(["name"]):
        try:
            if os.getsid(proc.pid) != session:
                continue
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((proc.info["name"], conn.laddr.ip, conn.laddr.port))
        except (psutil.Error, OSError):  # ended meanwhile
            continue
    return found


def _is_loopback(ip: str) -> bool:
    """127.0.0.0/8 or ::1; Ray's gRPC servers bind IPv6 sockets to ::ffff:127.0.0.1, the IPv4
    loopback address written the IPv6 way (only loopback can reach it)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def _assert_loopback_only(session: int) -> None:
    listening = _listening(session)
    assert listening, "found no listening socket of the Ray cluster (is the check looking at it?)"
    exposed = [x for x in listening if not _is_loopback(x[1])]
    assert not exposed, f"Ray processes listen beyond loopback: {exposed}"


def _embed(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llmkit", "embed", *args, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        **kw,
    )


def _vectors(path):
    table = pq.read_table(path)
    vec = table.column("vector").combine_chunks()
    return table, vec.flatten().to_numpy().reshape(len(vec), vec.type.list_size)


def _same_as_local(ray_out: Path, src: Path, tmp_path: Path, **options):
    """The local job's result; `ray_out` holds the same rows in the same order, the same vectors."""
    from llmkit.embedding.job import embed_file

    local = embed_file(src, tmp_path / "local.parquet", **options)
    lt, lv = _vectors(tmp_path / "local.parquet")
    rt, rv = _vectors(ray_out)
    assert rt.column("id").to_pylist() == lt.column("id").to_pylist()
    assert rt.column("text").to_pylist() == lt.column("text").to_pylist()
    assert rt.column("text_hash").to_pylist() == lt.column("text_hash").to_pylist()
    cos = (rv * lv).sum(1)
    assert cos.min() >= 0.99999, cos.min()
    assert local.rows == len(rt)
    return local


@pytest.mark.slow
def test_ray_job_matches_the_local_job_row_by_row(cluster, tmp_path):
    src = tmp_path / "in.txt"
    lines = [f"sentence {i} about {['cats', 'rain', 'football', 'laptops'][i % 4]}" for i in range(300)]
    lines[250] = lines[7]  # a duplicate across shards
    lines[20] = lines[21]  # and one within a shard
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.parquet"
    job = _embed(str(src), "-o", str(out), "--ray", cluster, "--workers", "2", "--commit-every", "100")
    stdout, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["rows"] == 300 and summary["ray"] == {"address": cluster, "workers": 2}
    assert summary["encoded"] == 298  # both duplicates (in a shard, across shards) encoded once
    assert not list(tmp_path.glob(".r.parquet*"))  # work dir removed
    _same_as_local(out, src, tmp_path)


def test_bad_ray_address_is_a_one_line_error(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    job = _embed(
        str(tmp_path / "a.txt"), "-o", str(tmp_path / "v.parquet"), "--ray", f"127.0.0.1:{_free_port()}"
    )
    _, stderr = job.communicate(timeout=300)
    assert job.returncode == 1 and "cannot connect to the Ray cluster at '127.0.0.1:" in stderr, stderr[
        -2000:
    ]
    assert "Traceback" not in stderr and not (tmp_path / "v.parquet").exists()


@pytest.mark.slow
def test_ray_job_killed_half_way_resumes_from_its_shards(cluster, tmp_path):
    src = tmp_path / "in.txt"
    lines = [f"row {i}: {['a cat sleeps', 'it rains', 'goal!', 'RAM'][i % 4]} {i * 7}" for i in range(2000)]
    lines += lines[:800]  # shards 20-27 repeat shards 0-7: their vectors come from those parts
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.parquet"
    args = (str(src), "-o", str(out), "--ray", cluster, "--workers", "2", "--commit-every", "100")
    job = _embed(*args)
    work = tmp_path / ".r.parquet.llmkit-job"
    deadline = time.time() + 600
    while len(list(work.glob("part-*.json"))) < 4:
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.1)  # Ray Data returns the shards in bursts: look often
    job.kill()  # SIGKILL the driver half-way
    job.wait()
    written = len(list(work.glob("part-*.json")))
    assert 4 <= written < 28 and not out.exists()  # 28 shards; 20-27 follow 19 at once (no encoding)
    job = _embed(*args)
    stdout, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["rows"] == 2800 and summary["resumed_rows"] == 100 * written, summary
    # the repeats of parts 0-3, written by the killed run, were read back from those parts, not
    # encoded again: each of the 2,000 distinct texts was encoded once over the two runs
    assert summary["encoded"] + summary["resumed_rows"] == 2000, summary
    assert summary["duplicates"] == 800, summary
    _same_as_local(out, src, tmp_path)


@pytest.mark.slow
def test_ray_job_dedups_across_shards_like_the_local_job(cluster, tmp_path):
    topics = ["cats", "rain", "football", "laptops", "tea"]
    texts = [f"a sentence about {topics[i % 5]}, number {i}" for i in range(23)]
    picks = [
        *(0, 1, 2, 1, 3, 4, 5, 6),  # shard 0 (with --commit-every 8): a duplicate within the shard
        *(7, 8, 0, 9, 10, 2, 11, 12),  # shard 1: two texts of shard 0
        *(0, 1, 2, 3, 4, 5, 6, 7),  # shard 2: only texts of shards 0 and 1, so nothing to encode
        *(13, 14, 13, 8, 15, 16, 0, 17),
        *(18, 3, 19, 12, 20, 21, 22, 9),
    ]
    lines = [json.dumps({"text": texts[i], "n": n}) for n, i in enumerate(picks)]
    lines.insert(5, "{not json")  # a bad row inside shard 0
    lines.append("[1, 2]")  # and one alone in a last shard of bad rows only
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "r.parquet"
    job = _embed(str(src), "-o", str(out), "--ray", cluster, "--commit-every", "8", "--skip-bad")
    stdout, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr[-3000:]
    ray_summary = json.loads(stdout)
    local = _same_as_local(out, src, tmp_path, commit_every=8, skip_bad=True).summary()
    keys = ("rows", "encoded", "duplicates", "failed", "skipped_bad")
    assert {k: ray_summary[k] for k in keys} == {k: local[k] for k in keys}
    assert (local["rows"], local["encoded"], local["skipped_bad"]) == (40, 23, 2)
    assert pq.read_table(out).column("n").to_pylist() == list(range(40))
    assert not (tmp_path / "r.parquet.errors.jsonl").exists()


@pytest.mark.slow
def test_ray_driver_fails_a_text_in_later_shards_as_the_local_job_does(tmp_path):
    """No cluster: the driver's cut and parts, fed by the actor class called in this process, its
    real encoder failing on one text (an injected fault, as in test_embed.py). Shard 1 takes the
    failure from shard 0 through the driver's cache; shard 2, written by a fresh call (as after a
    resume), from part 0's meta."""
    from llmkit.embedding.job import embed_file
    from llmkit.embedding.options import JobOptions
    from llmkit.embedding.ray_job import _EncodeActor, _write_input_shards, _write_parts
    from llmkit.embedding.vectorfile import merge_parts
    from llmkit.embedding.workdir import PartWriter, text_hash
    from llmkit.readers import read_rows

    actor = _EncodeActor(JobOptions().encoder())
    real = actor.encoder._encode

    def flaky(texts):
        if "POISON" in texts:
            raise RuntimeError("server said 500")
        return real(texts)

    actor.encoder._encode = flaky
    src = tmp_path / "in.txt"
    src.write_text("a\nPOISON\nb\nc\nPOISON\nd\na\ne\nf\nPOISON\ng\nPOISON\n")
    local = embed_file(src, tmp_path / "local.parquet", commit_every=4, encoder=actor.encoder)
    local_errors = (tmp_path / "local.parquet.errors.jsonl").read_text()

    work = tmp_path / "work"
    work.mkdir()
    shards = _write_input_shards(work, read_rows(src, None, None, "train", "line"), 4, False, src)
    assert shards[1]["refs"] == {text_hash("POISON"): 0, text_hash("a"): 0}
    assert shards[2]["refs"] == {text_hash("POISON"): 0}
    errors_path = tmp_path / "r.parquet.errors.jsonl"
    state = PartWriter(work, errors_path, True)

    def actor_rows(todo):  # what _encode_on_ray yields, from the actor in this process
        for s in todo:
            if s["unique"]:
                batch = pq.read_table(work / f"input-{s['no']:06d}.parquet").to_pydict()
                out = actor({k: np.array(v) for k, v in batch.items()})
                yield from zip(
                    out["shard"].tolist(), out["pos"].tolist(), out["vector"], out["error"], strict=True
                )

    _write_parts(work, shards[:2], actor_rows(shards[:2]), state)
    _write_parts(work, shards[2:], actor_rows(shards[2:]), state)
    assert errors_path.read_text() == local_errors and local_errors.count("server said 500") == 4
    assert state.encoded == local.encoded == 7
    assert sum(json.loads(p.read_text())["failed"] for p in work.glob("part-*.json")) == local.failed == 4
    assert merge_parts(work, tmp_path / "r.parquet", {}) == local.rows == 8
    lt, lv = _vectors(tmp_path / "local.parquet")
    rt, rv = _vectors(tmp_path / "r.parquet")
    assert rt.column("id").to_pylist() == lt.column("id").to_pylist() == [0, 2, 3, 5, 6, 7, 8, 10]
    assert (rv * lv).sum(1).min() >= 0.99999


def test_the_clusters_error_reports_stay_off_stdout(cluster):
    """Ray's driver prints the cluster's error reports (here: a worker that died) to stdout, where
    `llmkit embed --json` writes its summary; inside `connected` they go to stderr, and leaving it
    closes the connection, so none comes after the summary either."""
    script = f"""
import os, sys, ray
from llmkit.embedding.ray_job import connected

@ray.remote(max_retries=0)
def die():
    os._exit(1)

with connected({cluster!r}):
    try:
        ray.get(die.remote())
    except ray.exceptions.WorkerCrashedError:
        pass
    import time; time.sleep(3)  # the raylet's report arrives after the error
print(ray.is_initialized())
"""
    job = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=300)
    assert job.returncode == 0, job.stderr[-3000:]
    assert job.stdout == "False\n"
    assert "(raylet)" in job.stderr and "worker died" in job.stderr
