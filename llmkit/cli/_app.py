"""The Typer app, its global options, and the helpers every command module shares."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated

import typer

from llmkit import __version__

app = typer.Typer(
    name="llmkit",
    help="Pull, fine-tune, export and embed with local LLMs (Hugging Face + Ollama).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"llmkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _state["debug"] = debug or os.environ.get("LLMKIT_DEBUG", "") not in ("", "0")
    if _state["debug"]:  # the library reads it too: third-party output comes back under --debug
        os.environ["LLMKIT_DEBUG"] = "1"


def _exit_interrupted(signum, frame) -> None:
    sys.stderr.write("\nInterrupted.\n")
    sys.stderr.flush()
    os._exit(130)


def _echo_outputs(result, **outputs) -> None:
    """One `label: path` line per output that was written, then the `ollama create` still to run."""
    for label, value in outputs.items():
        if value:
            typer.echo(f"{label}: {value}")
    if result.ollama_command and not result.ollama_model:
        typer.echo(f"next: {result.ollama_command}")


def _print_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))
