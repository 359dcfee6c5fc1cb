"""`plan(recipe)`: the prediction itself (see the package docstring for the formulas)."""

from __future__ import annotations

from pathlib import Path

from llmkit.attention import exact_for
from llmkit.errors import DoesNotFit, InvalidArgument
from llmkit.files import human_size
from llmkit.methods.config import longest_sequence
from llmkit.plan.advice import advise
from llmkit.plan.config import _text_config, model_config
from llmkit.plan.layout import _layout, _prepare_data
from llmkit.plan.memory import (
    _device_memory,
    _parse_size,
    activation_bytes_per_token,
    disk_model,
    loss_bytes_per_label,
    memory_model,
)
from llmkit.plan.params import count_parameters
from llmkit.plan.probe import run_probe
from llmkit.plan.result import PlanResult
from llmkit.plan.timing import CPU_BF16_EFFICIENCY, EFFICIENCY, device_flops, flops_per_token
from llmkit.recipe import Recipe, load

# Decoding one token at a time reaches a small share of the matmul rate training gets (weights are
# read for every token); with the KV cache and a group of 8 answers per pass: assumed, not measured.
DECODE_SHARE = 0.25


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
    from llmkit.sources import check_reference

    loaded = load(recipe, list(overrides))
    check_reference(loaded.model.name)  # before devices.detect() imports torch
    if device not in (None, "cpu", "cuda", "mps"):
        raise InvalidArgument(f"--device {device}: unknown device", "use cpu, cuda or mps")
    requested = _parse_size(memory) if memory is not None else None  # a bad --memory: also before
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
    available = requested if requested is not None else _device_memory(device, here)

    config, tokenizer = model_config(loaded)
    arch = _text_config(config)
    counts = count_parameters(config, loaded)
    dataset = _prepare_data(loaded, tokenizer)
    budget = t.max_batch_tokens if t.max_batch_tokens is not None else (1024 if device == "cpu" else 0)
    longest = longest_sequence(loaded)
    flat = (
        device == "cpu" and not loaded.model.attn_implementation and exact_for(arch, counts["attn"], longest)
    )
    layout = _layout(dataset.train, loaded, budget, flat)

    act = precision if precision in ("bf16", "fp16") else "fp32"
    wdtype = "nf4" if loaded.model.load_in_4bit else act
    # CPU bf16 keeps an fp32 residual stream (lora.fp32_lora_sums): activations as in fp32
    act_memory = "fp32" if device == "cpu" else act
    from llmkit.gated_mlp import wanted  # here: a mistyped model fails above, before torch loads

    gated = counts["gated_mlp_width"] if wanted(device, act) else 0
    per_token = {
        gc: activation_bytes_per_token(
            arch,
            loaded,
            act_memory,
            gc,
            counts,
            layout["pass_width"],
            flat,
            cpu=device == "cpu",
            gated_width=gated,
        )
        for gc in (False, True)
    }
    gc = t.gradient_checkpointing
    loss_per_label = loss_bytes_per_label(arch, act, device, counts.get("plain_head", False))
    mem = memory_model(counts, arch, wdtype, act, per_token[gc], loss_per_label, layout, device)

    flops_tok = flops_per_token(counts, arch, layout, train_base=False)
    dev_flops, source = device_flops(device, act, arch, here and measure, hw.name)
    base_eff = CPU_BF16_EFFICIENCY if (device, act) == ("cpu", "bf16") else EFFICIENCY[device]
    eff = base_eff * (0.75 if gc else 1.0)  # recomputing the forward costs ~1/3 more
    work = layout["tokens_per_epoch"] * flops_tok
    if t.method == "dpo":  # the reference: one more forward pass (2N of LoRA's 4N per token)
        work *= 1.5
    sec_epoch = work / (dev_flops * eff)
    if t.method == "grpo":  # sampling: each answer token is a decode step (2N), memory-bound
        g = loaded.grpo
        decoded = len(dataset.train) * g.num_generations * g.max_completion_length
        sec_epoch += decoded * 2 * counts["body_active"] / (dev_flops * eff * DECODE_SHARE)
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
        f"{result.recipe} needs {human_size(m.total)} on {result.device} but {human_size(result.memory_available)} "
        f"is available: {human_size(result.short_by)} short, mostly {biggest} ({human_size(parts[biggest])})",
        "; ".join(result.advice) or "use a smaller model or a device with more memory",
        result,
    )


def _auto(requested: str, default: str) -> str:
    return default if requested == "auto" else requested


def _named_device(device: str) -> str:
    return {"cuda": "CUDA GPU (not on this machine)", "mps": "Apple MPS (not on this machine)"}.get(
        device, device
    )
