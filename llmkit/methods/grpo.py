"""GRPO: sample a group of answers per prompt, score them with reward functions, and push the
model toward the answers that scored above their group's mean (Shao et al., 2024).

A step, for each prompt of the micro-batch:
1. sample `num_generations` answers with the KV cache (the model in eval mode, no gradients;
   the prompt read once for its group, see `sample`);
2. score each answer with every reward; the total is their weighted sum;
3. advantage = (total - group mean) / group std (or not divided, `scale_rewards: false`);
4. loss over the answer tokens: -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A), plus
   beta * KL to the adapter-disabled reference (k3 estimator) when beta > 0. The sum is divided
   by num_generations * max_completion_length per prompt, a constant (Dr. GRPO): long and short
   answers weigh per token the same, and the loop's per-prompt normalisation stays exact.
   In padding-free passes the group's answers share the prompt's tokens (llmkit.data.laid_out).

One optimisation pass per sampled group, so the "old" policy is the current one with its
gradient stopped: the ratio is 1 in value and the clip acts on its gradient as usual.
Sampling draws from torch's global RNG, which checkpoints save and resume restores, so a resumed
run samples the answers an uninterrupted one would.
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import torch

from llmkit import data as datalib
from llmkit.errors import DataError

packing = False  # a row is one prompt; its answers are sampled in build()


def prepare(recipe, tokenizer, seed: int) -> datalib.Dataset:
    from llmkit.rewards import check_rows

    d, g = recipe.data, recipe.grpo
    path = datalib._local(recipe, d.path)
    rows = datalib.read_rows(path, config=d.config, split=d.split, sample_by=d.sample_by)
    if d.limit:
        rows = rows[: d.limit]
    rewards = load_rewards(recipe)
    check_rows(rewards, rows, str(path))  # a field a reward reads is missing: fail before the model loads
    dropped: Counter = Counter()
    prompts = _prompts(rows, str(path), tokenizer, recipe, dropped)
    if d.eval_path:
        eval_where = datalib._local(recipe, d.eval_path)
        eval_rows = datalib.read_rows(eval_where, sample_by=d.sample_by)
        check_rows(rewards, eval_rows, str(eval_where))
        eval_set, train_set = _prompts(eval_rows, str(eval_where), tokenizer, recipe, dropped), prompts
    else:
        order = list(range(len(prompts)))
        random.Random(seed).shuffle(order)
        n_eval = round(len(prompts) * d.eval_fraction) if len(prompts) >= 2 else 0
        eval_set = [prompts[i] for i in sorted(order[:n_eval])]
        train_set = [prompts[i] for i in sorted(order[n_eval:])]
    if not train_set:
        raise DataError(f"{path}: no usable prompts", "check data.max_length and the prompt column")
    for e in train_set + eval_set:  # what a prompt's group costs in one pass
        e.size = g.num_generations * (len(e) + g.max_completion_length)
    return datalib.Dataset(train_set, eval_set, "prompts", rows=len(rows), dropped=dropped)


def _prompts(rows, where, tokenizer, recipe, dropped: Counter) -> list[datalib.Example]:
    out = []
    for n, row in enumerate(rows, 1):
        prompt = row.get("prompt")
        if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
            raise DataError(
                f"{where} row {n}: no 'prompt'", "every GRPO row needs a prompt (text or messages)"
            )
        ids = prompt_ids(prompt, tokenizer, recipe.data.system)
        if len(ids) + recipe.grpo.max_completion_length > recipe.data.max_length:
            dropped[f"prompt + answer longer than max_length ({recipe.data.max_length} tokens)"] += 1
            continue
        out.append(datalib.Example(ids, [datalib.IGNORE] * len(ids), unit=1, row=row))
    return out


def prompt_ids(prompt, tokenizer, system: str | None = None) -> list[int]:
    """The tokens the model is asked with: the chat template's prompt when it has one (as a
    served model is asked), else the text as it is."""
    if not tokenizer.chat_template:
        return tokenizer(str(prompt)).input_ids
    msgs = list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]
    if system and msgs[0].get("role") != "system":
        msgs.insert(0, {"role": "system", "content": system})
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False).input_ids


def load_rewards(recipe) -> list:
    """[(name, function, weight, params)] from the recipe; user files resolve against it."""
    from llmkit.rewards import load_reward

    base = recipe.source.parent if recipe.source else Path.cwd()
    return [(r.name, load_reward(r.name, base), r.weight, r.params) for r in recipe.grpo.rewards]


# ----------------------------------------------------------------------------- sampling


def sample(model, tokenizer, prompts: list[list[int]], n: int, *, max_new_tokens: int, temperature: float,
           end_ids: list[int], pad_id: int, greedy: bool = False) -> list[list[int]]:  # fmt: skip
    """`n` answers per prompt (token ids, each ending with its end-of-turn token if it ended).

    Each prompt is read once and its keys and values copied to its n answers, and an answer that
    has ended leaves the batch: the work is the prompts once plus the answers' own tokens, where
    transformers' `generate` reads every prompt n times and steps every row until the longest
    answer ends. Sampling is softmax(logits / temperature), nothing cut (no top-k or top-p), drawn
    by torch's generator (so a resumed run draws what the uninterrupted one did); `greedy` takes
    the most likely token.
    """
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for k, p in enumerate(prompts):  # left padding: every answer starts at the same column
        ids[k, width - len(p) :] = torch.tensor(p)
        mask[k, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    ends = torch.tensor(sorted(set(end_ids)), device=device)
    answers: list[list[int]] = [[] for _ in range(len(prompts) * n)]
    alive = torch.arange(len(answers), device=device)  # the rows still in the batch, as answer indices
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                        use_cache=True, logits_to_keep=1)  # fmt: skip
            cache, logits = out.past_key_values, out.logits[:, -1].repeat_interleave(n, dim=0)
            cache.batch_repeat_interleave(n)
            mask = mask.repeat_interleave(n, dim=0)
            for step in range(max_new_tokens):
                if greedy:
                    token = logits.argmax(-1)
                else:
                    probs = torch.softmax(logits.float() / temperature, dim=-1)
                    token = torch.multinomial(probs, 1).flatten()
                for row, t in zip(alive.tolist(), token.tolist(), strict=True):
                    answers[row].append(t)
                going = ~torch.isin(token, ends)
                if step == max_new_tokens - 1 or not going.any():
                    break
                if not going.all():
                    keep = going.nonzero().flatten()
                    alive, token, mask = alive[keep], token[keep], mask[keep]
                    cache.batch_select_indices(keep)
                mask = torch.cat([mask, mask.new_ones(len(alive), 1)], dim=1)
                out = model(input_ids=token[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                            past_key_values=cache, use_cache=True)  # fmt: skip
                logits = out.logits[:, -1]
    finally:
        model.train(was_training)
    return answers


def score(ctx, examples: list[datalib.Example], answers: list[list[int]], n: int):
    """Total reward of each answer (a tensor) and each reward's values, logged as figures."""
    from llmkit.rewards import score as run_rewards

    ends = set(ctx.end_ids)
    texts = [ctx.tokenizer.decode([t for t in a if t not in ends], skip_special_tokens=True) for a in answers]
    rows = [e.row for e in examples for _ in range(n)]
    prompts = [ctx.tokenizer.decode(e.ids, skip_special_tokens=True) for e in examples for _ in range(n)]
    rewards = rewards_of(ctx)
    values = run_rewards(rewards, texts, rows, prompts)
    total = torch.zeros(len(answers), dtype=torch.float64)
    for name, _fn, weight, _params in rewards:
        v = torch.tensor(values[name], dtype=torch.float64)
        total += weight * v
        ctx.log(f"reward_{name}", v.sum(), len(v))
    ctx.log("reward", total.sum(), len(total))
    ctx.log("completion_length", sum(len(a) for a in answers), len(answers))
    return total, texts


