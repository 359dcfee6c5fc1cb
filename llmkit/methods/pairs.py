"""Preference pairs (DPO, ORPO): prompt + chosen and prompt + rejected, as one example.

Rows take TRL's documented forms, from any file the readers take:
- plain text:      {"prompt": "...", "chosen": "...", "rejected": "..."}
- conversational:  {"prompt": [{"role": "user", ...}], "chosen": [{"role": "assistant", ...}], "rejected": [...]}
- implicit prompt: {"chosen": [conversation], "rejected": [conversation]}: the shared opening is the prompt.

A plain-text prompt is asked as one user turn when the model has a chat template (that is how the
served model will be asked), else the two texts are joined as a completion. Each side is
tokenised with SFT's rules (llmkit.data.tokenize_row), so only answer tokens carry labels. The
two sides are laid end to end in one example whose positions restart at the rejected side: one
forward pass scores both, and pairs pack together like any examples. In padding-free passes the
rejected side shares the prompt's tokens with the chosen one (llmkit.data.laid_out).
"""

from __future__ import annotations

import random
from collections import Counter

from llmkit import data as datalib
from llmkit.errors import DataError

COLUMNS = ("prompt", "chosen", "rejected")


def prepare(recipe, tokenizer, seed: int) -> datalib.Dataset:
    d = recipe.data
    path = datalib._local(recipe, d.path)
    rows = datalib.read_rows(path, config=d.config, split=d.split, sample_by=d.sample_by)
    if d.limit:
        rows = rows[: d.limit]
    dropped: Counter = Counter()
    pairs = _pairs(rows, str(path), tokenizer, recipe, dropped)
    if d.eval_path:
        eval_where = datalib._local(recipe, d.eval_path)
        eval_rows = datalib.read_rows(eval_where, sample_by=d.sample_by)
        eval_set, train_set = _pairs(eval_rows, str(eval_where), tokenizer, recipe, dropped), pairs
    else:
        order = list(range(len(pairs)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, round(len(pairs) * d.eval_fraction)) if d.eval_fraction > 0 and len(pairs) >= 2 else 0
        eval_set = [pairs[i] for i in sorted(order[:n_eval])]
        train_set = [pairs[i] for i in sorted(order[n_eval:])]
    if not train_set:
        reasons = ", ".join(f"{n} {why}" for why, n in dropped.most_common()) or "the file has no rows"
        raise DataError(f"{path}: no usable preference pairs ({reasons})", "check data.max_length")
    return datalib.Dataset(train_set, eval_set, "preference", rows=len(rows), dropped=dropped)


def _pairs(rows, where: str, tokenizer, recipe, dropped: Counter) -> list[datalib.Example]:
    if not rows:
        raise DataError(f"{where} is empty (no rows)", "give preference rows: prompt, chosen, rejected")
    out = []
    for n, row in enumerate(rows, 1):
        prompt, chosen, rejected = split_row(row, f"{where} row {n}")
        sides = []
        for answer in (chosen, rejected):
            try:
                sides.append(_tokenize(prompt, answer, tokenizer, recipe))
            except datalib.Skip as why:
                dropped[str(why)] += 1
                break
        if len(sides) == 2:
            c, r = sides
            out.append(
                datalib.Example(c.ids + r.ids, c.labels + r.labels, parts=(len(c), len(r)), unit=1, row=row)
            )
    return out


def split_row(row: dict, where: str) -> tuple[list[dict] | str, str | list[dict], str | list[dict]]:
    """(prompt, chosen, rejected) of a row, checked: one-line errors name the row and the fix."""
    missing = [c for c in ("chosen", "rejected") if c not in row or row[c] is None]
    if missing:
        raise DataError(
            f"{where}: preference row without '{missing[0]}' (columns: {', '.join(sorted(row)) or 'none'})",
            "every row needs prompt, chosen and rejected (or chosen and rejected conversations)",
        )
    prompt, chosen, rejected = row.get("prompt"), row["chosen"], row["rejected"]
    if prompt is None:  # implicit prompt: the conversations' shared opening
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise DataError(f"{where}: preference row without 'prompt'", "add a prompt column")
        k = 0
        while k < min(len(chosen), len(rejected)) and chosen[k] == rejected[k]:
            k += 1
        prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
    for name, answer in (("chosen", chosen), ("rejected", rejected)):
        if not _text(answer).strip():
            raise DataError(f"{where}: '{name}' is empty", "give both answers some text, or drop the row")
    if _text(chosen).strip() == _text(rejected).strip():
        raise DataError(
            f"{where}: 'chosen' and 'rejected' are the same answer, so there is nothing to prefer",
            "drop the row or fix one of the answers",
        )
    if isinstance(prompt, str) and not prompt.strip():
        raise DataError(f"{where}: 'prompt' is empty", "give the question the answers reply to")
    return prompt, chosen, rejected


def _text(answer) -> str:
    if isinstance(answer, list):
        return "".join(str(m.get("content", "")) for m in answer if isinstance(m, dict))
    return str(answer)


def _tokenize(prompt, answer, tokenizer, recipe) -> datalib.Example:
    d = recipe.data
    kw = {"max_length": d.max_length, "train_on": "answers", "system": d.system}
    if isinstance(prompt, list) or isinstance(answer, list) or tokenizer.chat_template:
        msgs = prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
        reply = answer if isinstance(answer, list) else [{"role": "assistant", "content": str(answer)}]
        if not tokenizer.chat_template:
            raise DataError(
                f"conversational preference data, but the model {recipe.model.name} has no chat template",
                "set model.chat_template in the recipe, or give plain-text prompts and answers",
            )
        return datalib.tokenize_row({"messages": msgs + reply}, "messages", tokenizer, **kw)
    return datalib.tokenize_row(
        {"prompt": prompt, "completion": answer}, "prompt_completion", tokenizer, **kw
    )


def build(examples, rows, ctx):
    return datalib.collate(examples, rows, ctx.pad_id, segments=True, share=ctx.flat)


def logps(lm, batch, *, reference: bool = False):
    """Summed answer log-probabilities and answer lengths of chosen and rejected: 4 tensors [pairs]."""
    from llmkit.methods.model import per_sequence

    values = lm.token_logps(batch["input_ids"], batch["position_ids"], batch["labels"], reference=reference)
    sums, counts = per_sequence(values, batch["segments"], batch["labels"])
    return sums[0::2], sums[1::2], counts[0::2], counts[1::2]
