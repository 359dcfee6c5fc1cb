"""The run's data laid out into optimizer steps and forward passes, exactly as train.py does."""

from __future__ import annotations

from llmkit.recipe import Recipe


def _prepare_data(recipe: Recipe, tokenizer):
    from llmkit import methods

    return methods.get(recipe.train.method).prepare(recipe, tokenizer, recipe.train.seed)


def _layout(examples, recipe: Recipe, budget: int, flat: bool = False) -> dict:
    """The run's steps and passes, exactly as train.py lays them out (one process). `flat`:
    padding-free passes (llmkit.attention): a pass holds its real tokens only, sequences
    opening with one prompt share it, and each sequence attends within itself."""
    from llmkit import data as datalib
    from llmkit import methods
    from llmkit.steps import Plan

    # a preference pair is both answers in one row; a GRPO prompt costs its group of answers
    p = Plan(examples, recipe, 1, packing=methods.get(recipe.train.method).packing)
    best = (0, 0, 0)
    for step in range(p.total_steps):
        for rows in p.micro_batches(step, 0):
            for piece in datalib.split_by_tokens(examples, rows, budget):
                width = max(sum(examples[i].cost for i in row) for row in piece)
                labels = sum(examples[i].n_labels for row in piece for i in row)
                tokens = _flat_tokens(examples, piece) if flat else width * len(piece)
                best = max(best, (tokens, labels, width))
    epoch = p.epochs[0]
    labels = sum(examples[i].n_labels for rows in epoch for row in rows for i in row)
    if flat:  # attention spans one sequence: a token's mean context is sum L^2 / sum L, halved
        lengths = [n for rows in epoch for row in rows for i in row for n in examples[i].lengths]
        padded = sum(
            _flat_tokens(examples, piece)
            for rows in epoch
            for piece in datalib.split_by_tokens(examples, rows, budget)
        )
        mean_width = sum(n * n for n in lengths) / max(1, sum(lengths))
    else:
        padded = sum(
            len(rows) * max(sum(examples[i].cost for i in row) for row in rows) for rows in epoch if rows
        )
        mean_width = padded / max(1, sum(len(rows) for rows in epoch))
    return {
        "steps": p.total_steps,
        "steps_per_epoch": p.steps_per_epoch,
        "pass_tokens": best[0],
        "pass_labels": best[1],
        "pass_width": best[2],
        "tokens_per_epoch": padded,
        "labels_per_epoch": labels,
        "mean_width": mean_width,
        "padding_free": flat,
        "real_tokens_per_epoch": sum(e.cost for e in examples),
    }


def _flat_tokens(examples, piece: list[list[int]]) -> int:
    """The tokens a pass takes when padding-free: its rows end to end in one, the sequences
    sharing their prompts as data.collate lays them out (a GRPO prompt: its group's estimated
    cost, its answers not sampled yet)."""
    from llmkit import data as datalib

    row = [i for r in piece for i in r]
    if any(examples[i].size for i in row):
        return sum(examples[i].cost for i in row)
    return sum(len(ids) for ids, _, _ in datalib.laid_out(examples, row, share=True))
