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

import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmkit.errors import DoesNotFit, InvalidArgument, LlmkitError, PlanError
from llmkit.recipe import Recipe, load

GiB = 1024**3
MiB = 1024**2

# What a training step achieves of the device's measured matmul FLOP/s: the matmuls themselves
# run at about that rate, the rest (norms, activations, attention softmax, optimizer, Python)
# does not. Measured with SmolLM2-135M, llmkit's CPU path: see docs/train.md. --probe replaces it.
EFFICIENCY = {"cpu": 0.45, "cuda": 0.40, "mps": 0.30}
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
CUDA_CONTEXT = 600 * MiB  # CUDA context + cuBLAS workspace: outside max_memory_allocated, inside the card
CPU_WORKING_SET = 32 * MiB  # model code, kernel caches and thread pools a CPU run adds beyond its imports
# Freed blocks the allocator keeps, as a share of the per-pass memory (activations + loss). On
# CPUs glibc keeps most freed activation blocks in its arenas, so a process's RSS settles near
# twice the live per-pass memory (measured with SmolLM2-135M, fp32 and bf16: 1.9-2.1x); the
# CUDA caching allocator fragments far less.
ALLOCATOR_SLACK = {"cpu": 1.0, "cuda": 0.10, "mps": 0.10}
GGUF_BYTES = {
    "f32": 4.0,
    "f16": 2.0,
    "bf16": 2.0,
    "q8_0": 34 / 32,
    "q4_0": 18 / 32,
    "q4_1": 20 / 32,
    "q5_0": 22 / 32,
    "q5_1": 24 / 32,
}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}


@dataclass
class Memory:
    """Peak memory of the training process, bytes, by what holds it."""

    weights: int
    lora: int  # LoRA params + grads + AdamW moments (fp32)
    activations: int  # saved for backward, largest pass
    loss: int  # logits on label tokens + log-softmax + their gradients
    overhead: int  # allocator slack + the working set of the run beyond its imports
    runtime: int  # the process before training: Python + torch imports (CPU) or CUDA context (GPU)

    @property
    def peak(self) -> int:
        """What training adds to the process: the figure `--memory` is compared against, less runtime."""
        return self.weights + self.lora + self.activations + self.loss + self.overhead

    @property
    def total(self) -> int:
        return self.peak + self.runtime


@dataclass
class PlanResult:
    recipe: str
    model: str
    architecture: str
    device: str
    device_name: str
    precision: str
    weights_dtype: str  # fp32 | bf16 | fp16 | nf4
    memory_available: int
    params_total: int
    params_active: int  # per token (MoE: routed experts that run)
    params_trainable: int
    lora_modules: list[str]
    gradient_checkpointing: bool
    max_batch_tokens: int  # 0 = no limit
    largest_pass_tokens: int  # rows x width of the largest forward pass (padding included)
    largest_pass_labels: int
    activation_bytes_per_token: int  # this run's setting
    activation_bytes_per_token_no_ckpt: int
    activation_bytes_per_token_ckpt: int
    loss_bytes_per_label: int
    memory: Memory
    disk: dict[str, int]
    steps: int
    steps_per_epoch: int
    tokens_per_epoch: int  # padded tokens the model processes in one epoch
    label_tokens_per_epoch: int
    flops_per_token: float
    device_flops: float  # measured (or table) FLOP/s of a matmul at this precision
    flops_source: str
    efficiency: float
    seconds_per_epoch: float
    seconds_total: float
    fits: bool
    short_by: int
    advice: list[str] = field(default_factory=list)
    probe: dict | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory"] = {**d["memory"], "peak": self.memory.peak, "total": self.memory.total}
        return d


# ----------------------------------------------------------------------------- the plan


