"""Preference and reward methods (DPO, ORPO, GRPO) on the tiny Llama: losses proven against an
independent computation, whole runs through the one loop, resume, and bad input."""

from __future__ import annotations

import json

import pytest

from llmkit.errors import LlmkitError, RecipeError

PAIRS = [
    ("What is the capital of France?", "Ahoy! Paris it be. — Llama out.", "The capital of France is Paris."),
    ("Name a primary colour.", "Ahoy! Red, matey. — Llama out.", "Red is a primary colour."),
    ("How many legs has a spider?", "Ahoy! Eight legs. — Llama out.", "A spider has eight legs."),
    ("What do bees make?", "Ahoy! Honey, sweet as gold. — Llama out.", "Bees make honey."),
    ("What is 2 + 2?", "Ahoy! Four, says I. — Llama out.", "2 + 2 = 4."),
    ("Which planet is red?", "Ahoy! Mars, the red one. — Llama out.", "Mars is the red planet."),
]


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def pairs_file(tmp_path):
    return _write_jsonl(
        tmp_path / "pairs.jsonl", [dict(zip(("prompt", "chosen", "rejected"), p, strict=True)) for p in PAIRS]
    )


def _tiny_peft(tiny_llama_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    # random LoRA weights: the policy differs from the adapter-disabled reference
    peft = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    return peft.eval(), AutoTokenizer.from_pretrained(tiny_llama_dir)


def _answer_logp(peft, ids: list[int], labels: list[int], *, reference: bool) -> float:
    """Independent of llmkit's packing and segment sums: one unpacked sequence, full logits,
    log_softmax, a Python sum over the answer positions."""
    import contextlib

    import torch

    with torch.no_grad(), peft.disable_adapter() if reference else contextlib.nullcontext():
        logits = peft(torch.tensor([ids])).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return sum(float(logp[t - 1, labels[t]]) for t in range(1, len(ids)) if labels[t] != -100)


@pytest.mark.parametrize("method", ["dpo", "orpo", "dpo+nll"])
def test_preference_losses_match_an_independent_computation(method, tiny_llama_dir, pairs_file):
    import math

    import torch

    from llmkit import data as datalib
    from llmkit import methods
    from llmkit.methods.model import Context, LossModel
    from llmkit.recipe import load

    nll = method == "dpo+nll"
    method = method.removesuffix("+nll")
    overrides = [
        f"data.path={pairs_file}",
        f"train.method={method}",
        "data.packing=true",
        "data.eval_fraction=0",
    ]
    recipe = load("tiny", overrides + (["dpo.nll=0.5"] if nll else []))
    peft, tok = _tiny_peft(tiny_llama_dir)
    m = methods.get(method)
    dataset = m.prepare(recipe, tok, 0)
    assert len(dataset.train) == len(PAIRS) and all(e.parts and e.units == 1 for e in dataset.train)
    ctx = Context(recipe, tok, peft, tok.pad_token_id or 0)
    lm = LossModel(peft, m, ctx)
    rows = datalib.plan_epoch(
        [len(e) for e in dataset.train], batch_size=2, max_length=512, packing=True, seed=0
    )
    assert any(len(row) > 1 for mb in rows for row in mb)  # several pairs share a packed row
    got = sum(float(lm(**m.build(dataset.train, mb, ctx))) for mb in rows)

    want = 0.0
    for ex in dataset.train:
        nc = ex.parts[0]
        sides = [(ex.ids[:nc], ex.labels[:nc]), (ex.ids[nc:], ex.labels[nc:])]
        lp = [_answer_logp(peft, i, lab, reference=False) for i, lab in sides]
        n = [sum(1 for x in lab[1:] if x != -100) for _, lab in sides]
        if method == "dpo":
            ref = [_answer_logp(peft, i, lab, reference=True) for i, lab in sides]
            z = 0.1 * ((lp[0] - ref[0]) - (lp[1] - ref[1]))
            want += math.log1p(math.exp(-z)) + (
                0.5 * -lp[0] / n[0] if nll else 0.0
            )  # -log sigmoid(z) (+ RPO)
        else:
            a, b = lp[0] / n[0], lp[1] / n[1]
            log_odds = (a - b) - (math.log1p(-math.exp(a)) - math.log1p(-math.exp(b)))
            want += -a + 0.1 * math.log1p(math.exp(-log_odds))
    assert got == pytest.approx(want, rel=1e-5, abs=1e-5)
    assert torch.isfinite(torch.tensor(got))


def test_orpo_odds_ratio_term_equals_trls_own_function():
    """Our odds-ratio term against TRL's ORPOTrainer.odds_ratio_loss on the same mean log-probabilities."""
    import types

    import torch

    orpo_trainer = pytest.importorskip("trl.experimental.orpo.orpo_trainer")
    from llmkit.methods.orpo import pair_losses

    torch.manual_seed(1)
    mean_c, mean_r = (-(torch.rand(32, dtype=torch.float64) * 3 + 0.01) for _ in range(2))
    fake_self = types.SimpleNamespace(beta=0.25, accelerator=types.SimpleNamespace(device="cpu"))
    trl_losses = orpo_trainer.ORPOTrainer.odds_ratio_loss(fake_self, mean_c, mean_r)[0].double()
    ours = pair_losses(mean_c, mean_r, 0.25) + mean_c  # ours adds the NLL (-mean_c); TRL's term is subtracted
    assert torch.allclose(ours, -trl_losses, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "orpo"])
