"""The GGUF output types: one table that the recipe schema, the CLI, the writer, the quantizer,
`--verify`, the Modelfile's `--quantize` and the planner all read.

No imports beyond the standard library: `llmkit.recipe` builds its fields from this table, and
`import llmkit` / `llmkit --help` must stay torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmkit.errors import InvalidArgument


@dataclass(frozen=True)
class GGUFType:
    name: str  # as written in recipes and on the command line (lower case)
    ggml: str  # GGML type of the weight matrices (gguf.GGMLQuantizationType member)
    file_type: str  # general.file_type (gguf.LlamaFileType member; llama.cpp's LLAMA_FTYPE_<file_type>)
    bytes_per_weight: float  # on disk, for the planner
    min_top1: float  # --verify: least top-1 agreement with transformers
    max_kl: float  # --verify: most mean KL(HF ‖ llama.cpp), in nats
    producer: str  # "gguf-py" (numpy, in the writer) or "llama.cpp" (its quantizer, from an F16 file)
    tie: tuple[float, float] = (0.0, 0.0)  # --verify: (absolute, relative) logit tie allowance
    ollama: str | None = None  # Ollama's spelling when its server can quantize to this type

    @property
    def exact(self) -> bool:
        """--verify: greedy answers must equal transformers' (ties excepted): the types that must
        agree at every position (f32, f16). The others' rounding may change a choice."""
        return self.min_top1 >= 1.0

    @property
    def adapter_ok(self) -> bool:
        """A GGUF LoRA adapter can hold this type (llama.cpp reads adapters in float types only)."""
        return self.producer == "gguf-py" and self.ggml in ("F32", "F16", "BF16")


# Thresholds: set from bench/quant_quality.py on SmolLM2-135M-Instruct with a margin (measured
# figures in docs/export.md): e.g. q4_k_m measured 88.6 % / 0.058, q6_k 92.9 % / 0.022, q8_0
# 98.6 % / 0.003. Ties: two logits closer than this (absolute, or relative to the position's
# largest) are a rounding-level tie at the file's precision (f16 moves Gemma's logits of ~30 by
# 0.02-0.05); quantized types get none, their thresholds already allow disagreement.
# Bytes: block sizes for the gguf-py types (Q8_0 = 34 bytes per 32 weights); for the K-quant
# mixes, llama.cpp's quantizer listing (Llama-3-8B: Q4_K_M 4.58 GiB for 8.03e9 weights).
_TABLE = (
    GGUFType("f32", "F32", "ALL_F32", 4.0, 1.0, 0.001, "gguf-py", (1e-4, 1e-5)),
    GGUFType("f16", "F16", "MOSTLY_F16", 2.0, 1.0, 0.001, "gguf-py", (2e-3, 1e-3)),
    GGUFType("bf16", "BF16", "MOSTLY_BF16", 2.0, 0.98, 0.005, "gguf-py", (1e-2, 8e-3)),
    GGUFType("q8_0", "Q8_0", "MOSTLY_Q8_0", 34 / 32, 0.95, 0.02, "gguf-py", ollama="q8_0"),
    GGUFType("q4_0", "Q4_0", "MOSTLY_Q4_0", 18 / 32, 0.65, 1.2, "gguf-py"),
    GGUFType("q4_1", "Q4_1", "MOSTLY_Q4_1", 20 / 32, 0.75, 0.5, "gguf-py"),
    GGUFType("q5_0", "Q5_0", "MOSTLY_Q5_0", 22 / 32, 0.8, 0.3, "gguf-py"),
    GGUFType("q5_1", "Q5_1", "MOSTLY_Q5_1", 24 / 32, 0.8, 0.3, "gguf-py"),
    GGUFType("q4_k_m", "Q4_K", "MOSTLY_Q4_K_M", 0.612, 0.75, 0.25, "llama.cpp", ollama="q4_K_M"),
    GGUFType("q4_k_s", "Q4_K", "MOSTLY_Q4_K_S", 0.584, 0.75, 0.3, "llama.cpp", ollama="q4_K_S"),
    GGUFType("q5_k_m", "Q5_K", "MOSTLY_Q5_K_M", 0.713, 0.75, 0.25, "llama.cpp"),
    GGUFType("q5_k_s", "Q5_K", "MOSTLY_Q5_K_S", 0.697, 0.75, 0.3, "llama.cpp"),
    GGUFType("q6_k", "Q6_K", "MOSTLY_Q6_K", 0.821, 0.85, 0.08, "llama.cpp"),
    GGUFType("q3_k_m", "Q3_K", "MOSTLY_Q3_K_M", 0.500, 0.7, 0.5, "llama.cpp"),
    GGUFType("q2_k", "Q2_K", "MOSTLY_Q2_K", 0.396, 0.6, 1.5, "llama.cpp"),
)
TYPES: dict[str, GGUFType] = {t.name: t for t in _TABLE}
NAMES: tuple[str, ...] = tuple(TYPES)
# What `ollama create --quantize` accepts, in Ollama's spelling (q4_K_M), from an F16/BF16 file.
OLLAMA_QUANTIZE: tuple[str, ...] = tuple(t.ollama for t in _TABLE if t.ollama)
# Ollama refuses to quantize an all-F32 file (its file type reads as "unknown").
QUANTIZABLE_BY_OLLAMA = ("f16", "bf16")


def normalize(name: str) -> str:
    """A type name as the table spells it (case-insensitive: Q8_0, q4_K_M and q4_k_m all work)."""
    return name.strip().lower() if isinstance(name, str) else name


def normalize_quantize(name: str) -> str:
    """An Ollama quantize target in Ollama's own spelling (q4_k_m → q4_K_M); unknown names as given."""
    if not isinstance(name, str):
        return name
    return {q.lower(): q for q in OLLAMA_QUANTIZE}.get(name.strip().lower(), name)


def gguf_type(name: str) -> GGUFType:
    """The table entry for `name` (any case), or the one-line usage error listing every type."""
    found = TYPES.get(normalize(name or ""))
    if found is None:
        raise InvalidArgument(f"--gguf {name}: unknown GGUF type", f"choose one of {help_text()}")
    return found


def help_text() -> str:
    """The types as the CLI and errors list them: written here first, then llama.cpp's K-quants."""
    ours = [t.name for t in _TABLE if t.producer == "gguf-py"]
    kq = [t.name for t in _TABLE if t.producer == "llama.cpp"]
    return f"{' | '.join(ours)}, or a K-quant by llama.cpp: {' | '.join(kq)}"


def check_quantize(quantize: str | None, gguf: str) -> str | None:
    """The Ollama server-side quantize target in Ollama's spelling, checked against the file type."""
    if quantize is None:
        return None
    match = normalize_quantize(quantize)
    if match not in OLLAMA_QUANTIZE:
        raise InvalidArgument(
            f"Ollama cannot quantize to '{quantize}' (--quantize)",
            f"Ollama accepts {', '.join(OLLAMA_QUANTIZE)}; for other types write them directly with --gguf",
        )
    gguf = gguf_type(gguf).name
    if gguf not in QUANTIZABLE_BY_OLLAMA:
        raise InvalidArgument(
            f"--quantize: Ollama only quantizes F16/BF16 GGUFs, not {gguf}"
            + (" (an all-F32 file reads as file type 'unknown')" if gguf == "f32" else ""),
            "export with --gguf f16 when using --quantize",
        )
    return match