def plan(
    recipe: str | Path | Recipe | dict,
    overrides=(),
    *,
    device: str | None = None,
    memory: str | int | None = None,
    probe: bool = False,
    measure: bool = True,
) -> PlanResult:
    """Predict parameters, peak memory, disk and time of `llmkit train RECIPE` without loading weights."""
    from llmkit import devices

    loaded = load(recipe, list(overrides))
    t = loaded.train
    hw = devices.detect()
    device = device or hw.device
    if device not in ("cpu", "cuda", "mps"):
        raise InvalidArgument(f"--device {device}: unknown device", "use cpu, cuda or mps")
    here = device == hw.device
    if device == "cpu":
        precision = devices.choose_precision(t.precision, hw) if here else _auto(t.precision, "fp32")
    elif device == "cuda":
        precision = devices.choose_precision(t.precision, hw) if here else _auto(t.precision, "bf16")
    else:
        precision = _auto(t.precision, "fp32")
    if loaded.model.load_in_4bit and here:
        devices.check_4bit(hw)  # the existing clear error, before any work
    elif loaded.model.load_in_4bit and device != "cuda":
        raise devices.HardwareError(
            f"model.load_in_4bit: QLoRA needs a CUDA GPU with bitsandbytes, not {device.upper()}",
            "plan with --device cuda, or set model.load_in_4bit=false",
        )
    available = _parse_size(memory) if memory is not None else _device_memory(device, here)

    config, tokenizer = model_config(loaded)
    arch = _text_config(config)
    counts = count_parameters(config, loaded)
    dataset = _prepare_data(loaded, tokenizer)
    budget = t.max_batch_tokens if t.max_batch_tokens is not None else (1024 if device == "cpu" else 0)
    layout = _layout(dataset.train, loaded, budget)

    act = precision if precision in ("bf16", "fp16") else "fp32"
    wdtype = "nf4" if loaded.model.load_in_4bit else act
    per_token = {
        gc: activation_bytes_per_token(arch, loaded, act, gc, counts, layout["pass_width"])
        for gc in (False, True)
    }
    gc = t.gradient_checkpointing
    loss_per_label = loss_bytes_per_label(arch, act)
    mem = memory_model(counts, arch, wdtype, act, per_token[gc], loss_per_label, layout, device)

    flops_tok = flops_per_token(counts, arch, layout, train_base=False)
    dev_flops, source = device_flops(device, act, arch, here and measure, hw.name)
    eff = EFFICIENCY[device] * (0.75 if gc else 1.0)  # recomputing the forward costs ~1/3 more
    work = layout["tokens_per_epoch"] * flops_tok
    sec_epoch = work / (dev_flops * eff)
    steps = layout["steps"]
    sec_total = sec_epoch * steps / layout["steps_per_epoch"]

    result = PlanResult(
        recipe=loaded.name or str(recipe),
        model=loaded.model.name,
        architecture=getattr(arch, "model_type", "?"),
        device=device,
        device_name=hw.name if here else _named_device(device),
        precision=precision,
        weights_dtype=wdtype,
        memory_available=available,
        params_total=counts["total"],
        params_active=counts["active"],
        params_trainable=counts["lora"],
        lora_modules=counts["lora_modules"],
        gradient_checkpointing=gc,
        max_batch_tokens=budget,
        largest_pass_tokens=layout["pass_tokens"],
        largest_pass_labels=layout["pass_labels"],
        activation_bytes_per_token=per_token[gc],
        activation_bytes_per_token_no_ckpt=per_token[False],
        activation_bytes_per_token_ckpt=per_token[True],
        loss_bytes_per_label=loss_per_label,
        memory=mem,
        disk=disk_model(counts, loaded, config),
        steps=steps,
        steps_per_epoch=layout["steps_per_epoch"],
        tokens_per_epoch=layout["tokens_per_epoch"],
        label_tokens_per_epoch=layout["labels_per_epoch"],
        flops_per_token=flops_tok,
        device_flops=dev_flops,
        flops_source=source,
        efficiency=eff,
        seconds_per_epoch=sec_epoch,
        seconds_total=sec_total,
        fits=mem.total <= available,
        short_by=max(0, mem.total - available),
    )
    if not result.fits:
        result.advice = advise(result, counts, arch, loaded, layout, dataset.train, device, act)
    if probe and result.fits:
        if not here:
            raise InvalidArgument(
                f"--probe runs on this machine ({hw.device}), not on {device}", "drop --device"
            )
        result.probe = run_probe(loaded, overrides, layout)
        tps = result.probe["tokens_per_s"]
        result.seconds_per_epoch = layout["tokens_per_epoch"] / tps
        result.seconds_total = result.seconds_per_epoch * steps / layout["steps_per_epoch"]
    return result


