"""A faithful double of the Ollama HTTP API, for tests driven through the real `ollama` client.

Built from reference/ollama/api.md and reference/ollama-gguf-facts.md (server ~v0.12-v0.33):
status codes, error strings, NDJSON streams (errors before the first line are an HTTP status,
errors after it are an in-band `{"error": ...}` line in a 200 stream), blob upload rules and
the `/api/create` validation the real server applies. It keeps its store on disk exactly like
Ollama does (`blobs/sha256-<hex>`, `manifests/registry.ollama.ai/library/<model>/<tag>`), so
code that reads `$OLLAMA_MODELS` directly sees what the double created or pulled.

It does not run models: generate/chat answer with `responder(model, messages, options)`
(default: a deterministic echo of the last user message), and embed returns L2-normalised
hashed bag-of-words vectors (similar texts get similar vectors). `quantize` records the new
quantization level but keeps the GGUF bytes.

In-process:   d = OllamaDouble(tmp / "models"); d.start(); ...; d.stop()
As a process: python tests/ollama_double.py --port N [--models DIR] [--delay SECONDS]
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import math
import os
import re
import shutil
import struct
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

VERSION = "0.12.6"
REGISTRY = "registry.ollama.ai"
MT = "application/vnd.ollama.image."
_DIGEST = re.compile(r"^sha256[:-]([0-9a-fA-F]{64})$")
_NAME_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
_NS_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,79}$")
QUANTIZE_TYPES = {"F32", "F16", "BF16", "Q8_0", "Q4_K_S", "Q4_K_M", "Q4_K"}
# api.Options + runner options the server knows, with the JSON type it insists on.
OPTION_TYPES = {
    **dict.fromkeys(
        [
            "num_keep",
            "seed",
            "num_predict",
            "top_k",
            "repeat_last_n",
            "num_ctx",
            "num_batch",
            "num_gpu",
            "main_gpu",
            "num_thread",
            "draft_num_predict",
        ],
        "integer",
    ),
    **dict.fromkeys(
        [
            "top_p",
            "min_p",
            "typical_p",
            "temperature",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
        ],
        "float",
    ),
    "use_mmap": "bool",
    "stop": "array",
}
# GGUF general.file_type → Ollama's FileType string (0/absent reads as "unknown").
FILE_TYPES = {
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    32: "BF16",
}


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).astimezone().isoformat()


def human_number(n: int) -> str:
    """Ollama's format.HumanNumber (parameter_size)."""
    for scale, suffix, decimals in ((1e9, "B", 1), (1e6, "M", 2)):
        if n >= scale:
            x = n / scale
            return f"{x:.0f}{suffix}" if x == math.floor(x) else f"{x:.{decimals}f}{suffix}"
    return f"{n / 1e3:.0f}K" if n >= 1e3 else str(n)


def parse_name(name: str) -> tuple[str, str, str, str]:
    """`[host/][namespace/]model[:tag]` → (host, namespace, model, tag); ValueError if invalid."""
    if not name or len(name) > 500:
        raise ValueError(name)
    rest, tag = name, "latest"
    if ":" in rest.rsplit("/", 1)[-1]:
        rest, tag = rest.rsplit(":", 1)
    parts = rest.split("/")
    if len(parts) > 3:
        raise ValueError(name)
    host, ns = REGISTRY, "library"
    if len(parts) == 3:
        host, ns, model = parts
    elif len(parts) == 2:
        ns, model = parts
    else:
        model = parts[0]
    if not (_NAME_PART.match(model) and _NAME_PART.match(tag) and _NS_PART.match(ns) and host):
        raise ValueError(name)
    return host, ns, model, tag


def display_name(name: str) -> str:
    host, ns, model, tag = parse_name(name)
    if host == REGISTRY and ns == "library":
        return f"{model}:{tag}"
    return f"{ns}/{model}:{tag}" if host == REGISTRY else f"{host}/{ns}/{model}:{tag}"


def embed_text(text: str, dim: int) -> list[float]:
    """Hashed bag of words, L2-normalised: deterministic, and texts sharing words are close."""
    vec = [0.0] * dim
    for word in re.findall(r"\w+", text.lower()):
        h = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        vec[h % dim] += 1.0 if (h >> 40) & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vec)) or 1.0
    if norm == 1.0 and not any(vec):
        vec[0], norm = 1.0, 1.0
    return [v / norm for v in vec]


def check_template(template: str) -> None:
    """A light Go text/template parse check: balanced delimiters and block actions."""
    depth = 0
    pos = 0
    while (start := template.find("{{", pos)) != -1:
        end = template.find("}}", start)
        if end == -1:
            raise ApiError(
                400, f"template error: template: :{template.count(chr(10), 0, start) + 1}: unclosed action"
            )
        action = template[start + 2 : end].strip("- \t\n")
        word = action.split(" ", 1)[0]
        if word in ("if", "range", "with", "block", "define"):
            depth += 1
        elif word == "end":
            depth -= 1
            if depth < 0:
                line = template.count("\n", 0, start) + 1
                raise ApiError(400, f"template error: template: :{line}: unexpected {{{{end}}}}")
        pos = end + 2
    if depth:
        raise ApiError(400, "template error: template: :1: unexpected EOF")


