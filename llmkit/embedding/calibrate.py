"""Choose an encoder path by measurement on this machine: once per model, CPU and GPU, then cached.

Which path is fastest, and which lossy path keeps its quality, depends on the CPU (AVX2 vs
AVX-512 VNNI vs AMX change both the speed and the rounding of int8/bf16 kernels). So at first
use of a model every candidate path encodes the same short calibration batch, interleaved
(A B C A B C, best of the rounds), and its vectors are compared with the sentence-transformers
fp32 reference. Two contracts decide:

  exact  (precision auto): the fastest path with mean cosine ≥ 0.9999 to the reference.
  fast   (precision fast): the fastest path with mean ≥ 0.999 and min ≥ 0.99, checked here with
         a margin (min ≥ 0.995 on texts that include the hard cases: empty, one word, truncated)
         so that unseen texts keep the contract. A lossy path must also beat the exact choice by
         10 %; otherwise, or when no lossy path keeps the contract here, fast = exact, with a note.

The table is cached in LLMKIT_HOME/embed/calibration/, keyed by model weights, CPU signature and
library versions; delete the file to measure again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import importlib.util
import json
import random
import time
from pathlib import Path

from llmkit.embedding.vectors import cosine_rows
from llmkit.errors import first_line

CALIBRATION_VERSION = "2"  # 2: batch budget 1024 (the speeds measured under 4096 are stale)
EXACT_MEAN = 0.9999
FAST_MEAN = 0.999
FAST_MIN_CHECKED = 0.995  # the fast contract's min is 0.99; this is the margin calibration demands
FAST_MIN_GAIN = 1.10  # a lossy path must be this much faster than the exact choice
ROUNDS = 2

_HARD = [
    "",
    "ok",
    "?",
    "42",
    "Hello!",
    "naïve café résumé — déjà vu",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "東京は日本の首都です。",
    "def f(x): return x ** 2  # square",
    "https://example.com/path?q=1&r=2",
    "ERROR 500: upstream timed out after 30s (retry 3/3)",
    "A man is eating food.",
    "The girl is carrying a baby.",
    "Heavy rain is expected tomorrow in the north.",
    "Whisk the eggs with sugar until pale and fluffy.",
    "The striker scored twice in the second half.",
    "My laptop battery drains quickly when Bluetooth is on.",
    "Interest rates rose for the third month in a row.",
]
_WORDS = (  # noqa: SIM905 - a word pool reads better as prose
    "the a of to and in is was for on with as by at from this that model data time water city music "
    "battery oven league storm market protein river engine recipe player forecast server kernel "
    "garden history planet signal memory bread coach cloud wind price student theory camera road "
    "quickly slowly bright heavy quiet ancient modern simple complex warm cold early late"
).split()


def calibration_texts() -> list[str]:
    """64 texts: the hard cases plus mixed lengths like real corpora (two past 256 tokens)."""
    rnd = random.Random(0)
    out = list(_HARD)
    for length in [6] * 18 + [14] * 12 + [40] * 8 + [120] * 4 + [320] * 2:
        words = [rnd.choice(_WORDS) for _ in range(rnd.randint(length // 2 + 1, length))]
        out.append(" ".join(words).capitalize() + ".")
    return out


def candidates() -> list[tuple[str, str]]:
    """The (backend, precision) paths worth measuring on this machine."""
    from llmkit.devices import cpu_native_bf16

    out = [("torch", "fp32"), ("onnx", "fp32"), ("onnx", "int8")]
    native_bf16 = cpu_native_bf16()
    if native_bf16:  # emulated bf16 is slower than fp32: not worth the time to measure
        out.append(("torch", "bf16"))
    if importlib.util.find_spec("openvino") is not None:
        out.append(("openvino", "fp32"))
        if native_bf16:
            out.append(("openvino", "bf16"))
    from llmkit.devices import accelerator

    gpu = accelerator()
    if gpu:  # sentence-transformers on the GPU, measured against the same CPU fp32 reference
        out += [(gpu, "fp32"), (gpu, "fp16")]
    return out


def _versions() -> dict:
    out = {}
    for dist in ("torch", "onnxruntime", "openvino", "sentence-transformers"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            out[dist] = None
    return out


def cache_path(model_key: str) -> Path:
    from llmkit.devices import accelerator_name, cpu_signature
    from llmkit.embedding.base import threads
    from llmkit.files import home

    sig = json.dumps([CALIBRATION_VERSION, cpu_signature(), accelerator_name(), _versions(), threads()])
    digest = hashlib.sha256(sig.encode()).hexdigest()[:12]
    return home() / "embed" / "calibration" / f"{model_key}-{digest}.json"


def cached(model_key: str) -> dict | None:
    path = cache_path(model_key)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def measure(model_id: str, model_key: str, build) -> dict:
    """Time every candidate on the calibration texts and compare with the fp32 reference.

    `build(backend, precision)` returns an encoder. Cached; a failing candidate is recorded
    with its error and never chosen."""
    table = cached(model_key)
    if table is not None:
        return table
    from llmkit.devices import cpu_kernel_flags, cpu_name
    from llmkit.files import write_json
    from llmkit.ui import info

    info(f"Measuring embedding paths for {model_id} on this CPU (once; cached)")
    texts = calibration_texts()
    rows: dict[str, dict] = {}
    encoders = {}
    for backend, precision in candidates():
        key = f"{backend}/{precision}"
        try:
            enc = build(backend, precision)
            enc.encode(texts[:8])  # warm-up: first-call allocations, lazy init
            encoders[key] = enc
        except Exception as exc:  # a path that cannot run here is not a choice, not a failure
            rows[key] = {"backend": backend, "precision": precision, "error": error_line(exc)}
    vectors, times = timed_rounds(encoders, lambda enc: enc.encode(texts))
    ref = vectors["torch/fp32"]
    ref_s = min(times["torch/fp32"])
    for key, enc in encoders.items():
        vec = vectors[key]
        cos = cosine_rows(vec, ref)
        rows[key] = {
            "backend": enc.backend,
            "precision": enc.precision,
            "seconds": round(min(times[key]), 4),
            "speedup": round(ref_s / min(times[key]), 3),
            "cos_mean": round(float(cos.mean()), 6),
            "cos_min": round(float(cos.min()), 6),
        }
    table = {
        "model": model_id,
        "cpu": cpu_name(),
        "cpu_flags": cpu_kernel_flags(),
        "versions": _versions(),
        "texts": len(texts),
        "rounds": ROUNDS,
        "reference": "torch/fp32 (sentence-transformers encode)",
        "paths": rows,
    }
    path = cache_path(model_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, table)
    return table


def timed_rounds(encoders: dict, run, rounds: int = ROUNDS) -> tuple[dict, dict[str, list[float]]]:
    """Each encoder's last output and its times over `rounds` interleaved rounds: every path sees
    the same drift of a shared machine, so their ratios hold where single timings do not."""
    times: dict[str, list[float]] = {k: [] for k in encoders}
    vectors = {}
    for _ in range(rounds):
        for key, enc in encoders.items():
            t0 = time.perf_counter()
            vectors[key] = run(enc)
            times[key].append(time.perf_counter() - t0)
    return vectors, times


def choose(table: dict, contract: str) -> dict:
    """The path a contract picks from a measured table, with the reason in words and numbers."""
    paths = {k: r for k, r in table["paths"].items() if "error" not in r}
    exact = {k: r for k, r in paths.items() if r["cos_mean"] >= EXACT_MEAN}
    best_exact = max(exact, key=lambda k: exact[k]["speedup"])
    summary = ", ".join(
        f"{k} {r['speedup']}x cos {r['cos_mean']:.5f}/{r['cos_min']:.4f}"
        for k, r in sorted(paths.items(), key=lambda kv: -kv[1]["speedup"])
    )
    if contract == "exact":
        key = best_exact
        why = f"fastest path with mean cosine ≥ {EXACT_MEAN} to sentence-transformers fp32"
        note = None
    else:
        ok = {
            k: r
            for k, r in paths.items()
            if r["cos_mean"] >= FAST_MEAN and r["cos_min"] >= FAST_MIN_CHECKED and k not in exact
        }
        bar = exact[best_exact]["speedup"] * FAST_MIN_GAIN
        fast = {k: r for k, r in ok.items() if r["speedup"] >= bar}
        if fast:
            key = max(fast, key=lambda k: fast[k]["speedup"])
            why = f"fastest path with mean cosine ≥ {FAST_MEAN} and min ≥ {FAST_MIN_CHECKED} (checked)"
            note = None
        else:
            key = best_exact
            lossy = {k: r for k, r in paths.items() if k not in exact}
            why = (
                f"the exact path {key} ({exact[key]['speedup']}x) is the fast path here: no lossy path "
                f"kept mean ≥ {FAST_MEAN} and min ≥ {FAST_MIN_CHECKED} while beating it by 10 %"
            )
            note = f"fast = exact path {key} on this CPU" + (
                " ("
                + "; ".join(
                    f"{k} missed the fast contract or the speed bar: mean {r['cos_mean']:.4f}, "
                    f"min {r['cos_min']:.4f}, {r['speedup']}x"
                    for k, r in lossy.items()
                )
                + ")"
                if lossy
                else ""
            )
    r = paths[key]
    return {
        "contract": contract,
        "path": key,
        "backend": r["backend"],
        "precision": r["precision"],
        "speedup_vs_reference": r["speedup"],
        "cos_mean": r["cos_mean"],
        "cos_min": r["cos_min"],
        "why": why,
        "note": note,
        "measured": summary,
        "cpu": table["cpu"],
    }


def error_line(exc: Exception) -> str:
    return first_line(f"{type(exc).__name__}: {exc}")
