"""Similarity search over a vectors file written by the embed job.

Exact cosine top-k (a matrix product, in blocks so memory stays bounded) is the default up to
`ANN_MIN_ROWS` rows; above that an HNSW index from faiss (measured against usearch on this
machine: same recall@10 ≈ 0.995, faiss built 2.8x faster) is built once and cached beside the
vectors file. Queries are embedded with the model recorded in the file; another model or
dimension is refused with both named.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.embedding.vectorfile import META_KEY
from llmkit.embedding.vectors import unit_rows
from llmkit.errors import DataError, IndexMismatchError, InvalidArgument

ANN_MIN_ROWS = 100_000
METHODS = ("auto", "exact", "faiss")
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 64


@dataclass
class Vectors:
    path: Path
    matrix: np.ndarray  # (n, dim) float32
    ids: list
    texts: list | None
    meta: dict

    @property
    def model(self) -> str:
        return self.meta.get("model", "?")

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])


def load_vectors(path: Path, columns: tuple[str, ...] = ()) -> Vectors:
    """Read a vectors .parquet (or .npy + its .json) with the encoder info recorded in it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"vectors file {path} not found", "make one with: llmkit embed INPUT -o vectors.parquet"
        )
    if path.suffix == ".npy":
        side = path.with_name(path.name + ".json")
        meta = json.loads(side.read_text()) if side.exists() else {}
        with open(path, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":
                raise DataError(
                    f"{path} is not a .npy file (no NumPy header): truncated, or another format",
                    "make one with: llmkit embed INPUT -o vectors.npy",
                )
        try:  # never unpickle: a vectors file is a plain 2-D float array
            matrix = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(
                f"{path} is not a vectors .npy file (not a plain numeric array: {str(exc).split('.')[0]})",
                "make one with: llmkit embed INPUT -o vectors.npy",
            ) from None
        if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
            raise DataError(
                f"{path} holds a {matrix.ndim}-D {matrix.dtype} array, not a 2-D float matrix of vectors",
                "make one with: llmkit embed INPUT -o vectors.npy",
            )
        return Vectors(path, np.asarray(matrix, np.float32), list(range(len(matrix))), None, meta)
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:
        raise DataError(f"{path} is not a readable Parquet file ({exc})", "check the file") from exc
    schema = pf.schema_arrow
    raw = (schema.metadata or {}).get(META_KEY)
    if raw is None or "vector" not in schema.names:
        raise DataError(
            f"{path} is not a vectors file written by llmkit embed (no vector column / metadata)",
            "make one with: llmkit embed INPUT -o vectors.parquet",
        )
    meta = json.loads(raw)
    names = ["vector", "id"] + [
        c for c in ("text", *columns) if c in schema.names and c not in ("vector", "id")
    ]
    table = pf.read(columns=names)
    vec = table.column("vector").combine_chunks()
    matrix = vec.flatten().to_numpy().reshape(len(vec), vec.type.list_size).astype(np.float32, copy=False)
    texts = table.column("text").to_pylist() if "text" in table.column_names else None
    vectors = Vectors(path, matrix, table.column("id").to_pylist(), texts, meta)
    vectors.extra = {c: table.column(c).to_pylist() for c in columns if c in table.column_names}  # type: ignore
    return vectors


def check_same_model(index: Vectors, encoder) -> None:
    if index.model != encoder.model or index.dim != encoder.dim:
        raise IndexMismatchError(
            f"{index.path} was built with {index.model} (dim {index.dim}), "
            f"but the queries use {encoder.model} (dim {encoder.dim})",
            f"query with --model {index.model}, or re-embed the file with {encoder.model}",
        )


def exact_topk(
    queries: np.ndarray, matrix: np.ndarray, k: int, block: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine (dot product of normalized rows) top-k, scanning the matrix in blocks."""
    k = min(k, len(matrix))
    best_s = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for start in range(0, len(matrix), block):
        scores = queries @ matrix[start : start + block].T
        kk = min(k, scores.shape[1])
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], 1)
        best_i = np.concatenate([best_i, top + start], 1)
        if best_s.shape[1] > k:
            keep = np.argpartition(-best_s, k - 1, axis=1)[:, :k]
            best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_s, order, 1), np.take_along_axis(best_i, order, 1)


def faiss_index(vectors: Vectors):
    """An HNSW (inner product) index over the normalized vectors, cached beside the file."""
    import faiss

    stat = vectors.path.stat()
    cache = vectors.path.with_name(
        f".{vectors.path.name}.hnsw{HNSW_M}-{stat.st_size}-{stat.st_mtime_ns}.faiss"
    )
    if cache.exists():
        index = faiss.read_index(str(cache))
    else:
        from llmkit.ui import info

        info(f"Building an HNSW index over {len(vectors.matrix):,} vectors (once; cached in {cache.name})")
        index = faiss.IndexHNSWFlat(vectors.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.add(np.ascontiguousarray(unit_rows(vectors.matrix)))
        for old in vectors.path.parent.glob(f".{vectors.path.name}.hnsw*.faiss"):
            old.unlink(missing_ok=True)
        tmp = cache.with_name(cache.name + ".tmp")
        faiss.write_index(index, str(tmp))
        tmp.replace(cache)
    index.hnsw.efSearch = HNSW_EF_SEARCH
    return index


def _check_search_args(k: int, method: str) -> None:
    if method not in METHODS:
        raise InvalidArgument(f"unknown search method {method!r}", f"choose one of: {', '.join(METHODS)}")
    if k < 1:
        raise InvalidArgument(f"-k must be at least 1, not {k}", "e.g. -k 5")


def topk(
    queries: np.ndarray, vectors: Vectors, k: int, method: str = "auto"
) -> tuple[np.ndarray, np.ndarray]:
    _check_search_args(k, method)
    if method == "auto":
        method = "faiss" if len(vectors.matrix) >= ANN_MIN_ROWS else "exact"
    queries = np.ascontiguousarray(unit_rows(queries.astype(np.float32)))
    if method == "exact":
        return exact_topk(queries, unit_rows(vectors.matrix), k)
    scores, ids = faiss_index(vectors).search(queries, min(k, len(vectors.matrix)))
    return scores, ids.astype(np.int64)


def similar(
    queries: list[str],
    index_path: Path,
    k: int = 5,
    *,
    model: str | None = None,
    backend: str = "auto",
    precision: str = "auto",
    method: str = "auto",
) -> list[dict]:
    """Top-k neighbours of each query: [{query, hits: [{rank, id, score, text}]}]."""
    from llmkit.embedding.encoders import load_encoder

    if not queries:
        raise InvalidArgument("no queries given", "pass a query, or --queries FILE with one per line")
    _check_search_args(k, method)
    vectors = load_vectors(index_path)
    if vectors.meta.get("model", "").startswith("ollama:") and model is None:
        model = vectors.model
    encoder = load_encoder(model or vectors.model, backend, precision)
    qvec = encoder.encode(queries)
    check_same_model(vectors, encoder)
    scores, idx = topk(qvec, vectors, k, method)
    results = []
    for q, srow, irow in zip(queries, scores, idx, strict=False):
        hits = [
            {
                "rank": r + 1,
                "id": vectors.ids[i],
                "score": round(float(s), 4),
                "text": vectors.texts[i] if vectors.texts else None,
            }
            for r, (s, i) in enumerate(zip(srow, irow, strict=False))
            if i >= 0
        ]
        results.append({"query": q, "hits": hits})
    return results


def similarity(
    a: str, b: str, *, model: str | None = None, backend: str = "auto", precision: str = "auto"
) -> float:
    """Cosine similarity of two texts."""
    from llmkit.embedding.encoders import DEFAULT_MODEL, load_encoder

    vec = load_encoder(model or DEFAULT_MODEL, backend, precision).encode([a, b])
    vec = unit_rows(vec)
    return float(vec[0] @ vec[1])
