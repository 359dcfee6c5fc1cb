"""HF chat template (Jinja) → Ollama Go template, chosen by rendering, then proven equal.

Ollama needs a Go TEMPLATE and `stop` parameters; without them a fine-tuned model babbles or
never stops. We never guess from the model name: the HF template is rendered on probe
conversations and every family in a small catalogue is rendered (by our Go evaluator, the
way Ollama renders in messages mode) on the same conversations; a family is chosen only if
every output is identical, character for character.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import ExportError
from llmkit.export.gotemplate import GoTemplateError, render

# Conversations the HF and Go templates must render identically (generation prompt on).
PROBES: list[list[dict]] = [
    [{"role": "user", "content": "Hi there!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a color."}],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
    ],
    [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Bonjour"},
        {"role": "user", "content": "Thanks!\nSee you."},
    ],
]

CHATML = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
CHATML_DEFAULT_SYSTEM = "{{- if not .System }}<|im_start|>system\n%s<|im_end|>\n{{ end }}" + CHATML
LLAMA3 = (
    "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n"
)
MISTRAL = (
    '{{- range .Messages }}{{ if eq .Role "user" }}[INST] {{ .Content }} [/INST]'
    '{{ else if eq .Role "assistant" }}%s{{ .Content }}%s{{ end }}{{ end }}'
)
GEMMA = (
    '{{- range $i, $m := .Messages }}{{ if ne .Role "system" }}<start_of_turn>'
    '{{ if eq .Role "assistant" }}model{{ else }}{{ .Role }}{{ end }}\n'
    '{{ if and $.System (eq .Role "user") (le $i 1) }}{{ $.System }}\n\n{{ end }}'
    "{{ .Content }}<end_of_turn>\n{{ end }}{{ end }}<start_of_turn>model\n"
)
PHI3 = "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"
ALPACA = (
    "{{- if .System }}{{ .System }}\n\n{{ end }}"
    '{{- range .Messages }}{{ if eq .Role "user" }}### Instruction:\n{{ .Content }}\n\n### Response:\n'
    '{{ else if eq .Role "assistant" }}{{ .Content }}%s\n\n{{ end }}{{ end }}'
)
# The Jinja twin of ALPACA, embedded in the GGUF and tokenizer of models that had no template.
ALPACA_JINJA = (
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{% for m in messages %}{% if m['role'] == 'user' %}"
    "{{ '### Instruction:\\n' + m['content'] + '\\n\\n### Response:\\n' }}"
    "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token + '\\n\\n' }}{% endif %}{% endfor %}"
)


@dataclass
class Family:
    name: str
    stops: list[str]
    candidates: Callable[[dict], list[str]]  # context → Go templates to try


@dataclass
class ChatTemplate:
    family: str
    go: str
    stops: list[str]
    jinja: str | None
    proven: bool = True
    notes: list[str] = field(default_factory=list)


def _chatml(ctx: dict) -> list[str]:
    out = [CHATML]
    first = ctx["renders"][0]
    if first is not None:
        m = re.match(r"<\|im_start\|>system\n(.*?)<\|im_end\|>\n<\|im_start\|>user\n", first, re.S)
        if m and "{{" not in m.group(1):
            out.append(CHATML_DEFAULT_SYSTEM % m.group(1))
    return out


def _mistral(ctx: dict) -> list[str]:
    eos = ctx.get("eos") or "</s>"
    return [MISTRAL % (sep, eos) for sep in ("", " ")]


FAMILIES = [
    Family("chatml", ["<|im_start|>", "<|im_end|>"], _chatml),
    Family("llama3", ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], lambda ctx: [LLAMA3]),
    Family("mistral", ["[INST]", "[/INST]"], _mistral),
    Family("gemma", ["<start_of_turn>", "<end_of_turn>"], lambda ctx: [GEMMA]),
    Family("phi3", ["<|end|>", "<|system|>", "<|user|>", "<|assistant|>"], lambda ctx: [PHI3]),
    Family("alpaca", ["### Instruction:", "### Response:"], lambda ctx: [ALPACA % (ctx.get("eos") or "")]),
]


# ----------------------------------------------------------------------------- rendering


def hf_render(tokenizer, jinja: str, messages: list[dict]) -> str | None:
    """The HF template's text for a conversation (None if the template rejects it, e.g. a system turn)."""
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=jinja, tokenize=False, add_generation_prompt=True
        )
    except Exception:  # templates raise on roles they do not support
        return None


