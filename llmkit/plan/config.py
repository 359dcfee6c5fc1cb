"""The model's config and tokenizer for a plan, without loading or converting weights."""

from __future__ import annotations

import re
from pathlib import Path

from llmkit.errors import first_line
from llmkit.recipe import Recipe


def model_config(recipe: Recipe):
    """(config, tokenizer) for the recipe's model, without loading or converting weights."""
    from transformers import AutoConfig, AutoTokenizer

    from llmkit import sources
    from llmkit.errors import SourceError
    from llmkit.headers import read_gguf
    from llmkit.ui import quiet_transformers

    quiet_transformers()
    m = recipe.model
    ref = m.name.strip()
    gguf = None
    if ref in sources.BUILTIN:
        gguf = sources.embedded_gguf(ref)
    elif ref.startswith("ollama:"):
        from llmkit.ollama import locate_model_gguf

        gguf = locate_model_gguf(ref.removeprefix("ollama:"))[0]
    elif ref.lower().endswith(".gguf"):
        gguf = Path(ref).expanduser()
        if not gguf.is_file():
            raise SourceError(f"GGUF file not found: {gguf}")
    # a non-GGUF or truncated file fails here, before it is hashed or read by transformers
    header = read_gguf(gguf) if gguf is not None else None
    converted = _converted_dir(gguf) if gguf is not None else None
    if converted is not None:  # converted before: its config and tokenizer load fastest
        gguf, ref = None, str(converted)
    if gguf is not None and header is not None:
        arch = header.architecture
        try:
            config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
            config = sources.gguf_config_fixes(config, gguf, arch, header)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except SourceError:
            raise
        except Exception as exc:
            raise SourceError(f"transformers could not read {gguf.name}: {first_line(exc)}") from None
    else:
        if ref in sources.TINY_NAMES or Path(ref).expanduser().is_dir():
            path = sources.resolve(ref)  # tiny models are built in seconds; local dirs are checked
        else:
            path = _hub_config_dir(ref, m.revision)
        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=m.trust_remote_code)
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=m.trust_remote_code)
        except Exception as exc:
            raise SourceError(f"cannot read the config/tokenizer in {path}: {first_line(exc)}") from None
    if m.chat_template:
        p = recipe.resolve_path(m.chat_template) if len(m.chat_template) < 256 else None
        tokenizer.chat_template = p.read_text() if p and p.is_file() else m.chat_template
    return config, tokenizer


def _converted_dir(gguf: Path) -> Path | None:
    """The HF dir `llmkit pull`/`train` already converted this GGUF into, if any (same cache key)."""
    from llmkit import sources
    from llmkit.files import home, sha256_file

    if not gguf.is_file():
        return None
    blob = re.fullmatch(r"sha256-([0-9a-f]{64})", gguf.name)
    digest = blob.group(1) if blob else sha256_file(gguf.resolve())
    final = home() / "models" / f"gguf-{digest[:16]}"
    return final if (final / sources.SOURCE_FILE).is_file() else None


def _hub_config_dir(ref: str, revision: str | None) -> Path:
    """A Hub model's config and tokenizer files only (cached, else downloaded: kilobytes, no weights)."""
    from llmkit import hub, sources

    if "@" in ref:
        ref, _, revision = ref.partition("@")
    if not hub.REPO_ID.match(ref) or sources.looks_local(ref):
        sources.resolve(ref)  # raises the usual error ("unknown model", "no such directory")
    return hub.config_snapshot(ref, revision)


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config
