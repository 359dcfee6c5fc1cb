"""Export (the package is `exporter`, so the name `llmkit.export` stays the function): merge a LoRA run, write GGUF (+ a Modelfile), verify in llama.cpp, create in Ollama.

The orchestration is `pipeline.py`; the parts: merge.py · gguf.py (writer) · archs.py (one rule
per family) · types.py (the GGUF types) · quantize.py (K-quants) · vocab.py · templates.py ·
serving.py (what Ollama is given) · adapter.py / adapter_export.py (`--adapter-only`) · verify.py.
"""

from __future__ import annotations

from llmkit.exporter.pipeline import ExportResult, export

__all__ = ["export", "ExportResult"]
