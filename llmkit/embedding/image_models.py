"""Other image encoders, through the same interface: a local transformers image model directory
(ViT, CLIP or SigLIP vision, DINOv2, ConvNeXt, … saved with its image processor).

`--model DIR` where DIR holds `config.json` and an image processor's `preprocessor_config.json`
(what `save_pretrained` writes for a model and its `AutoImageProcessor`). The vector is the
model's own image embedding: `get_image_features` for a two-tower model (CLIP, SigLIP: the
projected vector its text tower compares with), else the pooled output (`pooler_output`: ViT's,
CLIP/SigLIP vision's), else the mean of the last hidden states. Pixels come from `read_image`
(EXIF applied, 224 centre crop) and then go through the model's own processor (its size, mean
and std). Nothing is downloaded: the directory is read with `local_files_only`.

timm models are not wired: timm is not installed here (and would pull its own torch).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np

from llmkit.embedding.images import ImageEncoder
from llmkit.errors import EncoderError, first_line

HINT = "give a transformers image model dir (config.json + preprocessor_config.json from save_pretrained)"


def image_processor_config(path: Path) -> dict | None:
    """The image processor's saved config in a model dir, or None (not an image model dir)."""
    file = Path(path) / "preprocessor_config.json"
    if not file.is_file() or not (Path(path) / "config.json").is_file():
        return None
    try:
        config = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = str(config.get("image_processor_type") or config.get("feature_extractor_type") or "")
    return config if "Image" in kind or "image_mean" in config else None


class HFImageEncoder(ImageEncoder):
    """A transformers image model in torch fp32 on the CPU."""

    def __init__(self, model: str, normalize: bool = True):
        import torch

        from llmkit.embedding.base import threads

        path = Path(model).expanduser()
        if image_processor_config(path) is None:
            raise EncoderError(f"{model} is not an image model dir (no image processor config)", HINT)
        try:
            from transformers import AutoImageProcessor, AutoModel
            from transformers.utils import logging as hf_logging

            level = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()  # "falls back to the PIL processor" and friends
            try:
                self.processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
                self.net = AutoModel.from_pretrained(str(path), local_files_only=True).eval()
            finally:
                hf_logging.set_verbosity(level)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EncoderError(
                f"{model}: cannot load it as a transformers image model ({first_line(exc)})", HINT
            ) from None
        self.two_tower = hasattr(self.net, "get_image_features")
        if not self.two_tower and "pixel_values" not in inspect.signature(self.net.forward).parameters:
            raise EncoderError(
                f"{model} is a {type(self.net).__name__}, not an image model (no pixel input)", HINT
            )
        self.normalize = normalize
        if torch.get_num_threads() > threads():
            torch.set_num_threads(threads())
        dim = self._features(np.zeros((1, 32, 32, 3), np.uint8)).shape[1]
        super().__init__(str(path.resolve()), int(dim), "torch", "fp32")

    def _features(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        x = self.processor(images=list(pixels), return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            if self.two_tower:
                out = self.net.get_image_features(pixel_values=x)
                out = out if isinstance(out, torch.Tensor) else out.pooler_output
            else:
                result = self.net(pixel_values=x)
                out = getattr(result, "pooler_output", None)
                if out is None:
                    hidden = result.last_hidden_state
                    out = hidden.mean(1) if hidden.dim() == 3 else hidden.mean((2, 3))
        return out.reshape(len(pixels), -1).float().numpy()
