"""Training data for an encoder: the recipe's file → checked examples, a held-out split, batches.

Forms (schema in train_schema.py): pairs, triplets, scored pairs, labelled rows. Every check runs
here, before a model loads or the run directory is touched, and names the file, row and recipe
key. Labelled rows are held out before they are paired, so no held-out text is ever trained on.

Batches never hold the same text twice (nor, for labelled data, the same label twice): the
in-batch-negatives losses would otherwise push a row away from its own copy. The order is a
pure function of (seed, epoch), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from llmkit.errors import DataError

COLUMNS = {  # form → the data.* keys naming its columns
    "pairs": ("anchor", "positive"),
    "triplets": ("anchor", "positive", "negative"),
    "scored": ("anchor", "positive", "score"),
    "labelled": ("text", "label"),
}


@dataclass
class Example:
    texts: tuple[str, ...]  # (anchor, positive[, negative])
    score: float | None = None
    keys: frozenset = frozenset()  # what may appear once per batch
    avoid: frozenset = frozenset()  # keys no other row of its batch may hold (mined negatives)


@dataclass
class TrainData:
    form: str
    where: str  # the file, as errors name it
    train: list[Example]
    # held-out retrieval: query i's relevant corpus rows are relevant[i]
    queries: list[str] = field(default_factory=list)
    corpus: list[str] = field(default_factory=list)
    relevant: list[set[int]] = field(default_factory=list)
    # labelled data: the classifier's train/held-out texts and labels
    labelled: dict | None = None
    rows: int = 0
    positives: dict[str, set[str]] = field(default_factory=dict)  # anchor → its positives, whole file

    def summary(self) -> dict:
        return {
            "path": self.where,
            "form": self.form,
            "rows": self.rows,
            "train_examples": len(self.train),
            "held_out_queries": len(self.queries),
            "corpus": len(self.corpus),
        }


def load(recipe) -> TrainData:
    """Read and check the recipe's data, split off the held-out rows."""
    from llmkit.readers import read_records

    d = recipe.data
    source = recipe.data_path()
    where = str(source)
    records = read_records(source, split=d.split)
    if d.limit:
        records = records[: d.limit]
    form = d.format if d.format != "auto" else _detect(records[0], d, where)
    names = {key: getattr(d, key) for key in COLUMNS[form]}
    for key, column in names.items():
        if column not in records[0]:
            raise DataError(
                f"{where}: no column {column!r} for data.{key} ({form}); columns: {', '.join(map(str, records[0]))}",
                f"name the column with data.{key}=COLUMN, or set data.format",
            )
    rng = random.Random(recipe.train.seed)
    order = list(range(len(records)))
    rng.shuffle(order)
    n_held = int(round(len(records) * recipe.eval.fraction))
    held, kept = sorted(order[:n_held]), sorted(order[n_held:])
    if form == "labelled":
        return _labelled(records, names, held, kept, where, rng)
    rows = [_row(records[i], i, names, form, where) for i in range(len(records))]
    data = TrainData(form, where, [rows[i] for i in kept], rows=len(records))
    # the corpus: every distinct candidate text in the file (positives and negatives, held-out too)
    index: dict[str, int] = {}
    for ex in rows:
        for text in ex.texts[1:]:
            index.setdefault(text, len(index))
    data.corpus = list(index)
    for ex in rows:
        if ex.score is None or ex.score >= 0.5:
            data.positives.setdefault(ex.texts[0], set()).add(ex.texts[1])
    for i in held:
        ex = rows[i]
        if ex.score is None or ex.score >= 0.5:  # a scored pair is a match from 0.5 up
            data.queries.append(ex.texts[0])
            data.relevant.append({index[ex.texts[1]]})
    return data


def _detect(first: dict, d, where: str) -> str:
    if d.text in first and d.label in first:
        return "labelled"
    if d.anchor in first and d.positive in first:
        if d.score in first:
            return "scored"
        return "triplets" if d.negative in first else "pairs"
    raise DataError(
        f"{where}: cannot tell the data form from its columns ({', '.join(map(str, first))})",
        "give anchor/positive[/negative|/score] or text/label columns, or name them "
        "(data.anchor=..., data.positive=..., data.text=..., data.label=...) and set data.format",
    )


def _text(record: dict, key: str, column: str, i: int, where: str) -> str:
    value = record.get(column)
    if value is None or not str(value).strip():
        raise DataError(
            f"{where} row {i + 1}: empty {key} (column {column!r})",
            "fill it in or remove the row",
        )
    return str(value)


