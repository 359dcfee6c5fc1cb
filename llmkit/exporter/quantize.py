"""K-quants (Q4_K_M and friends) written by llama.cpp's own quantizer.

K-quant math (super-blocks, per-tensor type mixes such as Q4_K_M's Q6_K attention-V and output)
lives in llama.cpp; we never re-implement it. llama-cpp-python exposes the quantizer as
`llama_model_quantize`; we feed it our F16 GGUF and rename its output into place.
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

from llmkit.errors import ExportError
from llmkit.exporter.types import TYPES

INSTALL_HINT = (
    "install llama-cpp-python portably: tools/install-llama-cpp.sh .venv/bin/python "
    "(or write f16 and let Ollama quantize: --gguf f16 --quantize q4_K_M --ollama NAME)"
)


def quantize(src: Path, dst: Path, qtype: str) -> Path:
    """Quantize the F16/BF16 GGUF `src` to the K-quant `qtype` at `dst` (atomically)."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise ExportError(
            f"K-quants need llama-cpp-python, which is not usable: {exc}", INSTALL_HINT
        ) from None
    from llmkit.files import atomic_path

    ftype = TYPES[qtype].file_type  # e.g. MOSTLY_Q4_K_M
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{ftype}")
    params.nthread = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )
    try:
        with atomic_path(Path(dst)) as tmp, _progress_from_log(llama_cpp, f"GGUF {qtype} (llama.cpp)"):
            rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), params)
            if rc != 0:
                raise ExportError(f"llama.cpp could not quantize {src.name} to {qtype.upper()} (code {rc})")
    except OSError as exc:
        raise ExportError(
            f"writing {dst} failed: {exc.strerror or exc}", "check free disk space and file size limits"
        ) from None
    return Path(dst)


class _progress_from_log:
    """A progress bar fed by the quantizer's own log lines ("[  12/ 272] blk.1.attn_q.weight ..."),
    which are otherwise hidden; llama-cpp-python's log callback is restored afterwards."""

    LINE = re.compile(rb"\[\s*(\d+)/\s*(\d+)\]")

    def __init__(self, llama_cpp, label: str):
        self.llama_cpp, self.label = llama_cpp, label

    def __enter__(self):
        from llmkit.ui import progress_items

        self.bar = progress_items().__enter__()
        self.task = self.bar.add_task(self.label, total=None)

        @self.llama_cpp.llama_log_callback
        def on_log(level, text, user_data):
            m = self.LINE.search(text or b"")
            if m:
                self.bar.update(self.task, completed=int(m.group(1)), total=int(m.group(2)))

        self.callback = on_log  # keep a reference: ctypes must not free it while C holds it
        self.llama_cpp.llama_log_set(on_log, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc):
        from llama_cpp import _logger

        self.llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        self.bar.__exit__(*exc)
        return False
