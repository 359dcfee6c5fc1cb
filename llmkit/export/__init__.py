"""Export: merge a LoRA run, write GGUF, verify it in llama.cpp, write a Modelfile, create in Ollama.

    export("runs/tiny")                                  # merged/, model.gguf, Modelfile in the run
    export("tiny-qwen2", gguf="q8_0", output="out", verify=True)
    export("runs/tiny", ollama="tiny-chat", quantize="q4_K_M")

Every step writes to a temporary path and renames, so a failure leaves no half-written file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmkit.errors import ExportError, InvalidArgument
from llmkit.files import atomic_file, check_writable, write_json
from llmkit.ui import info, warn

__all__ = ["export", "ExportResult"]


@dataclass
class ExportResult:
    out_dir: Path
    gguf: Path | None = None
    gguf_type: str | None = None
    merged_dir: Path | None = None
    adapter_gguf: Path | None = None
    modelfile: Path | None = None
    template_family: str | None = None
    template_proven: bool | None = None
    stops: list[str] = field(default_factory=list)
    verify: dict | None = None
    ollama_model: str | None = None
    ollama_command: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def export(
    source: str | Path,
    *,
    gguf: str | None = None,
    output: str | Path | None = None,
    ollama: str | None = None,
    quantize: str | None = None,
    verify: bool = False,
    template: str | Path | None = None,
    system: str | None = None,
    parameters: dict | None = None,
    adapter_only: bool = False,
) -> ExportResult:
    """Export a training run dir (base + adapter) or a model (dir / reference) to GGUF + Modelfile.

    Values not given come from the run's recipe `export:` section, then the defaults (f16).
    """
    from llmkit.export import modelfile as mf
    from llmkit.export.gguf import check_type
    from llmkit.runs import RunLayout, is_run_dir, open_run

    run = None
    if is_run_dir(source):
        run = open_run(source)
        opts = run.recipe.export
        gguf = gguf or opts.gguf
        ollama = ollama or opts.ollama
        quantize = quantize or opts.quantize
        system = system if system is not None else opts.system
        if template is None and opts.template:  # "native" / "go" are modes, anything else a file
            template = (
                opts.template if opts.template in ("native", "go") else run.recipe.resolve_path(opts.template)
            )
        parameters = {**opts.parameters, **(parameters or {})}
    elif RunLayout(source).recipe.is_file():
        raise ExportError(
            f"{source} is a run directory without an adapter/ (training did not finish?)",
            "train first: llmkit train RECIPE, or resume the run",
        )
    gguf = check_type(gguf or "f16")
    quantize = mf.check_quantize(quantize, gguf)
    if ollama:
        mf.check_name(ollama)
    if template is not None and str(template) not in ("native", "go") and not Path(template).is_file():
        raise InvalidArgument(
            f"--template {template}: no such file", "pass native, go, or the path of a Go template file"
        )
    if output is not None:
        check_writable(Path(output), "export dir", is_dir=True)

    if run is not None:
        out_dir = Path(output) if output else run.path
        base_dir = run.base_dir()
        if adapter_only:
            return _adapter_only(run, base_dir, out_dir, gguf)
        info(f"Merging {run.adapter_dir} into {base_dir}")
        from llmkit.export.merge import merge

        model_dir = merge(base_dir, run.adapter_dir, out_dir / "merged")
        result = ExportResult(out_dir=out_dir, merged_dir=model_dir)
        name = run.recipe.name or run.path.name
        num_ctx = _context_length(run.recipe.data.max_length, model_dir)
    else:
        if adapter_only:
            raise ExportError("--adapter-only needs a training run directory", "pass RUN_DIR, not a model")
        from llmkit.sources import resolve

        model_dir = resolve(str(source))
        name = Path(str(source)).name if Path(str(source)).is_dir() else str(source).replace("/", "-")
        out_dir = check_writable(
            Path(output) if output else Path("exports") / name, "export dir", is_dir=True
        )
        result = ExportResult(out_dir=out_dir)
        num_ctx = None

    from transformers import AutoTokenizer

    from llmkit.export.gguf import write_gguf
    from llmkit.export.vocab import has_tokenizer

    if not has_tokenizer(model_dir):
        raise ExportError(
            f"{model_dir} is missing its tokenizer (tokenizer.json)",
            "copy tokenizer.json and tokenizer_config.json from the base model into it",
        )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base_ref = run.base_ref if run is not None else str(source)
    base_ollama = _ollama_base(run.base_dir() if run is not None else model_dir, base_ref)
    chat = _chat_template(tokenizer, template, base_ollama)
    if base_ollama:  # the base came from Ollama: keep its parameters and system prompt as defaults
        inherited = {k: v for k, v in (base_ollama.get("parameters") or {}).items() if k != "stop"}
        parameters = {**inherited, **(parameters or {})}
        system = system if system is not None else base_ollama.get("system")
    result.template_family, result.template_proven, result.stops = chat.family, chat.proven, chat.stops
    result.notes += chat.notes
    from rich.markup import escape  # template notes quote template text such as "[/INST]"

    for note in chat.notes:
        warn(escape(note))

    info(f"Writing {gguf.upper()} GGUF to {out_dir / 'model.gguf'}")
    written = write_gguf(model_dir, out_dir / "model.gguf", gguf, name=name, chat_template=chat.jinja)
    result.gguf, result.gguf_type = written.path, gguf

    if verify:
        from llmkit.export.verify import verify as run_verify

        report = run_verify(
            written.path, model_dir, gguf, tokenizer=tokenizer, chat_go=chat.go, stops=chat.stops
        )
        result.verify = report.as_dict()
        write_json(out_dir / "verify.json", result.verify)
        info(report.summary())
        if not report.passed:
            written.path.unlink(missing_ok=True)  # never leave a GGUF that failed verification
            raise ExportError(
                f"{written.path.name} does not match the HF model: {report.summary()}",
                "; ".join(report.details) or "try a higher-precision --gguf type (f16)",
            )

    params = {**({"num_ctx": num_ctx} if num_ctx else {}), **(parameters or {})}
    if system and not chat.system:  # never promise a system prompt the template rejects
        warn("this chat template has no system turn; the SYSTEM prompt is not written")
        result.notes.append("SYSTEM prompt dropped: the chat template has no system turn")
        system = None
    version = _server_version() if ollama else None
    _choose_target(chat, template, version)
    result.template_family = chat.family if chat.target == "go" else "native"
    result.modelfile = out_dir / "Modelfile"
    with atomic_file(result.modelfile) as fh:
        fh.write(_modelfile_text(written.path.name, chat, system, params))

    if ollama:
        _ollama_create(result, ollama, chat, system, params, quantize, version)
    write_json(out_dir / "export.json", result.as_dict())
    return result


def _context_length(trained: int, model_dir: Path) -> int:
    """num_ctx for the Modelfile: the training length, but never below Ollama's usual 2048
    (a 256-token window forgets the conversation after a turn), and never above the model's limit."""
    import json

    limit = json.loads((Path(model_dir) / "config.json").read_text()).get("max_position_embeddings")
    wanted = max(trained, 2048)
    return min(wanted, limit) if limit else wanted


