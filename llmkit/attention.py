"""Padding-free passes: a micro-batch's sequences laid end to end in one row, attention kept
inside each sequence.

A padded micro-batch computes every layer on its padding too (17 % of the tokens of the
mixed-length benchmark set, 28 % of its attention). Laid end to end, the linear layers see only
real tokens; attention then runs once per sequence (PyTorch's causal SDPA kernel on that slice),
never over the whole row: a block-diagonal mask over the row would cost the row's length
squared. The sequence bounds travel as the `cu_seq_lens_*` keyword arguments transformers
already passes from the model's forward to its attention function (the flash-attention
"varlen" convention), so gradient checkpointing replays them too.

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
    with torch.autocast("cpu", enabled=False) if cpu else contextlib.nullcontext():
        out = [
            F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa
            )
            for q, k, v in zip(
                query.split(lengths, dim=2), key.split(lengths, dim=2), value.split(lengths, dim=2), strict=True
            )
        ]
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
    """The bounds of the sequences in a one-row batch (positions restart at 0 at each start)."""
    import torch

    if position_ids.shape[0] != 1:
        return {}
    starts = torch.nonzero(position_ids[0] == 0).flatten()
    bounds = torch.cat([starts, starts.new_tensor([position_ids.shape[1]])]).to(torch.int32)
    return {"cu_seq_lens_q": bounds, "cu_seq_lens_k": bounds}
