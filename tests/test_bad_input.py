"""Every user mistake gets a clear answer: one `Error:` line naming what was wrong and where, a
`hint:` line saying how to fix it, the right exit code (2 for an invalid argument or option
value, 1 for anything else), no traceback, and nothing half-written left behind.

One table over the real CLI (in-process: the parsing, the library and the error rendering are
all real; only the process boundary is skipped). The cases are kinds of mistake, each found by
a sweep of what new users type; where a mistake can be caught before a model loads, the table
also bounds the time it takes.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli_inprocess

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "recipes" / "tiny.yaml")


@pytest.fixture
def sandbox(tmp_path, monkeypatch, smollm2_gguf) -> Path:
    """A working directory holding one of each broken input."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a regular file, in the way of a directory\n")
    (tmp_path / "texts.txt").write_text("hello\nworld\n")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1" + bytes(range(256)) * 4)
    (tmp_path / "numbers.json").write_text("[1, 2, 3]\n")
    good = json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    )
    (tmp_path / "badline.jsonl").write_text(good + "\n{not json\n" + good + "\n")
    (tmp_path / "latin1.jsonl").write_bytes((good[:-2] + ' café"}]}\n').encode("latin-1"))
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "random.npy").write_bytes(np.random.default_rng(0).bytes(4096))
    pq.write_table(pa.table({"x": [1]}), tmp_path / "plain.parquet")
    with open(smollm2_gguf, "rb") as src:  # a real GGUF cut short, as an interrupted copy leaves it
        (tmp_path / "truncated.gguf").write_bytes(src.read(300_000))
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "weights.txt").write_text("no config.json here\n")
    run = tmp_path / "runs" / "unfinished"  # a run that never wrote its adapter
    run.mkdir(parents=True)
    shutil.copy(REPO / "recipes" / "tiny.yaml", run / "recipe.yaml")
    return tmp_path


def train_on(data: str) -> tuple[str, ...]:
    """`llmkit train` on a data file of the sandbox (@/ is the sandbox; the recipe is elsewhere)."""
    return ("train", TINY, f"data.path=@/{data}", "train.output_dir=out-run", "train.max_steps=1")


