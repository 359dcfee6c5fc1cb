"""Export of training runs: merge, GGUF + Modelfile, adapter GGUF, CLI, bad input, Ollama create."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from llmkit.errors import LlmkitError

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is installed by `make setup` (tools/install-llama-cpp.sh)"
)

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_run(root: Path, base_dir: Path, *, export: dict | None = None, seed: int = 0, **lora) -> Path:
    """A run dir as the trainer writes it: recipe.yaml + adapter/ (PEFT) with the tokenizer beside it.

    LoRA B is random (init_lora_weights=False) so the adapter really changes the model.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(r=8, lora_alpha=16, target_modules=ALL_LINEAR, init_lora_weights=False, **lora)
    peft = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_magnitude_vector" in name or "modules_to_save" in name:
                p.mul_(1 + 0.2 * torch.randn_like(p))  # DoRA / full-module changes that matter
    peft.save_pretrained(root / "adapter")
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(root / "adapter")
    recipe = {
        "name": root.name,
        "model": {"name": str(base_dir)},
        "data": {"path": "data.jsonl", "max_length": 256},
        "lora": {"r": 8, "alpha": 16},
        "export": export or {},
    }
    (root / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return root


def peft_logits(run: Path, ids):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    base = AutoModelForCausalLM.from_pretrained(recipe["model"]["name"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, run / "adapter").eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def llama_run(tmp_path_factory, tiny_llama_dir) -> Path:
    export = {"system": "You are a pirate.", "ollama": "tiny-pirate"}
    return make_run(tmp_path_factory.mktemp("runs") / "pirate", tiny_llama_dir, export=export)


@pytest.fixture(scope="module")
def exported(llama_run):
    """The full export of the llama run (merge → F16 GGUF → verify → Modelfile), done once."""
    from llmkit.exporter import export

    return export(llama_run, verify=True)


# ----------------------------------------------------------------------------- merge


@pytest.mark.parametrize(
    ("model", "lora"),
    [
        ("llama", {}),
        ("qwen2", {"use_rslora": True, "use_dora": True}),
        ("llama", {"modules_to_save": ["lm_head"]}),
    ],
    ids=["lora", "rslora-dora-tied", "modules_to_save"],
)
def test_merged_logits_equal_base_plus_adapter(tmp_path, tiny_llama_dir, tiny_qwen2_dir, model, lora):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.exporter.merge import merge

    base = tiny_llama_dir if model == "llama" else tiny_qwen2_dir
    run = make_run(tmp_path / "run", base, seed=1, **lora)
    merged = merge(base, run / "adapter", tmp_path / "merged")
    ids = AutoTokenizer.from_pretrained(merged)("The capital of France is Paris, and 2+2=4.").input_ids
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)(torch.tensor([ids])).logits[0]
        base_logits = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)(
            torch.tensor([ids])
        ).logits[0]
    want = peft_logits(run, ids)
    assert (got - want).abs().max().item() <= 1e-4
    assert (base_logits - want).abs().max().item() > 1e-2  # the adapter does change the model
    assert {"tokenizer.json", "tokenizer_config.json", "config.json", "llmkit-merge.json"} <= {
        p.name for p in merged.iterdir()
    }
    assert not list(tmp_path.glob(".merged*"))


