"""`llmkit doctor`: one table of what is present and usable on this machine."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import shutil
import subprocess
import sys

from llmkit.errors import first_line
from llmkit.files import home, human_size


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def _row(check: str, value, ok: bool | None = True, note: str = "") -> dict:
    return {"check": check, "value": value, "ok": ok, "note": note}


def checks() -> list[dict]:
    rows = [
        _row("python", platform.python_version(), sys.version_info >= (3, 10), sys.executable),
        _row("platform", f"{platform.system()} {platform.machine()}", True),
        _row("llmkit home", str(home()), True),
    ]
    rows += _torch_rows()
    bnb = _version("bitsandbytes")
    rows.append(_row("bitsandbytes", bnb or "not installed", None, "needed for QLoRA (CUDA only)"))
    rows.append(_allocator_row())
    rows += _embed_rows()
    rows.append(_accelerate_row())
    rows += _hf_rows()
    rows += _ollama_rows()
    llama = _version("llama-cpp-python")
    rows.append(
        _row("llama-cpp-python", llama or "not installed", bool(llama) or None, "for export --verify")
    )
    for label, path in (("free disk (llmkit home)", home()),):
        usage = shutil.disk_usage(path)
        rows.append(
            _row(label, human_size(usage.free), usage.free > 5 * 2**30, f"of {human_size(usage.total)}")
        )
    return rows


def _torch_rows() -> list[dict]:
    try:
        import torch
    except ImportError:
        return [_row("torch", "not installed", False, "pip install torch")]
    from llmkit.devices import describe

    d = describe()
    rows = [_row("torch", torch.__version__, True, f"training on {d['device']} in {d['train_precision']}")]
    if d["device"] == "cuda":
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            rows.append(_row(f"cuda:{i}", props.name, True, f"{human_size(props.total_memory)} memory"))
    elif d["device"] == "mps":
        rows.append(_row("mps", "available", True))
    rows.append(
        _row(
            "cpu",
            d["name"],
            True,
            f"{torch.get_num_threads()} torch threads, {os.cpu_count()} logical CPUs, {d['cpu_isa']}",
        )
    )
    bf16_note = f"CPU bf16 instructions: {d['cpu_bf16']}" if d["device"] == "cpu" else ""
    rows.append(_row("bf16", "yes" if d["bf16"] else "no", None, bf16_note))
    rows.append(_row("QLoRA (4-bit)", "yes" if d["qlora"] else "no", None, "needs CUDA + bitsandbytes"))
    return rows


def _embed_rows() -> list[dict]:
    """Which path `llmkit embed` takes here for the default model (auto and fast), and why."""
    try:
        from llmkit.embedding import calibrate
        from llmkit.embedding.encoders import DEFAULT_MODEL, model_key, resolve_model_dir

        model_id, path = resolve_model_dir(DEFAULT_MODEL)
        table = calibrate.cached(model_key(path))
    except Exception as exc:
        return [_row("embed paths", "unavailable", None, first_line(exc))]
    if table is None:
        return [
            _row(
                "embed paths",
                "not measured yet",
                None,
                "measured at first `llmkit embed` (per model and CPU)",
            )
        ]
    rows = []
    for contract, label in (("exact", "embed auto"), ("fast", "embed fast")):
        c = calibrate.choose(table, contract)
        note = f"{c['speedup_vs_reference']}x sentence-transformers, cos mean {c['cos_mean']:.5f} min "
        rows.append(_row(label, c["path"], True, note + f"{c['cos_min']:.4f}; {c['why']}"))
    rows.append(_row("embed measured", table["cpu"], None, f"{table['model']}: {c['measured']}"))
    return rows


def _allocator_row() -> dict:
    """The malloc `llmkit train` and `llmkit run` will run on (llmkit.allocator)."""
    from llmkit import allocator
    from llmkit.errors import LlmkitError

    try:
        library = allocator.find()
    except LlmkitError as exc:
        return _row("training malloc", "LLMKIT_ALLOCATOR", False, exc.message)
    if library is not None:
        return _row("training malloc", library.name, True, f"preloaded by train/run: {library}")
    if allocator.missing():
        return _row(
            "training malloc", "glibc", None, f"{allocator.GAIN} faster CPU training: {allocator.INSTALL}"
        )
    return _row(
        "training malloc",
        "system",
        None,
        "LLMKIT_ALLOCATOR=system" if sys.platform.startswith("linux") else "",
    )


def _accelerate_row() -> dict:
    try:
        from accelerate.commands.config import default_config_file
    except Exception:
        return _row("accelerate config", "accelerate not installed", False)
    if os.path.isfile(default_config_file):
        return _row("accelerate config", default_config_file, True)
    return _row("accelerate config", "none (single process)", None, "multi-GPU: see recipes/accelerate/")


def _hf_rows() -> list[dict]:
    from huggingface_hub import constants, get_token

    has_token = bool(os.environ.get("HF_TOKEN") or get_token())
    return [
        _row("HF token", "yes" if has_token else "no", None, "needed only for gated repos"),
        _row("HF cache", constants.HF_HUB_CACHE, True, "offline mode" if constants.HF_HUB_OFFLINE else ""),
    ]


def _ollama_rows() -> list[dict]:
    exe = shutil.which("ollama")
    if exe:
        try:
            out = subprocess.run(
                [exe, "--version"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out = "present"
        binary = _row("ollama binary", out.splitlines()[-1] if out else exe, True, exe)
    else:
        binary = _row("ollama binary", "not found", None, "install: https://ollama.com/download")
    from llmkit.errors import OllamaError
    from llmkit.ollama import server_version

    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434")
    try:
        version = server_version()
    except OllamaError as exc:
        return [binary, _row("ollama server", "bad OLLAMA_HOST", False, exc.message)]
    server = _row("ollama server", version or "not running", bool(version) or None, host)
    return [binary, server]


def render(rows: list[dict]) -> None:
    from rich.table import Table

    from llmkit.ui import out

    mark = {True: "[green]ok[/green]", False: "[red]missing[/red]", None: "[yellow]-[/yellow]"}
    table = Table("check", "value", "", "note", title="llmkit doctor")
    for r in rows:
        table.add_row(r["check"], str(r["value"]), mark[r["ok"]], r["note"])
    out.print(table)
