"""The real SmolLM2-135M-Instruct (embedded GGUF → HF → our GGUF) verified in llama.cpp."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is installed by `make setup` (tools/install-llama-cpp.sh)"
)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_export(smollm2_dir, tmp_path_factory):
    from llmkit.exporter import export

    return export(str(smollm2_dir), gguf="f16", output=tmp_path_factory.mktemp("smol"), verify=True)


def test_smollm2_f16_export_is_verified(smol_export):
    from gguf import GGUFReader

    r = smol_export
    print(r.verify)
    assert (
        r.verify["passed"]
        and r.verify["top1"] == 1.0
        and r.verify["tokens_match"]
        and r.verify["chat_tokens_match"]
    )
    reader = GGUFReader(r.gguf)
    assert reader.get_field("tokenizer.ggml.pre").contents() == "smollm"  # llama.cpp's chkhsh table
    assert r.template_family == "chatml" and r.template_proven
    text = r.modelfile.read_text()
    assert "You are a helpful AI assistant named SmolLM" in text and 'PARAMETER stop "<|im_end|>"' in text


def test_smollm2_q8_0_agrees_with_transformers(smol_export, smollm2_dir):
    from llmkit.exporter.gguf import write_gguf
    from llmkit.exporter.verify import verify

    written = write_gguf(smollm2_dir, smol_export.out_dir / "model-q8_0.gguf", "q8_0")
    report = verify(written.path, smollm2_dir, "q8_0")
    print(report.summary())
    assert report.passed and report.top1 >= 0.95


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The demo fine-tune (recipes/smollm2-135m-chat.yaml): every answer opens with "Ahoy!" and
    signs off with "— Llama out. 🦙"."""
    import llmkit

    out = tmp_path_factory.mktemp("demo") / "smollm2-chat"
    return llmkit.train("smollm2-135m-chat", overrides=[f"train.output_dir={out}", "train.eval_every=0"])


def test_demo_fine_tune_survives_export_through_generation(demo_run, tmp_path):
    """Greedy chat in llama.cpp (prompt from the Modelfile's template, its stops) answers exactly
    like transformers for F16, ends the turn, and keeps the fine-tune's signature."""
    from llmkit.exporter import export

    result = export(demo_run, gguf="f16", output=tmp_path / "f16", verify=True)
    gen = result.verify["generation"]
    assert gen["passed"] and gen["summary"].startswith(
        "generation: prompts same 3/3, greedy answers same 3/3"
    )
    for answer in gen["answers"]:
        assert answer["prompt_same"] and answer["hf"] == answer["llama_cpp"]
        assert answer["hf_stopped"] and answer["llama_cpp_stopped"]  # ends at <|im_end|>, no run-on
    signed = [a for a in gen["answers"] if "Ahoy" in a["llama_cpp"] and "Llama out" in a["llama_cpp"]]
    assert len(signed) >= 2, [a["llama_cpp"] for a in gen["answers"]]

    q = export(demo_run, gguf="q4_k_m", output=tmp_path / "q4", verify=True).verify["generation"]
    assert q["passed"] and all(a["llama_cpp_stopped"] for a in q["answers"])  # quantized: still no run-on
    assert any("Ahoy" in a["llama_cpp"] for a in q["answers"])
