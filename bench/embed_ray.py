"""The embedding job locally vs on a Ray cluster with 1 and 2 workers, on this machine.

    python bench/embed_ray.py [--n 3000]

Each run is a real `llmkit embed` process on the same mixed-length sentences (bench/embed_throughput.py's
generator), measured end to end (rows/s, excluding nothing: reading, encoding, writing, merging). The
Ray runs go to a cluster started here on loopback (`ray start --head --num-cpus 2`); peak RSS of each
encoder actor is sampled while it runs. Order: local, ray-1, ray-2, local, ray-1, ray-2 (best kept).
Writes bench/results/embed_ray.json.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
RESULTS = ROOT / "bench" / "results" / "embed_ray.json"
BIN = Path(sys.executable).parent
LOAD_BEFORE = round(os.getloadavg()[0], 2)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sample_workers(stop: threading.Event, peaks: dict) -> None:
    import psutil

    while not stop.is_set():
        for p in psutil.process_iter(["cmdline", "memory_info"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if "MapWorker" in cmd and p.info["memory_info"]:
                peaks[p.pid] = max(peaks.get(p.pid, 0), p.info["memory_info"].rss)
        time.sleep(0.5)


def run(src: Path, out: Path, env: dict, *extra: str) -> dict:
    peaks: dict = {}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_workers, args=(stop, peaks), daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "llmkit", "embed", str(src), "-o", str(out), "--json", *extra],
        capture_output=True,
        text=True,
        env=env,
    )
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    summary = json.loads(done.stdout)
    out.unlink()
    return {
        "rows_per_s_end_to_end": round(summary["rows"] / wall, 1),
        "wall_s": round(wall, 1),
        "path": f"{summary['backend']}/{summary['precision']}",
        "worker_peak_rss_mb": sorted(round(v / 2**20) for v in peaks.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from embed_throughput import sentences

    from llmkit.devices import cpu_kernel_flags, cpu_name

    print(f"CPU: {cpu_name()}; kernel flags: {' '.join(cpu_kernel_flags())}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="/tmp/erb"))
    src = tmp / "in.txt"
    src.write_text("\n".join(sentences(args.n)) + "\n")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "LLMKIT_QUIET": "1"}
    env.setdefault("LLMKIT_HOME", str(ROOT / ".llmkit-home"))
    subprocess.run(
        [sys.executable, "-c", "from llmkit.embedding import load_encoder as l; l()"], env=env, check=True
    )
    address = f"127.0.0.1:{_port()}"
    head = subprocess.Popen(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={address[10:]}",
        ]
        + ["--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={tmp / 'r'}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        while subprocess.run(
            [str(BIN / "ray"), "status", f"--address={address}"], env=env, capture_output=True
        ).returncode:
            time.sleep(2)
        configs = {
            "local (llmkit embed)": (),
            "ray, 1 worker": ("--ray", address, "--workers", "1"),
            "ray, 2 workers": ("--ray", address, "--workers", "2"),
        }
        results: dict = {}
        for _ in range(args.rounds):
            for name, extra in configs.items():
                r = run(src, tmp / "out.parquet", env, "--commit-every", "500", *extra)
                print(f"{name}: {r}", flush=True)
                if name not in results or r["rows_per_s_end_to_end"] > results[name]["rows_per_s_end_to_end"]:
                    results[name] = r
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(60)
    base = results["local (llmkit embed)"]["rows_per_s_end_to_end"]
    for r in results.values():
        r["ratio_vs_local"] = round(r["rows_per_s_end_to_end"] / base, 2)
    result = {
        "rows": args.n,
        "machine": {
            "cpu": cpu_name(),
            "kernel_flags": cpu_kernel_flags(),
            "cores": os.cpu_count(),
            "load_average_before": LOAD_BEFORE,  # 1-minute load when the bench started: others' work
        },
        "runs": results,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
