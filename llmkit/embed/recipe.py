"""Embedding recipes: one YAML that runs embed → classify → cluster (see recipes/embed/).

A schema of its own (the training recipe's sections do not apply), loaded like a training
recipe by `llmkit.recipe`: a path or a shipped name (`topics`), `a.b=value` overrides, and
every problem listed at once as `path.to.key: message` with the nearest key for a typo.

The path rule (the same as for training recipes):
- input paths (`embed.input`, `classify.data`) resolve against the recipe file's folder; a
  relative path that exists as written from the current directory is used as it is; `hf:NAME`
  (a Hugging Face dataset) is not a path;
- output paths (`embed.output`, `classify.output`, `cluster.plot`) resolve against the current
  directory (or `base`), so a shipped recipe never writes inside the installed package.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmkit.readers import HF_PREFIX
from llmkit.recipe import KINDS, RecipeBase, load_any

SHIPPED = KINDS["embed"]  # the shipped embedding recipes (package data in a wheel)


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


class EmbedRecipe(RecipeBase):
    """An embedding recipe."""

    kind: ClassVar[str] = "embed"
    example: ClassVar[str] = "topics"

    name: str
    encoder: EncoderSection = EncoderSection()
    embed: EmbedSection
    classify: ClassifySection | None = None
    cluster: ClusterSection | None = None

    def input_path(self, value: str) -> Path:
        """An input path resolved by the path rule; `hf:NAME` is kept as written (the readers
        recognise it by its text)."""
        return Path(value) if value.startswith(HF_PREFIX) else self.resolve_input(value)

    def inputs(self) -> dict[str, Path]:
        found = {"embed.input": self.embed.input}
        if self.classify:
            found["classify.data"] = self.classify.data
        return {k: self.input_path(v) for k, v in found.items() if not v.startswith(HF_PREFIX)}


def load(recipe: str | Path | EmbedRecipe | dict, overrides: list[str] | tuple[str, ...] = ()) -> EmbedRecipe:
    """Load an embedding recipe by path or shipped name, apply overrides, validate."""
    return load_any(recipe, overrides, kind="embed")


def run(
    path: str | Path | EmbedRecipe | dict,
    base: Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict:
    """Run a recipe's steps in order; returns each step's summary.

    Inputs resolve against the recipe file's folder, outputs against `base` (default: the
    current directory)."""
    from llmkit.embed import classify, cluster, job

    recipe = load(path, overrides)

    def out(p: str) -> Path:
        return recipe.resolve_output(p, base)

    enc, e = recipe.encoder, recipe.embed
    result = job.embed_file(
        recipe.input_path(e.input),
        out(e.output),
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
            recipe.input_path(c.data),
            out(c.output),
            text_column=c.text_column,
            label_column=c.label_column,
            model=enc.model,
            backend=enc.backend,
            precision=enc.precision,
            test_size=c.test_size,
            force=True,
        )
        summary["classify"] = {"output": str(out(c.output)), **config["held_out"]}
    if recipe.cluster:
        k = recipe.cluster
        summary["cluster"] = cluster.cluster(
            out(e.output), k.k, plot=out(k.plot) if k.plot else None, top=k.top
        )
    return summary
