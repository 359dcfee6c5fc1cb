"""Reading a training run directory: the resolved recipe, the base model and the adapter.

Shared by `chat` and `export` so neither needs to import the training code.
Layout (written by llmkit.train): recipe.yaml, run.json, adapter/ (PEFT), checkpoints/, …
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import SourceError


@dataclass
class Run:
    path: Path
    recipe: object  # llmkit.recipe.Recipe
    adapter_dir: Path

    @property
    def base_ref(self) -> str:
        return self.recipe.model.name

    def base_dir(self) -> Path:
        """The base model the adapter was trained on: the dir recorded in run.json if it is
        still there (no network needed), else the recipe's model reference resolved again."""
        import json

        from llmkit.sources import check_model_dir, resolve

        info = self.path / "run.json"
        recorded = json.loads(info.read_text()).get("base_path") if info.is_file() else None
        if recorded and Path(recorded).is_dir():
            return check_model_dir(Path(recorded))
        return resolve(self.recipe.model.name, revision=self.recipe.model.revision)


def is_run_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / "recipe.yaml").is_file() and (p / "adapter").is_dir()


def open_run(path: str | Path) -> Run:
    from llmkit.recipe import load

    p = Path(path)
    if not is_run_dir(p):
        raise SourceError(f"{p} is not a training run directory (no recipe.yaml + adapter/)")
    if not (p / "adapter" / "adapter_config.json").is_file():
        raise SourceError(
            f"{p}/adapter holds no finished adapter", "the run may still be training, or failed; try --resume"
        )
    return Run(path=p, recipe=load(p / "recipe.yaml"), adapter_dir=p / "adapter")


def load_for_inference(ref: str | Path, *, dtype=None, merge: bool = False, device: str | None = None):
    """(model, tokenizer) for a model reference or a run dir (base + adapter), in eval mode.

    On the best device here (CUDA/MPS/CPU) unless `device` is given; fp32 unless `dtype` is.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.ui import quiet_transformers

    quiet_transformers()
    dtype = dtype or torch.float32
    if is_run_dir(ref):
        run = open_run(ref)
        base = run.base_dir()
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
