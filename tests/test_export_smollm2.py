"""The real SmolLM2-135M-Instruct (embedded GGUF → HF → our GGUF) verified in llama.cpp."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is installed by `make setup` (tools/install-llama-cpp.sh)"
)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smol_export(smollm2_dir, tmp_path_factory):
    from llmkit.export import export

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
    from llmkit.export.gguf import write_gguf
    from llmkit.export.verify import verify

    written = write_gguf(smollm2_dir, smol_export.out_dir / "model-q8_0.gguf", "q8_0")
    report = verify(written.path, smollm2_dir, "q8_0")
    print(report.summary())
    assert report.passed and report.top1 >= 0.95