@dataclass
class RegistryModel:
    """A model the double's 'registry' can send to /api/pull."""

    layers: list[tuple[str, bytes]]  # (media type, content)
    fail_after: int | None = None  # bytes of the model layer after which an in-band error is sent
    error: str = "max retries exceeded: unexpected EOF"
    chunk_delay: float = 0.0  # seconds between progress chunks (to interrupt a pull)
    chunk: int = 1 << 16


@dataclass
class OllamaDouble:
    models_dir: Path
    version: str = VERSION
    requests: list = field(default_factory=list)  # (method, path, json body or None)
    streams: list = field(default_factory=list)  # (path, [every object sent]) per streamed response
    registry: dict = field(default_factory=dict)  # name:tag → RegistryModel
    partial: dict = field(default_factory=dict)  # digest → bytes already downloaded
    loaded: dict = field(default_factory=dict)  # name:tag → expires_at
    responder: object = None  # callable(model, messages, options) -> str
    # callable(gguf_path, texts) -> vectors: /api/embed runs the model's GGUF (as the real server
    # does, in llama.cpp) instead of the hashed bag of words; rows are L2-normalised like Ollama's
    embedder: object = None
    host: str = ""

    def __post_init__(self):
        self.models_dir = Path(self.models_dir)
        (self.models_dir / "blobs").mkdir(parents=True, exist_ok=True)
        (self.models_dir / "manifests").mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._server = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, port: int = 0, host: str = "127.0.0.1") -> OllamaDouble:
        self._server = _Server((host, port), _make_handler(self))
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.host = f"{host}:{self.port}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    # ------------------------------------------------------------------ store

    def blob_path(self, digest: str) -> Path:
        m = _DIGEST.match(digest)
        if not m:
            raise ApiError(400, "invalid digest format")
        return self.models_dir / "blobs" / f"sha256-{m.group(1).lower()}"

    def manifest_path(self, name: str) -> Path:
        host, ns, model, tag = parse_name(name)
        return self.models_dir / "manifests" / host / ns / model / tag

    def write_blob(self, data: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = self.blob_path(digest)
        if not path.exists():
            path.write_bytes(data)
        return digest

    def find(self, name: str) -> str | None:
        """Display name of an existing model (case-insensitive), or None."""
        try:
            wanted = display_name(name).lower()
        except ValueError:
            return None
        for existing in self.model_names():
            if existing.lower() == wanted:
                return existing
        return None

    def model_names(self) -> list[str]:
        root = self.models_dir / "manifests"
        names = []
        for path in root.glob("*/*/*/*"):
            if path.is_file():
                host, ns, model, tag = path.relative_to(root).parts
                names.append(display_name(f"{host}/{ns}/{model}:{tag}"))
        return sorted(names)

    def manifest(self, name: str) -> dict:
        return json.loads(self.manifest_path(name).read_text())

    def layer(self, name: str, kind: str) -> bytes | None:
        for layer in self.manifest(name)["layers"]:
            if layer["mediaType"] == MT + kind:
                return self.blob_path(layer["digest"]).read_bytes()
        return None

    def model(self, name: str) -> dict:
        """Everything a test may want to check about a stored model."""
        found = self.find(name)
        if found is None:
            raise KeyError(name)
        manifest = self.manifest(found)
        config = json.loads(self.blob_path(manifest["config"]["digest"]).read_text())
        text = {k: (self.layer(found, k) or b"").decode() or None for k in ("template", "system", "license")}
        params = self.layer(found, "params")
        model_layer = next((la for la in manifest["layers"] if la["mediaType"] == MT + "model"), None)
        adapters = [la["digest"] for la in manifest["layers"] if la["mediaType"] == MT + "adapter"]
        return {
            "name": found,
            "manifest": manifest,
            "config": config,
            **text,
            "parameters": json.loads(params) if params else {},
            "model_digest": model_layer and model_layer["digest"],
            "adapters": adapters,
        }

    def save_model(self, name: str, layers: list[dict], config: dict) -> None:
        config_bytes = json.dumps(config).encode()
        config_digest = self.write_blob(config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": config_digest,
                "size": len(config_bytes),
            },
            "layers": layers,
        }
        path = self.manifest_path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(manifest))

    def add_model(
        self,
        name: str,
        gguf: Path | bytes,
        *,
        template: str | None = None,
        system: str | None = None,
        parameters: dict | None = None,
    ) -> str:
        """Put a model in the store directly (as if it had been pulled earlier)."""
        data = Path(gguf).read_bytes() if not isinstance(gguf, bytes) else gguf
        layers = [("model", data)]
        if template is not None:
            layers.append(("template", template.encode()))
        if system is not None:
            layers.append(("system", system.encode()))
        if parameters:
            layers.append(("params", json.dumps(parameters).encode()))
        stored = [{"mediaType": MT + k, "digest": self.write_blob(b), "size": len(b)} for k, b in layers]
        self.save_model(name, stored, gguf_config(self.blob_path(stored[0]["digest"])))
        return display_name(name)

    def add_registry_model(
        self,
        name: str,
        gguf: Path | bytes | None = None,
        *,
        size: int = 1 << 20,
        template: str | None = "{{ .Prompt }}",
        parameters: dict | None = None,
        **kwargs,
    ) -> None:
        """Make `name` pullable; without a GGUF its model layer is `size` deterministic bytes."""
        if gguf is None:
            seed = hashlib.sha256(name.encode()).digest()
            data = b"GGUF" + (seed * (size // len(seed) + 1))[: max(size - 4, 0)]
        else:
            data = Path(gguf).read_bytes() if not isinstance(gguf, bytes) else gguf
        layers = [("model", data)]
        if template is not None:
            layers.append(("template", template.encode()))
        if parameters:
            layers.append(("params", json.dumps(parameters).encode()))
        self.registry[display_name(name)] = RegistryModel(layers=layers, **kwargs)

    # ------------------------------------------------------------------ templates (by version)

    def native_templates(self) -> bool:
        """Ollama >= 0.30 runs GGUF models in llama.cpp's server and, for a model without a Go
        TEMPLATE, renders the GGUF's own Jinja chat template (reference §3.2)."""
        m = re.match(r"^v?(\d+)\.(\d+)", self.version)
        return bool(m) and (int(m.group(1)), int(m.group(2))) >= (0, 30)

    def template_of(self, name: str) -> str:
        """The template /api/show reports and chat uses: the Go TEMPLATE layer; else, on >= 0.30,
        the GGUF's tokenizer.chat_template; else Ollama's default `{{ .Prompt }}`. (Old servers'
        create-time autodetection by edit distance to built-in templates is not modelled: the
        double has none, which is what the real server does when nothing is within 100 edits.)"""
        info = self.model(name)
        if info["template"]:
            return info["template"]
        if self.native_templates() and info["model_digest"]:
            jinja = gguf_kv(self.blob_path(info["model_digest"])).get("tokenizer.chat_template")
            if jinja:
                return jinja
        return "{{ .Prompt }}"

    def render_prompt(self, name: str, messages: list[dict]) -> str:
        """The prompt text the server would feed the model for /api/chat `messages` (what the model
        sees before llama.cpp adds BOS): the Modelfile SYSTEM is prepended when the request has
        no system message. Go templates run in real Go (tests/go_template.py); a GGUF's Jinja runs
        the way llama.cpp's server does (BOS text stripped when the vocab adds BOS itself)."""
        found = self.find(name)
        if found is None:
            raise KeyError(name)
        info = self.model(found)
        system = info["system"] or ""
        if info["template"] or not self.native_templates():
            import go_template

            return go_template.build().render(self.template_of(found), messages, system=system)
        kv, _ = read_gguf_header(self.blob_path(info["model_digest"]), keep=("tokenizer.ggml.tokens",))
        jinja = kv.get("tokenizer.chat_template")
        if not jinja:
            raise ApiError(
                500, "model is missing tokenizer.chat_template and Go TEMPLATE support is unavailable"
            )
        tokens = kv.get("tokenizer.ggml.tokens") or []

        def text(key):
            i = kv.get(key)
            return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else ""

        msgs = list(messages)
        if system and (not msgs or msgs[0]["role"] != "system"):
            msgs.insert(0, {"role": "system", "content": system})
        bos = text("tokenizer.ggml.bos_token_id")
        out = (
            jinja_env()
            .from_string(jinja)
            .render(
                messages=msgs,
                add_generation_prompt=True,
                bos_token=bos,
                eos_token=text("tokenizer.ggml.eos_token_id"),
            )
        )
        if kv.get("tokenizer.ggml.add_bos_token") and bos and out.startswith(bos):
            out = out[len(bos) :]
        return out

    # ------------------------------------------------------------------ endpoints

    def version_(self, body):
        return {"version": self.version}

    def tags(self, body):
        models = []
        for name in self.model_names():
            info = self.model(name)
            size = sum(la["size"] for la in info["manifest"]["layers"]) + info["manifest"]["config"]["size"]
            mpath = self.manifest_path(name)
            models.append(
                {
                    "name": name,
                    "model": name,
                    "modified_at": dt.datetime.fromtimestamp(mpath.stat().st_mtime).astimezone().isoformat(),
                    "size": size,
                    "digest": hashlib.sha256(mpath.read_bytes()).hexdigest(),
                    "details": details(info["config"]),
                }
            )
        return {"models": models}

    def show(self, body):
        name = body.get("model") or body.get("name")
        if not name:
            raise ApiError(400, "model is required")
        found = self.find(name)
        if found is None:
            raise ApiError(404, f"model '{name}' not found")
        info = self.model(found)
        params = info["parameters"]
        lines = []
        for key, value in params.items():
            for v in value if isinstance(value, list) else [value]:
                lines.append(f"{key:<30} {json.dumps(v) if isinstance(v, str) else v}")
        template = self.template_of(found)
        modelfile = [
            '# Modelfile generated by "ollama show"',
            f"FROM {self.blob_path(info['model_digest'])}",
            f'TEMPLATE """{template}"""',
        ]
        if info["system"]:
            modelfile.append(f'SYSTEM """{info["system"]}"""')
        modelfile += [f"PARAMETER {line}" for line in lines]
        caps = ["embedding"] if info["config"].get("embedding_only") else ["completion"]
        if ".Tools" in template:
            caps.append("tools")
        resp = {
            "modelfile": "\n".join(modelfile) + "\n",
            "parameters": "\n".join(lines),
            "template": template,
            "details": details(info["config"]),
            "model_info": info["config"].get("model_info", {}),
            "capabilities": caps,
            "modified_at": now(),
        }
        if info["system"]:
            resp["system"] = info["system"]
        if info["license"]:
            resp["license"] = info["license"]
        return resp

    def delete(self, body):
        name = body.get("model") or body.get("name") or ""
        try:
            parse_name(name)
        except ValueError:
            raise ApiError(400, f'name "{name}" is invalid') from None
        found = self.find(name)
        if found is None:
            raise ApiError(404, f"model '{name}' not found")
        self.manifest_path(found).unlink()
        self.loaded.pop(found, None)
        return None

    def copy(self, body):
        src, dst = body.get("source", ""), body.get("destination", "")
        for label, n in (("source", src), ("destination", dst)):
            try:
                parse_name(n)
            except ValueError:
                raise ApiError(400, f'{label} "{n}" is invalid') from None
        found = self.find(src)
        if found is None:
            raise ApiError(404, f'model "{src}" not found')
        target = self.manifest_path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.manifest_path(found), target)
        return None

    def ps(self, body):
        models = []
        for name, expires in sorted(self.loaded.items()):
            if self.find(name) is None:
                continue
            info = self.model(name)
            size = sum(la["size"] for la in info["manifest"]["layers"])
            models.append(
                {
                    "name": name,
                    "model": name,
                    "size": size,
                    "size_vram": 0,
                    "digest": hashlib.sha256(self.manifest_path(name).read_bytes()).hexdigest(),
                    "details": details(info["config"]),
                    "expires_at": expires,
                    "context_length": info["config"].get("context_length", 4096),
                }
            )
        return {"models": models}

    def pull(self, body, emit):
        name = body.get("model") or body.get("name") or ""
        try:
            name = display_name(name)
        except ValueError:
            raise ApiError(400, "invalid model name") from None
        emit({"status": "pulling manifest"})
        spec = self.registry.get(name)
        if spec is None:
            raise ApiError(500, "pull model manifest: file does not exist")
        stored = []
        for kind, data in spec.layers:
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            total, path = len(data), self.blob_path(digest)
            stored.append({"mediaType": MT + kind, "digest": digest, "size": total})
            if path.exists():
                emit(
                    {
                        "status": f"pulling {digest[7:19]}",
                        "digest": digest,
                        "total": total,
                        "completed": total,
                    }
                )
                continue
            done = self.partial.get(digest, 0)
            emit(
                {"status": f"pulling {digest[7:19]}", "digest": digest, "total": total, "completed": done}
                if done
                else {"status": f"pulling {digest[7:19]}", "digest": digest, "total": total}
            )
            while done < total:
                if kind == "model" and spec.fail_after is not None and done >= spec.fail_after:
                    raise ApiError(500, spec.error)
                time.sleep(spec.chunk_delay)
                done = min(total, done + spec.chunk)
                self.partial[digest] = done  # kept if the client goes away: the next pull resumes
                emit(
                    {"status": f"pulling {digest[7:19]}", "digest": digest, "total": total, "completed": done}
                )
            path.write_bytes(data)
            self.partial.pop(digest, None)
        emit({"status": "verifying sha256 digest"})
        emit({"status": "writing manifest"})
        model_blob = self.blob_path(stored[0]["digest"])
        self.save_model(name, stored, gguf_config(model_blob))
        emit({"status": "success"})

    def blob_head(self, digest):
        path = self.blob_path(digest)
        if not path.exists():
            raise ApiError(404, f'blob "{digest}" not found')
        return 200

    def blob_post(self, digest, data: bytes):
        path = self.blob_path(digest)
        if path.exists():
            return 200
        actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual.split(":")[1] != path.name.split("-")[1]:
            raise ApiError(400, f'digest mismatch, expected "{digest}", got "{actual}"')
        tmp = path.with_name(path.name + "-partial")
        tmp.write_bytes(data)
        tmp.rename(path)
        return 201

    def create(self, body, emit):
        name = body.get("model") or body.get("name") or ""
        try:
            name = display_name(name)
        except ValueError:
            raise ApiError(400, "invalid model name") from None
        files, adapters = body.get("files"), body.get("adapters") or {}
        base = body.get("from")
        quantize = body.get("quantize") or body.get("quantization")
        if not base and files is None:
            raise ApiError(400, "neither 'from' or 'files' was specified")
        for mapping in (files or {}, adapters):
            for key, digest in mapping.items():
                if key.startswith("/") or ".." in key.split("/") or key in ("", ".") or "\\" in key:
                    raise ApiError(400, "file path must be relative")
                if not digest or not _DIGEST.match(digest):
                    raise ApiError(400, "invalid digest format")
        if body.get("template") is not None:
            check_template(body["template"])
        if quantize and quantize.upper() not in QUANTIZE_TYPES:
            raise ApiError(
                500,
                f"unsupported quantization type {quantize.upper()} - supported types are "
                "F32, F16, Q4_K_S, Q4_K_M, Q8_0",
            )
        params = body.get("parameters") or {}  # stored as given: the server does not validate them here

        layers: list[dict] = []
        old_params: dict = {}
        if base:
            found = self.find(base)
            if found is None:
                emit({"status": "pulling manifest"})
                raise ApiError(500, "pull model manifest: file does not exist")
            info = self.model(found)
            layers = [la for la in info["manifest"]["layers"] if la["mediaType"] != MT + "params"]
            old_params = info["parameters"]
            config = info["config"]
        if files is not None:
            ggufs = [k for k, d in files.items() if k.endswith(".gguf") or self._is_gguf(d)]
            if any(k.endswith(".safetensors") for k in files):
                raise ApiError(400, "the double only imports GGUF files")
            if not ggufs:
                raise ApiError(400, "unknown type")
            emit({"status": "parsing GGUF"})
            layers = []
            for key in ggufs:
                path = self._blob_for_create(files[key])
                if path.read_bytes()[:4] != b"GGUF":
                    raise ApiError(400, "supplied file was not in GGUF format")
                kind = "adapter" if gguf_kv(path).get("general.type") == "adapter" else "model"
                layers.append({"mediaType": MT + kind, "digest": files[key], "size": path.stat().st_size})
                emit({"status": f"using existing layer {files[key]}"})
            model_layers = [la for la in layers if la["mediaType"] == MT + "model"]
            if not model_layers:
                raise ApiError(400, "unknown type")
            config = gguf_config(self.blob_path(model_layers[0]["digest"]))
        if adapters:
            if not layers:
                raise ApiError(400, "no base model specified for the adapter")
            if len(adapters) > 1:
                raise ApiError(400, "only one adapter is currently supported")
            for key, digest in adapters.items():
                path = self._blob_for_create(digest)
                if not key.endswith(".gguf") or path.read_bytes()[:4] != b"GGUF":
                    raise ApiError(400, "supplied file was not in GGUF format")
                layers.append({"mediaType": MT + "adapter", "digest": digest, "size": path.stat().st_size})
                emit({"status": f"using existing layer {digest}"})
        if quantize:
            source = config.get("file_type", "unknown")
            if source not in ("F16", "BF16", "F32"):
                raise ApiError(500, "quantization is only supported for F16, BF16 and F32 models")
            target = "Q4_K_M" if quantize.upper() == "Q4_K" else quantize.upper()
            total = next(la["size"] for la in layers if la["mediaType"] == MT + "model")
            for done in (total // 2, total):
                emit(
                    {
                        "status": f"quantizing {source} model to {target}",
                        "digest": "0000000000000000000",
                        "total": total,
                        "completed": done,
                    }
                )
            emit({"status": "verifying conversion"})
            config = {**config, "file_type": target}
        for kind in ("template", "system", "license"):
            value = body.get(kind)
            if isinstance(value, list):
                value = "\n".join(value)
            if value is not None:
                data = value.encode()
                digest = self.write_blob(data)
                layers = [la for la in layers if la["mediaType"] != MT + kind or kind == "license"]
                layers.append({"mediaType": MT + kind, "digest": digest, "size": len(data)})
                emit({"status": f"creating new layer {digest}"})
        merged = {**old_params, **params}
        if merged:
            data = json.dumps(merged).encode()
            digest = self.write_blob(data)
            layers.append({"mediaType": MT + "params", "digest": digest, "size": len(data)})
            emit({"status": f"creating new layer {digest}"})
        emit({"status": "writing manifest"})
        self.save_model(name, layers, config)
        emit({"status": "success"})

    def _blob_for_create(self, digest: str) -> Path:
        path = self.blob_path(digest)
        if not path.exists():
            raise ApiError(500, f"open {path}: no such file or directory")
        return path

    def _is_gguf(self, digest: str) -> bool:
        path = self.blob_path(digest)
        return path.exists() and path.read_bytes()[:4] == b"GGUF"

    def generate(self, body, emit):
        model = self._runnable(body)
        check_options(body.get("options"))
        prompt = body.get("prompt") or ""
        if not prompt:
            return emit(self._load_reply(model, body, {"response": ""}))
        text = self._reply(model, [{"role": "user", "content": prompt}], body)
        self._stream_reply(
            model, text, body, emit, lambda piece: {"response": piece}, {"response": "", "context": [1, 2, 3]}
        )

    def chat(self, body, emit):
        model = self._runnable(body)
        check_options(body.get("options"))
        messages = body.get("messages") or []
        for m in messages:
            if "role" not in m:
                raise ApiError(400, "invalid message: missing role")
        if not messages:
            return emit(self._load_reply(model, body, {"message": {"role": "assistant", "content": ""}}))
        text = self._reply(model, messages, body)
        self._stream_reply(
            model,
            text,
            body,
            emit,
            lambda piece: {"message": {"role": "assistant", "content": piece}},
            {"message": {"role": "assistant", "content": ""}},
        )

    def embed(self, body):
        name = body.get("model") or ""
        found = self.find(name)
        if found is None:
            raise ApiError(404, f"model '{name}' not found")
        check_options(body.get("options"))
        inputs = body.get("input", [])
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
            raise ApiError(400, "invalid input type")
        dim = self.model(found)["config"].get("embedding_length", 384)
        vectors = [embed_text(t, dim) for t in inputs]
        model_layer = next(
            (x for x in self.manifest(found)["layers"] if x["mediaType"] == MT + "model"), None
        )
        if self.embedder is not None and model_layer and inputs:
            rows = [
                [float(x) for x in v] for v in self.embedder(self.blob_path(model_layer["digest"]), inputs)
            ]
            vectors = [[x / (math.sqrt(sum(y * y for y in v)) or 1.0) for x in v] for v in rows]
        if body.get("dimensions"):
            n = body["dimensions"]
            if n < 1 or n > dim:
                raise ApiError(400, f"dimensions must be between 1 and {dim}")
            vectors = [embed_text_truncate(v, n) for v in vectors]
        self._touch(found, body)
        return {
            "model": name,
            "embeddings": vectors,
            "total_duration": 1000,
            "load_duration": 100,
            "prompt_eval_count": sum(len(t.split()) for t in inputs),
        }

    # ------------------------------------------------------------------ helpers for generate/chat

    def _runnable(self, body) -> str:
        name = body.get("model") or ""
        found = self.find(name)
        if found is None:
            raise ApiError(404, f"model '{name}' not found")
        if self.model(found)["config"].get("embedding_only"):
            raise ApiError(400, f'"{name}" does not support generate')
        return found

    def _touch(self, model: str, body) -> None:
        keep = body.get("keep_alive")
        if keep in (0, 0.0, "0", "0s"):
            self.loaded.pop(model, None)
        else:
            self.loaded[model] = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=5)).isoformat()

    def _load_reply(self, model, body, extra):
        self._touch(model, body)
        unload = body.get("keep_alive") in (0, 0.0)
        return {
            "model": body["model"],
            "created_at": now(),
            **extra,
            "done": True,
            "done_reason": "unload" if unload else "load",
        }

    def _reply(self, model, messages, body) -> str:
        self._touch(model, body)
        responder = self.responder or (lambda m, msgs, opts: "You said: " + msgs[-1]["content"])
        return responder(model, messages, body.get("options") or {})

    def _stream_reply(self, model, text, body, emit, piece, final):
        opts = body.get("options") or {}
        words = re.findall(r"\S+\s*", text)
        limit = opts.get("num_predict")
        reason = "stop"
        if isinstance(limit, int) and 0 <= limit < len(words):
            words, reason = words[:limit], "length"
        metrics = {
            "total_duration": 2_000_000,
            "load_duration": 500_000,
            "prompt_eval_count": 5,
            "prompt_eval_duration": 300_000,
            "eval_count": len(words),
            "eval_duration": 1_000_000,
        }
        if body.get("stream", True):
            for w in words:
                emit({"model": body["model"], "created_at": now(), **piece(w), "done": False})
            emit(
                {
                    "model": body["model"],
                    "created_at": now(),
                    **final,
                    "done": True,
                    "done_reason": reason,
                    **metrics,
                }
            )
        else:
            whole = piece("".join(words))
            emit(
                {
                    "model": body["model"],
                    "created_at": now(),
                    **final,
                    **whole,
                    "done": True,
                    "done_reason": reason,
                    **metrics,
                }
            )