def rewards_of(ctx) -> list:
    if not ctx.rewards:
        ctx.rewards = load_rewards(ctx.recipe)
    return ctx.rewards


def build(examples, rows, ctx):
    """Sample each prompt's group, score it, and lay out the answers for the loss."""
    g = ctx.recipe.grpo
    n = g.num_generations
    chosen = [examples[i] for row in rows for i in row]
    answers = sample(
        ctx.model, ctx.tokenizer, [e.ids for e in chosen], n,
        max_new_tokens=g.max_completion_length, temperature=g.temperature,
        end_ids=ctx.end_ids, pad_id=ctx.pad_id,
    )  # fmt: skip
    total, _ = score(ctx, chosen, answers, n)
    groups = total.view(len(chosen), n)
    spread = groups.std(dim=1)
    advantages = groups - groups.mean(dim=1, keepdim=True)
    if g.scale_rewards:
        advantages = advantages / (spread[:, None] + 1e-4)
    ctx.log("reward_std", spread.sum(), len(chosen))
    ctx.log("zero_std_fraction", (spread == 0).sum(), len(chosen))
    seqs = [
        datalib.Example(e.ids + a, [datalib.IGNORE] * len(e.ids) + a)
        for e, group in zip(chosen, [answers[k * n : (k + 1) * n] for k in range(len(chosen))], strict=True)
        for a in group
    ]
    rows = ctx.layout([[k] for k in range(len(seqs))])  # padding-free: a group's answers share its prompt
    batch = datalib.collate(seqs, rows, ctx.pad_id, segments=True, share=ctx.flat)
    batch["advantages"] = advantages.flatten().float()
    batch["norm"] = torch.tensor(float(n * g.max_completion_length))
    return batch


