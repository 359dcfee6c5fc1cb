"""`llmkit embed train`, further: hard negatives mined with the model being trained
(`data.mine_negatives`), checked against a brute-force cosine ranking on the shipped support
data; and LoRA (`train.lora`) on the real all-MiniLM-L6-v2, merged into a plain encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llmkit.errors import LlmkitError
from llmkit.recipe import RECIPES_DIR, load_any

SUPPORT = RECIPES_DIR / "data" / "support-pairs.jsonl"


@pytest.fixture(scope="module")
def stock():
    from sentence_transformers import SentenceTransformer

    from llmkit.embedding.encoders import resolve_model_dir

    return SentenceTransformer(str(resolve_model_dir("all-minilm-l6-v2")[1]), device="cpu")


def _encode(model):
    return lambda texts: model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)


def _support_data(overrides=()):
    from llmkit.embedding import train_data

    return train_data.load(load_any("minilm-support", list(overrides)))


# ----------------------------------------------------------------------------- mined negatives


def test_mine_negatives_k_is_checked_in_one_line_before_anything_loads(tmp_path):
    from llmkit.embedding.train import train

    out = tmp_path / "run"
    with pytest.raises(LlmkitError, match=r"data\.mine_negatives") as err:
        load_any("minilm-support", ["data.mine_negatives=0"])
    assert "data.mine_negatives: Input should be greater than or equal to 1 (got 0)" in err.value.message
    # 21 help-centre entries, one positive per question: 20 candidates, so K must stay below 20
    with pytest.raises(LlmkitError) as err:
        train("minilm-support", [f"train.output_dir={out}", "data.mine_negatives=20"])
    assert err.value.message.startswith("data.mine_negatives: 20 must be below 20, the 21 corpus texts")
    assert "data.mine_negatives=19" in err.value.hint and "\n" not in err.value.message
    assert not out.exists()
    from llmkit.embedding import train_mine

    train_mine.check(_support_data(), 19)  # the largest K that leaves a choice
    scored = tmp_path / "s.jsonl"
    scored.write_text(
        "".join(json.dumps({"anchor": f"q{i}", "positive": f"d{i}", "score": 0.9}) + "\n" for i in range(8))
    )
    recipe = {"data": {"path": str(scored), "mine_negatives": 1}, "loss": {"name": "cosent"}}
    recipe["train"] = {"output_dir": str(out)}
    with pytest.raises(LlmkitError, match=r"^data\.mine_negatives: .* holds scored pairs"):
        train(recipe)
    assert not out.exists()


@pytest.mark.slow
def test_mined_negatives_are_the_nearest_non_positives_by_brute_force(stock, tmp_path):
    from llmkit.embedding import train_data, train_mine

    k = 3
    data = _support_data()
    negatives = train_mine.mine(data, _encode(stock), k)
    anchors = sorted({ex.texts[0] for ex in data.train})
    corpus = sorted({ex.texts[1] for ex in data.train})
    assert sorted(negatives) == anchors and len(corpus) == 21
    a = stock.encode(anchors, normalize_embeddings=True)
    c = stock.encode(corpus, normalize_embeddings=True)
    cos = a @ c.T  # brute force: every anchor against every entry
    same = 0
    for i, anchor in enumerate(anchors):
        mined = negatives[anchor]
        own = data.positives[anchor]
        assert len(mined) == k and len(set(mined)) == k and not set(mined) & own and anchor not in mined
        ranked = [j for j in np.argsort(-cos[i], kind="stable") if corpus[j] not in own][:k]
        expected = [corpus[j] for j in ranked]
        got = [float(cos[i, corpus.index(t)]) for t in mined]
        assert np.allclose(got, cos[i, ranked], atol=1e-5), anchor  # the k nearest, nearest first
        same += mined == expected
    assert same >= 0.98 * len(anchors)  # the same texts, bar exact ties within float noise

    train_mine.apply(data, negatives)
    assert {len(ex.texts) for ex in data.train} == {2 + k}
    for batch in train_data.schedule(data.train, 16, 42, 1.0, None):
        positives = {data.train[i].texts[1] for i in batch}
        for i in batch:  # a row's mined negative is never another row's match in its batch
            assert not set(data.train[i].texts[2:]) & positives
        assert len(positives) == len(batch)

    rows = [json.loads(x) for x in SUPPORT.read_text().splitlines()]
    labelled = tmp_path / "l.jsonl"
    labelled.write_text("".join(json.dumps({"text": r["anchor"], "label": r["intent"]}) + "\n" for r in rows))
    recipe = load_any({"data": {"path": str(labelled), "mine_negatives": 2}, "loss": {"name": "mnrl"}})
    data = train_data.load(recipe)
    label_of = dict(zip(*data.labelled["train"], strict=True))
    for anchor, mined in train_mine.mine(data, _encode(stock), 2).items():
        assert len(mined) == 2 and all(label_of[t] != label_of[anchor] for t in mined)


@pytest.mark.slow
def test_a_short_run_with_mined_negatives_trains_and_beats_the_stock_model(tmp_path):
    from llmkit.embedding.train import train

    info = train(
        "minilm-support",
        [
            f"train.output_dir={tmp_path / 'run'}",
            "train.max_steps=8",
            "train.save_every=4",
            "data.mine_negatives=2",
        ],
    )
    assert info["data"]["mine_negatives"] == 2 and info["steps"] == 8
    before, after = info["evaluation"]["before"], info["evaluation"]["after"]
    assert after["recall@1"] > before["recall@1"] + 0.05 and after["mrr"] > before["mrr"]
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-000008" / "negatives.json").read_text())
    assert len(saved) > 300 and all(len(v) == 2 for v in saved.values())  # each training anchor's two