def test_merge_refuses_an_adapter_for_another_model(tmp_path, tiny_llama_dir, tiny_qwen2_dir):
    from safetensors.torch import load_file, save_file

    from llmkit.errors import ExportError
    from llmkit.exporter.merge import merge

    run = make_run(tmp_path / "run", tiny_llama_dir)
    sd = run / "adapter" / "adapter_model.safetensors"
    tensors = load_file(sd)
    tensors["base_model.model.model.layers.9.mlp.up_proj.lora_A.weight"] = next(
        iter(tensors.values())
    ).clone()
    save_file(tensors, sd)
    with pytest.raises(ExportError, match="match no base weight"):
        merge(tiny_llama_dir, run / "adapter", tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


# ----------------------------------------------------------------------------- full export of a run


def test_run_export_writes_verified_gguf_and_modelfile(exported, llama_run):
    r = exported
    assert r.merged_dir == llama_run / "merged" and r.gguf == llama_run / "model.gguf"
    assert r.verify["passed"] and r.verify["top1"] == 1.0 and r.verify["tokens_match"]
    assert r.template_family == "llama3" and r.template_proven
    text = (llama_run / "Modelfile").read_text()
    assert "FROM ./model.gguf" in text and 'TEMPLATE """{{- range $i, $m := .Messages }}' in text
    assert "<|start_header_id|>" in text
    assert 'SYSTEM """You are a pirate."""' in text
    assert (
        'PARAMETER stop "<|eot_id|>"' in text and "PARAMETER num_ctx 512" in text
    )  # max(256 trained, 2048) capped at 512 positions
    assert "temperature" not in text and "min_p" not in text  # no exotic sampling defaults
    # no server in this test: the exact command to run later
    assert r.ollama_command == f"ollama create tiny-pirate -f {llama_run / 'Modelfile'}"
    saved = json.loads((llama_run / "export.json").read_text())
    assert (
        saved["gguf"] == str(llama_run / "model.gguf")
        and json.loads((llama_run / "verify.json").read_text())["passed"]
    )


def test_adapter_only_gguf_in_llama_cpp_equals_merged(exported, llama_run, tmp_path):
    from gguf import GGUFReader

    from llmkit.exporter import export
    from llmkit.exporter.gguf import write_gguf
    from llmkit.exporter.verify import verify

    res = export(llama_run, adapter_only=True, gguf="f32", output=tmp_path)
    reader = GGUFReader(res.adapter_gguf)
    assert reader.get_field("general.type").contents() == "adapter"
    assert reader.get_field("adapter.type").contents() == "lora"
    assert reader.get_field("adapter.lora.alpha").contents() == 16.0
    assert any(t.name == "blk.0.attn_q.weight.lora_a" for t in reader.tensors)
    recipe = yaml.safe_load((llama_run / "recipe.yaml").read_text())
    base = write_gguf(recipe["model"]["name"], tmp_path / "base.gguf", "f32").path
    report = verify(base, exported.merged_dir, "f32", lora=res.adapter_gguf)
    assert report.top1 == 1.0 and report.max_abs_diff < 1e-3, report.summary()


def test_plain_model_export_and_alternate_output(tiny_qwen2_dir, tmp_path):
    from llmkit.exporter import export

    r = export(str(tiny_qwen2_dir), gguf="q8_0", output=tmp_path / "out")
    assert (
        r.merged_dir is None and r.gguf == tmp_path / "out" / "model.gguf" and r.template_family == "chatml"
    )
    text = (tmp_path / "out" / "Modelfile").read_text()
    assert "You are a helpful assistant." in text and 'PARAMETER stop "<|im_end|>"' in text
    assert "num_ctx" not in text


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_are_clear_errors(tmp_path, tiny_llama_dir, llama_run):
    from llmkit.exporter import export

    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "recipe.yaml").write_text((llama_run / "recipe.yaml").read_text())
    with pytest.raises(LlmkitError, match="without an adapter"):
        export(unfinished)
    (unfinished / "adapter").mkdir()
    with pytest.raises(LlmkitError, match="no finished adapter"):
        export(unfinished)
    with pytest.raises(LlmkitError, match="Ollama cannot quantize to 'q5_K_M'") as e:
        export(llama_run, quantize="q5_K_M")
    assert "q4_K_M" in e.value.hint
    with pytest.raises(LlmkitError, match="only quantizes F16/BF16"):
        export(llama_run, gguf="f32", quantize="q4_K_M")
    with pytest.raises(LlmkitError, match="not a valid Ollama model name"):
        export(llama_run, ollama="Bad Name!")
    notok = tmp_path / "notok"
    notok.mkdir()
    for f in tiny_llama_dir.iterdir():
        if not f.name.startswith("tokenizer"):
            (notok / f.name).write_bytes(f.read_bytes())
    with pytest.raises(LlmkitError, match="tokenizer"):
        export(str(notok), output=tmp_path / "o")
    assert not (tmp_path / "o" / "model.gguf").exists()