def _ollama_base(model_dir: Path, ref: str) -> dict:
    """What Ollama knew about the base (template, parameters, system) when it is `ollama:NAME`.

    Resolving `ollama:NAME` just refreshed this metadata in the converted dir's source file.
    """
    import json

    from llmkit.sources import SOURCE_FILE

    meta_file = Path(model_dir) / SOURCE_FILE
    if not ref.startswith("ollama:") or not meta_file.is_file():
        return {}
    return json.loads(meta_file.read_text()).get("ollama") or {}


def _chat_template(tokenizer, template, base_ollama: dict | None = None):
    """The chat template for the Modelfile: `template` is None (derive a Go template and prove
    it; the model's own Jinja on Ollama >= 0.30), "native", "go", or a Go template FILE."""
    from llmkit.export import templates
    from llmkit.export.vocab import chat_template_of

    jinja = chat_template_of(tokenizer)
    bos = tokenizer.bos_token
    probe = tokenizer("A").input_ids
    add_bos = bool(bos) and bool(probe) and probe[0] == tokenizer.bos_token_id
    kwargs = {"bos": bos, "add_bos": add_bos, "eos": tokenizer.eos_token}
    mode = str(template) if template is not None else None
    if mode not in (None, "native", "go"):
        return templates.from_file(Path(mode), tokenizer, jinja, **kwargs)
    if mode == "native" and not jinja:
        raise ExportError(
            "--template native needs a model with a chat template (tokenizer_config.json has none)",
            "use --template go (Alpaca is written for models without one) or --template FILE",
        )
    try:
        chat = templates.choose(tokenizer, jinja, **kwargs)
    except ExportError as exc:
        if mode == "go":
            raise
        if base_ollama and base_ollama.get("template") and mode is None:
            # Ollama already ran this base with its own template: reuse it, flagged as unproven.
            stops = [str(s) for s in _as_list((base_ollama.get("parameters") or {}).get("stop"))]
            return templates.ChatTemplate(
                family="ollama-base",
                go=base_ollama["template"],
                stops=stops,
                jinja=jinja,
                proven=False,
                notes=[
                    "chat template taken from the Ollama base model (not proven equal to the HF template)"
                ],
            )
        refused = f"{exc.message}" + (f" ({exc.hint})" if exc.hint else "")
        chat = templates.native(tokenizer, jinja, bos=bos, eos=tokenizer.eos_token, refused=refused)
        chat.notes.insert(
            0,
            "no Go template for Ollama < 0.30: " + exc.message + "; the Modelfile targets Ollama >= 0.30, "
            "which renders the model's own chat template",
        )
        return chat
    if mode == "native":
        chat = templates.native(tokenizer, jinja, bos=bos, eos=tokenizer.eos_token, go=chat)
    base_stops = _as_list((base_ollama or {}).get("parameters", {}).get("stop"))
    chat.stops = list(dict.fromkeys([*chat.stops, *map(str, base_stops)]))
    return chat


