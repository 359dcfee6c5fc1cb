"""Vector math shared by the encoders, search, calibration and clustering."""

from __future__ import annotations

import numpy as np

_EPS = 1e-12  # a zero vector stays zero instead of becoming NaN


def unit_rows(m: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """Each row scaled to length 1 (L2); pass `out=m` to do it in place."""
    return np.divide(m, np.maximum(np.linalg.norm(m, axis=-1, keepdims=True), _EPS), out=out)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`."""
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), _EPS)
