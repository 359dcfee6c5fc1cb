"""Chat fidelity through generation: the exported model answers like the HF model, and stops.

Next-token logits can agree while a served model still "babbles" or "never stops": a prompt
rendered differently, a stop token missing. For a few probe conversations this renders the
prompt the way Ollama will (the Modelfile's Go template, BOS added by llama.cpp) and the way
transformers does (the HF chat template), then generates greedily in llama.cpp with the
Modelfile's stops and in transformers, and compares:

  * prompts: byte-identical text;
  * answers: identical greedy text (a divergence at a rounding-level tie is reported, not failed);
  * stopping: where transformers ends the turn within the limit, llama.cpp ends it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "Name a primary color."},
    ],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
]
MAX_TOKENS = 48


@dataclass
class Answer:
    roles: list[str]
    prompt_same: bool
    hf: str
    llama_cpp: str
    hf_stopped: bool  # transformers ended the turn (EOS/end-of-turn) within MAX_TOKENS
    llama_cpp_stopped: bool
    divergence: str | None = None  # where the greedy texts part, if they do
    tie: bool = False  # they part where HF's top two tokens are within the tie tolerance


@dataclass
class GenerationReport:
    answers: list[Answer] = field(default_factory=list)
    exact_required: bool = True  # F16/F32: answers must be identical (ties excepted)

    @property
    def prompts_same(self) -> int:
        return sum(a.prompt_same for a in self.answers)

    @property
    def same(self) -> int:
        return sum(a.divergence is None or a.tie for a in self.answers)

    @property
    def run_on(self) -> int:
        """Answers the served model runs on where transformers ended the turn (a tie excepted:
        its end token and llama.cpp's next one scored within the tie tolerance)."""
        return sum(a.hf_stopped and not a.llama_cpp_stopped and not a.tie for a in self.answers)

    @property
    def passed(self) -> bool:
        n = len(self.answers)
        answers_ok = self.same == n or not self.exact_required
        return self.prompts_same == n and self.run_on == 0 and answers_ok

    def summary(self) -> str:
        n = len(self.answers)
        stopped = sum(a.llama_cpp_stopped for a in self.answers)
        text = (
            f"generation: prompts same {self.prompts_same}/{n}, greedy answers same {self.same}/{n}, "
            f"ended the turn {stopped}/{n} (transformers {sum(a.hf_stopped for a in self.answers)}/{n})"
        )
        first = next((a for a in self.answers if a.divergence and not a.tie), None)
        return text + (f"; first divergence {first.divergence}" if first else "")

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed, "summary": self.summary()}


def check(
    llm, model, tokenizer, go: str | None, stops: list[str], *, tie: Callable, exact: bool
) -> GenerationReport:
    """Generate on CONVERSATIONS in llama.cpp (`llm`) and transformers (`model`) and compare.

    `tie(logits)`: the per-position tie allowance of the file's type (verify.tie_tolerance, bound
    to it by the caller: verify owns the numbers, this module only applies them).
    """
    from llmkit.exporter.gotemplate import GoTemplateError, render
    from llmkit.exporter.templates import expected_go_output, hf_render
    from llmkit.turns import adds_bos, end_of_turn

    bos = tokenizer.bos_token
    add_bos = adds_bos(tokenizer)
    ends = end_of_turn(tokenizer, model.generation_config)  # what `llmkit chat` stops on
    report = GenerationReport(exact_required=exact)
    for conv in CONVERSATIONS:
        hf_text = hf_render(tokenizer, tokenizer.chat_template, conv)
        if hf_text is None:  # the template rejects this conversation (e.g. a system turn)
            continue
        served = expected_go_output(hf_text, bos, add_bos)  # native: the model's own template
        if go is not None:
            try:
                served = render(go, conv)
            except GoTemplateError:
                served = None
        hf_ids = tokenizer(hf_text, add_special_tokens=False).input_ids
        hf_new, hf_stopped = _hf_generate(model, tokenizer, hf_ids, ends)
        cpp_ids = llm.tokenize((served or "").encode("utf-8"), add_bos=True, special=True)
        cpp_new, cpp_stopped = llama_generate(llm, cpp_ids, stops)
        answer = Answer(
            roles=[m["role"] for m in conv],
            prompt_same=served is not None and served == expected_go_output(hf_text, bos, add_bos),
            hf=tokenizer.decode(hf_new),
            llama_cpp=tokenizer.decode(cpp_new),
            hf_stopped=hf_stopped,
            llama_cpp_stopped=cpp_stopped,
        )
        if hf_new != cpp_new:
            answer.divergence, answer.tie = _divergence(model, tokenizer, hf_ids, hf_new, cpp_new, tie)
        report.answers.append(answer)
    return report


