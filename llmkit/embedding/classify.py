"""Text classification: embeddings + scikit-learn logistic regression, saved without pickle.

A classifier dir holds `classifier.safetensors` (coef, intercept as float32 tensors) and
`classifier.json` (classes, the encoder's model id and dimension, the held-out report). Loading
reads JSON and safetensors only and checks every shape, so a tampered dir can never run code;
prediction is a matrix product and a softmax in numpy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.embedding.encoders import DEFAULT_MODEL, load_encoder
from llmkit.errors import ClassifierError, DataError, InvalidArgument, LlmkitError
from llmkit.files import atomic_dir
from llmkit.readers import Bad, read_rows

FORMAT = "llmkit-classifier/1"
WEIGHTS, CONFIG = "classifier.safetensors", "classifier.json"


@dataclass
class Classifier:
    path: Path
    classes: list[str]
    coef: np.ndarray  # (n_classes, dim), or (1, dim) for two classes
    intercept: np.ndarray
    config: dict

    def proba(self, vectors: np.ndarray) -> np.ndarray:
        logits = vectors @ self.coef.T + self.intercept
        if len(self.classes) == 2:  # sklearn's binary model: one logit for classes[1]
            p1 = 1.0 / (1.0 + np.exp(-logits[:, 0]))
            return np.stack([1 - p1, p1], axis=1)
        logits = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)

    def encoder(self, backend: str = "auto", precision: str = "auto"):
        enc = self.config["encoder"]
        try:
            encoder = load_encoder(enc["model"], backend, precision, enc.get("normalized", True))
        except LlmkitError as exc:
            raise ClassifierError(
                f"{self.path} needs encoder {enc['model']}, which is not available: {exc.message}",
                exc.hint or "install or download that model, then retry",
            ) from exc
        if encoder.dim and encoder.dim != self.coef.shape[1]:
            raise ClassifierError(
                f"{self.path}: encoder {enc['model']} gives dim {encoder.dim}, "
                f"the classifier expects {self.coef.shape[1]}",
                "retrain the classifier",
            )
        return encoder


def read_labelled(path: Path, text_column: str, label_column: str) -> tuple[list[str], list[str]]:
    texts, labels = [], []
    for row in read_rows(Path(path), text_column):
        if isinstance(row, Bad):
            raise row.error(path)
        if label_column not in row.extra:
            raise DataError(
                f"{path}: no label column {label_column!r}; available columns: "
                f"{', '.join(map(str, row.extra))}",
                "pick one with --label-column",
            )
        label = row.extra[label_column]
        if label is None or str(label).strip() == "":
            raise DataError(f"{path}: row {row.index + 1} has no label", "label every row or remove it")
        texts.append(row.text)
        labels.append(str(label))
    if not texts:
        raise DataError(f"{path} has no rows", "give a file with labelled rows")
    return texts, labels


def report(y_true: list[str], y_pred: list[str], classes: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    return {
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4),
        "macro_f1": round(
            float(f1_score(y_true, y_pred, labels=classes, average="macro", zero_division=0)), 4
        ),
        "per_class": {
            c: {
                "precision": round(float(p[i]), 4),
                "recall": round(float(r[i]), 4),
                "f1": round(float(f[i]), 4),
                "support": int(s[i]),
            }
            for i, c in enumerate(classes)
        },
        "confusion": {"labels": classes, "matrix": confusion_matrix(y_true, y_pred, labels=classes).tolist()},
        "n": len(y_true),
    }


def fit(vectors: np.ndarray, labels: list[str]):
    """The classifier `classify train` fits (also scored by `embed train`'s evaluation)."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=2000, C=10.0).fit(vectors, labels)


def train(
    data: Path,
    out_dir: Path,
    *,
    text_column: str = "text",
    label_column: str = "label",
    model: str = DEFAULT_MODEL,
    backend: str = "auto",
    precision: str = "auto",
    test_size: float = 0.2,
    seed: int = 0,
    force: bool = False,
) -> dict:
    """Fit on a stratified split, report on the held-out part, save the fitted model."""
    from safetensors.numpy import save_file
    from sklearn.model_selection import train_test_split

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise InvalidArgument(f"{out_dir} already exists", "pick another -o or pass --force to replace it")
    texts, labels = read_labelled(Path(data), text_column, label_column)
    classes = sorted(set(labels))
    counts = {c: labels.count(c) for c in classes}
    if len(classes) < 2:
        raise DataError(
            f"{data}: only one label ({classes[0]}) in {label_column!r}", "a classifier needs ≥ 2 labels"
        )
    if min(counts.values()) < 2:
        rare = [c for c, n in counts.items() if n < 2]
        raise DataError(f"{data}: label(s) {', '.join(rare)} have fewer than 2 rows", "add examples for them")
    encoder = load_encoder(model, backend, precision)
    vectors = encoder.encode(texts)
    x_tr, x_te, y_tr, y_te = train_test_split(
        vectors,
        labels,
        test_size=test_size,
        random_state=seed,
        stratify=labels if len(texts) * test_size >= len(classes) else None,
    )
    clf = fit(x_tr, y_tr)
    if list(clf.classes_) != classes:
        raise DataError(f"{data}: the training split lacks some labels", "add more examples per label")
    held_out = report(y_te, list(clf.predict(x_te)), classes)
    config = {
        "format": FORMAT,
        "classes": classes,
        "encoder": {**encoder.info(), "normalized": True},
        "text_column": text_column,
        "label_column": label_column,
        "train_rows": len(y_tr),
        "held_out": held_out,
        "data": str(data),
    }
    with atomic_dir(out_dir, replace=True) as tmp:
        # ascontiguousarray: sklearn may hand back Fortran-ordered arrays, which safetensors would scramble
        save_file(
            {
                "coef": np.ascontiguousarray(clf.coef_, np.float32),
                "intercept": np.ascontiguousarray(clf.intercept_, np.float32),
            },
            str(tmp / WEIGHTS),
        )
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return config


def load(path: Path) -> Classifier:
    """Read and check a classifier dir; JSON + safetensors only, nothing is executed."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
        raise ClassifierError(
            f"{path} is not a classifier dir (needs {CONFIG} and {WEIGHTS})",
            "make one with: llmkit classify train DATA -o DIR",
        )
    bad = f"{path} looks tampered with or corrupt"
    hint = "retrain it with: llmkit classify train"
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ClassifierError(f"{bad}: {CONFIG} is not JSON ({exc})", hint) from exc
    try:
        tensors = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ClassifierError(f"{bad}: {WEIGHTS} is not a valid safetensors file ({exc})", hint) from exc
    ok = (
        isinstance(config, dict)
        and config.get("format") == FORMAT
        and isinstance(config.get("classes"), list)
        and isinstance(config.get("encoder"), dict)
        and isinstance(config["encoder"].get("model"), str)
    )
    if not ok:
        raise ClassifierError(f"{bad}: {CONFIG} lacks format/classes/encoder", hint)
    classes = [str(c) for c in config["classes"]]
    coef, intercept = tensors.get("coef"), tensors.get("intercept")
    rows = 1 if len(classes) == 2 else len(classes)
    dim = config["encoder"].get("dim")
    if (
        coef is None
        or intercept is None
        or coef.ndim != 2
        or coef.shape != (rows, dim)
        or intercept.shape != (rows,)
        or len(set(classes)) != len(classes)
        or len(classes) < 2
    ):
        shapes = {k: list(v.shape) for k, v in tensors.items()}
        raise ClassifierError(
            f"{bad}: tensor shapes {shapes} do not fit {len(classes)} classes × dim {dim}", hint
        )
    return Classifier(path, classes, coef.astype(np.float32), intercept.astype(np.float32), config)


def predict(
    clf_dir: Path,
    input: Path,
    *,
    column: str | None = None,
    id_column: str | None = None,
    batch: int = 512,
    backend: str = "auto",
    precision: str = "auto",
):
    """Yield {id, label, probs} per input row, streaming in batches."""
    clf = load(clf_dir)
    encoder = clf.encoder(backend, precision)
    column = column or clf.config.get("text_column") or "text"
    rows = []
    for row in read_rows(Path(input), column if Path(input).suffix != ".txt" else None, id_column):
        if isinstance(row, Bad):
            raise row.error(input)
        rows.append(row)
        if len(rows) == batch:
            yield from _predict_rows(clf, encoder, rows)
            rows = []
    if rows:
        yield from _predict_rows(clf, encoder, rows)


def _predict_rows(clf: Classifier, encoder, rows):
    probs = clf.proba(encoder.encode([r.text for r in rows]))
    for row, p in zip(rows, probs, strict=False):
        yield {
            "id": row.id,
            "label": clf.classes[int(p.argmax())],
            "probs": {c: round(float(x), 4) for c, x in zip(clf.classes, p, strict=False)},
        }


def evaluate(
    clf_dir: Path,
    data: Path,
    *,
    text_column: str | None = None,
    label_column: str | None = None,
    backend: str = "auto",
    precision: str = "auto",
) -> dict:
    clf = load(clf_dir)
    texts, labels = read_labelled(
        Path(data),
        text_column or clf.config.get("text_column", "text"),
        label_column or clf.config.get("label_column", "label"),
    )
    unknown = sorted(set(labels) - set(clf.classes))
    if unknown:
        raise DataError(
            f"{data}: labels {', '.join(unknown)} are not among the classifier's ({', '.join(clf.classes)})",
            "evaluate on data with the same label set",
        )
    probs = clf.proba(clf.encoder(backend, precision).encode(texts))
    return report(labels, [clf.classes[i] for i in probs.argmax(1)], clf.classes)
