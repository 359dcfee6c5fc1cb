"""Recipes: the YAML a user writes to train and export a model.

A recipe has five sections (`model`, `data`, `lora`, `train`, `export`). Unknown keys and
wrong types are errors, all reported at once as `path.to.key: message`, with the nearest
valid key suggested for a typo. `a.b=value` overrides are applied before validation.
"""

from __future__ import annotations

import difflib
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmkit.errors import RecipeError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"  # a link to the top-level recipes/ in a checkout


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    name: str = Field(
        description="Model reference: HF repo id[@rev], local dir, .gguf, ollama:NAME, or built-in name."
    )
    revision: str | None = Field(None, description="Hub branch, tag or commit.")
    trust_remote_code: bool = Field(
        False, description="Run code shipped with the model (only if you trust it)."
    )
    chat_template: str | None = Field(
        None, description="Jinja chat template (inline or a file path) for models that have none."
    )
    load_in_4bit: bool = Field(
        False, description="QLoRA: load the base in 4-bit NF4 (CUDA + bitsandbytes only)."
    )
    attn_implementation: str | None = Field(None, description="e.g. sdpa, eager, flash_attention_2.")


class DataSection(_Section):
    path: str = Field(description="Dataset file (.jsonl/.json/.csv/.parquet/.txt) or HF dataset name.")
    config: str | None = Field(None, description="HF dataset config name.")
    split: str = Field("train", description="HF dataset split.")
    format: Literal["auto", "messages", "alpaca", "prompt_completion", "text"] = "auto"
    eval_path: str | None = Field(
        None, description="Separate eval file; otherwise eval_fraction of the data."
    )
    eval_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    max_length: int = Field(
        1024, ge=8, description="Tokens per example; longer rows are counted and skipped."
    )
    packing: bool = Field(True, description="Pack several examples per sequence (no cross-attention).")
    train_on: Literal["answers", "all"] = Field(
        "answers", description="Loss on assistant answers only, or on all tokens."
    )
    system: str | None = Field(None, description="System prompt added to conversations that have none.")
    limit: int | None = Field(None, ge=1, description="Use only the first N rows (quick trials).")


class LoraSection(_Section):
    r: int = Field(16, ge=1)
    alpha: float = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"
    use_dora: bool = False
    use_rslora: bool = False


class TrainSection(_Section):
    output_dir: str = Field("runs/run", description="Run directory (adapter, checkpoints, metrics).")
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides epochs)."
    )
    batch_size: int = Field(4, ge=1, description="Sequences per micro-batch.")
    max_batch_tokens: int | None = Field(
        None,
        ge=0,
        description="Most tokens (rows x width) per forward/backward pass; a larger micro-batch runs "
        "in pieces with the same gradients, so memory stays bounded. Unset: 1024 on CPU (as fast "
        "as bigger passes there), no limit on GPUs. 0: no limit.",
    )
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_grad_norm: float = Field(1.0, ge=0.0, description="0 disables clipping.")
    seed: int = 42
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    eval_every: int = Field(50, ge=0, description="Steps between eval-loss runs (0 = only at the end).")
    save_every: int = Field(50, ge=0, description="Steps between checkpoints (0 = only at the end).")
    log_every: int = Field(1, ge=1)
    keep_checkpoints: int = Field(2, ge=1)


class ExportSection(_Section):
    gguf: Literal[
        "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
        "q4_k_m", "q4_k_s", "q5_k_m", "q5_k_s", "q6_k", "q3_k_m", "q2_k",
    ] = "f16"  # fmt: skip
    ollama: str | None = Field(None, description="Ollama model name to create.")
    quantize: Literal["q8_0", "q4_K_S", "q4_K_M"] | None = Field(
        None, description="Server-side Ollama quantization."
    )
    system: str | None = None
    template: str | None = Field(
        None, description="Go template file for Ollama, when the chat template is unknown."
    )
    parameters: dict[str, Any] = Field(default_factory=dict, description="Extra Ollama PARAMETERs.")