def _row(record: dict, i: int, names: dict, form: str, where: str) -> Example:
    texts = tuple(
        _text(record, k, names[k], i, where) for k in ("anchor", "positive", "negative") if k in names
    )
    if texts[0].strip() == texts[1].strip():
        raise DataError(
            f"{where} row {i + 1}: the anchor equals its positive ({texts[0][:60]!r})",
            "a pair of one text twice teaches nothing: give another positive or remove the row",
        )
    score = None
    if form == "scored":
        raw = record.get(names["score"])
        try:
            score = float(raw)
        except (TypeError, ValueError):
            score = math.nan
        if not 0.0 <= score <= 1.0:
            raise DataError(
                f"{where} row {i + 1}: score {raw!r} is not a number from 0 to 1 (column {names['score']!r})",
                "scale scores to 0-1 (e.g. divide a 0-5 rating by 5)",
            )
    return Example(texts, score, frozenset(texts))


def _labelled(records, names, held, kept, where, rng) -> TrainData:
    texts = [_text(r, "text", names["text"], i, where) for i, r in enumerate(records)]
    labels = []
    for i, r in enumerate(records):
        label = r.get(names["label"])
        if label is None or str(label).strip() == "":
            raise DataError(
                f"{where} row {i + 1}: empty label (column {names['label']!r})", "label it or remove the row"
            )
        labels.append(str(label))
    by_label: dict[str, list[int]] = {}
    for i in kept:
        by_label.setdefault(labels[i], []).append(i)
    all_labels = sorted(set(labels))
    if len(all_labels) < 2:
        raise DataError(
            f"{where}: every row has the label {all_labels[0]!r} (column {names['label']!r})",
            "labelled data needs two labels or more: pairs of one label teach only when others differ",
        )
    for label in all_labels:
        rows = [i for i, x in enumerate(labels) if x == label]
        if len(rows) < 2:
            raise DataError(
                f"{where} row {rows[0] + 1}: label {label!r} has a single row, so it makes no pair",
                "add another row with that label, or remove the row",
            )
        if len(by_label.get(label, [])) < 2:
            raise DataError(
                f"{where}: label {label!r} has {len(rows)} rows, too few to hold some out and pair the rest",
                "add rows with that label, or lower eval.fraction",
            )
    train = []
    for label, rows in by_label.items():  # each row with another of its label, fixed by the seed
        for i in rows:
            j = rng.choice([r for r in rows if r != i])
            train.append(Example((texts[i], texts[j]), None, frozenset({("label", label)})))
    data = TrainData("labelled", where, train, rows=len(records))
    data.corpus = [texts[i] for i in kept]
    corpus_labels = [labels[i] for i in kept]
    for i in held:
        data.queries.append(texts[i])
        data.relevant.append({k for k, x in enumerate(corpus_labels) if x == labels[i]})
    data.labelled = {
        "train": ([texts[i] for i in kept], corpus_labels),
        "held_out": ([texts[i] for i in held], [labels[i] for i in held]),
    }
    return data


def epoch_batches(examples: list[Example], size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches: a seeded order, each batch free of repeated keys (texts or labels) and
    of a row holding a key another row must avoid (its mined negative would be that row's match).
    A leftover batch of one row is dropped: alone it has no negatives."""
    order = list(range(len(examples)))
    random.Random(seed * 100_003 + epoch).shuffle(order)
    out: list[list[int]] = []
    while order:
        batch, seen, avoid, rest = [], set(), set(), []
        for i in order:
            ex = examples[i]
            if len(batch) < size and not (ex.keys & seen or ex.avoid & seen or ex.keys & avoid):
                batch.append(i)
                seen |= ex.keys
                avoid |= ex.avoid
            else:
                rest.append(i)
        out.append(batch)
        order = rest
    return [b for b in out if len(b) > 1]


def schedule(
    examples: list[Example], size: int, seed: int, epochs: float, max_steps: int | None
) -> list[list[int]]:
    """Every step's batch, epoch after epoch: `max_steps`, else `epochs` times an epoch."""
    first = epoch_batches(examples, size, seed, 0)
    if not first:
        raise DataError(
            "the training data makes no batch of two rows with different texts",
            "give more rows (or lower eval.fraction)",
        )
    total = max_steps or max(1, round(epochs * len(first)))
    steps, epoch = list(first), 1
    while len(steps) < total:
        steps += epoch_batches(examples, size, seed, epoch)
        epoch += 1
    return steps[:total]