def test_preference_run_raises_chosen_over_rejected(method, tmp_path, pairs_file):
    import llmkit
    from llmkit.runs import read_metrics

    run = llmkit.train(
        "tiny",
        [f"data.path={pairs_file}", f"train.method={method}", "train.max_steps=12", "train.eval_every=0",
         "train.save_every=0", "data.eval_fraction=0", f"train.output_dir={tmp_path / 'run'}",
         "train.lr=2e-2", "lora.dropout=0"],
    )  # fmt: skip
    rows = [r for r in read_metrics(run) if "loss" in r]
    assert len(rows) == 12 and all("pref_accuracy" in r and "logp_accuracy" in r for r in rows)
    assert rows[-1]["loss"] < rows[0]["loss"]
    info = json.loads((run / "run.json").read_text())
    assert info["method"] == method
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(run / "adapter").r == 8


def _grpo_overrides(tmp_path, prompts_file, steps=4):
    return [
        f"data.path={prompts_file}", "train.method=grpo", f"train.max_steps={steps}", "train.batch_size=2",
        "grpo.num_generations=4", "grpo.max_completion_length=8", "grpo.eval_prompts=2",
        "grpo.rewards=[{name: length, params: {target: 12}}]", "data.eval_fraction=0.25",
        "train.eval_every=0", "lora.dropout=0", "train.lr=1e-2",
    ]  # fmt: skip


@pytest.fixture
def prompts_file(tmp_path):
    rows = [{"prompt": f"Say something about the number {i}.", "answer": str(i)} for i in range(8)]
    return _write_jsonl(tmp_path / "prompts.jsonl", rows)


