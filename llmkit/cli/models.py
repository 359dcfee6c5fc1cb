"""Model commands: pull, models, chat, doctor."""

from __future__ import annotations

import signal
from typing import Annotated

import typer

from llmkit.cli._app import _exit_interrupted, _print_json, app


@app.command()
def pull(
    model: Annotated[
        str,
        typer.Argument(help="HF repo id[@revision], local dir, .gguf file, ollama:NAME, or a built-in name."),
    ],
    revision: Annotated[str | None, typer.Option(help="Branch, tag or commit (or use MODEL@REV).")] = None,
    include: Annotated[list[str] | None, typer.Option(help="Extra glob patterns to download.")] = None,
    exclude: Annotated[list[str] | None, typer.Option(help="Glob patterns to skip.")] = None,
    allow_pickle: Annotated[
        bool, typer.Option("--allow-pickle", help="Also download pickle (.bin/.pt) weights.")
    ] = False,
    token: Annotated[
        str | None, typer.Option(help="HF token for gated repos (default: $HF_TOKEN).", show_default=False)
    ] = None,
    prefer_hub: Annotated[
        bool,
        typer.Option("--prefer-hub", help="Fetch built-in names from the Hub instead of the embedded copy."),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Download or convert a model into a local Hugging Face model directory."""
    from llmkit.sources import resolve

    # huggingface_hub downloads in worker threads that a KeyboardInterrupt cannot stop; exit at
    # once instead: partial files stay as `.incomplete` blobs and the next pull resumes them.
    signal.signal(signal.SIGINT, _exit_interrupted)
    path = resolve(
        model,
        revision=revision,
        include=include or [],
        exclude=exclude or [],
        allow_pickle=allow_pickle,
        token=token,
        prefer_hub=prefer_hub,
    )
    if json_out:
        return _print_json({"model": model, "path": str(path)})
    typer.echo(str(path))


@app.command()
def models(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List local models: HF cache, converted GGUFs, built-in models."""
    from llmkit.sources import list_models

    items = list_models()
    if json_out:
        return _print_json(items)
    from rich.table import Table

    from llmkit.files import human_size
    from llmkit.ui import out

    table = Table("name", "source", "size", "path")
    for m in items:
        table.add_row(m["name"], m["source"], human_size(m["size"]) if m["size"] else "-", m["path"] or "-")
    out.print(table)


@app.command()
def chat(
    model: Annotated[str, typer.Argument(help="Model reference or a training run dir (base + adapter).")],
    prompt: Annotated[
        str | None, typer.Argument(help="One-shot prompt; omit for an interactive chat.")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate per answer.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
) -> None:
    """Talk to a model locally with transformers, using its chat template.

    Without a prompt: an interactive chat (/bye quits, /system TEXT, /clear, /help).
    """
    from llmkit.chat import chat as run_chat

    run_chat(model, prompt, system=system, max_new_tokens=max_new_tokens, temperature=temperature)


@app.command()
def doctor(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show what hardware and tools are present and usable."""
    from llmkit.doctor import checks, render

    rows = checks()
    if json_out:
        return _print_json({r["check"]: r["value"] for r in rows})
    render(rows)
