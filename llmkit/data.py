"""Datasets → training examples (token ids + labels) → micro-batches.

    read_rows      a file, dir or hf:NAME (llmkit.readers, shared with embed) or a Hub dataset → dicts
    detect_format  messages (OpenAI or ShareGPT), alpaca, prompt_completion or text
    tokenize_row   one row → Example(ids, labels); labels are -100 where no loss is taken
    prepare        all of the above for a recipe, with unusable rows counted per reason
    plan_epoch     examples → micro-batches of rows, packed or grouped by length
    collate        rows → tensors (input_ids, position_ids, labels), no padding inside a row

Answers-only loss: a conversation is rendered with the chat template one turn at a time, and
the text each assistant turn adds is the trainable span. Spans are tokenized separately, so
the prompt tokens are exactly those the model sees at inference (the prompt alone).

Packing: several examples share one row; their position ids restart at 0, so transformers
builds a block-diagonal causal mask (sdpa/eager) or uses varlen kernels (flash attention):
examples never attend to each other, and a packed row gives the same loss as separate rows.

Over 400 lines on purpose: reading, tokenizing and batching are one contract (the labels a row gets
decide how it packs and pads); the preference and reward methods reuse it rather than copy it.
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import DataError
from llmkit.readers import FORMATS, HF_PREFIX, as_input, read_records

IGNORE = -100
NEEDS = {
    "messages": ("messages",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
    "text": ("text",),
}
SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
}
ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n### Response:\n"
ALPACA_PROMPT_INPUT = "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"


@dataclass
class Example:
    """Token ids and labels of one training example.

    `parts` lists the lengths of sequences laid end to end in it (a preference pair: chosen,
    then rejected); positions restart at each, so they never attend to each other. `units` is
    what the loss is normalised by: label tokens for SFT, pairs or prompts for the other methods.
    """

    ids: list[int]
    labels: list[int]
    parts: tuple[int, ...] = ()
    unit: int | None = None  # None: the label tokens are the units
    row: dict | None = None  # the source row, where a method reads its fields (GRPO rewards)
    size: int | None = None  # tokens it takes in a pass, when more than its ids (a GRPO prompt's answers)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def n_labels(self) -> int:
        return sum(1 for x in self.labels[1:] if x != IGNORE)

    @property
    def units(self) -> int:
        return self.n_labels if self.unit is None else self.unit

    @property
    def cost(self) -> int:
        return self.size or len(self.ids)

    @property
    def lengths(self) -> tuple[int, ...]:
        return self.parts or (len(self.ids),)


@dataclass
class Dataset:
    train: list[Example]
    eval: list[Example]
    format: str
    rows: int = 0
    dropped: Counter = field(default_factory=Counter)

    def report(self) -> dict:
        return {
            "format": self.format,
            "rows": self.rows,
            "train_examples": len(self.train),
            "eval_examples": len(self.eval),
            "dropped": dict(self.dropped),
            "train_tokens": sum(len(e) for e in self.train),
            "train_label_tokens": sum(e.n_labels for e in self.train),
        }


class Skip(Exception):
    """A row that cannot be used; the message is the reason it is counted under."""


# ----------------------------------------------------------------------------- reading


def read_rows(
    path: str | Path, *, config: str | None = None, split: str = "train", sample_by: str = "line"
) -> list[dict]:
    """Rows of a local dataset (see `llmkit.readers`), or of a Hub dataset when `path` is not local."""
    source = as_input(path)  # the readers' one rule: hf:NAME or a bare org/name is a Hub dataset
    if isinstance(source, Path) and not source.exists():
        raise DataError(
            f"dataset file not found: {source}",
            "check data.path (relative paths resolve against the recipe file)",
        )
    return read_records(source, config=config, split=split, sample_by=sample_by)


def detect_format(rows: list[dict], requested: str, where: str) -> str:
    """The row format; with an explicit format, check that its columns exist at all."""
    if not rows:
        raise DataError(f"{where} is empty (no rows)", "give data with at least one row")
    first = next((r for r in rows if isinstance(r, dict)), {})
    if requested == "auto":
        keys = set(first)
        if keys & {"messages", "conversations"}:
            return "messages"
        for fmt in ("alpaca", "prompt_completion", "text"):
            if set(NEEDS[fmt]) <= keys:
                return fmt
        raise DataError(
            f"{where} row 1: cannot tell the data format from its columns {sorted(keys)}",
            "expected messages, instruction/output, prompt/completion or text columns; or set data.format",
        )
    for column in NEEDS[requested]:
        alias = "conversations" if column == "messages" else None
        if not any(isinstance(r, dict) and (column in r or alias in r) for r in rows):
            raise DataError(
                f"{where} row 1: column '{column}' is missing (format {requested} needs {', '.join(NEEDS[requested])})",
                f"columns found: {', '.join(sorted(first)) or 'none'}; fix the file or set data.format",
            )
    return requested


# ----------------------------------------------------------------------------- rows → examples


def to_messages(row: dict, fmt: str, system: str | None = None) -> list[dict]:
    """A conversational row (messages, ShareGPT or alpaca) as a list of {role, content}."""
    if fmt == "alpaca":
        instruction, answer = _field(row, "instruction"), _field(row, "output")
        extra = str(row.get("input") or "").strip()
        msgs = [
            {"role": "user", "content": f"{instruction}\n\n{extra}" if extra else instruction},
            {"role": "assistant", "content": answer},
        ]
    else:
        raw = row.get("messages", row.get("conversations"))
        if not isinstance(raw, list) or not raw:
            raise Skip("missing 'messages'")
        msgs = []
        for m in raw:
            if not isinstance(m, dict):
                raise Skip("malformed message")
            role = m.get("role", m.get("from"))
            content = m.get("content", m.get("value"))
            if role not in SHAREGPT_ROLES or content is None:
                raise Skip("malformed message")
            msgs.append({"role": SHAREGPT_ROLES[role], "content": str(content)})
    if not any(m["role"] == "assistant" for m in msgs):
        raise Skip("no assistant answer")
    if any(m["role"] == "assistant" and not m["content"].strip() for m in msgs):
        raise Skip("empty answer")
    if system and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system})
    return msgs


def _field(row: dict, name: str) -> str:
    value = row.get(name)
    if value is None or (isinstance(value, float) and value != value):  # None or NaN (csv/parquet)
        raise Skip(f"missing '{name}'")
    return str(value)


def conversation_spans(tokenizer, messages: list[dict]) -> list[tuple[str, bool]]:
    """The rendered conversation as consecutive (text, is_answer) pieces, in order."""

    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    full = render(messages, False)
    pieces: list[tuple[str, bool]] = []
    pos = 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prompt, upto = render(messages[:i], True), render(messages[: i + 1], False)
        if not (full.startswith(upto) and upto.startswith(prompt) and len(prompt) >= pos):
            raise DataError(
                "the chat template does not render a conversation turn by turn, so answers cannot be isolated",
                "set data.train_on=all, or give the recipe a simpler model.chat_template",
            )
        end = len(upto.rstrip())  # the answer and its end-of-turn token; not the newline after it
        pieces += [(full[pos : len(prompt)], False), (full[len(prompt) : end], True)]
        pos = end
    pieces.append((full[pos:], False))
    return [(text, answer) for text, answer in pieces if text]


def tokenize_row(
    row: dict, fmt: str, tokenizer, *, max_length: int, train_on: str = "answers", system: str | None = None
) -> Example:
    """One row → Example; raises Skip(reason) for rows that cannot be used."""
    eos = tokenizer.eos_token_id
    if fmt == "text":
        text = _field(row, "text")
        if not text.strip():
            raise Skip("empty text")
        pieces = [(tokenizer(text).input_ids + ([eos] if eos is not None else []), True)]
    elif fmt == "prompt_completion" or (fmt == "alpaca" and not tokenizer.chat_template):
        if fmt == "alpaca":
            extra = str(row.get("input") or "").strip()
            prompt_text = (ALPACA_PROMPT_INPUT if extra else ALPACA_PROMPT).format(
                instruction=_field(row, "instruction"), input=extra
            )
            answer = _field(row, "output")
        else:
            prompt_text, answer = _field(row, "prompt"), _field(row, "completion")
        if not answer.strip():
            raise Skip("empty answer")
        pieces = [
            (tokenizer(prompt_text).input_ids, False),
            (
                tokenizer(answer, add_special_tokens=False).input_ids + ([eos] if eos is not None else []),
                True,
            ),
        ]
    else:
        msgs = to_messages(row, fmt, system)
        pieces = [
            (tokenizer(text, add_special_tokens=False).input_ids, answer)
            for text, answer in conversation_spans(tokenizer, msgs)
        ]
    ids: list[int] = []
    labels: list[int] = []
    for piece_ids, answer in pieces:
        ids += piece_ids
        labels += piece_ids if (answer or train_on == "all") else [IGNORE] * len(piece_ids)
    if len(ids) > max_length:
        raise Skip(f"longer than max_length ({max_length} tokens)")
    labels[0] = IGNORE  # nothing predicts the first token (and in a packed row, nothing before it may)
    example = Example(ids, labels)
    if example.n_labels == 0:
        raise Skip("no trainable tokens")
    return example


def prepare(recipe, tokenizer, *, seed: int = 42) -> Dataset:
    """Read, convert and tokenize the recipe's data; split off the eval set."""
    d = recipe.data
    sample_by = d.sample_by
    path = _local(recipe, d.path)
    rows = read_rows(path, config=d.config, split=d.split, sample_by=sample_by)
    if d.limit:
        rows = rows[: d.limit]
    where = str(path)
    fmt = detect_format(rows, d.format, where)
    if fmt == "messages" and not tokenizer.chat_template:
        raise DataError(
            f"{where}: conversational data, but the model {recipe.model.name} has no chat template",
            "set model.chat_template in the recipe (inline Jinja or a file), or use an instruct/chat model",
        )
    dropped: Counter = Counter()
    examples = _tokenize_all(rows, fmt, tokenizer, d, dropped)
    if d.eval_path:
        eval_where = str(_local(recipe, d.eval_path))
        eval_rows = read_rows(eval_where, sample_by=sample_by)
        eval_set = _tokenize_all(eval_rows, detect_format(eval_rows, fmt, eval_where), tokenizer, d, dropped)
        train_set = examples
    else:
        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        n_eval = round(len(examples) * d.eval_fraction)
        if d.eval_fraction > 0 and len(examples) >= 2:
            n_eval = max(1, n_eval)
        eval_set = [examples[i] for i in sorted(order[:n_eval])]
        train_set = [examples[i] for i in sorted(order[n_eval:])]
    if not train_set:
        reasons = ", ".join(f"{n} {why}" for why, n in dropped.most_common()) or "the file has no rows"
        raise DataError(
            f"{where}: no trainable examples ({len(rows)} rows; dropped: {reasons})",
            "check data.format, data.max_length and data.train_on",
        )
    return Dataset(train_set, eval_set, fmt, rows=len(rows), dropped=dropped)