def embed_text_truncate(vector: list[float], n: int) -> list[float]:
    head = vector[:n]
    norm = math.sqrt(sum(v * v for v in head)) or 1.0
    return [v / norm for v in head]


def check_option(key, value) -> None:
    kind = OPTION_TYPES.get(key)
    ok = {
        "integer": lambda v: (
            isinstance(v, int) and not isinstance(v, bool) or (isinstance(v, float) and v.is_integer())
        ),
        "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "bool": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, (list, str)),
        None: lambda v: True,  # unknown options are logged and ignored by the real server
    }[kind]
    if not ok(value):
        raise ApiError(400, f'option "{key}" must be of type {kind}')


def check_options(options) -> None:
    if options is None:
        return
    if not isinstance(options, dict):
        raise ApiError(400, "json: cannot unmarshal options")
    for key, value in options.items():
        check_option(key, value)


_SCALAR = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def read_gguf_header(path: Path, keep: tuple[str, ...] = ()) -> tuple[dict, list[tuple[str, int, int]]]:
    """GGUF metadata and (name, ggml type, element count) per tensor, without touching the weights.

    gguf.GGUFReader builds an object per token string (seconds for a 49k vocabulary); reading
    the header directly takes milliseconds. Arrays longer than 5 items come back as [].
    """
    with open(path, "rb") as f:

        def unpack(fmt: str):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))

        def string() -> str:
            (n,) = unpack("<Q")
            if n > 1 << 24:
                raise ValueError("corrupt GGUF string length")
            return f.read(n).decode("utf-8", "replace")

        def value(vtype: int):
            if vtype == 8:
                return string()
            if vtype == 9:
                sub, n = unpack("<IQ")
                if sub in _SCALAR and n > 5:
                    f.seek(n * struct.calcsize(_SCALAR[sub]), 1)
                    return []
                items = [value(sub) for _ in range(n)]
                return items if n <= 5 else []
            return unpack(_SCALAR[vtype])[0]

        magic, _version, n_tensors, n_kv = unpack("<4sIQQ")
        if magic != b"GGUF" or n_kv > 1 << 20 or n_tensors > 1 << 24:
            raise ValueError("not a GGUF file (bad magic or header)")
        kv = {}
        for _ in range(n_kv):
            key = string()
            (vtype,) = unpack("<I")
            if key in keep and vtype == 9:  # a long array the caller needs whole (token texts)
                sub, n = unpack("<IQ")
                kv[key] = [value(sub) for _ in range(n)]
            else:
                kv[key] = value(vtype)
        tensors = []
        for _ in range(n_tensors):
            name = string()
            (n_dims,) = unpack("<I")
            dims = unpack(f"<{n_dims}Q")
            (ggml_type,) = unpack("<I")
            unpack("<Q")  # data offset
            tensors.append((name, ggml_type, math.prod(dims)))
    return kv, tensors


