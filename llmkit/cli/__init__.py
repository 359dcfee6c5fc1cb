"""The `llmkit` command line: one thin function per command (parse → call library → render).

Commands live in one module per group (recipes, models, train, export, ollama, embed); each
registers itself on the shared app in `_app`. Heavy libraries (torch, transformers) are imported
inside the commands, so `llmkit --help` stays fast. Library errors (`LlmkitError`) become
`Error: message` + hint and the error's exit code.
"""

from __future__ import annotations

import importlib
import os
import sys

from llmkit.allocator import restart_preloaded
from llmkit.cli._app import _state, app
from llmkit.errors import LlmkitError

# Each module registers its commands on `app`; this order is the order `llmkit --help` lists them.
for _group in ("models", "train", "evaluate", "export", "ollama", "embed", "recipes"):
    importlib.import_module(f"llmkit.cli.{_group}")


def main(argv: list[str] | None = None) -> None:
    """Run the app; turn library errors into one line on stderr and an exit code."""
    # Library chatter (advisory warnings) is noise on a CLI; see also ui.quiet_transformers().
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if argv is None:  # the process's own command line: training restarts with a faster malloc
            restart_preloaded(sys.argv[1:])
        app(args=argv, prog_name="llmkit", standalone_mode=True)
    except LlmkitError as exc:
        if _state["debug"]:
            raise
        _report(exc.message, exc.hint)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("\nInterrupted.\n")
        sys.exit(130)
    except Exception as exc:  # an unexpected failure: one line, traceback behind --debug
        if _state["debug"] or "PYTEST_CURRENT_TEST" in os.environ:
            raise  # under the tests an unexpected exception is a bug to see whole, not a user error
        _report(f"{type(exc).__name__}: {exc}", "rerun with --debug for the full traceback")
        sys.exit(1)


def _report(message: str, hint: str | None) -> None:
    sys.stderr.write(f"Error: {message}\n")
    if hint:
        sys.stderr.write(f"  hint: {hint}\n")


__all__ = ["app", "main"]
