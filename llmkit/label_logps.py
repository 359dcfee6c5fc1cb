"""The output layer and log-softmax of the label tokens as one autograd function (CPU).

`log_softmax` + `nll` over a 49k (Gemma: 262k) vocabulary writes several fp32 copies of the
logits: the cast, the log-softmax output it saves, the zeros and scatter of nll's backward, the
log-softmax backward and the cast of its result back to bf16. Here the logits are turned into
probabilities a block of rows at a time, so the fp32 work stays in cache, and the probabilities
overwrite the logits (the one [tokens, vocab] tensor kept for backward, in the matmul's dtype).
The backward pass is then one in-place multiply: d logp_t / d logits = onehot(t) - p, scaled by
the incoming gradient, with the target's own entry computed in fp32 from log p_t (1 - p_t in
bf16 would lose its digits when p_t is near 1). Measured on SmolLM2-135M bf16 (AMD EPYC, 2
threads): docs/train.md, "Training fast on a CPU".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLOCK = 32  # rows per block: 32 x 49152 fp32 is 6 MB, in cache
LOGIT_POST_PROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def plain_logits(cfg) -> bool:
    """Whether a model post-processes its logits (soft-capping, scaling): its output layer is
    then run by the model itself and the loss takes the plain path."""
    return any(getattr(cfg, a, None) not in (None, 1, 1.0) for a in LOGIT_POST_PROCESSING)


class _LabelLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, dtype):
        with torch.autocast(hidden.device.type, enabled=False):
            logits = F.linear(hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
        n = logits.shape[0]
        picked = logits.gather(1, targets[:, None]).squeeze(1).float()
        lse = torch.empty(n, dtype=torch.float32, device=logits.device)
        keep = hidden.requires_grad  # the probabilities are kept only for a backward pass
        # one fp32 block buffer for all blocks: a fresh 6 MB block each time costs its page faults
        # (3.9 ms a block, measured in a bf16 SmolLM2 run on an Intel Xeon; 0.2 ms reused)
        buf = (
            torch.empty(min(n, BLOCK), logits.shape[1], device=logits.device)
            if logits.dtype != torch.float32
            else None
        )
        for i in range(0, n, BLOCK):
            rows = logits[i : i + BLOCK]
            z = rows if buf is None else buf[: rows.shape[0]].copy_(rows)
            top = z.amax(-1, keepdim=True)
            total = z.sub_(top).exp_().sum(-1, keepdim=True)
            lse[i : i + BLOCK] = (top + total.log()).squeeze(1)
            if keep:  # p, in the logits' place (in fp32, z already is that place)
                z.div_(total)
                if z.dtype != logits.dtype:
                    logits[i : i + BLOCK] = z
        logp = picked - lse
        if keep:
            ctx.save_for_backward(weight, logits, targets, logp)
        ctx.dtype, ctx.hidden_dtype, ctx.used = dtype, hidden.dtype, False
        return logp

    @staticmethod
    def backward(ctx, grad):
        if ctx.used:  # the probabilities were turned into the gradient in place
            raise RuntimeError("llmkit's output layer cannot run backward twice (retain_graph)")
        ctx.used = True
        weight, probs, targets, logp = ctx.saved_tensors
        rows = torch.arange(probs.shape[0], device=probs.device)
        g = probs.mul_(grad.neg().to(probs.dtype)[:, None])  # -g * p everywhere ...
        g[rows, targets] = (grad * -torch.expm1(logp)).to(probs.dtype)  # ... g * (1 - p_t) at the target
        with torch.autocast(g.device.type, enabled=False):
            gh = g @ weight.to(ctx.dtype)
        return gh.to(ctx.hidden_dtype), None, None, None, None


def fuses(head) -> bool:
    """Whether `label_logps` runs `head` fused: a frozen plain Linear (a trained one, or one
    wrapped by LoRA, takes the plain cross-entropy). `llmkit plan` asks the same of its model."""
    return (
        isinstance(head, torch.nn.Linear)
        and not head.weight.requires_grad
        and (head.bias is None or not head.bias.requires_grad)
    )


def label_logps(head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) under `head` for each row of `hidden` (fp32): the same values as
    `-cross_entropy(head(hidden).float(), targets, reduction="none")`, with less memory traffic on
    CPU. A head it does not fuse (`fuses`) or another device takes that path."""
    if not fuses(head) or hidden.device.type != "cpu" or hidden.shape[0] == 0:
        return -F.cross_entropy(head(hidden).float(), targets, reduction="none")
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu") if autocast else head.weight.dtype
    return _LabelLogps.apply(hidden, head.weight, head.bias, targets, dtype)
