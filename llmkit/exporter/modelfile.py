"""The Ollama Modelfile and the `ollama create` command for an exported GGUF."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from llmkit.errors import ExportError, InvalidArgument

# Ollama model names: [host/][namespace/]model[:tag]; parts start alphanumeric/underscore.
_NAME = re.compile(
    r"^(?:[A-Za-z0-9_][\w.-]{0,349}/)?(?:[A-Za-z0-9_][\w-]{0,79}/)?[A-Za-z0-9_][\w.-]{0,79}(?::[\w][\w.-]{0,79})?$"
)


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise InvalidArgument(
            f"'{name}' is not a valid Ollama model name",
            "use letters, digits, '_', '-', '.', an optional namespace/ and :tag, e.g. my-model:latest",
        )
    return name


def _quoted(value: str, what: str) -> str:
    if '"""' in value:
        raise ExportError(
            f'the {what} contains """, which a Modelfile cannot quote', "pass it through the API instead"
        )
    return f'"""{value}"""'


def render_modelfile(
    gguf_name: str,
    *,
    template: str | None,
    stops: list[str],
    native: bool = False,
    system: str | None = None,
    parameters: dict | None = None,
    proof: str | None = None,
    refused: str | None = None,
    adapter: str | None = None,
) -> str:
    """A Modelfile that says which Ollama versions it targets and carries both template forms.

    `native`: no TEMPLATE, so Ollama >= 0.30 renders the GGUF's own Jinja chat template; the Go
    template (for older servers) follows as a commented-out block. Otherwise the Go TEMPLATE is
    active (every version) and a comment says how to switch to the native form.
    """
    head = ["Modelfile written by llmkit export."]
    go_block = f"TEMPLATE {_quoted(template, 'template')}" if template else None
    if native:
        head.append(
            "Targets Ollama >= 0.30: there is no TEMPLATE, so the server renders the model's own chat "
            "template (tokenizer.chat_template in the GGUF), exactly as in training."
        )
        if go_block:
            head.append(
                f"For Ollama < 0.30, which needs a Go template, uncomment the TEMPLATE block below "
                f"(remove the leading '# ' of each line): {proof or 'a Go template'}."
            )
        else:
            head.append(
                "Ollama < 0.30 needs a Go template and none could be proven for this model"
                + (f": {refused}" if refused else "")
                + ". Write one and export with --template FILE."
            )
    else:
        head.append(
            "Targets every Ollama version: the TEMPLATE below is a Go template"
            + (f", {proof}." if proof else ".")
        )
        head.append(
            "On Ollama >= 0.30 you may delete the TEMPLATE block: the server then renders the model's own "
            "chat template from the GGUF (also needed for tool calls)."
        )
    lines = [f"# {line}" for line in head]
    lines.append(f"FROM {gguf_name}")
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    if go_block:
        lines += [f"# {ln}" for ln in go_block.split("\n")] if native else [go_block]
    if system:
        lines.append(f"SYSTEM {_quoted(system, 'system prompt')}")
    for stop in stops:
        lines.append(f"PARAMETER stop {_go_quote(stop)}")
    for key, value in (parameters or {}).items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {key} {_go_quote(v) if isinstance(v, str) else v}")
    return "\n".join(lines) + "\n"


def _go_quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ollama_command(name: str, modelfile: Path, quantize: str | None) -> str:
    cmd = ["ollama", "create", name, "-f", str(modelfile)]
    if quantize:
        cmd += ["--quantize", quantize]
    return shlex.join(cmd)