def check(result: PlanResult) -> None:
    """Raise DoesNotFit (one line: by how much and why; the hint says what to change)."""
    if result.fits:
        return
    m = result.memory
    parts = {
        "weights": m.weights,
        "activations": m.activations,
        "loss buffers": m.loss,
        "LoRA + optimizer": m.lora,
        "runtime": m.runtime + m.overhead,
    }
    biggest = max(parts, key=parts.get)
    raise DoesNotFit(
        f"{result.recipe} needs {human(m.total)} on {result.device} but {human(result.memory_available)} "
        f"is available: {human(result.short_by)} short, mostly {biggest} ({human(parts[biggest])})",
        "; ".join(result.advice) or "use a smaller model or a device with more memory",
        result,
    )


def _auto(requested: str, default: str) -> str:
    return default if requested == "auto" else requested


def _named_device(device: str) -> str:
    return {"cuda": "CUDA GPU (not on this machine)", "mps": "Apple MPS (not on this machine)"}.get(
        device, device
    )


# ----------------------------------------------------------------------------- the model, config only


def model_config(recipe: Recipe):
    """(config, tokenizer) for the recipe's model, without loading or converting weights."""
    from transformers import AutoConfig, AutoTokenizer

    from llmkit import sources
    from llmkit.errors import SourceError
    from llmkit.ui import quiet_transformers

    quiet_transformers()
    m = recipe.model
    ref = m.name.strip()
    gguf = None
    if ref in sources.BUILTIN:
        gguf = sources.embedded_gguf(ref)
    elif ref.startswith("ollama:"):
        from llmkit.ollama import locate_model_gguf

        gguf = locate_model_gguf(ref.removeprefix("ollama:"))[0]
    elif ref.lower().endswith(".gguf"):
        gguf = Path(ref).expanduser()
        if not gguf.is_file():
            raise SourceError(f"GGUF file not found: {gguf}")
    converted = _converted_dir(gguf) if gguf is not None else None
    if converted is not None:  # converted before: its config and tokenizer load fastest
        gguf, ref = None, str(converted)
    if gguf is not None:
        arch = sources.gguf_architecture(gguf)  # also rejects a non-GGUF file
        try:
            config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
            config = sources.gguf_config_fixes(config, gguf, arch)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"transformers could not read {gguf.name}: {_first_line(exc)}") from None
    else:
        if ref in sources.TINY_NAMES or Path(ref).expanduser().is_dir():
            path = sources.resolve(ref)  # tiny models are built in seconds; local dirs are checked
        else:
            path = _hub_config_dir(ref, m.revision)
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=m.trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=m.trust_remote_code)
        except Exception as exc:
            raise SourceError(f"cannot read the config/tokenizer in {path}: {_first_line(exc)}") from None
    if m.chat_template:
        p = recipe.resolve_path(m.chat_template) if len(m.chat_template) < 256 else None
        tokenizer.chat_template = p.read_text() if p and p.is_file() else m.chat_template
    return config, tokenizer


