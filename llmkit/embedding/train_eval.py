"""Held-out evaluation of an encoder, run before and after `llmkit embed train`.

Retrieval: each held-out anchor searches the whole corpus (every distinct positive and negative
of the file; for labelled data the training rows) with the project's own exact top-k
(search.exact_topk); recall@1, recall@k and MRR (reciprocal rank of the first relevant hit,
counted within the first 100). Labelled data also gets the accuracy of llmkit's classifier
(classify.fit, the model `llmkit classify train` fits) trained on the training rows' vectors and
scored on the held-out rows'.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

MRR_CUTOFF = 100
ROWS = (("recall@1", "recall@1"), ("recall@k", None), ("mrr", "MRR"), ("accuracy", "classify accuracy"))


def evaluate(encode: Callable[[list[str]], np.ndarray], data, k: int) -> dict:
    """Figures for one encoder; {} when nothing is held out."""
    from llmkit.embedding.search import exact_topk

    out: dict = {}
    if data.queries and data.corpus:
        q, c = encode(data.queries), encode(data.corpus)
        depth = min(len(data.corpus), max(k, MRR_CUTOFF))
        _, idx = exact_topk(q, c, depth)
        first = []  # rank (1-based) of each query's first relevant hit; 0 = none within depth
        for row, relevant in zip(idx, data.relevant, strict=True):
            hits = [r for r, i in enumerate(row) if int(i) in relevant]
            first.append(hits[0] + 1 if hits else 0)
        ranks = np.asarray(first)
        out["recall@1"] = round(float(np.mean(ranks == 1)), 4)
        out[f"recall@{k}"] = round(float(np.mean((ranks >= 1) & (ranks <= k))), 4)
        out["mrr"] = round(float(np.mean(np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0))), 4)
        out["queries"] = len(first)
    if data.labelled and data.labelled["held_out"][0]:
        from llmkit.embedding.classify import fit

        (tr_x, tr_y), (te_x, te_y) = data.labelled["train"], data.labelled["held_out"]
        clf = fit(encode(tr_x), tr_y)
        out["accuracy"] = round(float(np.mean(clf.predict(encode(te_x)) == np.asarray(te_y))), 4)
    return out


def table(before: dict, after: dict, k: int) -> str:
    """One table: each figure before and after training, and the change in points."""
    lines = [f"{'held-out':<20}{'before':>8}{'after':>8}{'change':>9}"]
    for key, label in ROWS:
        key = key.replace("@k", f"@{k}")
        if key not in before and key not in after:
            continue
        b, a = before.get(key), after.get(key)
        change = f"{(a - b) * 100:+.1f} pt" if a is not None and b is not None else ""
        lines.append(f"{label or key:<20}{_fmt(b):>8}{_fmt(a):>8}{change:>9}")
    n = after.get("queries") or before.get("queries")
    if n:
        lines.append(f"({n} held-out queries)")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.3f}"
