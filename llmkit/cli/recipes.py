"""`llmkit recipes …`: list, show, validate and copy recipes, training and embedding alike."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmkit.cli._app import _print_json, app

recipes_app = typer.Typer(help="List, show, validate and copy recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")


@recipes_app.command("list")
def recipes_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the recipes shipped with llmkit (kind: train or embed)."""
    from llmkit.recipe import shipped_recipes

    items = shipped_recipes()
    if json_out:
        return _print_json(
            [{"name": r.name, "kind": r.kind, "path": str(r.path), "summary": r.summary} for r in items]
        )
    from rich.table import Table

    from llmkit.ui import out

    table = Table("name", "kind", "summary", "path")
    for r in items:
        table.add_row(r.name, r.kind, r.summary, str(r.path))
    out.print(table)


@recipes_app.command("show")
def recipes_show(
    recipe: Annotated[str, typer.Argument(help="Recipe name or YAML path (training or embedding).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="a.b=value overrides")] = None,
) -> None:
    """Print a recipe with every default filled in and overrides applied."""
    from llmkit.recipe import dump, load_any

    typer.echo(dump(load_any(recipe, overrides or [])), nl=False)


@recipes_app.command("validate")
def recipes_validate(
    recipes: Annotated[list[str], typer.Argument(help="Recipe names or YAML paths.")],
) -> None:
    """Validate recipes; every problem is listed as path.to.key: message."""
    from llmkit.recipe import load_any

    for name in recipes:
        recipe = load_any(name)
        typer.echo(f"ok: {name} ({recipe.kind})")


@recipes_app.command("copy")
def recipes_copy(
    recipe: Annotated[str, typer.Argument(help="Shipped recipe name (training or embedding).")],
    dest: Annotated[Path, typer.Argument(help="Where to write the copy.")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Copy a shipped recipe to edit it (its input paths are relative to the file: point them at your data)."""
    from llmkit.recipe import copy

    typer.echo(str(copy(recipe, dest, force=force)))
