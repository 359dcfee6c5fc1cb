"""The exported paths' batch budget (padded tokens per inference call): sentences/s for each size.

    python bench/embed_batch_tokens.py [--n 1500] [--rounds 3] [--sizes 256 512 1024 2048 4096]

The ONNX Runtime and OpenVINO encoders sort texts by length and cut batches of at most
`batch_tokens` padded tokens. Bigger batches amortise per-call overhead; smaller ones keep the
activations in cache. This sweeps the budget on the same corpus as bench/embed_throughput.py
(mixed lengths), interleaving sizes round by round (best of the rounds kept), for ONNX fp32,
OpenVINO fp32 and, where the CPU has native bf16, OpenVINO bf16.
Writes bench/results/embed_batch_tokens.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import time
from pathlib import Path

from embed_throughput import sentences

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "embed_batch_tokens.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    args = ap.parse_args()

    from llmkit.devices import cpu_kernel_flags, cpu_name, cpu_native_bf16
    from llmkit.embedding.encoders import load_encoder
    from llmkit.embedding.onnx import OnnxEncoder

    print(f"CPU: {cpu_name()}; kernel flags: {' '.join(cpu_kernel_flags())}", flush=True)
    texts = sentences(args.n)
    paths = [("onnx", "fp32")]
    if importlib.util.find_spec("openvino"):
        paths.append(("openvino", "fp32"))
        if cpu_native_bf16():
            paths.append(("openvino", "bf16"))
    table: dict[str, dict[int, float]] = {}
    for backend, precision in paths:
        encoder = load_encoder(backend=backend, precision=precision)
        encoder.encode(texts[:64])  # warm-up
        best = dict.fromkeys(args.sizes, 0.0)
        for _ in range(args.rounds):
            for size in args.sizes:
                encoder.batch_tokens = size
                start = time.perf_counter()
                encoder.encode(texts)
                best[size] = max(best[size], len(texts) / (time.perf_counter() - start))
        name = f"{backend} {precision}"
        table[name] = {k: round(v, 1) for k, v in best.items()}
        default = inspect.signature(OnnxEncoder).parameters["batch_tokens"].default
        top = max(best.values())
        print(
            f"{name}: "
            + ", ".join(f"{k}: {v:.0f}" for k, v in best.items())
            + f" sentences/s; default {default} = {best.get(default, float('nan')) / top:.2f} of the best",
            flush=True,
        )
    result = {
        "cpu": cpu_name(),
        "kernel_flags": cpu_kernel_flags(),
        "sentences": args.n,
        "rounds": args.rounds,
    }
    RESULTS.write_text(json.dumps(result | {"sentences_per_s": table}, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