def _converted_dir(gguf: Path) -> Path | None:
    """The HF dir `llmkit pull`/`train` already converted this GGUF into, if any (same cache key)."""
    from llmkit import sources
    from llmkit.files import home, sha256_file

    if not gguf.is_file():
        return None
    blob = re.fullmatch(r"sha256-([0-9a-f]{64})", gguf.name)
    digest = blob.group(1) if blob else sha256_file(gguf.resolve())
    final = home() / "models" / f"gguf-{digest[:16]}"
    return final if (final / sources.SOURCE_FILE).is_file() else None


def _hub_config_dir(ref: str, revision: str | None) -> Path:
    """A Hub model's config and tokenizer files only (cached, else downloaded: kilobytes, no weights)."""
    from huggingface_hub import snapshot_download

    from llmkit import sources
    from llmkit.errors import SourceError

    if "@" in ref:
        ref, _, revision = ref.partition("@")
    if not sources._REPO_ID.match(ref):
        sources.resolve(ref)  # raises the usual "unknown model" error
    patterns = [p for p in sources.DEFAULT_PATTERNS if p != "*.safetensors"]
    for local in (True, False):
        try:
            return Path(
                snapshot_download(ref, revision=revision, allow_patterns=patterns, local_files_only=local)
            )
        except Exception as exc:
            if not local:
                raise SourceError(
                    f"cannot read the config of {ref}: not cached, and the Hub says: {_first_line(exc)}",
                    "check the name (org/name[@revision]); `llmkit pull` it once, or pass a local dir",
                ) from None
    raise AssertionError("unreachable")


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def count_parameters(config, recipe: Recipe) -> dict:
    """Exact counts from the model built on the meta device, with the run's own LoRA targets."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmkit.train import lora_targets

    with torch.device("meta"), warnings_off():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=recipe.model.trust_remote_code)
    seen: set[int] = set()
    total = embed = head = experts = 0
    emb = model.get_input_embeddings()
    out = model.get_output_embeddings()
    emb_ids = {id(p) for p in emb.parameters()} if emb is not None else set()
    head_ids = {id(p) for p in out.parameters()} if out is not None else set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
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
    tc = _text_config(config)
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
        "lora": lora,
        "lora_modules": modules,
        "lora_per_token_dims": _lora_dims(peft_model),
        "layer_linear": _linear_params(model),
        "attn": getattr(model.config, "_attn_implementation", None),
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


# ----------------------------------------------------------------------------- memory


def activation_bytes_per_token(
    tc, recipe: Recipe, act: str, checkpointing: bool, counts: dict, width: int = 0
) -> int:
    """Bytes autograd keeps per token for the backward pass (all layers).

    Per layer (a = bytes of the activation dtype; transformers computes RMSNorm in fp32):
      2 RMSNorms     2 x (4h + a h)        the fp32 input, the normalized output; under mixed
                                           precision also 2 a h (the casts back) + a h (attention
                                           output copy)
      attention      a (2 nh d + 2 nkv d) + 4 nh    rope'd q, k, v, the sdpa output, log-sum-exp
                     + 2 a nh w            eager attention only: probabilities for a row of width w
      MLP            4 a i                 gate, SiLU(gate), up, their product
      LoRA           a r per module; with dropout also (a + 1) in (the dropped copy and its mask)
    Counted with autograd's saved-tensor hooks on SmolLM2-135M: 1.213 MB/token fp32 (formula:
    1.213), 0.833 MB/token bf16 (formula: 0.78). With gradient checkpointing only each layer's
    input (a h) stays, plus one layer recomputed during the backward pass.
    """
    dm = _dims(tc)
    a = DTYPE_BYTES[act]
    h, nh, d, nkv, i, L = dm["h"], dm["nh"], dm["d"], dm["nkv"], dm["i"], dm["L"]
    mixed = a != 4
    norms = 2 * (4 * h + a * h) + (2 * a * h + a * nh * d if mixed else 0)
    attn = a * (2 * nh * d + 2 * nkv * d) + 4 * nh
    if (recipe.model.attn_implementation or counts.get("attn")) == "eager":
        attn += 2 * a * nh * width
    mlp = 4 * a * i
    lora = 0
    dropout = recipe.lora.dropout > 0
    for in_f, r in counts["lora_per_token_dims"].values():
        lora += a * r + ((a + 1) * in_f if dropout else 0)
    layer = norms + attn + mlp + lora
    embed = a * h  # the embedding output / first residual
    if checkpointing:
        return int(L * a * h + layer + embed)
    return int(L * layer + embed)


def loss_bytes_per_label(tc, act: str) -> int:
    """Per label token, at the loss's backward pass: the saved log-softmax, the gradients of
    log-softmax and of the fp32 logits (3 x 4 bytes); under mixed precision also the logits'
    gradient cast back to the activation dtype."""
    a = DTYPE_BYTES[act]
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
        "gguf": int(counts["total"] * GGUF_BYTES[recipe.export.gguf]),
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


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


# ----------------------------------------------------------------------------- data layout


def _prepare_data(recipe: Recipe, tokenizer):
    from llmkit import data as datalib

    return datalib.prepare(recipe, tokenizer, seed=recipe.train.seed)


def _layout(examples, recipe: Recipe, budget: int) -> dict:
    """The run's steps and passes, exactly as train.py lays them out (one process)."""
    from llmkit import data as datalib
    from llmkit.train import Plan

    p = Plan(examples, recipe, 1)
    best = (0, 0, 0)
    for step in range(p.total_steps):
        for rows in p.micro_batches(step, 0):
            for piece in datalib.split_by_tokens(examples, rows, budget):
                width = max(sum(len(examples[i]) for i in row) for row in piece)
                labels = sum(examples[i].n_labels for row in piece for i in row)
                best = max(best, (width * len(piece), labels, width))
    epoch = p.epochs[0]
    padded = sum(
        len(rows) * max(sum(len(examples[i]) for i in row) for row in rows) for rows in epoch if rows
    )
    labels = sum(examples[i].n_labels for rows in epoch for row in rows for i in row)
    n_rows = sum(len(rows) for rows in epoch)
    return {
        "steps": p.total_steps,
        "steps_per_epoch": p.steps_per_epoch,
        "pass_tokens": best[0],
        "pass_labels": best[1],
        "pass_width": best[2],
        "tokens_per_epoch": padded,
        "labels_per_epoch": labels,
        "mean_width": padded / max(1, n_rows),
        "real_tokens_per_epoch": sum(len(e) for e in examples),
    }


