"""Data pipeline: formats, answers-only label mask, dropped-row accounting, packing."""

from __future__ import annotations

import csv
import json

import pytest

from llmkit import data
from llmkit.errors import DataError
from llmkit.recipe import load

CONVO = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
]


@pytest.fixture(scope="module")
def llama_tok(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


@pytest.fixture(scope="module")
def qwen_tok(tiny_qwen2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_qwen2_dir)


def _recipe(tmp_path, rows, **data_keys):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load(
        {"model": {"name": "tiny-llama"}, "data": {"path": str(path), "eval_fraction": 0, **data_keys}}
    )


def _trained_mask_by_text(tok, ex, answers: list[str]) -> list[bool]:
    """Independent oracle: locate each answer in the decoded text; a token is trained iff it lies inside one."""
    pieces = [tok.decode([i]) for i in ex.ids]
    text = "".join(pieces)
    spans, start = [], 0
    for a in answers:
        at = text.index(a, start)
        spans.append((at, at + len(a)))
        start = at + len(a)
    mask, pos = [], 0
    for p in pieces:
        mask.append(any(s <= pos and pos + len(p) <= e for s, e in spans))
        pos += len(p)
    return mask


@pytest.mark.parametrize("which,eot", [("llama_tok", "<|eot_id|>"), ("qwen_tok", "<|im_end|>")])
def test_label_mask_token_by_token(request, which, eot):
    tok = request.getfixturevalue(which)
    ex = data.tokenize_row({"messages": CONVO}, "messages", tok, max_length=512)
    expected = _trained_mask_by_text(tok, ex, ["Hello!" + eot, "4." + eot])
    got = [label != data.IGNORE for label in ex.labels]
    assert got == expected
    assert all(label in (data.IGNORE, i) for i, label in zip(ex.ids, ex.labels, strict=True))
    trained = tok.decode([i for i, label in zip(ex.ids, ex.labels, strict=True) if label != data.IGNORE])
    assert trained == f"Hello!{eot}4.{eot}"  # answers and their end-of-turn token, nothing else
    # the prompt tokens are exactly what the model sees at inference for the first question
    prompt = tok.apply_chat_template(CONVO[:1], tokenize=False, add_generation_prompt=True)
    first = tok(prompt, add_special_tokens=False).input_ids
    assert ex.ids[: len(first)] == first


def test_train_on_all_labels_everything_but_the_first_token(llama_tok):
    ex = data.tokenize_row({"messages": CONVO}, "messages", llama_tok, max_length=512, train_on="all")
    assert ex.labels[0] == data.IGNORE and ex.labels[1:] == ex.ids[1:]


def test_formats_agree_and_are_detected(tmp_path, llama_tok):
    rows = {
        "messages": {"messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}]},
        "sharegpt": {"conversations": [{"from": "human", "value": "Q?"}, {"from": "gpt", "value": "A."}]},
        "alpaca": {"instruction": "Q?", "input": "", "output": "A."},
    }
    made = {}
    for name, row in rows.items():
        fmt = data.detect_format([row], "auto", name)
        made[name] = data.tokenize_row(row, fmt, llama_tok, max_length=64)
    assert made["messages"] == made["sharegpt"] == made["alpaca"]
    pc = data.tokenize_row(
        {"prompt": "Q? ", "completion": "A."}, "prompt_completion", llama_tok, max_length=64
    )
    assert llama_tok.decode([i for i in pc.labels if i != data.IGNORE]) == "A.<|eot_id|>"
    txt = data.tokenize_row(
        {"text": "plain words"}, data.detect_format([{"text": "x"}], "auto", "t"), llama_tok, max_length=64
    )
    assert txt.ids[-1] == llama_tok.eos_token_id and txt.labels[1:] == txt.ids[1:]


def test_file_types_read_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"instruction": f"q{i}", "output": f"a{i}"} for i in range(3)]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    with open(tmp_path / "d.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, ["instruction", "output"])
        w.writeheader()
        w.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    for ext in ("jsonl", "json", "csv", "parquet"):
        assert data.read_rows(tmp_path / f"d.{ext}") == rows
    (tmp_path / "d.txt").write_text("first para\nline two\n\n\nsecond\n")
    assert data.read_rows(tmp_path / "d.txt", sample_by="paragraph") == [
        {"text": "first para\nline two"},
        {"text": "second"},
    ]


def test_txt_is_a_row_per_line_by_default_in_train_and_embed(tmp_path, llama_tok):
    from llmkit.readers import read_rows

    (tmp_path / "d.txt").write_text("first para\nline two\n\n\nsecond\n")
    lines = ["first para", "line two", "second"]
    assert data.read_rows(tmp_path / "d.txt") == [{"text": t} for t in lines]
    assert [row.text for row in read_rows(tmp_path / "d.txt")] == lines
    recipe = load(
        {"model": {"name": "tiny-llama"}, "data": {"path": str(tmp_path / "d.txt"), "eval_fraction": 0}}
    )
    ds = data.prepare(recipe, llama_tok)
    assert (ds.format, ds.rows, len(ds.train)) == ("text", 3, 3)
    recipe = load(
        {
            "model": {"name": "tiny-llama"},
            "data": {"path": str(tmp_path / "d.txt"), "eval_fraction": 0, "sample_by": "paragraph"},
        }
    )
    assert data.prepare(recipe, llama_tok).rows == 2


def test_dropped_rows_are_counted_per_reason(tmp_path, llama_tok):
    good = {"instruction": "Q?", "output": "A."}
    rows = [
        good,
        good,
        {"instruction": "Q?"},
        {"instruction": "Q?", "output": "  "},
        {"instruction": "long " * 200, "output": "A."},
        {"instruction": None, "output": "A."},
    ]
    ds = data.prepare(_recipe(tmp_path, rows, max_length=64), llama_tok)
    assert len(ds.train) == 2
    assert ds.dropped == {
        "missing 'output'": 1,
        "empty answer": 1,
        "longer than max_length (64 tokens)": 1,
        "missing 'instruction'": 1,
    }
    assert ds.report()["dropped"]["empty answer"] == 1


def test_nothing_trainable_is_an_error(tmp_path, llama_tok):
    rows = [{"instruction": "long " * 200, "output": "A."}, {"instruction": "Q", "output": ""}]
    with pytest.raises(DataError, match=r"no trainable examples \(2 rows; dropped: 1 longer than max_length"):
        data.prepare(_recipe(tmp_path, rows, max_length=64), llama_tok)


def test_missing_column_names_file_row_and_column(tmp_path, llama_tok):
    rows = [{"instruction": "Q?", "answer": "A."}]
    with pytest.raises(DataError, match=r"d\.jsonl row 1: column 'output' is missing \(format alpaca"):
        data.prepare(_recipe(tmp_path, rows, format="alpaca"), llama_tok)
    with pytest.raises(DataError, match=r"row 1: cannot tell the data format"):
        data.prepare(_recipe(tmp_path, rows), llama_tok)


def test_missing_dataset_file(tmp_path, llama_tok):
    recipe = load({"model": {"name": "tiny-llama"}, "data": {"path": str(tmp_path / "nope.jsonl")}})
    with pytest.raises(DataError, match="dataset file not found"):
        data.prepare(recipe, llama_tok)


def test_empty_data_says_so_not_that_its_columns_are_unknown(tmp_path, llama_tok):
    (tmp_path / "d.jsonl").write_text("\n \n")
    recipe = load({"model": {"name": "tiny-llama"}, "data": {"path": str(tmp_path / "d.jsonl")}})
    with pytest.raises(DataError, match=r"d\.jsonl is empty \(no rows\)") as err:
        data.prepare(recipe, llama_tok)
    assert err.value.hint
    with pytest.raises(DataError, match=r"owner/set is empty \(no rows\)"):  # an empty Hub split
        data.detect_format([], "auto", "owner/set")


def test_a_hub_name_without_prefix_loads_with_datasets(monkeypatch, tmp_path):
    import datasets

    calls = []

    def load_dataset(name, config=None, split=None):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"text": ["a", "b"]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    assert data.read_rows("owner/set", config="c", split="test") == [{"text": "a"}, {"text": "b"}]
    assert calls == [("owner/set", "c", "test")]


def test_conversations_need_a_chat_template(tmp_path, tiny_llama_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tok.chat_template = None
    rows = [{"messages": CONVO}]
    with pytest.raises(DataError, match="has no chat template") as err:
        data.prepare(_recipe(tmp_path, rows), tok)
    assert "model.chat_template" in err.value.hint
    # alpaca still works without one (plain instruction/response layout)
    ds = data.prepare(_recipe(tmp_path, [{"instruction": "Q?", "output": "A."}]), tok)
    assert "### Response:" in tok.decode(ds.train[0].ids)


def test_packing_plan_uses_every_example_once_within_max_length():
    lengths = [5, 17, 30, 3, 64, 12, 40, 8, 22, 9, 50, 11]
    batches = data.plan_epoch(lengths, batch_size=2, max_length=64, packing=True, seed=1)
    rows = [row for b in batches for row in b]
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 64 for row in rows)
    assert len(rows) == 5  # 271 tokens in rows of 64: best-fit-decreasing needs the minimum
    assert data.plan_epoch(lengths, batch_size=2, max_length=64, packing=True, seed=1) == batches


def test_steps_are_random_draws_sorted_by_length_inside():
    """Without packing: each step is a random sample of the data (so no step is all-short or
    all-long), and inside a step similar lengths share a micro-batch, which cuts padding."""
    import random

    lengths = [random.Random(i).randint(5, 200) for i in range(512)]
    per_step, batch = 8, 8
    batches = data.plan_epoch(
        lengths, batch_size=batch, max_length=256, packing=False, seed=0, per_step=per_step
    )
    assert sorted(row[0] for b in batches for row in b) == list(range(512))
    mean = sum(lengths) / len(lengths)
    steps = [batches[k : k + per_step] for k in range(0, len(batches), per_step)]
    step_means = [sum(lengths[r[0]] for b in st for r in b) / sum(len(b) for b in st) for st in steps]
    assert all(0.7 * mean < m < 1.3 * mean for m in step_means), step_means
    padded = sum(len(b) * max(lengths[r[0]] for r in b) for b in batches)
    naive = sum(batch * max(lengths[i : i + batch]) for i in range(0, 512, batch))
    assert padded < 0.7 * naive


def test_packed_loss_equals_separate_loss(tiny_llama_dir, llama_tok):
    """Three examples in one row: same summed loss as each in its own row (no cross-attention)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmkit.methods.model import LossModel

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, dtype=torch.float32, attn_implementation="sdpa"
    )
    peft = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    )
    loss_model = LossModel(peft).eval()
    questions = [
        "What is the capital of France?",
        "Hello!",
        "Write an add function, please, with a docstring.",
    ]
    examples = [
        data.tokenize_row(
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]},
            "messages",
            llama_tok,
            max_length=256,
            train_on="all",
        )
        for q, a in zip(
            questions, ["Paris.", "Hi, how are you today?", "def add(a, b): return a + b"], strict=True
        )
    ]
    with torch.no_grad():
        packed = loss_model(**data.collate(examples, [[0, 1, 2]], pad_id=0))
        separate = sum(loss_model(**data.collate(examples, [[i]], pad_id=0)) for i in range(3))
        padded_batch = loss_model(**data.collate(examples, [[0], [1], [2]], pad_id=0))
        # and the packed rows of a batch with padding at the end
        mixed = loss_model(**data.collate(examples, [[2, 0], [1]], pad_id=0))
    assert torch.allclose(packed, separate, rtol=1e-5), (packed, separate)
    assert torch.allclose(padded_batch, separate, rtol=1e-5)
    assert torch.allclose(mixed, separate, rtol=1e-5)
