"""The model families users fine-tune, end to end on tiny real models built from their configs:
LoRA-train a few steps, merge, export F16 and Q8_0, and check the files in llama.cpp (--verify).

Gemma 2/3 (sliding windows shorter than the probes, soft-capping, 1+w norms), Phi-3 (fused
qkv/gate_up, longrope, partial rotary), Mixtral and Qwen2/3-MoE (experts stacked for llama.cpp,
LoRA on the experts, never on the router).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmkit.errors import ExportError
from llmkit.tiny import FAMILIES

pytest.importorskip("llama_cpp", reason="llama-cpp-python is installed by `make setup`")

MOE = ("tiny-mixtral", "tiny-qwen2moe", "tiny-qwen3moe")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One short LoRA run per family (trained once, shared by the tests below)."""
    import llmkit

    root = tmp_path_factory.mktemp("family-runs")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            overrides = [
                f"model.name={name}",
                "train.max_steps=4",
                "train.eval_every=0",
                "train.save_every=0",
                "lora.dropout=0",
                f"train.output_dir={root / name}",
            ]
            cache[name] = Path(llmkit.train("tiny", overrides=overrides))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(FAMILIES))
def test_family_trains_merges_exports_and_verifies_in_llama_cpp(name, runs, tmp_path):
    from llmkit.exporter import export

    run = runs(name)
    for gguf, floor in (("f16", 1.0), ("q8_0", 0.95)):
        result = export(run, gguf=gguf, output=tmp_path / gguf, verify=True)
        report = result.verify
        assert report["passed"], report
        assert report["top1"] >= floor and report["tokens_match"] and report["chat_tokens_match"]
        assert result.gguf.is_file() and result.modelfile.is_file()


@pytest.mark.parametrize("name", MOE)
def test_moe_lora_adapts_attention_and_experts_but_never_the_router(name, runs):
    from safetensors import safe_open

    adapter = runs(name) / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert set(config["target_parameters"]) == {"experts.gate_up_proj", "experts.down_proj"}
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        keys = list(f.keys())
    assert any("self_attn.q_proj.lora_A" in k for k in keys)
    assert any(".experts.lora_A" in k for k in keys) and any(".experts.base_layer.lora_A" in k for k in keys)
    assert not any(".mlp.gate.lora" in k or "shared_expert_gate.lora" in k for k in keys)


