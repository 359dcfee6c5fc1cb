"""`llmkit eval`: score a model's greedy answers with a recipe's rewards, as trained and as served."""

from __future__ import annotations

from typing import Annotated

import typer

from llmkit.cli._app import _print_json, app


@app.command("eval")
def eval_command(
    model: Annotated[str, typer.Argument(help="A training run dir, or a model reference.")],
    rewards: Annotated[
        str, typer.Option("--rewards", help="A GRPO recipe whose grpo.rewards score the answers.")
    ],
    prompts: Annotated[
        str | None, typer.Option("--prompts", help="Prompts file (default: the recipe's data.eval_path).")
    ] = None,
    backend: Annotated[
        list[str] | None,
        typer.Option(
            "--backend", help="transformers, llama.cpp or ollama; repeat to compare (default: transformers)."
        ),
    ] = None,
    ollama_model: Annotated[
        str | None, typer.Option("--ollama", help="Ollama model (default: the run's export.ollama).")
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="Score only the first N prompts.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Mean reward of greedy answers to held-out prompts, per backend. Exits 1 when a served
    backend's reward is more than 1 point (of 100) from the trained model's."""
    from llmkit.evaluate import evaluate

    report = evaluate(
        model, rewards, prompts=prompts, backends=tuple(backend or ["transformers"]), limit=limit,
        ollama_model=ollama_model,
    )  # fmt: skip
    if json_out:
        _print_json(report.as_dict())
    else:
        from rich.console import Console
        from rich.table import Table

        names = list(report.scores[0].rewards) if report.scores else []
        table = Table(title=f"rewards on {len(report.prompts)} prompts (greedy)")
        for col in ("backend", "total", *names):
            table.add_column(col, justify="left" if col == "backend" else "right")
        for s in report.scores:
            means = s.means()
            table.add_row(s.backend, f"{s.mean:.3f}", *(f"{means[n]:.3f}" for n in names))
        Console().print(table)
        for line in report.differences():
            typer.echo(f"differs: {line}", err=True)
    if not report.passed:
        raise typer.Exit(1)
