"""Export: merge a LoRA run, write GGUF, verify it in llama.cpp, write a Modelfile, create in Ollama.

    export("runs/tiny")                                  # merged/, model.gguf, Modelfile in the run
    export("tiny-qwen2", gguf="q8_0", output="out", verify=True)
    export("runs/tiny", ollama="tiny-chat", quantize="q4_K_M")
    export("runs/tiny", adapter_only=True, ollama="tiny-lora")   # adapter.gguf on the base
    export("all-minilm-l6-v2", ollama="minilm", verify=True)     # a text encoder: encoder_gguf.py

Each thing is decided once and passed on: the base directory, the tokenizer (loaded once, as
training loads it), the chat template and whether Ollama gets it as Go or the model's own (chosen
before `--verify`, which then checks what will be written). Every step writes to a temporary
path and renames, so a failure leaves no half-written file.
"""

from __future__ import annotations

from pathlib import Path

from llmkit.errors import ExportError, InvalidArgument
from llmkit.exporter import serving
from llmkit.exporter.serving import ExportResult
from llmkit.exporter.types import TYPES, check_quantize, gguf_type
from llmkit.files import atomic_file, check_writable, write_json
from llmkit.ui import info, warn

__all__ = ["export", "ExportResult"]


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
    from llmkit.exporter.encoder_gguf import encoder_source, export_encoder
    from llmkit.exporter.modelfile import check_name
    from llmkit.runs import RunLayout, is_run_dir, open_run

    encoder = encoder_source(source)  # a text encoder (sentence-transformers, `embed train` run)
    if encoder is not None:
        if quantize or template or system or parameters or adapter_only:
            raise InvalidArgument(
                f"{source} is a text encoder: --quantize/--template/--system/--adapter-only are for LLMs",
                "export it with --gguf f16|f32, --verify and --ollama NAME",
            )
        return export_encoder(source, encoder, gguf=gguf, output=output, ollama=ollama, verify=verify)
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
    gguf = gguf_type(gguf or "f16").name
    quantize = check_quantize(quantize, gguf)
    if ollama:
        check_name(ollama)
    if template is not None and str(template) not in ("native", "go") and not Path(template).is_file():
        raise InvalidArgument(
            f"--template {template}: no such file", "pass native, go, or the path of a Go template file"
        )
    if output is not None:
        check_writable(Path(output), "export dir", is_dir=True)

    if run is not None:
        out_dir = Path(output) if output else run.path
        from llmkit.inference import run_base_dir

        base_dir = run_base_dir(run)  # resolved once; the Ollama metadata and the merge use it
        if adapter_only:
            from llmkit.exporter.adapter_export import export_adapter

            return export_adapter(
                run, base_dir, out_dir, gguf, ollama=ollama, quantize=quantize, template=template,
                system=system, parameters=parameters,
            )  # fmt: skip
        info(f"Merging {run.adapter_dir} into {base_dir}")
        from llmkit.exporter.merge import merge

        model_dir = merge(base_dir, run.adapter_dir, out_dir / "merged")
        result = ExportResult(out_dir=out_dir, merged_dir=model_dir)
        name, base_ref = run.recipe.name or run.path.name, run.base_ref
        num_ctx = serving.context_length(run.recipe.data.max_length, model_dir)
    else:
        if adapter_only:
            raise ExportError("--adapter-only needs a training run directory", "pass RUN_DIR, not a model")
        from llmkit.sources import resolve

        model_dir = base_dir = resolve(str(source))
        name = Path(str(source)).name if Path(str(source)).is_dir() else str(source).replace("/", "-")
        out_dir = check_writable(
            Path(output) if output else Path("exports") / name, "export dir", is_dir=True
        )
        result = ExportResult(out_dir=out_dir)
        num_ctx, base_ref = None, str(source)

    tokenizer = serving.load_tokenizer(model_dir)
    base_ollama = serving.ollama_base(base_dir, base_ref)
    chat = serving.chat_template(tokenizer, template, base_ollama)
    if base_ollama:  # the base came from Ollama: keep its parameters and system prompt as defaults
        inherited = {k: v for k, v in (base_ollama.get("parameters") or {}).items() if k != "stop"}
        parameters = {**inherited, **(parameters or {})}
        system = system if system is not None else base_ollama.get("system")
    serving.report_notes(chat, result)
    version = serving.server_version() if ollama else None
    serving.choose_target(chat, template, version)  # before --verify: it checks what is written
    num_ctx, limit_reason = _served_context(model_dir, num_ctx, result)

    from llmkit.exporter.gguf import write_gguf

    info(f"Writing {gguf.upper()} GGUF to {out_dir / 'model.gguf'}")
    written = write_gguf(
        model_dir, out_dir / "model.gguf", gguf, name=name, chat_template=chat.jinja, tokenizer=tokenizer
    )
    result.gguf, result.gguf_type = written.path, gguf

    if verify:
        _verify(written.path, model_dir, gguf, tokenizer, chat, result, limit_reason)

    params = {**({"num_ctx": num_ctx} if num_ctx else {}), **(parameters or {})}
    if system and not chat.system:  # never promise a system prompt the template rejects
        warn("this chat template has no system turn; the SYSTEM prompt is not written")
        result.notes.append("SYSTEM prompt dropped: the chat template has no system turn")
        system = None
    result.template_family = chat.family if chat.target == "go" else "native"
    result.modelfile = out_dir / "Modelfile"
    with atomic_file(result.modelfile) as fh:
        fh.write(serving.modelfile_text(f"./{written.path.name}", chat, system, params))

    if ollama:
        serving.ollama_create(result, ollama, chat, system, params, quantize, version)
    if verify and run is not None and run.recipe.train.method == "grpo":
        _verify_rewards(
            run.path, written.path, tokenizer, chat, result, ollama if result.ollama_model else None
        )
    write_json(out_dir / "export.json", result.as_dict())
    return result


