"""Talking to the Ollama server: where it is, whether it answers, and errors the user can act on."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

from llmkit.errors import OllamaError

DEFAULT_HOST = "127.0.0.1:11434"
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$")
START_HINT = (
    "start it with `llmkit ollama serve` (or `ollama serve`), or point OLLAMA_HOST at a running server"
)


def host_url() -> str:
    """The server URL for OLLAMA_HOST, with the same defaults as the ollama client and server.

    `1.2.3.4` → port 11434, `:5678` → 127.0.0.1, `http://x` → port 80, `https://x` → 443.
    Anything the client would silently mangle (bad port, spaces, unknown scheme) is refused.
    """
    raw = os.environ.get("OLLAMA_HOST", "").strip() or DEFAULT_HOST
    bad = OllamaError(
        f"OLLAMA_HOST is malformed: {raw!r}",
        "use HOST[:PORT] or http(s)://HOST[:PORT], e.g. OLLAMA_HOST=127.0.0.1:11434",
    )
    scheme, sep, rest = raw.partition("://")
    if not sep:
        scheme, rest, port = "http", raw, 11434
    elif scheme in ("http", "https"):
        port = 80 if scheme == "http" else 443
    else:
        raise bad
    try:
        split = urlsplit(f"{scheme}://{rest}")
        port = split.port or port
    except ValueError:
        raise bad from None
    host = split.hostname or "127.0.0.1"
    if split.query or split.fragment or split.username or any(c.isspace() for c in raw):
        raise bad
    try:
        ip = ipaddress.ip_address(host)
        host = f"[{host}]" if ip.version == 6 else host
    except ValueError:
        if not _HOSTNAME.match(host):
            raise bad from None
    path = split.path.strip("/")
    return f"{scheme}://{host}:{port}" + (f"/{path}" if path else "")


def client(timeout: float | None = None):
    """An `ollama.Client` for OLLAMA_HOST (validated first)."""
    url = host_url()  # before `import ollama`, which builds a default client and dies on a bad host
    import ollama

    return ollama.Client(host=url, timeout=timeout)


def server_version(timeout: float = 2.0) -> str | None:
    """The server's version, or None when nothing answers at OLLAMA_HOST."""
    import httpx

    try:
        r = httpx.get(f"{host_url()}/api/version", timeout=timeout)
        r.raise_for_status()
        return str(r.json()["version"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def unreachable() -> OllamaError:
    return OllamaError(f"the Ollama server at {host_url()} is not reachable", START_HINT)


@contextlib.contextmanager
def errors(action: str) -> Iterator[None]:
    """Turn the ollama client's exceptions into one-line OllamaErrors.

    Covers both shapes: HTTP status errors and `{"error": ...}` lines inside a 200 stream
    (status_code -1). Streaming calls raise httpx.ConnectError themselves, not ConnectionError.
    """
    host_url()  # a malformed OLLAMA_HOST must fail here, before `import ollama` does
    import httpx
    import ollama

    try:
        yield
    except ollama.ResponseError as exc:
        message = str(exc.error).strip().splitlines()[0] if str(exc.error).strip() else "unknown error"
        hint = "see `llmkit ollama list` for the models this server has" if exc.status_code == 404 else None
        if "file does not exist" in message:
            hint = "check the name and tag at https://ollama.com/library"
        raise OllamaError(f"{action} failed: {message}", hint) from None
    except (ConnectionError, httpx.ConnectError):
        raise unreachable() from None
    except (httpx.TransportError, httpx.StreamError) as exc:
        raise OllamaError(
            f"{action} failed: the connection to {host_url()} broke ({type(exc).__name__})"
        ) from None


def parse_parameters(text: str | None) -> dict:
    """/api/show `parameters` ("key   value" lines, strings quoted) → dict; repeated keys → list."""
    import json

    params: dict = {}
    for line in (text or "").splitlines():
        key, _, raw = line.strip().partition(" ")
        if not key:
            continue
        raw = raw.strip()
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if key == "stop" or key in params:
            previous = params.get(key, [])
            params[key] = [*(previous if isinstance(previous, list) else [previous]), value]
        else:
            params[key] = value
    return params


def system_from_modelfile(modelfile: str | None) -> str | None:
    """The SYSTEM prompt of a `ollama show` Modelfile (the python client drops the `system` field)."""
    match = re.search(r'^SYSTEM (?:"""(.*?)"""|(.*))$', modelfile or "", re.S | re.M)
    if not match:
        return None
    return match.group(1) if match.group(1) is not None else match.group(2).strip().strip('"')


# Ollama runs GGUF models in llama.cpp's server from 0.30 on; a model without a Go TEMPLATE
# is then rendered with the GGUF's own Jinja chat template (tokenizer.chat_template).
NATIVE_TEMPLATE_VERSION = (0, 30)


def renders_native_templates(version: str | None) -> bool:
    """Whether an Ollama server of this version renders a GGUF's Jinja chat template itself."""
    match = re.match(r"^v?(\d+)\.(\d+)", version or "")
    return bool(match) and (int(match.group(1)), int(match.group(2))) >= NATIVE_TEMPLATE_VERSION