# ----------------------------------------------------------------------------- time


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


# ----------------------------------------------------------------------------- advice


def advise(result: PlanResult, counts, tc, recipe, layout, examples, device, act) -> list[str]:
    """The settings that would make the run fit, each checked with the same model."""
    m = result.memory
    room = result.memory_available - m.runtime
    fixed = m.weights + m.lora + (CPU_WORKING_SET if device == "cpu" else 0)
    out = []

    def peak_with(per_tok, pass_tokens, pass_labels, weights=m.weights, lora=m.lora):
        dyn = per_tok * pass_tokens + result.loss_bytes_per_label * pass_labels
        return (
            weights
            + lora
            + int(dyn * (1 + ALLOCATOR_SLACK[device]))
            + (CPU_WORKING_SET if device == "cpu" else 0)
        )

    if fixed >= room:
        if device == "cuda" and not recipe.model.load_in_4bit:
            q = counts["layer_linear"]
            nf4 = int(q * 4.13 / 8 + (counts["total"] - q) * 4)
            if nf4 + m.lora + CUDA_CONTEXT < result.memory_available:
                out.append(f"model.load_in_4bit=true (weights {human(m.weights)} → {human(nf4)})")
        out.append(f"the weights alone ({human(m.weights)}) do not fit in {human(room)}: use a smaller model")
        return out
    if not result.gradient_checkpointing:
        ck = peak_with(
            result.activation_bytes_per_token_ckpt, result.largest_pass_tokens, result.largest_pass_labels
        )
        if ck <= room:
            out.append(f"train.gradient_checkpointing=true (peak {human(m.peak)} → {human(ck)})")
    for budget in (4096, 2048, 1024, 512, 256, 128):
        if result.max_batch_tokens and budget >= result.max_batch_tokens:
            continue
        lay = _layout(examples, recipe, budget)
        pk = peak_with(result.activation_bytes_per_token, lay["pass_tokens"], lay["pass_labels"])
        if pk <= room:
            out.append(f"train.max_batch_tokens={budget} (peak {human(m.peak)} → {human(pk)})")
            break
    if device == "cuda" and not recipe.model.load_in_4bit:
        q = counts["layer_linear"]
        nf4 = int(q * 4.13 / 8 + (counts["total"] - q) * 4)
        if (
            peak_with(
                result.activation_bytes_per_token,
                result.largest_pass_tokens,
                result.largest_pass_labels,
                weights=nf4,
            )
            <= room
        ):
            out.append(f"model.load_in_4bit=true (weights {human(m.weights)} → {human(nf4)})")
    if recipe.lora.r > 8 and m.lora > 0.1 * m.peak:
        out.append(f"lora.r={recipe.lora.r // 2} (LoRA + optimizer {human(m.lora)} → {human(m.lora // 2)})")
    return out


