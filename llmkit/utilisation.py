"""Model FLOPs utilisation (MFU) of a training run: the model's FLOPs per trained token times
tokens per second, over what this machine's matmuls reach in the run's precision.

FLOPs per token are `llmkit plan`'s count (4 N for LoRA on a frozen base, the output layer on
answer tokens, attention within each sequence, LoRA's own), taken from the live model and the
run's own data; DPO adds the reference's forward pass (half as much again). The peak is a
matmul of the model's own shapes timed at start (0.5 s): on a CPU it is what the cores reach
now, with their thread count and their bf16 or fp32 units, not a datasheet figure. GRPO's steps
are mostly sampling, token by token, which MFU does not measure: it has none.
"""

from __future__ import annotations

from llmkit.plan.config import _text_config
from llmkit.plan.params import trained_counts
from llmkit.plan.timing import device_flops, trained_token_flops

EXTRA_WORK = {"dpo": 1.5}  # the reference pass: a forward (2 N) on top of LoRA's 4 N


class Utilisation:
    """`of(tokens_per_s)` → MFU, a fraction; `figures()` for run.json."""

    def __init__(self, model, method: str, examples, device: str, precision: str, processes: int = 1):
        tc = _text_config(model.get_base_model().config)
        self.flops_per_token = trained_token_flops(trained_counts(model), tc, examples) * EXTRA_WORK.get(
            method, 1.0
        )
        act = precision if precision in ("bf16", "fp16") else "fp32"
        one, self.source = device_flops(device, act, tc, True, device)
        self.peak = one * processes  # each process measured its own share at the same moment

    def of(self, tokens_per_s: float) -> float:
        return self.flops_per_token * tokens_per_s / self.peak

    def figures(self, tokens_per_s: float) -> dict:
        return {
            "mfu": round(self.of(tokens_per_s), 4),
            "flops_per_token": round(self.flops_per_token),
            "peak_flops": round(self.peak),
            "peak_source": self.source,
        }
