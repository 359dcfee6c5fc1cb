"""HF chat template (Jinja) → Ollama Go template: derived by rendering, then proven equal.

Ollama servers before 0.30 need a Go TEMPLATE and `stop` parameters; without them a model
babbles or never stops. Newer servers render the GGUF's own Jinja template when the model has
no TEMPLATE (see export's `--template native`). For the Go form we never guess from a model
name or a fixed catalogue:

1. derive: render the HF template on probe conversations whose contents are unique markers and
   read off the text between the markers: what precedes the first user turn (BOS, default
   system prompt, first user prefix), where the system prompt goes (its own turn or merged
   into the first user turn: both are "the text around it before the first user content"),
   what separates user → assistant and assistant → user, and what follows the last user turn
   (the generation prompt);
2. emit a Go template in Ollama's messages form built from those texts;
3. prove: render a second, different set of conversations (more turns, multi-line content,
   special characters, an empty system prompt) with the HF template and with the Go template;
   the Go template is used only if every one is byte-identical, else the export is refused
   with the first difference.

The proof's Go side is pluggable: tests use the real Go toolchain (tests/gorender); at export
time the Python evaluator in gotemplate.py runs it. Derived templates use only the constructs
that evaluator implements, and the test suite proves it agrees with Go on them.

(Over 400 lines on purpose: derive, emit and prove are one algorithm sharing its probe markers
and parts; split apart, each piece would need the others' internals.)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import ExportError
from llmkit.exporter.gotemplate import GoTemplateError, render

# A model with no chat template (and none set by the recipe) is a completion model, in
# `llmkit chat` and in Ollama alike: the prompt is continued as plain text until EOS.
COMPLETION_GO = "{{ .Prompt }}"

# Marker contents: plain words, so templates that inspect content behave as for real text.
_U = ["uqzxone", "uqzxtwo", "uqzxthree"]
_A = ["aqzxone", "aqzxtwo"]
_S = "sqzxsys"

# Conversations the Go template must render exactly like the HF template (different from the
# derivation probes: more turns, multi-line content, special characters, an empty system).
PROOF: list[list[dict]] = [
    [{"role": "user", "content": "Hello, world!"}],
    [
        {"role": "user", "content": "Line one\nLine two"},
        {"role": "assistant", "content": "Reply one.\nReply two."},
        {"role": "user", "content": 'Ünïcödé 🚀 <b>tags</b> & "quotes" {{ .Braces }} {% raw %} \\n'},
    ],
    [
        {"role": "system", "content": "You are terse.\nVery terse."},
        {"role": "user", "content": "One"},
        {"role": "assistant", "content": "1"},
        {"role": "user", "content": "Two"},
        {"role": "assistant", "content": "2"},
        {"role": "user", "content": "Three?"},
    ],
    [{"role": "system", "content": ""}, {"role": "user", "content": "Empty system?"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "6"},
        {"role": "user", "content": "Thanks!\n\nBye."},
    ],
]

# jobs → outputs (a str, or an Exception for a template that fails): the Go side of a proof.
RenderMany = Callable[[list[dict]], list]


def python_render_many(jobs: list[dict]) -> list:
    """The export-time renderer: llmkit's evaluator of the Go subset (gotemplate.py)."""
    out: list = []
    for job in jobs:
        try:
            out.append(render(job["template"], job["messages"], job.get("system") or None))
        except GoTemplateError as exc:
            out.append(exc)
    return out


@dataclass
class ChatTemplate:
    family: str  # derived | completion | custom | native | ollama-base
    go: str | None  # None: only the model's own Jinja (Ollama >= 0.30) can render it
    stops: list[str]
    jinja: str | None  # written into the GGUF (a template the model's own tokenizer lacks)
    proven: bool = True
    notes: list[str] = field(default_factory=list)
    system: bool = True  # the template renders a system prompt (else: no SYSTEM is promised)
    default_system: str | None = None
    proof_count: int = 0  # conversations proven byte-identical
    refused: str | None = None  # why there is no Go template
    target: str = "go"  # what the Modelfile uses: "go" (every Ollama) or "native" (Ollama >= 0.30)


