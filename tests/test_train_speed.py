"""The CPU training fast paths keep every contract: padding-free passes give the padded passes'
losses and gradients (four families), the fused LoRA layers compute what PEFT's do, the
NumPy-drawn LoRA dropout is dropout (and replays exactly under gradient checkpointing), and a
run reports its model FLOPs utilisation."""

from __future__ import annotations

import json

import pytest
import torch

from llmkit import attention
from llmkit import data as datalib
from llmkit.dropout import FastDropout
from llmkit.methods.model import LossModel

LENGTHS = (7, 3, 8, 5)  # ≤ tiny-gemma3's sliding window (8): the windowed layers are exact too


def _examples(vocab: int) -> list[datalib.Example]:
    g = torch.Generator().manual_seed(0)
    out = []
    for n in LENGTHS:
        ids = torch.randint(3, vocab, (n,), generator=g).tolist()
        labels = [datalib.IGNORE] * 2 + ids[2:]  # answers-only: the first two are the prompt
        out.append(datalib.Example(ids, labels))
    return out


def _lora(model_dir, segments: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    switched = attention.use_segments(model, max(LENGTHS)) if segments else False
    torch.manual_seed(0)
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False, lora_dropout=0.0
    )
    return get_peft_model(model, cfg), switched


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-qwen2", "tiny-gemma3", "tiny-qwen3moe"])
def test_padding_free_passes_give_the_padded_losses_and_gradients(family):
    from llmkit.tiny import tiny_model_dir

    model_dir = tiny_model_dir(family)
    results = []
    for segments in (False, True):
        peft, switched = _lora(model_dir, segments)
        assert switched == segments
        lm = LossModel(peft)
        examples = _examples(peft.get_base_model().config.vocab_size)
        rows = [[0], [1], [2], [3]]
        batch = datalib.collate(examples, [[0, 1, 2, 3]] if segments else rows, 0, segments=True)
        assert batch["input_ids"].shape == ((1, sum(LENGTHS)) if segments else (4, max(LENGTHS)))
        values = lm.token_logps(batch["input_ids"], batch["position_ids"], batch["labels"])
        values.sum().backward()
        grads = {n: p.grad.clone() for n, p in peft.named_parameters() if p.grad is not None}
        results.append((values.detach(), grads))
    (padded, g1), (flat, g2) = results
    assert padded.shape == flat.shape == (sum(n - 2 for n in LENGTHS),)
    torch.testing.assert_close(flat, padded, rtol=1e-5, atol=1e-5)
    assert g1.keys() == g2.keys() and g1
    for name in g1:
        scale = float(g1[name].abs().max())  # float sums in another order: ~1e-6 of the largest
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def _prompted(vocab: int) -> tuple[list[datalib.Example], int]:
    """A GRPO-like group (one prompt, three answers), a preference pair (one example, two parts)
    and a sequence with a prompt of its own; every sequence ≤ 8 tokens (tiny-gemma3's window).
    Also how many tokens sharing the prompts saves."""
    g = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(3, vocab, (n,), generator=g).tolist()

    def seq(prompt, answer):
        return prompt + answer, [datalib.IGNORE] * len(prompt) + answer

    group, pair = ids(5), ids(4)
    out = [datalib.Example(*seq(group, ids(n))) for n in (3, 2, 3)]
    (c, cl), (r, rl) = seq(pair, ids(3)), seq(pair, ids(4))
    out.append(datalib.Example(c + r, cl + rl, parts=(len(c), len(r))))
    out.append(datalib.Example(*seq(ids(4), ids(3))))
    # each sequence after an opener keeps its prompt's last token (it predicts the first answer token)
    return out, 2 * (5 - 1) + (4 - 1)


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-qwen2", "tiny-gemma3", "tiny-qwen3moe"])
def test_sequences_sharing_a_prompt_give_the_unshared_losses_and_gradients(family, monkeypatch):
    from llmkit.tiny import tiny_model_dir

    monkeypatch.setattr(datalib, "SHARE_AT_LEAST", 2)  # the tiny prompts are short
    results = []
    for share in (False, True):
        peft, _ = _lora(tiny_model_dir(family), True)
        examples, saved = _prompted(peft.get_base_model().config.vocab_size)
        batch = datalib.collate(examples, [list(range(len(examples)))], 0, segments=True, share=share)
        unshared = sum(len(e) for e in examples)
        assert batch["input_ids"].shape == (1, unshared - (saved if share else 0))
        values = LossModel(peft).token_logps(batch["input_ids"], batch["position_ids"], batch["labels"])
        values.sum().backward()
        grads = {n: p.grad.clone() for n, p in peft.named_parameters() if p.grad is not None}
        results.append((values.detach(), batch["segments"], batch["labels"], grads))
    (whole, s1, l1, g1), (shared, s2, l2, g2) = results
    assert shared.shape == whole.shape == (sum(e.n_labels for e in examples),)
    # the same sequences, in the same order, own the same label tokens
    assert torch.equal(s1[:, 1:][l1[:, 1:] != datalib.IGNORE], s2[:, 1:][l2[:, 1:] != datalib.IGNORE])
    torch.testing.assert_close(shared, whole, rtol=1e-5, atol=1e-5)
    assert g1.keys() == g2.keys() and g1
    for name in g1:
        scale = float(g1[name].abs().max())
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-5 * scale, msg=name)


