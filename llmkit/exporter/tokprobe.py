"""Prove that llama.cpp tokenizes like the model's own tokenizer before a GGUF is written.

The GGUF's tokenizer metadata (token list, types, merges, specials, `tokenizer.ggml.pre`,
add_bos) is written alone to a temporary vocab-only GGUF and loaded in llama.cpp; a probe
corpus (code, whitespace runs, numbers, punctuation runs, emoji with ZWJ sequences, CJK,
Cyrillic, Arabic, Indic/Thai/Khmer, accented Latin, odd-case contractions, CRLF, the model's
added tokens and a rendered chat) is tokenized there and by the tokenizer exactly as training
loads it, with and without the special tokens the tokenizer adds. Any difference is an error
that names the probe and shows both id lists around the first difference.

Probe texts are NFC: llama.cpp applies no normalizer, so a tokenizer whose only normalizer is
NFC (Qwen2) agrees with it on NFC text, which is what people type and what datasets hold.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from llmkit.errors import ExportError

# `vocab` arguments are llmkit.exporter.vocab.Vocab objects; vocab.py imports this module, so the
# type is not imported here (not even for type checking: it would be an import cycle).
Vocab = Any

BYTE = 6  # gguf.TokenType.BYTE
INSTALL_HINT = "install it: tools/install-llama-cpp.sh .venv/bin/python"

# (label, text). Each probe aims at a place where pre-tokenizers disagree.
PROBES: tuple[tuple[str, str], ...] = (
    (
        "code",
        'def parse(line: str) -> dict:\n\tif not line:\n\t\treturn {}  # empty\n    items = {"a": [1, 2, 3]}\n'
        '        return items["a"][0] ** 2 != -1 and x<=y>>2\n\n\n}\n',
    ),
    ("spaces", "a  b   c    d     e          f\t\tg \t h\n \n\n  \n   \n    end     "),
    (
        "numbers",
        "0 7 42 123 1234 12345 123456 1234567 12345678 98765432109876543210 3.14159 3..3 1,000,000 "
        "2024-06-01 +49(0)30 1e-9 0x1F $19.99 50% 007",
    ),
    (
        "punctuation",
        "!!! ??? ...... --- ======= *** ((( ))) \"\"\"\" '''''' ``````` ;;; ,,, <<>> ~~~ ||| @# $%^&",
    ),
    ("emoji", "🚀 (normal) 😶\u200d🌫️ ✅ 🦙🦙 👩\u200d💻 👨\u200d👩\u200d👧\u200d👦 🏳️\u200d🌈 👍🏽 ❤️ 🇫🇷🇯🇵"),
    (
        "cjk",
        "我想在apple工作1314151天～ 日本語のテキスト、カタカナとひらがな。 한국어 문장입니다. 中文，标点！",
    ),
    ("cyrillic", "Привет, мир! Съешь же ещё этих мягких французских булок. нещо на Български"),
    ("arabic", "مرحبا بالعالم، كيف حالك؟ السلام عليكم 2024 שלום עולם"),
    ("indic-thai-khmer", "नमस्ते दुनिया, हिन्दी भाषा ภาษาไทยง่ายนิดเดียว កាន់តែពិសេសអាច😁"),
    ("accents", "Café naïve résumé Straße Ærøskøbing Łódź crème brûlée Ελληνικά ÀÉÎÕÜ ñandú Dvořák"),
    (
        "contractions",
        "I'm sure you're RIGHT, it's theirs; We'Ve a'lL 'RE you sure? 'M not sure I'll, 'D you "
        "DON'T can't o'clock rock'n'roll",
    ),
    ("case", "camelCase PascalCase HTTPServer snake_case SCREAMING_CASE iPhone McDonald's XMLHttpRequest"),
    ("leading-trailing", "   leading and trailing whitespace   "),
    ("newlines", "line one\r\nline two\r\n\r\nline three\rfour\n\n\nfive\n\t\n"),
    ("whitespace-only", " \n\t "),
)

CHAT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris. It has 2,102,650 residents 🙂"},
    {"role": "user", "content": "And of Germany?\n  Answer briefly."},
]

MAX_ADDED = 48  # added tokens spliced into probes (Gemma has thousands of <unused…> ones)


@dataclass
class Proof:
    pre: str | None
    how: str
    probes: int  # texts compared, each with and without added special tokens
    seconds: float


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def probe_corpus(tok, vocab: Vocab | None = None) -> list[tuple[str, str]]:
    """The fixed probes plus this tokenizer's added tokens and its rendered chat template."""
    probes = list(PROBES)
    # Byte-fallback pieces (<0x41>) registered as added tokens are BYTE tokens in the GGUF, as in
    # every Llama-2 GGUF: llama.cpp never matches their literal text, which no real text contains.
    byte = {i for i, t in enumerate(vocab.types) if t == BYTE} if vocab is not None else set()
    added = [a.content for i, a in sorted(tok.added_tokens_decoder.items()) if i not in byte]
    template = getattr(tok, "chat_template", None) or ""
    named = {str(t) for t in getattr(tok, "all_special_tokens", [])}
    # Tokens the chat template and the named specials use first: those are what training sees.
    added.sort(key=lambda t: t not in named and t not in str(template))
    for t in added[:MAX_ADDED]:
        probes.append((f"added token {t!r}", f"{t}Hello{t} world {t}\n{t}"))
    if template:
        for chat in (CHAT, CHAT[1:]):  # some templates reject a system turn
            try:
                text = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
            except Exception:
                continue
            probes.append(("chat template", text))
            break
    return probes


def write_vocab_gguf(vocab: Vocab, path: Path, *, name: str = "vocab") -> None:
    """A GGUF holding only the tokenizer: llama.cpp's vocab-only load reads nothing else.

    `general.name` matters: llama.cpp sets strip attributes on special tokens by model name (Phi-3).
    """
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    replace(vocab, chat_template=None).add_to(writer)  # no template: llama-cpp-python would parse it
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


class _LlamaLog:
    """Collect llama.cpp's log lines while it runs, then restore the previous log callback.

    llama.cpp logs warnings even with verbose=False (llama-cpp-python 0.3.36 maps the newer
    ggml levels one off, so WARN passes as ERROR): "n_ctx_train (0)" for a vocab-only file and
    "2 BOS tokens" for probes that start with BOS text. Keep them off the user's terminal, and
    keep them, since a refused load explains itself only there.
    """

    def __enter__(self) -> _LlamaLog:
        import ctypes

        import llama_cpp

        self.lines: list[str] = []

        @llama_cpp.llama_log_callback
        def collect(level, text, user_data):
            self.lines.append(text.decode("utf-8", "replace"))

        self._callback = collect  # llama.cpp holds a raw pointer: keep the object alive
        self._saved, self._saved_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
        llama_cpp.llama_log_get(ctypes.byref(self._saved), ctypes.byref(self._saved_data))
        llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc) -> None:
        import llama_cpp

        llama_cpp.llama_log_set(self._saved, self._saved_data)

    def reason(self) -> str:
        errors = [ln.strip() for ln in self.lines if "error" in ln.lower()]
        return errors[0] if errors else "no reason logged"


def llama_cpp_ids(
    path: Path, where: Path, probes: list[tuple[str, str]]
) -> list[tuple[list[int], list[int]]]:
    """llama.cpp's ids for each probe text, with and without the special tokens it adds itself."""
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise ExportError(f"llama-cpp-python is not usable: {exc}", INSTALL_HINT) from None
    with _LlamaLog() as log:
        try:
            llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
        except Exception:  # llama.cpp refuses the metadata (e.g. an unknown pre-tokenizer name)
            llm = None
        else:
            try:
                ids = [
                    tuple(
                        llm.tokenize(text.encode("utf-8"), add_bos=add, special=True) for add in (True, False)
                    )
                    for _, text in probes
                ]
            finally:
                llm.close()
    if llm is None:
        raise ExportError(
            f"{where}: llama.cpp refuses the tokenizer metadata we would write ({log.reason()})",
            "no GGUF was written; report this tokenizer.json",
        )
    return ids


def prove(vocab: Vocab, tok, where: Path, *, how: str) -> Proof:
    """Raise ExportError unless llama.cpp gives `tok`'s ids on every probe; `how` names the source of `pre`."""
    start = time.perf_counter()
    probes = probe_corpus(tok, vocab)
    with tempfile.TemporaryDirectory(prefix="llmkit-vocab-") as tmp:
        path = Path(tmp) / "vocab.gguf"
        write_vocab_gguf(vocab, path, name=Path(where).name)
        theirs = llama_cpp_ids(path, where, probes)
    for (label, text), got in zip(probes, theirs, strict=True):
        for add_special, got_ids in zip((True, False), got, strict=True):
            want = list(tok(text, add_special_tokens=add_special).input_ids)
            if want != list(got_ids):
                raise _mismatch(vocab, where, how, label, text, add_special, want, list(got_ids))
    return Proof(vocab.pre, how, len(probes), time.perf_counter() - start)


def _mismatch(vocab, where, how, label, text, add_special, want, got) -> ExportError:
    i = next((k for k, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), min(len(want), len(got)))
    mode = "with added special tokens" if add_special else "without added special tokens"
    excerpt = text if len(text) <= 60 else text[:57] + "..."
    pieces = f"{_piece(vocab, want, i)} vs {_piece(vocab, got, i)}"
    message = (
        f"{where}: llama.cpp tokenizes probe '{label}' {excerpt!r} ({mode}) differently from the model's "
        f"tokenizer with pre-tokenizer '{vocab.pre}' (found by {how}); first difference at token {i} "
        f"({pieces}): transformers {_around(want, i)} ({len(want)} ids) vs llama.cpp {_around(got, i)} "
        f"({len(got)} ids)"
    )
    if how == "structure":
        hint = (
            "the tokenizer's split rule looks like llama.cpp's but something else differs (normalizer, added-token "
            "flags, merges); no GGUF was written: export with the base model's tokenizer, or report this tokenizer.json"
        )
    else:
        hint = (
            "the tokenizer matches a known pre-tokenizer but differs elsewhere (normalizer, added tokens, BOS/EOS); "
            "no GGUF was written: export with the base model's tokenizer, or report this tokenizer.json"
        )
    return ExportError(message, hint)


def _piece(vocab, ids: list[int], i: int) -> str:
    if i >= len(ids):
        return "end"
    t = ids[i]
    return repr(vocab.tokens[t]) if 0 <= t < len(vocab.tokens) else f"id {t}"


def _around(ids: list[int], i: int, width: int = 4) -> str:
    lo, hi = max(0, i - width), i + width + 1
    body = ", ".join(str(t) for t in ids[lo:hi])
    return f"[{'…, ' if lo else ''}{body}{', …' if hi < len(ids) else ''}]"
