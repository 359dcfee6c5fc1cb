"""The memory model: peak bytes of a training process by what holds them, disk, and sizes."""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path

from llmkit.errors import InvalidArgument
from llmkit.exporter.types import TYPES as GGUF_TYPES
from llmkit.plan.params import _dims
from llmkit.plan.result import Memory
from llmkit.recipe import Recipe

GiB = 1024**3
MiB = 1024**2
CUDA_CONTEXT = 600 * MiB  # CUDA context + cuBLAS workspace: outside max_memory_allocated, inside the card
CPU_WORKING_SET = 32 * MiB  # model code, kernel caches and thread pools a CPU run adds beyond its imports
# Freed blocks the allocator keeps, as a share of the per-pass memory (activations + loss). On
# CPUs glibc keeps many freed activation blocks in its arenas: RSS grows by 1.57x (bf16) to 1.76x
# (fp32) the live per-pass memory on SmolLM2-135M with the fused LoRA layers (1.9-2.1x before
# them, whose backward made more temporaries); the CUDA caching allocator fragments far less.
ALLOCATOR_SLACK = {"cpu": 0.7, "cuda": 0.10, "mps": 0.10}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


def activation_bytes_per_token(
    tc,
    recipe: Recipe,
    act: str,
    checkpointing: bool,
    counts: dict,
    width: int = 0,
    flat: bool = False,
    cpu: bool = False,
    gated_width: int = 0,
) -> int:
    """Bytes autograd keeps per token for the backward pass (all layers).

    Per layer (a = bytes of the activation dtype; transformers computes RMSNorm in fp32):
      2 RMSNorms     2 x (4h + a h)        the fp32 input, the normalized output; under mixed
                                           precision also 2 a h (the casts back) + a h (attention
                                           output copy)
      attention      a (2 nh d + 2 nkv d) + 4 nh    rope'd q, k, v, the sdpa output, log-sum-exp
                     + 2 a nh w            eager attention only: probabilities for a row of width w
                     + (4 - a)(...)        padding-free passes under mixed precision: attention
                                           runs on fp32 copies (llmkit.attention)
      MLP            4 a i                 gate, SiLU(gate), up, their product; less a per
                                           unit of `gated_width` (the MLPs whose SiLU(gate)
                                           llmkit.gated_mlp recomputes in backward, CPU bf16)
      LoRA           a r per module; with dropout also (a + 1) in (the dropped copy and its
                     mask), on CPU (llmkit.fused_lora) 8 p in (the int64 positions it drops)
    Counted with autograd's saved-tensor hooks on SmolLM2-135M: 1.213 MB/token fp32 (formula:
    1.213), 0.833 MB/token bf16 (formula: 0.78) before the gated MLPs; those keep 0.184 MB/token
    less in a CPU bf16 run (counted; formula: 0.184). With gradient checkpointing only each layer's
    input (a h) stays, plus one layer recomputed during the backward pass.
    """
    dm = _dims(tc)
    a = DTYPE_BYTES[act]
    h, nh, d, nkv, i, L = dm["h"], dm["nh"], dm["d"], dm["nkv"], dm["i"], dm["L"]
    mixed = a != 4
    norms = 2 * (4 * h + a * h) + (2 * a * h + a * nh * d if mixed else 0)
    attn = a * (2 * nh * d + 2 * nkv * d) + 4 * nh
    if flat and mixed:
        attn += (4 - a) * (2 * nh * d + 2 * nkv * d)
    if (recipe.model.attn_implementation or counts.get("attn")) == "eager":
        attn += 2 * a * nh * width
    mlp = 4 * a * i - a * gated_width / L  # those keep gate, up and their product only
    lora = 0
    p = recipe.lora.dropout
    dropped = (8 * p if cpu else a + 1) if p > 0 else 0
    for in_f, r in counts["lora_per_token_dims"].values():
        lora += a * r + dropped * in_f
    layer = norms + attn + mlp + lora
    embed = a * h  # the embedding output / first residual
    if checkpointing:
        return int(L * a * h + layer + embed)
    return int(L * layer + embed)