# ----------------------------------------------------------------------------- HF side


def hf_render(tokenizer, jinja: str, messages: list[dict], *, generation: bool = True) -> str | None:
    """The HF template's text for a conversation (None if the template raises on it)."""
    try:
        return tokenizer.apply_chat_template(
            messages, chat_template=jinja, tokenize=False, add_generation_prompt=generation
        )
    except Exception:  # templates raise on what they do not support ("roles must alternate", …)
        return None


def expected_go_output(hf_text: str, bos: str | None, add_bos: bool) -> str:
    """llama.cpp adds BOS itself when add_bos is set (and strips a rendered one), so the Go
    template must not render it; without add_bos a BOS written by the template stays text."""
    if add_bos and bos and hf_text.startswith(bos):
        return hf_text[len(bos) :]
    return hf_text


# ----------------------------------------------------------------------------- derivation


def _split(text: str, markers: list[str]) -> list[str] | None:
    """Texts between markers that appear once each, in order; None otherwise."""
    parts, pos = [], 0
    for m in markers:
        at = text.find(m, pos)
        if at < 0 or text.count(m) != 1:
            return None
        parts.append(text[pos:at])
        pos = at + len(m)
    parts.append(text[pos:])
    return parts


def _conv(*turns: tuple[str, str]) -> list[dict]:
    return [{"role": r, "content": c} for r, c in turns]


@dataclass
class _Parts:
    first: str  # before the first user content (no system)
    sys_before: str  # before the system content
    sys_after: str  # between the system content and the first user content
    to_assistant: str  # user content → assistant content
    to_user: str  # assistant content → user content
    end: str  # after the last user content (generation prompt)
    system: str  # "render" | "reject" | "ignore"
    empty_system: str | None = None  # before the first user content when the system prompt is ""


def _derive_parts(tokenizer, jinja: str, bos, add_bos) -> _Parts:
    def want(conv):
        text = hf_render(tokenizer, jinja, conv)
        return None if text is None else expected_go_output(text, bos, add_bos)

    one = want(_conv(("user", _U[0])))
    if one is None:
        raise ExportError(
            "the chat template fails on a single user message",
            "write the Ollama Go template yourself and pass it with --template FILE",
        )
    multi = want(
        _conv(("user", _U[0]), ("assistant", _A[0]), ("user", _U[1]), ("assistant", _A[1]), ("user", _U[2]))
    )
    seg = _split(multi or "", [_U[0], _A[0], _U[1], _A[1], _U[2]])
    single = _split(one, [_U[0]])
    if seg is None or single is None:
        what = "a multi-turn conversation" if multi is None else "each message's content exactly once"
        raise ExportError(
            f"the chat template does not render {what} (rendered {(multi or one)[:160]!r})",
            "write the Ollama Go template yourself and pass it with --template FILE",
        )
    first, to_a, to_u, end = seg[0], seg[1], seg[2], seg[5]
    if single[0] != first or seg[3] != to_a or seg[4] != to_u:
        raise ExportError(
            "the chat template formats turns differently depending on their position "
            f"(first turn {first!r}, turns {seg[1:5]!r})",
            "write the Ollama Go template yourself and pass it with --template FILE",
        )
    with_sys = want(_conv(("system", _S), ("user", _U[0])))
    sys_before = sys_after = ""
    if with_sys is None:
        system = "reject"
    elif _S not in with_sys:
        system = "ignore"
    else:
        s = _split(with_sys, [_S, _U[0]])
        if s is None:
            raise ExportError(
                f"the chat template puts the system prompt after the user turn ({with_sys[:160]!r})",
                "write the Ollama Go template yourself and pass it with --template FILE",
            )
        system, sys_before, sys_after = "render", s[0], s[1]
    parts = _Parts(first, sys_before, sys_after, to_a, to_u, end, system)
    if system == "render":  # some templates treat an empty system prompt as none, or drop it
        empty = want(_conv(("system", ""), ("user", _U[0])))
        e = _split(empty or "", [_U[0]])
        if e is not None and e[0] != sys_before + sys_after:
            parts.empty_system = e[0]
    return parts