def _hf_generate(model, tokenizer, ids: list[int], ends) -> tuple[list[int], bool]:
    """Greedy tokens from transformers, ending where `llmkit chat` ends a turn (`ends`, from
    llmkit.turns); a text stop drops the token that completed it, as the llama.cpp side does."""
    import torch

    texts = {"stop_strings": list(ends.texts), "tokenizer": tokenizer} if ends.texts else {}
    with torch.no_grad():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=MAX_TOKENS,
            do_sample=False,
            eos_token_id=list(ends.ids),
            pad_token_id=ends.ids[0] if ends.ids else 0,
            **texts,
        )
    new = out[0, len(ids) :].tolist()
    said = tokenizer.decode(new, skip_special_tokens=False)
    stopped = bool(new) and (new[-1] in ends.ids or any(t in said for t in ends.texts))
    return (new[:-1] if stopped else new), stopped


def llama_generate(
    llm, ids: list[int], stops: list[str], max_tokens: int = MAX_TOKENS
) -> tuple[list[int], bool]:
    """Greedy tokens from llama.cpp, ending as Ollama does: at an end-of-generation token or
    when the text contains one of the Modelfile's stop strings (which is then cut).
    Also `llmkit eval`'s llama.cpp backend: the served model's answers."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    out: list[int] = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0, reset=True):
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            return out, True
        out.append(token)
        text = llm.detokenize(out, special=True).decode("utf-8", "replace")
        if any(stop in text for stop in stops):
            return out[:-1], True
        if len(out) >= max_tokens:
            return out, False
    return out, False


def _divergence(model, tokenizer, prompt_ids, hf_new, cpp_new, tie: Callable) -> tuple[str, bool]:
    """Where the answers part, and whether HF itself was at a tie there (its best token and the
    one llama.cpp took score within the type's tie tolerance)."""
    k = next((i for i, (a, b) in enumerate(zip(hf_new, cpp_new, strict=False)) if a != b), None)
    if k is None:  # one is a prefix of the other: a stop came earlier on one side
        where = f"one side ended first: transformers {len(hf_new)}, llama.cpp {len(cpp_new)} tokens"
        if len(hf_new) >= len(cpp_new):
            return where, False
        # transformers ended where llama.cpp went on: a tie if its end and llama.cpp's token
        # scored within the tie tolerance there
        k = len(hf_new)
        margin, tied, best = _margin(model, prompt_ids + hf_new, cpp_new[k], tie)
        if cpp_new[k] == best:  # llama.cpp took transformers' end token and went on: a stop is wrong
            return where, False
        return f"{where} (logit margin {margin:.4f})", tied
    margin, tied, _ = _margin(model, prompt_ids + hf_new[:k], cpp_new[k], tie)
    shown = tokenizer.decode(hf_new[:k])[-40:]
    where = (
        f"at token {k} after {shown!r}: transformers {tokenizer.decode([hf_new[k]])!r}, "
        f"llama.cpp {tokenizer.decode([cpp_new[k]])!r} (logit margin {margin:.4f})"
    )
    return where, tied


def _margin(model, ids: list[int], token: int, tie: Callable) -> tuple[float, bool, int]:
    """How far `token` scores below transformers' best next token after `ids`, whether that is
    within the tie tolerance, and the best token."""
    import torch

    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].float()
    margin = float(logits.max() - logits[token])
    return margin, margin <= float(tie(logits.numpy())), int(logits.argmax())