def test_only_unlabeled_opening_tokens_are_shared(monkeypatch):
    monkeypatch.setattr(datalib, "SHARE_AT_LEAST", 2)
    x = datalib.IGNORE

    def pieces(*seqs):
        return [
            (ids, first)
            for ids, _, first in datalib.laid_out(
                [datalib.Example(*s) for s in seqs], list(range(len(seqs))), True
            )
        ]

    opener = ([1, 2, 3, 4, 9], [x, x, x, x, 9])
    # the same prompt: all but its last token shared
    assert pieces(opener, ([1, 2, 3, 4, 7], [x, x, x, x, 7]))[1] == ([4, 7], 3)
    # the prompts differ at the third token: two shared
    assert pieces(opener, ([1, 2, 5, 4, 7], [x, x, x, x, 7]))[1] == ([5, 4, 7], 2)
    # a label inside the common tokens ends the sharing before it
    assert pieces(opener, ([1, 2, 3, 4, 9], [x, x, 3, 4, 9]))[1] == ([1, 2, 3, 4, 9], 0)  # 1 < 2: whole
    assert pieces(opener, ([1, 2, 3, 4, 9], [x, x, x, 4, 9]))[1] == ([3, 4, 9], 2)
    # too few shared tokens: laid out whole, and it opens the next group
    assert pieces(opener, ([1, 8, 3], [x, x, 3]), ([1, 8, 3, 5], [x, x, x, 5]))[1:] == [
        ([1, 8, 3], 0),
        ([3, 5], 2),
    ]
    # without `share`, every sequence whole
    whole = datalib.laid_out([datalib.Example(*opener)] * 2, [0, 1], False)
    assert [first for *_, first in whole] == [0, 0]


def _dropout_lora(model_dir, dtype, dropout: float = 0.2):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmkit.dropout import use_fast_dropout
    from llmkit.lora import fp32_lora_sums

    # float64 (the exact reference) has no grouped matmul: its experts run one by one
    experts = {"experts_implementation": "eager"} if dtype == torch.float64 else {}
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, attn_implementation="sdpa", **experts
    )
    attention.use_segments(model, max(LENGTHS))
    from llmkit.lora import lora_targets

    torch.manual_seed(0)
    targets = lora_targets(model, "all-linear")  # MoE: the experts too, which take no dropout
    drop = 0.0 if targets.get("target_parameters") else dropout
    cfg = LoraConfig(r=4, lora_alpha=8, **targets, init_lora_weights=False, lora_dropout=drop)
    peft = get_peft_model(model, cfg)
    assert (use_fast_dropout(peft) > 0) == (drop > 0)
    if dtype == torch.bfloat16:
        fp32_lora_sums(peft)
    return peft


