"""`llmkit export`: merge, GGUF, Modelfile, Ollama model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from llmkit.cli._app import _echo_outputs, _print_json, app
from llmkit.exporter import types as gguf_types


@app.command()
def export(
    source: Annotated[
        str,
        typer.Argument(
            help="Training run dir (base + adapter), model dir or model reference; or a text encoder (sentence-transformers dir, `embed train` run, all-minilm-l6-v2) → an Ollama embedding model."
        ),
    ],
    gguf: Annotated[
        str | None,
        typer.Option(
            "--gguf",
            help=f"{gguf_types.help_text()} (any case; default: recipe, else f16).",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Output dir (default: the run dir, or exports/NAME)."),
    ] = None,
    ollama: Annotated[
        str | None, typer.Option("--ollama", help="Create this Ollama model (needs a running server).")
    ] = None,
    quantize: Annotated[
        str | None,
        typer.Option(
            "--quantize",
            help=f"Server-side Ollama quantization of an f16/bf16 file: {' | '.join(gguf_types.OLLAMA_QUANTIZE)}.",
        ),
    ] = None,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check tokens and logits in llama.cpp against transformers.")
    ] = False,
    template: Annotated[
        Path | None,
        typer.Option(
            "--template",
            help="native: the model's own chat template (Ollama >= 0.30) | go: a Go template derived from it "
            "and proven | FILE: your Go template (default: native on an --ollama server >= 0.30, else go).",
        ),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="SYSTEM prompt for the Modelfile.")] = None,
    adapter_only: Annotated[
        bool,
        typer.Option(
            "--adapter-only",
            help="Write the LoRA as adapter.gguf and a Modelfile that puts it on the base (ADAPTER).",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Merge a LoRA run and write GGUF + Modelfile (and an Ollama model with --ollama)."""
    from llmkit.exporter import export as run_export

    result = run_export(
        source,
        gguf=gguf,
        output=output,
        ollama=ollama,
        quantize=quantize,
        verify=verify,
        template=template,
        system=system,
        adapter_only=adapter_only,
    )
    if json_out:
        return _print_json(result.as_dict())
    _echo_outputs(
        result,
        merged=result.merged_dir,
        gguf=result.gguf,
        adapter=result.adapter_gguf,
        modelfile=result.modelfile,
        ollama=result.ollama_model,
    )
