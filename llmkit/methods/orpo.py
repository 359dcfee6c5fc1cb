"""ORPO: SFT on the chosen answer plus an odds-ratio term against the rejected one; no reference.

With a = the per-token mean log-probability of an answer and odds = p / (1 - p) for p = exp(a),
the loss per pair is  -a_chosen - beta * log sigmoid(log odds_chosen - log odds_rejected)
(Hong et al., 2024). The NLL is each chosen answer's mean over its tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llmkit.methods import pairs
from llmkit.methods.model import eval_loss

packing = None
prepare = pairs.prepare
build = pairs.build


def log_odds_ratio(mean_chosen, mean_rejected):
    """log odds(chosen) - log odds(rejected), from per-token mean log-probabilities."""
    return (mean_chosen - mean_rejected) - (
        torch.log1p(-torch.exp(mean_chosen)) - torch.log1p(-torch.exp(mean_rejected))
    )


def pair_losses(mean_chosen, mean_rejected, beta: float):
    return -mean_chosen - beta * F.logsigmoid(log_odds_ratio(mean_chosen, mean_rejected))


def loss(lm, batch, ctx):
    beta = ctx.recipe.orpo.beta
    chosen, rejected, n_chosen, n_rejected = pairs.logps(lm, batch)
    # exp(mean) == 1 makes log1p(-1) infinite: keep the mean a hair below 0
    mean_chosen = (chosen / n_chosen).clamp(max=-1e-6)
    mean_rejected = (rejected / n_rejected).clamp(max=-1e-6)
    losses = pair_losses(mean_chosen, mean_rejected, beta)
    n = len(losses)
    ratio = log_odds_ratio(mean_chosen, mean_rejected).detach()
    ctx.log("pref_accuracy", (mean_chosen > mean_rejected).sum(), n)  # per-token means, ORPO's own terms
    ctx.log("logp_accuracy", (chosen > rejected).sum(), n)
    ctx.log("log_odds_ratio", ratio.sum(), n)
    ctx.log("nll_chosen", -mean_chosen.detach().sum(), n)
    return losses.sum()


def evaluate(lm, examples, ctx) -> dict:
    return eval_loss(lm, examples, ctx, build, packing=bool(ctx.recipe.data.packing))
