"""Recipes: the YAML a user writes to train (`llmkit train`) or to embed (`llmkit embed`).

One loader for both kinds: `find` (a path, or a shipped name) → parse the YAML → apply
`a.b=value` overrides (values parsed as YAML) → validate against the kind's schema (`Recipe`
below; `llmkit.embedding.schema.EmbedRecipe`). Unknown keys and wrong types are errors, all
reported at once as `path.to.key: message`, with the nearest valid key suggested for a typo
(`llmkit.recipe_errors`).

Shipped recipes are read from `llmkit/recipes/` (a link to the top-level `recipes/` in a
checkout, package data in a wheel): training recipes are `*.yaml`, embedding recipes
`embed/*.yaml`. A shipped name (`tiny`, `topics`, `topics.yaml`, `embed/topics`) finds either.

The path rule, the same for both kinds:
- input paths (data files, eval files, templates, embed input, classify data) resolve against
  the recipe file's folder, so a recipe and its data travel together; a relative path that
  exists as written from the current directory (an override such as `data.path=my.jsonl`) is
  used as it is;
- output paths (train.output_dir, embed output, classifier output, cluster plot) resolve
  against the current directory, so a shipped recipe never writes inside the installed package.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from llmkit.errors import RecipeError
from llmkit.exporter import types as gguf_types
from llmkit.exporter.types import NAMES as GGUF_NAMES
from llmkit.exporter.types import OLLAMA_QUANTIZE
from llmkit.methods.config import METHODS, SECTIONS, DpoSection, GrpoSection, OrpoSection
from llmkit.recipe_base import KINDS, RECIPES_DIR, RecipeBase  # noqa: F401  (RECIPES_DIR re-exported)
from llmkit.recipe_errors import render


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
    sample_by: Literal["line", "paragraph", "document"] = Field(
        "line",
        description="How a .txt data file is split into examples: one a line, one a blank-line "
        "separated paragraph, or the whole file as one.",
    )
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
    method: Literal[METHODS] = Field(  # type: ignore[valid-type]
        "sft",
        description="How the model is taught: sft (imitate answers), dpo / orpo (prefer chosen over "
        "rejected answers), grpo (sample answers, score them with reward functions).",
    )
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
    gguf: Literal[GGUF_NAMES] = Field(  # type: ignore[valid-type]
        "f16", description="GGUF type, any case: " + gguf_types.help_text() + "."
    )
    ollama: str | None = Field(None, description="Ollama model name to create.")
    quantize: Literal[OLLAMA_QUANTIZE] | None = Field(  # type: ignore[valid-type]
        None, description="Server-side Ollama quantization, any case: " + ", ".join(OLLAMA_QUANTIZE) + "."
    )
    system: str | None = None
    template: str | None = Field(
        None, description="Go template file for Ollama, when the chat template is unknown."
    )
    parameters: dict[str, Any] = Field(default_factory=dict, description="Extra Ollama PARAMETERs.")

    # Any case, as on the command line: Q8_0 → q8_0, q4_k_m → Ollama's q4_K_M.
    @field_validator("gguf", mode="before")
    @classmethod
    def _gguf_case(cls, value):
        return gguf_types.normalize(value)

    @field_validator("quantize", mode="before")
    @classmethod
    def _quantize_case(cls, value):
        return gguf_types.normalize_quantize(value)


class Recipe(RecipeBase):
    """A training recipe."""

    kind: ClassVar[str] = "train"
    example: ClassVar[str] = "tiny"

    name: str | None = Field(None, description="A short name for the run.")
    description: str | None = None
    model: ModelSection
    data: DataSection
    lora: LoraSection = Field(default_factory=LoraSection)
    train: TrainSection = Field(default_factory=TrainSection)
    dpo: DpoSection | None = Field(None, description="DPO settings (train.method: dpo).")
    orpo: OrpoSection | None = Field(None, description="ORPO settings (train.method: orpo).")
    grpo: GrpoSection | None = Field(None, description="GRPO settings and rewards (train.method: grpo).")
    export: ExportSection = Field(default_factory=ExportSection)

    @model_validator(mode="after")
    def _method_section(self) -> Recipe:
        method = self.train.method
        for name, section in SECTIONS.items():
            if name != method and section is not None and getattr(self, name) is not None:
                raise ValueError(
                    f"{name}: this section is for train.method={name}, but train.method is {method} "
                    f"(set train.method={name}, or remove the {name} section)"
                )
        if SECTIONS[method] is not None and getattr(self, method) is None:
            if method == "grpo":
                raise ValueError(
                    "grpo: train.method is grpo, so the recipe needs a grpo section with rewards"
                )
            setattr(self, method, SECTIONS[method]())
        return self

    def inputs(self) -> dict[str, Path]:
        from llmkit.readers import FORMATS, HF_PREFIX

        found = {}
        for key, value in (("data.path", self.data.path), ("data.eval_path", self.data.eval_path)):
            if value and not value.startswith(HF_PREFIX) and Path(value).suffix.lower() in FORMATS:
                found[key] = self.resolve_input(value)
        if self.model.name.endswith(".gguf"):
            found["model.name"] = self.resolve_input(self.model.name)
        template = self.model.chat_template  # inline Jinja or a file
        if template and "{" not in template and "\n" not in template:
            found["model.chat_template"] = self.resolve_input(template)
        if self.export.template and self.export.template not in ("native", "go"):
            found["export.template"] = self.resolve_input(self.export.template)
        return found


# ----------------------------------------------------------------------------- loading


@dataclass
class ShippedRecipe:
    name: str
    path: Path
    summary: str
    kind: str = "train"


def shipped_recipes(kind: str | None = None) -> list[ShippedRecipe]:
    """The recipes shipped with llmkit, training ones first; `kind` keeps one kind."""
    out = []
    for k, folder in KINDS.items():
        if kind not in (None, k):
            continue
        for path in sorted(folder.glob("*.yaml")):
            first = path.read_text(encoding="utf-8").splitlines()[:1]
            summary = first[0].lstrip("# ").strip() if first and first[0].startswith("#") else ""
            if k == "embed" and re.search(r"(?m)^loss:", path.read_text(encoding="utf-8")):
                k_found = "embed-train"  # trains an encoder: shipped in the same folder
            else:
                k_found = k
            out.append(ShippedRecipe(path.stem, path, summary, k_found))
    return out


def find(name_or_path: str | Path, kind: str | None = None) -> Path:
    """A recipe file: a path, or a shipped name (`tiny`, `topics.yaml`, `embed/topics`).

    A name shipped as both kinds resolves to `kind` (default: training)."""
    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    name = str(name_or_path).removesuffix(".yaml").removesuffix(".yml")
    order = sorted(KINDS, key=lambda k: k != (kind or "train"))
    for k in order:
        stem = name.removeprefix(f"{k}/") if k != "train" else name
        shipped = KINDS[k] / f"{stem}.yaml"
        if "/" not in stem and shipped.is_file():
            return shipped
    names = [r.name for r in shipped_recipes()]
    near = difflib.get_close_matches(Path(name).name, names, n=1)
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


def schema_for(kind: str) -> type[RecipeBase]:
    if kind == "embed-train":
        # light too (pydantic, readers' format table, the encoders' choices); the trainer is elsewhere
        from llmkit.embedding.train_schema import EmbedTrainRecipe

        return EmbedTrainRecipe
    if kind == "embed":
        # a light module (pydantic, the encoders' choice tables): it leads back to nothing here
        from llmkit.embedding.schema import EmbedRecipe

        return EmbedRecipe
    return Recipe


def kind_of(data: dict, source: Path | None = None) -> str:
    """Which kind a recipe is: from its shipped folder, else from its sections. Training an
    encoder (`llmkit embed train`) ships beside the embedding recipes and is told by its `loss:`."""
    if "loss" in data and "embed" not in data:
        return "embed-train"
    if source is not None and source.resolve().parent == KINDS["embed"].resolve():
        return "embed"
    return "embed" if "embed" in data and "model" not in data else "train"


def validate(data: dict, where: str = "recipe", kind: str = "train") -> Any:
    schema = schema_for(kind)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        hint = f"`llmkit recipes show {schema.example}` prints a complete {_label(kind)} with every key"
        raise render(exc, schema, where, hint) from None


def load_any(
    recipe: str | Path | RecipeBase | dict,
    overrides: list[str] | tuple[str, ...] = (),
    *,
    kind: str | None = None,
) -> Any:
    """Load a recipe of either kind (by shipped name, path, dict or model), apply overrides,
    validate. `kind` insists on one kind; None takes the kind the recipe is."""
    if isinstance(recipe, RecipeBase):
        if kind not in (None, recipe.kind):
            raise _wrong_kind(str(recipe.source or "recipe"), recipe.kind, kind)
        if not overrides:
            return recipe
        source, data, found = recipe.source, recipe.model_dump(), recipe.kind
    elif isinstance(recipe, dict):
        source, data = None, dict(recipe)
        found = kind_of(data)
    else:
        source = find(recipe, kind)
        data = parse_yaml(source.read_text(encoding="utf-8"), str(source))
        found = kind_of(data, source)
    where = str(source or "recipe")
    if kind not in (None, found):
        raise _wrong_kind(where, found, kind)
    result = validate(apply_overrides(data, list(overrides)), where, found)
    result._source = source.resolve() if source else None
    return result


def load(recipe: str | Path | Recipe | dict, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Load a training recipe by shipped name, path, dict or Recipe, apply overrides, validate."""
    return load_any(recipe, overrides, kind="train")


def dump(recipe: RecipeBase) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def copy(name: str, dest: Path, *, force: bool = False) -> Path:
    """Copy a recipe of either kind to `dest` (a file or a folder) to edit it."""
    from llmkit.files import atomic_file, check_writable

    src = find(name)
    dest = check_writable(Path(dest), "recipe copy")
    if dest.is_dir():
        dest = dest / src.name
    if dest.exists() and not force:
        raise RecipeError(f"{dest} already exists", "pass --force to overwrite it")
    with atomic_file(dest, "wb") as fh:
        fh.write(src.read_bytes())
    return dest


def _label(kind: str) -> str:
    return {"embed": "embedding recipe", "embed-train": "embedding-training recipe"}.get(
        kind, "training recipe"
    )


def _wrong_kind(where: str, found: str, wanted: str) -> RecipeError:
    article = {"embed": "an", "embed-train": "an", "train": "a"}
    command = {"embed": "llmkit embed", "embed-train": "llmkit embed train"}.get(found, "llmkit train")
    run = f"{command} {where}"
    return RecipeError(
        f"{where} is {article[found]} {_label(found)}, not {article[wanted]} {_label(wanted)}",
        f"run it with `{run}`",
    )