def _local(recipe, value: str):
    """A recipe path resolved against the recipe file when it names a local file or dir; else as given."""
    resolved = recipe.resolve_path(value)
    local = not value.startswith(HF_PREFIX) and (Path(value).suffix.lower() in FORMATS or resolved.exists())
    return resolved if local else value


def _tokenize_all(rows, fmt, tokenizer, d, dropped: Counter) -> list[Example]:
    out, kw = [], {"max_length": d.max_length, "train_on": d.train_on, "system": d.system}
    for row in rows:  # dicts: the readers turn a line that is not an object into an error
        try:
            out.append(tokenize_row(row, fmt, tokenizer, **kw))
        except Skip as why:
            dropped[str(why)] += 1
    return out


# ----------------------------------------------------------------------------- batching


def plan_epoch(
    lengths: list[int], *, batch_size: int, max_length: int, packing: bool, seed: int, per_step: int = 1
) -> list[list[list[int]]]:
    """One epoch as micro-batches; a micro-batch is a list of rows; a row lists example indices.

    Packing fills rows of up to max_length tokens (best fit, longest first: O(n log n)) and
    takes batch_size rows per micro-batch, in random order.

    Without packing a row is one example. Each optimizer step (`per_step` consecutive
    micro-batches) holds a random draw of examples, as a shuffled loader would give; inside the
    step they are sorted by length, so similar lengths share a micro-batch (and a pass, see
    `split_by_tokens`) and padding stays small. Sorting across steps instead would give the
    short examples steps of their own and, with per-step loss normalisation, over-weight their
    tokens (measured: +6% eval loss on a mixed-length set).
    """
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if not packing:
        n = batch_size * per_step
        rows = [
            [i] for k in range(0, len(order), n) for i in sorted(order[k : k + n], key=lambda i: -lengths[i])
        ]
        return [rows[k : k + batch_size] for k in range(0, len(rows), batch_size)]
    rows = []
    room: list[tuple[int, int]] = []  # (free tokens, row), sorted: the tightest fit is a bisect away
    for i in sorted(order, key=lambda i: -lengths[i]):
        k = bisect.bisect_left(room, (lengths[i], -1))
        if k == len(room):
            rows.append([i])
            bisect.insort(room, (max_length - lengths[i], len(rows) - 1))
        else:
            free, r = room.pop(k)
            rows[r].append(i)
            bisect.insort(room, (free - lengths[i], r))
    rng.shuffle(rows)
    return [rows[k : k + batch_size] for k in range(0, len(rows), batch_size)]


