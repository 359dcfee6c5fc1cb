"""One Mixture-of-Experts layer's experts on CPU, forward + backward: llmkit's padded grouped
matmul (llmkit/experts.py) vs transformers' grouped_mm, in bf16 and fp32, side by side.

    python bench/moe_experts.py [--tokens 900] [--calls 40] [--threads 2]
    ONEDNN_PRIMITIVE_CACHE_CAPACITY=16 python bench/moe_experts.py      (as a whole run sees it)

Shapes of bench/train_throughput.py's moe-small (Qwen3-MoE body: width 512, 8 experts of width
512, 2 per token); a pass of --tokens tokens, routed at random anew for every call, as training
routes each new batch. Gradients flow to the input and to the expert weights (training's LoRA
on the experts is an update of those weights, W + BA, so their gradient is computed). Each call's time is measured; the first 5 are
warm-up. Prints the medians and the ratios; writes bench/results/moe_experts.json, keyed by CPU
and oneDNN's kernel cache size.

Alone, the layer's unpadded group sizes soon repeat (a few hundred row counts), and oneDNN's cache
(1024 kernels) holds them all. In a training run the dense layers' pass lengths and every MoE
layer's sizes compete for it, and the experts' kernels are built again and again: a cache of 16
shows that case.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "moe_experts.json"


def experts_layer(dtype):
    import torch
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    cfg = Qwen3MoeConfig(hidden_size=512, moe_intermediate_size=512, num_experts=8, num_experts_per_tok=2)
    cfg._experts_implementation = "grouped_mm"
    layer = Qwen3MoeExperts(cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.02)
    return layer.to(dtype)


def time_calls(forward, layer, tokens: int, calls: int, dtype) -> list[float]:
    import torch

    g = torch.Generator().manual_seed(1)
    times = []
    for _ in range(calls):
        hidden = torch.randn(tokens, 512, generator=g).to(dtype).requires_grad_()
        logits = torch.randn(tokens, 8, generator=g)
        weights, index = torch.topk(torch.softmax(logits, -1), 2, dim=-1)
        start = time.perf_counter()
        out = forward(layer, hidden, index, weights.to(dtype))
        out.float().sum().backward()
        times.append(time.perf_counter() - start)
    return times[5:]


def main() -> None:
    import torch
    from transformers.integrations.moe import grouped_mm_experts_forward

    from llmkit.devices import cpu_name
    from llmkit.experts import padded_experts_forward

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokens", type=int, default=900)
    p.add_argument("--calls", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ways = {"transformers grouped_mm": grouped_mm_experts_forward, "llmkit padded": padded_experts_forward}
    medians = {}
    for dtype in (torch.bfloat16, torch.float32):
        layer = experts_layer(dtype)
        name = str(dtype).removeprefix("torch.")
        rounds = {way: [] for way in ways}
        for _ in range(2):  # A B A B: both see the same machine state
            for way, forward in ways.items():
                rounds[way] += time_calls(forward, layer, args.tokens, args.calls, dtype)
        for way, times in rounds.items():
            medians[f"{way}, {name}"] = statistics.median(times) * 1e3
            print(f"{way:>24}, {name:>8}: {medians[f'{way}, {name}']:7.2f} ms (median of {len(times)})")
    ratios = {
        "padded vs grouped_mm, bf16": medians["transformers grouped_mm, bfloat16"]
        / medians["llmkit padded, bfloat16"],
        "padded vs grouped_mm, fp32": medians["transformers grouped_mm, float32"]
        / medians["llmkit padded, float32"],
        "padded bf16 vs grouped_mm fp32": medians["transformers grouped_mm, float32"]
        / medians["llmkit padded, bfloat16"],
    }
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    cpu = cpu_name() or "unknown CPU"
    report = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    cache = os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "1024 (default)")
    report[f"{cpu}, {args.threads} threads, oneDNN cache {cache}"] = {
        "date": time.strftime("%Y-%m-%d"),
        "tokens": args.tokens,
        "torch": torch.__version__,
        "median_ms": {k: round(v, 3) for k, v in medians.items()},
        "speedup": {k: round(v, 3) for k, v in ratios.items()},
    }
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
