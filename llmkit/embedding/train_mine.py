"""Hard negatives for `llmkit embed train` (`data.mine_negatives: K`).

Before the first step, the model being trained embeds every anchor and the mining corpus once,
and the project's own exact search (search.exact_topk) ranks the corpus for each anchor; the K
nearest texts that are not the anchor's own become its negatives. Pairs become triplets (and
triplets gain K more negatives): MultipleNegativesRanking takes any number of negative columns.

    corpus    pairs/triplets: every distinct positive of the training rows (a held-out row's
              text is never trained on); labelled: the training rows' texts
    excluded  pairs/triplets: the anchor itself, every positive it has anywhere in the file and
              its given negatives; labelled: every text of the anchor's label(s)

A mined negative must not be another row's match in the same batch (it would be that row's
false negative): each example carries `avoid` keys that train_data.epoch_batches keeps apart.
The mined lists travel in every checkpoint, so a resumed run trains on exactly the same rows.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from llmkit.errors import RecipeError

FILE = "negatives.json"  # in each checkpoint: {anchor: [negative, ...]}


def _plan(data) -> tuple[list[str], dict[str, set[int]], dict[str, str] | None]:
    """The mining corpus, each training anchor's excluded corpus rows, and (labelled) text → label."""
    if data.form == "labelled":
        texts, labels = data.labelled["train"]
        corpus = list(dict.fromkeys(texts))
        label_of = dict(zip(texts, labels, strict=True))
        rows_of: dict[str, set[int]] = {}
        for i, text in enumerate(corpus):
            rows_of.setdefault(label_of[text], set()).add(i)
        excluded: dict[str, set[int]] = {}
        for ex in data.train:
            [key] = ex.keys
            excluded.setdefault(ex.texts[0], set()).update(rows_of[key[1]])
        return corpus, excluded, label_of
    corpus = list(dict.fromkeys(ex.texts[1] for ex in data.train))
    index = {text: i for i, text in enumerate(corpus)}
    excluded = {}
    for ex in data.train:
        anchor = ex.texts[0]
        own = {anchor, *ex.texts[1:], *data.positives.get(anchor, ())}
        excluded.setdefault(anchor, set()).update(index[t] for t in own if t in index)
    return corpus, excluded, None


def check(data, k: int | None) -> None:
    """K must leave a choice for every anchor: below the corpus size less the anchor's own texts.
    Counts only, so it runs before a model loads."""
    if not k:
        return
    if data.form == "scored":
        raise RecipeError(
            f"data.mine_negatives: {data.where} holds scored pairs, which train with CoSENT (no negatives)",
            "remove data.mine_negatives, or give pairs, triplets or labelled rows",
        )
    corpus, excluded, _ = _plan(data)
    anchor = min(excluded, key=lambda a: len(corpus) - len(excluded[a]))
    left = len(corpus) - len(excluded[anchor])
    if k >= left:
        raise RecipeError(
            f"data.mine_negatives: {k} must be below {left}, the {len(corpus)} corpus texts less the "
            f"{len(excluded[anchor])} of anchor {anchor[:50]!r} (its own positives)",
            f"use data.mine_negatives={max(1, left - 1)} or lower, or add texts to the data",
        )


def mine(data, encode: Callable[[list[str]], np.ndarray], k: int) -> dict[str, list[str]]:
    """Each training anchor's K nearest non-positive corpus texts, nearest first."""
    from llmkit.embedding.search import exact_topk

    corpus, excluded, _ = _plan(data)
    anchors = list(excluded)
    depth = min(len(corpus), k + max(len(e) for e in excluded.values()))
    _, idx = exact_topk(encode(anchors), encode(corpus), depth)
    out = {}
    for anchor, row in zip(anchors, idx, strict=True):
        out[anchor] = [corpus[int(i)] for i in row if int(i) not in excluded[anchor]][:k]
    return out


def apply(data, negatives: dict[str, list[str]]) -> None:
    """Append each anchor's mined negatives to its examples, with the keys they must not meet."""
    _, _, label_of = _plan(data)
    train = []
    for ex in data.train:
        found = tuple(negatives[ex.texts[0]])
        avoid = {("label", label_of[t]) for t in found} if label_of else set(found)
        train.append(replace(ex, texts=ex.texts + found, avoid=frozenset(avoid)))
    data.train = train


def save(path: Path, negatives: dict[str, list[str]]) -> None:
    (Path(path) / FILE).write_text(json.dumps(negatives, ensure_ascii=False), encoding="utf-8")


def load(checkpoint: Path) -> dict[str, list[str]] | None:
    path = Path(checkpoint) / FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
