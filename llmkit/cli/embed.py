"""Embedding commands: embed, similar, similarity, classify …, cluster.

Over 400 lines on purpose: the embed, similar, classify and cluster commands, text and images, each
a thin parse → call → render over the library; a file per command would repeat the shared options.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from llmkit.cli._app import _print_json, app
from llmkit.embedding.choices import BACKENDS, DEFAULT_MODEL, IMAGE_SUFFIXES, PRECISIONS
from llmkit.errors import InvalidArgument

classify_app = typer.Typer(
    help="Train, apply and evaluate text classifiers on embeddings.", no_args_is_help=True
)
app.add_typer(classify_app, name="classify")


class SampleBy(str, Enum):  # a Typer choice: a wrong value is a usage error (exit 2)
    line = "line"
    paragraph = "paragraph"
    document = "document"


_MODEL_OPT = typer.Option(
    "--model",
    "-m",
    help="sentence-transformers dir/HF id, or ollama:NAME; images: efficientnet-lite0 (default) "
    "or a transformers image model dir (ViT, CLIP/SigLIP vision, … with its image processor).",
)
_BACKEND_HELP = {
    "auto": "auto (measured on this machine, GPU included)",
    "torch": "torch (CPU, exact reference)",
    "cuda": "cuda",
    "mps": "mps",
    "onnx": "onnx",
    "openvino": "openvino",
    "ollama": "ollama",
}
_PRECISION_HELP = {
    "auto": "auto (fastest exact path, cos ≥ 0.9999)",
    "fast": "fast (cos mean ≥ 0.999, min ≥ 0.99; int8 = alias)",
    "fp16": "fp16 (GPU)",
}
# the help lists the encoders' own tables: a new backend or precision shows up here by itself
_BACKEND_OPT = typer.Option(help=" | ".join(_BACKEND_HELP.get(b, b) for b in BACKENDS) + ".")
_PRECISION_OPT = typer.Option(help=" | ".join(_PRECISION_HELP.get(p, p) for p in PRECISIONS) + ".")
# a recipe's run takes its options from the recipe: these flags would be silently ignored
_JOB_FLAGS = {
    "output": "-o/--output",
    "column": "--column",
    "split": "--split",
    "sample_by": "--sample-by",
    "id_column": "--id-column",
    "model": "--model",
    "backend": "--backend",
    "precision": "--precision",
    "normalize": "--normalize",
    "chunk": "--chunk",
    "skip_bad": "--skip-bad",
    "keep_text": "--text/--no-text",
    "commit_every": "--commit-every",
    "ray": "--ray",
    "workers": "--workers",
}


@app.command()
def embed(
    ctx: typer.Context,
    input: Annotated[
        str,
        typer.Argument(
            help=".txt (a line each, see --sample-by), .jsonl, .json (array or JSON Lines), .csv, .parquet, "
            "a dir of .parquet, a saved dataset dir, "
            "hf:NAME (a Hugging Face dataset), any of those files or dirs at s3:// gs:// hdfs:// abfs:// "
            "— or an embedding recipe .yaml; or images: a folder of photos (recursive) or image files "
            "(.jpg .png .webp, EfficientNet-Lite0 by default)."
        ),
    ],
    overrides: Annotated[
        list[str] | None, typer.Argument(help="a.b=value overrides of an embedding recipe.")
    ] = None,
    output: Annotated[Path | None, typer.Option("-o", "--output", help="vectors .parquet (or .npy).")] = None,
    column: Annotated[
        str | None, typer.Option("--column", "--text-column", help="Text column (default text).")
    ] = None,
    split: Annotated[str, typer.Option(help="Dataset split (saved datasets, hf:NAME).")] = "train",
    sample_by: Annotated[
        SampleBy, typer.Option("--sample-by", help=".txt: a row per line, per paragraph, or the whole file.")
    ] = SampleBy.line,
    id_column: Annotated[
        str | None, typer.Option(help="Column to use as row id (default: row number).")
    ] = None,
    model: Annotated[str, _MODEL_OPT] = DEFAULT_MODEL,
    backend: Annotated[str, _BACKEND_OPT] = "auto",
    precision: Annotated[str, _PRECISION_OPT] = "auto",
    normalize: Annotated[bool, typer.Option(help="L2-normalize vectors (cosine).")] = True,
    chunk: Annotated[
        bool, typer.Option("--chunk", help="Average windows of long texts instead of truncating.")
    ] = False,
    skip_bad: Annotated[
        bool, typer.Option("--skip-bad", help="Skip (and report) non-UTF-8/bad lines.")
    ] = False,
    keep_text: Annotated[
        bool, typer.Option("--text/--no-text", help="Keep the text column in the output.")
    ] = True,
    commit_every: Annotated[int, typer.Option(help="Rows per committed (resumable) chunk.")] = 4096,
    ray: Annotated[
        str | None,
        typer.Option("--ray", help="Run on a Ray cluster: auto (RAY_ADDRESS/running), HOST:PORT, or local."),
    ] = None,
    workers: Annotated[int, typer.Option(help="--ray: encoder actors (one CPU each).")] = 2,
    resume: Annotated[
        bool, typer.Option("--resume", help="embed train: continue from the last checkpoint.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="embed train: replace the run directory.")
    ] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Embed a file of texts, or images, into vectors (streaming, deduplicated, resumable)."""
    from llmkit.embedding import embed_file

    if input == "train":  # `llmkit embed train RECIPE [a.b=value ...]`: fine-tune the encoder
        from llmkit.cli.embed_train import embed_train

        return embed_train(overrides or [], resume=resume, overwrite=overwrite, json_out=json_out)
    if Path(input).suffix in (".yaml", ".yml"):
        from llmkit.embedding.recipe import run

        given = [f for name, f in _JOB_FLAGS.items() if _from_command_line(ctx, name)]
        if given:
            raise InvalidArgument(
                f"{', '.join(given)} do(es) not apply to a recipe ({input})",
                "set recipe keys with a.b=value overrides instead, e.g. embed.output=x.parquet encoder.model=NAME",
            )
        return _print_json(run(Path(input), overrides=overrides or []))
    sources: str | list[str] = input
    if overrides and any(Path(a).suffix.lower() in IMAGE_SUFFIXES for a in [input, *overrides]):
        sources = [input, *overrides]  # several image files (a text file among them: refused there)
    elif overrides:
        raise InvalidArgument(
            f"unexpected extra arguments {' '.join(overrides)!r}",
            "a.b=value overrides apply to a recipe .yaml",
        )
    if output is None:
        raise InvalidArgument("missing -o/--output", "e.g. llmkit embed texts.txt -o vectors.parquet")
    options = {name: ctx.params[name] for name in _JOB_FLAGS if name not in ("output", "ray", "workers")}
    result = embed_file(
        sources, output, ray=ray, workers=workers, **{**options, "sample_by": sample_by.value}
    )
    s = result.summary()
    if json_out:
        return _print_json(s)
    long_texts = f"{s['chunked']} chunked" if chunk else f"{s['truncated']} truncated"
    typer.echo(
        f"{s['rows']} rows → {s['output']} ({s['model']}, {s['backend']}/{s['precision']}, dim {s['dim']}; "
        f"{s['encoded']} encoded, {s['duplicates']} duplicates, {long_texts}, "
        f"{s['failed']} failed, {s['rows_per_s']} rows/s)"
    )
    if s.get("path_choice"):
        c = s["path_choice"]
        typer.echo(f"path {c['path']} ({c['contract']}): {c['why']}; measured on {c['cpu']}: {c['measured']}")
    if s["failed"]:
        typer.echo(f"failed rows are listed in {s['output']}.errors.jsonl", err=True)


