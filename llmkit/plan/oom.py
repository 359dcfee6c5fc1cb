"""Out of GPU memory mid-run (train.py's loop): one line with the plan's figures and what to change."""

from __future__ import annotations

import contextlib
from pathlib import Path

from llmkit.errors import LlmkitError
from llmkit.files import human_size
from llmkit.recipe import Recipe


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

    from llmkit.errors import TrainError
    from llmkit.plan.predict import plan
    from llmkit.runs import last_checkpoint, read_metrics

    step = 0
    with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
        rows = read_metrics(out)
        step = rows[-1]["step"] if rows else 0
    seen, total, device = "", None, None
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated()
        total = torch.cuda.get_device_properties(0).total_memory
        seen, device = f"{human_size(peak)} allocated at peak of {human_size(total)}; ", "cuda"
        torch.cuda.empty_cache()
    figures, advice = "", []
    # the plan is a help here; never hide the out-of-memory error behind a failure of its own
    with contextlib.suppress(Exception):
        p = plan(recipe, device=device, memory=total, measure=False)  # no GPU work now
        figures = (
            f"plan: weights {human_size(p.memory.weights)} + activations {human_size(p.memory.activations)} "
            f"({p.largest_pass_tokens:,} tokens/pass) + loss {human_size(p.memory.loss)} = {human_size(p.memory.peak)}"
        )
        advice = p.advice
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