@pytest.mark.slow
def test_cli_export_json_and_errors(llmkit_cli, tiny_qwen2_dir, tmp_path):
    r = llmkit_cli("export", str(tiny_qwen2_dir), "-o", str(tmp_path / "e"), "--ollama", "tiny-q", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["gguf"] == str(tmp_path / "e" / "model.gguf") and data["template_family"] == "chatml"
    assert data["ollama_model"] is None and data["ollama_command"].startswith("ollama create tiny-q -f ")
    assert "no Ollama server is reachable" in r.stderr
    r = llmkit_cli("export", str(tiny_qwen2_dir), "--quantize", "q6_K")
    assert r.returncode == 2 and r.stderr.startswith("Error: Ollama cannot quantize to 'q6_K'")
    assert "hint:" in r.stderr and "Traceback" not in r.stderr


# ----------------------------------------------------------------------------- Ollama (double)


def test_ollama_create_with_template_stop_and_quantize(ollama_double, exported, llama_run):
    from llmkit.exporter import export

    r = export(llama_run, ollama="tiny-pirate:v1", quantize="q4_K_M")
    assert r.ollama_model == "tiny-pirate:v1"
    m = ollama_double.model("tiny-pirate:v1")
    assert (
        m["template"].startswith("{{- range $i, $m := .Messages }}")
        and "<|start_header_id|>" in m["template"]
        and m["system"] == "You are a pirate."
    )
    assert "<|eot_id|>" in m["parameters"]["stop"] and m["parameters"]["num_ctx"] == 512
    assert m["config"]["file_type"] == "Q4_K_M" and m["config"]["model_family"] == "llama"


@pytest.mark.slow
def test_ollama_rejection_is_a_one_line_error(ollama_double, tiny_qwen2_dir, tmp_path):
    from llmkit.exporter import export

    bad = tmp_path / "bad.tmpl"
    bad.write_text("{{ range .Messages }}{{ .Content }}")  # unclosed range: Ollama would refuse it
    with pytest.raises(LlmkitError, match="line 1: unexpected EOF"):  # caught before any upload
        export(str(tiny_qwen2_dir), ollama="tiny-q", template=bad, output=tmp_path / "o")
    assert ollama_double.find("tiny-q") is None


def test_adapter_only_writes_the_whole_modelfile_and_creates_it(ollama_double, llama_run, tmp_path):
    """`--adapter-only --ollama NAME`: adapter.gguf, the base as a GGUF (the run's base is a HF
    dir), and a Modelfile with FROM, ADAPTER, TEMPLATE and stops; the server gets all of it."""
    from gguf import GGUFReader

    from llmkit.exporter import export

    res = export(llama_run, adapter_only=True, ollama="tiny-pirate-lora", output=tmp_path)
    assert res.base == str(tmp_path / "base.gguf") and res.ollama_model == "tiny-pirate-lora"
    assert GGUFReader(tmp_path / "base.gguf").get_field("general.type").contents() == "model"
    text = res.modelfile.read_text()
    lines = [ln for ln in text.splitlines() if not ln.startswith("#")]
    assert lines[:2] == [f"FROM {tmp_path / 'base.gguf'}", "ADAPTER ./adapter.gguf"]
    assert 'TEMPLATE """{{- range $i, $m := .Messages }}' in text and 'PARAMETER stop "<|eot_id|>"' in text
    assert 'SYSTEM """You are a pirate."""' in text
    m = ollama_double.model("tiny-pirate-lora")
    assert len(m["adapters"]) == 1 and "<|start_header_id|>" in m["template"]
    assert "<|eot_id|>" in m["parameters"]["stop"] and m["system"] == "You are a pirate."


def test_adapter_only_on_a_server_that_refuses_adapters_offers_the_merged_export(
    ollama_double, llama_run, tmp_path
):
    from llmkit.exporter import export

    ollama_double.version = "0.34.1"
    with pytest.raises(LlmkitError, match=r"Ollama 0\.34\.1 refuses ADAPTER") as err:
        export(llama_run, adapter_only=True, ollama="tiny-lora", output=tmp_path)
    assert err.value.hint == f"export the merged model: llmkit export {llama_run} --ollama tiny-lora"
    assert not any(path == "/api/create" for _, path, _ in ollama_double.requests)
    assert not (tmp_path / "adapter.gguf").exists()


def test_adapter_only_refuses_quantize_and_a_family_ollama_cannot_adapt(tmp_path, llama_run):
    from llmkit.exporter import export
    from llmkit.exporter.archs import ARCHITECTURES

    with pytest.raises(LlmkitError, match="--quantize applies to a model"):
        export(llama_run, adapter_only=True, quantize="q4_K_M", output=tmp_path)
    assert (
        not ARCHITECTURES["Gemma3ForCausalLM"].ollama_adapter
        and ARCHITECTURES["LlamaForCausalLM"].ollama_adapter
    )


def test_a_mistral_window_shorter_than_the_context_caps_what_is_served(tiny_llama_dir, tmp_path, capsys):
    """llama.cpp runs the Mistral architecture without a sliding window: within the window the two
    models are identical, so num_ctx and the GGUF's context length are the window, said at export,
    and --verify checks what is served."""
    import shutil

    from gguf import GGUFReader

    from llmkit.exporter import export
    from llmkit.exporter.verify import verify

    src = tmp_path / "tiny-mistral"
    shutil.copytree(tiny_llama_dir, src)
    config = json.loads((src / "config.json").read_text())
    config.update(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=8)
    (src / "config.json").write_text(json.dumps(config))
    result = export(str(src), output=tmp_path / "out")
    assert result.context_limit == 8 and "sliding_window" in capsys.readouterr().err
    assert "PARAMETER num_ctx 8" in result.modelfile.read_text()
    assert GGUFReader(result.gguf).get_field("llama.context_length").contents() == 8
    served = verify(result.gguf, src, "f16", context=8)  # what Ollama runs: identical
    past = verify(result.gguf, src, "f16")  # probes longer than the window: a different model
    assert served.passed and served.top1 == 1.0, served.summary()
    assert past.top1 < 1.0, past.summary()
    try:  # --verify's generation check writes past the window: if it fails, the hint says why
        export(str(src), output=tmp_path / "verified", verify=True)
    except LlmkitError as exc:
        assert "sliding_window" in exc.hint and "higher-precision" not in exc.hint


def test_streaming_shard_rewrite_keeps_every_dtype_and_refuses_shape_changes(tmp_path):
    """The merge's shard writer: an identity pass reproduces the file byte for byte (header,
    metadata, every dtype, empty and 0-d tensors); a changed shape is an error, not a bad file."""
    import torch
    from safetensors.torch import load_file, save_file

    from llmkit.errors import ExportError
    from llmkit.exporter.merge import rewrite_safetensors

    tensors = {
        "a.weight": torch.randn(5, 3),
        "b.weight": torch.randn(4, 2).to(torch.bfloat16),
        "c.weight": torch.randn(7).half(),
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "scalar": torch.tensor(2.5),
    }
    src, dst = tmp_path / "in.safetensors", tmp_path / "out.safetensors"
    save_file(tensors, str(src), metadata={"format": "pt", "note": "kept"})
    rewrite_safetensors(src, dst, lambda name, t: t)
    assert dst.read_bytes() == src.read_bytes()

    rewrite_safetensors(src, dst, lambda name, t: t * 2 if name == "a.weight" else t)
    out = load_file(str(dst))
    assert torch.equal(out["a.weight"], tensors["a.weight"] * 2) and torch.equal(
        out["b.weight"], tensors["b.weight"]
    )
    with pytest.raises(ExportError, match="would change from"):
        rewrite_safetensors(src, dst, lambda name, t: t.T if name == "a.weight" else t)


def test_a_divergence_at_the_end_of_a_turn_is_a_tie_only_within_the_tolerance():
    """verify's rule where transformers ended the turn and llama.cpp went on: a tie when
    llama.cpp's next token scored within the tolerance of transformers' best there; never when
    llama.cpp took that best token (the end itself) and went on, nor when llama.cpp stopped first."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.exporter.generation import _divergence
    from llmkit.tiny import tiny_model_dir

    path = tiny_model_dir("tiny-llama")
    model, tok = AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    prompt, hf = [5, 9, 13], [21, 4]
    with torch.no_grad():
        logits = model(torch.tensor([prompt + hf])).logits[0, -1]
    best, second = logits.topk(2).indices.tolist()
    gap = float(logits[best] - logits[second])

    def wide(_logits):
        return gap * 2

    def narrow(_logits):
        return gap / 2

    where, tied = _divergence(model, tok, prompt, hf, hf + [second, 7], wide)
    assert tied and where.startswith("one side ended first") and f"{gap:.4f}" in where
    assert not _divergence(model, tok, prompt, hf, hf + [second, 7], narrow)[1]
    assert not _divergence(model, tok, prompt, hf, hf + [best, 7], wide)[1]  # the end token itself, then more
    assert not _divergence(model, tok, prompt, hf + [best, 7], hf, wide)[1]  # llama.cpp stopped first
    # a token that differs mid-answer: judged the same way, at that token
    where, tied = _divergence(model, tok, prompt, hf + [best], hf + [second], wide)
    assert tied and where.startswith("at token 2")


def test_a_quantized_file_ties_within_its_own_measured_logit_error():
    """verify's generation check: a quantized file's choice counts as a tie where transformers'
    won by less than the file's measured max |logit difference| (its rounding moves logits that
    much); a float file keeps its type's fixed tolerance, whatever was measured."""
    import numpy as np

    from llmkit.exporter.verify import generation_tie, tie_tolerance

    logits = np.array([3.0, 2.9, -1.0])
    assert generation_tie("q8_0", 0.0185)(logits) == 0.0185
    assert generation_tie("q4_k_m", 0.4)(logits) == 0.4
    assert generation_tie("f16", 0.5)(logits) == float(tie_tolerance("f16", logits)) < 0.5
    assert generation_tie("f32", 0.5)(logits) == float(tie_tolerance("f32", logits))