def loss_bytes_per_label(tc, act: str, device: str, plain_head: bool = False) -> int:
    """Per label token, at the loss's backward pass. On CPU (llmkit.label_logps): the
    probabilities kept in the logits' place, in the matmul's dtype, turned into their gradient in
    place. Elsewhere, for models that post-process their logits and for an output layer that is
    trained (`plain_head`): the saved log-softmax, the gradients of log-softmax and of the fp32
    logits (3 x 4 bytes); under mixed precision also the logits' gradient cast back to the
    activation dtype."""
    from llmkit.label_logps import plain_logits  # (imports torch, as planning does anyway)

    a = DTYPE_BYTES[act]
    if device == "cpu" and not plain_logits(tc) and not plain_head:
        return int(tc.vocab_size * a)
    return int(tc.vocab_size * (12 + (a if a != 4 else 0)))


def memory_model(counts, tc, wdtype, act, per_token, per_label, layout, device) -> Memory:
    total = counts["total"]
    if wdtype == "nf4":
        # Linear weights of the decoder layers in NF4 (4 bits + double-quantized absmax, ~4.13
        # bits); prepare_model_for_kbit_training keeps the rest (embeddings, head, norms) in fp32.
        q = counts["layer_linear"]
        weights = int(q * 4.13 / 8 + (total - q) * 4)
    else:
        weights = total * DTYPE_BYTES[wdtype]
    lora = counts["lora"] * 4 * 4  # fp32 params, grads, AdamW exp_avg and exp_avg_sq
    activations = per_token * layout["pass_tokens"]
    loss = per_label * layout["pass_labels"]
    slack = int(ALLOCATOR_SLACK[device] * (activations + loss))
    if device == "cpu":
        overhead, runtime = CPU_WORKING_SET + slack, _process_rss()
    else:
        overhead, runtime = slack, CUDA_CONTEXT
    return Memory(weights, lora, activations, loss, overhead, runtime)


def _process_rss() -> int:
    """This process's resident memory after importing the training stack: what a training
    process holds before its first tensor (Python, torch, transformers, peft)."""
    import peft  # noqa: F401  (the training process imports these too)
    import torch  # noqa: F401
    import transformers  # noqa: F401

    with open("/proc/self/statm") if Path("/proc/self/statm").exists() else contextlib.nullcontext() as fh:
        if fh is not None:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def disk_model(counts, recipe: Recipe, config) -> dict:
    adapter = counts["lora"] * 4
    checkpoint = adapter * 3  # adapter + AdamW's two moments
    dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32")
    merged_b = 2 if ("16" in dtype) else 4
    return {
        "adapter": adapter,
        "checkpoints": checkpoint * recipe.train.keep_checkpoints,
        "merged": counts["total"] * merged_b,
        "gguf": int(counts["total"] * GGUF_TYPES[recipe.export.gguf].bytes_per_weight),
    }


def _device_memory(device: str, here: bool) -> int:
    if not here:
        raise InvalidArgument(
            f"no {device} device on this machine to read its memory from",
            "state it: --memory 24GB",
        )
    if device == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory
    if device == "mps":
        import torch

        return int(torch.mps.recommended_max_memory())
    try:
        import psutil

        # what can be allocated now, plus this planning process's own share (freed when it ends)
        return int(psutil.virtual_memory().available)
    except ImportError:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _parse_size(value: str | int) -> int:
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(i?B)?\s*", str(value), re.IGNORECASE)
    if not m:
        raise InvalidArgument(
            f"--memory {value}: not a size", "write it like 24GB, 512MB or 1.5TB (binary units)"
        )
    unit = {"": 1, "K": 1024, "M": MiB, "G": GiB, "T": 1024 * GiB}[m.group(2).upper()]
    return int(float(m.group(1)) * unit)
