"""Fast image paths (issue 20 §3): EfficientNet-Lite0 exported to ONNX, run by ONNX Runtime and
OpenVINO, chosen by measurement. Real weights, the 20 labelled ImageNet JPEGs foolbox ships."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from llmkit.errors import InvalidArgument

PATHS = ["torch", "onnx"] + (["openvino"] if importlib.util.find_spec("openvino") else [])


@pytest.fixture(scope="module")
def photos():
    from llmkit.embedding.image_fast import calibration_photos
    from llmkit.embedding.images import read_image

    paths = calibration_photos()
    assert len(paths) == 20
    labels = [int(p.stem.rsplit("_", 1)[1]) for p in paths]
    return np.stack([read_image(p) for p in paths]), labels


@pytest.fixture(scope="module")
def reference(photos):
    from llmkit.embedding.encoders import load_encoder

    return load_encoder("efficientnet-lite0", "torch", normalize=False).encode_pixels(photos[0])


@pytest.mark.slow
@pytest.mark.parametrize("backend", PATHS)
def test_every_path_top1_and_cosine(backend, photos, reference):
    """Each path: top-1 ≥ 80 % with the ImageNet head (torch measured 90 %), and every photo's
    vector at cosine ≥ 0.9999 to torch fp32 (measured ≥ 0.9999998)."""
    from llmkit.embedding.encoders import load_encoder
    from llmkit.embedding.images import imagenet_classes
    from llmkit.embedding.vectors import cosine_rows

    pixels, labels = photos
    enc = load_encoder("efficientnet-lite0", backend, "fp32", normalize=False)
    assert enc.info() == {"model": "efficientnet-lite0", "dim": 1280, "backend": backend, "precision": "fp32"}
    names = imagenet_classes()
    top = enc.imagenet(pixels, top=5)
    top1 = np.mean([t[0][0] == names[y] for t, y in zip(top, labels, strict=True)])
    assert top1 >= 0.8, (backend, top1)
    assert all(len(t) == 5 and t[0][1] >= t[1][1] for t in top)
    cos = cosine_rows(enc.encode_pixels(pixels), reference)
    assert cos.min() >= 0.9999, (backend, cos.min())
    # a single photo and a batch bigger than one forward pass give the same rows
    one = enc.encode_pixels(pixels[3:4])
    np.testing.assert_allclose(one[0], reference[3], rtol=1e-3, atol=1e-3)


@pytest.mark.slow
def test_auto_is_measured_cached_and_keeps_the_contract(photos, reference):
    from llmkit.embedding import calibrate, image_fast
    from llmkit.embedding.encoders import load_encoder
    from llmkit.embedding.images import load_lite0
    from llmkit.embedding.vectors import cosine_rows

    enc = load_encoder("efficientnet-lite0", normalize=False)
    choice = enc.choice
    assert choice["backend"] == enc.backend and choice["cos_min"] >= 0.9999
    table = image_fast.measure()
    assert {"torch/fp32", "onnx/fp32"} <= set(table["paths"]) and table["photos"] == 20
    assert all(r["cos_min"] >= 0.9999 for r in table["paths"].values() if "error" not in r)
    # cached on disk, keyed by weights + CPU + library versions: a second load measures nothing
    path = calibrate.cache_path(f"image-lite0-{image_fast.weights_key()}-v{image_fast.CALIBRATION_VERSION}")
    assert json.loads(path.read_text()) == table
    assert load_encoder("efficientnet-lite0").backend == enc.backend
    assert cosine_rows(enc.encode_pixels(photos[0]), reference).min() >= 0.9999
    # exporting left the shared torch model in eval mode (BatchNorm on running statistics)
    assert not any(m.training for m in load_lite0().modules())


def test_a_chosen_path_that_does_not_keep_the_contract_is_never_chosen():
    from llmkit.embedding.image_fast import choose

    table = {
        "cpu": "x",
        "paths": {
            "torch/fp32": {
                "backend": "torch",
                "precision": "fp32",
                "speedup": 1.0,
                "cos_mean": 1.0,
                "cos_min": 1.0,
            },
            "onnx/fp32": {
                "backend": "onnx",
                "precision": "fp32",
                "speedup": 3.0,
                "cos_mean": 1.0,
                "cos_min": 0.9990,
            },
            "openvino/fp32": {"backend": "openvino", "precision": "fp32", "error": "ImportError: no"},
        },
    }
    assert choose(table)["path"] == "torch/fp32"
    table["paths"]["onnx/fp32"]["cos_min"] = 0.99995
    assert choose(table)["path"] == "onnx/fp32"
    assert choose(None)["backend"] == "torch" and "foolbox" in choose(None)["note"]


@pytest.mark.parametrize(("backend", "precision"), [("ollama", "auto"), ("onnx", "int8"), ("torch", "bf16")])
def test_unavailable_image_paths_are_one_line(backend, precision):
    from llmkit.embedding.encoders import load_encoder

    with pytest.raises(InvalidArgument, match="not available for images") as err:
        load_encoder("efficientnet-lite0", backend, precision)
    assert "\n" not in err.value.message and "onnx or openvino" in err.value.hint


@pytest.mark.slow
def test_embed_cli_on_the_onnx_path(tmp_path, capsys):
    from llmkit.embedding.image_fast import calibration_photos
    from tests.conftest import run_cli_inprocess
    from tests.test_images import copy_photos, read_vectors

    photos = tmp_path / "photos"
    copy_photos(photos, calibration_photos()[:5])
    outs = {}
    for backend in ("onnx", "torch"):
        out = tmp_path / f"{backend}.parquet"
        code, stdout, stderr = run_cli_inprocess(
            capsys, "embed", str(photos), "-o", str(out), "--backend", backend, "--json"
        )
        assert code == 0, stderr
        s = json.loads(stdout)
        assert s["backend"] == backend and s["rows"] == 5
        outs[backend] = read_vectors(out)
    for k, v in outs["torch"].items():
        assert float(np.dot(v, outs["onnx"][k])) >= 0.9999
