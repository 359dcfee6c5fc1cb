"""Check a GGUF in llama.cpp (the engine inside Ollama) against transformers.

Two checks: (1) llama.cpp's tokenizer gives the same ids as the HF tokenizer on a fixed
multilingual / whitespace / emoji / digits text and on a chat-formatted prompt; (2) on probe
prompts, llama.cpp's logits agree with transformers' (top-1 agreement over every position and
the max absolute logit difference), with a threshold per output type.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from llmkit.errors import ExportError
from llmkit.exporter.generation import check  # generation never imports verify: it is given the tie rule
from llmkit.exporter.types import TYPES

TOKENIZER_TEXT = (
    "Hello world! Grüße aus Köln, ça va? Привет, мир. こんにちは世界 你好，世界 안녕하세요 مرحبا שלום\n"
    "  two  spaces,\ttab,\n\nnewlines\r\n and trailing   \n"
    "Emoji: 🚀🦙✅ 👩‍💻 🏳️‍🌈  Digits: 0 7 42 123 4567 89012 3.14159 1,000,000 2024-06-01 +49(0)30\n"
    "Code: def f(x):\n    return x**2  # comment\n<tag attr=\"v\">&amp;</tag> I'm, you're, we'VE 'll"
)

PROBES = [
    "The capital of France is Paris. The capital of Germany is",
    "def add(a, b):\n    return a + b\n\nprint(add(2,",
    "Once upon a time, in a small village by the sea, there lived",
    "1, 2, 3, 4, 5, 6, 7, 8,",
]
PROBE_CHAT = [{"role": "user", "content": "What is the capital of France?"}]

# Thresholds and tie allowances per output type: the table in llmkit.exporter.types.


def tie_tolerance(out_type: str, logits):
    """Per-position tie allowance for `logits` (the HF reference, [..., vocab])."""
    import numpy as np

    absolute, relative = TYPES[out_type].tie
    return np.maximum(absolute, relative * np.abs(np.asarray(logits)).max(-1))


def generation_tie(out_type: str, max_diff: float):
    """The tie allowance of verify's generation check, per position. Float files (f32, f16): the
    type's own. The others (bf16, quantized): at least `max_diff`, the largest |logit difference|
    measured between this file and transformers over the probes. Their rounding moves every logit
    by up to that much, so where transformers' choice (say, to end the turn) won by less, the file
    may take the other one: a rounding-level tie, not a wrong file."""
    floor = 0.0 if TYPES[out_type].exact else max_diff
    return lambda logits: max(float(tie_tolerance(out_type, logits)), floor)


@dataclass
class Report:
    out_type: str
    top1: float
    max_abs_diff: float
    positions: int
    tokens_match: bool
    chat_tokens_match: bool
    threshold: float
    details: list[str] = field(default_factory=list)
    ties: int = 0  # positions counted as agreement because HF's top two logits were within TIES
    mean_kl: float = 0.0  # mean KL(HF ‖ llama.cpp) of the next-token distributions, in nats
    max_kl: float = 1.0
    generation: dict | None = None  # chat fidelity through generation (llmkit.exporter.generation)

    @property
    def passed(self) -> bool:
        quality = self.top1 >= self.threshold and self.mean_kl <= self.max_kl
        chat = self.generation is None or self.generation["passed"]
        return self.tokens_match and self.chat_tokens_match and quality and chat

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        status = "ok" if self.passed else "FAILED"
        return (
            f"verify {self.out_type}: top-1 {self.top1:.1%} (min {self.threshold:.0%}) over {self.positions} positions"
            + (f" ({self.ties} near-ties)" if self.ties else "")
            + ", "
            f"mean KL {self.mean_kl:.4f} (max {self.max_kl:g}), max |Δlogit| {self.max_abs_diff:.4f}, tokenizer {'same' if self.tokens_match else 'DIFFERENT'}, "
            f"chat tokens {'same' if self.chat_tokens_match else 'DIFFERENT'}"
            + (f"; {self.generation['summary']}" if self.generation else "")
            + f": {status}"
        )


def load_llama(gguf_path: Path, *, lora: Path | None = None, n_ctx: int = 512):
    from llmkit.devices import free_cpus

    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise ExportError(
            f"llama-cpp-python is not usable: {exc}",
            "install it portably: tools/install-llama-cpp.sh .venv/bin/python (plus pip install diskcache jinja2)",
        ) from None
    kwargs = {"lora_path": str(lora)} if lora else {}
    return Llama(
        model_path=str(gguf_path),
        n_ctx=n_ctx,
        logits_all=True,
        verbose=False,
        n_threads=free_cpus(),
        n_gpu_layers=0,
        **kwargs,
    )


def llama_logits(llm, ids: list[int]):
    import numpy as np

    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float32)


def verify(
    gguf_path: Path,
    model_dir: Path,
    out_type: str,
    *,
    lora: Path | None = None,
    model=None,
    tokenizer=None,
    probes: list[str] = PROBES,
    chat_go: str | None = None,
    stops: list[str] | None = None,
    context: int | None = None,
) -> Report:
    """Compare `gguf_path` (optionally with a GGUF LoRA) in llama.cpp against the HF model.

    With `stops` (the Modelfile's) and a chat template, also generate through chat probes
    with the served prompt (`chat_go`, the Modelfile's Go template; None: the model's own).
    `context`: the served context (num_ctx) when shorter than the model's; logits are compared
    within it, as Ollama will run the file.
    """
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = tokenizer or AutoTokenizer.from_pretrained(model_dir)
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    llm = load_llama(gguf_path, lora=lora)
    details = []

    hf_ids = tokenizer(TOKENIZER_TEXT).input_ids
    cpp_ids = llm.tokenize(TOKENIZER_TEXT.encode("utf-8"), add_bos=True, special=False)
    tokens_match = list(hf_ids) == list(cpp_ids)
    if not tokens_match:
        details.append(f"tokenizer: first difference at {_first_diff(hf_ids, cpp_ids)}")

    chat_match = True
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(PROBE_CHAT, tokenize=False, add_generation_prompt=True)
        hf_chat = tokenizer(text, add_special_tokens=False).input_ids
        cpp_chat = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        chat_match = list(hf_chat) == list(cpp_chat)
        if not chat_match:
            details.append(f"chat prompt tokens: first difference at {_first_diff(hf_chat, cpp_chat)}")

    agree = total = ties = 0
    kl_sum = 0.0
    max_diff = 0.0
    for text in probes:
        ids = tokenizer(text).input_ids[:context]  # compare what is served: within num_ctx
        with torch.no_grad():
            ref = model(torch.tensor([ids])).logits[0].float().numpy()
        got = llama_logits(llm, ids)
        same = ref.argmax(-1) == got.argmax(-1)
        # llama.cpp's choice scores within `tie` of HF's best: a rounding-level tie, not a disagreement
        near = ~same & (
            ref.max(-1) - ref[np.arange(len(ids)), got.argmax(-1)] <= tie_tolerance(out_type, ref)
        )
        agree += int(same.sum() + near.sum())
        ties += int(near.sum())
        kl_sum += float(_kl(ref, got).sum())
        total += len(ids)
        max_diff = max(max_diff, float(np.abs(ref - got).max()))
    generation = None
    if stops is not None and getattr(tokenizer, "chat_template", None):
        tie = generation_tie(out_type, max_diff)
        generation = check(
            llm, model, tokenizer, chat_go, stops, tie=tie, exact=TYPES[out_type].exact
        ).as_dict()
    llm.close()
    return Report(
        out_type=out_type,
        top1=agree / total,
        max_abs_diff=max_diff,
        positions=total,
        tokens_match=tokens_match,
        chat_tokens_match=chat_match,
        threshold=TYPES[out_type].min_top1,
        max_kl=TYPES[out_type].max_kl,
        details=details,
        ties=ties,
        mean_kl=kl_sum / total,
        generation=generation,
    )


def _kl(ref, got):
    """KL(softmax(ref) ‖ softmax(got)) per position, in float64."""
    import numpy as np

    def log_softmax(x):
        x = x.astype(np.float64)
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(ref), log_softmax(got)
    return (np.exp(lp) * (lp - lq)).sum(-1)


def _first_diff(a, b) -> str:
    a, b = list(a), list(b)
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"position {i}: transformers {a[i : i + 4]} vs llama.cpp {b[i : i + 4]}"
    return f"lengths {len(a)} vs {len(b)}"
