"""The `llmkit` command line: one thin function per command (parse → call library → render).

Heavy libraries (torch, transformers) are imported inside the commands, so `llmkit --help`
stays fast. Library errors (`LlmkitError`) become `Error: message` + hint and exit 1.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from llmkit import __version__
from llmkit.errors import LlmkitError, UsageError

app = typer.Typer(
    name="llmkit",
    help="Pull, fine-tune, export and embed with local LLMs (Hugging Face + Ollama).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
recipes_app = typer.Typer(help="List, show, validate and copy recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")

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


# ----------------------------------------------------------------------------- recipes


@recipes_app.command("list")
def recipes_list(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the recipes shipped with llmkit."""
    from llmkit.recipe import shipped_recipes

    items = shipped_recipes()
    if json_out:
        return _print_json([{"name": r.name, "path": str(r.path), "summary": r.summary} for r in items])
    from rich.table import Table

    from llmkit.ui import out

    table = Table("name", "summary", "path")
    for r in items:
        table.add_row(r.name, r.summary, str(r.path))
    out.print(table)


@recipes_app.command("show")
def recipes_show(
    recipe: Annotated[str, typer.Argument(help="Recipe name or YAML path.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="a.b=value overrides")] = None,
) -> None:
    """Print a recipe with every default filled in and overrides applied."""
    from llmkit.recipe import dump, load

    typer.echo(dump(load(recipe, overrides or [])), nl=False)


@recipes_app.command("validate")
def recipes_validate(
    recipes: Annotated[list[str], typer.Argument(help="Recipe names or YAML paths.")],
) -> None:
    """Validate recipes; every problem is listed as path.to.key: message."""
    from llmkit.recipe import load

    for name in recipes:
        load(name)
        typer.echo(f"ok: {name}")


@recipes_app.command("copy")
def recipes_copy(
    recipe: Annotated[str, typer.Argument(help="Shipped recipe name.")],
    dest: Annotated[Path, typer.Argument(help="Where to write the copy.")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Copy a shipped recipe to edit it."""
    from llmkit.recipe import copy

    typer.echo(str(copy(recipe, dest, force=force)))


# ----------------------------------------------------------------------------- models


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
    """Talk to a model locally with transformers, using its chat template."""
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


# ----------------------------------------------------------------------------- train (issue 3)


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

    Multi-GPU: accelerate launch --config_file recipes/accelerate/ddp.yaml -m llmkit.train RECIPE
    """
    from llmkit.recipe import load

    loaded = load(recipe, overrides or [])  # recipe errors show before torch is imported
    from llmkit.train import train as run_train

    run_dir = run_train(loaded, resume=resume, overwrite=overwrite)
    if json_out:
        return _print_json(json.loads((run_dir / "run.json").read_text()))
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

    loaded = load(recipe, overrides or [])  # recipe errors show before anything heavy starts
    from llmkit.pipeline import run

    result = run(loaded, resume=resume, overwrite=overwrite, verify=verify)
    _echo_outputs(result, gguf=result.gguf, modelfile=result.modelfile, ollama=result.ollama_model)


# ----------------------------------------------------------------------------- export (issue 4)


@app.command()
def export(
    source: Annotated[
        str, typer.Argument(help="Training run dir (base + adapter), model dir or model reference.")
    ],
    gguf: Annotated[
        str | None,
        typer.Option(
            "--gguf",
            help="f32 | f16 | bf16 | q8_0 | q4_0 | q4_1 | q5_0 | q5_1, or a K-quant by llama.cpp: "
            "q4_k_m | q4_k_s | q5_k_m | q5_k_s | q6_k | q3_k_m | q2_k (default: recipe, else f16).",
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
        typer.Option("--quantize", help="Server-side Ollama quantization: q8_0 | q4_K_S | q4_K_M."),
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
        typer.Option("--adapter-only", help="Write the LoRA alone as a GGUF adapter (for Ollama's ADAPTER)."),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Merge a LoRA run and write GGUF + Modelfile (and an Ollama model with --ollama)."""
    from llmkit.export import export as run_export

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


# ----------------------------------------------------------------------------- ollama (issue 5)

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
    """Generate from a model (streamed), or chat with it: /bye quits, /system sets a system prompt."""
    from llmkit.ollama import run

    options = {
        k: v
        for k, v in dict(temperature=temperature, num_ctx=num_ctx, num_predict=num_predict, seed=seed).items()
        if v is not None
    }
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--option expects KEY=VALUE, got {item!r}")
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


# ----------------------------------------------------------------------------- embed (issue 6)

classify_app = typer.Typer(
    help="Train, apply and evaluate text classifiers on embeddings.", no_args_is_help=True
)
app.add_typer(classify_app, name="classify")
_MODEL_OPT = typer.Option("--model", "-m", help="sentence-transformers dir/HF id, or ollama:NAME.")
_BACKEND_OPT = typer.Option(
    help="auto (measured on this CPU) | torch (exact reference) | onnx | openvino | ollama."
)
_PRECISION_OPT = typer.Option(
    help="auto (fastest exact path, cos ≥ 0.9999) | fast (cos mean ≥ 0.999, min ≥ 0.99; int8 = alias) | fp32 | bf16."
)


@app.command()
def embed(
    input: Annotated[
        Path,
        typer.Argument(
            help=".txt (a line each), .jsonl, .csv, .parquet, a dir of .parquet, a saved dataset dir, "
            "hf:NAME (a Hugging Face dataset) — or an embedding recipe .yaml."
        ),
    ],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="vectors .parquet (or .npy).")] = None,
    column: Annotated[
        str | None, typer.Option("--column", "--text-column", help="Text column (default text).")
    ] = None,
    split: Annotated[str, typer.Option(help="Dataset split (saved datasets, hf:NAME).")] = "train",
    id_column: Annotated[
        str | None, typer.Option(help="Column to use as row id (default: row number).")
    ] = None,
    model: Annotated[str, _MODEL_OPT] = "all-minilm-l6-v2",
    backend: Annotated[str, _BACKEND_OPT] = "auto",
    precision: Annotated[str, _PRECISION_OPT] = "auto",
    normalize: Annotated[bool, typer.Option(help="L2-normalize vectors (cosine).")] = True,
    chunk: Annotated[
        bool, typer.Option("--chunk", help="Average windows of long texts instead of truncating.")
    ] = False,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip (and report) non-UTF-8/bad lines.")
    ] = False,
    keep_text: Annotated[
        bool, typer.Option("--text/--no-text", help="Keep the text column in the output.")
    ] = True,
    commit_every: Annotated[int, typer.Option(help="Rows per committed (resumable) chunk.")] = 4096,
    ray: Annotated[
        str | None,
        typer.Option("--ray", help="Run on a Ray cluster: auto (RAY_ADDRESS/running), HOST:PORT, or local."),
    ] = None,
    workers: Annotated[int, typer.Option(help="--ray: encoder actors (one CPU each).")] = 2,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Embed a file of texts into vectors (streaming, deduplicated, resumable)."""
    from llmkit.embed.job import embed_file

    if input.suffix in (".yaml", ".yml"):
        from llmkit.embed.recipe import run

        return _print_json(run(input))
    if output is None:
        raise UsageError("missing -o/--output", "e.g. llmkit embed texts.txt -o vectors.parquet")
    result = embed_file(
        input,
        output,
        column=column,
        id_column=id_column,
        model=model,
        backend=backend,
        precision=precision,
        normalize=normalize,
        chunk=chunk,
        skip_bad=skip_bad,
        keep_text=keep_text,
        commit_every=commit_every,
        split=split,
        ray=ray,
        workers=workers,
    )
    s = result.summary()
    if json_out:
        return _print_json(s)
    typer.echo(
        f"{s['rows']} rows → {s['output']} ({s['model']}, {s['backend']}/{s['precision']}, dim {s['dim']}; "
        f"{s['encoded']} encoded, {s['duplicates']} duplicates, {s['truncated']} truncated, "
        f"{s['failed']} failed, {s['rows_per_s']} rows/s)"
    )
    if s.get("path_choice"):
        c = s["path_choice"]
        typer.echo(f"path {c['path']} ({c['contract']}): {c['why']}; measured on {c['cpu']}: {c['measured']}")
    if s["failed"]:
        typer.echo(f"failed rows are listed in {s['output']}.errors.jsonl", err=True)


@app.command()
def similar(
    query: Annotated[str | None, typer.Argument(help="Query text (or use --queries).")] = None,
    index: Annotated[Path, typer.Option("--index", "-i", help="vectors.parquet from llmkit embed.")] = Path(
        "vectors.parquet"
    ),
    k: Annotated[int, typer.Option("-k", help="Neighbours per query.")] = 5,
    queries: Annotated[Path | None, typer.Option(help="File with one query per line.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Default: the model that built the index.")
    ] = None,
    method: Annotated[str, typer.Option(help="auto | exact | faiss (HNSW, for large files).")] = "auto",
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Find the texts most similar to a query in a vectors file (cosine)."""
    from llmkit.embed.search import similar as run_similar

    texts = [query] if query else []
    if queries:
        texts += [q.strip() for q in queries.read_text(encoding="utf-8").splitlines() if q.strip()]
    results = run_similar(texts, index, k, model=model, method=method)
    if json_out:
        return _print_json(results)
    for r in results:
        typer.echo(f"query: {r['query']}")
        for h in r["hits"]:
            typer.echo(
                f"  {h['rank']}. {h['score']:.4f}  [{h['id']}] {h['text'] if h['text'] is not None else ''}"
            )


@app.command()
def similarity(
    a: Annotated[str, typer.Argument(help="First text.")],
    b: Annotated[str, typer.Argument(help="Second text.")],
    model: Annotated[str, _MODEL_OPT] = "all-minilm-l6-v2",
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Cosine similarity of two texts."""
    from llmkit.embed.search import similarity as run_similarity

    score = run_similarity(a, b, model=model)
    return _print_json({"a": a, "b": b, "cosine": score}) if json_out else typer.echo(f"{score:.4f}")


def _render_report(rep: dict) -> None:
    typer.echo(f"accuracy {rep['accuracy']:.4f}  macro-F1 {rep['macro_f1']:.4f}  (n={rep['n']})")
    for label, m in rep["per_class"].items():
        typer.echo(
            f"  {label:<16} P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1']:.3f}  n {m['support']}"
        )
    labels = rep["confusion"]["labels"]
    typer.echo("confusion (rows = true, cols = predicted): " + " ".join(labels))
    for label, row in zip(labels, rep["confusion"]["matrix"], strict=True):
        typer.echo(f"  {label:<16} " + " ".join(f"{v:>5}" for v in row))


@classify_app.command("train")
def classify_train(
    data: Annotated[Path, typer.Argument(help="Labelled .csv/.jsonl/.parquet.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="Classifier dir to write.")],
    text_column: Annotated[str, typer.Option(help="Column with the text.")] = "text",
    label_column: Annotated[str, typer.Option(help="Column with the label.")] = "label",
    model: Annotated[str, _MODEL_OPT] = "all-minilm-l6-v2",
    test_size: Annotated[float, typer.Option(help="Held-out fraction for the report.")] = 0.2,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing dir.")] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Train a logistic-regression classifier on embeddings; report on a held-out split."""
    from llmkit.embed.classify import train

    config = train(
        data,
        output,
        text_column=text_column,
        label_column=label_column,
        model=model,
        test_size=test_size,
        force=force,
    )
    if json_out:
        return _print_json(config)
    typer.echo(
        f"classifier → {output} ({len(config['classes'])} classes, {config['train_rows']} training rows)"
    )
    _render_report(config["held_out"])


@classify_app.command("predict")
def classify_predict(
    classifier: Annotated[Path, typer.Argument(help="Classifier dir.")],
    input: Annotated[Path, typer.Argument(help=".txt/.jsonl/.csv/.parquet to label.")],
    column: Annotated[
        str | None, typer.Option(help="Text column (default: the one it was trained on).")
    ] = None,
    id_column: Annotated[str | None, typer.Option(help="Column to use as row id.")] = None,
) -> None:
    """Label each row: one JSON line per row with label and probabilities (streaming)."""
    from llmkit.embed.classify import predict

    for row in predict(classifier, input, column=column, id_column=id_column):
        typer.echo(json.dumps(row, default=str))


@classify_app.command("eval")
def classify_eval(
    classifier: Annotated[Path, typer.Argument(help="Classifier dir.")],
    data: Annotated[Path, typer.Argument(help="Labelled data.")],
    text_column: Annotated[str | None, typer.Option(help="Default: as trained.")] = None,
    label_column: Annotated[str | None, typer.Option(help="Default: as trained.")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Accuracy, macro-F1, per-class scores and confusion matrix on labelled data."""
    from llmkit.embed.classify import evaluate

    rep = evaluate(classifier, data, text_column=text_column, label_column=label_column)
    return _print_json(rep) if json_out else _render_report(rep)


@app.command()
def cluster(
    vectors: Annotated[Path, typer.Argument(help="vectors.parquet from llmkit embed.")],
    k: Annotated[
        str, typer.Option("-k", help="Number of clusters, or auto (best silhouette, clusters ≥ --min-size).")
    ] = "auto",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write labelled vectors here (default: in place).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="2-D PCA scatter PNG.")] = None,
    top: Annotated[int, typer.Option(help="Texts shown per centroid.")] = 3,
    min_size: Annotated[
        int | None, typer.Option(help="-k auto: smallest cluster worth a topic (default max(3, rows/50)).")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="Column of known labels: report the adjusted Rand index.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """k-means clusters of a vectors file; labels written back, nearest texts per centroid."""
    from llmkit.embed.cluster import cluster as run_cluster

    result = run_cluster(
        vectors, k, output=output, plot=plot, top=top, min_size=min_size, labels_column=labels
    )
    if json_out:
        return _print_json(result)
    typer.echo(
        f"k={result['k']} over {result['rows']} rows → {result['output']}"
        + (f", plot {plot}" if plot else "")
        + (f"; adjusted Rand index vs {labels}: {result['adjusted_rand_index']}" if labels else "")
    )
    for c in result["clusters"]:
        typer.echo(f"cluster {c['cluster']} ({c['size']} rows):")
        for h in c["nearest"]:
            typer.echo(f"  {h['score']:.3f}  {h['text'] if h['text'] is not None else h['id']}")


# ----------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Run the app; turn library errors into one line on stderr and an exit code."""
    # Library chatter (advisory warnings) is noise on a CLI; see also ui.quiet_transformers().
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app(args=argv, prog_name="llmkit", standalone_mode=True)
    except LlmkitError as exc:
        if _state["debug"]:
            raise
        _report(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("\nInterrupted.\n")
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: one line, traceback behind --debug
        if _state["debug"]:
            raise
        _report(f"{type(exc).__name__}: {exc}", "rerun with --debug for the full traceback")
        sys.exit(1)


def _report(message: str, hint: str | None) -> None:
    sys.stderr.write(f"Error: {message}\n")
    if hint:
        sys.stderr.write(f"  hint: {hint}\n")


__all__ = ["app", "main", "UsageError"]
