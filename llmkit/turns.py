"""Which tokens end a model's turn, and whether its tokenizer adds BOS: decided once, here.

Every generation path asks `end_of_turn`: `llmkit chat`, export's --verify (the transformers
side), the Modelfile's `stop` parameters, the GGUF's eot token and GRPO sampling. Asking
anything else is how they came to disagree: a base Gemma given a chat template by its recipe
closes turns with `<end_of_turn>`, which is not its tokenizer's EOS, so a path that stopped
at EOS alone never ended the turn while the served model did.

The answer is read off the chat template actually used, by rendering a two-turn conversation:
the special tokens between the first answer and the next user message end a turn (the
template's own end token first, then the next turn's opener: a model that skips the end token
still stops where a new turn would start). EOS and the generation config's EOS ids always end
one too. A template whose turns are closed by plain text (Alpaca's "### Instruction:") also
yields that line as a text stop. No template at all: a completion model, ended by EOS alone.

No torch here: light enough for the CLI, export and trainers alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# Marker contents: plain words, unlikely to share a token with template text around them.
_ANSWER = "aqzxturnone"
_NEXT = "uqzxturntwo"
_PROBE = [
    {"role": "user", "content": "uqzxturnzero"},
    {"role": "assistant", "content": _ANSWER},
    {"role": "user", "content": _NEXT},
]


@dataclass(frozen=True)
class TurnEnd:
    ids: tuple[int, ...]  # every token id that ends a turn; the template's end token first
    tokens: tuple[str, ...]  # the text of each id, same order
    texts: tuple[str, ...] = ()  # plain-text stops (templates whose turns end in text, not a token)
    turn_token: str | None = None  # the special token the template closes an answer with
    completion: bool = False  # no chat template: a completion model, ended by EOS only

    @property
    def strings(self) -> list[str]:
        """Stop strings for servers that stop on text (Ollama's `stop`, llama.cpp)."""
        return list(dict.fromkeys([*self.tokens, *self.texts]))

    @property
    def turn_id(self) -> int | None:
        """The id of `turn_token` (a GGUF's eot), None when the template has none."""
        return self.ids[self.tokens.index(self.turn_token)] if self.turn_token in self.tokens else None


def template_of(tokenizer) -> str | None:
    """The tokenizer's chat template (the default one where it has several), None if it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        template = template.get("default") or next(iter(template.values()), None)
    return template or None


def end_of_turn(tokenizer, generation_config=None, chat_template: str | None = None) -> TurnEnd:
    """The tokens (and text stops) that end a turn of this model.

    `generation_config`: a transformers GenerationConfig (e.g. `model.generation_config`), a
    dict, or a model directory (its generation_config.json / config.json); None: the directory
    the tokenizer was loaded from, when it is one. `chat_template`: the Jinja template the
    prompts are rendered with; None: the tokenizer's own. Neither → a completion model.
    """
    template = chat_template or template_of(tokenizer)
    specials = _special_ids(tokenizer)
    bos = getattr(tokenizer, "bos_token_id", None)
    eos = getattr(tokenizer, "eos_token_id", None)
    turn_ids: list[int] = []
    texts: list[str] = []
    if template:
        turn_ids, texts = _from_template(tokenizer, template, specials - {bos}, eos)
    config_eos = _config_eos(generation_config if generation_config is not None else _dir_of(tokenizer))
    ids = [i for i in dict.fromkeys([*turn_ids, eos, *config_eos]) if isinstance(i, int)]
    tokens = tuple(str(tokenizer.convert_ids_to_tokens(i)) for i in ids)
    return TurnEnd(
        ids=tuple(ids),
        tokens=tokens,
        texts=tuple(texts),
        turn_token=tokens[0] if turn_ids else None,
        completion=not template,
    )


def adds_bos(tokenizer) -> bool:
    """Whether encoding text puts the BOS token first (llama.cpp then adds it itself)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None or not getattr(tokenizer, "bos_token", None):
        return False
    probe = tokenizer("A").input_ids
    return bool(probe) and probe[0] == bos


def _from_template(tokenizer, template: str, specials: set[int], eos) -> tuple[list[int], list[str]]:
    """Special ids between the first answer and the next user message, and a text stop when
    none but EOS is there (the turn is closed by plain text)."""
    try:
        text = tokenizer.apply_chat_template(_PROBE, chat_template=template, tokenize=False)
    except Exception:  # a template that rejects the probe: nothing to read, EOS still ends a turn
        return [], []
    start, end = text.find(_ANSWER), text.find(_NEXT)
    if start < 0 or end < start:
        return [], []
    between = text[start + len(_ANSWER) : end]
    ids = tokenizer(between, add_special_tokens=False).input_ids
    found = [i for i in ids if i in specials]
    texts = []
    if not [i for i in found if i != eos]:  # e.g. Alpaca: "<eos>\n\n### Instruction:\n"
        plain = between
        for i in found:
            plain = plain.replace(str(tokenizer.convert_ids_to_tokens(i)), "\n")
        line = next((ln.strip() for ln in plain.splitlines() if ln.strip()), "")
        if len(line) >= 2:
            texts.append(line)
    return list(dict.fromkeys(found)), texts


def _special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", None) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def _dir_of(tokenizer) -> Path | None:
    path = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    return path if str(path) and path.is_dir() else None


def _config_eos(config) -> list[int]:
    if config is None:
        return []
    if isinstance(config, (str, Path)):
        for name in ("generation_config.json", "config.json"):
            f = Path(config) / name
            if f.is_file():
                value = json.loads(f.read_text(encoding="utf-8")).get("eos_token_id")
                if value is not None:
                    return _as_list(value)
        return []
    value = config.get("eos_token_id") if isinstance(config, dict) else getattr(config, "eos_token_id", None)
    return _as_list(value)


def _as_list(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
