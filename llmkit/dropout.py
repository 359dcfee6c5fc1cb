"""LoRA dropout on CPU, drawn as the positions it drops rather than a mask over every element.

torch draws dropout masks on CPU with a Mersenne Twister, one thread, one number per element:
on 2 cores that was 20 % of a SmolLM2-135M LoRA step (210 masks per pass, 6 ms each). Dropping
each element with probability p is the same as leaving geometric gaps between dropped elements,
so only the drops are drawn (p n draws, not n), by NumPy's PCG64, and applied by zeroing those
positions; the fused LoRA layers keep the positions for backward rather than a dropped copy of
their input (peak RSS -9 % on SmolLM2; docs/train.md, "Training fast on a CPU").
"""

from __future__ import annotations

import math

import numpy as np
import torch


class _Dropout(torch.autograd.Function):
    """x with the `dropped` positions zeroed, times 1 / (1 - p); keeps only the positions."""

    @staticmethod
    def forward(ctx, x, dropped, scale: float):
        ctx.save_for_backward(dropped)
        ctx.scale = scale
        return zero_at(x, dropped).mul_(scale)

    @staticmethod
    def backward(ctx, grad):
        (dropped,) = ctx.saved_tensors
        return zero_at(grad, dropped).mul_(ctx.scale), None, None


def zero_at(x, dropped, *, inplace: bool = False):
    """x (a contiguous copy unless `inplace`) with the flat positions `dropped` set to 0."""
    if inplace and not x.is_contiguous():
        raise ValueError("zero_at(inplace=True) needs a contiguous tensor")
    out = x if inplace else x.clone(memory_format=torch.contiguous_format)
    out.view(-1)[dropped] = 0  # index_put_: 0.09 ms for 27k of 534k elements; index_fill_ 0.24 ms
    return out


class FastDropout(torch.nn.Module):
    """Dropout with torch's semantics and distribution, its draws made by NumPy on CPU.

    Each call takes one 62-bit seed from torch's own generator and draws from NumPy's PCG64 with
    it: torch's RNG state stays the only state, so a resumed run (which restores it) and gradient
    checkpointing's recompute (which replays it) drop the same elements."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or not 0 < self.p < 1 or x.device.type != "cpu":
            return torch.nn.functional.dropout(x, self.p, self.training)
        return _Dropout.apply(x, self.dropped(x), 1.0 / (1.0 - self.p))

    def dropped(self, x):
        """The flat positions (int64, ascending) of the elements of `x` a training call drops:
        each one independently with probability p. The gaps between drops are geometric, so
        floor(log(1 - u) / log(1 - p)) kept elements come before each drop, u uniform in [0, 1)."""
        seed = int(torch.randint(0, 2**62, (1,)))
        rng = np.random.Generator(np.random.PCG64(seed))
        n, p, per_log = x.numel(), self.p, 1.0 / math.log1p(-self.p)
        parts, last = [], -1  # the last drop drawn so far
        while last < n:  # one round but about once in 10^15: a round covers the mean + 8 sigma
            left = n - 1 - last
            k = int(left * p + 8 * math.sqrt(left * p * (1 - p)) + 16)
            u = rng.random(k)  # then in place: a fresh array per pass costs a tenth of the draw each
            np.negative(u, out=u)
            np.log1p(u, out=u)
            u *= per_log  # >= 0, so the cast to int64 is the floor
            # the positions: gaps + 1, summed up (torch's int64 cumsum runs 6x faster than NumPy's)
            pos = torch.from_numpy(u).to(torch.int64).add_(1).cumsum_(0).add_(last)
            parts.append(pos[: int(torch.searchsorted(pos, n))])
            last = int(pos[-1])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_fast_dropout(peft_model) -> int:
    """Swap every LoRA dropout for FastDropout (the same p); returns how many were swapped."""
    n = 0
    for module in peft_model.modules():
        drops = getattr(module, "lora_dropout", None)
        if isinstance(drops, torch.nn.ModuleDict):
            for name, drop in drops.items():
                if isinstance(drop, torch.nn.Dropout) and drop.p > 0:
                    drops[name] = FastDropout(drop.p)
                    n += 1
    return n
