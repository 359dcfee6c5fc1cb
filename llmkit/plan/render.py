"""The plan as one rich table: parameters, memory at peak, disk, time, and the verdict."""

from __future__ import annotations

from llmkit.files import human_size
from llmkit.plan.result import PlanResult


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
    row("weights", human_size(m.weights), r.weights_dtype)
    row("LoRA + grads + AdamW", human_size(m.lora), "4 x fp32 per trainable parameter")
    ck = "on" if r.gradient_checkpointing else "off"
    row(
        "activations",
        human_size(m.activations),
        f"{human_size(r.activation_bytes_per_token)}/token x {r.largest_pass_tokens:,} tokens (largest pass; "
        f"checkpointing {ck}: {human_size(r.activation_bytes_per_token_no_ckpt)}/token off, "
        f"{human_size(r.activation_bytes_per_token_ckpt)}/token on)",
    )
    row(
        "loss buffers",
        human_size(m.loss),
        f"{human_size(r.loss_bytes_per_label)}/label token x {r.largest_pass_labels:,}",
    )
    row("overhead", human_size(m.overhead), "allocator slack + run working set")
    row(
        "[bold]training peak[/bold]",
        f"[bold]{human_size(m.peak)}[/bold]",
        f"max_batch_tokens={r.max_batch_tokens or 'no limit'}",
    )
    row(
        "runtime",
        human_size(m.runtime),
        "CUDA context" if r.device == "cuda" else "the process before training",
    )
    verdict = "[green]fits[/green]" if r.fits else f"[red]short by {human_size(r.short_by)}[/red]"
    row(
        "[bold]total / available[/bold]", f"{human_size(m.total)} / {human_size(r.memory_available)}", verdict
    )
    section("disk")
    row("adapter", human_size(r.disk["adapter"]), "")
    row("checkpoints", human_size(r.disk["checkpoints"]), "adapter + optimizer, x keep_checkpoints")
    row("merged model", human_size(r.disk["merged"]), "")
    row("GGUF", human_size(r.disk["gguf"]), "")
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
