"""Ollama: the server (serve), its models (pull, list, show, rm, ps, run, create, embed) and the
`ollama:NAME` model source. Everything goes through the official `ollama` client except the blob
upload (for its progress bar) and /api/version (the client has no method for it).
"""

from llmkit.ollama.client import client, host_url, server_version
from llmkit.ollama.models import create_model, embed, list_models, ps, pull, remove, run, show, upload_blob
from llmkit.ollama.serve import serve
from llmkit.ollama.source import locate_model_gguf, models_dir

__all__ = [
    "client",
    "host_url",
    "server_version",
    "serve",
    "pull",
    "list_models",
    "show",
    "remove",
    "ps",
    "run",
    "create_model",
    "upload_blob",
    "embed",
    "locate_model_gguf",
    "models_dir",
]
