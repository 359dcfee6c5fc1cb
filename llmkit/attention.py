"""Padding-free passes: a micro-batch's sequences laid end to end in one row, attention kept
inside each sequence.

A padded micro-batch computes every layer on its padding too (17 % of the tokens of the
mixed-length benchmark set, 28 % of its attention). Laid end to end, the linear layers see only
real tokens; attention then runs once per sequence (PyTorch's causal SDPA kernel on that slice),
never over the whole row: a block-diagonal mask over the row would cost the row's length
squared. The sequence bounds travel as the `cu_seq_lens_*` keyword arguments transformers
already passes from the model's forward to its attention function (the flash-attention
"varlen" convention), so gradient checkpointing replays them too.

Sequences that open with the same prompt may share it (llmkit.data.laid_out): a sequence whose
positions start at s > 0 rather than 0 continues the first s tokens of the last sequence that
started at 0, and attends to them there (its keys and values, then its own causally). Its
attention is the same as if those tokens were laid out again in front of it; the linear layers
compute them once.

Used where it is exact: an SDPA model without attention soft-capping and whose sliding window,
if any, is no shorter than the longest sequence. Anything else (a padded batch, generation
with its KV cache) goes to transformers' own SDPA function, with its own masks.
"""

from __future__ import annotations

import contextlib

NAME = "llmkit_varlen"


def _attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    import torch
    import torch.nn.functional as F

    bounds = kwargs.pop("cu_seq_lens_q", None)
    if bounds is None or query.shape[0] != 1:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        kwargs.pop("cu_seq_lens_k", None)
        kwargs.pop("llmkit_shared", None)
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    gqa = query.shape[1] != key.shape[1]
    dtype, cpu = value.dtype, query.device.type == "cpu"  # rope may have made q, k fp32 already
    if cpu and torch.bfloat16 in (query.dtype, key.dtype, dtype):
        # PyTorch's CPU flash kernel is slower in bf16 than in fp32 on short sequences (its
        # backward: 4.2 ms vs 2.3 ms at 128 tokens); the upcast costs little and loses nothing.
        # Autocast would cast back to bf16, so it is off for this call.
        query, key, value = query.float(), key.float(), value.float()
    # split, not slices: the backward of a slice writes its gradient into a zero tensor of the
    # whole row, once per sequence; a split's backward is one concatenation.
    lengths = bounds.diff().tolist()
    shared = kwargs.pop("llmkit_shared", None)
    shared = shared.tolist() if shared is not None else [(0, 0)] * len(lengths)
    qs, ks, vs = (t.split(lengths, dim=2) for t in (query, key, value))
    out = []
    with torch.autocast("cpu", enabled=False) if cpu else contextlib.nullcontext():
        for q, k, v, (opener, n) in zip(qs, ks, vs, shared, strict=True):
            mask = None
            if n:  # the opener's first n tokens, then its own, causally (bottom-right aligned)
                k = torch.cat([ks[opener][:, :, :n], k], dim=2)
                v = torch.cat([vs[opener][:, :, :n], v], dim=2)
                mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril(n)
            out.append(
                F.scaled_dot_product_attention(
                    q,
                    k,
                    v,
                    attn_mask=mask,
                    dropout_p=dropout,
                    is_causal=mask is None,
                    scale=scaling,
                    enable_gqa=gqa,
                )
            )
    return torch.cat(out, dim=2).to(dtype).transpose(1, 2).contiguous(), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, _attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # generation and padded batches: SDPA's masks


def exact_for(cfg, implementation: str | None, longest: int) -> bool:
    """Whether per-sequence SDPA computes exactly what this model's attention does, for
    sequences of up to `longest` tokens (a text config; `llmkit plan` asks before any weights load)."""
    if implementation != "sdpa" or getattr(cfg, "attn_logit_softcapping", None):
        return False
    windows = [getattr(cfg, "sliding_window", None), getattr(cfg, "attention_chunk_size", None)]
    return not any(w and w < longest for w in windows)


def use_segments(model, longest: int) -> bool:
    """Switch `model` (a transformers causal LM) to per-sequence attention where that is exact;
    True if it was switched."""
    cfg = _text_config(model)
    if not exact_for(cfg, getattr(cfg, "_attn_implementation", None), longest):
        return False
    _register()
    model.set_attn_implementation(NAME)
    return True


def uses_segments(model) -> bool:
    return getattr(_text_config(model), "_attn_implementation", None) == NAME


def _text_config(model):
    return model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config


def segment_kwargs(position_ids) -> dict:
    """The bounds of the sequences in a one-row batch: a sequence starts wherever positions do not
    go on by one (at 0, or at s > 0 for one that shares the first s tokens of the last sequence
    that started at 0; `llmkit_shared` then names, per sequence, that opener and s)."""
    import torch

    if position_ids.shape[0] != 1:
        return {}
    pos = position_ids[0]
    starts = torch.cat([pos.new_zeros(1), torch.nonzero(pos[1:] != pos[:-1] + 1).flatten() + 1])
    bounds = torch.cat([starts, starts.new_tensor([pos.shape[0]])]).to(torch.int32)
    kw = {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds}
    first = pos[starts]
    if bool((first > 0).any()):
        index = torch.arange(len(starts))
        opener = torch.where(first == 0, index, torch.zeros_like(index)).cummax(0).values
        kw["llmkit_shared"] = torch.stack([opener, first], dim=1)
    return kw
