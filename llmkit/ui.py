"""Terminal output shared by the CLI and long-running library functions.

Progress goes to stderr so stdout stays clean for results and `--json`. rich already
honours NO_COLOR and drops animation when stderr is not a terminal.
"""

from __future__ import annotations

import contextlib
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


def tell(message: str) -> None:
    """An answer to something the user just asked for (/help, a refused command): shown even
    under LLMKIT_QUIET, and never read as rich markup (it may quote what the user typed)."""
    err.print(escape(message))


def warn(message: str) -> None:
    # escape: messages quote user text such as "[/INST]", which rich would read as markup
    err.print(f"[yellow]Warning:[/yellow] {escape(message)}")


def quiet_transformers() -> None:
    """Silence what the libraries print under our output, unless debug(): transformers' weight
    bars ("Loading weights", "Writing model shards"), datasets' split bars, advisory logs
    (transformers, huggingface_hub, datasets) and a deprecation warning peft triggers.

    huggingface_hub's download bars stay: they are the only progress a Hub download shows.
    """
    if debug():
        return
    from huggingface_hub import utils as hub_utils
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hub_bars = not hub_utils.are_progress_bars_disabled()
    hf_logging.disable_progress_bar()  # this turns huggingface_hub's bars off too ...
    if hub_bars:
        hub_utils.enable_progress_bars()  # ... so they come back for downloads
    hub_utils.logging.set_verbosity_error()  # "Repo card metadata block was not found" and such
    if "datasets" in sys.modules:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    else:  # read when datasets is imported (only for Hub datasets: too slow to import for nothing)
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("DATASETS_VERBOSITY", "error")
    # peft asks transformers this deprecated question on every get_peft_model/from_pretrained
    warnings.filterwarnings(
        "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )


@contextlib.contextmanager
def as_our_bar(module, label: str):
    """Show a library's `tqdm` loop (module.tqdm) as one of our bars: its own would print raw
    under our output. Under debug() the library's bar stays."""
    if debug():
        yield
        return
    original = module.tqdm

    def bar(iterable, *args, **kwargs):
        items = list(iterable)
        with progress_items() as p:
            task = p.add_task(label, total=len(items))
            for item in items:
                yield item
                p.advance(task)

    module.tqdm = bar
    try:
        yield
    finally:
        module.tqdm = original
