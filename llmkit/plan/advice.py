"""The settings that would make a run fit, each re-checked with the same model."""

from __future__ import annotations

from llmkit.files import human_size
from llmkit.plan.layout import _layout
from llmkit.plan.memory import ALLOCATOR_SLACK, CPU_WORKING_SET, CUDA_CONTEXT
from llmkit.plan.result import PlanResult


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
                out.append(f"model.load_in_4bit=true (weights {human_size(m.weights)} → {human_size(nf4)})")
        out.append(
            f"the weights alone ({human_size(m.weights)}) do not fit in {human_size(room)}: use a smaller model"
        )
        return out
    if not result.gradient_checkpointing:
        ck = peak_with(
            result.activation_bytes_per_token_ckpt, result.largest_pass_tokens, result.largest_pass_labels
        )
        if ck <= room:
            out.append(f"train.gradient_checkpointing=true (peak {human_size(m.peak)} → {human_size(ck)})")
    for budget in (4096, 2048, 1024, 512, 256, 128):
        if result.max_batch_tokens and budget >= result.max_batch_tokens:
            continue
        lay = _layout(examples, recipe, budget, layout.get("padding_free", False))
        pk = peak_with(result.activation_bytes_per_token, lay["pass_tokens"], lay["pass_labels"])
        if pk <= room:
            out.append(f"train.max_batch_tokens={budget} (peak {human_size(m.peak)} → {human_size(pk)})")
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
            out.append(f"model.load_in_4bit=true (weights {human_size(m.weights)} → {human_size(nf4)})")
    if recipe.lora.r > 8 and m.lora > 0.1 * m.peak:
        out.append(
            f"lora.r={recipe.lora.r // 2} (LoRA + optimizer {human_size(m.lora)} → {human_size(m.lora // 2)})"
        )
    return out
