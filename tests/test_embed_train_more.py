"""`llmkit embed train`, further: hard negatives mined with the model being trained
(`data.mine_negatives`), checked against a brute-force cosine ranking on the shipped support
data; and LoRA (`train.lora`) on the real all-MiniLM-L6-v2, merged into a plain encoder.
"""

from __future__ import annotations

import json

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
    saved = json.loads((tmp_path / "run" / "checkpoints" / "step-000004" / "negatives.json").read_text())
    assert len(saved) > 300 and all(len(v) == 2 for v in saved.values())  # each training anchor's two


# ----------------------------------------------------------------------------- LoRA

# all-MiniLM-L6-v2: 6 layers, each with query/key/value/attention-output (384→384), intermediate
# (384→1536) and output (1536→384): r·(4·768 + 2·1920) = 6912·r adapter weights per layer
LORA_PER_RANK = 6 * (4 * (384 + 384) + 2 * (384 + 1536))


@pytest.mark.slow
def test_lora_makes_only_the_adapters_trainable(stock):
    import copy

    from llmkit.embedding import train as embed_train
    from llmkit.embedding.train_schema import LoraSection

    model = copy.deepcopy(stock)
    total = sum(p.numel() for p in model.parameters())
    embed_train._lora(model, LoraSection(r=4))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert sum(trainable.values()) == 4 * LORA_PER_RANK == 165_888
    assert all(".lora_A." in n or ".lora_B." in n for n in trainable) and len(trainable) == 6 * 6 * 2
    assert not any("pooler" in n for n in trainable)
    assert sum(p.numel() for p in model.parameters()) == total + 4 * LORA_PER_RANK


@pytest.mark.slow
def test_a_lora_run_saves_a_plain_encoder_and_resumes_from_a_checkpoint(stock, tmp_path, monkeypatch):
    import shutil

    import torch
    from safetensors.numpy import load_file
    from sentence_transformers import SentenceTransformer

    from llmkit.embedding.train import train

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread: the same sums in the same order
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    whole = tmp_path / "whole"
    overrides = [
        f"train.output_dir={whole}",
        "train.max_steps=4",
        "train.save_every=2",
        "train.lr=1e-3",
        "train.lora={r: 8, alpha: 16, dropout: 0.1}",
        "data.mine_negatives=1",
    ]
    try:
        info = train("minilm-support", overrides)
        assert info["parameters"]["trainable"] == 8 * LORA_PER_RANK == 331_776
        assert info["lora"] == {"r": 8, "alpha": 16.0, "dropout": 0.1}
        ckpt = whole / "checkpoints" / "step-000002"
        adapters = load_file(str(ckpt / "model.safetensors"))  # the trained state only: 1.3 MB, not 90
        assert sum(v.size for v in adapters.values()) == 331_776
        # the run stopped after step 2: its last checkpoint, no encoder, no run.json; then --resume
        cut = tmp_path / "cut"
        shutil.copytree(whole, cut)
        assert not (whole / "checkpoints" / "step-000004").exists()  # the end is encoder/
        for gone in ("encoder", "run.json"):
            shutil.rmtree(cut / gone) if (cut / gone).is_dir() else (cut / gone).unlink()
        resumed = train(load_any(cut / "recipe.yaml"), [f"train.output_dir={cut}"], resume=True)
    finally:
        torch.set_num_threads(threads)
    assert resumed["evaluation"] == info["evaluation"]
    a = load_file(str(whole / "encoder" / "model.safetensors"))
    b = load_file(str(cut / "encoder" / "model.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

    # a plain sentence-transformers dir: the stock model's weights by name, no adapter files
    assert set(a) == {n for n, _ in stock[0].model.named_parameters()}
    assert not list((whole / "encoder").rglob("adapter_*"))
    texts = ["I forgot my card PIN", "freeze my debit card", "where is my parcel"]
    tuned = SentenceTransformer(str(whole / "encoder"), device="cpu").encode(texts, normalize_embeddings=True)
    assert np.max(np.abs(tuned - stock.encode(texts, normalize_embeddings=True))) > 1e-3
    after, before = info["evaluation"]["after"], info["evaluation"]["before"]
    assert after["recall@1"] > before["recall@1"]

    # the GGUF writer takes the merged weights as they are (every tensor a llama.cpp 'bert' one).
    # The Encoder is spelled out, not read_encoder(run): sentence-transformers 6.3 saves the Pooling
    # config as {"pooling_mode": "mean"}, which encoder_gguf.read_encoder does not read yet.
    from llmkit.exporter.encoder_gguf import Encoder, encoder_source, write_encoder_gguf

    path = encoder_source(whole)
    config = json.loads((path / "config.json").read_text())
    enc = Encoder(path=path, name="tuned", config=config, pooling="MEAN", normalize=True, max_seq_length=256)
    gguf, _ = write_encoder_gguf(enc, tmp_path / "tuned.gguf", "f32", verify=False)
    assert gguf.stat().st_size > 80e6


# ----------------------------------------------------------------------------- sparse embedding gradients


def test_sparse_embedding_gradients_give_the_dense_gradients_and_the_same_step(stock):
    """The embedding tables' gradients are kept sparse through backward (only the rows a batch
    used) and made dense once before clipping: the same gradient, the same AdamW step."""
    import copy

    import torch

    from llmkit.embedding import train as embed_train

    recipe = load_any("minilm-support", ["train.max_steps=1"])
    rows = _support_data().train[:16]
    grads, weights = {}, {}
    for kind in ("dense", "sparse"):
        model = copy.deepcopy(stock)
        model.train()
        tables = embed_train._sparse_grads(model) if kind == "sparse" else []
        optimizer, _ = embed_train._optimizer(model, recipe, 1)
        torch.manual_seed(0)  # the same dropout masks in both
        embed_train._loss(model, recipe)(*embed_train._features(model, rows)).backward()
        word = model[0].model.embeddings.word_embeddings.weight
        if kind == "sparse":
            assert len(tables) == 3 and word.grad.is_sparse  # word, position and token-type tables
            embed_train._dense_grads(tables)
        assert not word.grad.is_sparse
        grads[kind] = word.grad.clone()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        weights[kind] = {n: p.detach().clone() for n, p in model.named_parameters()}
    used = grads["dense"].abs().sum(1) > 0
    assert 50 < int(used.sum()) < 1000  # a batch touches a few hundred of the 30522 rows
    torch.testing.assert_close(grads["sparse"], grads["dense"], rtol=1e-5, atol=1e-7)
    for name, value in weights["dense"].items():
        torch.testing.assert_close(weights["sparse"][name], value, rtol=1e-5, atol=1e-7)
