"""`llmkit export RUN --adapter-only`: the LoRA as `adapter.gguf` plus a whole Modelfile that puts
it on the run's base (FROM the Ollama model the run came from when its base was `ollama:NAME`,
else the base GGUF), with the run's chat template and stops; `--ollama NAME` creates it.

Where Ollama cannot serve an adapter (a server version that refuses ADAPTER, or a family Ollama
runs in its own engine), this says so before writing and offers the merged export.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmkit.errors import ExportError, InvalidArgument
from llmkit.exporter import serving
from llmkit.exporter.serving import ExportResult
from llmkit.files import atomic_file, write_json
from llmkit.ui import info, warn


def export_adapter(
    run, base_dir: Path, out_dir: Path, gguf: str, *, ollama, quantize, template, system, parameters
) -> ExportResult:
    from llmkit.exporter.adapter import write_adapter_gguf
    from llmkit.exporter.archs import arch_of
    from llmkit.exporter.gguf import read_config

    if quantize:
        raise InvalidArgument(
            "--quantize applies to a model, not to --adapter-only (Ollama quantizes the base it is given)",
            "drop --quantize, or export the merged model (without --adapter-only)",
        )
    merged = f"llmkit export {run.path}" + (f" --ollama {ollama}" if ollama else "")
    arch = arch_of(read_config(base_dir), base_dir)
    if not arch.ollama_adapter:
        why = f"Ollama runs {arch.gguf} models in its own engine, which does not apply LoRA adapters"
        if ollama:
            raise ExportError(
                f"cannot create {ollama} with an adapter: {why}", f"export the merged model: {merged}"
            )
        warn(f"{why}; adapter.gguf still works with llama.cpp (--lora). For Ollama: {merged}")
    version = serving.server_version() if ollama else None
    if version and not serving.takes_adapters(version):
        raise ExportError(
            f"Ollama {version} refuses ADAPTER in new models (reported for >= "
            f"{'.'.join(map(str, serving.ADAPTER_REFUSED_FROM))})",
            f"export the merged model: {merged}",
        )

    adapter = write_adapter_gguf(run.adapter_dir, base_dir, out_dir / "adapter.gguf", gguf)
    result = ExportResult(out_dir=out_dir, adapter_gguf=adapter, gguf_type=gguf)
    info(f"Wrote {adapter}")
    # The run's tokenizer (training saves it beside the adapter, with any recipe chat template).
    tokenizer = serving.load_tokenizer(
        run.adapter_dir if (run.adapter_dir / "tokenizer.json").is_file() else base_dir
    )
    base_ollama = serving.ollama_base(base_dir, run.base_ref)
    chat = serving.chat_template(tokenizer, template, base_ollama)
    if base_ollama:
        inherited = {k: v for k, v in (base_ollama.get("parameters") or {}).items() if k != "stop"}
        parameters = {**inherited, **(parameters or {})}
        system = system if system is not None else base_ollama.get("system")
    # A base GGUF's own Jinja template is the base's, not necessarily the run's: send the Go one.
    if template is None and chat.go is not None and chat.family not in ("custom", "ollama-base"):
        chat.target = "go"
    serving.report_notes(chat, result)
    if system and not chat.system:
        warn("this chat template has no system turn; the SYSTEM prompt is not written")
        system = None

    from_model, base_gguf = _base(run, base_dir, out_dir, gguf, tokenizer, chat)
    result.base = from_model or str(base_gguf)
    params = {**({"num_ctx": _num_ctx(run, base_dir)}), **(parameters or {})}
    result.modelfile = out_dir / "Modelfile"
    with atomic_file(result.modelfile) as fh:
        fh.write(serving.modelfile_text(result.base, chat, system, params, adapter=f"./{adapter.name}"))
    if ollama:
        _create(result, ollama, chat, system, params, version, from_model, base_gguf)
    write_json(out_dir / "export.json", result.as_dict())
    return result


def _base(run, base_dir: Path, out_dir: Path, gguf: str, tokenizer, chat) -> tuple[str | None, Path | None]:
    """(Ollama model, None) for an `ollama:NAME` base; else (None, the base's GGUF file): the file
    the run's base was converted from, or one written here from the base's HF weights."""
    from llmkit.sources import SOURCE_FILE

    if run.base_ref.startswith("ollama:"):
        return run.base_ref.removeprefix("ollama:"), None
    meta_file = Path(base_dir) / SOURCE_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    if meta.get("source") == "gguf" and Path(meta.get("file", "")).is_file():
        return None, Path(meta["file"])  # the adapter was trained on exactly these weights
    from llmkit.exporter.gguf import write_gguf

    info(f"Writing the base as {gguf.upper()} GGUF to {out_dir / 'base.gguf'}")
    written = write_gguf(base_dir, out_dir / "base.gguf", gguf, chat_template=chat.jinja, tokenizer=tokenizer)
    return None, written.path


def _num_ctx(run, base_dir: Path) -> int:
    return serving.context_length(run.recipe.data.max_length, base_dir)


def _create(result: ExportResult, name: str, chat, system, params, version, from_model, base_gguf) -> None:
    from llmkit.exporter.modelfile import ollama_command

    result.ollama_command = ollama_command(name, result.modelfile, None)
    if version is None:
        return serving.unreachable(result)
    serving.check_native(chat, version)
    info(f"Creating Ollama model {name} (the adapter on {result.base})")
    template = chat.go if chat.target == "go" else None
    parameters = {"stop": chat.stops, **params}
    if from_model is None:
        from llmkit.ollama import create_model

        create_model(
            name,
            base_gguf,
            adapter=result.adapter_gguf,
            template=template,
            system=system,
            parameters=parameters,
        )
    else:  # FROM an Ollama model: the server has the base; only the adapter is uploaded
        from llmkit.ollama.client import client, errors
        from llmkit.ollama.models import upload_blob

        digest = upload_blob(result.adapter_gguf)
        with errors(f"create {name}"):
            for part in client().create(
                model=name,
                from_=from_model,
                adapters={result.adapter_gguf.name: digest},
                template=template,
                system=system,
                parameters=parameters,
                stream=True,
            ):
                if part.status:
                    info(part.status)
    result.ollama_model = name
