"""The Ollama Modelfile and the `ollama create` command for an exported GGUF."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from llmkit.errors import ExportError

# Ollama's server-side quantization targets (what `ollama create --quantize` accepts).
OLLAMA_QUANTIZE = ("q8_0", "q4_K_S", "q4_K_M")
# Ollama model names: [host/][namespace/]model[:tag]; parts start alphanumeric/underscore.
_NAME = re.compile(
    r"^(?:[A-Za-z0-9_][\w.-]{0,349}/)?(?:[A-Za-z0-9_][\w-]{0,79}/)?[A-Za-z0-9_][\w.-]{0,79}(?::[\w][\w.-]{0,79})?$"
)


def check_quantize(quantize: str | None, gguf_type: str) -> str | None:
    if quantize is None:
        return None
    match = {q.lower(): q for q in OLLAMA_QUANTIZE}.get(quantize.lower())
    if match is None:
        raise ExportError(
            f"Ollama cannot quantize to '{quantize}'",
            f"Ollama accepts {', '.join(OLLAMA_QUANTIZE)}; for other types write them directly with --gguf",
        )
    if gguf_type not in ("f16", "bf16"):
        raise ExportError(
            f"Ollama only quantizes F16/BF16 GGUFs, not {gguf_type}"
            + (" (an all-F32 file reads as file type 'unknown')" if gguf_type == "f32" else ""),
            "export with --gguf f16 when using --quantize",
        )
    return match


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise ExportError(
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
    template: str,
    stops: list[str],
    system: str | None = None,
    parameters: dict | None = None,
    comment: str = "",
    adapter: str | None = None,
) -> str:
    lines = [f"# {line}" for line in comment.splitlines()]
    lines.append(f"FROM {gguf_name}")
    if adapter:
        lines.append(f"ADAPTER {adapter}")
    lines.append(f"TEMPLATE {_quoted(template, 'template')}")
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