def _lit(text: str) -> str:
    """Template text as it must appear in Go: verbatim unless it contains action delimiters;
    today's/yesterday's ISO date (a template's strftime_now) become Ollama's date functions."""
    import datetime as dt
    import re

    today = dt.date.today()
    dates = {today.isoformat(): "{{ currentDate }}"}
    dates[(today - dt.timedelta(days=1)).isoformat()] = "{{ yesterdayDate }}"
    out = []
    for piece in re.split(f"({'|'.join(dates)})", text):
        if piece in dates:
            out.append(dates[piece])
        elif "{{" in piece or "}}" in piece:
            out.append("{{ " + json.dumps(piece, ensure_ascii=False) + " }}")
        else:
            out.append(piece)
    return "".join(out)


def go_template(p: _Parts) -> str:
    """Ollama messages-mode template from the derived texts.

    System messages render nothing themselves: a leading one is placed before the first user
    turn (own turn or merged into it, whichever the model's template does); later ones are
    dropped. After the last message, the generation prompt follows a user turn only.
    """
    if p.system == "render":
        sys_branch = f"{_lit(p.sys_before)}{{{{ $.System }}}}{_lit(p.sys_after)}"
        empty = ""
        if p.empty_system is not None:
            empty = f"{{{{ else if and (eq $i 1) (not $.System) }}}}{_lit(p.empty_system)}"
        user_pre = (
            f"{{{{ if eq $i 0 }}}}{_lit(p.first)}{empty}{{{{ else if eq $i 1 }}}}{sys_branch}"
            f"{{{{ else }}}}{_lit(p.to_user)}{{{{ end }}}}"
        )
    else:
        # no system turn: a user at index 1 follows a dropped system message
        user_pre = f"{{{{ if le $i 1 }}}}{_lit(p.first)}{{{{ else }}}}{_lit(p.to_user)}{{{{ end }}}}"
    return (
        "{{- range $i, $m := .Messages }}"
        f'{{{{ if eq .Role "user" }}}}{user_pre}{{{{ .Content }}}}'
        f"{{{{ if eq (len (slice $.Messages $i)) 1 }}}}{_lit(p.end)}{{{{ end }}}}"
        f'{{{{ else if eq .Role "assistant" }}}}{_lit(p.to_assistant)}{{{{ .Content }}}}'
        "{{ end }}{{ end }}"
    )


def _specials(tokenizer) -> list[str]:
    names = list(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            names.append(str(tok))
    return [n for n in dict.fromkeys(names) if n]


def _stops(tokenizer, jinja: str | None, go: str | None = None) -> list[str]:
    """The Modelfile's stops: where llmkit.turns says a turn of this template ends (what
    `llmkit chat` and --verify stop on too); plus, for a user's Go template, its own special
    tokens other than BOS (it may close turns with tokens the model's template does not use)."""
    from llmkit.turns import end_of_turn

    stops = end_of_turn(tokenizer, chat_template=jinja).strings
    if go is not None:
        bos = tokenizer.bos_token
        stops += [s for s in _specials(tokenizer) if s != bos and s in go]
    return list(dict.fromkeys(stops))


def prove(
    go: str,
    tokenizer,
    jinja: str,
    conversations: list[list[dict]],
    *,
    bos,
    add_bos,
    render_many: RenderMany | None = None,
    system_ok: bool = True,
) -> tuple[list[str], int]:
    """(differences, conversations compared) between the Go template in Ollama's messages mode
    and the HF template. A conversation the HF template rejects is not compared, unless it only
    has an unsupported system turn: then Ollama drops the system prompt, like the template would
    have to, and the conversation without it is compared."""
    render_many = render_many or python_render_many
    jobs, wanted = [], []
    for conv in conversations:
        hf = hf_render(tokenizer, jinja, conv)
        if hf is None and not system_ok and conv and conv[0]["role"] == "system":
            hf = hf_render(tokenizer, jinja, conv[1:])
        if hf is None:
            continue
        jobs.append({"template": go, "messages": conv, "system": ""})
        wanted.append((conv, expected_go_output(hf, bos, add_bos)))
    diffs = []
    for (conv, want), got in zip(wanted, render_many(jobs) if jobs else [], strict=True):
        if isinstance(got, Exception):
            return [f"Go template error: {got}"], len(wanted)
        if got != want:
            diffs.append(first_difference(conv, want, got))
    if len(wanted) < 2:
        diffs.append("the HF template renders fewer than two proof conversations")
    return diffs, len(wanted)


def first_difference(conv: list[dict], want: str, got: str) -> str:
    at = next(
        (i for i, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got))
    )
    lo = max(0, at - 40)
    return (
        f"conversation {[m['role'] for m in conv]}: at character {at} the chat template renders "
        f"{want[lo : at + 40]!r}, the Go template {got[lo : at + 40]!r}"
    )