def _fused_or_not(family, dtype, fused: bool, autocast: bool, upcast: bool = False, dropout: float = 0.2):
    """Per-token log-probs and LoRA gradients of one padding-free pass in train mode (LoRA
    dropout `dropout`, its drops drawn from torch's RNG seeded the same way for every variant)."""
    from llmkit.fused_lora import use_fused_lora
    from llmkit.tiny import tiny_model_dir

    peft = _dropout_lora(tiny_model_dir(family), dtype, dropout)
    if upcast:  # the bf16 weights in fp32: the exact computation the bf16 runs approximate
        peft = peft.float()
    peft.train()
    n_lora = sum(
        1
        for m in peft.modules()
        if hasattr(m, "lora_A") and isinstance(getattr(m, "base_layer", None), torch.nn.Linear)
    )
    if fused:
        assert use_fused_lora(peft) == n_lora > 0
    examples = _examples(peft.get_base_model().config.vocab_size)
    batch = datalib.collate(examples, [[0, 1, 2, 3]], 0, segments=True)
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        values = LossModel(peft).token_logps(batch["input_ids"], batch["position_ids"], batch["labels"])
    values.float().sum().backward()
    grads = {
        n: p.grad.to(torch.promote_types(p.grad.dtype, torch.float32))  # float64 stays float64
        for n, p in peft.named_parameters()
        if p.grad is not None
    }
    assert grads
    return values.detach().float(), grads


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3", "tiny-qwen3moe"])
def test_fused_lora_layers_compute_what_peft_computes(family):
    """In fp32 the fused CPU layers give PEFT's per-token losses and every LoRA gradient to float
    rounding, dropout included (the same drops: one draw from torch's RNG per layer call). Against
    the same pass in float64: every gradient within 1e-4 of its largest entry, and all of them
    together no further off than PEFT's own fp32 ones (which rounding alone keeps at ~1e-5)."""
    plain, g1 = _fused_or_not(family, torch.float32, fused=False, autocast=False)
    fused, g2 = _fused_or_not(family, torch.float32, fused=True, autocast=False)
    _, exact = _fused_or_not(family, torch.float64, fused=False, autocast=False)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-5)
    assert g1.keys() == g2.keys() == exact.keys()
    for name in g1:
        truth = exact[name]
        assert float((g2[name] - truth).abs().max() / truth.abs().max()) < 1e-4, name

    def off(grads):
        return float(
            torch.cat([(grads[n] - exact[n]).flatten() for n in exact]).norm()
            / torch.cat([exact[n].flatten() for n in exact]).norm()
        )

    assert off(g2) <= 2 * off(g1) + 1e-7, (off(g2), off(g1))


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3", "tiny-qwen3moe"])
def test_fused_lora_under_bf16_is_as_close_to_fp32_as_peft(family):
    """Under bf16 autocast both round, in different places: measured against the same weights in
    fp32, the fused layers' losses and gradients are no further off than PEFT's own. Without
    dropout: with it, which elements a draw drops moves both errors by up to 10x from one seed to
    the next (the fp32 test proves the fused layers drop exactly what PEFT's do)."""

    def off(values, grads, ref):
        flat = torch.cat([values] + [grads[n].flatten() for n in sorted(grads)])
        truth = torch.cat([ref[0]] + [ref[1][n].flatten() for n in sorted(grads)])
        return float((flat - truth).norm() / truth.norm())

    ref = _fused_or_not(family, torch.bfloat16, fused=False, autocast=False, upcast=True, dropout=0)
    peft = off(*_fused_or_not(family, torch.bfloat16, fused=False, autocast=True, dropout=0), ref)
    fused = off(*_fused_or_not(family, torch.bfloat16, fused=True, autocast=True, dropout=0), ref)
    assert fused < 0.05 and fused <= 1.25 * peft, (fused, peft)


