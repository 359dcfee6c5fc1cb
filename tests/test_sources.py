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
    # same content hash → the cached conversion (this test's LLMKIT_HOME links the session's models)
    assert resolve(str(smollm2_gguf)).resolve() == smollm2_dir.resolve()
    assert weights.stat().st_mtime_ns == before, "a cached GGUF must not be converted again"
    from llmkit.chat import generate
    from llmkit.inference import load_for_inference

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


# ----------------------------------------------------------------------------- bad references


def _error(result) -> tuple[str, str]:
    """(message, hint) of a CLI failure: one `Error:` line and its hint, no traceback."""
    code, _, err = result
    assert code in (1, 2) and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[0].startswith("Error: "), err
    hint = next((ln.removeprefix("  hint: ") for ln in lines[1:] if ln.startswith("  hint: ")), "")
    return lines[0].removeprefix("Error: "), hint


def test_empty_reference_is_a_usage_error(capsys):
    from conftest import run_cli_inprocess

    for ref in ("", "   "):
        result = run_cli_inprocess(capsys, "pull", ref)
        message, hint = _error(result)
        assert result[0] == 2
        assert message == "the model reference is empty"
        assert "org/name" in hint and "tiny-llama" in hint


def test_missing_local_path_is_no_such_directory_not_a_hub_id(tmp_path, monkeypatch, capsys):
    """`runs/NAME` looked like org/name and went to the Hub; any reference that is a path (by its
    prefix, or because its first part is a local directory) must say the directory is missing."""
    from conftest import run_cli_inprocess

    (tmp_path / "runs" / "chat-demo").mkdir(parents=True)
    (tmp_path / "my-org").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # any Hub request would fail loudly
    monkeypatch.setenv("HOME", str(tmp_path))  # for ~/...
    for ref in ("runs/chat-dem", "./runs/chat-dem"):
        message, hint = _error(run_cli_inprocess(capsys, "pull", ref))
        assert message == "no such directory: runs/chat-dem"
        assert hint == "did you mean runs/chat-demo?"
    message, hint = _error(run_cli_inprocess(capsys, "pull", "my-org/model"))
    assert message == "no such directory: my-org/model" and "org/name" in hint
    for ref in ("exports/model", "../nowhere/model", "~/no-such-dir"):
        message, _ = _error(run_cli_inprocess(capsys, "pull", ref))
        assert message.startswith("no such directory: "), (ref, message)


def test_a_file_is_not_a_model_directory(tmp_path, capsys):
    from conftest import run_cli_inprocess

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    message, hint = _error(run_cli_inprocess(capsys, "pull", str(weights)))
    assert message == f"{weights} is a file, not a model directory" and "config.json" in hint


def test_directory_without_config_says_what_it_lacks_and_what_to_pass(tmp_path, smollm2_gguf, capsys):
    from conftest import run_cli_inprocess

    plain = tmp_path / "notes"
    plain.mkdir()
    (plain / "readme.txt").write_text("hello")
    message, hint = _error(run_cli_inprocess(capsys, "pull", str(plain)))
    assert message == (
        f"{plain} is not a model directory: missing config.json, weights (*.safetensors), "
        "tokenizer (tokenizer.json or tokenizer.model)"
    )
    assert "config.json" in hint

    holder = tmp_path / "downloads"
    holder.mkdir()
    (holder / "model.gguf").symlink_to(smollm2_gguf)
    message, hint = _error(run_cli_inprocess(capsys, "pull", str(holder)))
    assert message.startswith(f"{holder} is not a model directory: missing config.json")
    assert hint == f"it holds a GGUF file: pull that instead (llmkit pull {holder / 'model.gguf'})"

    run = tmp_path / "runs" / "demo"
    (run / "adapter").mkdir(parents=True)
    (run / "recipe.yaml").write_text("model: {name: tiny-llama}\n")
    (run / "adapter" / "adapter_config.json").write_text("{}")
    (run / "checkpoints" / "step-000003").mkdir(parents=True)
    message, hint = _error(run_cli_inprocess(capsys, "pull", str(run)))
    assert message.startswith(f"{run} is not a model directory: missing config.json")
    assert hint == f"{run} is a training run: chat with it or export it as it is (llmkit chat {run})"
    message, hint = _error(run_cli_inprocess(capsys, "pull", str(run / "checkpoints" / "step-000003")))
    assert message.startswith(f"{run / 'checkpoints' / 'step-000003'} is not a model directory")
    assert hint == f"it lies inside the training run {run}: use the run dir itself"
    message, hint = _error(run_cli_inprocess(capsys, "pull", str(run / "adapter")))
    assert message == f"{run / 'adapter'} is a LoRA adapter, not a model"
    assert hint == f"use the run dir itself: {run}"


def test_truncated_safetensors_in_a_local_dir(tiny_llama_dir, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(tiny_llama_dir, cut)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(SourceError) as err:
        resolve(str(cut))
    assert err.value.message.startswith(f"{weights} is truncated (its tensors need ")
    assert err.value.hint


# ----------------------------------------------------------------------------- GGUF headers


@pytest.mark.slow
def test_header_reader_agrees_with_gguf_py(smollm2_gguf):
    """llmkit.headers.read_gguf against gguf-py's own reader: every key, value and tensor."""
    from gguf import GGUFReader

    from llmkit.headers import LONG_ARRAY, read_gguf

    full = read_gguf(smollm2_gguf, keep=True)
    reader = GGUFReader(smollm2_gguf)
    theirs = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert full.metadata.keys() == theirs.keys()
    for key, value in theirs.items():
        expected = pytest.approx(value) if isinstance(value, float) else value
        assert full.metadata[key] == expected, key
    assert [(t.name, t.ggml_type, t.n_elements, full.data_offset + t.offset) for t in full.tensors] == [
        (t.name, int(t.tensor_type), int(t.n_elements), int(t.data_offset)) for t in reader.tensors
    ]
    quick = read_gguf(smollm2_gguf)  # long string arrays (token texts, merges) are skipped
    assert quick.skipped == {"tokenizer.ggml.tokens": 49152, "tokenizer.ggml.merges": 48900}
    assert all(n > LONG_ARRAY for n in quick.skipped.values())
    assert "tokenizer.ggml.tokens" not in quick.metadata
    assert (
        quick.metadata["tokenizer.ggml.token_type"] == full.metadata["tokenizer.ggml.token_type"]
    )  # numbers: whole
    assert quick.architecture == "llama"


@pytest.mark.parametrize(
    "keep, expect",
    [
        (0.5, "(its tensors need "),  # the weights cut off
        (100_000, "past "),  # mid-vocabulary: a string (or its length) runs past the end
        (20, "(the header ends past byte 20, the end of the file)"),
        (2, "(2 bytes)"),
    ],
)
def test_truncated_gguf_is_one_line_before_any_work(smollm2_gguf, tmp_path, keep, expect):
    from conftest import run_llmkit

    from llmkit.files import home

    data = smollm2_gguf.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])
    models = home() / "models"
    before = sorted(models.iterdir()) if models.exists() else []
    r = run_llmkit("pull", str(cut))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith(f"Error: {cut} is truncated or not a GGUF file (") and expect in lines[0], (
        lines[0]
    )
    assert lines[1].startswith("  hint: download or copy it again")
    assert (sorted(models.iterdir()) if models.exists() else []) == before, "nothing may be left behind"
