"""Embedding recipes: one YAML that runs embed → classify → cluster (see recipes/embed/).

A small schema of its own (the training recipe's sections do not apply). Relative paths are
resolved from the repository root for shipped recipes, else from the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmkit.errors import RecipeError

SHIPPED = Path(__file__).resolve().parent.parent.parent / "recipes" / "embed"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EncoderSection(_Section):
    model: str = "all-minilm-l6-v2"
    backend: Literal["auto", "torch", "onnx", "openvino", "ollama"] = "auto"
    precision: Literal["auto", "fast", "fp32", "int8", "bf16"] = "auto"
    normalize: bool = True


class EmbedSection(_Section):
    input: str
    output: str
    column: str | None = None
    id_column: str | None = None
    chunk: bool = False
    skip_bad: bool = False
    commit_every: int = Field(4096, ge=1)


class ClassifySection(_Section):
    data: str
    output: str
    text_column: str = "text"
    label_column: str = "label"
    test_size: float = Field(0.2, gt=0, lt=1)


class ClusterSection(_Section):
    k: int | Literal["auto"] = "auto"
    plot: str | None = None
    top: int = Field(3, ge=1)


class EmbedRecipe(_Section):
    name: str
    encoder: EncoderSection = EncoderSection()
    embed: EmbedSection
    classify: ClassifySection | None = None
    cluster: ClusterSection | None = None


def load(path: Path) -> EmbedRecipe:
    path = Path(path)
    if not path.is_file() and (SHIPPED / f"{path}.yaml").is_file():
        path = SHIPPED / f"{path}.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise RecipeError(
            f"cannot read embedding recipe {path}: {exc}".splitlines()[0], "check the path and YAML"
        ) from exc
    try:
        return EmbedRecipe.model_validate(data or {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise RecipeError(f"{path}: {problems}", "see recipes/embed/*.yaml for the fields") from exc


def run(path: Path, base: Path | None = None) -> dict:
    """Run a recipe's steps in order; returns each step's summary."""
    from llmkit.embed import classify, cluster, job

    recipe = load(path)
    root = base or (SHIPPED.parent.parent if Path(path).resolve().is_relative_to(SHIPPED) else Path.cwd())

    def at(p: str) -> Path:
        return Path(p) if Path(p).is_absolute() else root / p

    enc, e = recipe.encoder, recipe.embed
    result = job.embed_file(
        at(e.input),
        at(e.output),
        column=e.column,
        id_column=e.id_column,
        model=enc.model,
        backend=enc.backend,
        precision=enc.precision,
        normalize=enc.normalize,
        chunk=e.chunk,
        skip_bad=e.skip_bad,
        commit_every=e.commit_every,
    )
    summary = {"embed": result.summary()}
    if recipe.classify:
        c = recipe.classify
        config = classify.train(
            at(c.data),
            at(c.output),
            text_column=c.text_column,
            label_column=c.label_column,
            model=enc.model,
            backend=enc.backend,
            precision=enc.precision,
            test_size=c.test_size,
            force=True,
        )
        summary["classify"] = {"output": str(at(c.output)), **config["held_out"]}
    if recipe.cluster:
        k = recipe.cluster
        summary["cluster"] = cluster.cluster(
            at(e.output), k.k, plot=at(k.plot) if k.plot else None, top=k.top
        )
    return summary