def test_fused_lora_falls_back_to_peft_where_it_does_not_apply():
    """A disabled adapter (the DPO reference pass) and a merged one give the frozen model's or
    the merged model's output, exactly as PEFT does."""
    from llmkit.fused_lora import use_fused_lora
    from llmkit.tiny import tiny_model_dir

    peft = _dropout_lora(tiny_model_dir("tiny-llama"), torch.float32).eval()
    ids = torch.tensor([[5, 9, 11, 4, 7]])
    with torch.no_grad():
        with peft.disable_adapter():
            frozen = peft(input_ids=ids).logits
        adapted = peft(input_ids=ids).logits
        assert use_fused_lora(peft) > 0
        with peft.disable_adapter():
            torch.testing.assert_close(peft(input_ids=ids).logits, frozen, rtol=0, atol=0)
        torch.testing.assert_close(peft(input_ids=ids).logits, adapted, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(adapted, frozen, atol=1e-3)  # the adapter does change the output
        peft.merge_adapter()
        torch.testing.assert_close(peft(input_ids=ids).logits, adapted, rtol=1e-4, atol=1e-4)


def test_padding_free_only_where_it_is_exact():
    from transformers import AutoModelForCausalLM

    from llmkit.tiny import tiny_model_dir

    def switched(family, longest, impl="sdpa"):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(family), attn_implementation=impl)
        return attention.use_segments(model, longest)

    assert switched("tiny-gemma3", 8)
    assert not switched("tiny-gemma3", 9)  # sequences longer than its sliding window
    assert not switched("tiny-gemma2", 4, "eager")  # soft-capped attention
    assert not switched("tiny-llama", 64, "eager")  # a recipe that names its attention gets it


def test_fast_dropout_is_dropout():
    torch.manual_seed(0)
    x = torch.randn(512, 384, requires_grad=True)
    drop = FastDropout(0.1).train()
    y = drop(x)
    kept = y != 0
    n = kept.numel()
    assert abs(kept.float().mean().item() - 0.9) < 4 * (0.9 * 0.1 / n) ** 0.5  # 4 sigma
    torch.testing.assert_close(y[kept], x[kept] / 0.9)
    y.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.9)  # the same mask, scaled, backwards
    assert not torch.equal(drop(x) != 0, kept)  # a fresh mask per call
    torch.manual_seed(5)
    a = drop(x)
    torch.manual_seed(5)
    assert torch.equal(drop(x), a)  # torch's RNG decides: a restored state replays the masks
    torch.manual_seed(5)
    dropped = drop.dropped(x)  # what the fused LoRA layer zeroes: the same draw, as flat positions
    assert dropped.dtype == torch.int64 and torch.equal(dropped, torch.nonzero(a.flatten() == 0).flatten())
    assert torch.equal(drop.eval()(x), x)


@pytest.mark.parametrize("p", [0.05, 0.5, 0.9])
def test_fast_dropout_drops_each_element_independently(p):
    """Drawn as geometric gaps between drops, the drops are still Bernoulli(p) per element: as
    many as expected in every eighth of a tensor, and next to each other as often as chance says
    (an off-by-one in the gaps would forbid or favour neighbours). Bounds: 5 sigma."""
    torch.manual_seed(0)
    n = 200_003
    hits = torch.zeros(n, dtype=torch.bool)
    hits[FastDropout(p).train().dropped(torch.empty(n))] = True
    for part in hits.chunk(8):
        k = part.numel()
        assert abs(int(part.sum()) - k * p) < 5 * (k * p * (1 - p)) ** 0.5
    pairs, m = int((hits[1:] & hits[:-1]).sum()), n - 1  # adjacent drops: m p^2 expected
    var = m * (p * p * (1 - p * p) + 2 * p**3 * (1 - p))  # overlapping pairs are correlated
    assert abs(pairs - m * p * p) < 5 * var**0.5


