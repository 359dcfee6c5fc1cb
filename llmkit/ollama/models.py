"""Model operations through the official client: pull, list, show, rm, ps, run, create, embed."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from llmkit.chat_loop import chat_loop, check_prompt, one_shot
from llmkit.errors import OllamaError
from llmkit.files import sha256_file
from llmkit.ollama.client import (
    client,
    errors,
    host_url,
    parse_parameters,
    server_version,
    system_from_modelfile,
)
from llmkit.ollama.client import unreachable as _unreachable
from llmkit.ui import info, progress_bytes, warn


def pull(name: str) -> dict:
    """Pull NAME with one progress bar per layer; Ctrl-C leaves the partial download to resume.

    Returns {"model", "layers": [{"digest", "total", "completed", "updates"}], "bytes"}.
    """
    c = client()
    layers: dict[str, dict] = {}
    with errors(f"pull {name}"), progress_bytes() as bar:
        stream = c.pull(name, stream=True)
        try:
            for part in stream:
                if part.digest and part.total:
                    if part.digest not in layers:
                        label = f"pulling {part.digest.removeprefix('sha256:')[:12]}"
                        task = bar.add_task(label, total=part.total)
                        layers[part.digest] = {
                            "digest": part.digest,
                            "total": part.total,
                            "task": task,
                            "updates": 0,
                        }
                    layer = layers[part.digest]
                    layer["completed"], layer["updates"] = part.completed or 0, layer["updates"] + 1
                    bar.update(layer["task"], completed=layer["completed"])
                elif part.status:
                    info(part.status)
        except KeyboardInterrupt:
            stream.close()  # hang up; the server keeps what it downloaded and resumes next time
            warn(f"pull interrupted: run `llmkit ollama pull {name}` again to resume")
            raise
    rows = [{k: v for k, v in layer.items() if k != "task"} for layer in layers.values()]
    return {"model": name, "layers": rows, "bytes": sum(r["total"] for r in rows)}


def list_models() -> list[dict]:
    with errors("list models"):
        resp = client().list()
    return [
        {
            **_details(m.details),
            "name": m.model,
            "size": int(m.size or 0),
            "digest": (m.digest or "")[:12],
            "modified_at": m.modified_at.isoformat() if m.modified_at else None,
        }
        for m in resp.models
    ]


def show(name: str) -> dict:
    """Family, size, quantization, template, parameters (dict), system, capabilities, context length."""
    with errors(f"show {name}"):
        resp = client().show(name)
    model_info = dict(resp.modelinfo or {})
    arch = model_info.get("general.architecture", "")
    return {
        "name": name,
        **_details(resp.details),
        "context_length": model_info.get(f"{arch}.context_length"),
        "capabilities": list(resp.capabilities or []),
        "template": resp.template,
        "parameters": parse_parameters(resp.parameters),
        "system": system_from_modelfile(resp.modelfile),
        "license": resp.license,
    }


def remove(name: str) -> None:
    with errors(f"rm {name}"):
        client().delete(name)


def ps() -> list[dict]:
    with errors("ps"):
        resp = client().ps()
    return [
        {
            **_details(m.details),
            "name": m.model,
            "size": int(m.size or 0),
            "size_vram": int(m.size_vram or 0),
            "expires_at": m.expires_at.isoformat() if m.expires_at else None,
        }
        for m in resp.models
    ]


def _details(d) -> dict:
    return {
        "family": getattr(d, "family", None),
        "parameter_size": getattr(d, "parameter_size", None),
        "quantization": getattr(d, "quantization_level", None),
        "format": getattr(d, "format", None),
    }


# ----------------------------------------------------------------------------- run


def chat_once(name: str, messages: list[dict], options: dict, write: Callable[[str], object]) -> str:
    """Stream one assistant answer to `write`; return it. `options` goes as a plain dict."""
    pieces = []
    with errors(f"run {name}"):
        for part in client().chat(model=name, messages=messages, options=options or None, stream=True):
            text = part.message.content or ""
            pieces.append(text)
            write(text)
    write("\n")
    return "".join(pieces)


def run(
    name: str,
    prompt: str | None = None,
    *,
    system: str | None = None,
    options: dict | None = None,
    write: Callable[[str], object] | None = None,
    read: Callable[[str], str] = input,
) -> None:
    """One-shot answer to PROMPT, or (no prompt) llmkit.chat_loop's chat, which keeps history."""
    check_prompt(prompt)
    options = dict(options or {})
    out = write or _stdout

    def reply(messages: list[dict]) -> str:
        return chat_once(name, messages, options, out)

    if prompt is not None:
        one_shot(reply, prompt, system)
        return
    chat_loop(reply, name=name, system=system, read=read, write=out)


