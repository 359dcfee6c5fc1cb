"""Benchmark: GGUF export of SmolLM2-135M-Instruct, llmkit vs llama.cpp's convert_hf_to_gguf.py.

Same HF dir, same machine, one run: wall time and peak RSS of each converter (each in a fresh
process), then both files are loaded in llama.cpp and compared with transformers (top-1
agreement, max |Δlogit|). llama.cpp's script is taken from the llama-cpp-python source
distribution that pip downloads here, at benchmark time (never copied into the repo); it needs
`sentencepiece` importable, which is installed into a scratch dir for the baseline only.

    .venv/bin/python bench/export.py      # writes bench/results/export.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"
TYPES = ("f16", "q8_0")
RESULTS = Path(__file__).resolve().parent / "results" / "export.json"

# Runs a command and reports its wall time and peak RSS (max over the child process tree).
MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
if r.returncode:
    sys.exit(r.stderr[-3000:])
print(wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


def baseline_tools(work: Path) -> tuple[Path, dict]:
    """llama.cpp's converter from the llama-cpp-python sdist, plus the env it needs."""
    sdist_dir = work / "sdist"
    py = sys.executable
    subprocess.run(
        [
            py,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
            "-d",
            str(sdist_dir),
        ],
        check=True,
    )
    tar = next(sdist_dir.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(tar) as tf:
        members = [
            m
            for m in tf.getmembers()
            if "/vendor/llama.cpp/" in m.name
            and (
                m.name.endswith("convert_hf_to_gguf.py") or "/conversion/" in m.name or "/gguf-py/" in m.name
            )
        ]
        tf.extractall(work, members=members, filter="data")
    root = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
    deps = work / "deps"
    subprocess.run([py, "-m", "pip", "install", "-q", "--target", str(deps), "sentencepiece"], check=True)
    env = {**os.environ, "PYTHONPATH": f"{root / 'gguf-py'}{os.pathsep}{deps}"}
    return root / "convert_hf_to_gguf.py", env


def measure(cmd: list[str], env: dict) -> tuple[float, int]:
    r = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, env=env)
    if r.returncode:
        raise SystemExit(f"{cmd[:3]} failed: {r.stderr[-2000:]}")
    wall, rss = r.stdout.split()
    return float(wall), int(rss)


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    from llmkit.export.verify import verify
    from llmkit.sources import resolve

    model_dir = resolve("smollm2-135m-instruct")
    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-export-"))
    script, base_env = baseline_tools(work)
    ours_env = {**os.environ}
    rows = []
    for out_type in TYPES:
        ours, theirs = work / f"llmkit-{out_type}.gguf", work / f"llama.cpp-{out_type}.gguf"
        code = f"from llmkit.export.gguf import write_gguf; write_gguf({str(model_dir)!r}, {str(ours)!r}, {out_type!r})"
        runs = {
            "llmkit": measure([sys.executable, "-c", code], {**ours_env, "LLMKIT_QUIET": "1"}),
            "convert_hf_to_gguf.py": measure(
                [
                    sys.executable,
                    str(script),
                    str(model_dir),
                    "--outtype",
                    out_type,
                    "--outfile",
                    str(theirs),
                ],
                base_env,
            ),
        }
        for tool, path in (("llmkit", ours), ("convert_hf_to_gguf.py", theirs)):
            report = verify(path, model_dir, out_type)
            wall, rss = runs[tool]
            rows.append(
                {
                    "type": out_type,
                    "tool": tool,
                    "wall_s": round(wall, 2),
                    "peak_rss_mib": round(rss / 2**20),
                    "size_mib": round(path.stat().st_size / 2**20, 1),
                    "top1": round(report.top1, 4),
                    "max_abs_logit_diff": round(report.max_abs_diff, 4),
                    "tokens_match": report.tokens_match,
                }
            )
            print(json.dumps(rows[-1]))
    for out_type in TYPES:
        ours, theirs = (
            next(r for r in rows if r["type"] == out_type and r["tool"] == t)
            for t in ("llmkit", "convert_hf_to_gguf.py")
        )
        print(
            f"{out_type}: time {ours['wall_s'] / theirs['wall_s']:.2f}x, peak RSS "
            f"{ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x, top-1 {ours['top1']:.3f} vs {theirs['top1']:.3f}"
        )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "model": "SmolLM2-135M-Instruct (embedded Q4_1 GGUF → HF f32 → GGUF)",
                "cpu_threads": 2,
                "llama_cpp_python": LLAMA_CPP_PYTHON,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