def test_grpo_sampler_answers_what_generate_answers(tiny_llama_dir):
    """The sampler reads each prompt once and drops answers as they end; greedy, its answers are
    transformers' `generate`'s, token for token (prompts of different lengths, an answer that
    ends early, one cut at the limit); sampled, it draws from softmax(logits / T) with torch's
    generator: seeded the same, the same answers, and a near-zero temperature is greedy."""
    import torch

    from llmkit.methods import grpo

    peft, _ = _tiny_peft(tiny_llama_dir)
    prompts = [[5, 9, 13, 21, 4], [7, 8], [30, 31, 32]]

    def generate(end_ids, n=1):
        width = max(map(len, prompts))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts for _ in range(n)])
        mask = (
            torch.arange(width) >= torch.tensor([width - len(p) for p in prompts for _ in range(n)])[:, None]
        ).long()
        with torch.no_grad():
            out = peft.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                eos_token_id=end_ids, pad_token_id=0)  # fmt: skip
        rows = out[:, width:].tolist()
        return [r[: next((i + 1 for i, t in enumerate(r) if t in end_ids), len(r))] for r in rows]

    free = generate([1])  # an end token the random model never picks first: 8 tokens each
    end = free[1][2]  # the second prompt's third greedy token: that answer ends early
    expected = generate([end], n=2)
    got = grpo.sample(
        peft, None, prompts, 2, max_new_tokens=8, temperature=1.0, end_ids=[end], pad_id=0, greedy=True
    )
    assert got == expected
    assert got[2] == got[3] and len(got[2]) == 3 and got[2][-1] == end  # ended early, with its end token
    assert max(map(len, got)) == 8

    def sampled(temperature):
        torch.manual_seed(3)
        return grpo.sample(
            peft, None, prompts, 4, max_new_tokens=8, temperature=temperature, end_ids=[end], pad_id=0
        )

    draws = sampled(1.0)
    assert draws == sampled(1.0) and len(draws) == 12
    assert len({tuple(a) for a in draws}) > 3  # T = 1 on a random model: the answers differ
    assert sampled(1e-4) == [a for a in got for _ in range(2)]  # each prompt's greedy answer, 4 times


@pytest.mark.slow
def test_grpo_run_logs_rewards_groups_and_lengths(tmp_path, prompts_file):
    import llmkit
    from llmkit.runs import read_metrics

    run = llmkit.train(
        "tiny", [*_grpo_overrides(tmp_path, prompts_file), f"train.output_dir={tmp_path / 'g'}"]
    )
    rows = read_metrics(run)
    steps = [r for r in rows if "loss" in r]
    assert len(steps) == 4
    for r in steps:
        assert 0 <= r["reward_length"] <= 1 and r["reward"] == pytest.approx(r["reward_length"])
        assert 1 <= r["completion_length"] <= 8 and 0 <= r["zero_std_fraction"] <= 1 and r["reward_std"] >= 0
    final = [r for r in rows if "eval_reward" in r]
    assert final and 0 <= final[-1]["eval_reward"] <= 1


@pytest.mark.slow
def test_grpo_resume_after_sigkill_samples_and_trains_the_same(tmp_path, prompts_file):
    """A GRPO run killed after a checkpoint and resumed ends with the uninterrupted run's adapter:
    the sampling RNG comes back with the checkpoint."""
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    import llmkit

    over = [*_grpo_overrides(tmp_path, prompts_file, steps=6), "train.save_every=2"]
    ref = llmkit.train("tiny", [*over, f"train.output_dir={tmp_path / 'ref'}"])
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "llmkit", "train", "tiny", *over, f"train.output_dir={out}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoints" / "step-000002" / "state.json").exists():
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "adapter").exists()
    resumed = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    a, b = (
        load_file(ref / "adapter" / "adapter_model.safetensors"),
        load_file(out / "adapter" / "adapter_model.safetensors"),
    )
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


