"""What an embedding job is, written once: the CLI builds it from its flags, a recipe's `encoder:`
and `embed:` sections are its fields, the resume key is its dump, and the Ray runner ships it to
the actors. A new option is added here and nowhere else.

Light on purpose (pydantic and two leaf modules): the recipe schema imports it.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llmkit.embedding.choices import BACKENDS, DEFAULT_MODEL, PRECISIONS
from llmkit.errors import InvalidArgument
from llmkit.readers import SAMPLE_BY


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EncoderOptions(_Options):
    """Which encoder: a recipe's `encoder:` section; `load_encoder(**options.model_dump())`."""

    model: str = DEFAULT_MODEL
    backend: Literal[BACKENDS] = "auto"  # type: ignore[valid-type]
    precision: Literal[PRECISIONS] = "auto"  # type: ignore[valid-type]
    normalize: bool = True


class JobFields(_Options):
    """How the job reads its input and writes its rows: a recipe's `embed:` section, beside
    its input and output."""

    column: str | None = None
    id_column: str | None = None
    split: str = "train"
    sample_by: Literal[SAMPLE_BY] = "line"  # type: ignore[valid-type]
    chunk: bool = False  # long texts: the mean of their windows instead of truncated
    skip_bad: bool = False
    keep_text: bool = True
    commit_every: int = Field(4096, ge=1)


class JobOptions(EncoderOptions, JobFields):
    """Every option that changes the output's rows or vectors (so: the key a rerun resumes by)."""

    @classmethod
    def of(cls, options: JobOptions | None = None, **changes) -> JobOptions:
        """`options` with `changes` applied; a wrong value is a one-line InvalidArgument."""
        data = {**(options.model_dump() if options else {}), **changes}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _invalid(exc, data) from None

    def encoder(self) -> dict:
        """The keyword arguments of `load_encoder`."""
        return {**self.model_dump(include=set(EncoderOptions.model_fields)), "chunk": self.chunk}

    def key(self) -> dict:
        return self.model_dump()


def _invalid(exc: ValidationError, data: dict) -> InvalidArgument:
    err = exc.errors()[0]
    name = str(err["loc"][0]) if err["loc"] else "option"
    choices = {"backend": BACKENDS, "precision": PRECISIONS, "sample_by": SAMPLE_BY}.get(name)
    if choices:
        return InvalidArgument(f"unknown {name} {data.get(name)!r}", f"choose one of: {', '.join(choices)}")
    return InvalidArgument(f"{name}: {err['msg']} (got {data.get(name)!r})", "see llmkit embed --help")
