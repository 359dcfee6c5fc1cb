"""How a model is taught: one module per method, each the same shape.

    prepare(recipe, tokenizer, seed) -> data.Dataset     rows → examples (pairs, prompts, ...)
    build(examples, rows, ctx) -> dict of tensors          a micro-batch (GRPO samples answers here)
    loss(lm, batch, ctx) -> tensor                         summed over the batch's units
    evaluate(lm, examples, ctx) -> dict                    held-out figures, summed over processes

The loop in llmkit.training calls these and nothing else that differs between methods: forward →
loss → backward → step stays one piece of code. `lm` is llmkit.methods.model.LossModel, which
gives every method the per-token log-probabilities of the answer tokens (with and without the
adapter). A method's recipe section is in llmkit.methods.config.
"""

from __future__ import annotations

import importlib

from llmkit.methods.config import METHODS


def get(name: str):
    """The module implementing method `name` (one of METHODS)."""
    if name not in METHODS:  # the recipe schema already refuses it; a direct caller gets a clear error
        raise ValueError(f"unknown training method {name!r}; choose one of {', '.join(METHODS)}")
    return importlib.import_module(f"llmkit.methods.{name}")
