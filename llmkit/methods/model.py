"""What every method's loss is built on: the model's log-probabilities of the answer tokens.

LossModel wraps the PEFT model so that one forward call returns the method's loss: everything
runs inside forward, so DDP, FSDP and DeepSpeed see a normal forward pass. Position ids restart
per packed sequence; no attention mask is passed, which lets transformers derive the
block-diagonal (packed) causal mask from them, or, on a padding-free model (llmkit.attention),
the sequence bounds that attention runs within. The output layer runs only where a label
exists: with a 49k vocabulary and answers-only loss that skips a large share of the work.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from llmkit import attention
from llmkit.data import IGNORE
from llmkit.label_logps import label_logps, plain_logits


class LossModel(torch.nn.Module):
    """`forward(**batch)` → the method's loss summed over the batch's units (SFT: answer tokens).

    Figures a method wants logged (DPO's preference accuracy, GRPO's rewards) go to
    `ctx.log(name, sum, count)` and are collected by the loop after each step.
    """

    def __init__(self, peft_model, method=None, ctx: Context | None = None):
        super().__init__()
        self.model = peft_model
        self.method, self.ctx = method, ctx
        lm = peft_model.get_base_model()
        cfg = lm.config.get_text_config() if hasattr(lm.config, "get_text_config") else lm.config
        # Models that post-process logits (softcapping, scaling) take the plain path.
        self.fast = not plain_logits(cfg) and lm.get_output_embeddings() is not None
        self.segments = attention.uses_segments(lm)

    def forward(self, **batch):
        if self.method is None:  # SFT's loss, for callers that wrap a model directly
            return -self.token_logps(batch["input_ids"], batch["position_ids"], batch["labels"]).sum()
        return self.method.loss(self, batch, self.ctx)

    def token_logps(self, input_ids, position_ids, labels, *, reference: bool = False):
        """log p(label token | what precedes it) for every label token, in order (a flat tensor).

        `reference`: the same model with the adapter disabled, without gradients: the DPO and
        GRPO reference costs no second copy of the weights."""
        if reference:
            with torch.no_grad(), self.model.disable_adapter():
                return self.token_logps(input_ids, position_ids, labels)
        lm = self.model.get_base_model()
        targets = labels[:, 1:]
        keep = targets != IGNORE
        kw = attention.segment_kwargs(position_ids) if self.segments else {}
        if self.fast:
            hidden = lm.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False, **kw)[
                0
            ]
            # the output layer on label positions only
            return label_logps(lm.get_output_embeddings(), hidden[:, :-1][keep], targets[keep])
        logits = lm(input_ids=input_ids, position_ids=position_ids, use_cache=False, **kw).logits[:, :-1][
            keep
        ]
        return -F.cross_entropy(logits.float(), targets[keep], reduction="none")


def per_sequence(values, segments, labels):
    """Sum of per-token `values` (as from token_logps) for each sequence of the batch, and the
    number of label tokens each has: the segments run 0..n-1 in row order (data.collate)."""
    seg = segments[:, 1:][labels[:, 1:] != IGNORE]
    n = int(segments.max()) + 1
    sums = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(0, seg, values)
    counts = torch.zeros(n, dtype=values.dtype, device=values.device).index_add(
        0, seg, torch.ones_like(values)
    )
    return sums, counts


@dataclass
class Context:
    """What a method needs beyond the batch: the recipe, tokenizer, the model to sample from."""

    recipe: object
    tokenizer: object
    model: object  # the PEFT model (unwrapped), for sampling
    pad_id: int
    accelerator: object = None
    budget: int = 0  # most tokens in one forward/backward pass (0: no limit)
    rewards: list = field(default_factory=list)  # GRPO: loaded reward functions
    end_ids: list[int] = field(default_factory=list)  # tokens that end an answer
    flat: bool = False  # padding-free passes: a micro-batch's rows laid end to end in one row
    stats: dict[str, list[float]] = field(default_factory=lambda: defaultdict(lambda: [0.0, 0.0]))

    def layout(self, rows: list[list[int]]) -> list[list[int]]:
        """The rows a pass is collated into: all in one row when passes are padding-free (the
        sequences keep their order, so per-sequence sums come out in the same order)."""
        return [[i for row in rows for i in row]] if self.flat else rows

    def log(self, name: str, total, count: float = 1.0) -> None:
        entry = self.stats[name]
        entry[0] += float(total)
        entry[1] += float(count)

    def pop_stats(self) -> dict[str, float]:
        """The means logged since the last call, over all processes. Every process calls it at the
        same point; one that logged nothing (no held-out rows fell to it) still joins the sum."""
        names = sorted(self.stats)
        several = self.accelerator is not None and self.accelerator.num_processes > 1
        if several:  # the union of names, in one order everywhere, or the reduce below never meets
            from accelerate.utils import gather_object

            names = sorted({n for part in gather_object([names]) for n in part})
        if not names:
            return {}
        sums = torch.tensor(
            [self.stats.get(n, [0.0, 0.0]) for n in names], dtype=torch.float64, device=self.device
        )
        if several:
            sums = self.accelerator.reduce(sums, "sum")
        self.stats.clear()
        return {n: round(float(s / c), 6) for n, (s, c) in zip(names, sums.tolist(), strict=True) if c}

    @property
    def device(self):
        return self.accelerator.device if self.accelerator is not None else torch.device("cpu")


def eval_loss(lm, examples, ctx: Context, build, *, packing: bool) -> dict[str, float]:
    """Mean loss per unit over held-out examples (split across processes), and the method's
    logged figures on them, prefixed `eval_`."""
    from llmkit import data as datalib

    if not examples:
        return {}
    r = ctx.recipe
    planned = datalib.plan_epoch(
        [e.cost for e in examples],
        batch_size=r.train.batch_size,
        max_length=r.data.max_length,
        packing=packing,
        seed=0,
        per_step=max(1, len(examples)),  # eval order does not matter: sort everything for the least padding
    )
    batches = [piece for rows in planned for piece in datalib.split_by_tokens(examples, rows, ctx.budget)]
    acc = ctx.accelerator
    rank, world = (acc.process_index, acc.num_processes) if acc is not None else (0, 1)
    saved, ctx.stats = ctx.stats, defaultdict(lambda: [0.0, 0.0])
    lm.eval()
    total = torch.zeros(2, dtype=torch.float64, device=ctx.device)
    with torch.no_grad():
        for rows in batches[rank::world]:
            batch = {k: v.to(ctx.device) for k, v in build(examples, ctx.layout(rows), ctx).items()}
            total[0] += float(lm(**batch))
            total[1] += sum(examples[i].units for row in rows for i in row)
    if world > 1:
        total = acc.reduce(total, "sum")
    figures = {f"eval_{k}": v for k, v in ctx.pop_stats().items()}
    ctx.stats = saved
    return {"eval_loss": round(float(total[0] / total[1].clamp(min=1)), 6), **figures}