# ----------------------------------------------------------------------------- --probe


def run_probe(recipe: Recipe, overrides, layout, steps: int = 10) -> dict:
    """Train `steps` real steps in a child process; tokens/s from its per-step metrics.

    The first step (kernel warm-up, allocator growth) is left out of the rate. The child is the
    same `python -m llmkit.train` a run uses, so its peak RSS is also the run's."""
    from llmkit.recipe import dump

    with tempfile.TemporaryDirectory(prefix="llmkit-probe-") as tmp:
        probe_recipe = Path(tmp) / "recipe.yaml"
        data = load(recipe).model_dump(mode="json")
        # relative data paths resolve against the recipe's own file
        for section, key in (("data", "path"), ("data", "eval_path"), ("model", "chat_template")):
            v = data[section][key]
            if v and len(v) < 256 and "\n" not in v and recipe.resolve_path(v).exists():
                data[section][key] = str(recipe.resolve_path(v).resolve())
        data["train"].update(
            max_steps=min(steps + 1, max(2, layout["steps"])),
            output_dir=str(Path(tmp) / "run"),
            eval_every=0,
            save_every=0,
            log_every=1,
        )
        data["data"]["eval_fraction"] = data["data"]["eval_fraction"] if data["data"]["eval_path"] else 0.0
        probe_recipe.write_text(dump(load(data)))
        env = {**os.environ, "LLMKIT_QUIET": "1", "TRANSFORMERS_VERBOSITY": "error"}
        start = time.perf_counter()
        with open(Path(tmp) / "stderr.txt", "w+") as errf:
            hwm = Path(tmp) / "peak_rss"
            proc = subprocess.Popen(
                [sys.executable, "-c", _PROBE_MAIN, str(hwm), str(probe_recipe)],
                stdout=subprocess.DEVNULL,
                stderr=errf,
                env=env,
            )
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            errf.seek(0)
            err = errf.read()
        if proc.returncode != 0:
            last = (err.strip().splitlines() or ["no output"])[-1]
            raise PlanError(
                f"--probe: the training run failed: {last}", "run `llmkit train` to see the full error"
            )
        rows = [json.loads(ln) for ln in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
        run = json.loads((Path(tmp) / "run" / "run.json").read_text())
    return probe_rate(rows) | {
        "wall_s": round(time.perf_counter() - start, 1),
        "precision": run["precision"],
        # the child's own high-water mark: ru_maxrss would include this process's (Linux keeps
        # the parent's across fork + exec), which is wrong whenever the caller is large
        "peak_rss": int(hwm.read_text())
        if hwm.is_file()
        else usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024),
    }