def loss(lm, batch, ctx):
    """The clipped objective over answer tokens, summed per prompt (see the module docstring)."""
    g = ctx.recipe.grpo
    labels = batch["labels"]
    logps = lm.token_logps(batch["input_ids"], batch["position_ids"], labels)
    seg = batch["segments"][:, 1:][labels[:, 1:] != datalib.IGNORE]
    adv = batch["advantages"][seg]
    ratio = torch.exp(logps - logps.detach())
    clipped = ratio.clamp(1 - g.epsilon, 1 + g.epsilon)
    per_token = -torch.minimum(ratio * adv, clipped * adv)
    if g.beta > 0:
        ref = lm.token_logps(batch["input_ids"], batch["position_ids"], labels, reference=True)
        kl = torch.exp(ref - logps) - (ref - logps) - 1
        per_token = per_token + g.beta * kl
        ctx.log("kl", kl.detach().sum(), len(kl))
    return per_token.sum() / batch["norm"]


def evaluate(lm, examples, ctx) -> dict:
    """Mean rewards of greedy answers to the first `grpo.eval_prompts` held-out prompts."""
    g = ctx.recipe.grpo
    chosen = examples[: g.eval_prompts]
    acc = ctx.accelerator
    rank, world = (acc.process_index, acc.num_processes) if acc is not None else (0, 1)
    saved, ctx.stats = ctx.stats, type(ctx.stats)(ctx.stats.default_factory)
    mine = chosen[rank::world]
    for k in range(0, len(mine), 8):
        part = mine[k : k + 8]
        answers = sample(
            ctx.model, ctx.tokenizer, [e.ids for e in part], 1,
            max_new_tokens=g.max_completion_length, temperature=1.0,
            end_ids=ctx.end_ids, pad_id=ctx.pad_id, greedy=True,
        )  # fmt: skip
        score(ctx, part, answers, 1)
    figures = {f"eval_{k}": v for k, v in ctx.pop_stats().items()}
    ctx.stats = saved
    return figures
