"""Training commands: train, plan, run (pull → train → export)."""

from __future__ import annotations

from typing import Annotated

import typer

from llmkit.cli._app import _echo_outputs, _print_json, app


@app.command()
def train(
    recipe: Annotated[str, typer.Argument(help="Recipe name (see `llmkit recipes list`) or YAML path.")],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="a.b=value overrides, e.g. train.lr=1e-4")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in train.output_dir from its last checkpoint.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a run already in train.output_dir.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print run.json instead of the run dir.")] = False,
) -> None:
    """Fine-tune a model with LoRA/QLoRA from a recipe; writes a run dir (adapter, metrics, loss.png).

    Multi-GPU: accelerate launch --config_file recipes/accelerate/ddp.yaml -m llmkit.training RECIPE
    """
    from llmkit.recipe import load
    from llmkit.sources import check_reference

    loaded = load(recipe, overrides or [])  # recipe errors show before torch is imported
    check_reference(loaded.model.name)  # and so does a mistyped model
    from llmkit.training import train as run_train

    run_dir = run_train(loaded, resume=resume, overwrite=overwrite)
    if json_out:
        from llmkit.runs import read_info

        return _print_json(read_info(run_dir))
    typer.echo(str(run_dir))


@app.command()
def plan(
    recipe: Annotated[str, typer.Argument(help="Recipe name (see `llmkit recipes list`) or YAML path.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="a.b=value overrides")] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="cpu, cuda or mps (default: this machine's).")
    ] = None,
    memory: Annotated[
        str | None, typer.Option("--memory", help="Memory to plan for, e.g. 24GB (default: the device's).")
    ] = None,
    probe: Annotated[bool, typer.Option("--probe", help="Time 10 real training steps.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """Will a recipe fit, and how long will it take? Memory, disk and time before any weights load.

    Exits 1 (after the table) when the run would not fit, saying by how much and what to change.
    """
    from llmkit.recipe import load

    loaded = load(recipe, overrides or [])
    from llmkit import plan as planlib

    result = planlib.plan(loaded, device=device, memory=memory, probe=probe)
    if json_out:
        _print_json(result.to_dict())
    else:
        planlib.render(result)
    planlib.check(result)


@app.command("run")
def run_recipe(
    recipe: Annotated[str, typer.Argument(help="Recipe name or YAML path.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="a.b=value overrides")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted training run.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a run already in train.output_dir.")
    ] = False,
    verify: Annotated[
        bool, typer.Option("--verify", help="Check the GGUF in llama.cpp against transformers.")
    ] = False,
) -> None:
    """Pull → train → export (→ Ollama model if the recipe names one), in one command."""
    from llmkit.recipe import load
    from llmkit.sources import check_reference

    loaded = load(recipe, overrides or [])  # recipe errors show before anything heavy starts
    check_reference(loaded.model.name)
    from llmkit.pipeline import run

    result = run(loaded, resume=resume, overwrite=overwrite, verify=verify)
    _echo_outputs(result, gguf=result.gguf, modelfile=result.modelfile, ollama=result.ollama_model)
