"""The `ollama:NAME` model source: find the GGUF weights of a model the local Ollama has.

Ollama stores a model as a manifest (`manifests/<host>/<namespace>/<model>/<tag>`) listing
content-addressed blobs (`blobs/sha256-<hex>`); the `application/vnd.ollama.image.model`
layer is the GGUF file, and the template/system/params layers are what an export should
reuse. We read the store directly (no server needed) and fall back to asking the server
(`/api/show` names the blob path in its Modelfile) when the store lives elsewhere.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from llmkit.errors import OllamaError, SourceError
from llmkit.headers import read_gguf
from llmkit.ollama.client import parse_parameters, system_from_modelfile
from llmkit.ui import warn

MEDIA = "application/vnd.ollama.image."
REGISTRY = "registry.ollama.ai"
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
FLOAT_TYPES = {0: "F32", 1: "F16", 32: "BF16"}


def models_dir() -> Path:
    return Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models").expanduser()


def split_name(name: str) -> tuple[str, str, str, str]:
    """`[host/][namespace/]model[:tag]` → (host, namespace, model, tag) with Ollama's defaults."""
    rest, tag = name.strip(), "latest"
    if ":" in rest.rsplit("/", 1)[-1]:
        rest, tag = rest.rsplit(":", 1)
    parts = rest.split("/")
    if not 1 <= len(parts) <= 3 or not all(_PART.match(p) for p in [*parts[-2:], tag]):
        raise SourceError(
            f"'ollama:{name}' is not a valid Ollama model name", "names look like llama3.2 or qwen2.5:7b"
        )
    host, ns = REGISTRY, "library"
    if len(parts) == 3:
        host, ns, model = parts
    elif len(parts) == 2:
        ns, model = parts
    else:
        model = parts[0]
    return host, ns, model, tag


def locate_model_gguf(name: str) -> tuple[Path, dict]:
    """(GGUF path, {name, template, parameters, system, file_type}) for a model Ollama has."""
    host, ns, model, tag = split_name(name)
    display = f"{model}:{tag}" if (host, ns) == (REGISTRY, "library") else f"{host}/{ns}/{model}:{tag}"
    found = _from_store(models_dir(), host, ns, model, tag)
    if found is None:
        found = _from_server(display)
    path, meta = found
    display = meta.pop("name", display)
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise SourceError(
                f"the weights of ollama:{display} ({path}) are not a GGUF file",
                "only GGUF-based Ollama models can be converted; use the original Hugging Face model instead",
            )
    meta = {"name": display, **meta, **_gguf_facts(path)}
    if meta["quantized"]:
        warn(
            f"ollama:{display} is quantized ({meta['file_type']}); converting dequantizes it, so fine-tuning "
            "starts from the quantized weights and keeps their quality loss. Prefer the original Hugging Face "
            f"model when you have it{_hf_hint(meta)}."
        )
    return path, meta


def _from_store(root: Path, host: str, ns: str, model: str, tag: str) -> tuple[Path, dict] | None:
    manifest_path = _find_manifest(root / "manifests", host, ns, model, tag)
    if manifest_path is None:
        return None
    try:
        manifest = json.loads(manifest_path.read_text())
        layers = {la["mediaType"].removeprefix(MEDIA): la["digest"] for la in manifest["layers"]}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"unreadable Ollama manifest {manifest_path}: {exc}") from None

    def blob(digest: str) -> Path:
        return root / "blobs" / digest.replace(":", "-")

    if "model" not in layers:
        raise SourceError(f"ollama:{model}:{tag} has no model weights layer (manifest {manifest_path})")
    path = blob(layers["model"])
    if not path.is_file():
        raise SourceError(
            f"the weights of ollama:{model}:{tag} are missing ({path})", f"run `ollama pull {model}:{tag}`"
        )

    def text(kind: str) -> str | None:
        return blob(layers[kind]).read_text() if kind in layers and blob(layers[kind]).is_file() else None

    params = text("params")
    h, n, m, t = manifest_path.relative_to(root / "manifests").parts  # the name as Ollama stored it
    return path, {
        "name": f"{m}:{t}" if (h, n) == (REGISTRY, "library") else f"{h}/{n}/{m}:{t}",
        "template": text("template"),
        "system": text("system"),
        "parameters": json.loads(params) if params else {},
    }


def _find_manifest(manifests: Path, host: str, ns: str, model: str, tag: str) -> Path | None:
    """Ollama matches names case-insensitively; so do we."""
    exact = manifests / host / ns / model / tag
    if exact.is_file():
        return exact
    wanted = [p.lower() for p in (host, ns, model, tag)]
    for candidate in manifests.glob("*/*/*/*"):
        if [p.lower() for p in candidate.relative_to(manifests).parts] == wanted and candidate.is_file():
            return candidate
    return None


def _from_server(display: str) -> tuple[Path, dict]:
    from llmkit.ollama.client import client, errors, server_version

    if server_version() is None:
        raise SourceError(
            f"ollama:{display} is not in the Ollama store at {models_dir()} and no Ollama server answers",
            f"pull it first (`llmkit ollama pull {display}`), or set OLLAMA_MODELS to where Ollama keeps models",
        )
    try:
        with errors(f"show {display}"):
            resp = client().show(display)
    except OllamaError as exc:
        raise SourceError(exc.message, exc.hint or f"pull it first: llmkit ollama pull {display}") from None
    match = re.search(r"^FROM (.+)$", resp.modelfile or "", re.M)
    path = Path(match.group(1).strip()) if match else None
    if path is None or not path.is_file():
        raise SourceError(
            f"the Ollama server has {display} but its weights ({path or 'unknown path'}) are not readable here",
            "set OLLAMA_MODELS to the server's model directory (e.g. /usr/share/ollama/.ollama/models)",
        )
    return path, {
        "template": resp.template,
        "system": system_from_modelfile(resp.modelfile),
        "parameters": parse_parameters(resp.parameters),
    }


def _gguf_facts(path: Path) -> dict:
    header = read_gguf(path)
    kv = header.metadata
    file_type = kv.get("general.file_type", 0)
    try:
        from gguf import LlamaFileType

        label = FLOAT_TYPES.get(file_type) or LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    except ValueError:
        label = f"type {file_type}"
    return {
        "file_type": label,
        "quantized": any(t.ggml_type not in (0, 1, 30) for t in header.tensors),  # F32, F16, BF16
        "architecture": kv.get("general.architecture"),
        "source_url": kv.get("general.source.url") or kv.get("general.base_model.0.repo_url"),
    }


def _hf_hint(meta: dict) -> str:
    return f" ({meta['source_url']})" if meta.get("source_url") else ""
