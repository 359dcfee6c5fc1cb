"""K-quants by llama.cpp's own quantizer: Q4_K_M and Q6_K files load in llama.cpp and pass --verify,
the F16 intermediate is removed, failures leave nothing behind, and Ollama accepts the file type."""

from __future__ import annotations

import pytest

from llmkit.errors import ExportError, InvalidArgument

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make setup`")

# general.file_type of the K-quant files (llama.cpp's LLAMA_FTYPE_MOSTLY_*).
FILE_TYPE = {"q4_k_m": 15, "q6_k": 18}


@pytest.mark.parametrize("qtype", ["q4_k_m", "q6_k"])
def test_tiny_k_quant_loads_and_verifies(qtype, tiny_qwen2_dir, tmp_path):
    from gguf import GGUFReader

    from llmkit.exporter.gguf import write_gguf
    from llmkit.exporter.verify import verify

    out = tmp_path / f"model-{qtype}.gguf"
    written = write_gguf(tiny_qwen2_dir, out, qtype)
    assert GGUFReader(out).get_field("general.file_type").contents() == FILE_TYPE[qtype]
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]  # F16 intermediate removed
    report = verify(written.path, tiny_qwen2_dir, qtype)
    assert report.passed, report.summary()


def test_keep_f16_keeps_the_intermediate(tiny_llama_dir, tmp_path):
    from gguf import GGUFReader

    from llmkit.exporter.gguf import write_gguf

    write_gguf(tiny_llama_dir, tmp_path / "m.gguf", "q4_k_s", keep_f16=True)
    f16 = GGUFReader(tmp_path / "m.f16.gguf")
    assert f16.get_field("general.file_type").contents() == 1  # MOSTLY_F16


def test_run_export_with_k_quant_and_ollama_double(ollama_double, tiny_llama_dir, tmp_path):
    """`llmkit export --gguf q4_k_m --verify --ollama NAME`: the double (strict about file types,
    like Ollama) accepts the file as Q4_K_M."""
    from llmkit.exporter import export

    result = export(str(tiny_llama_dir), gguf="q4_k_m", verify=True, ollama="tiny-q4km", output=tmp_path)
    assert result.verify["passed"] and result.gguf_type == "q4_k_m"
    assert ollama_double.model("tiny-q4km")["config"]["file_type"] == "Q4_K_M"


def test_unknown_type_lists_the_valid_ones_and_failed_quantization_leaves_nothing(tmp_path):
    from llmkit.exporter.gguf import check_type
    from llmkit.exporter.quantize import quantize

    with pytest.raises(InvalidArgument) as err:  # an option value: exit 2
        check_type("q4_k_x")
    assert err.value.exit_code == 2
    assert "q4_k_m" in err.value.hint and "q6_k" in err.value.hint and "f16" in err.value.hint

    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)  # a truncated file: llama.cpp refuses it half-way
    with pytest.raises(ExportError, match="could not quantize"):
        quantize(bogus, tmp_path / "out.gguf", "q4_k_m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-model.gguf"]


@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["q4_k_m", "q6_k"])
def test_smollm2_k_quant_passes_verify(qtype, smollm2_dir, tmp_path):
    from llmkit.exporter.gguf import write_gguf
    from llmkit.exporter.verify import verify

    written = write_gguf(smollm2_dir, tmp_path / f"smollm2-{qtype}.gguf", qtype)
    report = verify(written.path, smollm2_dir, qtype)
    assert report.passed, report.summary()
    assert report.mean_kl > 0  # a real quantization, not a copy of the F16 weights