@pytest.mark.parametrize("name", MOE)
def test_merged_moe_equals_base_plus_expert_adapter(name, tmp_path):
    """The merge folds LoRA on stacked in-memory experts into the per-expert tensors on disk."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmkit.exporter.merge import merge
    from llmkit.lora import lora_targets
    from llmkit.tiny import tiny_model_dir

    base = tiny_model_dir(name)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False, **lora_targets(model, "all-linear")
    )
    peft = get_peft_model(model, cfg).eval()
    peft.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 33, 70, 2, 8, 100, 41, 7]])
    with torch.no_grad():
        want = peft(ids).logits[0]
        plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()(ids).logits[0]
        merged_dir = merge(base, tmp_path / "adapter", tmp_path / "merged")
        got = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()(ids).logits[0]
    assert (want - plain).abs().max() > 1e-2  # the adapter (experts included) really changes the model
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


# ----------------------------------------------------------------------------- bad input


def _edited_copy(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_unsupported_or_untranslatable_configs_are_clear_errors(tmp_path):
    from llmkit.exporter.gguf import write_gguf
    from llmkit.tiny import tiny_model_dir

    cases = [
        ("tiny-llama", {"architectures": ["GPT2LMHeadModel"]}, "GPT2LMHeadModel is not supported"),
        ("tiny-mixtral", {"num_local_experts": 5}, "found 4 experts, config says 5"),
        ("tiny-qwen3moe", {"norm_topk_prob": False}, "norm_topk_prob=False"),
        ("tiny-gemma3", {"hidden_activation": "relu"}, "hidden_activation='relu'"),
        ("tiny-gemma2", {"query_pre_attn_scalar": 7}, "query_pre_attn_scalar=7"),
        (
            "tiny-llama",
            {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}},
            "rope scaling 'yarn'",
        ),
    ]
    for i, (name, changes, message) in enumerate(cases):
        model = _edited_copy(tiny_model_dir(name), tmp_path / f"m{i}", **changes)
        out = tmp_path / f"m{i}.gguf"
        with pytest.raises(ExportError) as err:
            write_gguf(model, out, "f16")
        assert message in str(err.value), str(err.value)
        assert not out.exists() and not list(tmp_path.glob(f".m{i}.gguf*"))
        if i == 0:  # the unsupported architecture: names the supported ones, says --verify would catch it
            assert "Gemma3ForCausalLM" in err.value.hint and "Qwen3MoeForCausalLM" in err.value.hint
            assert "--verify" in err.value.hint


# ----------------------------------------------------------------------------- GGUF import


@pytest.mark.parametrize("name", ["tiny-gemma2", "tiny-gemma3", "tiny-phi", "tiny-qwen2moe", "tiny-qwen3moe"])
def test_our_gguf_imports_back_as_the_same_model(name, tmp_path):
    """`llmkit pull FILE.gguf` (transformers' GGUF loader plus the metadata it ignores: Gemma 3's
    layer pattern and query scale, MoE expert sizes) gives back the model we exported."""
    import torch
    from transformers import AutoModelForCausalLM

    from llmkit.exporter.gguf import write_gguf
    from llmkit.sources import resolve
    from llmkit.tiny import tiny_model_dir

    src = tiny_model_dir(name)
    gguf = write_gguf(src, tmp_path / f"{name}.gguf", "f16").path
    back = resolve(str(gguf))
    ids = torch.tensor([[1, 5, 9, 33, 70, 2, 8, 100, 41, 7, 12, 13, 14, 15, 16, 17]])  # > sliding window
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(src).eval()(ids).logits
        got = AutoModelForCausalLM.from_pretrained(back).eval()(ids).logits
    assert (got - want).abs().max() < 0.05  # f16 weights; a wrong layer pattern gives ~0.5
    assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_mixtral_gguf_import_is_refused_not_silently_dense(tmp_path):
    from llmkit.errors import SourceError
    from llmkit.exporter.gguf import write_gguf
    from llmkit.sources import resolve
    from llmkit.tiny import tiny_model_dir

    gguf = write_gguf(tiny_model_dir("tiny-mixtral"), tmp_path / "mixtral.gguf", "f16").path
    with pytest.raises(SourceError, match="cannot be loaded by transformers"):
        resolve(str(gguf))


def test_text_part_of_a_gemma3_vision_language_checkpoint_exports_and_verifies(tmp_path):
    """A Gemma3ForConditionalGeneration checkpoint: the language model is written, the vision
    tower and projector are left out, and llama.cpp matches transformers on text."""
    import torch
    from gguf import GGUFReader
    from transformers import AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration

    from llmkit.exporter.gguf import write_gguf
    from llmkit.exporter.verify import verify
    from llmkit.tiny import tiny_model_dir

    src = tiny_model_dir("tiny-gemma3")
    text = json.loads((src / "config.json").read_text())
    for key in ("architectures", "model_type", "transformers_version", "dtype", "torch_dtype"):
        text.pop(key, None)
    vision = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=32,
        patch_size=16,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        image_token_index=5,
        boi_token_index=6,
        eoi_token_index=7,
    )
    torch.manual_seed(0)
    Gemma3ForConditionalGeneration(config).save_pretrained(tmp_path / "vlm")
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp_path / "vlm")

    written = write_gguf(tmp_path / "vlm", tmp_path / "vlm.gguf", "f16")
    fields = GGUFReader(written.path)
    assert fields.get_field("general.architecture").contents() == "gemma3"
    assert fields.get_field("gemma3.block_count").contents() == 2
    assert written.n_tensors == 28  # the text model's tensors only
    report = verify(written.path, tmp_path / "vlm", "f16")
    assert report.passed and report.top1 == 1.0, report.summary()
