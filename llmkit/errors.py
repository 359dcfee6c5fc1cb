"""Errors the user can act on: a one-line message and an optional hint.

The CLI prints `Error: message` (and the hint) on stderr and exits with `exit_code`;
tracebacks are shown only with `--debug`.
"""

from __future__ import annotations


def first_line(exc: BaseException | str, limit: int = 300) -> str:
    """The first non-empty line of an error (or text), at most `limit` characters: what a one-line
    message quotes from a library's multi-line exception. An empty message gives the type's name."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else (type(exc).__name__ if not isinstance(exc, str) else "error")
    return line[:limit]


class LlmkitError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class InvalidArgument(LlmkitError):
    """An argument or option value the function (or command) cannot accept: exit code 2, like
    Typer's own usage errors, so a wrong value exits the same way in every command."""

    exit_code = 2


class RecipeError(LlmkitError):
    """A recipe that does not parse or validate; `message` may list several problems."""


class SourceError(LlmkitError):
    """A model reference that cannot be resolved to a local model directory."""


class DataError(LlmkitError):
    """A dataset that cannot be read or yields nothing usable."""


class OllamaError(LlmkitError):
    """The Ollama server is unreachable or refused a request."""


class ExportError(LlmkitError):
    """A model that cannot be merged, converted to GGUF or turned into an Ollama model."""


class OutputError(LlmkitError):
    """An output path that cannot be written: under a regular file, read-only, no permission."""


class HardwareError(LlmkitError):
    """The recipe asks for something this machine cannot do (4-bit on CPU, fp16 on CPU, ...)."""


class TrainError(LlmkitError):
    """A run that cannot start or continue (run dir in the way, no checkpoint to resume, ...)."""


class PlanError(LlmkitError):
    """A plan that cannot be made (a model whose config cannot be read, a bad --memory)."""


class DoesNotFit(LlmkitError):
    """The recipe's run needs more memory than the device has (the plan itself is attached)."""

    def __init__(self, message: str, hint: str | None, result):  # result: plan.PlanResult
        super().__init__(message, hint)
        self.result = result


class EncoderError(LlmkitError):
    """An encoder that cannot be loaded or failed to encode."""


class ClassifierError(LlmkitError):
    """A classifier dir that is missing, tampered with, or whose encoder is unavailable."""


class IndexMismatchError(LlmkitError):
    """Vectors made by one model queried with another."""


class RayError(LlmkitError):
    """Ray is missing or the cluster cannot be reached."""


class GoTemplateError(Exception):
    """A template outside the Go subset this evaluator understands, or one that fails to run."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line
