"""Mixture-of-Experts layers on CPU in bf16: each expert's rows padded to a multiple of 64.

oneDNN builds a bf16 matmul kernel for every new number of rows (3–8 ms the first time, 0.2–0.7
ms once built; Intel Xeon with AMX), and the experts' group sizes change with every pass. torch's
grouped_mm over 8 experts × 1,800 rows (512 → 1024) took 23.3 ms with new group sizes against
3.2 ms with the previous call's; with every group padded to a multiple of 64 the row counts
repeat and it took 1.6 ms, for 13 % more rows (32: 3.3 ms; 128: 1.8 ms). fp32 goes to MKL, which
has no such cost (6.5 ms either way), and keeps transformers' own path.

A group of at most 64 rows is padded to the next power of two instead (1, 2, 4, ... 64): a
sampling step routes a few rows to each expert, and 64 rows each would multiply its work by up to
64; the row counts still come from a small set.

The padding rows are zeros, no output reads them and their gradients are zero, so the result is
transformers' `grouped_mm` computation: the same experts, weights, gate, bias and routing sums.
"""

from __future__ import annotations

import torch

from llmkit.plan.config import _text_config

NAME = "llmkit_padded_grouped_mm"
BLOCK = 64  # rows; measured above against 32 and 128


def use_padded_experts(model) -> bool:
    """Switch the experts of `model` (a transformers causal LM, PEFT-wrapped or not) to the padded
    grouped matmul where they use transformers' `grouped_mm`; True if switched."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(_text_config(base.config), "_experts_implementation", None) != "grouped_mm":
        return False  # a dense model, or experts another implementation was chosen for
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register(NAME, padded_experts_forward)
    base.set_experts_implementation(NAME)
    return True


def padded_experts_forward(self, hidden_states, top_k_index, top_k_weights):
    """transformers' experts forward (hidden (T, H), top-k expert ids and weights (T, k)) → (T, H),
    with each expert's rows padded (`padded_rows`) for `torch.nn.functional.grouped_mm`."""
    if getattr(self, "_is_expert_parallel", False):  # sentinel rows: transformers' path handles them
        from transformers.integrations.moe import grouped_mm_experts_forward

        return grouped_mm_experts_forward(self, hidden_states, top_k_index, top_k_weights)
    tokens, top_k = top_k_index.shape
    experts = self.num_experts
    ids = top_k_index.reshape(-1)  # (S,) one (token, expert) pair per row, S = T·k
    # where each pair goes in the padded, expert-sorted layout: its expert's first padded row plus
    # its rank among that expert's pairs (a stable sort keeps the tokens' order within an expert)
    order = torch.argsort(ids, stable=True)
    counts = torch.bincount(ids, minlength=experts)
    padded = padded_rows(counts)
    ends = padded.cumsum(0)
    sorted_ids = ids[order]
    rank = torch.arange(ids.numel(), device=ids.device) - (counts.cumsum(0) - counts)[sorted_ids]
    slot = torch.empty_like(order)
    slot[order] = (ends - padded)[sorted_ids] + rank
    offsets = ends.to(torch.int32)
    rows_expert = (
        torch.repeat_interleave(torch.arange(experts, device=ids.device), padded) if self.has_bias else None
    )

    weight = self.gate_up_proj if self.has_gate else self.up_proj
    pairs = hidden_states.to(weight.dtype).repeat_interleave(top_k, dim=0)  # (S, H) in pair order
    x = pairs.new_zeros(int(ends[-1]), pairs.shape[1]).index_copy(0, slot, pairs)
    bias = (self.gate_up_proj_bias if self.has_gate else self.up_proj_bias) if self.has_bias else None
    h = _grouped_linear(x, weight, offsets, bias, rows_expert, self.is_transposed)
    h = self._apply_gate(h) if self.has_gate else self.act_fn(h)
    bias = self.down_proj_bias if self.has_bias else None
    y = _grouped_linear(h, self.down_proj, offsets, bias, rows_expert, self.is_transposed)
    if self.has_post_expert_norm:
        y = self.post_expert_norm(y)
    y = y[slot] * top_k_weights.reshape(-1, 1)  # back to pair order, weighted by the router
    return y.view(tokens, top_k, -1).sum(dim=1).to(hidden_states.dtype)


def padded_rows(counts):
    """Each group's padded row count: the next power of two up to BLOCK, then a multiple of BLOCK."""
    small = torch.exp2(torch.ceil(torch.log2(counts.double()))).long()  # 0 stays 0 (log2 0 = -inf)
    return torch.where(counts > BLOCK, (counts + BLOCK - 1) // BLOCK * BLOCK, small)


def _grouped_linear(x, weight, offsets, bias, rows_expert, transposed: bool):
    """x (rows, in) through each expert's weight ((E, out, in), or (E, in, out) if transposed)
    for its rows (group ends `offsets`); `rows_expert`: each row's expert, for the bias."""
    w = weight.to(x.dtype)
    out = torch.nn.functional.grouped_mm(x, w if transposed else w.transpose(-2, -1), offs=offsets)
    return out if bias is None else out + bias[rows_expert].to(out.dtype)
