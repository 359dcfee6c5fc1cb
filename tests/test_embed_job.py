"""The batch job as a real process: resumable after SIGKILL, flat memory on a 200k-line file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "llmkit", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "2"},
    )


@pytest.mark.slow
def test_sigkilled_job_resumes_with_one_row_per_input_row_in_order(tmp_path):
    src = tmp_path / "in.txt"
    lines = [f"sentence {i} about {['cats', 'rain', 'football', 'laptops'][i % 4]}" for i in range(1500)]
    lines[700] = lines[3]  # a duplicate across chunks
    src.write_text("\n".join(lines) + "\n")
    out = tmp_path / "v.parquet"
    work = tmp_path / ".v.parquet.llmkit-job"
    args = ("embed", str(src), "-o", str(out), "--commit-every", "100")

    proc = _spawn(*args)
    deadline = time.time() + 120
    while len(list(work.glob("part-*.json"))) < 3:  # let it commit a few chunks, then kill it mid-way
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline, "the job committed nothing in 120 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = len(list(work.glob("part-*.json")))
    assert not out.exists() and 3 <= committed < 15

    proc = _spawn(*args, "--json")
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    summary = json.loads(stdout)
    assert "Resuming" in stderr and summary["resumed_rows"] >= 300 and summary["rows"] == 1500
    table = pq.read_table(out)
    assert table.column("id").to_pylist() == list(range(1500))
    assert table.column("text").to_pylist() == lines
    assert not work.exists()


_RSS_SCRIPT = """
import resource, sys
from llmkit.embedding.job import embed_file
embed_file(sys.argv[1], sys.argv[2], commit_every=2048)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss_kb(src, out) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(src), str(out)],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "2", "LLMKIT_QUIET": "1"},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.slow
def test_memory_stays_flat_with_the_number_of_rows(tmp_path):
    # 500 distinct phrases repeated: the encoder sees each once, so this measures the streaming
    # pipeline (reading, hashing, parts, merge) rather than the model's speed.
    phrases = [f"phrase number {i} of the flat memory test" for i in range(500)]
    for n in (20_000, 200_000):
        with open(tmp_path / f"in{n}.txt", "w") as fh:
            for i in range(n):
                fh.write(phrases[(i * 7919) % 500] + "\n")
    small = _peak_rss_kb(tmp_path / "in20000.txt", tmp_path / "v20000.parquet")
    large = _peak_rss_kb(tmp_path / "in200000.txt", tmp_path / "v200000.parquet")
    print(f"peak RSS: 20k rows {small / 1024:.0f} MB, 200k rows {large / 1024:.0f} MB")
    assert pq.ParquetFile(tmp_path / "v200000.parquet").metadata.num_rows == 200_000
    assert large - small < 40 * 1024, (small, large)  # 10x the rows, not 10x the memory
