"""Classification (saved without pickle), clustering and the embedding recipe, on our shipped data."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli_inprocess
from safetensors.numpy import load_file, save_file

REPO = Path(__file__).resolve().parent.parent
LABELLED = REPO / "recipes/data/embed-labelled.csv"
UNLABELLED = REPO / "recipes/data/embed-unlabelled.txt"


cli = run_cli_inprocess


@pytest.fixture(scope="module")
def clf_dir(tmp_path_factory):
    from llmkit.embedding.classify import train

    out = tmp_path_factory.mktemp("clf") / "topics"
    train(LABELLED, out, text_column="text", label_column="label")
    return out


def test_train_reports_held_out_metrics_and_saves_no_pickle(clf_dir):
    assert sorted(p.name for p in clf_dir.iterdir()) == ["classifier.json", "classifier.safetensors"]
    config = json.loads((clf_dir / "classifier.json").read_text())
    rep = config["held_out"]
    assert config["classes"] == ["cooking", "sports", "tech", "weather"]
    assert (
        config["encoder"]["model"] == "sentence-transformers/all-MiniLM-L6-v2"
        and config["encoder"]["dim"] == 384
    )
    assert rep["n"] == 24 and rep["accuracy"] >= 0.9 and rep["macro_f1"] >= 0.9
    assert set(rep["per_class"]) == set(config["classes"])
    assert np.array(rep["confusion"]["matrix"]).sum() == 24
    assert load_file(str(clf_dir / "classifier.safetensors"))["coef"].shape == (4, 384)


def test_predict_matches_scikit_learn_and_streams(capsys, clf_dir):
    """Probabilities computed from the saved tensors equal sklearn's own predict_proba."""
    from sklearn.linear_model import LogisticRegression

    from llmkit.embedding import embed
    from llmkit.embedding.classify import load, read_labelled

    texts, labels = read_labelled(LABELLED, "text", "label")
    clf = load(clf_dir)
    sk = LogisticRegression()
    sk.classes_, sk.coef_, sk.intercept_ = np.array(clf.classes), clf.coef.astype(np.float64), clf.intercept
    questions = UNLABELLED.read_text().splitlines()
    vec = embed(questions)
    assert np.allclose(clf.proba(vec), sk.predict_proba(vec), atol=1e-5)

    code, stdout, err = cli(capsys, "classify", "predict", str(clf_dir), str(UNLABELLED))
    assert code == 0, err
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert [r["id"] for r in rows] == list(range(40))
    assert [r["label"] for r in rows[:10]].count("cooking") >= 8  # our first ten questions are about cooking
    assert [r["label"] for r in rows[30:]].count("tech") >= 8
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-3 for r in rows)


def test_eval_and_its_bad_inputs(capsys, clf_dir, tmp_path):
    code, stdout, err = cli(capsys, "classify", "eval", str(clf_dir), str(LABELLED), "--json")
    assert code == 0, err
    assert json.loads(stdout)["accuracy"] >= 0.95
    (tmp_path / "other.csv").write_text("text,label\nhello,greeting\nbye,greeting\n")
    code, _, err = cli(capsys, "classify", "eval", str(clf_dir), str(tmp_path / "other.csv"))
    assert code == 1 and "labels greeting are not among the classifier's" in err
    code, _, err = cli(
        capsys, "classify", "train", str(LABELLED), "-o", str(tmp_path / "c"), "--label-column", "topic"
    )
    assert code == 1 and "no label column 'topic'; available columns: text, label" in err
    (tmp_path / "one.csv").write_text("text,label\na,x\nb,x\nc,x\n")
    code, _, err = cli(capsys, "classify", "train", str(tmp_path / "one.csv"), "-o", str(tmp_path / "c"))
    assert code == 1 and "only one label" in err
    code, _, err = cli(capsys, "classify", "train", str(LABELLED), "-o", str(clf_dir))
    assert code == 2 and "already exists" in err


def _copy(src: Path, dest: Path) -> Path:
    dest.mkdir()
    for p in src.iterdir():
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