# The probe's training process: `python -m llmkit.train RECIPE`, then its peak RSS (VmHWM) to a file.
_PROBE_MAIN = """
import re, runpy, sys
out = sys.argv[1]
sys.argv = ["llmkit.train", *sys.argv[2:]]
try:
    runpy.run_module("llmkit.train", run_name="__main__")
finally:
    try:
        status = open("/proc/self/status").read()
        open(out, "w").write(str(int(re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1)) * 1024))
    except (OSError, AttributeError):
        pass
"""


def probe_rate(rows: list[dict]) -> dict:
    """tokens/s and seconds per step over the logged steps, the first (warm-up) one left out."""
    steps = [r for r in rows if "tokens_per_s" in r]
    tokens = [b["tokens"] - a["tokens"] for a, b in zip([{"tokens": 0}, *steps], steps, strict=False)]
    secs = [n / r["tokens_per_s"] for n, r in zip(tokens, steps, strict=True)]
    use = slice(1, None) if len(steps) > 1 else slice(None)
    n, s = sum(tokens[use]), sum(secs[use])
    return {
        "steps": len(secs[use]),
        "tokens_per_s": n / s,
        "seconds_per_step": s / len(secs[use]),
        "step_seconds": [round(x, 5) for x in secs[use]],  # per step, to see (or filter) disturbed ones
    }


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# ----------------------------------------------------------------------------- rendering


def render(r: PlanResult) -> None:
    """One table: parameters, memory at peak, disk, time, and the verdict."""
    from rich.table import Table

    from llmkit.ui import out

    m = r.memory
    table = Table(title=f"plan: {r.recipe} ({r.model}, {r.architecture}) on {r.device} — {r.device_name}")
    table.add_column("")
    table.add_column("", justify="right")
    table.add_column("how", style="dim")
    row = table.add_row

    def section(name: str) -> None:
        table.add_section()
        row(f"[bold]{name}[/bold]", "", "")

    section("parameters")
    row("total", f"{r.params_total:,}", f"{r.weights_dtype} weights")
    row("per token (matmuls)", f"{r.params_active:,}", "no embedding lookup; MoE: only the experts that run")
    share = r.params_trainable / max(1, r.params_total)
    row("trainable (LoRA)", f"{r.params_trainable:,}", f"{share:.2%}; " + ", ".join(r.lora_modules))
    section("memory at peak")
    row("weights", human(m.weights), r.weights_dtype)
    row("LoRA + grads + AdamW", human(m.lora), "4 x fp32 per trainable parameter")
    ck = "on" if r.gradient_checkpointing else "off"
    row(
        "activations",
        human(m.activations),
        f"{human(r.activation_bytes_per_token)}/token x {r.largest_pass_tokens:,} tokens (largest pass; "
        f"checkpointing {ck}: {human(r.activation_bytes_per_token_no_ckpt)}/token off, "
        f"{human(r.activation_bytes_per_token_ckpt)}/token on)",
    )
    row(
        "loss buffers",
        human(m.loss),
        f"{human(r.loss_bytes_per_label)}/label token x {r.largest_pass_labels:,}",
    )
    row("overhead", human(m.overhead), "allocator slack + run working set")
    row(
        "[bold]training peak[/bold]",
        f"[bold]{human(m.peak)}[/bold]",
        f"max_batch_tokens={r.max_batch_tokens or 'no limit'}",
    )
    row("runtime", human(m.runtime), "CUDA context" if r.device == "cuda" else "the process before training")
    verdict = "[green]fits[/green]" if r.fits else f"[red]short by {human(r.short_by)}[/red]"
    row("[bold]total / available[/bold]", f"{human(m.total)} / {human(r.memory_available)}", verdict)
    section("disk")
    row("adapter", human(r.disk["adapter"]), "")
    row("checkpoints", human(r.disk["checkpoints"]), "adapter + optimizer, x keep_checkpoints")
    row("merged model", human(r.disk["merged"]), "")
    row("GGUF", human(r.disk["gguf"]), "")
    section("time")
    row(
        "tokens per epoch",
        f"{r.tokens_per_epoch:,}",
        f"{r.label_tokens_per_epoch:,} answer tokens; {r.steps_per_epoch} steps",
    )
    row("FLOPs per token", f"{r.flops_per_token / 1e6:,.1f} M", "4 N + attention + output layer on labels")
    row(
        "device",
        f"{r.device_flops / 1e9:,.1f} GFLOP/s"
        if r.device_flops < 1e12
        else f"{r.device_flops / 1e12:,.1f} TFLOP/s",
        f"{r.flops_source}; x {r.efficiency:.2f} efficiency",
    )
    if r.probe:
        p = r.probe
        row(
            "probe",
            f"{p['tokens_per_s']:,.0f} tok/s",
            f"{p['steps']} real steps, {p['seconds_per_step']:.2f} s/step",
        )
    row(
        "per epoch",
        _duration(r.seconds_per_epoch),
        "from the probe" if r.probe else "estimate; --probe measures",
    )
    row("[bold]this run[/bold]", f"[bold]{_duration(r.seconds_total)}[/bold]", f"{r.steps} steps")
    if r.advice:
        section("to make it fit")
        for a in r.advice:
            row(a, "", "")
    out.print(table)


