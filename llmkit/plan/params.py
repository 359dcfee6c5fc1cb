"""Exact parameter counts from the model built on the meta device, with the run's LoRA targets."""

from __future__ import annotations

import contextlib
import re

from llmkit.lora import lora_targets
from llmkit.plan.config import _text_config
from llmkit.recipe import Recipe


def count_parameters(config, recipe: Recipe) -> dict:
    """Exact counts from the model built on the meta device, with the run's own LoRA targets."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmkit.gated_mlp import gated  # (imports torch, as counting does anyway)
    from llmkit.label_logps import fuses

    with torch.device("meta"), warnings_off():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=recipe.model.trust_remote_code)
    tc = _text_config(config)
    counts = _weights(model, tc)
    lo = recipe.lora
    targets = lora_targets(model, lo.target_modules)
    lcfg = LoraConfig(r=lo.r, lora_alpha=lo.alpha, lora_dropout=0.0, **targets, use_dora=lo.use_dora)
    with torch.device("meta"), warnings_off():
        peft_model = get_peft_model(model, lcfg)
    lora = sum(p.numel() for n, p in peft_model.named_parameters() if p.requires_grad)
    modules = sorted(
        {
            re.sub(r"^.*?\.layers\.\d+\.", "", n).rsplit(".lora_", 1)[0]
            for n, _ in peft_model.named_parameters()
            if ".lora_A" in n
        }
    )
    return {
        **counts,
        "lora": lora,
        "lora_modules": modules,
        "lora_per_token_dims": _lora_dims(peft_model),
        "layer_linear": _linear_params(model),
        "plain_head": not fuses(peft_model.get_base_model().get_output_embeddings()),
        "attn": getattr(model.config, "_attn_implementation", None),
        # the intermediate widths of the MLPs llmkit.gated_mlp computes (an MoE's shared expert too)
        "gated_mlp_width": sum(m.gate_proj.out_features for m in model.modules() if gated(m)),
    }


def trained_counts(peft_model) -> dict:
    """The same counts for a live PEFT model (the one a run trains): its LoRA weights apart."""
    base = peft_model.get_base_model()
    lora = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return {**_weights(base, _text_config(base.config), skip="lora_"), "lora": lora}


def _weights(model, tc, skip: str | None = None) -> dict:
    """Parameters by role: embedding, output layer, experts (and how many of them one token runs)."""
    seen: set[int] = set()
    total = embed = head = experts = 0
    emb = model.get_input_embeddings()
    out = model.get_output_embeddings()
    emb_ids = {id(p) for p in emb.parameters()} if emb is not None else set()
    head_ids = {id(p) for p in out.parameters()} if out is not None else set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen or (skip and skip in name):
            continue
        seen.add(id(p))
        total += p.numel()
        if id(p) in emb_ids:
            embed += p.numel()
        elif id(p) in head_ids:
            head += p.numel()
        elif ".experts." in name or name.endswith(".experts"):
            experts += p.numel()
    tied = out is not None and emb is not None and out.weight is emb.weight
    head_params = out.weight.numel() if out is not None else 0
    n_exp = _first(tc, "num_experts", "num_local_experts", "n_routed_experts") or 0
    top_k = _first(tc, "num_experts_per_tok") or 0
    active_experts = experts * top_k / n_exp if n_exp else experts
    body = total - embed - (0 if tied else head) - experts + active_experts
    return {
        "total": total,
        "embed": embed,
        "head": head_params,
        "tied": tied,
        "body_active": int(body),
        "active": int(body + head_params),
        "experts": experts,
    }


def _lora_dims(peft_model) -> dict:
    """LoRA modules of one layer: name → (in_features, r), for the activations they save."""
    out = {}
    for name, mod in peft_model.named_modules():
        m = re.match(r"^.*?\.layers\.0\.(.+)$", name)
        if m and hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
            a = mod.lora_A["default"]
            if hasattr(a, "in_features"):
                out[m.group(1)] = (a.in_features, a.out_features)
    return out


def _linear_params(model) -> int:
    import torch

    return sum(
        mod.weight.numel()
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and ".layers." in name
    )


def _first(cfg, *names):
    for n in names:
        v = getattr(cfg, n, None)
        if v:
            return v
    return None


@contextlib.contextmanager
def warnings_off():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _dims(tc) -> dict:
    h = tc.hidden_size
    nh = tc.num_attention_heads
    d = getattr(tc, "head_dim", None) or h // nh
    nkv = getattr(tc, "num_key_value_heads", None) or nh
    inter = getattr(tc, "intermediate_size", None) or 4 * h
    n_exp = _first(tc, "num_experts", "num_local_experts", "n_routed_experts")
    if n_exp:  # per token: the routed experts that run, the shared expert, and the router logits
        moe = getattr(tc, "moe_intermediate_size", None) or inter
        inter = (tc.num_experts_per_tok * moe) + (getattr(tc, "shared_expert_intermediate_size", 0) or 0)
    return {
        "h": h,
        "nh": nh,
        "d": d,
        "nkv": nkv,
        "i": inter,
        "L": tc.num_hidden_layers,
        "V": tc.vocab_size,
        "experts": n_exp or 0,
    }
