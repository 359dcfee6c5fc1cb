"""Image classification by transfer learning: the frozen image encoder's vectors + logistic
regression, the text classifier's recipe (classify.py) and its classifier dir format, so
`classify.load`, `evaluate` and the classifier's encoder check serve both.

Labelled images come as a folder per class (`birds/robin/*.jpg`, `birds/blackbird/*.jpg`) or
a CSV with `path,label` columns (paths relative to the CSV's folder). A photo that cannot be
decoded is left out of training with a warning (and counted in the config), not the end of it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from llmkit.embedding.choices import DEFAULT_IMAGE_MODEL, DEFAULT_MODEL, IMAGE_ALIASES, IMAGE_SUFFIXES
from llmkit.embedding.image_job import image_files
from llmkit.embedding.images import read_image
from llmkit.errors import DataError, InvalidArgument


def is_image_labelled(data) -> bool:
    """A folder of class folders, or a CSV with a `path` column."""
    path = Path(data)
    if path.is_dir():
        return True
    if path.suffix.lower() == ".csv" and path.is_file():
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            header = next(csv.reader(fh), [])
        return "path" in header and "text" not in header
    return False


def labelled_images(data: Path) -> tuple[list[Path], list[str]]:
    data = Path(data)
    if data.is_dir():
        pairs = []
        for folder in sorted(p for p in data.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                pairs += [(p, folder.name) for p in image_files(folder)]
            except DataError:
                continue  # a class folder without images: not a class (checked for count below)
        if not pairs:
            raise DataError(
                f"{data} has no class folders with images",
                "lay it out as DATA/<label>/*.jpg (one folder per class), or give a CSV of path,label",
            )
    else:
        with open(data, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or "label" not in rows[0]:
            raise DataError(f"{data}: needs columns path,label", "one row per image: path,label")
        pairs = []
        for n, row in enumerate(rows, 2):
            path = (data.parent / row["path"]).expanduser()
            if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
                raise DataError(f"{data} line {n}: {row['path']} is not an image file here", "fix the path")
            if not (row.get("label") or "").strip():
                raise DataError(
                    f"{data} line {n}: {row['path']} has no label", "label every row or remove it"
                )
            pairs.append((path, row["label"].strip()))
    counts: dict[str, int] = {}
    for _, label in pairs:
        counts[label] = counts.get(label, 0) + 1
    if len(counts) < 2:
        raise DataError(f"{data}: only one class ({next(iter(counts))})", "a classifier needs ≥ 2 classes")
    rare = [c for c, n in counts.items() if n < 2]
    if rare:
        where = f"{data / rare[0]}" if data.is_dir() else f"{data}, label {rare[0]}"
        raise DataError(
            f"{where} has only one image",
            "a class needs ≥ 2 images (one to learn from, one to check): add more",
        )
    return [p for p, _ in pairs], [label for _, label in pairs]


def train_images(
    data: Path,
    out_dir: Path,
    *,
    model: str = DEFAULT_IMAGE_MODEL,
    test_size: float = 0.2,
    seed: int = 0,
    force: bool = False,
    fine_tune: bool = False,
) -> dict:
    """Fit logistic regression on the encoder's vectors; report on a stratified held-out split.
    `fine_tune`: also fine-tune the encoder's last block with the head (image_finetune.py) on the
    same split, report both, and save the fine-tuned classifier."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    from llmkit.embedding.classify import report
    from llmkit.embedding.encoders import load_encoder

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise InvalidArgument(f"{out_dir} already exists", "pick another -o or pass --force to replace it")
    model = DEFAULT_IMAGE_MODEL if model == DEFAULT_MODEL else model
    if fine_tune and model not in IMAGE_ALIASES:
        raise InvalidArgument(
            f"--fine-tune is available for {DEFAULT_IMAGE_MODEL} only, not {model}",
            f"drop --fine-tune (a frozen-encoder classifier), or use --model {DEFAULT_IMAGE_MODEL}",
        )
    paths, labels = labelled_images(Path(data))
    encoder = load_encoder(DEFAULT_IMAGE_MODEL if model == DEFAULT_MODEL else model)
    pixels, kept, skipped = [], [], []
    for path, label in zip(paths, labels, strict=True):
        try:
            pixels.append(read_image(path))
            kept.append(label)
        except DataError as exc:
            skipped.append(exc.message)
    if skipped:
        from llmkit.ui import warn

        warn(f"left out {len(skipped)} unreadable image(s): {skipped[0]}")
    pixels = np.stack(pixels)
    vectors = encoder.encode_pixels(pixels)
    classes = sorted(set(kept))
    n_test = max(round(len(kept) * test_size), len(classes))
    # indices, so the fine-tuned model is held to the very same split (same draw as splitting rows)
    i_tr, i_te = train_test_split(np.arange(len(kept)), test_size=n_test, random_state=seed, stratify=kept)
    y_tr, y_te = [kept[i] for i in i_tr], [kept[i] for i in i_te]
    clf = LogisticRegression(max_iter=2000, C=10.0).fit(vectors[i_tr], y_tr)
    config = {
        "encoder": {**encoder.info(), "normalized": True},
        "input": "images",
        "train_rows": len(y_tr),
        "held_out": report(y_te, list(clf.predict(vectors[i_te])), classes),
        "skipped_images": len(skipped),
        "data": str(data),
    }
    if not fine_tune:
        return save(out_dir, classes, clf.coef_, clf.intercept_, config)
    from llmkit.embedding import image_finetune as ft

    y = np.array([classes.index(c) for c in kept])
    run = ft.fine_tune(pixels, y, i_tr, i_te, clf.coef_, clf.intercept_, seed=seed)
    config["frozen_held_out"] = config["held_out"]
    config["held_out"] = report(y_te, [classes[i] for i in run["predicted"]], classes)
    config["encoder"] = {**config["encoder"], "model": ft.MODEL_NAME, "backend": "torch"}
    config["fine_tuned"] = {
        "weights": ft.ENCODER_WEIGHTS,
        "base": DEFAULT_IMAGE_MODEL,
        "trained": run["trained"],
        **ft.settings(),
        "train_loss": run["losses"],
        "seconds": run["seconds"],
    }
    return save(out_dir, classes, run["coef"], run["intercept"], config, {ft.ENCODER_WEIGHTS: run["tensors"]})


