"""`classify train --fine-tune` (issue 20 §2): EfficientNet-Lite0's last block fine-tuned with the
head, reported against the frozen-encoder classifier on the same split, saved and used by
predict and watch. Real weights, real photos: foolbox's CIFAR-10 PNGs (files read, the package
never imported)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

PHOTOS = Path(importlib.util.find_spec("foolbox").origin).parent / "data"
CIFAR10 = sorted(PHOTOS.glob("cifar10_*.png"))
VEHICLES = {0, 1, 8, 9}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """CIFAR-10's 20 photos as a folder per class: 10 vehicles, 10 animals."""
    root = tmp_path_factory.mktemp("ft") / "cifar"
    for p in CIFAR10:
        folder = root / ("vehicle" if int(p.stem.rsplit("_", 1)[1]) in VEHICLES else "animal")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.name)
    return root


@pytest.fixture(scope="module")
def tuned(photos, tmp_path_factory):
    """One real `llmkit classify train --fine-tune` run (≈ 10-15 s on 2 shared cores)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("clf") / "clf"
    cmd = [sys.executable, "-m", "llmkit", "classify", "train", str(photos), "-o", str(out)]
    proc = subprocess.run(
        [*cmd, "--fine-tune", "--test-size", "0.3"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


@pytest.mark.slow
def test_fine_tune_reports_both_on_one_split_and_saves_safetensors(tuned):
    """Measured (2 shared cores): 14 training / 6 held-out photos, frozen 0.8333, fine-tuned
    0.8333 (the same image missed), fine-tuning ≈ 5-14 s."""
    out, stdout = tuned
    assert "14 training, 6 held-out images (the same for both)" in stdout
    frozen_line = next(line for line in stdout.splitlines() if "frozen encoder + logistic regression" in line)
    tuned_line = next(line for line in stdout.splitlines() if "fine-tuned last block + head" in line)
    config = json.loads((out / "classifier.json").read_text())
    assert f"{config['frozen_held_out']['accuracy']:.4f}" in frozen_line
    assert f"{config['held_out']['accuracy']:.4f}" in tuned_line
    assert config["held_out"]["n"] == config["frozen_held_out"]["n"] == 6
    assert config["held_out"]["accuracy"] >= 0.8 and config["frozen_held_out"]["accuracy"] >= 0.8
    ft = config["fine_tuned"]
    assert ft["weights"] == "encoder.safetensors" and ft["trained"] == ["_blocks.15", "_conv_head", "_bn1"]
    assert ft["train_loss"][-1] < ft["train_loss"][0]  # cross-entropy went down
    # safetensors + JSON only: nothing a loader would unpickle
    assert sorted(p.name for p in out.iterdir()) == [
        "classifier.json",
        "classifier.safetensors",
        "encoder.safetensors",
    ]


@pytest.mark.slow
def test_fine_tuned_weights_differ_and_predict_and_watch_use_them(tuned, photos, tmp_path, capsys):
    from safetensors.numpy import load_file

    from llmkit.embedding.image_finetune import FineTunedLite0
    from llmkit.embedding.images import EfficientNetLite0, load_lite0, read_image
    from llmkit.embedding.watch import watch
    from tests.conftest import run_cli_inprocess

    out, _ = tuned
    saved = load_file(str(out / "encoder.safetensors"))
    base = load_lite0().state_dict()
    moved = [k for k, v in saved.items() if not np.allclose(v, base[k].numpy())]
    assert moved and all(k.startswith(("_blocks.15.", "_conv_head.", "_bn1.")) for k in saved)
    pixels = np.stack([read_image(p) for p in CIFAR10[:2]])
    a, b = FineTunedLite0(out).encode_pixels(pixels), EfficientNetLite0().encode_pixels(pixels)
    assert a.shape == b.shape == (2, 1280) and not np.allclose(a, b, atol=1e-4)

    code, stdout, stderr = run_cli_inprocess(capsys, "classify", "predict", str(out), str(photos))
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and len(rows) == 20, stderr
    assert np.mean([r["label"] == Path(r["id"]).parent.name for r in rows]) >= 0.9

    cam = tmp_path / "cam"
    cam.mkdir()
    for p in CIFAR10[:3]:
        shutil.copy(p, cam / p.name)
    log = tmp_path / "seen.jsonl"
    assert watch(out, cam, log, interval=0.05, settle=0.2, once=True) == 3
    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert {r["label"] for r in logged} <= {"animal", "vehicle"} and not any("error" in r for r in logged)


@pytest.mark.slow
def test_a_tampered_fine_tuned_dir_is_a_one_line_error(tuned, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    from tests.conftest import run_cli_inprocess

    out, _ = tuned
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    tensors = load_file(str(bad / "encoder.safetensors"))
    name = next(k for k in tensors if k.endswith("_conv_head.weight"))
    tensors[name] = tensors[name][:10]
    save_file(tensors, str(bad / "encoder.safetensors"))
    code, _, stderr = run_cli_inprocess(capsys, "classify", "predict", str(bad), str(CIFAR10[0]))
    assert code == 1 and "encoder.safetensors does not fit EfficientNet-Lite0" in stderr
    assert len(stderr.strip().splitlines()) <= 2
    (bad / "encoder.safetensors").unlink()
    code, _, stderr = run_cli_inprocess(capsys, "classify", "predict", str(bad), str(CIFAR10[0]))
    assert code == 1 and "has no encoder.safetensors" in stderr


def test_fine_tune_bad_input_is_a_one_line_error(tmp_path, photos, capsys):
    from tests.conftest import run_cli_inprocess

    texts = tmp_path / "texts.csv"
    texts.write_text("text,label\na robin on a branch,bird\na red car,vehicle\n")
    code, _, stderr = run_cli_inprocess(
        capsys, "classify", "train", str(texts), "-o", str(tmp_path / "c"), "--fine-tune"
    )
    assert code == 2 and "--fine-tune applies to images" in stderr and str(texts) in stderr
    assert len(stderr.strip().splitlines()) <= 2 and not (tmp_path / "c").exists()
    code, _, stderr = run_cli_inprocess(
        capsys,
        "classify",
        "train",
        str(photos),
        "-o",
        str(tmp_path / "c"),
        "--fine-tune",
        "-m",
        str(tmp_path),
    )
    assert code == 2 and "--fine-tune is available for efficientnet-lite0 only" in stderr
    assert not (tmp_path / "c").exists()
