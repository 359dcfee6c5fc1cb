"""What Ollama is given for an export: the chat template (Go or the model's own, chosen once,
before `--verify` checks it), the Ollama base's metadata, the Modelfile text, and the create call.
Shared by the merged export (`pipeline.py`) and the adapter export (`adapter_export.py`)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmkit.errors import ExportError
from llmkit.ui import info, warn

# A third-party report (not checked here) says Ollama >= 0.34.1 refuses ADAPTER in new models.
ADAPTER_REFUSED_FROM = (0, 34, 1)


@dataclass
class ExportResult:
    out_dir: Path
    gguf: Path | None = None
    gguf_type: str | None = None
    merged_dir: Path | None = None
    adapter_gguf: Path | None = None
    base: str | None = None  # the Modelfile's FROM under an ADAPTER (Ollama model or GGUF file)
    modelfile: Path | None = None
    template_family: str | None = None
    template_proven: bool | None = None
    stops: list[str] = field(default_factory=list)
    context_limit: int | None = None  # num_ctx and the GGUF's context length were capped to this
    verify: dict | None = None
    ollama_model: str | None = None
    ollama_command: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def load_tokenizer(model_dir: Path):
    """The tokenizer, loaded once for the template, the GGUF vocabulary and --verify."""
    from transformers import AutoTokenizer

    from llmkit.exporter.vocab import has_tokenizer

    if not has_tokenizer(model_dir):
        raise ExportError(
            f"{model_dir} is missing its tokenizer (tokenizer.json)",
            "copy tokenizer.json and tokenizer_config.json from the base model into it",
        )
    return AutoTokenizer.from_pretrained(model_dir)


def context_length(trained: int, model_dir: Path) -> int:
    """num_ctx for the Modelfile: the training length, but never below Ollama's usual 2048
    (a 256-token window forgets the conversation after a turn), and never above the model's limit."""
    limit = json.loads((Path(model_dir) / "config.json").read_text()).get("max_position_embeddings")
    wanted = max(trained, 2048)
    return min(wanted, limit) if limit else wanted


def version_tuple(version: str | None) -> tuple[int, ...] | None:
    m = re.match(r"^v?(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    return tuple(int(x or 0) for x in m.groups()) if m else None


def takes_adapters(version: str | None) -> bool:
    """Whether an Ollama server of this version accepts ADAPTER (unknown versions: yes)."""
    v = version_tuple(version)
    return v is None or v < ADAPTER_REFUSED_FROM


def server_version() -> str | None:
    from llmkit.ollama import server_version as read

    return read()


def ollama_base(model_dir: Path, ref: str) -> dict:
    """What Ollama knew about the base (template, parameters, system) when it is `ollama:NAME`.

    Resolving `ollama:NAME` just refreshed this metadata in the converted dir's source file.
    """
    from llmkit.sources import SOURCE_FILE

    meta_file = Path(model_dir) / SOURCE_FILE
    if not ref.startswith("ollama:") or not meta_file.is_file():
        return {}
    return json.loads(meta_file.read_text()).get("ollama") or {}


def chat_template(tokenizer, template, base_ollama: dict | None = None):
    """The chat template for the Modelfile: `template` is None (derive a Go template and prove
    it; the model's own Jinja on Ollama >= 0.30), "native", "go", or a Go template FILE."""
    from llmkit.exporter import templates
    from llmkit.exporter.vocab import chat_template_of
    from llmkit.turns import adds_bos

    jinja = chat_template_of(tokenizer)
    bos = tokenizer.bos_token
    kwargs = {"bos": bos, "add_bos": adds_bos(tokenizer), "eos": tokenizer.eos_token}
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
            stops = [str(s) for s in as_list((base_ollama.get("parameters") or {}).get("stop"))]
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
    base_stops = as_list((base_ollama or {}).get("parameters", {}).get("stop"))
    chat.stops = list(dict.fromkeys([*chat.stops, *map(str, base_stops)]))
    return chat


def choose_target(chat, template, version: str | None) -> None:
    """Go template or the model's own (native): explicit --template wins; else native when the
    --ollama server renders GGUF templates itself (>= 0.30), else the proven Go template."""
    from llmkit.ollama.client import renders_native_templates

    if template is None and chat.family not in ("custom", "ollama-base") and chat.go is not None:
        chat.target = "native" if renders_native_templates(version) else "go"


def report_notes(chat, result: ExportResult) -> None:
    from rich.markup import escape  # template notes quote template text such as "[/INST]"

    result.template_family, result.template_proven, result.stops = chat.family, chat.proven, chat.stops
    result.notes += chat.notes
    for note in chat.notes:
        warn(escape(note))


def modelfile_text(from_: str, chat, system: str | None, params: dict, adapter: str | None = None) -> str:
    from llmkit.exporter.modelfile import render_modelfile

    return render_modelfile(
        from_,
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
        adapter=adapter,
    )


def as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def check_native(chat, version: str) -> None:
    from llmkit.ollama.client import renders_native_templates

    if chat.target == "native" and not renders_native_templates(version):
        why = chat.refused or "--template native was asked for"
        raise ExportError(
            f"Ollama {version} cannot render the model's own chat template (needs >= 0.30) and "
            f"there is no Go template: {why}",
            "upgrade Ollama, or write the Go template yourself and pass it with --template FILE",
        )


def unreachable(result: ExportResult) -> None:
    warn(
        f"no Ollama server is reachable; the files and Modelfile are ready. Create the model with:\n  "
        f"{result.ollama_command}"
    )
    result.notes.append("ollama server not reachable: run ollama_command")


def ollama_create(result: ExportResult, name: str, chat, system, params, quantize, version) -> None:
    from llmkit.exporter.modelfile import ollama_command
    from llmkit.ollama import create_model

    result.ollama_command = ollama_command(name, result.modelfile, quantize)
    if version is None:
        return unreachable(result)
    check_native(chat, version)
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
