"""Embedding recipes: load one (by path or shipped name, with `a.b=value` overrides) and run its
steps, embed → classify → cluster (see recipes/embed/). The schema is schema.py.
"""

from __future__ import annotations

from pathlib import Path

from llmkit.embedding.schema import EmbedRecipe
from llmkit.recipe import KINDS, load_any

__all__ = ["SHIPPED", "EmbedRecipe", "load", "run"]
SHIPPED = KINDS["embed"]  # the shipped embedding recipes (package data in a wheel)


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
    from llmkit.embedding import classify, cluster, embed_file

    recipe = load(path, overrides)

    def out(p: str) -> Path:
        return recipe.resolve_output(p, base)

    enc, e = recipe.encoder, recipe.embed
    result = embed_file(recipe.input_path(e.input), out(e.output), recipe.job_options())
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
