"""Supervised fine-tuning: imitate the answers (cross-entropy on the answer tokens)."""

from __future__ import annotations

from llmkit import data as datalib
from llmkit.methods.model import eval_loss

packing = None  # the recipe's data.packing


def prepare(recipe, tokenizer, seed: int):
    return datalib.prepare(recipe, tokenizer, seed=seed)


def build(examples, rows, ctx):
    return datalib.collate(examples, rows, ctx.pad_id, share=ctx.flat)


def loss(lm, batch, ctx):
    """Cross-entropy summed over the answer tokens (the loop divides by their number)."""
    return -lm.token_logps(batch["input_ids"], batch["position_ids"], batch["labels"]).sum()


def evaluate(lm, examples, ctx) -> dict:
    return eval_loss(lm, examples, ctx, build, packing=ctx.recipe.data.packing)
