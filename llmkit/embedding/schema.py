"""The embedding recipe's schema: one YAML that runs embed → classify → cluster (recipes/embed/).

Its `encoder:` and `embed:` sections are the job's own options (options.py), so every backend,
precision, sample_by... the job takes, a recipe takes, with the same defaults. Running a recipe
is embed/recipe.py; this module stays light (the recipe loader imports it to validate).

The path rule (the same as for training recipes):
- input paths (`embed.input`, `classify.data`) resolve against the recipe file's folder; a
  relative path that exists as written from the current directory is used as it is; `hf:NAME`
  (a Hugging Face dataset) is not a path;
- output paths (`embed.output`, `classify.output`, `cluster.plot`) resolve against the current
  directory (or `base`), so a shipped recipe never writes inside the installed package.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from llmkit.embedding.options import EncoderOptions, JobFields, JobOptions
from llmkit.readers import HF_PREFIX
from llmkit.recipe_base import RecipeBase


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Paths(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    input: str
    output: str


class EmbedSection(JobFields, _Paths):
    """The `embed:` section: input and output first, then the job's fields (one JobFields)."""


class ClassifySection(_Section):
    data: str
    output: str
    text_column: str = "text"
    label_column: str = "label"
    test_size: float = Field(0.2, gt=0, lt=1)


class ClusterSection(_Section):
    k: int | Literal["auto"] = "auto"
    plot: str | None = None
    top: int = Field(3, ge=1)


class EmbedRecipe(RecipeBase):
    """An embedding recipe."""

    kind: ClassVar[str] = "embed"
    example: ClassVar[str] = "topics"

    name: str
    encoder: EncoderOptions = EncoderOptions()
    embed: EmbedSection
    classify: ClassifySection | None = None
    cluster: ClusterSection | None = None

    def job_options(self) -> JobOptions:
        return JobOptions(**self.encoder.model_dump(), **self.embed.model_dump(exclude={"input", "output"}))

    def input_path(self, value: str) -> Path:
        """An input path resolved by the path rule; `hf:NAME` is kept as written (the readers
        recognise it by its text)."""
        return Path(value) if value.startswith(HF_PREFIX) else self.resolve_input(value)

    def inputs(self) -> dict[str, Path]:
        found = {"embed.input": self.embed.input}
        if self.classify:
            found["classify.data"] = self.classify.data
        return {k: self.input_path(v) for k, v in found.items() if not v.startswith(HF_PREFIX)}
