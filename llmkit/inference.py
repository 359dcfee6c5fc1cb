"""A model, or a training run (base + adapter), loaded for inference: `llmkit chat`, `llmkit eval`.

Here, not in llmkit.runs, because it resolves model references (llmkit.sources), which itself
recognises run directories by llmkit.runs' contract: the contract stays a leaf.
"""

from __future__ import annotations

from pathlib import Path

from llmkit.runs import Run, RunLayout, open_run, read_info


def run_base_dir(run: Run) -> Path:
    """The base model the adapter was trained on: the dir recorded in run.json if it is
    still there (no network needed), else the recipe's model reference resolved again."""
    from llmkit.sources import check_model_dir, resolve

    recorded = read_info(run.path).get("base_path")
    if recorded and Path(recorded).is_dir():
        return check_model_dir(Path(recorded))
    return resolve(run.recipe.model.name, revision=run.recipe.model.revision)


def load_for_inference(ref: str | Path, *, dtype=None, merge: bool = False, device: str | None = None):
    """(model, tokenizer) for a model reference or a run dir (base + adapter), in eval mode.

    On the best device here (CUDA/MPS/CPU) unless `device` is given; fp32 unless `dtype` is.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.ui import quiet_transformers

    quiet_transformers()
    dtype = dtype or torch.float32
    if RunLayout(ref).recipe.is_file():
        run = open_run(ref)
        base = run_base_dir(run)
        trust = run.recipe.model.trust_remote_code
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, trust_remote_code=trust)
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, run.adapter_dir)
        if merge:
            model = model.merge_and_unload()
        tok_dir = run.adapter_dir if (run.adapter_dir / "tokenizer_config.json").is_file() else base
        tokenizer = AutoTokenizer.from_pretrained(tok_dir, trust_remote_code=trust)
    else:
        from llmkit.sources import resolve

        base = resolve(str(ref))
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(base)
    from llmkit.devices import detect, use_free_cpus

    if device is None:
        device = detect().device
    if device == "cpu":
        use_free_cpus()
    model.to(device).eval()
    return model, tokenizer