def split_by_tokens(examples: list[Example], rows: list[list[int]], budget: int) -> list[list[list[int]]]:
    """A micro-batch as consecutive pieces of at most `budget` tokens (rows x widest row) each.

    Losses are summed over label tokens, so the pieces' gradients add up to the micro-batch's:
    the split changes peak memory, not the result. A row wider than the budget goes alone.
    """
    if budget <= 0:
        return [rows]
    pieces: list[list[list[int]]] = []
    widest = 0
    for row in rows:
        width = sum(examples[i].cost for i in row)
        if pieces and max(widest, width) * (len(pieces[-1]) + 1) <= budget:
            pieces[-1].append(row)
            widest = max(widest, width)
        else:
            pieces.append([row])
            widest = width
    return pieces


SHARE_AT_LEAST = 8  # fewer shared tokens save less than the extra attention call costs


def laid_out(
    examples: list[Example], row: list[int], share: bool = False
) -> list[tuple[list[int], list[int], int]]:
    """The sequences of one row as (ids, labels, first position) pieces, in order.

    With `share` (padding-free passes, llmkit.attention), a sequence that opens with the same
    unlabeled tokens as the last sequence laid out whole (a preference pair's two answers to one
    prompt, a GRPO group's answers, conversations with one system prompt) keeps only what follows
    them: its positions start where the shared tokens end, and attention lets it see them in the
    opener's place. The shared tokens' hidden states are the same in every sequence (causal
    attention, same positions), so this computes exactly what laying each out whole computes,
    once instead of once per sequence. The first token a sequence keeps is never a label: the
    token before it in the row is not the one it follows.
    """
    pieces: list[tuple[list[int], list[int], int]] = []
    opener: list[int] = []
    for i in row:
        ex, start = examples[i], 0
        for n in ex.lengths:
            ids, labels = ex.ids[start : start + n], ex.labels[start : start + n]
            start += n
            q = _shared(opener, ids, labels) if share else 0
            if q:
                pieces.append((ids[q:], labels[q:], q))
            else:
                pieces.append((ids, labels, 0))
                opener = ids
    return pieces


