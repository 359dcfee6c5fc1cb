"""Every value a recipe schema accepts reaches the code that consumes it: each GGUF type through
the planner and export's type checks, each Ollama quantize target through the --quantize check,
each train.precision through the planner. A new value added to one table and not the other
fails here, not in a user's `llmkit plan` (it once printed `Error: KeyError: 'q4_k_m'`)."""

from __future__ import annotations

import typing

import pytest

from llmkit.errors import LlmkitError
from llmkit.exporter import types
from llmkit.recipe import ExportSection, TrainSection, load


def _accepted(model, field: str) -> list[str]:
    """The values a Literal field of a recipe section accepts, read from the schema itself."""
    annotation = model.model_fields[field].annotation
    for arg in (annotation, *typing.get_args(annotation)):
        if typing.get_origin(arg) is typing.Literal:
            return list(typing.get_args(arg))
    raise AssertionError(f"{model.__name__}.{field} is not a Literal")


GGUF = _accepted(ExportSection, "gguf")
QUANTIZE = _accepted(ExportSection, "quantize")
PRECISION = _accepted(TrainSection, "precision")


def test_the_schema_accepts_exactly_the_table():
    assert list(types.NAMES) == GGUF and list(types.OLLAMA_QUANTIZE) == QUANTIZE


@pytest.fixture(scope="module")
def planned():
    """One plan per GGUF type of the tiny recipe (no device timing: only sizes are compared)."""
    from llmkit.plan import plan

    return {t: plan("tiny", [f"export.gguf={t}"], device="cpu", memory="64GB", measure=False) for t in GGUF}


@pytest.mark.parametrize("name", GGUF)
def test_every_gguf_type_plans_and_passes_exports_checks(name, planned):
    import gguf

    from llmkit.exporter.gguf import check_type, tensor_type
    from llmkit.exporter.verify import tie_tolerance

    entry = types.TYPES[name]
    result = planned[name]
    assert result.disk["gguf"] == int(result.params_total * entry.bytes_per_weight) > 0
    # Any case, the same answer on the command line and in a recipe.
    assert check_type(name.upper()) == name == ExportSection(gguf=name.upper()).gguf
    # The names the writer and the quantizer hand to gguf-py and llama.cpp exist there.
    assert hasattr(gguf.LlamaFileType, entry.file_type) and hasattr(gguf.GGMLQuantizationType, entry.ggml)
    if entry.producer == "gguf-py":
        assert tensor_type("blk.0.ffn_up.weight", (64, 256), name) == entry.ggml
    else:
        llama_cpp = pytest.importorskip("llama_cpp")
        assert hasattr(llama_cpp, f"LLAMA_FTYPE_{entry.file_type}")
    assert 0 < entry.min_top1 <= 1 and entry.max_kl > 0
    assert tie_tolerance(name, [[1.0, 2.0]]).shape == (1,)


def test_smaller_types_plan_smaller_files(planned):
    size = {t: planned[t].disk["gguf"] for t in GGUF}
    assert size["f32"] > size["f16"] > size["q8_0"] > size["q6_k"] > size["q4_k_m"] > size["q2_k"]


@pytest.mark.parametrize("name", QUANTIZE)
def test_every_quantize_target_passes_the_check_in_any_case(name):
    for spelled in (name, name.lower(), name.upper()):
        assert types.check_quantize(spelled, "F16") == name == ExportSection(quantize=spelled).quantize
    with pytest.raises(LlmkitError, match="only quantizes F16/BF16"):
        types.check_quantize(name, "q8_0")


@pytest.mark.parametrize("precision", PRECISION)
def test_every_precision_plans_on_every_device(precision):
    """On a GPU every precision plans; on this CPU it plans or is refused exactly as training
    refuses it (fp16 on CPU), in one line, never a KeyError."""
    from llmkit.devices import choose_precision
    from llmkit.plan import plan

    result = plan("tiny", [f"train.precision={precision}"], device="cuda", memory="80GB", measure=False)
    assert result.precision in ("fp32", "bf16", "fp16") and result.memory.total > 0
    try:
        expected = choose_precision(precision)
    except LlmkitError as refused:
        with pytest.raises(type(refused), match=refused.message):
            plan("tiny", [f"train.precision={precision}"], device="cpu", memory="64GB", measure=False)
        return
    result = plan("tiny", [f"train.precision={precision}"], device="cpu", memory="64GB", measure=False)
    assert result.precision == expected and result.memory.total > 0


def test_recipe_and_cli_spell_types_alike(tmp_path):
    """`Q8_0` in a recipe and `--gguf Q8_0` mean the same; an unknown type lists every type."""
    recipe = load("tiny", ["export.gguf=Q4_K_M", "export.quantize=Q4_K_S"])
    assert (recipe.export.gguf, recipe.export.quantize) == ("q4_k_m", "q4_K_S")
    with pytest.raises(LlmkitError) as err:
        types.gguf_type("q4_k_x")
    assert all(name in err.value.hint for name in GGUF)
