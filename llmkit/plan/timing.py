"""Time: FLOPs per token and the device's FLOP/s (measured here, or a table for a GPU elsewhere)."""

from __future__ import annotations

import time

from llmkit.errors import InvalidArgument
from llmkit.plan.params import _dims

# What a training step achieves of the device's measured matmul FLOP/s: the matmuls themselves
# run at about that rate, the rest (norms, activations, attention softmax, optimizer, Python)
# does not. Measured with SmolLM2-135M, llmkit's CPU path: see docs/train.md. --probe replaces it.
EFFICIENCY = {"cpu": 0.50, "cuda": 0.40, "mps": 0.30}
# bf16 on CPU reaches a smaller share of its (higher) matmul peak: the elementwise work and the
# fp32 residual stream stay at fp32 speed. Measured MFU, SmolLM2-135M, AMD EPYC AVX512-BF16:
# fp32 0.49, bf16 0.31 (bench/train_throughput.py).
CPU_BF16_EFFICIENCY = 0.30
# Dense bf16 tensor-core peak (TFLOP/s) of GPUs users name, for `--device cuda` on a machine
# without that GPU. With the GPU present, a matmul is measured instead.
GPU_PEAK_TFLOPS = {
    "H200": 989,
    "H100": 989,
    "A100": 312,
    "RTX 6000 Ada": 364,
    "L40S": 362,
    "L40": 181,
    "RTX 4090": 165,
    "A10": 125,
    "A6000": 155,
    "V100": 125,
    "T4": 65,
}
DEFAULT_GPU_TFLOPS = 150  # an unknown GPU: a mid-range card


def flops_per_token(counts, tc, layout, *, train_base: bool = False) -> float:
    """FLOPs per (padded) token of one training step.

    A matmul with N weights costs 2N per token forward. Backward computes the gradient of the
    input (2N) and, only for trained weights, of the weight (2N): 4N for LoRA on a frozen base,
    6N when the base trains. The output layer runs on label tokens only (label share s).
    Attention (no weights): QK^T and AV forward are 2 x 2 ctx nh d per token, ctx = the mean
    causal context (half the mean row width); backward doubles it.
    """
    dm = _dims(tc)
    k = 6 if train_base else 4
    body = counts["body_active"]
    share = layout["labels_per_epoch"] / max(1, layout["tokens_per_epoch"])
    head = counts["head"] * share
    ctx = layout["mean_width"] / 2
    attn = 3 * 4 * ctx * dm["nh"] * dm["d"] * dm["L"]
    lora = 6 * counts["lora"]
    return float(k * (body + head) + attn + lora)


def trained_token_flops(counts, tc, examples) -> float:
    """FLOPs per real (non-padding) token of a run's data: `flops_per_token` with the data's own
    answer share and attention context (each sequence attends within itself: sum L^2 / sum L)."""
    lengths = [n for e in examples for n in e.lengths]
    tokens = max(1, sum(lengths))
    layout = {
        "labels_per_epoch": sum(e.n_labels for e in examples),
        "tokens_per_epoch": tokens,
        "mean_width": sum(n * n for n in lengths) / tokens,
    }
    return flops_per_token(counts, tc, layout)


def device_flops(device: str, act: str, tc, here: bool, name: str) -> tuple[float, str]:
    """Achievable matmul FLOP/s at the training precision: measured here when the device is here."""
    if not here:
        if device == "cpu":
            return 1e11, "nominal 0.1 TFLOP/s (not measured)"
        if device == "cuda":
            return _gpu_table(
                name
            ) * 1e12, "table (dense bf16 peak of a mid-range GPU; run on the GPU to measure)"
        raise InvalidArgument(f"cannot time {device} from this machine", "run `llmkit plan` on that machine")
    import torch

    dm = _dims(tc)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(act, torch.float32)
    dev = torch.device(device)
    m = 512 if device == "cpu" else 8192
    k, n = max(64, dm["h"]), max(64, dm["i"])
    if device != "cpu":
        k, n = max(k, 4096), max(n, 4096)
    a = torch.randn(m, k, dtype=dtype, device=dev)
    b = torch.randn(k, n, dtype=dtype, device=dev)
    sync = {"cuda": torch.cuda.synchronize, "mps": torch.mps.synchronize}.get(device, lambda: None)
    a @ b
    sync()
    best, deadline = 0.0, time.perf_counter() + 0.5
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(3):
            a @ b
        sync()
        best = max(best, 3 * 2 * m * k * n / (time.perf_counter() - start))
    return best, f"measured: {m}x{k}x{n} {act} matmul"


def _gpu_table(name: str) -> float:
    for key, tflops in GPU_PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return tflops
    return DEFAULT_GPU_TFLOPS