# (case id, argv, exit code, words the one-line error must contain, seconds it may take at most)
# The time bound is the contract "checked before heavy work": generous for slow machines, far
# below what loading and running a model takes.
CASES = [
    # --- invalid option values: usage errors (exit 2), before anything loads
    ("gguf-type", ("export", "tiny-llama", "--gguf", "q3_k"), 2, ["--gguf q3_k", "unknown GGUF type"], 15),
    (
        "ollama-quantize",
        ("export", "tiny-llama", "--quantize", "q9"),
        2,
        ["Ollama cannot quantize to 'q9'"],
        15,
    ),
    (
        "ollama-name",
        ("export", "tiny-llama", "--ollama", "Bad Name!"),
        2,
        ["not a valid Ollama model name"],
        15,
    ),
    (
        "template-file",
        ("export", "tiny-llama", "--template", "missing.tmpl"),
        2,
        ["missing.tmpl", "no such file"],
        15,
    ),
    (
        "embed-backend",
        ("embed", "texts.txt", "-o", "v.parquet", "--backend", "foo"),
        2,
        ["unknown backend 'foo'"],
        15,
    ),
    ("embed-suffix", ("embed", "texts.txt", "-o", "v.csv"), 2, [".parquet or .npy"], 15),
    ("cluster-k", ("cluster", "v.parquet", "-k", "0"), 2, ["-k must be at least 2"], 15),
    ("similar-k", ("similar", "hi", "-k", "0", "--index", "v.parquet"), 2, ["-k must be at least 1"], 15),
    (
        "chat-max-new-tokens",
        ("chat", "tiny-llama", "hi", "--max-new-tokens", "-1"),
        2,
        ["--max-new-tokens"],
        15,
    ),
    ("chat-empty-prompt", ("chat", "tiny-llama", "   "), 2, ["empty"], 15),
    ("pull-empty", ("pull", ""), 2, ["empty"], 15),
    ("plan-device", ("plan", "tiny", "--device", "tpu"), 2, ["--device tpu"], 15),
    ("plan-memory", ("plan", "tiny", "--memory", "lots"), 2, ["--memory lots"], 15),
    ("ollama-option", ("ollama", "run", "m", "hi", "-o", "temperature"), 2, ["KEY=VALUE"], 15),
    # --- outputs that cannot be written (exit 1), before any model loads
    ("export-under-file", ("export", "tiny-llama", "-o", "afile/out"), 1, ["afile", "not a directory"], 15),
    (
        "embed-under-file",
        ("embed", "texts.txt", "-o", "afile/v.parquet"),
        1,
        ["afile", "not a directory"],
        15,
    ),
    ("recipes-copy-under-file", ("recipes", "copy", "tiny", "afile/tiny.yaml"), 1, ["afile"], 15),
    # --- data that cannot be used: named with its place and a fix
    ("corrupt-parquet", train_on("corrupt.parquet"), 1, ["corrupt.parquet", "Parquet"], 60),
    ("json-not-objects", train_on("numbers.json"), 1, ["numbers.json", "not of objects"], 60),
    ("jsonl-bad-line", train_on("badline.jsonl"), 1, ["badline.jsonl", "line 2"], 60),
    ("not-utf8", train_on("latin1.jsonl"), 1, ["latin1.jsonl", "UTF-8"], 60),
    ("empty-data", train_on("empty.jsonl"), 1, ["empty.jsonl", "is empty"], 60),
    (
        "random-npy-index",
        ("similar", "hi", "--index", "random.npy"),
        1,
        ["random.npy", "not a .npy file"],
        15,
    ),
    # --- model references that are not what they look like
    ("missing-run-dir", ("chat", "runs/nope", "hi"), 1, ["runs/nope"], 15),
    ("train-missing-model", ("train", TINY, "model.name=runs/nope"), 1, ["no such directory: runs/nope"], 10),
    (
        "plan-unknown-model",
        ("plan", TINY, "model.name=no-such-model"),
        1,
        ["unknown model 'no-such-model'"],
        10,
    ),
    ("dir-without-config", ("pull", "notamodel"), 1, ["notamodel", "config.json"], 15),
    ("truncated-gguf", ("pull", "truncated.gguf"), 1, ["truncated.gguf", "truncated"], 30),
    ("run-without-adapter", ("chat", "runs/unfinished", "hi"), 1, ["runs/unfinished", "adapter"], 30),
]


@pytest.mark.parametrize(
    ("argv", "code", "words", "seconds"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_a_mistake_gets_one_clear_line(sandbox, capsys, argv, code, words, seconds):
    before = sorted(p.relative_to(sandbox) for p in sandbox.rglob("*"))
    start = time.perf_counter()
    got, out, err = run_cli_inprocess(capsys, *(a.replace("@/", f"{sandbox}/") for a in argv))
    took = time.perf_counter() - start
    lines = err.strip().splitlines()
    assert got == code, err
    assert "Traceback" not in err
    assert lines[0].startswith("Error: "), err
    assert all(w in lines[0] for w in words), (words, lines[0])
    assert any(ln.strip().startswith("hint: ") for ln in lines[1:]), err
    assert "rerun with --debug" not in err  # the unexpected-exception fallback is for bugs only
    assert took < seconds, f"{took:.1f}s: checked after heavy work"
    after = sorted(p.relative_to(sandbox) for p in sandbox.rglob("*"))
    assert after == before, "left files behind"


def test_a_failed_embed_leaves_no_work_dir(sandbox, capsys):
    """A job that fails before its first commit has nothing to resume: no .OUT.llmkit-job/."""
    got, _, err = run_cli_inprocess(
        capsys, "embed", "texts.txt", "-o", "v.parquet", "--model", str(sandbox / "nope")
    )
    assert got == 1, err
    assert not list(sandbox.glob(".v.parquet*")), list(sandbox.iterdir())
