"""`llmkit ollama …`: serve, pull, list, show, rm, ps, run."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from llmkit.cli._app import _print_json, app
from llmkit.errors import InvalidArgument

ollama_app = typer.Typer(
    help="Run and manage models in Ollama (server at $OLLAMA_HOST).", no_args_is_help=True
)
app.add_typer(ollama_app, name="ollama")


@ollama_app.command("serve")
def ollama_serve(
    gpu: Annotated[
        bool | None,
        typer.Option("--gpu/--cpu", help="Let the server use GPUs, or hide them.", show_default=False),
    ] = None,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a started server to answer.")] = 30.0,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Use the Ollama server at OLLAMA_HOST, or start `ollama serve` in the background."""
    from llmkit.ollama.serve import serve, stop_hint

    r = serve(gpu=gpu, timeout=timeout)
    if json_out:
        return _print_json(r)
    if r["status"] == "running":
        return typer.echo(f"Ollama {r['version']} is already running at {r['host']}")
    typer.echo(f"Started Ollama {r['version']} at {r['host']} (PID {r['pid']}, log: {r['log']})")
    typer.echo(f"Stop it with: {stop_hint(r['pid'])}")


@ollama_app.command("pull")
def ollama_pull(
    name: Annotated[str, typer.Argument(help="Model name, e.g. llama3.2 or qwen2.5:0.5b.")],
) -> None:
    """Download a model into Ollama, with a progress bar per layer (Ctrl-C to stop; rerun to resume)."""
    from llmkit.ollama import pull

    pull(name)
    typer.echo(f"Pulled {name}")


@ollama_app.command("list")
def ollama_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the models the Ollama server has."""
    from llmkit.ollama import list_models

    _ollama_table(
        list_models(), ["name", "size", "family", "parameter_size", "quantization", "modified_at"], json_out
    )


@ollama_app.command("show")
def ollama_show(
    name: Annotated[str, typer.Argument()], json_out: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Show a model: family, size, quantization, template, parameters, system prompt."""
    from llmkit.ollama import show

    m = show(name)
    if json_out:
        return _print_json(m)
    for key in ("name", "family", "parameter_size", "quantization", "context_length", "capabilities"):
        typer.echo(f"{key:<15} {', '.join(m[key]) if isinstance(m[key], list) else m[key]}")
    typer.echo("parameters" + "".join(f"\n  {k} = {json.dumps(v)}" for k, v in m["parameters"].items()))
    typer.echo(f"system         {m['system'] or '-'}\ntemplate\n{m['template'] or '-'}")


@ollama_app.command("rm")
def ollama_rm(names: Annotated[list[str], typer.Argument(help="Models to delete.")]) -> None:
    """Delete models from Ollama."""
    from llmkit.ollama import remove

    for name in names:
        remove(name)
        typer.echo(f"Deleted {name}")


@ollama_app.command("ps")
def ollama_ps(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the models loaded in memory right now."""
    from llmkit.ollama import ps

    _ollama_table(
        ps(), ["name", "size", "size_vram", "parameter_size", "quantization", "expires_at"], json_out
    )


@ollama_app.command("run")
def ollama_run(
    name: Annotated[str, typer.Argument(help="Model name.")],
    prompt: Annotated[
        str | None, typer.Argument(help="One-shot prompt; omit for an interactive chat.")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature (0 = greedy).")] = None,
    num_ctx: Annotated[int | None, typer.Option(help="Context window in tokens.")] = None,
    num_predict: Annotated[int | None, typer.Option(help="Most tokens to generate.")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-o", help="Any Ollama option, KEY=VALUE (e.g. min_p=0.05)."),
    ] = None,
) -> None:
    """Generate from a model (streamed), or chat with it.

    Without a prompt: an interactive chat (/bye quits, /system TEXT, /clear, /help).
    """
    from llmkit.ollama import run

    options = {
        k: v
        for k, v in dict(temperature=temperature, num_ctx=num_ctx, num_predict=num_predict, seed=seed).items()
        if v is not None
    }
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"--option expects KEY=VALUE, got {item!r}", "e.g. -o temperature=0.2")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    run(name, prompt, system=system, options=options)


def _ollama_table(rows: list[dict], columns: list[str], json_out: bool) -> None:
    if json_out:
        return _print_json(rows)
    from rich.table import Table

    from llmkit.files import human_size
    from llmkit.ui import out

    table = Table(*columns)
    for r in rows:
        table.add_row(*[human_size(r[c]) if c.startswith("size") else str(r[c] or "-") for c in columns])
    out.print(table)
