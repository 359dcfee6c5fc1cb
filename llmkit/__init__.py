"""llmkit: pull, fine-tune, export and embed with local LLMs.

`import llmkit` stays light (no torch): the public functions import their heavy
dependencies when they are called.
"""

from __future__ import annotations

import os

# transformers 5 replaces layers with kernels it downloads from the Hub and runs (code nobody here
# vetted) by default wherever it finds some for the device, the GPUs; offline, the download fails
# the run at `model.train()`. llmkit loads no remote code unless asked: USE_HUB_KERNELS=YES in the
# environment turns them back on.
os.environ.setdefault("USE_HUB_KERNELS", "NO")

__version__ = "0.1.0"

__all__ = ["__version__", "load_recipe", "pull", "train", "export", "embed"]


def load_recipe(path, overrides=()):
    """Load and validate a YAML recipe (see `llmkit.recipe.load`)."""
    from llmkit.recipe import load

    return load(path, overrides)


def pull(ref: str, **kwargs):
    """Resolve a model reference to a local Hugging Face model directory."""
    from llmkit.sources import resolve

    return resolve(ref, **kwargs)


def train(recipe, overrides=(), **kwargs):
    """Fine-tune with LoRA from a recipe (name, path, dict or `Recipe`) and `a.b=value` overrides;
    returns the run directory. Keyword options: resume, overwrite."""
    from llmkit.training import train as _train

    return _train(recipe, overrides, **kwargs)


def export(source, **kwargs):
    """Merge, write GGUF and (optionally) create an Ollama model from a run dir or model dir."""
    from llmkit.exporter import export as _export

    return _export(source, **kwargs)


def embed(texts, **kwargs):
    """Embed a list of texts; returns a float32 matrix (rows normalized by default)."""
    from llmkit.embedding import embed as _embed

    return _embed(texts, **kwargs)
