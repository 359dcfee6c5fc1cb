"""The data plan of a training run: which micro-batches each optimizer step uses.

Fixed by the seed, so the step number alone says where in the data a run is: a resumed run
continues exactly where it stopped, and `llmkit plan` lays out a run without training it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from llmkit import data as datalib
from llmkit.errors import TrainError

if TYPE_CHECKING:
    from llmkit.recipe import Recipe


class Plan:
    """The steps of a run: its micro-batches (rows of example indices) per step and process."""

    def __init__(self, examples, recipe: Recipe, world: int, *, packing: bool | None = None):
        t, d = recipe.train, recipe.data
        packing = d.packing if packing is None else packing  # GRPO: a row is one prompt
        self.examples, self.world = examples, world
        self.per_step = t.grad_accum * world
        lengths = [len(e) for e in examples]

        def epoch_batches(epoch: int):
            return datalib.plan_epoch(
                lengths,
                batch_size=t.batch_size,
                max_length=d.max_length,
                packing=packing,
                seed=t.seed + epoch,
                per_step=self.per_step,
            )

        first = epoch_batches(0)
        # With several processes every one of them needs a micro-batch, so a ragged tail is dropped.
        self.steps_per_epoch = (
            (len(first) // self.per_step) if world > 1 else math.ceil(len(first) / self.per_step)
        )
        if self.steps_per_epoch == 0:
            raise TrainError(
                f"{len(first)} micro-batches per epoch cannot fill one step of {self.per_step}",
                "lower train.batch_size or train.grad_accum, or add data",
            )
        self.total_steps = t.max_steps or max(1, math.ceil(t.epochs * self.steps_per_epoch))
        n_epochs = math.ceil(self.total_steps / self.steps_per_epoch)
        self.epochs = [first] + [epoch_batches(e) for e in range(1, n_epochs)]

    def epoch_of(self, step: int) -> float:
        return step / self.steps_per_epoch

    def _all(self, step: int) -> list:
        epoch, k = divmod(step, self.steps_per_epoch)
        return self.epochs[epoch][k * self.per_step : (k + 1) * self.per_step]

    def micro_batches(self, step: int, rank: int) -> list:
        return self._all(step)[rank :: self.world]

    def label_tokens(self, step: int) -> int:
        return sum(self.examples[i].n_labels for mb in self._all(step) for row in mb for i in row)

    def units(self, step: int) -> int:
        """What this step's loss is normalised by, over all processes: label tokens, pairs or prompts."""
        return sum(self.examples[i].units for mb in self._all(step) for row in mb for i in row)

    def tokens(self, step: int) -> int:
        return sum(len(self.examples[i]) for mb in self._all(step) for row in mb for i in row)
