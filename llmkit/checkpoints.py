"""Checkpoints and the finished adapter of a training run (names and pruning: llmkit.runs).

A checkpoint holds everything a resumed run needs to continue exactly where it stopped: the
adapter's weights, optimizer, scheduler, every process's RNG states and the step reached
(state.json, written last). It is renamed into place only when complete, so a run killed at
any moment leaves either the whole checkpoint or none of it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from llmkit.errors import TrainError
from llmkit.files import atomic_dir, atomic_file, write_json
from llmkit.runs import RunLayout, last_checkpoint, prune_checkpoints


def _adapter_state(accelerator, loss_model) -> dict:
    """The adapter's weights (gathered from all processes under FSDP/DeepSpeed)."""
    from peft import get_peft_model_state_dict

    peft_model = accelerator.unwrap_model(loss_model).model
    full = accelerator.get_state_dict(loss_model)
    full = {k.removeprefix("model."): v for k, v in full.items()} if full else None
    return get_peft_model_state_dict(peft_model, state_dict=full)


def save_checkpoint(
    layout: RunLayout, step, tokens_seen, accelerator, loss_model, optimizer, scheduler, keep: int
) -> None:
    """adapter + optimizer + scheduler + RNG states + data position, renamed into place when complete."""
    from safetensors.torch import save_file

    state = _adapter_state(accelerator, loss_model)
    rng = {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    # every process has its own RNG: each stages its file, the main process moves them all in
    staged = [layout.checkpoints / f".rng-{step}-{r}.pt" for r in range(accelerator.num_processes)]
    with atomic_file(staged[accelerator.process_index], "wb") as fh:
        torch.save(rng, fh)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        with atomic_dir(layout.checkpoint(step), replace=True) as d:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in state.items()}, d / "adapter_model.safetensors"
            )
            torch.save(optimizer.state_dict(), d / "optimizer.pt")
            torch.save(scheduler.state_dict(), d / "scheduler.pt")
            for r, path in enumerate(staged):
                path.rename(d / f"rng-{r}.pt")
            write_json(
                d / "state.json",
                {"step": step, "tokens_seen": tokens_seen, "world_size": accelerator.num_processes},
            )
        prune_checkpoints(layout, keep)
    accelerator.wait_for_everyone()


def load_checkpoint(layout: RunLayout, accelerator, loss_model, optimizer, scheduler) -> tuple[int, int]:
    """Restore the last checkpoint into the prepared model and optimizer; (step, tokens seen)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    ckpt = last_checkpoint(layout.path)
    state = json.loads((ckpt / "state.json").read_text())
    if state["world_size"] != accelerator.num_processes:
        raise TrainError(
            f"{ckpt} was written by {state['world_size']} process(es), this run has "
            f"{accelerator.num_processes}",
            "resume with the same number of processes",
        )
    peft_model = accelerator.unwrap_model(loss_model).model
    set_peft_model_state_dict(peft_model, load_file(ckpt / "adapter_model.safetensors"))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng = torch.load(ckpt / f"rng-{accelerator.process_index}.pt", weights_only=True)
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    return state["step"], state["tokens_seen"]


def save_adapter(final: Path, accelerator, loss_model, tokenizer) -> None:
    """The finished adapter (PEFT format) and the tokenizer with the chat template used."""
    state = _adapter_state(accelerator, loss_model)
    if accelerator.is_main_process:
        peft_model = accelerator.unwrap_model(loss_model).model
        with atomic_dir(final, replace=True) as tmp:
            peft_model.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