class Recipe(_Section):
    name: str | None = Field(None, description="A short name for the run.")
    description: str | None = None
    model: ModelSection
    data: DataSection
    lora: LoraSection = Field(default_factory=LoraSection)
    train: TrainSection = Field(default_factory=TrainSection)
    export: ExportSection = Field(default_factory=ExportSection)

    # where the recipe came from: relative data paths resolve against it
    _source: Path | None = None

    def resolve_path(self, value: str) -> Path:
        """A path from the recipe, relative to the recipe's file if not absolute and not in the CWD."""
        p = Path(value).expanduser()
        if p.is_absolute() or p.exists() or self._source is None:
            return p
        return self._source.parent / p


# ----------------------------------------------------------------------------- loading


@dataclass
class ShippedRecipe:
    name: str
    path: Path
    summary: str


def shipped_recipes() -> list[ShippedRecipe]:
    out = []
    for path in sorted(RECIPES_DIR.glob("*.yaml")):
        first = path.read_text().splitlines()[:1]
        summary = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
        out.append(ShippedRecipe(path.stem, path, summary))
    return out


def find(name_or_path: str | Path) -> Path:
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    shipped = RECIPES_DIR / f"{name_or_path}.yaml"
    if shipped.is_file():
        return shipped
    names = [r.name for r in shipped_recipes()]
    near = difflib.get_close_matches(str(name_or_path), names, n=1)
    hint = f"did you mean '{near[0]}'?" if near else f"shipped recipes: {', '.join(names)}"
    raise RecipeError(f"recipe not found: {name_or_path}", hint)


def parse_yaml(text: str, where: str) -> dict:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        pos = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{where}{pos}: invalid YAML: {problem}", "check indentation and quoting") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_overrides(data: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """Apply `a.b=value` overrides; values are parsed as YAML (so 1e-4, true, [q,v] work)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(
                f"bad override '{item}'", "write overrides as section.key=value, e.g. train.lr=1e-4"
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[parts[-1]] = value
    return data


def validate(data: dict, where: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(err, data) for err in exc.errors()]
        raise RecipeError(
            f"{where}: {len(lines)} problem{'s' if len(lines) > 1 else ''}:\n  " + "\n  ".join(lines),
            "`llmkit recipes show tiny` prints a complete recipe with every key",
        ) from None


def load(recipe: str | Path | Recipe | dict, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a recipe by shipped name, path, dict or Recipe, apply overrides, validate."""
    if isinstance(recipe, Recipe):
        if not overrides:
            return recipe
        source = recipe._source
        data = recipe.model_dump()
        where = str(source or "recipe")
    elif isinstance(recipe, dict):
        source, data, where = None, dict(recipe), "recipe"
    else:
        source = find(recipe)
        where = str(source)
        data = parse_yaml(source.read_text(), where)
    result = validate(apply_overrides(data, list(overrides)), where)
    result._source = source.resolve() if source else None
    return result


def dump(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def copy(name: str, dest: Path, *, force: bool = False) -> Path:
    src = find(name)
    dest = Path(dest)
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not force:
        raise RecipeError(f"{dest} already exists", "pass --force to overwrite it")
    shutil.copyfile(src, dest)
    return dest


# ----------------------------------------------------------------------------- error text


def _describe(err: dict, data: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    path = ".".join(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        fields = list(model.model_fields) if model else []
        near = difflib.get_close_matches(loc[-1], fields, n=1, cutoff=0.5)
        hint = (
            f"did you mean '{'.'.join(loc[:-1] + [near[0]])}'?"
            if near
            else f"valid keys: {', '.join(fields)}"
        )
        return f"{path}: unknown key ({hint})"
    if kind == "missing":
        return f"{path}: required key is missing"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a mapping"
    return f"{path}: {err['msg']} (got {shown})"


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] = Recipe
    for part in loc:
        field = model.model_fields.get(part)
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return None
        model = ann
    return model
