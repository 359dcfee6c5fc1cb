"""Other image encoders through the same interface (issue 20 §1): a transformers image model dir.
Nothing downloads: a tiny ViT built from a config (random weights, 32 px, hidden size 32) saved
with `save_pretrained` together with its ViTImageProcessor; the photos are foolbox's CIFAR-10
PNGs (files read, the package never imported)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

PHOTOS = Path(importlib.util.find_spec("foolbox").origin).parent / "data"
CIFAR10 = sorted(PHOTOS.glob("cifar10_*.png"))
HIDDEN = 32


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> Path:
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    path = tmp_path_factory.mktemp("models") / "tiny-vit"
    config = ViTConfig(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=32,
        patch_size=8,
    )
    torch.manual_seed(0)
    ViTModel(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos") / "cifar"
    for p in CIFAR10:
        folder = root / ("vehicle" if int(p.stem.rsplit("_", 1)[1]) in {0, 1, 8, 9} else "animal")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.name)
    return root


def test_tiny_vit_vectors_have_its_dimension(tiny_vit):
    import torch
    from transformers import ViTImageProcessor, ViTModel

    from llmkit.embedding.encoders import load_encoder
    from llmkit.embedding.images import read_image

    enc = load_encoder(str(tiny_vit))
    assert enc.info() == {
        "model": str(tiny_vit.resolve()),
        "dim": HIDDEN,
        "backend": "torch",
        "precision": "fp32",
    }
    vecs = enc.encode([str(p) for p in CIFAR10[:3]])
    assert vecs.shape == (3, HIDDEN) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    # the model's own pooled output through its own processor, computed here by hand
    pixels = [read_image(p) for p in CIFAR10[:3]]
    x = ViTImageProcessor.from_pretrained(tiny_vit)(images=pixels, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = ViTModel.from_pretrained(tiny_vit).eval()(pixel_values=x).pooler_output.numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(vecs, ref, atol=1e-5)


@pytest.mark.slow
def test_job_and_classify_train_run_on_the_tiny_vit(tiny_vit, photos, tmp_path, capsys):
    from tests.conftest import run_cli_inprocess

    out = tmp_path / "v.parquet"
    code, stdout, stderr = run_cli_inprocess(
        capsys, "embed", str(photos), "-o", str(out), "--model", str(tiny_vit), "--json"
    )
    assert code == 0, stderr
    s = json.loads(stdout)
    assert (s["rows"], s["dim"], s["model"], s["failed"]) == (20, HIDDEN, str(tiny_vit.resolve()), 0)
    code, stdout, stderr = run_cli_inprocess(
        capsys, "similar", str(CIFAR10[4]), "--index", str(out), "-k", "1", "--json"
    )
    assert code == 0 and Path(json.loads(stdout)[0]["hits"][0]["id"]).name == CIFAR10[4].name, stderr

    clf = tmp_path / "clf"
    code, stdout, stderr = run_cli_inprocess(
        capsys, "classify", "train", str(photos), "-o", str(clf), "--model", str(tiny_vit), "--json"
    )
    assert code == 0, stderr
    config = json.loads(stdout)
    assert config["encoder"]["model"] == str(tiny_vit.resolve()) and config["encoder"]["dim"] == HIDDEN
    assert config["held_out"]["n"] == 4  # random weights: the plumbing, not the accuracy
    code, stdout, stderr = run_cli_inprocess(capsys, "classify", "predict", str(clf), str(photos))
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and len(rows) == 20 and {r["label"] for r in rows} <= {"animal", "vehicle"}, stderr


def test_model_dirs_that_are_not_image_models_are_one_line_errors(tiny_vit, photos, tmp_path, capsys):
    from transformers import BertConfig, BertModel

    from tests.conftest import run_cli_inprocess

    # a text model saved next to an image processor's config: loads, but takes no pixels
    bert = tmp_path / "bert"
    BertModel(
        BertConfig(
            vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
    ).save_pretrained(bert)
    shutil.copy(tiny_vit / "preprocessor_config.json", bert)
    # an audio feature extractor's config: not an image processor
    audio = tmp_path / "audio"
    audio.mkdir()
    shutil.copy(tiny_vit / "config.json", audio)
    (audio / "preprocessor_config.json").write_text(
        json.dumps({"feature_extractor_type": "Wav2Vec2FeatureExtractor", "sampling_rate": 16000})
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(tiny_vit / "preprocessor_config.json", broken)
    (broken / "config.json").write_text("{not json")
    cases = [
        (bert, "is a BertModel, not an image model (no pixel input)"),
        (audio, "is not an image model dir (no image processor config)"),
        (broken, "cannot load it as a transformers image model"),
    ]
    for model, message in cases:
        out = tmp_path / "v.parquet"
        code, _, stderr = run_cli_inprocess(
            capsys, "embed", str(photos), "-o", str(out), "--model", str(model)
        )
        assert code == 1 and message in stderr, (model, stderr)
        assert len(stderr.strip().splitlines()) <= 2 and not out.exists()
    code, _, stderr = run_cli_inprocess(
        capsys,
        "embed",
        str(photos),
        "-o",
        str(tmp_path / "v.parquet"),
        "-m",
        str(tiny_vit),
        "--backend",
        "onnx",
    )
    assert code == 2 and "not available for this image model" in stderr
    code, _, stderr = run_cli_inprocess(capsys, "similarity", "a bird", "a car", "--model", str(tiny_vit))
    assert code == 2 and "image encoder and cannot embed text" in stderr
