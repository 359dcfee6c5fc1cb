"""`llmkit embed --ray`: the same job on a real Ray cluster (started on loopback with 2 CPUs by
`ray start --head --block`, torn down with it), compared row by row with the local job."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'llmkit[ray]')")
VENV_BIN = Path(sys.executable).parent
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "OMP_NUM_THREADS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    yield address
    os.killpg(head.pid, signal.SIGTERM)
    try:
        head.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


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


def _same_as_local(ray_out: Path, src: Path, tmp_path: Path) -> None:
    from llmkit.embed.job import embed_file

    local = embed_file(src, tmp_path / "local.parquet")
    lt, lv = _vectors(tmp_path / "local.parquet")
    rt, rv = _vectors(ray_out)
    assert rt.column("id").to_pylist() == lt.column("id").to_pylist()
    assert rt.column("text").to_pylist() == lt.column("text").to_pylist()
    assert rt.column("text_hash").to_pylist() == lt.column("text_hash").to_pylist()
    cos = (rv * lv).sum(1)
    assert cos.min() >= 0.99999, cos.min()
    assert local.rows == len(rt)


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
    assert summary["encoded"] == 299  # the in-shard duplicate is encoded once
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
    src.write_text(
        "".join(
            f"row {i}: {['a cat sleeps', 'it rains', 'goal!', 'RAM'][i % 4]} {i * 7}\n" for i in range(2000)
        )
    )
    out = tmp_path / "r.parquet"
    args = (str(src), "-o", str(out), "--ray", cluster, "--workers", "2", "--commit-every", "100")
    job = _embed(*args)
    work = tmp_path / ".r.parquet.llmkit-job"
    deadline = time.time() + 600
    while len(list(work.glob("part-*.json"))) < 4:
        assert job.poll() is None, job.communicate()[1][-3000:]
        assert time.time() < deadline
        time.sleep(0.5)
    job.kill()  # SIGKILL the driver half-way
    job.wait()
    written = len(list(work.glob("part-*.json")))
    assert 4 <= written < 20 and not out.exists()
    job = _embed(*args)
    stdout, stderr = job.communicate(timeout=600)
    assert job.returncode == 0, stderr[-3000:]
    summary = json.loads(stdout)
    assert summary["rows"] == 2000 and summary["resumed_rows"] >= 400, summary
    _same_as_local(out, src, tmp_path)
