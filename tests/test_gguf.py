"""GGUF writer: every file is loaded by llama.cpp and compared with transformers (tokens + logits)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmkit.errors import ExportError, InvalidArgument
from llmkit.exporter.gguf import write_gguf
from llmkit.exporter.verify import verify

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is installed by `make setup` (tools/install-llama-cpp.sh)"
)


def fields(path: Path) -> dict:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    out = {}
    for key, f in reader.fields.items():
        try:
            out[key] = f.contents()
        except Exception:
            continue
    out["_tensors"] = {t.name: t.tensor_type.name for t in reader.tensors}
    return out


# ----------------------------------------------------------------------------- extra tiny models


def build_qwen3(out: Path, tokenizer_dir: Path) -> Path:
    """A 2-layer Qwen3 (q/k norms, explicit head_dim ≠ hidden/heads, tied) with the tiny Qwen2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(1)
    cfg = Qwen3Config(
        vocab_size=448,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    Qwen3ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_llama31_rope(out: Path, tokenizer_dir: Path) -> Path:
    """A tiny Llama with Llama-3.1 rope scaling (needs rope_freqs.weight in GGUF)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(2)
    rope = {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16,
    }
    cfg = LlamaConfig(
        vocab_size=448,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_parameters=rope,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_spm_llama(out: Path) -> Path:
    """A tiny Llama-2-style model: SentencePiece BPE with byte fallback (tokenizer.json), [INST] template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from llmkit.tiny import _CORPUS

    tk = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tk.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    specials = ["<unk>", "<s>", "</s>", *[f"<0x{i:02X}>" for i in range(256)]]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False)
    tk.train_from_iterator([_CORPUS.replace(" ", "\u2581")] * 4, trainer=trainer)
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% elif m['role'] == 'assistant' %}{{ m['content'] + eos_token }}{% endif %}{% endfor %}"
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>", chat_template=template
    )
    torch.manual_seed(3)
    cfg = LlamaConfig(
        vocab_size=640,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    hf.save_pretrained(out)
    return out


def build_bf16_copy(out: Path, src: Path) -> Path:
    """The tiny Llama saved in bfloat16 (most real checkpoints are)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16).save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_llama_dir, tiny_qwen2_dir) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gguf-models")
    return {
        "llama": tiny_llama_dir,
        "qwen2": tiny_qwen2_dir,
        "qwen3": build_qwen3(root / "qwen3", tiny_qwen2_dir),
        "llama31": build_llama31_rope(root / "llama31", tiny_llama_dir),
        "spm": build_spm_llama(root / "spm"),
        "llama-bf16src": build_bf16_copy(root / "bf16", tiny_llama_dir),
    }


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf-out")


# ----------------------------------------------------------------------------- llama.cpp agreement

CASES = [
    ("llama", "f32"),
    ("llama", "f16"),
    ("llama", "bf16"),
    ("llama", "q8_0"),
    ("llama", "q4_0"),
    ("llama", "q5_1"),
    ("qwen2", "f32"),
    ("qwen2", "f16"),
    ("qwen2", "q8_0"),
    ("qwen2", "q4_1"),
    ("qwen2", "q5_0"),
    ("qwen3", "f16"),
    ("qwen3", "q8_0"),
    ("llama31", "f32"),
    ("spm", "f16"),
    ("llama-bf16src", "f16"),
]


@pytest.mark.parametrize(("model", "out_type"), CASES, ids=[f"{m}-{t}" for m, t in CASES])
def test_llama_cpp_matches_transformers(models, out_dir, model, out_type):
    written = write_gguf(models[model], out_dir / f"{model}-{out_type}.gguf", out_type)
    report = verify(written.path, models[model], out_type)
    print(report.summary())
    assert report.tokens_match and report.chat_tokens_match, report.details
    assert report.top1 >= report.threshold, report.summary()
    if out_type in ("f32", "f16"):
        assert report.top1 == 1.0
        assert report.max_abs_diff < (1e-3 if out_type == "f32" else 5e-3)


def test_llama_metadata(models, out_dir):
    path = write_gguf(models["llama"], out_dir / "meta-llama.gguf", "f16").path
    f = fields(path)
    assert f["general.architecture"] == "llama" and f["general.type"] == "model"
    assert f["general.file_type"] == 1  # MOSTLY_F16: Ollama can quantize it
    assert (
        f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.pre"] == "llama-bpe"
    )  # by the split regex
    tokens, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    assert len(tokens) == 448 == f["llama.vocab_size"]  # padded to the embedding rows
    assert tokens[-1] == "[PAD447]" and types[-1] == 5  # UNUSED
    assert types[tokens.index("<|eot_id|>")] == 3  # CONTROL
    assert tokens[f["tokenizer.ggml.eos_token_id"]] == "<|eot_id|>"
    assert tokens[f["tokenizer.ggml.eot_token_id"]] == "<|eot_id|>"
    assert (
        tokens[f["tokenizer.ggml.bos_token_id"]] == "<|begin_of_text|>"
        and f["tokenizer.ggml.add_bos_token"] is True
    )
    assert "<|start_header_id|>" in f["tokenizer.chat_template"]
    assert f["llama.rope.dimension_count"] == 16
    assert "output.weight" in f["_tensors"] and f["_tensors"]["blk.0.attn_norm.weight"] == "F32"


def test_qwen2_metadata_tied_and_qwen3_norms(models, out_dir):
    f = fields(write_gguf(models["qwen2"], out_dir / "meta-qwen2.gguf", "q8_0").path)
    assert f["tokenizer.ggml.pre"] == "qwen2" and f["tokenizer.ggml.add_bos_token"] is False
    assert "output.weight" not in f["_tensors"]  # tied: llama.cpp reuses token_embd
    assert f["_tensors"]["token_embd.weight"] == "Q8_0" and f["general.file_type"] == 7
    assert f["tokenizer.ggml.tokens"][f["tokenizer.ggml.eot_token_id"]] == "<|im_end|>"
    f = (
        fields(out_dir / "qwen3-f16.gguf")
        if (out_dir / "qwen3-f16.gguf").exists()
        else fields(write_gguf(models["qwen3"], out_dir / "qwen3-f16.gguf", "f16").path)
    )
    assert f["general.architecture"] == "qwen3" and f["qwen3.attention.key_length"] == 32
    assert "blk.0.attn_q_norm.weight" in f["_tensors"]


def test_rope_freqs_and_sentencepiece(models, out_dir):
    f = fields(write_gguf(models["llama31"], out_dir / "meta-llama31.gguf", "f16").path)
    assert f["_tensors"]["rope_freqs.weight"] == "F32"
    f = fields(write_gguf(models["spm"], out_dir / "meta-spm.gguf", "f16").path)
    assert f["tokenizer.ggml.model"] == "llama" and len(f["tokenizer.ggml.scores"]) == 640
    types = f["tokenizer.ggml.token_type"]
    assert types[f["tokenizer.ggml.tokens"].index("<0x41>")] == 6  # BYTE


# ----------------------------------------------------------------------------- bad input


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_unknown_pre_tokenizer_is_an_error_naming_the_hash(tiny_llama_dir, tmp_path):
    # (a llama body: under a qwen2 config transformers 5 tokenizes with Qwen2's own rule, whatever the file says)
    d = _copy(tiny_llama_dir, tmp_path / "odd")
    tj = json.loads((d / "tokenizer.json").read_text())
    tj["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{N}{1,2}| ?\p{L}+|\s+|[^\s\p{L}\p{N}]+"
    (d / "tokenizer.json").write_text(json.dumps(tj))
    with pytest.raises(ExportError) as e:
        write_gguf(d, tmp_path / "odd.gguf")
    assert "pre-tokenizer not recognized" in e.value.message and "chkhsh" in e.value.message
    assert "llama-bpe" in e.value.hint
    assert not list(tmp_path.glob("*.gguf*")) and not list(tmp_path.glob(".odd.gguf*"))


def test_unsupported_architecture(tiny_llama_dir, tmp_path):
    d = _copy(tiny_llama_dir, tmp_path / "gpt2ish")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ExportError) as e:
        write_gguf(d, tmp_path / "x.gguf")
    assert "GPT2LMHeadModel" in e.value.message and "Qwen2ForCausalLM" in e.value.hint


def test_missing_tokenizer_and_bad_type(tiny_llama_dir, tmp_path):
    d = _copy(tiny_llama_dir, tmp_path / "notok")
    (d / "tokenizer.json").unlink()
    with pytest.raises(ExportError, match="no tokenizer.json"):
        write_gguf(d, tmp_path / "x.gguf")
    with pytest.raises(InvalidArgument, match="unknown GGUF type") as e:
        write_gguf(tiny_llama_dir, tmp_path / "x.gguf", "q4_K_X")
    assert "q4_k_m" in e.value.hint and "q8_0" in e.value.hint


@pytest.mark.slow
def test_failed_write_leaves_nothing(tiny_llama_dir, tmp_path):
    """A file-size limit hit mid-write (like a full disk): an error, and no file at the final path."""
    script = textwrap.dedent(f"""
        import resource, signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))
        from llmkit.errors import LlmkitError
        from llmkit.exporter.gguf import write_gguf
        try:
            write_gguf({str(tiny_llama_dir)!r}, {str(tmp_path / "model.gguf")!r}, "f32")
        except LlmkitError as e:
            print("ERROR", e.message)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "ERROR writing" in r.stdout and "model.gguf failed" in r.stdout, r.stdout + r.stderr
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_streaming_memory_is_bounded_by_a_tensor(tmp_path):
    """Peak RSS while writing grows by far less than the model: tensors are streamed one at a time."""
    build = textwrap.dedent(f"""
        import shutil
        from transformers import LlamaConfig, LlamaForCausalLM
        from llmkit.tiny import tiny_model_dir
        tok = tiny_model_dir("tiny-llama")
        cfg = LlamaConfig(vocab_size=448, hidden_size=512, intermediate_size=1536, num_hidden_layers=16,
                          num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512)
        LlamaForCausalLM(cfg).save_pretrained("{tmp_path}/m")
        for f in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copy(tok / f, "{tmp_path}/m/" + f)
    """)
    measure = textwrap.dedent(f"""
        import resource, torch
        from transformers import AutoTokenizer
        from llmkit.exporter.gguf import write_gguf
        AutoTokenizer.from_pretrained("{tmp_path}/m")  # warm imports, so only the writing is measured
        peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        before = peak()
        write_gguf("{tmp_path}/m", "{tmp_path}/m.gguf", "f32")
        print(before, peak())
    """)
    for script in (build, measure):
        r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    before, after = map(int, r.stdout.split()[-2:])
    size = (tmp_path / "m.gguf").stat().st_size
    growth = after - before
    print(f"model {size / 2**20:.0f} MiB, peak RSS growth while writing {growth / 2**20:.0f} MiB")
    assert growth < 0.25 * size
