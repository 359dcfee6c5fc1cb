"""Where a tuned encoder lives, and whether a model directory is an encoder at all.

`llmkit embed train` leaves a plain sentence-transformers model in `runs/NAME/encoder/`; every
encoder path (`--model runs/NAME` for embed, similar, classify; the Python API) accepts the run
directory itself and reads the encoder inside it. A leaf (json and errors only): encoders.py and
the trainer both use it.
"""

from __future__ import annotations

import json
from pathlib import Path

from llmkit.errors import EncoderError

ENCODER_DIR = "encoder"  # llmkit.runs.RunLayout.encoder; spelled here too so this module stays a leaf
# Decoder-only and encoder-decoder heads: a model with one of these is not a text encoder
_NOT_ENCODER = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel", "ForSeq2SeqLM")


def run_encoder(path: Path) -> Path | None:
    """The tuned encoder inside a run directory, or None when `path` is not such a run."""
    inner = Path(path) / ENCODER_DIR
    return inner if (inner / "config.json").is_file() else None


def encoder_dir(path: Path, where: str = "--model") -> Path:
    """`path` as an encoder directory: a run's encoder/, or the dir itself once it is checked."""
    path = Path(path)
    inner = run_encoder(path)
    if inner is not None:
        return inner
    if (path / "recipe.yaml").is_file() and not (path / "config.json").is_file():
        finished = (path / "adapter").is_dir()
        raise EncoderError(
            f"{where} {path}: "
            + (
                "this run trained a language model adapter, not an encoder"
                if finished
                else "this run has no finished encoder/ (its training failed, was stopped or is running)"
            ),
            "point it at a run of `llmkit embed train`"
            if finished
            else f"continue it: llmkit embed train {path / 'recipe.yaml'} --resume",
        )
    check_encoder(path, where)
    return path


def check_encoder(path: Path, where: str = "--model") -> None:
    """A one-line error for a directory that holds no encoder (no config.json, or a generator)."""
    config = Path(path) / "config.json"
    if not config.is_file():
        raise EncoderError(
            f"{where} {path} is not an encoder directory (no config.json)",
            "point it at a sentence-transformers / Hugging Face encoder dir or a run of `llmkit embed train`",
        )
    try:
        arch = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, json.JSONDecodeError, AttributeError):
        arch = []
    generator = [a for a in arch if isinstance(a, str) and a.endswith(_NOT_ENCODER)]
    if generator:
        raise EncoderError(
            f"{where} {path} is a text generator ({generator[0]}), not an encoder",
            "use an encoder such as all-minilm-l6-v2 (BERT, RoBERTa, MPNet, ... with a pooling layer)",
        )
