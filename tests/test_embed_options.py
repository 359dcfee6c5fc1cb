"""One owner for each embedding choice: every value the embedding recipe accepts reaches the code
that consumes it (the encoders, the readers), the job's options are one object, the input is
opened once, and a recipe run refuses the flags it would otherwise ignore."""

from __future__ import annotations

from itertools import product
from pathlib import Path
from typing import get_args

import pytest
from conftest import run_cli_inprocess as cli

from llmkit.embedding.choices import BACKENDS, DEFAULT_MODEL, PRECISIONS
from llmkit.embedding.schema import EmbedRecipe
from llmkit.errors import LlmkitError
from llmkit.readers import SAMPLE_BY

REPO = Path(__file__).resolve().parent.parent


def _recipe(encoder: dict, embed: dict | None = None):
    from llmkit.embedding.recipe import load

    return load(
        {"name": "t", "encoder": encoder, "embed": {"input": "a.txt", "output": "v.parquet", **(embed or {})}}
    )


def _accepted(section, name: str) -> tuple:
    return get_args(EmbedRecipe.model_fields[section].annotation.model_fields[name].annotation)


def test_the_recipe_takes_exactly_the_encoders_and_readers_choices():
    assert _accepted("encoder", "backend") == BACKENDS
    assert _accepted("encoder", "precision") == PRECISIONS
    assert _accepted("embed", "sample_by") == SAMPLE_BY
    assert EmbedRecipe.model_fields["encoder"].default.model == DEFAULT_MODEL
    recipe = _recipe({"backend": "cuda", "precision": "fp16"}, {"split": "test", "keep_text": False})
    opts = recipe.job_options()  # the recipe's sections are the job's options, field for field
    assert (opts.backend, opts.precision, opts.split, opts.keep_text) == ("cuda", "fp16", "test", False)


def test_every_backend_and_precision_the_recipe_accepts_builds_or_says_why_in_one_line():
    from llmkit.devices import accelerator
    from llmkit.embedding.encoders import load_encoder

    built, refused = {}, {}
    for backend, precision in product(BACKENDS, PRECISIONS):
        opts = _recipe({"backend": backend, "precision": precision}, {"chunk": True}).job_options()
        try:
            enc = load_encoder(**opts.encoder())
        except LlmkitError as exc:  # anything else (KeyError, TypeError ...) fails the test
            assert "\n" not in exc.message and exc.hint, (backend, precision, exc.message)
            refused[backend, precision] = exc.message
            continue
        assert enc.chunk_long, (backend, precision)  # chunking is a constructor option, not patched on
        if backend not in ("auto", "ollama"):
            assert enc.backend == backend, (backend, precision, enc.backend)
        if (
            backend != "ollama"
            and precision not in ("auto", "fast")
            and (backend, precision) != ("auto", "int8")
        ):
            assert enc.precision == precision, (backend, precision, enc.precision)
        built[backend, precision] = enc.info()
    # the paths this machine has are all reachable from a recipe
    for path in [("torch", "fp32"), ("torch", "bf16"), ("onnx", "fp32"), ("onnx", "int8"), ("auto", "auto")]:
        assert path in built, refused.get(path)
    assert ("auto", "fast") in built and ("ollama", "auto") in built
    if accelerator() is None:  # GPU choices say there is no GPU, they do not crash
        assert "no CUDA GPU is available here" in refused["cuda", "fp32"]
        assert "needs a GPU" in refused["auto", "fp16"]


@pytest.mark.parametrize("sample_by", SAMPLE_BY)
def test_every_sample_by_the_recipe_accepts_reads_rows(tmp_path, sample_by):
    from llmkit.readers import read_rows

    src = tmp_path / "a.txt"
    src.write_text("one\ntwo\n\nthree\n")
    opts = _recipe({}, {"sample_by": sample_by}).job_options()
    rows = [r.text for r in read_rows(src, opts.column, opts.id_column, opts.split, opts.sample_by)]
    assert (
        rows
        == {
            "line": ["one", "two", "three"],
            "paragraph": ["one\ntwo", "three"],
            "document": ["one\ntwo\n\nthree"],
        }[sample_by]
    )


def test_a_recipe_run_refuses_flags_it_would_ignore(capsys):
    recipe = str(REPO / "recipes/embed/topics.yaml")
    code, _, err = cli(capsys, "embed", recipe, "-o", "x.parquet", "--model", "m")
    assert code == 2 and err.startswith("Error: -o/--output, --model do(es) not apply to a recipe"), err
    assert "a.b=value overrides" in err and "embed.output=" in err
    assert not Path("x.parquet").exists()


def test_a_wrong_option_value_is_a_one_line_usage_error():
    from llmkit.embedding import embed_file
    from llmkit.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="unknown sample_by 'word'") as err:
        embed_file("a.txt", "v.parquet", sample_by="word")
    assert err.value.hint.startswith("choose one of: line, paragraph")


def test_the_job_opens_its_input_once(tmp_path, monkeypatch):
    """A folder of Parquet files is listed once per job (a LIST request each on an object store)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from llmkit import readers
    from llmkit.embedding.job import embed_file

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        pq.write_table(pa.table({"text": [f"text {i} {j}" for j in range(4)]}), folder / f"{i}.parquet")
    listings = []
    real = readers.parquet_files
    monkeypatch.setattr(readers, "parquet_files", lambda path: listings.append(path) or real(path))
    result = embed_file(folder, tmp_path / "v.parquet", commit_every=5, backend="onnx", precision="fp32")
    assert result.rows == 12 and len(listings) == 1


def test_a_bare_dataset_name_means_the_same_to_train_and_embed(tmp_path, monkeypatch):
    from llmkit import data
    from llmkit.errors import DataError
    from llmkit.readers import as_input, read_rows

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the refusal, without waiting on an unreachable Hub
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert as_input("llmkit-test/nope") == "hf:llmkit-test/nope"
    assert as_input("texts.jsonl") == Path("texts.jsonl")  # a data file's name: a (missing) local file
    (tmp_path / "llmkit-test" / "nope").mkdir(parents=True)
    assert as_input("llmkit-test/nope") == Path("llmkit-test/nope")  # a local path wins
    (tmp_path / "llmkit-test" / "nope").rmdir()
    for read in (lambda: list(read_rows("llmkit-test/nope")), lambda: data.read_rows("llmkit-test/nope")):
        with pytest.raises(DataError, match="cannot load Hugging Face dataset 'llmkit-test/nope'"):
            read()