def _shared(opener: list[int], ids: list[int], labels: list[int]) -> int:
    """How many opening tokens `ids` can take from `opener`'s pass (0: too few to be worth it)."""
    limit, q = min(len(opener), len(ids) - 1), 0
    while q < limit and opener[q] == ids[q] and labels[q] == IGNORE:
        q += 1
    if q and labels[q] != IGNORE:
        q -= 1
    return q if q >= SHARE_AT_LEAST else 0


def collate(
    examples: list[Example],
    rows: list[list[int]],
    pad_id: int,
    *,
    segments: bool = False,
    share: bool = False,
):
    """Rows of examples → input_ids, position_ids, labels tensors of shape [rows, longest row].

    Position ids restart at 0 for each sequence (that is what keeps packed examples apart);
    the padding at the end of a row continues the last sequence's positions and is never a label.
    `share`: sequences that open with the same prompt share its tokens (see `laid_out`).
    With `segments`, also the index of the sequence each token belongs to, counted over the
    micro-batch in row order (-1 on padding): the preference and reward losses sum per sequence.
    """
    import torch

    layouts = [laid_out(examples, row, share) for row in rows]
    width = max(sum(len(ids) for ids, _, _ in pieces) for pieces in layouts)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    seg = torch.full((len(rows), width), -1, dtype=torch.long)
    n_seq = 0
    for r, pieces in enumerate(layouts):
        pos = 0
        for ids, labs, first in pieces:
            n = len(ids)
            input_ids[r, pos : pos + n] = torch.tensor(ids)
            labels[r, pos : pos + n] = torch.tensor(labs)
            position_ids[r, pos : pos + n] = torch.arange(first, first + n)
            seg[r, pos : pos + n] = n_seq
            pos, n_seq = pos + n, n_seq + 1
        if pos < width:  # padding: continue counting so it forms no new segment
            start = int(position_ids[r, pos - 1]) + 1
            position_ids[r, pos:] = torch.arange(start, start + width - pos)
    batch = {"input_ids": input_ids, "position_ids": position_ids, "labels": labels}
    if segments:
        batch["segments"] = seg
    return batch