def _from_command_line(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)  # Typer vendors click: compare by name, not by class
    return source is not None and source.name == "COMMANDLINE"


@app.command()
def similar(
    query: Annotated[str | None, typer.Argument(help="Query text (or use --queries).")] = None,
    index: Annotated[Path, typer.Option("--index", "-i", help="vectors.parquet from llmkit embed.")] = Path(
        "vectors.parquet"
    ),
    k: Annotated[int, typer.Option("-k", help="Neighbours per query.")] = 5,
    queries: Annotated[Path | None, typer.Option(help="File with one query per line.")] = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="Default: the model that built the index.")
    ] = None,
    method: Annotated[str, typer.Option(help="auto | exact | faiss (HNSW, for large files).")] = "auto",
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Find the texts most similar to a query in a vectors file (cosine)."""
    from llmkit.embedding.search import similar as run_similar

    texts = [query] if query else []
    if queries:
        texts += [q.strip() for q in queries.read_text(encoding="utf-8").splitlines() if q.strip()]
    results = run_similar(texts, index, k, model=model, method=method)
    if json_out:
        return _print_json(results)
    for r in results:
        typer.echo(f"query: {r['query']}")
        for h in r["hits"]:
            typer.echo(
                f"  {h['rank']}. {h['score']:.4f}  [{h['id']}] {h['text'] if h['text'] is not None else ''}"
            )


@app.command()
def similarity(
    a: Annotated[str, typer.Argument(help="First text.")],
    b: Annotated[str, typer.Argument(help="Second text.")],
    model: Annotated[str, _MODEL_OPT] = DEFAULT_MODEL,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Cosine similarity of two texts."""
    from llmkit.embedding.search import similarity as run_similarity

    score = run_similarity(a, b, model=model)
    if json_out:
        return _print_json({"a": a, "b": b, "cosine": score})
    typer.echo(f"cosine similarity {score:.4f}: {a!r} ~ {b!r}")


