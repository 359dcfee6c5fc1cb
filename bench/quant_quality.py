"""Quality of every GGUF type llmkit writes, measured in llama.cpp against transformers.

For each model (SmolLM2-135M-Instruct; Gemma 3 270M when its packages are installed) and each
type, the file is written by `llmkit.exporter.gguf.write_gguf` (K-quants by llama.cpp's own
quantizer), loaded in llama.cpp, and compared with the HF model on the verify probes: top-1
agreement and mean KL divergence. The --verify thresholds in llmkit/exporter/verify.py are set
from these figures with a margin.

    .venv/bin/python bench/quant_quality.py          # writes bench/results/quant_quality.json
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "quant_quality.json"
TYPES = [
    "f16",
    "bf16",
    "q8_0",
    "q6_k",
    "q5_k_m",
    "q5_0",
    "q5_k_s",
    "q4_k_m",
    "q4_k_s",
    "q4_1",
    "q4_0",
    "q3_k_m",
    "q2_k",
]


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def models() -> dict[str, Path]:
    from llmkit.sources import resolve

    out = {"smollm2-135m-instruct": resolve("smollm2-135m-instruct")}
    gemma = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if gemma and gemma.exists():
        out["gemma-3-270m"] = resolve(str(gemma))
    return out


def main() -> None:
    from llmkit.exporter.gguf import write_gguf
    from llmkit.exporter.verify import verify

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model, model_dir in models().items():
            for t in TYPES:
                start = time.perf_counter()
                written = write_gguf(model_dir, Path(tmp) / f"{model}-{t}.gguf", t)
                seconds = time.perf_counter() - start
                report = verify(written.path, model_dir, t)
                rows.append(
                    {
                        "model": model,
                        "type": t,
                        "top1": round(report.top1, 4),
                        "mean_kl": round(report.mean_kl, 5),
                        "size_mb": round(written.size / 2**20, 1),
                        "write_s": round(seconds, 1),
                        "min_top1": report.threshold,
                        "max_kl": report.max_kl,
                        "passed": report.passed,
                    }
                )
                print(
                    f"{model:24} {t:7} top-1 {report.top1:6.1%}  mean KL {report.mean_kl:.4f}  "
                    f"{written.size / 2**20:6.1f} MB  threshold {report.threshold:.0%}  {'ok' if report.passed else 'FAIL'}",
                    flush=True,
                )
                written.path.unlink()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"cpu": cpu_name(), "rows": rows}, indent=2) + "\n")
    print(f"CPU: {cpu_name()}; wrote {RESULTS}")


if __name__ == "__main__":
    main()