def expected_go_output(hf_text: str, bos: str | None, add_bos: bool) -> str:
    """llama.cpp adds BOS itself when add_bos is set, so the Go template must not render it."""
    if add_bos and bos and hf_text.startswith(bos):
        return hf_text[len(bos) :]
    return hf_text


def differences(
    go: str, tokenizer, jinja: str, conversations: list[list[dict]], *, bos, add_bos
) -> list[str]:
    """Conversations on which the Go template (Ollama messages mode) differs from the HF template."""
    diffs, compared = [], 0
    for conv in conversations:
        hf = hf_render(tokenizer, jinja, conv)
        if hf is None:
            continue
        want = expected_go_output(hf, bos, add_bos)
        try:
            got = render(go, conv)
        except GoTemplateError as exc:
            return [f"Go template error: {exc}"]
        compared += 1
        if got != want:
            diffs.append(f"{[m['role'] for m in conv]}: HF {want!r} vs Go {got!r}")
    if compared < 2:
        diffs.append("the HF template renders fewer than two probe conversations")
    return diffs


def choose(tokenizer, jinja: str | None, *, bos: str | None, add_bos: bool, eos: str | None) -> ChatTemplate:
    """Pick the catalogue family whose Go template renders exactly like `jinja` on every probe."""
    ctx = {"eos": eos}
    if not jinja:
        jinja = ALPACA_JINJA
        ctx["renders"] = [None]
        go = ALPACA % (eos or "")
        diffs = differences(go, tokenizer, jinja, PROBES, bos=bos, add_bos=add_bos)
        if diffs:
            raise ExportError(f"the Alpaca fallback template does not render as expected: {diffs[0]}")
        return ChatTemplate(
            "alpaca",
            go,
            _stops(FAMILIES[-1].stops, eos),
            jinja,
            notes=["the model has no chat template: using Alpaca (also written into the GGUF)"],
        )
    ctx["renders"] = [hf_render(tokenizer, jinja, conv) for conv in PROBES]
    if all(r is None for r in ctx["renders"]):
        raise ExportError(
            "the model's chat template fails on every probe conversation", "fix the chat template"
        )
    for family in FAMILIES:
        for go in family.candidates(ctx):
            if not differences(go, tokenizer, jinja, PROBES, bos=bos, add_bos=add_bos):
                return ChatTemplate(family.name, go, _stops(family.stops, eos), None)
    first = next(r for r in ctx["renders"] if r is not None)
    raise ExportError(
        f"the chat template matches none of the known families ({', '.join(f.name for f in FAMILIES)}); "
        f"it renders a user turn as {first[:120]!r}",
        "write the Ollama Go template yourself and pass it with --template FILE",
    )


def from_file(path: Path, tokenizer, jinja: str | None, *, bos, add_bos, eos) -> ChatTemplate:
    """A user-supplied Go template (--template FILE); proven against the HF template when we can."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"template file not found: {path}")
    go = path.read_text(encoding="utf-8")
    notes, proven = [], False
    if jinja:
        try:
            diffs = differences(go, tokenizer, jinja, PROBES, bos=bos, add_bos=add_bos)
        except GoTemplateError as exc:
            diffs = [str(exc)]
        proven = not diffs
        if diffs:
            notes.append(f"could not prove {path.name} equal to the model's chat template: {diffs[0][:200]}")
    stops = [s for f in FAMILIES for s in f.stops if s in go]
    return ChatTemplate("custom", go, _stops(stops, eos), None, proven=proven, notes=notes)


def _stops(stops: list[str], eos: str | None) -> list[str]:
    out = list(stops)
    if eos and eos not in out:
        out.append(eos)
    return out
