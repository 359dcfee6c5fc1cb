"""The training methods and their recipe sections: the one list `train.method` is checked against.

Light on purpose (pydantic only): the recipe schema is built from it, and `llmkit --help` must not
import torch. The methods themselves live beside it, one module each (sft, dpo, orpo, grpo).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


DPO_LOSSES = ("sigmoid", "hinge", "ipo")


class DpoSection(_Section):
    beta: float = Field(0.1, gt=0, description="How far from the reference model the policy may move.")
    loss: Literal[DPO_LOSSES] = Field(  # type: ignore[valid-type]
        "sigmoid", description="sigmoid (the DPO paper), hinge (SLiC) or ipo (squared, length-averaged)."
    )
    nll: float = Field(
        0.0,
        ge=0,
        description="Weight of the chosen answer's NLL added to the loss (RPO): keeps the model "
        "saying what the chosen answers say while it learns the preference. 0: plain DPO.",
    )


class OrpoSection(_Section):
    beta: float = Field(0.1, gt=0, description="Weight of the odds-ratio term against the NLL on chosen.")


class RewardSpec(_Section):
    name: str = Field(description="A built-in reward (llmkit rewards list) or file.py:function.")
    weight: float = Field(1.0, description="Its weight in the total reward the advantages come from.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the function.")


class GrpoSection(_Section):
    num_generations: int = Field(8, description="Answers sampled per prompt (a group); 2 or more.")
    max_completion_length: int = Field(128, ge=1, description="Most new tokens per sampled answer.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the group's answers.")
    beta: float = Field(0.0, ge=0, description="KL weight to the adapter-disabled reference (0: none).")
    epsilon: float = Field(0.2, gt=0, lt=1, description="Clip range of the probability ratio.")
    scale_rewards: bool = Field(True, description="Divide advantages by the group's standard deviation.")
    eval_prompts: int = Field(32, ge=0, description="Held-out prompts answered greedily at each eval.")
    rewards: list[RewardSpec] = Field(description="The reward functions, summed with their weights.")

    @field_validator("num_generations")
    @classmethod
    def _at_least_two(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"must be 2 or more (got {v}): advantages compare answers within a group")
        return v

    @field_validator("rewards", mode="before")
    @classmethod
    def _names(cls, v):  # `rewards: [exact_answer, format]` is short for [{name: exact_answer}, ...]
        return [{"name": r} if isinstance(r, str) else r for r in v] if isinstance(v, list) else v

    @field_validator("rewards")
    @classmethod
    def _some(cls, v: list) -> list:
        if not v:
            raise ValueError("name at least one reward function")
        return v


# method → its recipe section (None: the method has none)
SECTIONS: dict[str, type[_Section] | None] = {
    "sft": None,
    "dpo": DpoSection,
    "orpo": OrpoSection,
    "grpo": GrpoSection,
}
METHODS = tuple(SECTIONS)


def longest_sequence(recipe) -> int:
    """The most tokens one sequence of a run may hold: data.max_length, plus a GRPO answer."""
    grpo = recipe.train.method == "grpo"
    return recipe.data.max_length + (recipe.grpo.max_completion_length if grpo else 0)
