"""The encoder interface every backend implements (encoders.py: torch, Ollama; onnx.py: ONNX
Runtime, OpenVINO), with what they share: long-text chunking, the model's sentence-transformers
config, and the size of their CPU thread pools. A module of its own so that onnx.py builds on it
without importing encoders.py (which picks among them and so imports onnx.py).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llmkit.embedding.vectors import unit_rows
from llmkit.errors import InvalidArgument


@dataclass
class Encoder:
    """What every encoder records next to its vectors."""

    model: str  # the model id users see and indexes are checked against
    dim: int
    backend: str
    precision: str
    max_tokens: int | None = None
    chunk_long: bool = False  # split long texts into windows and average (else truncate)
    truncated: int = field(default=0, init=False)  # texts cut at max_tokens so far
    chunked: int = field(default=0, init=False)  # texts split into windows (with chunk_long)
    tok = None  # a `tokenizers.Tokenizer` where the model has one (needed for chunking)
    choice: dict | None = None  # how auto/fast picked this path (calibrate.choose), else None

    def info(self) -> dict:
        return {"model": self.model, "dim": self.dim, "backend": self.backend, "precision": self.precision}

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 matrix, one row per text; long texts truncated (counted) or chunked."""
        texts = list(texts)
        if texts and not all(isinstance(t, str) for t in texts):  # an image (a Path, bytes, pixels)
            raise InvalidArgument(
                f"{self.model} is a text encoder and cannot embed images ({type(texts[0]).__name__})",
                "embed images with an image encoder: --model efficientnet-lite0",
            )
        if not self.chunk_long:
            return self._encode(texts)
        if self.tok is None or not self.max_tokens:
            raise InvalidArgument(
                f"--chunk needs a model with a tokenizer; {self.model} has none", "drop --chunk"
            )
        pieces: list[str] = []
        owner: list[int] = []
        weight: list[int] = []
        for i, text in enumerate(texts):
            for piece, n in self._windows(text):
                pieces.append(piece)
                owner.append(i)
                weight.append(n)
        vecs = self._encode(pieces) * np.asarray(weight, np.float32)[:, None]
        out = np.zeros((len(texts), vecs.shape[1] if len(vecs) else self.dim), np.float32)
        np.add.at(out, owner, vecs)
        return unit_rows(out)

    def _windows(self, text: str) -> list[tuple[str, int]]:
        """Cut a text at token boundaries into pieces that fit the model (2 tokens left for [CLS]/[SEP])."""
        enc = self.tok.encode(text, add_special_tokens=False)
        size = self.max_tokens - 2
        if len(enc.ids) <= size:
            return [(text, max(len(enc.ids), 1))]
        self.chunked += 1
        spans = enc.offsets
        return [
            (text[spans[k][0] : spans[min(k + size, len(spans)) - 1][1]], min(size, len(spans) - k))
            for k in range(0, len(spans), size)
        ]

    def _encode(self, texts: list[str]) -> np.ndarray:  # pragma: no cover - protocol
        raise NotImplementedError


def threads() -> int:
    """CPU threads for an encoder's runtime: OMP_NUM_THREADS, else the CPUs this process may run
    on (its affinity set, which torch honours too), never the machine's whole count."""
    from llmkit.devices import usable_cpus

    return int(os.environ.get("OMP_NUM_THREADS") or 0) or usable_cpus()


def _st_config(path: Path) -> dict:
    """What a hand-made runner needs to match sentence-transformers: max length, pooling, normalize."""
    config = json.loads((path / "config.json").read_text())
    st_cfg = _read_json(path / "sentence_bert_config.json")
    modules = _read_json(path / "modules.json") or []
    pool_dir = next((m["path"] for m in modules if m.get("type", "").endswith("Pooling")), "1_Pooling")
    pool = _read_json(path / pool_dir / "config.json")
    if pool.get("pooling_mode_cls_token"):
        pooling = "cls"
    elif pool.get("pooling_mode_max_tokens"):
        pooling = "max"
    else:
        pooling = "mean"
    max_pos = config.get("max_position_embeddings", 512)
    return {
        "dim": pool.get("word_embedding_dimension") or config["hidden_size"],
        "max_tokens": min(st_cfg.get("max_seq_length") or max_pos, max_pos),
        "pooling": pooling,
        "normalize": any(m.get("type", "").endswith("Normalize") for m in modules),
        "pad_id": config.get("pad_token_id") or 0,
    }


def _read_json(path: Path):
    return json.loads(path.read_text()) if path.exists() else {}