def _verify_rewards(run_dir: Path, gguf: Path, tokenizer, chat, result: ExportResult, ollama: str | None):
    """A GRPO run: the served model's reward on held-out prompts must be the trained model's."""
    from llmkit.evaluate import check_served

    report = check_served(
        run_dir, gguf, chat.go if chat.target == "go" else None, chat.stops, tokenizer, ollama
    )
    result.verify = {**(result.verify or {}), "rewards": report.as_dict()}
    write_json(result.out_dir / "verify.json", result.verify)
    figures = ", ".join(f"{s.backend} {s.mean:.3f}" for s in report.scores)
    info(f"rewards on {len(report.prompts)} held-out prompts (greedy): {figures}")
    if not report.passed:
        raise ExportError(
            f"the served model's reward differs from the trained model's ({figures})",
            "; ".join(report.differences(3))
            or "compare with: llmkit eval RUN --backend transformers --backend llama.cpp",
        )


def _served_context(model_dir: Path, num_ctx: int | None, result: ExportResult) -> tuple[int | None, str]:
    """num_ctx capped to the family's served limit (Mistral's sliding window), said once."""
    from llmkit.exporter.archs import arch_of, text_config
    from llmkit.exporter.gguf import read_config

    config = read_config(model_dir)
    arch = arch_of(config, model_dir)
    limit = arch.context_limit(text_config(config))
    if not limit:
        return num_ctx, ""
    result.context_limit = limit
    why = f"{arch.limit_reason} past {limit} tokens"
    info(
        f"num_ctx and the GGUF's context length are {limit} tokens ({why}; within it the model is identical)"
    )
    result.notes.append(f"context capped to {limit} tokens: {why}")
    return min(num_ctx or limit, limit), why


def _verify(
    path: Path, model_dir: Path, gguf: str, tokenizer, chat, result: ExportResult, limit_reason
) -> None:
    from llmkit.exporter.verify import verify as run_verify

    report = run_verify(
        path,
        model_dir,
        gguf,
        tokenizer=tokenizer,
        chat_go=chat.go if chat.target == "go" else None,  # None: the GGUF's own template, as served
        stops=chat.stops,
        context=result.context_limit,
    )
    result.verify = report.as_dict()
    write_json(result.out_dir / "verify.json", result.verify)
    info(report.summary())
    if report.passed:
        return
    path.unlink(missing_ok=True)  # never leave a GGUF that failed verification
    raise ExportError(
        f"{path.name} does not match the HF model: {report.summary()}",
        _verify_hint(report, gguf, limit_reason),
    )


def _verify_hint(report, gguf: str, limit_reason: str) -> str:
    """What to do about a failed --verify: the real cause, not always "more precision"."""
    if report.details:
        return "; ".join(report.details)
    if limit_reason:
        return f"llama.cpp runs this model differently: {limit_reason}; serve it within that context"
    if TYPES[gguf].min_top1 >= 1.0:  # f32/f16 match transformers to rounding when converted right
        return (
            f"an {gguf.upper()} file differs from transformers only by rounding when the conversion is "
            "right: this is a conversion problem, not precision. Open an issue with config.json and verify.json"
        )
    return "try a higher-precision --gguf type (f16)"