def _stdout(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


# ----------------------------------------------------------------------------- create, embed


def create_model(
    name: str,
    gguf: Path,
    *,
    template: str | None = None,
    system: str | None = None,
    parameters: dict | None = None,
    quantize: str | None = None,
    adapter: Path | None = None,
    progress: bool = True,
) -> None:
    """Upload GGUF (and a GGUF adapter) as blobs, then create NAME from them on the server."""
    if server_version() is None:
        raise _unreachable()
    files = {_gguf_key(gguf): upload_blob(Path(gguf), progress=progress)}
    adapters = {_gguf_key(adapter): upload_blob(Path(adapter), progress=progress)} if adapter else None
    c = client()
    with errors(f"create {name}"), progress_bytes() as bar:
        task = None
        for part in c.create(
            model=name,
            files=files,
            adapters=adapters,
            template=template,
            system=system,
            parameters=parameters,
            quantize=quantize,
            stream=True,
        ):
            if part.total and part.status.startswith("quantizing"):
                if task is None:
                    task = bar.add_task(part.status, total=part.total)
                bar.update(task, completed=part.completed or 0)
            elif progress and part.status:
                info(part.status)


def _gguf_key(path: Path) -> str:
    name = Path(path).name
    return name if name.endswith(".gguf") else f"{name}.gguf"


def upload_blob(path: Path, *, progress: bool = True) -> str:
    """POST the file to /api/blobs/sha256:… unless the server has it; returns the digest.

    Same wire request as ollama-python's `create_blob`, which has no progress hook and
    reads the file twice; this one shows an upload bar and skips known blobs (HEAD).
    """
    import httpx

    path = Path(path)
    if not path.is_file():
        raise OllamaError(f"{path} does not exist", "export the model first")
    digest = "sha256:" + sha256_file(path)
    url = f"{host_url()}/api/blobs/{digest}"
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if os.environ.get("OLLAMA_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['OLLAMA_API_KEY']}"
    try:
        if httpx.head(url, headers=headers, timeout=30).status_code == 200:
            info(f"{path.name}: the server already has {digest[:19]}")
            return digest
        with progress_bytes() as bar, open(path, "rb") as fh:
            task = bar.add_task(f"uploading {path.name}", total=path.stat().st_size, visible=progress)
            reader = _CountingReader(fh, lambda n: bar.advance(task, n))
            r = httpx.post(
                url, content=reader, headers=headers, timeout=httpx.Timeout(60, read=None, write=None)
            )
    except httpx.ConnectError:
        raise _unreachable() from None
    except httpx.HTTPError as exc:
        raise OllamaError(f"uploading {path.name} to {host_url()} failed: {exc}") from None
    if r.status_code >= 400:
        raise OllamaError(f"the server refused {path.name}: {_error_text(r)} (HTTP {r.status_code})")
    return digest


class _CountingReader:
    """A file wrapper httpx streams from (via read()), reporting bytes as they go out."""

    def __init__(self, fh, on_read: Callable[[int], object]):
        self._fh, self._on_read = fh, on_read

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size)
        self._on_read(len(data))
        return data

    def fileno(self) -> int:  # lets httpx send a Content-Length instead of chunked encoding
        return self._fh.fileno()

    def tell(self) -> int:
        return self._fh.tell()

    def __iter__(self):
        while block := self.read(1 << 20):
            yield block


def _error_text(r) -> str:
    try:
        return r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return r.text.strip()[:200] or r.reason_phrase


def embed(model: str, texts: list[str], *, batch_size: int = 64):
    """Embed texts through /api/embed, in batches → float32 matrix (len(texts), dim)."""
    import numpy as np

    if not texts:
        return np.zeros((0, 0), dtype=np.float32)
    c = client()
    rows: list = []
    with errors(f"embed with {model}"):
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start : start + batch_size])
            vectors = c.embed(model=model, input=batch).embeddings
            if len(vectors) != len(batch):
                raise OllamaError(f"embed with {model}: sent {len(batch)} texts, got {len(vectors)} vectors")
            rows.extend(vectors)
    return np.asarray(rows, dtype=np.float32)
