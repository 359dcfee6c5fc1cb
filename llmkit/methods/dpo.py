"""DPO: raise the chosen answer's likelihood over the rejected one's, relative to a reference.

The reference is the same model with the adapter disabled (no second copy of the weights). With
policy and reference log-probabilities summed over each answer's tokens, and
z = beta * ((chosen - ref_chosen) - (rejected - ref_rejected)), the loss per pair is
    sigmoid: -log sigmoid(z)               (Rafailov et al., 2023)
    hinge:   max(0, 1 - z)                 (SLiC)
    ipo:     (z' / beta - 1 / (2 beta))^2  with z' from per-token mean log-probabilities (Azar et al.)
plus, with `nll: w`, w times the chosen answer's per-token NLL (RPO, Pang et al., 2024): plain DPO
lowers the likelihood of both answers' shared content along with the rejected one, and a small
model soon stops answering at all (measured on smollm2-135m-dpo: "Ahoy! Ahoy! I'm a Smol. I'm a
Smol. …"); the NLL term keeps it saying what the chosen answers say.
"""

from __future__ import annotations

import torch.nn.functional as F

from llmkit.methods import pairs
from llmkit.methods.model import eval_loss

packing = None  # pairs pack like examples (the recipe's data.packing)
prepare = pairs.prepare
build = pairs.build


def pair_losses(chosen, rejected, ref_chosen, ref_rejected, beta: float, kind: str = "sigmoid"):
    """The loss of each pair from its four log-probabilities (summed, or per-token means for ipo)."""
    z = (chosen - ref_chosen) - (rejected - ref_rejected)
    if kind == "sigmoid":
        return -F.logsigmoid(beta * z)
    if kind == "hinge":
        return (1 - beta * z).clamp(min=0)
    return (z - 1 / (2 * beta)) ** 2  # ipo


def loss(lm, batch, ctx):
    cfg = ctx.recipe.dpo
    chosen, rejected, n_chosen, n_rejected = pairs.logps(lm, batch)
    ref_chosen, ref_rejected, _, _ = pairs.logps(lm, batch, reference=True)
    if cfg.loss == "ipo":  # IPO compares per-token means
        chosen, rejected = chosen / n_chosen, rejected / n_rejected
        ref_chosen, ref_rejected = ref_chosen / n_chosen, ref_rejected / n_rejected
    losses = pair_losses(chosen, rejected, ref_chosen, ref_rejected, cfg.beta, cfg.loss)
    if cfg.nll:
        nll = -(chosen if cfg.loss == "ipo" else chosen / n_chosen)  # per-token mean, either way
        losses = losses + cfg.nll * nll
    reward_chosen = cfg.beta * (chosen - ref_chosen).detach()
    reward_rejected = cfg.beta * (rejected - ref_rejected).detach()
    n = len(losses)
    ctx.log("pref_accuracy", (reward_chosen > reward_rejected).sum(), n)  # TRL's rewards/accuracies
    ctx.log("logp_accuracy", (chosen > rejected).sum(), n)  # the model itself prefers chosen
    ctx.log("reward_margin", (reward_chosen - reward_rejected).sum(), n)
    ctx.log("reward_chosen", reward_chosen.sum(), n)
    ctx.log("reward_rejected", reward_rejected.sum(), n)
    return losses.sum()


def evaluate(lm, examples, ctx) -> dict:
    return eval_loss(lm, examples, ctx, build, packing=bool(ctx.recipe.data.packing))