def jinja_env():
    """A Jinja environment like llama.cpp's and transformers' for chat templates."""
    import datetime

    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, ensure_ascii=False, indent=indent)
    return env


def gguf_kv(path: Path) -> dict:
    """GGUF metadata as /api/show's model_info holds it, plus the parameter count Ollama computes."""
    kv, tensors = read_gguf_header(path)
    return {**kv, "general.parameter_count": sum(n for _, _, n in tensors)}


def gguf_config(path: Path) -> dict:
    """The config blob Ollama derives from a GGUF model layer (plus model_info for /api/show)."""
    try:
        kv = gguf_kv(path)
    except Exception:  # pulled stand-in layers are not parseable GGUF
        return {
            "model_format": "gguf",
            "model_family": "llama",
            "model_families": ["llama"],
            "model_type": "1M",
            "file_type": "Q4_0",
            "model_info": {},
        }
    arch = kv.get("general.architecture", "llama")
    info = {k: v for k, v in kv.items() if k not in ("general.name", "tokenizer.chat_template")}
    return {
        "model_format": "gguf",
        "model_family": arch,
        "model_families": [arch],
        "model_type": human_number(kv["general.parameter_count"]),
        "file_type": FILE_TYPES.get(kv.get("general.file_type", 0), "unknown"),
        "embedding_length": kv.get(f"{arch}.embedding_length", 384),
        "context_length": kv.get(f"{arch}.context_length", 4096),
        # Ollama: a GGUF with <arch>.pooling_type is an embedding model (capability "embedding")
        **({"embedding_only": True} if f"{arch}.pooling_type" in kv else {}),
        "model_info": info,
        "os": "linux",
        "architecture": "amd64",
    }


