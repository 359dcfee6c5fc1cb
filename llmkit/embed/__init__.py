"""Embeddings: texts → vectors, and what to do with them (search, classify, cluster).

Python API (mirrors the CLI):
    llmkit.embed(["a phrase", ...])            → float32 matrix, rows L2-normalized
    embed_file("in.txt", "vectors.parquet")     → the streaming, resumable batch job
    search.similar(...), classify.train(...), cluster.cluster(...)
"""

from __future__ import annotations

from llmkit.embed.encoders import DEFAULT_MODEL, load_encoder

__all__ = ["embed", "embed_file", "load_encoder", "DEFAULT_MODEL"]


def embed(
    texts,
    *,
    model: str = DEFAULT_MODEL,
    backend: str = "auto",
    precision: str = "auto",
    normalize: bool = True,
    chunk: bool = False,
):
    """Embed a list of texts (or one string); returns a float32 matrix with one row per text."""
    if isinstance(texts, str):
        texts = [texts]
    encoder = _cached_encoder(model, backend, precision, normalize)
    encoder.chunk_long = chunk
    return encoder.encode(list(texts))


_ENCODERS: dict = {}


def _cached_encoder(model, backend, precision, normalize):
    key = (model, backend, precision, normalize)
    if key not in _ENCODERS:
        _ENCODERS[key] = load_encoder(model, backend, precision, normalize)
    return _ENCODERS[key]


def embed_file(input, output, **kwargs):
    """Run the batch job (see `llmkit.embed.job.embed_file`)."""
    from llmkit.embed.job import embed_file as _run

    return _run(input, output, **kwargs)


from llmkit._callable import make_module_callable  # noqa: E402

make_module_callable(__name__, embed)