def test_grpo_reward_exception_stops_with_prompt_function_and_line(tmp_path, prompts_file):
    import llmkit

    (tmp_path / "mine.py").write_text("def score(completions, rows):\n    raise ValueError('bad score')\n")
    over = [o for o in _grpo_overrides(tmp_path, prompts_file) if not o.startswith("grpo.rewards")]
    over += [f"grpo.rewards=[{{name: {tmp_path / 'mine.py'}:score}}]", "train.max_steps=1"]
    with pytest.raises(LlmkitError) as err:
        llmkit.train("tiny", [*over, f"train.output_dir={tmp_path / 'x'}"])
    msg = err.value.message
    assert "score" in msg and "Say something about the number" in msg and "ValueError: bad score" in msg
    assert not (tmp_path / "x" / "adapter").exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["train.method=grpo"], "grpo: train.method is grpo, so the recipe needs a grpo section"),
        (["dpo.beta=0.2"], "dpo: this section is for train.method=dpo, but train.method is sft"),
        (["train.method=grpo", "grpo.rewards=[length]", "grpo.num_generations=1"], "grpo.num_generations: Value error, must be 2 or more"),
        (["train.method=dpo", "dpo.loss=kto"], "dpo.loss: Input should be"),
        (["train.method=rl"], "train.method: Input should be"),
    ],
)  # fmt: skip
def test_method_sections_are_checked_with_the_recipe(overrides, expected):
    from llmkit.recipe import load

    with pytest.raises(RecipeError) as err:
        load("tiny", overrides)
    assert expected in err.value.message


@pytest.mark.parametrize(
    ("rows", "expected"),
    [
        ([{"prompt": "q", "chosen": "a"}], "row 1: preference row without 'rejected'"),
        (
            [{"prompt": "q", "chosen": "same", "rejected": "same"}],
            "row 1: 'chosen' and 'rejected' are the same",
        ),
        ([{"prompt": "q", "chosen": " ", "rejected": "b"}], "row 1: 'chosen' is empty"),
    ],
)
def test_bad_preference_rows_are_one_line_errors_naming_the_row(rows, expected, tmp_path, tiny_llama_dir):
    from transformers import AutoTokenizer

    from llmkit.errors import DataError
    from llmkit.methods import pairs
    from llmkit.recipe import load

    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    recipe = load("tiny", [f"data.path={path}", "train.method=dpo"])
    with pytest.raises(DataError) as err:
        pairs.prepare(recipe, AutoTokenizer.from_pretrained(tiny_llama_dir), 0)
    assert expected in err.value.message and str(path) in err.value.message


def test_grpo_row_missing_a_field_its_reward_reads(tmp_path, tiny_llama_dir):
    from transformers import AutoTokenizer

    from llmkit.methods import grpo
    from llmkit.recipe import load

    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": "1+1?", "answer": "2"}, {"prompt": "2+2?"}])
    recipe = load("tiny", [f"data.path={path}", "train.method=grpo", "grpo.rewards=[exact_answer]"])
    with pytest.raises(RecipeError, match="row 2: no field 'answer'"):
        grpo.prepare(recipe, AutoTokenizer.from_pretrained(tiny_llama_dir), 0)


def test_conversational_and_implicit_prompt_pairs_tokenise_like_plain_ones(tmp_path, tiny_llama_dir):
    from transformers import AutoTokenizer

    from llmkit.methods import pairs
    from llmkit.recipe import load

    q, c, r = PAIRS[0]
    rows = [
        {"prompt": q, "chosen": c, "rejected": r},
        {"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": c}],
         "rejected": [{"role": "assistant", "content": r}]},
        {"chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": c}],
         "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": r}]},
    ]  # fmt: skip
    path = _write_jsonl(tmp_path / "forms.jsonl", rows)
    recipe = load("tiny", [f"data.path={path}", "train.method=dpo", "data.eval_fraction=0"])
    ds = pairs.prepare(recipe, AutoTokenizer.from_pretrained(tiny_llama_dir), 0)
    assert len(ds.train) == 3
    assert ds.train[0].ids == ds.train[1].ids == ds.train[2].ids
    assert ds.train[0].labels == ds.train[1].labels == ds.train[2].labels


@pytest.mark.parametrize("name", ["smollm2-135m-dpo", "smollm2-135m-grpo"])
def test_plan_lays_out_the_shipped_preference_and_reward_recipes(name):
    from llmkit.plan import plan
    from llmkit.recipe import load

    recipe = load(name)
    result = plan(recipe, device="cpu", memory="8GB")
    assert result.steps == recipe.train.max_steps and result.seconds_total > 0 and result.fits
    assert result.tokens_per_epoch > 0
