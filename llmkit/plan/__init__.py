"""Will this recipe fit, and how long will it take? Answered before any weights load.

    llmkit plan RECIPE [a.b=value ...] [--device cpu|cuda|mps] [--memory 24GB] [--json] [--probe]
    llmkit.plan.plan(recipe, overrides, device=..., memory=..., probe=...)

From the model's config alone (the Hub cache, a local dir, a built-in tiny model, or the
metadata of a GGUF file) a model is built on the `meta` device: exact parameter counts and the
exact LoRA targets the training run will use, without a byte of weights. The data is tokenized
and laid out into optimizer steps and forward passes exactly as `llmkit train` does, so the
largest pass, the tokens per epoch and the answer-token share are the run's own.

The formulas (docs/train.md, "Planning a run"):
  peak     = weights + LoRA (params + grads + 2 AdamW moments, fp32) + activations of the largest pass
             + loss buffers (the output layer on that pass's label tokens) + overhead
  time     = padded tokens x FLOPs per token / (device FLOP/s x efficiency)
  FLOPs/t  = 4 N_body (+ 2 N_body when the base trains) + attention + the output layer on labels
The device FLOP/s is measured here at run time (a matmul the size of the model's MLP), never a
table number for a CPU; `probe=True` times 10 real training steps instead.
"""

from __future__ import annotations

from llmkit.errors import DoesNotFit
from llmkit.plan.advice import advise
from llmkit.plan.config import model_config
from llmkit.plan.memory import (
    ALLOCATOR_SLACK,
    CPU_WORKING_SET,
    CUDA_CONTEXT,
    DTYPE_BYTES,
    GiB,
    MiB,
    activation_bytes_per_token,
    disk_model,
    loss_bytes_per_label,
    memory_model,
)
from llmkit.plan.oom import oom_guard
from llmkit.plan.params import count_parameters
from llmkit.plan.predict import check, plan
from llmkit.plan.probe import probe_rate, run_probe
from llmkit.plan.render import render
from llmkit.plan.result import Memory, PlanResult
from llmkit.plan.timing import DEFAULT_GPU_TFLOPS, EFFICIENCY, GPU_PEAK_TFLOPS, device_flops, flops_per_token

__all__ = [
    "ALLOCATOR_SLACK",
    "CPU_WORKING_SET",
    "CUDA_CONTEXT",
    "DEFAULT_GPU_TFLOPS",
    "DTYPE_BYTES",
    "EFFICIENCY",
    "GPU_PEAK_TFLOPS",
    "DoesNotFit",
    "GiB",
    "Memory",
    "MiB",
    "PlanResult",
    "activation_bytes_per_token",
    "advise",
    "check",
    "count_parameters",
    "device_flops",
    "disk_model",
    "flops_per_token",
    "loss_bytes_per_label",
    "memory_model",
    "model_config",
    "oom_guard",
    "plan",
    "probe_rate",
    "render",
    "run_probe",
]