def details(config: dict) -> dict:
    return {
        "parent_model": "",
        "format": config.get("model_format", "gguf"),
        "family": config.get("model_family", ""),
        "families": config.get("model_families"),
        "parameter_size": config.get("model_type", ""),
        "quantization_level": config.get("file_type", ""),
    }


# ---------------------------------------------------------------------- HTTP


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)  # a client hanging up is not a double bug


def _make_handler(double: OllamaDouble):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "ollama-double"

        def log_message(self, *args):  # keep test output clean
            pass

        # -- plumbing
        def _raw_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = bytearray()
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return bytes(data)
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _json_body(self) -> dict:
            raw = self._raw_body()
            if not raw:
                raise ApiError(400, "missing request body")
            try:
                body = json.loads(raw)
            except ValueError as exc:
                raise ApiError(400, str(exc)) from None
            if not isinstance(body, dict):
                raise ApiError(400, "json: cannot unmarshal array into Go value of type api.Request")
            return body

        def _send(self, status: int, body=None, content_type="application/json; charset=utf-8"):
            data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
            self.send_response(status)
            if data or content_type.startswith("text"):
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _stream(self, handler, body):
            """NDJSON when stream is absent/true; errors before any line → HTTP status, after → in-band."""
            streaming = body.get("stream", True)
            lines: list[dict] = []
            double.streams.append((self.path, lines))
            started = False

            def emit(obj):
                nonlocal started
                lines.append(obj)
                if not streaming:
                    return
                if not started:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-ndjson")
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    started = True
                chunk = json.dumps(obj).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()

            try:
                handler(body, emit)
            except ApiError as exc:
                if not started:
                    return self._send(exc.status, {"error": exc.message})
                emit({"error": exc.message})
            if started:
                self.wfile.write(b"0\r\n\r\n")
            elif not streaming:
                self._send(200, lines[-1] if lines else {})

        def _dispatch(self):
            path = urlsplit(self.path).path.rstrip("/") or "/"
            method = self.command
            try:
                if path.startswith("/api/blobs/"):
                    digest = path.removeprefix("/api/blobs/")
                    double.requests.append((method, path, None))
                    if method == "HEAD":
                        return self._send(double.blob_head(digest))
                    if method == "POST":
                        return self._send(double.blob_post(digest, self._raw_body()))
                    raise ApiError(405, "405 method not allowed")
                if path == "/" and method in ("GET", "HEAD"):
                    return self._send(200, b"Ollama is running", "text/plain; charset=utf-8")
                routes = {
                    ("GET", "/api/version"): double.version_,
                    ("HEAD", "/api/version"): double.version_,
                    ("GET", "/api/tags"): double.tags,
                    ("HEAD", "/api/tags"): double.tags,
                    ("GET", "/api/ps"): double.ps,
                    ("POST", "/api/show"): double.show,
                    ("DELETE", "/api/delete"): double.delete,
                    ("POST", "/api/copy"): double.copy,
                    ("POST", "/api/embed"): double.embed,
                }
                streams = {
                    "/api/pull": double.pull,
                    "/api/create": double.create,
                    "/api/generate": double.generate,
                    "/api/chat": double.chat,
                }
                if (method, path) in routes:
                    body = self._json_body() if method in ("POST", "DELETE") else {}
                    double.requests.append((method, path, body or None))
                    with double._lock:
                        result = routes[(method, path)](body)
                    return self._send(200, result)
                if method == "POST" and path in streams:
                    body = self._json_body()
                    double.requests.append((method, path, body))
                    return self._stream(streams[path], body)
                raise ApiError(404, "404 page not found")
            except ApiError as exc:
                self._send(exc.status, {"error": exc.message})
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away (e.g. Ctrl-C during a pull)

        do_GET = do_POST = do_HEAD = do_DELETE = do_PUT = _dispatch

    return Handler


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--host",
        default=os.environ.get("OLLAMA_HOST", "127.0.0.1:11434"),
        help="bind address (like `ollama serve`, default $OLLAMA_HOST)",
    )
    parser.add_argument("--port", type=int, help="port (overrides the one in --host)")
    parser.add_argument(
        "--models", default=os.environ.get("OLLAMA_MODELS") or str(Path.home() / ".ollama/models")
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before listening")
    parser.add_argument(
        "--registry-model", action="append", default=[], help="NAME=SIZE: a model /api/pull can download"
    )
    args = parser.parse_args(argv)
    split = urlsplit(args.host if "://" in args.host else f"http://{args.host}")
    port = args.port if args.port is not None else (split.port or 11434)
    time.sleep(args.delay)
    double = OllamaDouble(Path(args.models))
    for spec in args.registry_model:
        name, _, size = spec.partition("=")
        double.add_registry_model(name, size=int(size or 1 << 20))
    double.start(port=port, host=split.hostname or "127.0.0.1")
    print(f"ollama double {double.version} listening on {double.host}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        double.stop()


if __name__ == "__main__":
    sys.exit(main())
