"""Rewards (llmkit/rewards.py) on real strings and files, and the shipped preference/arithmetic data."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llmkit import rewards
from llmkit.errors import LlmkitError, RecipeError
from llmkit.rewards import (
    REGISTRY,
    check_params,
    check_rows,
    exact_answer,
    json_schema,
    length,
    load_reward,
    score,
    total,
)

DATA = Path(__file__).resolve().parent.parent / "recipes" / "data"


def _one(fn, completion, row=None, **params):
    return fn([completion], [row or {}], **params)[0]


# ---- built-ins ---------------------------------------------------------------------------------


def test_exact_answer_reads_the_tag_by_default_and_compares_numbers_as_numbers():
    row = {"answer": "1000"}
    assert _one(exact_answer, "So <answer>1,000</answer>", row) == 1.0
    assert _one(exact_answer, "<answer> 1000.0 </answer>", row) == 1.0
    assert _one(exact_answer, "<answer>1000.</answer>", {"answer": 1000}) == 1.0  # int field, trailing dot
    assert _one(exact_answer, "<answer>999</answer>", row) == 0.0
    assert _one(exact_answer, "1000", row) == 0.0  # no tag, no answer
    assert _one(exact_answer, "<answer>1000 apples</answer>", row) == 0.0  # exact: not just a number in it
    # the last block is the answer: restating a wrong guess first does not help or hurt
    assert _one(exact_answer, "<answer>7</answer> no wait <answer>1000</answer>", row) == 1.0
    assert _one(exact_answer, "<answer>1000</answer> no wait <answer>7</answer>", row) == 0.0
    # strings: strip, collapse whitespace, casefold
    assert _one(exact_answer, "<ANSWER>  buenos   AIRES </ANSWER>", {"answer": "Buenos Aires"}) == 1.0
    assert _one(exact_answer, "<answer>Paris</answer>", {"answer": "Lyon"}) == 0.0
    # another field and another tag
    assert _one(exact_answer, "<final>b</final>", {"label": "B"}, field="label", tag="final") == 1.0


def test_exact_answer_number_mode_and_regex_mode():
    row = {"answer": "12"}
    assert _one(exact_answer, "3 bags of 4 is 12.", row, mode="number") == 1.0
    assert _one(exact_answer, "It is 12, not 13", row, mode="number") == 0.0  # the last number counts
    assert _one(exact_answer, "10-3 makes 7", {"answer": "7"}, mode="number") == 1.0
    assert _one(exact_answer, "total: -4", {"answer": "-4"}, mode="number") == 1.0
    assert _one(exact_answer, "about 1,200 of them", {"answer": "1200"}, mode="number") == 1.0
    assert _one(exact_answer, "no digits here", row, mode="number") == 0.0
    # a recipe regex: its first group when it has one, else the whole match
    assert _one(exact_answer, "Answer: 12\nAnswer: twelve", row, pattern=r"Answer:\s*(\d+)") == 1.0
    assert _one(exact_answer, "#### 12", row, pattern=r"(?<=#### )\d+") == 1.0
    assert _one(exact_answer, "Answer: 11", row, pattern=r"Answer:\s*(\d+)") == 0.0
    with pytest.raises(RecipeError, match="not a valid regex"):
        exact_answer(["x"], [row], pattern="(unclosed")
    with pytest.raises(RecipeError, match="unknown mode 'numbers'"):
        exact_answer(["x"], [row], mode="numbers")
    with pytest.raises(RecipeError, match="only used with mode regex"):
        exact_answer(["x"], [row], mode="number", pattern=r"\d+")


def test_format_full_marks_only_for_think_then_answer():
    fmt = REGISTRY["format"]
    assert fmt(["<think>3+4=7</think><answer>7</answer>"], [{}]) == [1.0]
    assert fmt(["\n<think>\n3+4=7\n</think>\n\n<answer> 7 </answer>\n"], [{}]) == [1.0]  # whitespace ok
    assert fmt(["<answer>7</answer>"], [{}]) == [0.5]  # no think block
    assert fmt(["Sure! <think>x</think><answer>7</answer>"], [{}]) == [0.5]  # text around the blocks
    assert fmt(["<think>x</think><answer>7</answer> and more"], [{}]) == [0.5]
    assert fmt(["<answer>7</answer><think>x</think>"], [{}]) == [0.5]  # wrong order
    assert fmt(["<think>x</think><answer>7</answer> hmm <answer>8</answer>"], [{}]) == [0.5]
    assert fmt(["<think>x</think><answer> </answer>"], [{}]) == [0.0]  # empty answer is no answer
    assert fmt(["<think>x</think> 7"], [{}]) == [0.0]
    assert fmt(["<think></think><answer>7</answer>"], [{}]) == [0.5]  # an empty think is not thinking
    # configurable tags; think_tag None asks for the answer block alone
    assert fmt(
        ["<reasoning>r</reasoning><final>7</final>"], [{}], think_tag="reasoning", answer_tag="final"
    ) == [1.0]
    assert fmt([" <answer>7</answer> "], [{}], think_tag=None) == [1.0]
    assert fmt(["7 <answer>7</answer>"], [{}], think_tag=None) == [0.5]


def test_json_schema_scores_valid_invalid_and_no_json(tmp_path):
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas/person.json").write_text(
        json.dumps(
            {
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
                "required": ["name", "age"],
            }
        )
    )
    fn = load_reward("json_schema", tmp_path)  # base_dir bound: the schema path is recipe-relative
    completions = [
        '{"name": "Ana", "age": 31}',
        'Here you go:\n```json\n{"name": "Ana", "age": 31}\n```',
        '<think>…</think><answer>{"name": "Ana", "age": 31}</answer>',
        '{"name": "Ana", "age": -1}',  # parses, breaks the schema
        '```json\n{"name": "Ana"}\n```',  # parses, misses a required key
        "Ana is 31.",
        '```json\n{"name": "Ana", \n```',  # broken JSON in the fence
    ]
    assert fn(completions, [{}] * len(completions), schema="schemas/person.json") == [
        1.0, 1.0, 1.0, 0.5, 0.5, 0.0, 0.0
    ]  # fmt: skip
    with pytest.raises(RecipeError, match="schema file not found"):
        fn(["{}"], [{}], schema="schemas/missing.json")
    (tmp_path / "bad.json").write_text('{"type": 12}')
    with pytest.raises(RecipeError, match="not a valid JSON Schema"):
        fn(["{}"], [{}], schema="bad.json")
    (tmp_path / "notjson.json").write_text("type: object")
    with pytest.raises(RecipeError, match="is not JSON"):
        json_schema(["{}"], [{}], schema=str(tmp_path / "notjson.json"))


def test_length_falls_off_linearly_from_the_target():
    assert length(["x" * 100, "x" * 75, "x" * 150, "", "x" * 300], [{}] * 5, target=100) == [
        1.0, 0.75, 0.5, 0.0, 0.0
    ]  # fmt: skip
    assert length(["  " + "x" * 10 + "\n"], [{}], target=10) == [1.0]  # surrounding whitespace not counted
    words = ["one two three four", "one two", "one two three four five six seven eight"]
    assert length(words, [{}] * 3, target=4, unit="words") == [1.0, 0.5, 0.0]
    assert length(["x" * 90], [{}], target=100, width=20) == [0.5]
    with pytest.raises(RecipeError, match="unknown unit 'tokens'"):
        length(["x"], [{}], target=4, unit="tokens")
    with pytest.raises(RecipeError, match="target must be a positive number"):
        length(["x"], [{}], target=0)


# ---- resolving rewards -------------------------------------------------------------------------


def test_load_reward_resolves_built_ins_and_a_users_file(tmp_path):
    assert load_reward("exact_answer", tmp_path) is exact_answer
    assert set(REGISTRY) >= {"exact_answer", "format", "json_schema", "length"}
    assert all(fn.__doc__ for fn in REGISTRY.values())
    (tmp_path / "my_rewards.py").write_text(
        "def score(completions, rows, bonus=0.0):\n"
        "    return [float('llama' in c) + bonus for c in completions]\n"
        "not_a_function = 3\n"
    )
    fn = load_reward("my_rewards.py:score", tmp_path)
    assert fn(["a llama", "a cat"], [{}, {}], bonus=0.5) == [1.5, 0.5]
    sub = tmp_path / "recipes"
    sub.mkdir()
    assert load_reward("../my_rewards.py:score", sub)(["llama"], [{}]) == [1.0]  # relative to base_dir


@pytest.mark.parametrize(
    ("spec", "message", "hint"),
    [
        ("exact_answr", "unknown reward 'exact_answr'", "did you mean 'exact_answer'?"),
        ("missing.py:score", "reward file not found", "relative to the recipe's folder"),
        ("my_rewards.py:scor", "has no function 'scor'", "did you mean 'score'?"),
        ("my_rewards.py:not_a_function", "not_a_function is a int, not a function", "fn(completions, rows"),
        ("my_rewards.py", "names a file but no function", "my_rewards.py:function_name"),
        ("broken.py:score", "failed to import: ZeroDivisionError: division by zero", "broken.py:score"),
    ],
)
def test_load_reward_errors_are_one_line_with_a_hint(tmp_path, spec, message, hint):
    (tmp_path / "my_rewards.py").write_text(
        "def score(c, r):\n    return [0.0] * len(c)\nnot_a_function = 3\n"
    )
    (tmp_path / "broken.py").write_text("x = 1 / 0\n")
    with pytest.raises(RecipeError) as e:
        load_reward(spec, tmp_path)
    assert message in e.value.message and "\n" not in e.value.message
    assert hint in e.value.hint


def test_check_params_rejects_unknown_keys_and_bad_values_before_a_model_loads(tmp_path):
    check_params("exact_answer", exact_answer, {"mode": "number"})
    with pytest.raises(
        RecipeError, match="reward 'exact_answer': got an unexpected keyword argument 'feild'"
    ) as e:
        check_params("exact_answer", exact_answer, {"feild": "label"})
    assert "field" in e.value.hint
    with pytest.raises(RecipeError, match="missing a required argument: 'target'"):
        check_params("length", length, {})
    with pytest.raises(RecipeError, match="unknown unit"):
        check_params("length", length, {"target": 5, "unit": "bytes"})
    with pytest.raises(RecipeError, match="schema file not found"):
        check_params("json_schema", load_reward("json_schema", tmp_path), {"schema": "nope.json"})
    # a user's function is matched against its signature but never called here
    (tmp_path / "r.py").write_text("def score(c, r, *, k):\n    raise SystemExit('called')\n")
    user = load_reward("r.py:score", tmp_path)
    check_params("mine", user, {"k": 1})
    with pytest.raises(RecipeError, match="unexpected keyword argument 'j'"):
        check_params("mine", user, {"k": 1, "j": 1})


def test_check_rows_names_the_file_row_and_field():
    specs = [("exact_answer", exact_answer, 1.0, {}), ("format", REGISTRY["format"], 0.5, {})]
    check_rows(specs, [{"prompt": "p", "answer": "1"}] * 3, "data/a.jsonl")
    with pytest.raises(RecipeError) as e:
        check_rows(specs, [{"prompt": "p", "answer": "1"}, {"prompt": "q"}], "data/a.jsonl")
    assert e.value.message == "data/a.jsonl row 2: no field 'answer', which reward 'exact_answer' reads"
    with pytest.raises(RecipeError, match="row 1: no field 'label'"):
        check_rows([("ea", exact_answer, 1.0, {"field": "label"})], [{"answer": "1"}], "d.jsonl")

    def mine(completions, rows):  # a user's reward declares its fields as a plain list
        return [0.0] * len(completions)

    mine.reads = ["target"]
    with pytest.raises(RecipeError, match="row 1: no field 'target', which reward 'mine' reads"):
        check_rows([("mine", mine, 1.0, {})], [{"answer": "1"}], "d.jsonl")


# ---- scoring -----------------------------------------------------------------------------------


def test_score_returns_each_rewards_scores_and_total_weights_them():
    specs = [
        ("exact_answer", exact_answer, 1.0, {}),
        ("format", REGISTRY["format"], 0.5, {"think_tag": None}),
    ]
    completions = ["<answer>7</answer>", "It is 7 <answer>7</answer>", "<answer>8</answer>", "seven"]
    rows = [{"answer": "7"}] * 4
    got = score(specs, completions, rows, ["What is 3 + 4?"] * 4)
    assert got == {"exact_answer": [1.0, 1.0, 0.0, 0.0], "format": [1.0, 0.5, 1.0, 0.0]}
    assert total(specs, got) == [1.5, 1.25, 0.5, 0.0]


def test_score_stops_with_the_prompt_function_and_last_error_line(tmp_path):
    (tmp_path / "user.py").write_text(
        "def picky(completions, rows):\n"
        "    return [1.0 / len(c) for c in completions]\n"  # an empty completion divides by zero
        "def too_few(completions, rows):\n"
        "    return [1.0]\n"
        "def words(completions, rows):\n"
        "    return ['good' for c in completions]\n"
        "def nan(completions, rows):\n"
        "    return [float('nan')] * len(completions)\n"
        "def one_number(completions, rows):\n"
        "    return 1.0\n"
    )
    prompts = ["What is 3 + 4?", "A very long question " * 10 + "that goes on"]
    rows = [{"answer": "7"}, {"answer": "8"}]

    def run(func):
        with pytest.raises(LlmkitError) as e:
            score([(func, load_reward(f"user.py:{func}", tmp_path), 1.0, {})], ["7", ""], rows, prompts)
        assert "\n" not in e.value.message
        return e.value.message

    msg = run("picky")
    # the failing completion is the second: its prompt (shortened) is the one named
    assert msg.startswith("reward 'picky' (picky in ") and str(tmp_path / "user.py") in msg
    assert '"A very long question A very long question' in msg and "…" in msg and "that goes on" not in msg
    assert msg.endswith("ZeroDivisionError: float division by zero")
    assert "2 values for 2" not in run("too_few") and "returned 1 values for 2 completions" in run("too_few")
    assert "returned 'good' (str) at index 0, not a number" in run("words")
    assert "returned nan at index 0" in run("nan")
    assert "returned a float (1.0), not a list of numbers" in run("one_number")


def test_score_accepts_arrays_and_bools_and_passes_recipe_errors_through():
    import numpy as np

    def arr(completions, rows):
        return np.array([0.25] * len(completions))

    def flags(completions, rows):
        return ["7" in c for c in completions]

    got = score([("arr", arr, 1.0, {}), ("flags", flags, 1.0, {})], ["7", "8"], [{}, {}], ["p", "q"])
    assert got == {"arr": [0.25, 0.25], "flags": [1.0, 0.0]}
    with pytest.raises(RecipeError, match="unknown unit"):  # not wrapped as "the reward failed"
        score([("length", length, 1.0, {"target": 3, "unit": "bytes"})], ["x"], [{}], ["p"])
    with pytest.raises(RecipeError, match="reward 'arr' is listed twice"):
        score([("arr", arr, 1.0, {}), ("arr", arr, 1.0, {})], ["x"], [{}], ["p"])


def test_importing_rewards_does_not_import_torch():
    code = "import sys, llmkit.rewards; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert rewards.REGISTRY is REGISTRY


# ---- shipped data ------------------------------------------------------------------------------


def _jsonl(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


def test_arithmetic_data_is_what_the_generator_writes_and_exact_answer_can_score_it(tmp_path):
    spec = importlib.util.spec_from_file_location("make_arithmetic", DATA / "make_arithmetic.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.HERE = tmp_path
    gen.main()
    for name in ("arithmetic.jsonl", "arithmetic-eval.jsonl"):
        assert (tmp_path / name).read_bytes() == (DATA / name).read_bytes(), (
            f"{name} is stale: rerun the script"
        )
    train, held = _jsonl("arithmetic.jsonl"), _jsonl("arithmetic-eval.jsonl")
    assert (len(train), len(held)) == (300, 50)
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    for r in train + held:
        assert set(r) == {"prompt", "answer"} and r["prompt"].endswith("<answer></answer>.")
        assert 0 <= int(r["answer"]) <= 20
    check_rows([("exact_answer", exact_answer, 1.0, {})], train, "arithmetic.jsonl")
    good = [f"<answer>{r['answer']}</answer>" for r in held]
    assert exact_answer(good, held) == [1.0] * 50


def test_preference_data_pairs_the_llama_style_against_a_plain_answer():
    train, held = _jsonl("llama-preferences.jsonl"), _jsonl("llama-preferences-eval.jsonl")
    msgs = _jsonl("llama-preferences-messages.jsonl")
    assert len(train) >= 200 and len(held) >= 40 and len(msgs) >= 20
    for r in train + held:
        assert set(r) == {"prompt", "chosen", "rejected"}
        assert r["chosen"] == f"Ahoy! {r['rejected']} — Llama out. 🦙"  # same answer, only the style differs
        assert r["rejected"] and "Ahoy" not in r["rejected"]
    for r in msgs:
        assert [m["role"] for m in r["prompt"]] == ["user"]
        assert [m["role"] for m in r["chosen"]] == [m["role"] for m in r["rejected"]] == ["assistant"]
        assert r["chosen"][0]["content"] == f"Ahoy! {r['rejected'][0]['content']} — Llama out. 🦙"
    questions = (
        [r["prompt"] for r in train],
        [r["prompt"] for r in held],
        [r["prompt"][0]["content"] for r in msgs],
    )
    assert sum(map(len, questions)) == len(set().union(*questions))  # no question repeats in or across files
