"""Errors the user can act on: a one-line message and an optional hint.

The CLI prints `Error: message` (and the hint) on stderr and exits with `exit_code`;
tracebacks are shown only with `--debug`.
"""

from __future__ import annotations


class LlmkitError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(LlmkitError):
    """Wrong arguments or options (exit code 2, like Typer's own usage errors)."""

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