def save(out_dir: Path, classes: list[str], coef, intercept, config: dict, extra: dict | None = None) -> dict:
    """The text classifier's dir format (classify.FORMAT): classify.load reads it back; `extra`:
    {file name: {tensor name: array}} saved alongside (a fine-tuned encoder's tensors)."""
    from safetensors.numpy import save_file

    from llmkit.embedding.classify import CONFIG, FORMAT, WEIGHTS
    from llmkit.files import atomic_dir

    config = {"format": FORMAT, "classes": classes, **config}
    with atomic_dir(out_dir, replace=True) as tmp:
        # ascontiguousarray: sklearn may hand back Fortran-ordered arrays, which safetensors would scramble
        tensors = {"coef": coef, "intercept": intercept}
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(tmp / WEIGHTS))
        for name, more in (extra or {}).items():
            save_file({k: np.ascontiguousarray(v) for k, v in more.items()}, str(tmp / name))
        (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return config


class ImagePredictor:
    """Labels images with a trained classifier dir, or with the encoder's ImageNet head."""

    def __init__(self, clf_dir: Path | None = None, imagenet: bool = False):
        from llmkit.embedding.encoders import load_encoder

        if imagenet == (clf_dir is not None):
            raise InvalidArgument("give a classifier dir or --imagenet (one of them)", "see --help")
        if imagenet:
            self.clf = None
            self.encoder = load_encoder(DEFAULT_IMAGE_MODEL)
        else:
            from llmkit.embedding.classify import load

            self.clf = load(clf_dir)
            if self.clf.config.get("input") != "images":
                raise InvalidArgument(
                    f"{clf_dir} classifies text, not images",
                    "train one on images: llmkit classify train PHOTOS/",
                )
            if self.clf.config.get("fine_tuned"):
                from llmkit.embedding.image_finetune import FineTunedLite0

                self.encoder = FineTunedLite0(clf_dir, self.clf.config["encoder"].get("normalized", True))
            else:
                self.encoder = self.clf.encoder()

    def predict(self, path, data: bytes | None = None) -> dict:
        """{id, label, score, top} for one image, or {id, error} when it cannot be decoded."""
        try:
            pixels = read_image(data if data is not None else path, str(path))[None]
        except DataError as exc:
            return {"id": str(path), "error": exc.message}
        if self.clf is None:
            top = self.encoder.imagenet(pixels)[0]
        else:
            probs = self.clf.proba(self.encoder.encode_pixels(pixels))[0]
            order = np.argsort(-probs)[:5]
            top = [(self.clf.classes[i], round(float(probs[i]), 4)) for i in order]
        return {"id": str(path), "label": top[0][0], "score": top[0][1], "top": [list(t) for t in top]}


def predict_images(clf_dir: Path | None, input, *, imagenet: bool = False):
    """Yield a prediction per image of a folder or list (a bad image: an `error` row)."""
    predictor = ImagePredictor(clf_dir, imagenet)
    for path in image_files(input):
        yield predictor.predict(path)