def test_tampered_classifier_dirs_are_refused(capsys, clf_dir, tmp_path):
    bad_json = _copy(clf_dir, tmp_path / "bad_json")
    (bad_json / "classifier.json").write_text("cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle, not JSON
    code, _, err = cli(capsys, "classify", "predict", str(bad_json), str(UNLABELLED))
    assert code == 1 and "looks tampered with or corrupt: classifier.json is not JSON" in err

    shapes = _copy(clf_dir, tmp_path / "shapes")
    tensors = load_file(str(shapes / "classifier.safetensors"))
    save_file(
        {"coef": tensors["coef"][:, :100].copy(), "intercept": tensors["intercept"]},
        str(shapes / "classifier.safetensors"),
    )
    code, _, err = cli(capsys, "classify", "predict", str(shapes), str(UNLABELLED))
    assert code == 1 and "tensor shapes" in err and "do not fit 4 classes × dim 384" in err

    garbage = _copy(clf_dir, tmp_path / "garbage")
    (garbage / "classifier.safetensors").write_bytes(b"\x80\x04\x95 not safetensors")
    code, _, err = cli(capsys, "classify", "predict", str(garbage), str(UNLABELLED))
    assert code == 1 and "classifier.safetensors is not a valid safetensors file" in err

    code, _, err = cli(capsys, "classify", "predict", str(tmp_path / "nowhere"), str(UNLABELLED))
    assert code == 1 and "is not a classifier dir" in err


def test_classifier_whose_encoder_is_unavailable(capsys, clf_dir, tmp_path):
    moved = _copy(clf_dir, tmp_path / "moved")
    config = json.loads((moved / "classifier.json").read_text())
    config["encoder"]["model"] = str(tmp_path / "gone-model")
    (moved / "classifier.json").write_text(json.dumps(config))
    code, _, err = cli(capsys, "classify", "predict", str(moved), str(UNLABELLED))
    assert code == 1 and f"needs encoder {tmp_path / 'gone-model'}, which is not available" in err


@pytest.fixture(scope="module")
def labelled_vectors(tmp_path_factory):
    from llmkit.embedding.job import embed_file

    out = tmp_path_factory.mktemp("vec") / "labelled.parquet"
    embed_file(LABELLED, out)
    return out


def test_cluster_auto_k_labels_written_back_plot_and_nearest(capsys, labelled_vectors, tmp_path):
    png = tmp_path / "clusters.png"
    out = tmp_path / "clustered.parquet"
    code, stdout, err = cli(
        capsys, "cluster", str(labelled_vectors), "-k", "auto", "-o", str(out), "--plot", str(png), "--json"
    )
    assert code == 0, err
    result = json.loads(stdout)
    assert result["k"] == 4 and max(result["silhouette_by_k"], key=result["silhouette_by_k"].get) == "4"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pq.read_table(out)
    clusters, labels = table.column("cluster").to_pylist(), table.column("label").to_pylist()
    purity = sum(
        Counter(lab for lab, c in zip(labels, clusters, strict=False) if c == k).most_common(1)[0][1]
        for k in set(clusters)
    ) / len(labels)
    assert purity >= 0.9
    assert all(len(c["nearest"]) == 3 and c["nearest"][0]["text"] for c in result["clusters"])
    assert sum(c["size"] for c in result["clusters"]) == 120

    code, _, err = cli(capsys, "cluster", str(labelled_vectors), "-k", "two")
    assert code == 2 and "-k must be a number or 'auto'" in err
    code, _, err = cli(capsys, "cluster", str(labelled_vectors), "-k", "500")
    assert code == 1 and "too few for 500 clusters" in err


@pytest.mark.slow
def test_cluster_auto_finds_the_topics_a_person_sees(capsys, labelled_vectors, tmp_path):
    """Known k: the labelled set has 4 topics (ARI against its labels), the demo's 40 questions
    too (10 each: cooking, tech, sports, weather); the old rule chose k = 2 on them."""
    code, stdout, err = cli(capsys, "cluster", str(labelled_vectors), "--labels", "label", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    print(f"labelled set: k={result['k']}, adjusted Rand index {result['adjusted_rand_index']}")
    assert result["k"] == 4 and result["adjusted_rand_index"] >= 0.9
    assert min(c["size"] for c in result["clusters"]) >= result["min_size"] == 3

    from llmkit.embedding.job import embed_file

    questions = tmp_path / "questions.parquet"
    embed_file(UNLABELLED, questions)
    capsys.readouterr()  # the job's progress output
    code, stdout, err = cli(capsys, "cluster", str(questions), "-k", "auto", "--json")
    assert code == 0, err
    result = json.loads(stdout)
    from sklearn.metrics import adjusted_rand_score

    topics = [i // 10 for i in range(40)]  # the file holds 10 questions per topic, in blocks
    ari = adjusted_rand_score(topics, pq.read_table(questions).column("cluster").to_pylist())
    print(f"demo questions: k={result['k']}, adjusted Rand index {ari:.3f}")
    assert result["k"] == 4 and ari >= 0.6, result

    code, _, err = cli(capsys, "cluster", str(labelled_vectors), "--labels", "topic")
    assert code == 1 and "no labels column 'topic'; available columns:" in err
    code, _, err = cli(capsys, "cluster", str(questions), "--min-size", "30")
    assert code == 1 and "could not find two distinct clusters of at least 30 rows" in err


def test_shipped_embedding_recipes_validate_and_bad_ones_list_every_error(tmp_path):
    from llmkit.embedding.recipe import load
    from llmkit.errors import RecipeError
    from llmkit.recipe import shipped_recipes

    shipped = [r.path for r in shipped_recipes("embed") if r.kind == "embed"]  # not the embed-train ones
    assert shipped
    for path in shipped:
        recipe = load(path)
        inputs = recipe.inputs()  # inputs resolve against the recipe's own folder
        assert inputs and all(p.is_file() for p in inputs.values()), inputs
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nencoder: {backend: gpu}\nembed: {input: a.txt}\nextra: 1\n")
    with pytest.raises(RecipeError) as exc:
        load(bad)
    msg = exc.value.message
    assert (
        "encoder.backend" in msg
        and "embed.output: required key is missing" in msg
        and "extra: unknown key" in msg
    )


def test_recipe_runs_embed_classify_cluster(capsys, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"""name: t
embed: {{input: {UNLABELLED}, output: out/q.parquet}}
classify: {{data: {LABELLED}, output: out/clf}}
cluster: {{k: 4, plot: out/q.png}}
""")
    from llmkit.embedding.recipe import run

    summary = run(recipe, base=tmp_path)
    assert summary["embed"]["rows"] == 40 and summary["classify"]["accuracy"] >= 0.9
    assert summary["cluster"]["k"] == 4 and (tmp_path / "out/q.png").exists()
    assert (tmp_path / "out/clf/classifier.safetensors").exists()