def _render_report(rep: dict) -> None:
    typer.echo(f"accuracy {rep['accuracy']:.4f}  macro-F1 {rep['macro_f1']:.4f}  (n={rep['n']})")
    for label, m in rep["per_class"].items():
        typer.echo(
            f"  {label:<16} P {m['precision']:.3f}  R {m['recall']:.3f}  F1 {m['f1']:.3f}  n {m['support']}"
        )
    labels = rep["confusion"]["labels"]
    typer.echo("confusion (rows = true, cols = predicted): " + " ".join(labels))
    for label, row in zip(labels, rep["confusion"]["matrix"], strict=True):
        typer.echo(f"  {label:<16} " + " ".join(f"{v:>5}" for v in row))


@classify_app.command("train")
def classify_train(
    data: Annotated[
        Path,
        typer.Argument(
            help="Labelled .csv/.jsonl/.parquet; images: DIR/<label>/*.jpg or a CSV of path,label."
        ),
    ],
    output: Annotated[Path, typer.Option("-o", "--output", help="Classifier dir to write.")],
    text_column: Annotated[str, typer.Option(help="Column with the text.")] = "text",
    label_column: Annotated[str, typer.Option(help="Column with the label.")] = "label",
    model: Annotated[str, _MODEL_OPT] = DEFAULT_MODEL,
    test_size: Annotated[float, typer.Option(help="Held-out fraction for the report.")] = 0.2,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing dir.")] = False,
    fine_tune: Annotated[
        bool,
        typer.Option(
            "--fine-tune",
            help="Images: also fine-tune the encoder's last block with the head; both reported on one split.",
        ),
    ] = False,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Train a logistic-regression classifier on embeddings; report on a held-out split."""
    from llmkit.embedding.classify import train
    from llmkit.embedding.image_classify import is_image_labelled, train_images

    if is_image_labelled(data):  # a folder per class, or a CSV of path,label: images
        config = train_images(
            data, output, model=model, test_size=test_size, force=force, fine_tune=fine_tune
        )
    elif fine_tune:
        raise InvalidArgument(
            f"--fine-tune applies to images, and {data} is not labelled images",
            "give DIR/<label>/*.jpg or a CSV of path,label; for texts drop --fine-tune (or: llmkit embed train)",
        )
    else:
        config = train(
            data,
            output,
            text_column=text_column,
            label_column=label_column,
            model=model,
            test_size=test_size,
            force=force,
        )
    if json_out:
        return _print_json(config)
    typer.echo(
        f"classifier → {output} ({len(config['classes'])} classes, {config['train_rows']} training rows)"
    )
    if config.get("fine_tuned"):
        _render_comparison(config)
    _render_report(config["held_out"])


def _render_comparison(config: dict) -> None:
    """Frozen encoder + logistic regression vs fine-tuned, on the same held-out images."""
    frozen, tuned, ft = config["frozen_held_out"], config["held_out"], config["fine_tuned"]
    typer.echo(
        f"held-out split: {config['train_rows']} training, {tuned['n']} held-out images (the same for both)"
    )
    typer.echo(f"  {'classifier':<50} {'accuracy':>8}  {'macro-F1':>8}")
    typer.echo(
        f"  {'frozen encoder + logistic regression':<50} {frozen['accuracy']:>8.4f}  {frozen['macro_f1']:>8.4f}"
    )
    what = f"fine-tuned last block + head ({ft['epochs']} epochs, {ft['seconds']} s)"
    typer.echo(f"  {what:<50} {tuned['accuracy']:>8.4f}  {tuned['macro_f1']:>8.4f}")
    typer.echo("saved: the fine-tuned classifier; its held-out report:")


@classify_app.command("predict")
def classify_predict(
    classifier: Annotated[Path, typer.Argument(help="Classifier dir (with --imagenet: the input).")],
    input: Annotated[
        Path | None, typer.Argument(help=".txt/.jsonl/.csv/.parquet to label, or images (a folder, files).")
    ] = None,
    column: Annotated[
        str | None, typer.Option(help="Text column (default: the one it was trained on).")
    ] = None,
    id_column: Annotated[str | None, typer.Option(help="Column to use as row id.")] = None,
    imagenet: Annotated[
        bool,
        typer.Option("--imagenet", help="Images: the encoder's own 1000 ImageNet classes, no classifier."),
    ] = False,
) -> None:
    """Label each row: one JSON line per row with label and probabilities (streaming)."""
    from llmkit.embedding.classify import predict
    from llmkit.embedding.image_job import is_image_input

    if imagenet or is_image_input(input):
        from llmkit.embedding.image_classify import predict_images

        clf, photos = (None, input or classifier) if imagenet else (classifier, input)
        for row in predict_images(clf, photos, imagenet=imagenet):
            typer.echo(json.dumps(row))
        return
    if input is None:
        raise InvalidArgument("missing INPUT", "llmkit classify predict CLASSIFIER INPUT")
    for row in predict(classifier, input, column=column, id_column=id_column):
        typer.echo(json.dumps(row, default=str))


@classify_app.command("watch")
def classify_watch(
    classifier: Annotated[Path, typer.Argument(help="Classifier dir (with --imagenet: the folder).")],
    folder: Annotated[Path | None, typer.Argument(help="Folder a camera writes images into.")] = None,
    log: Annotated[
        Path | None,
        typer.Option("--log", help="Append results here: .jsonl or .csv (default DIR.predictions.jsonl)."),
    ] = None,
    imagenet: Annotated[bool, typer.Option("--imagenet", help="The encoder's own ImageNet classes.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between looks at the folder.")] = 1.0,
    settle: Annotated[float, typer.Option(help="Seconds a file's size must hold before it is read.")] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Stop when every image present is logged.")] = False,
) -> None:
    """Classify each new image in a folder once, as it appears; survives restarts (the log)."""
    from llmkit.embedding.watch import watch

    clf, folder = (None, folder or classifier) if imagenet else (classifier, folder)
    if folder is None:
        raise InvalidArgument("missing DIR", "llmkit classify watch CLASSIFIER DIR (or --imagenet DIR)")
    log = log or folder.with_name(folder.name + ".predictions.jsonl")
    typer.echo(f"watching {folder} → {log} (Ctrl-C to stop)", err=True)

    def show(record: dict) -> None:
        typer.echo(f"{record['path']}: {record.get('label') or 'error: ' + record.get('error', '')}")

    count = watch(
        clf, folder, log, imagenet=imagenet, interval=interval, settle=settle, once=once, on_result=show
    )
    typer.echo(f"{count} image(s) classified → {log}", err=True)


@classify_app.command("eval")
def classify_eval(
    classifier: Annotated[Path, typer.Argument(help="Classifier dir.")],
    data: Annotated[Path, typer.Argument(help="Labelled data.")],
    text_column: Annotated[str | None, typer.Option(help="Default: as trained.")] = None,
    label_column: Annotated[str | None, typer.Option(help="Default: as trained.")] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Accuracy, macro-F1, per-class scores and confusion matrix on labelled data."""
    from llmkit.embedding.classify import evaluate

    rep = evaluate(classifier, data, text_column=text_column, label_column=label_column)
    return _print_json(rep) if json_out else _render_report(rep)


@app.command()
def cluster(
    vectors: Annotated[Path, typer.Argument(help="vectors.parquet from llmkit embed.")],
    k: Annotated[
        str, typer.Option("-k", help="Number of clusters, or auto (best silhouette, clusters ≥ --min-size).")
    ] = "auto",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write labelled vectors here (default: in place).")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="2-D PCA scatter PNG.")] = None,
    top: Annotated[int, typer.Option(help="Texts shown per centroid.")] = 3,
    min_size: Annotated[
        int | None, typer.Option(help="-k auto: smallest cluster worth a topic (default max(3, rows/50)).")
    ] = None,
    labels: Annotated[
        str | None, typer.Option(help="Column of known labels: report the adjusted Rand index.")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """k-means clusters of a vectors file; labels written back, nearest texts per centroid."""
    from llmkit.embedding.cluster import cluster as run_cluster

    result = run_cluster(
        vectors, k, output=output, plot=plot, top=top, min_size=min_size, labels_column=labels
    )
    if json_out:
        return _print_json(result)
    typer.echo(
        f"k={result['k']} over {result['rows']} rows → {result['output']}"
        + (f", plot {plot}" if plot else "")
        + (f"; adjusted Rand index vs {labels}: {result['adjusted_rand_index']}" if labels else "")
    )
    for c in result["clusters"]:
        typer.echo(f"cluster {c['cluster']} ({c['size']} rows):")
        for h in c["nearest"]:
            typer.echo(f"  {h['score']:.3f}  {h['text'] if h['text'] is not None else h['id']}")