def derive(
    tokenizer,
    jinja: str,
    *,
    bos: str | None,
    add_bos: bool,
    eos: str | None,
    render_many: RenderMany | None = None,
    conversations: list[list[dict]] | None = None,
) -> ChatTemplate:
    """Derive an Ollama Go template from `jinja` and prove it; ExportError if it cannot be proven."""
    p = _derive_parts(tokenizer, jinja, bos, add_bos)
    _refuse_dates(jinja, p)
    go = go_template(p)
    diffs, count = prove(
        go,
        tokenizer,
        jinja,
        conversations or PROOF,
        bos=bos,
        add_bos=add_bos,
        render_many=render_many,
        system_ok=p.system == "render",
    )
    if diffs:
        raise ExportError(
            f"the Ollama Go template derived from the chat template is not exact: {diffs[0]}",
            "on Ollama >= 0.30 use --template native (the model's own template); otherwise write "
            "the Go template yourself and pass it with --template FILE",
        )
    chat = ChatTemplate(_family(p), go, _stops(tokenizer, jinja), None, proof_count=count)
    chat.system = p.system == "render"
    if p.system == "render":
        default = _default_system(p)
        if default:
            chat.default_system = default
            chat.notes.append(f"the chat template has a default system prompt: {default[:80]!r}")
    else:
        chat.notes.append(
            "the chat template "
            + ("rejects" if p.system == "reject" else "ignores")
            + " system messages: the Go template drops them and no SYSTEM prompt is written"
        )
    chat.notes += _caveats(tokenizer, jinja, bos, add_bos)
    return chat


def _family(p: _Parts) -> str:
    """A name for the derived format, for messages only (the template itself is derived)."""
    marks = {
        "<|im_start|>": "chatml",
        "<|start_header_id|>": "llama3",
        "<start_of_turn>": "gemma",
        "[INST]": "mistral",
        "<|user|>": "phi3",
        "### Instruction": "alpaca",
    }
    return next((name for mark, name in marks.items() if mark in p.to_user), "derived")


def _refuse_dates(jinja: str, p: _Parts) -> None:
    """A template that writes today's date would be frozen at export time in a Go template."""
    import datetime as dt

    if "strftime_now" not in jinja and "now(" not in jinja:
        return
    today = dt.date.today()
    texts = [p.first, p.sys_before, p.sys_after, p.to_user, p.to_assistant, p.end, p.empty_system or ""]
    # ISO dates map onto Ollama's currentDate/yesterdayDate (see _lit); other formats cannot
    stamps = {today.strftime(f) for f in ("%d %b %Y", "%d %B %Y", "%B %d, %Y", "%b %d, %Y", "%d/%m/%Y")}
    stamps |= {today.strftime("%B %d, %Y").replace(" 0", " "), today.strftime("%d %B %Y").lstrip("0")}
    if any(s in t for s in stamps for t in texts):
        raise ExportError(
            "the chat template writes today's date (strftime_now), which a Go template would freeze "
            "at export time",
            "on Ollama >= 0.30 use --template native (the model's own template); otherwise write "
            "the Go template yourself and pass it with --template FILE",
        )


def _default_system(p: _Parts) -> str | None:
    """The text a template puts where the system prompt goes when there is none."""
    before, after = p.sys_before, p.sys_after
    if (
        p.first.startswith(before)
        and p.first.endswith(after)
        and len(p.first) > len(before) + len(after)
        and (before or after)
    ):
        return p.first[len(before) : len(p.first) - len(after)]
    return None