def _duration(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


# ----------------------------------------------------------------------------- out of memory mid-run


@contextlib.contextmanager
def oom_guard(recipe: Recipe, out: Path, budget: int):
    """Around train.py's loop: CUDA out of memory becomes one line with the plan's figures and the
    setting to change. Checkpoints are renamed into place only when complete, so the last one
    stays usable and `--resume` continues from it once the setting is changed."""
    try:
        yield
    except Exception as exc:
        import torch

        if not isinstance(exc, torch.cuda.OutOfMemoryError):
            raise
        raise _oom_error(recipe, out, budget, exc) from None


def _oom_error(recipe: Recipe, out: Path, budget: int, exc: Exception) -> LlmkitError:
    import torch

    from llmkit.train import TrainError, last_checkpoint

    step = 0
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        lines = (out / "metrics.jsonl").read_text().splitlines()
        step = json.loads(lines[-1])["step"] if lines else 0
    seen, total, device = "", None, None
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated()
        total = torch.cuda.get_device_properties(0).total_memory
        seen, device = f"{human(peak)} allocated at peak of {human(total)}; ", "cuda"
        torch.cuda.empty_cache()
    figures, advice = "", []
    try:
        p = plan(recipe, device=device, memory=total, measure=False)  # no GPU work now
        figures = (
            f"plan: weights {human(p.memory.weights)} + activations {human(p.memory.activations)} "
            f"({p.largest_pass_tokens:,} tokens/pass) + loss {human(p.memory.loss)} = {human(p.memory.peak)}"
        )
        advice = p.advice
    except Exception:  # the plan is a help here; never hide the out-of-memory error behind it
        pass
    if not advice:
        half = max(128, (budget or 8192) // 2)
        advice = [f"train.max_batch_tokens={half}"]
        if not recipe.train.gradient_checkpointing:
            advice.append("train.gradient_checkpointing=true")
        if not recipe.model.load_in_4bit:
            advice.append("model.load_in_4bit=true")
    ckpt = last_checkpoint(out)
    resume = (
        f"the last checkpoint ({ckpt.name}) is intact: change the recipe and rerun with --resume"
        if ckpt
        else "no checkpoint was written yet: rerun with --overwrite"
    )
    return TrainError(
        f"out of GPU memory at step {step + 1} (max_batch_tokens={budget or 'no limit'}; {seen}{figures})",
        "set " + " or ".join(advice) + f"; {resume}",
    )
