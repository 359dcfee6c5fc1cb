"""Terminal output shared by the CLI and long-running library functions.

Progress goes to stderr so stdout stays clean for results and `--json`. rich already
honours NO_COLOR and drops animation when stderr is not a terminal.
"""

from __future__ import annotations

import os
import sys
import warnings

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

err = Console(stderr=True, highlight=False)
out = Console(highlight=False, soft_wrap=True)


def quiet() -> bool:
    return os.environ.get("LLMKIT_QUIET", "") not in ("", "0")


def debug() -> bool:
    """LLMKIT_DEBUG=1 (the CLI's --debug sets it too): show third-party output as well as ours."""
    return os.environ.get("LLMKIT_DEBUG", "") not in ("", "0")


def progress_bytes() -> Progress:
    """A progress bar for downloads/uploads: size, speed, ETA."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=quiet(),
        transient=not sys.stderr.isatty(),
    )


def progress_items(*extra: TextColumn) -> Progress:
    """A progress bar for counted work (tensors, rows, steps) with optional extra fields."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=quiet(),
    )


def field(name: str, label: str | None = None) -> TextColumn:
    """A progress column showing the task's field `name` (set with bar.update(task, name=...))."""
    return TextColumn(f"{label or name} {{task.fields[{name}]}}")


def info(message: str) -> None:
    if not quiet():
        err.print(message)


def warn(message: str) -> None:
    # escape: messages quote user text such as "[/INST]", which rich would read as markup
    err.print(f"[yellow]Warning:[/yellow] {escape(message)}")


def quiet_transformers() -> None:
    """Silence the libraries' own output under ours (unless debug()): transformers' weight
    loading/writing bars ("Loading weights", "Writing model shards") and advisory logs, and
    deprecation warnings raised inside transformers/peft that the user cannot act on.

    huggingface_hub's download bars stay: they are the only progress a Hub download has.
    """
    if debug():
        return
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    # peft asks transformers this deprecated question on every get_peft_model/from_pretrained
    warnings.filterwarnings(
        "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )
