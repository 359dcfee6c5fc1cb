"""Tokenizer metadata for GGUF: token list, types, merges, special ids, pre-tokenizer name.

Two tokenizer kinds are supported, read from `tokenizer.json`:
  * byte-level BPE (Llama 3, Qwen2, SmolLM2, GPT-2 style) → `tokenizer.ggml.model = gpt2`
  * SentencePiece-style BPE with byte fallback (Llama 2, TinyLlama, Mistral) → `llama`

`tokenizer.ggml.pre` must be a name llama.cpp knows, or llama.cpp refuses the file (unknown
name) or silently tokenizes differently (missing name). We find it the way llama.cpp's
converter does (hash of the token ids of a fixed text), then the way Ollama's converter does
(hash of the Split regexes), then from the pre-tokenizer's structure (each step translated to
the regexes llama.cpp runs, compared with the regex lists llama.cpp implements). Whatever the
source, `tokprobe.prove` then tokenizes a probe corpus in llama.cpp and in transformers and
refuses the vocabulary unless every id matches.

Over 400 lines on purpose: both tokenizer kinds and the three ways of naming the pre-tokenizer are
one decision, read top to bottom; splitting them would scatter the fallback order.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import ExportError
from llmkit.exporter import tokprobe
from llmkit.turns import adds_bos, end_of_turn, template_of

# The text llama.cpp's converter encodes to fingerprint a BPE pre-tokenizer (test data from
# llama.cpp's convert_hf_to_gguf_update.py; the hash is over Python's repr of the id list).
CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) "
    "✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ "
    "------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, "
    "'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# chkhsh → llama.cpp pre-tokenizer name, for the model families we export (llama.cpp's table).
CHKHSH = {
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
    "c136ed14d01c2745d4f60a9596ae66800e2b61fa45643e72436041855ad4089d": "smaug-bpe",
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",
    "b3f499bb4255f8ca19fccd664443283318f2fd2414d5e0b040fbdd0cc195d6c5": "deepseek-r1-qwen",
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",
    "049ecf7629871e3041641907f3de7c733e4dbfdc736f57d882ba0b0845599754": "deepseek-llm",
    "347715f544604f9118bb75ed199f68779f423cabb20db6de6f31b908d04d7821": "deepseek-coder",
    "9d032fcbd5501f4a38150912590928bfb36091efb5df11b8e2124b0390e3fb1e": "falcon3",
    "63b97e4253352e6f357cc59ea5b583e3a680eaeaf2632188c2b952de2588485e": "tekken",
}

# sha256 of the concatenated Split regexes in tokenizer.json → name (Ollama's converter table).
SPLIT_REGEX_HASH = {
    "d98f9631be1e9607a9848c26c1f9eac1aa9fc21ac6ba82a2fc0741af9780a48f": "llama-bpe",
    "1ff7f41064896984db5d1bb6ff64fa4bc29007d08c1b439e505b7392777a319e": "qwen2",
    "03df5c5863ad70781dcfdef491ead25140f895fe8010964be0daefe27be32b02": "deepseek-llm",
    "21cde974d587f0d54dc8d56b183cc1e6239600172035c68fbd6d4b9f8da0576e": "deepseek-coder",
}

# The regexes llama.cpp runs for a pre-tokenizer name (src/llama-vocab.cpp), spelled as they
# appear in tokenizer.json; where llama.cpp rewrote a regex for its engine, its comment gives
# the tokenizer.json original, which is what we list. `ByteLevel(use_regex=True)` stands for
# GPT2_REGEX, `Digits(individual_digits=True)` for \p{N}, `Digits(False)` for \p{N}+.
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)"
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_UPPER_LOWER = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+{c}"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*{c}"
)
LLAMA_CPP_REGEXES: dict[str, tuple[str, ...]] = {
    "gpt-2": (GPT2_REGEX,),
    "smollm": (r"\p{N}", GPT2_REGEX),
    "llama-bpe": (
        _CONTRACTIONS
        + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "qwen2": (
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "qwen35": (
        _CONTRACTIONS
        + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "seed-coder": (
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "ufakzeka": (r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",),
    "minicpm5": (
        r"\p{N}{1,3}",
        _CONTRACTIONS
        + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "exaone-moe": (
        _CONTRACTIONS
        + r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?"
        r"|\s*[\r\n]|\s+(?!\S)|\s+",
    ),
    "jais-2": (
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
        r"|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)"
        r"|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}",
    ),
    "tekken": (
        _UPPER_LOWER.replace("{c}", "") + r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "gpt-4o": (
        _UPPER_LOWER.replace("{c}", _CONTRACTIONS + "?")
        + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "tiny_aya": (
        r"\d{1,3}(?=(?:\d{3})*\b)",
        _UPPER_LOWER.replace("{c}", _CONTRACTIONS + "?")
        + r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
    "deepseek-v3": (
        r"\p{N}{1,3}",
        "[一-龥぀-ゟ゠-ヿ]+",
        r"""[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"""
        r"| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    ),
}

# Token types (gguf.TokenType values).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class Vocab:
    model: str  # "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str | None
    tokens: list[str]
    types: list[int]
    merges: list[str] = field(default_factory=list)
    scores: list[float] | None = None
    special: dict[str, int] = field(default_factory=dict)  # bos, eos, eot, pad, unk → id
    add_bos: bool = False
    add_eos: bool = False
    chat_template: str | None = None
    # SentencePiece only: llama.cpp prepends "▁" unless told not to (Gemma does not prepend).
    add_space_prefix: bool | None = None

    def add_to(self, writer) -> None:
        writer.add_tokenizer_model(self.model)
        if self.pre:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges:
            writer.add_token_merges(self.merges)
        adders = {
            "bos": writer.add_bos_token_id,
            "eos": writer.add_eos_token_id,
            "eot": writer.add_eot_token_id,
            "pad": writer.add_pad_token_id,
            "unk": writer.add_unk_token_id,
        }
        for kind, token_id in self.special.items():
            adders[kind](int(token_id))
        writer.add_add_bos_token(self.add_bos)
        writer.add_add_eos_token(self.add_eos)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template:
            writer.add_chat_template(self.chat_template)


def has_tokenizer(model_dir: Path) -> bool:
    return (Path(model_dir) / "tokenizer.json").is_file()


def load_vocab(model_dir: Path, n_vocab: int, *, chat_template: str | None = None, tokenizer=None) -> Vocab:
    """Read the tokenizer of a HF model dir; pad the token list to the `n_vocab` embedding rows.
    `tokenizer`: the one the caller already loaded from `model_dir` (loaded here if None)."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    tj_path = model_dir / "tokenizer.json"
    if not tj_path.is_file():
        raise ExportError(
            f"{model_dir} has no tokenizer.json (a fast tokenizer is needed to write GGUF)",
            "copy the tokenizer files of the base model into this directory, or re-save it with "
            "AutoTokenizer.from_pretrained(...).save_pretrained(dir)",
        )
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    tok = tokenizer if tokenizer is not None else AutoTokenizer.from_pretrained(model_dir)
    kind = tokenizer_kind(tj, model_dir)
    tokens, types, scores = _tokens(tj, tok, n_vocab, kind)
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"].get("merges", [])]
    template = chat_template or chat_template_of(tok)
    pre, how = pre_tokenizer_name(tj, tok, model_dir) if kind == "bpe" else ("default", "SentencePiece")
    vocab = Vocab(
        model="gpt2" if kind == "bpe" else "llama",
        pre=pre,
        tokens=tokens,
        types=types,
        merges=merges,
        scores=scores,
        chat_template=template,
    )
    vocab.special = _special_ids(tok, model_dir, template)
    probe = tok("A").input_ids
    vocab.add_bos = adds_bos(tok)
    vocab.add_eos = "eos" in vocab.special and bool(probe) and probe[-1] == vocab.special["eos"]
    if kind == "spm":
        pieces = tok.convert_ids_to_tokens(tok("a", add_special_tokens=False).input_ids)
        vocab.add_space_prefix = bool(pieces) and pieces[0].startswith("\u2581")
    # A hash match is llama.cpp's own evidence; a structural match is only a guess until
    # llama.cpp has tokenized the probe corpus like transformers does.
    if tokprobe.llama_cpp_available():
        tokprobe.prove(vocab, tok, model_dir, how=how)
    elif how == "structure":
        raise ExportError(
            f"{model_dir}: pre-tokenizer '{pre}' was derived from the tokenizer's structure and must be proven "
            "in llama.cpp, but llama-cpp-python is not installed",
            "install it: tools/install-llama-cpp.sh .venv/bin/python",
        )
    return vocab


def tokenizer_kind(tj: dict, where: Path) -> str:
    model = tj.get("model", {})
    text = json.dumps([tj.get("normalizer"), tj.get("pre_tokenizer"), tj.get("decoder")], ensure_ascii=False)
    if model.get("type") == "BPE" and '"ByteLevel"' in text:
        return "bpe"
    if model.get("type") == "BPE" and model.get("byte_fallback") and "\u2581" in text:
        return "spm"
    raise ExportError(
        f"{where}: unsupported tokenizer ({model.get('type')} model); GGUF export supports byte-level BPE "
        "(Llama 3, Qwen2, SmolLM) and SentencePiece BPE with byte fallback (Llama 2, Mistral)",
    )


def _tokens(tj: dict, tok, n_vocab: int, kind: str) -> tuple[list[str], list[int], list[float] | None]:
    vocab: dict[str, int] = dict(tj["model"]["vocab"])
    added = {a["id"]: a for a in tj.get("added_tokens", [])}
    for a in added.values():
        vocab[a["content"]] = a["id"]
    if max(vocab.values()) >= n_vocab:
        raise ExportError(
            f"the tokenizer has {max(vocab.values()) + 1} tokens but the model has only {n_vocab} embedding rows",
            "resize the embeddings (model.resize_token_embeddings(len(tokenizer))) before exporting",
        )
    by_id = {i: t for t, i in vocab.items()}
    tokens, types, scores = [], [], []
    for i in range(n_vocab):
        text = by_id.get(i)
        if text is None:  # rows beyond the vocabulary: padding, never produced
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            scores.append(-1000.0)
        elif kind == "spm" and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", text):  # byte-fallback pieces
            tokens.append(text)
            types.append(BYTE)
            scores.append(0.0)
        elif i in added:
            a = added[i]
            special = a.get("special") or _looks_special(text)
            if not special and kind == "spm":
                text = text.replace("\u2581", " ")
            tokens.append(text)
            types.append(CONTROL if special else USER_DEFINED)
            scores.append(0.0)
        else:
            tokens.append(text)
            types.append(NORMAL)
            # llama.cpp's SentencePiece tokenizer merges the pair whose result scores highest;
            # BPE vocabularies are numbered in merge order, so -id ranks like the merge list.
            scores.append(-float(i))
    unk = tj["model"].get("unk_token")
    if unk is not None and unk in vocab:
        types[vocab[unk]] = UNKNOWN
    return tokens, types, scores if kind == "spm" else None


def _looks_special(text: str) -> bool:
    return (
        (text.startswith("<|") and text.endswith("|>"))
        or text in ("<pad>", "<mask>")
        or (text.startswith("<unused") and text.endswith(">"))
    )


chat_template_of = template_of  # the name export's callers know


def _special_ids(tok, model_dir: Path, template: str | None) -> dict[str, int]:
    ids: dict[str, int] = {}
    for kind in ("bos", "eos", "pad", "unk"):
        value = getattr(tok, f"{kind}_token_id", None)
        if isinstance(value, int):
            ids[kind] = value
    config = _read_json(model_dir / "config.json")
    for kind in ("bos", "eos", "pad"):
        value = config.get(f"{kind}_token_id")
        if kind not in ids and isinstance(value, int):
            ids[kind] = value
    # The token the chat template closes answers with, as llmkit.turns decides for every
    # generation path: llama.cpp ends generation on eot, so the answer ends, not the text.
    eot = end_of_turn(tok, model_dir, template).turn_id if template else None
    if eot is not None:
        ids["eot"] = eot
    return ids


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# ----------------------------------------------------------------------------- pre-tokenizer


def chkhsh(tok) -> str:
    """llama.cpp's fingerprint: sha256 of repr(token ids of CHKTXT)."""
    return hashlib.sha256(str(tok.encode(CHKTXT)).encode()).hexdigest()


def split_regex_hash(tj: dict) -> str | None:
    """Ollama's fingerprint: sha256 over the Split regexes of the pre-tokenizer (None if no Split)."""
    pre = tj.get("pre_tokenizer") or {}
    items = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    regexes = [
        p["pattern"]["Regex"] for p in items if p.get("type") == "Split" and "Regex" in p.get("pattern", {})
    ]
    return hashlib.sha256("".join(regexes).encode()).hexdigest() if regexes else None


def pre_tokenizer_name(tj: dict, tok, where: Path) -> tuple[str, str]:
    """The `tokenizer.ggml.pre` name and how it was found: "chkhsh", "split-regex hash", "structure"."""
    h = chkhsh(tok)
    if h in CHKHSH:
        return CHKHSH[h], "chkhsh"
    rh = split_regex_hash(tj)
    if rh in SPLIT_REGEX_HASH:
        return SPLIT_REGEX_HASH[rh], "split-regex hash"
    # The pipeline transformers actually runs (under transformers 5 it can differ from the file).
    backend = getattr(tok, "backend_tokenizer", None)
    live = json.loads(backend.to_str()) if backend is not None else tj
    name = derive_pre(live)
    if name is not None:
        return name, "structure"
    raise ExportError(
        f"{where}: BPE pre-tokenizer not recognized (llama.cpp chkhsh {h}, split-regex hash {rh}, "
        f"structure {describe_pre(live)}); a GGUF written with a guessed name would tokenize differently "
        "in llama.cpp/Ollama",
        "llama.cpp implements these pre-tokenizers: "
        f"{', '.join(sorted(set(CHKHSH.values()) | set(SPLIT_REGEX_HASH.values()) | set(LLAMA_CPP_REGEXES)))}; "
        "keep the base model's tokenizer, or train yours with one of their split rules",
    )


def _normalize_regex(regex: str) -> str:
    # llama.cpp's engine has no (?i:...): it spells the contractions out; accept either spelling,
    # and raw CR/LF characters as well as their escapes.
    regex = regex.replace("\r", "\\r").replace("\n", "\\n")
    return regex.replace(_CONTRACTIONS, "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])")


_REGEXES_TO_PRE = {tuple(_normalize_regex(r) for r in rs): name for name, rs in LLAMA_CPP_REGEXES.items()}


def pre_steps(tj: dict) -> list[str] | None:
    """The pre-tokenizer as the regex list llama.cpp would run, or None if it is not expressible.

    llama.cpp splits with its regexes, then byte-encodes each piece (GPT-2's byte-to-unicode
    map) and applies the merges: so the pipeline must be Split/Digits steps ending in a ByteLevel
    without an added prefix space (llama.cpp never adds one for BPE).
    """
    pre = tj.get("pre_tokenizer") or {}
    items = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    if not items or items[-1].get("type") != "ByteLevel" or items[-1].get("add_prefix_space"):
        return None
    steps: list[str] = []
    for p in items[:-1]:
        kind = p.get("type")
        if (
            kind == "Split"
            and "Regex" in p.get("pattern", {})
            and p.get("behavior") == "Isolated"
            and not p.get("invert")
        ):
            steps.append(p["pattern"]["Regex"])
        elif kind == "Digits":
            steps.append(r"\p{N}" if p.get("individual_digits") else r"\p{N}+")
        else:
            return None
    if items[-1].get("use_regex", True):
        steps.append(GPT2_REGEX)
    return steps


def derive_pre(tj: dict) -> str | None:
    """The llama.cpp pre-tokenizer whose regexes equal this pipeline's, or None."""
    steps = pre_steps(tj)
    return None if steps is None else _REGEXES_TO_PRE.get(tuple(_normalize_regex(r) for r in steps))


def describe_pre(tj: dict) -> str:
    pre = tj.get("pre_tokenizer") or {}
    items = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    return "+".join(str(p.get("type")) for p in items) or "none"
