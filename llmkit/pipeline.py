"""`llmkit run RECIPE`: the one-command path, pull → train → export (→ Ollama).

Each step is the same library call its own command makes; this module only chains them,
so a failed step can be rerun on its own (`llmkit train … --resume`, `llmkit export RUN`).
"""

from __future__ import annotations

from pathlib import Path

from llmkit.ui import info


def run(recipe, overrides=(), *, resume: bool = False, overwrite: bool = False, verify: bool = False):
    """Pull the recipe's model, train it, export the run; returns the export result."""
    from llmkit.exporter import export
    from llmkit.recipe import load
    from llmkit.sources import resolve
    from llmkit.training import train

    recipe = load(recipe, list(overrides))
    info(f"[bold]1/3 pull[/bold] {recipe.model.name}")
    base_dir = resolve(recipe.model.name, revision=recipe.model.revision)
    info(f"[bold]2/3 train[/bold] → {recipe.train.output_dir}")
    run_dir: Path = train(recipe, resume=resume, overwrite=overwrite, base_dir=base_dir)  # resolved once
    info(f"[bold]3/3 export[/bold] {run_dir}")
    return export(run_dir, verify=verify)