def _caveats(tokenizer, jinja: str, bos, add_bos) -> list[str]:
    notes = []
    spaced = hf_render(tokenizer, jinja, _conv(("user", f"  {_U[0]}  ")))
    if spaced is not None and f"  {_U[0]}  " not in spaced:
        notes.append(
            "the chat template trims message content; Go templates cannot, so leading/trailing "
            "whitespace in a message is kept by Ollama"
        )
    if "tool" in jinja:
        notes.append(
            "tool calls are not mapped to Ollama's .Tools: with the Go template the model has no "
            "tool support (plain chat turns are exact); --template native keeps the model's own"
        )
    if "think" in jinja:
        notes.append("thinking blocks are not mapped: plain chat turns are exact")
    return notes


def choose(tokenizer, jinja: str | None, *, bos, add_bos, eos, render_many=None) -> ChatTemplate:
    """The Go template for the model's chat template; without one, a completion model."""
    if jinja:
        return derive(tokenizer, jinja, bos=bos, add_bos=add_bos, eos=eos, render_many=render_many)
    return completion(tokenizer)


def completion(tokenizer) -> ChatTemplate:
    """A model with no chat template: TEMPLATE {{ .Prompt }}, ended by EOS, no system prompt.
    Never a made-up chat format: a base model never learnt one, so it would not end its turn."""
    note = (
        "the model has no chat template, so it is exported as a completion model: TEMPLATE "
        f"{COMPLETION_GO} (the prompt is continued until end of text), as `llmkit chat` runs it; "
        "to chat, train with model.chat_template set in the recipe"
    )
    return ChatTemplate(
        "completion", COMPLETION_GO, _stops(tokenizer, None), None, notes=[note], system=False
    )


def from_file(
    path: Path, tokenizer, jinja: str | None, *, bos, add_bos, eos, render_many=None
) -> ChatTemplate:
    """A user-supplied Go template (--template FILE): syntax-checked, proven when possible."""
    from llmkit.exporter.gotemplate import check_syntax

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"template file not found: {path}")
    go = path.read_text(encoding="utf-8")
    error = check_syntax(go)
    if error:
        raise ExportError(f"{path}: {error}", "fix the Go template syntax (Go text/template)")
    notes, proven, count = [], False, 0
    if jinja:
        diffs, count = prove(go, tokenizer, jinja, PROOF, bos=bos, add_bos=add_bos, render_many=render_many)
        proven = not diffs
        if diffs:
            notes.append(f"could not prove {path.name} equal to the model's chat template: {diffs[0][:300]}")
    shows = _renders_system(go)
    return ChatTemplate(
        "custom",
        go,
        _stops(tokenizer, jinja, go),
        None,
        proven=proven,
        notes=notes,
        system=shows,
        proof_count=count,
    )


def _renders_system(go: str) -> bool:
    try:
        return "SYSTEM-PROBE" in render(go, [{"role": "user", "content": "x"}], system="SYSTEM-PROBE")
    except GoTemplateError:
        return True  # a template beyond our evaluator: trust the user's file


def native(tokenizer, jinja: str, *, bos, eos, refused: str | None = None, go: ChatTemplate | None = None):
    """The model's own Jinja template (rendered by Ollama >= 0.30 itself), with stop strings and
    system support read off its renders; `go` is the proven Go form, if there is one."""
    if go is not None:
        return ChatTemplate(
            "native",
            go.go,
            go.stops,
            go.jinja,
            proven=True,
            notes=list(go.notes),
            system=go.system,
            default_system=go.default_system,
            proof_count=go.proof_count,
            target="native",
        )
    stops = _stops(tokenizer, jinja)
    with_sys = hf_render(tokenizer, jinja, _conv(("system", _S), ("user", _U[0])))
    chat = ChatTemplate("native", None, stops, None, proven=True, refused=refused, target="native")
    chat.system = with_sys is not None and _S in with_sys
    if not chat.system:
        chat.notes.append("the chat template does not render system messages: no SYSTEM prompt is written")
    return chat