def test_fast_dropout_replays_under_gradient_checkpointing():
    """Checkpointing recomputes the forward pass in backward, restoring torch's RNG first: the
    recomputed masks are the ones the forward pass used, so gradients match a plain run."""
    from torch.utils.checkpoint import checkpoint

    lin = torch.nn.Linear(64, 64)
    drop = FastDropout(0.3).train()
    x = torch.randn(32, 64)

    def grads(ckpt: bool):
        lin.zero_grad()
        torch.manual_seed(3)
        f = lambda t: lin(drop(t)).tanh()  # noqa: E731
        out = checkpoint(f, x, use_reentrant=False) if ckpt else f(x)
        out.square().sum().backward()
        return lin.weight.grad.clone()

    torch.testing.assert_close(grads(True), grads(False), rtol=0, atol=0)


def test_a_run_reports_its_model_flops_utilisation(tmp_path, llmkit_cli):
    from transformers import AutoConfig

    from llmkit.plan.config import _text_config
    from llmkit.plan.params import count_parameters
    from llmkit.plan.timing import trained_token_flops
    from llmkit.recipe import load
    from llmkit.tiny import tiny_model_dir
    from llmkit.training import load_tokenizer

    out = tmp_path / "run"
    overrides = [f"train.output_dir={out}", "train.max_steps=3", "train.eval_every=0"]
    result = llmkit_cli("train", "tiny", *overrides, "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    info = json.loads((out / "run.json").read_text())
    assert shown["mfu"] == info["mfu"] and 0 < info["mfu"] < 1.5
    assert info["padding_free"] is True and info["peak_flops"] > 1e8 and "fp32" in info["peak_source"]
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(0 < r["mfu"] < 1.5 for r in rows if "loss" in r)
    # the planner's count of the same model and data
    recipe = load("tiny", overrides)
    tokenizer, _ = load_tokenizer(recipe)
    examples = datalib.prepare(recipe, tokenizer, seed=recipe.train.seed).train
    config = AutoConfig.from_pretrained(tiny_model_dir("tiny-llama"))
    expected = trained_token_flops(count_parameters(config, recipe), _text_config(config), examples)
    assert info["flops_per_token"] == round(expected)


def test_bf16_keeps_small_lora_updates_that_a_bf16_sum_rounds_away():
    """Under bf16 autocast a LoRA update far below a bf16 step of the layer's output is lost in a
    bf16 sum (each output moves by 0 or a whole step); with the sums in fp32 the forward pass
    sees the update itself."""
    from peft import LoraConfig, get_peft_model

    from llmkit.fused_lora import use_fused_lora
    from llmkit.lora import fp32_lora_sums

    def seen_vs_true(hooked: bool, fused: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        base = torch.nn.Sequential(torch.nn.Linear(64, 64)).to(torch.bfloat16)
        with torch.no_grad():
            base[0].bias.fill_(4.0)  # outputs near 4: a bf16 step there is 1/32
        model = get_peft_model(
            base, LoraConfig(r=4, lora_alpha=8, target_modules=["0"], init_lora_weights=False)
        )
        layer = model.base_model.model[0]
        with torch.no_grad():
            layer.lora_B["default"].weight.fill_(1e-4)  # updates of ~1e-3, far below 1/32
        if hooked:
            assert fp32_lora_sums(model) == 1
        if fused:
            assert use_fused_lora(model) == 1
        x = torch.randn(8, 64, dtype=torch.bfloat16)
        a, b = layer.lora_A["default"].weight.float(), layer.lora_B["default"].weight.float()
        true = x.float() @ a.T @ b.T * 2.0  # alpha / r
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x).float()
            with model.disable_adapter():
                plain = model(x).float()
        return out - plain, true

    for fused in (False, True):  # PEFT's layer with the fp32 hook, and the fused CPU layer
        seen, true = seen_vs_true(True, fused)
        assert (seen - true).abs().max() < 0.02 * true.abs().max()  # the update, to bf16 matmul precision
    seen, true = seen_vs_true(False)
    assert (seen - true).abs().mean() > 0.5 * true.abs().mean()  # 0 or a whole step, never the update