def _server_version() -> str | None:
    from llmkit.ollama import server_version

    return server_version()


def _choose_target(chat, template, version: str | None) -> None:
    """Go template or the model's own (native): explicit --template wins; else native when the
    --ollama server renders GGUF templates itself (>= 0.30), else the proven Go template."""
    from llmkit.ollama.client import renders_native_templates

    if template is None and chat.family not in ("custom", "ollama-base") and chat.go is not None:
        chat.target = "native" if renders_native_templates(version) else "go"


def _modelfile_text(gguf_name: str, chat, system: str | None, params: dict) -> str:
    from llmkit.export.modelfile import render_modelfile

    return render_modelfile(
        f"./{gguf_name}",
        template=chat.go,
        native=chat.target == "native",
        stops=chat.stops,
        system=system,
        parameters=params,
        proof=(
            f"proven to render like the model's chat template on {chat.proof_count} conversations"
            if chat.proven and chat.proof_count
            else ("NOT proven equal to the model's chat template" if chat.go else None)
        ),
        refused=chat.refused,
    )


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _ollama_create(result: ExportResult, name: str, chat, system, params, quantize, version) -> None:
    from llmkit.export.modelfile import ollama_command
    from llmkit.ollama import create_model
    from llmkit.ollama.client import renders_native_templates

    result.ollama_command = ollama_command(name, result.modelfile, quantize)
    if version is None:
        warn(
            f"no Ollama server is reachable; the GGUF and Modelfile are ready. Create the model with:\n  "
            f"{result.ollama_command}"
        )
        result.notes.append("ollama server not reachable: run ollama_command")
        return
    if chat.target == "native" and not renders_native_templates(version):
        why = chat.refused or "--template native was asked for"
        raise ExportError(
            f"Ollama {version} cannot render the model's own chat template (needs >= 0.30) and "
            f"there is no Go template: {why}",
            "upgrade Ollama, or write the Go template yourself and pass it with --template FILE",
        )
    info(f"Creating Ollama model {name}")
    create_model(
        name,
        result.gguf,
        template=chat.go if chat.target == "go" else None,  # None: the GGUF's own Jinja template
        system=system,
        parameters={"stop": chat.stops, **params},
        quantize=quantize,
    )
    result.ollama_model = name


def _adapter_only(run, base_dir: Path, out_dir: Path, gguf: str) -> ExportResult:
    from llmkit.export.adapter import write_adapter_gguf

    out = write_adapter_gguf(run.adapter_dir, base_dir, out_dir / "adapter.gguf", gguf)
    info(f"Wrote {out}; use it on top of the base model with a Modelfile line: ADAPTER ./{out.name}")
    result = ExportResult(out_dir=out_dir, adapter_gguf=out, gguf_type=gguf)
    write_json(out_dir / "export.json", result.as_dict())
    return result


from llmkit._callable import make_module_callable  # noqa: E402

make_module_callable(__name__, export)
