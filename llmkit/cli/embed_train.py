"""`llmkit embed train RECIPE [a.b=value ...]`: parse → llmkit.embedding.train → render.

Reached through the `embed` command (its first argument `train`), so `llmkit embed FILE` and
`llmkit embed train RECIPE` read as one command group.
"""

from __future__ import annotations

import typer

from llmkit.cli._app import _print_json
from llmkit.errors import InvalidArgument


def embed_train(args: list[str], *, resume: bool, overwrite: bool, json_out: bool) -> None:
    from llmkit.embedding import train_eval
    from llmkit.embedding.train import train

    if not args:
        raise InvalidArgument(
            "missing RECIPE",
            "e.g. llmkit embed train minilm-support (shipped) or my-recipe.yaml train.epochs=2",
        )
    recipe, overrides = args[0], args[1:]
    bad = [a for a in overrides if "=" not in a]
    if bad:
        raise InvalidArgument(f"unexpected arguments {' '.join(bad)!r}", "overrides are a.b=value")
    info = train(recipe, overrides, resume=resume, overwrite=overwrite)
    if json_out:
        return _print_json(info)
    e = info["evaluation"]
    typer.echo(train_eval.table(e["before"], e["after"], e["k"]))
    typer.echo(
        f"encoder → {info['run_dir']}/{info['encoder']} ({info['steps']} steps, {info['train_seconds']} s); "
        f"use it with --model {info['run_dir']}"
    )
