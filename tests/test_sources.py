"""Model references → local HF model dirs: local dirs, GGUF files, built-ins, bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from llmkit.errors import SourceError
from llmkit.sources import resolve


def test_local_dir_is_validated(tiny_llama_dir, tmp_path):
    assert resolve(str(tiny_llama_dir)) == tiny_llama_dir
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, broken)
    (broken / "model.safetensors").unlink()
    (broken / "tokenizer.json").unlink()
    (broken / "tokenizer_config.json").unlink()
    with pytest.raises(SourceError, match=r"missing weights \(\*\.safetensors\), tokenizer"):
        resolve(str(broken))


def test_unknown_reference_is_one_clear_line(llmkit_cli):
    result = llmkit_cli("pull", "definitely-not-a-model")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0] == (
        "Error: unknown model 'definitely-not-a-model': not a local directory, .gguf file, Hub repo id or built-in name"
    )
    assert lines[1].startswith("  hint: built-in names: smollm2-135m-instruct")


def test_not_a_gguf_file(tmp_path, llmkit_cli):
    from llmkit.files import home

    models = home() / "models"
    before = sorted(models.iterdir()) if models.exists() else []
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 this is a zip, not a gguf")
    result = llmkit_cli("pull", str(fake))
    assert result.returncode == 1
    assert "is not a GGUF file (bad magic)" in result.stderr
    after = sorted(models.iterdir()) if models.exists() else []
    assert after == before, "nothing may be left behind"


def test_gguf_of_an_unsupported_architecture(tmp_path):
    import gguf

    path = tmp_path / "rwkv.gguf"
    writer = gguf.GGUFWriter(str(path), "rwkv6")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(SourceError) as err:
        resolve(str(path))
    assert "GGUF architecture 'rwkv6' cannot be loaded by transformers" in err.value.message
    assert "llama" in err.value.hint and "qwen2" in err.value.hint


def test_missing_gguf_file(tmp_path):
    with pytest.raises(SourceError, match="GGUF file not found"):
        resolve(str(tmp_path / "nope.gguf"))


def test_tiny_models_are_real_and_chat_ready(tiny_llama_dir, tiny_qwen2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    for path, arch in ((tiny_llama_dir, "llama"), (tiny_qwen2_dir, "qwen2")):
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path)
        assert model.config.model_type == arch
        assert model.config.vocab_size >= len(tok) and model.config.vocab_size % 64 == 0
        text = tok.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
        )
        assert "hi" in text
        ids = tok("Paris 🚀 123", return_tensors="pt").input_ids
        assert tok.decode(ids[0], skip_special_tokens=True) == "Paris 🚀 123"
        assert model(ids).logits.shape[-1] == model.config.vocab_size


@pytest.mark.slow
def test_embedded_smollm2_converts_once_and_answers(smollm2_dir, smollm2_gguf):
    meta = json.loads((smollm2_dir / "llmkit-source.json").read_text())
    assert meta["source"] == "gguf" and meta["architecture"] == "llama"
    assert not (smollm2_dir / "config.json").read_text().count("quantization_config")
    weights = smollm2_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert resolve(str(smollm2_gguf)) == smollm2_dir  # same content hash → the cached conversion
    assert weights.stat().st_mtime_ns == before, "a cached GGUF must not be converted again"
    from llmkit.chat import generate
    from llmkit.runs import load_for_inference

    model, tok = load_for_inference("smollm2-135m-instruct")
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    answer = generate(
        model,
        tok,
        [{"role": "user", "content": "What is the capital of France?"}],
        stream=False,
        max_new_tokens=20,
    )
    assert "Paris" in answer


def test_models_lists_builtins_and_converted(llmkit_cli, tiny_llama_dir):
    result = llmkit_cli("models", "--json")
    assert result.returncode == 0, result.stderr
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["smollm2-135m-instruct"]["source"].startswith("embedded")
    assert rows["tiny-llama"]["size"] > 0
