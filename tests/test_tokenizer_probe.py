"""Tokenizers identified by behaviour, then proven in llama.cpp (issue 9 §3).

Tokenizers trained here have token-id hashes no table knows, so `tokenizer.ggml.pre` is
derived from their structure and must survive the probe corpus in real llama.cpp against
the tokenizer as transformers loads it from the model dir. Tokenizers llama.cpp cannot
reproduce are refused with the differing probe and both id lists.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is installed by `make setup` (tools/install-llama-cpp.sh)"
)

from llmkit.errors import ExportError  # noqa: E402
from llmkit.exporter import tokprobe  # noqa: E402
from llmkit.exporter import vocab as vocab_mod  # noqa: E402
from llmkit.exporter.gguf import write_gguf  # noqa: E402
from llmkit.tiny import LLAMA3_REGEX, QWEN2_REGEX, TINY  # noqa: E402

# A "domain" corpus unlike any public model's training text, so no hash table knows the result.
DOMAIN = """\
2024-06-01T12:00:03Z INFO worker-7 processed 1532 jobs in 0.84s (queue=orders, retries=3)
2024-06-01T12:00:04Z WARN worker-2 slow query: SELECT id, total FROM orders WHERE total > 1000;
def handle(order):\n\tif order.total >= 1_000:\n\t\treturn approve(order)  # big ones first\n    return None
Der Kunde möchte die Bestellung stornieren. Le client veut annuler la commande. Клиент отменил заказ.
注文番号 98765 を確認しました。客户取消了订单。 주문이 취소되었습니다. تم إلغاء الطلب 🚀✅
"""

# llama.cpp spells the contractions out; a tokenizer that does the same has the Llama-3 / Qwen2
# split rule but neither llama.cpp's nor Ollama's hash.
EXPANDED = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"


def _split(regex: str):
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _pre(kind: str):
    from tokenizers import pre_tokenizers

    if kind == "llama3-expanded":
        return _split(LLAMA3_REGEX.replace(vocab_mod._CONTRACTIONS, EXPANDED))
    if kind == "qwen2-expanded":
        return _split(QWEN2_REGEX.replace(vocab_mod._CONTRACTIONS, EXPANDED))
    if kind == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "digits+gpt2":
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    if kind == "custom":  # a split rule no llama.cpp pre-tokenizer implements
        return _split(r"\p{N}{1,2}| ?\p{L}+|\s+|[^\s\p{L}\p{N}]+")
    raise ValueError(kind)


def build(out: Path, *, arch: str, pre: str, normalizer=None, seed: int = 0) -> Path:
    """A 2-layer llama/qwen2 model whose byte-level BPE tokenizer is trained here on DOMAIN."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    spec = TINY["tiny-llama" if arch == "llama" else "tiny-qwen2"]
    tk = Tokenizer(models.BPE())
    if normalizer is not None:
        tk.normalizer = normalizer
    tk.pre_tokenizer = _pre(pre)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=450,
        special_tokens=spec["special"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator([DOMAIN] * 4, trainer=trainer)
    if spec["bos"]:
        tk.post_processor = processors.TemplateProcessing(
            single=f"{spec['bos']} $A",
            pair=f"{spec['bos']} $A {spec['bos']} $B",
            special_tokens=[(spec["bos"], tk.token_to_id(spec["bos"]))],
        )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        chat_template=spec["template"],
    )
    n_vocab = ((len(hf) + 63) // 64) * 64
    ids = {k: (hf.convert_tokens_to_ids(spec[k]) if spec[k] else None) for k in ("bos", "eos", "pad")}
    common = dict(
        vocab_size=n_vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=ids["bos"],
        eos_token_id=ids["eos"],
        pad_token_id=ids["pad"],
    )
    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    model.save_pretrained(out)
    hf.save_pretrained(out)
    return out


def _tok(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)  # exactly as training loads it


def _n_vocab(model_dir: Path) -> int:
    return json.loads((model_dir / "config.json").read_text())["vocab_size"]


def _gguf_field(path: Path, key: str):
    import gguf

    return gguf.GGUFReader(str(path)).get_field(key).contents()


def _llama_cpp_ids(gguf_path: Path, texts: list[str], add_bos: bool) -> list[list[int]]:
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf_path), n_ctx=64, n_threads=1, verbose=False)  # the full model
    try:
        ids = [llm.tokenize(t.encode(), add_bos=add_bos, special=True) for t in texts]
        llm.eval(ids[0][:16])  # the weights load and run, not only the vocabulary
        assert llm.n_tokens == len(ids[0][:16])
        return ids
    finally:
        llm.close()


# ----------------------------------------------------------------------------- derived and proven


@pytest.mark.parametrize(
    "arch,pre,expected",
    [
        ("llama", "llama3-expanded", "llama-bpe"),
        ("qwen2", "qwen2-expanded", "qwen2"),
        ("llama", "gpt2", "gpt-2"),
        # transformers 5 loads it as Qwen2Tokenizer, which runs Qwen2's split rule whatever
        # tokenizer.json says: that is what training used, so that is what the GGUF must do.
        ("qwen2", "gpt2", "qwen2"),
        ("llama", "digits+gpt2", "smollm"),
    ],
)
def test_new_tokenizer_is_derived_proven_and_exported(tmp_path, arch, pre, expected):
    d = build(tmp_path / "m", arch=arch, pre=pre)
    tok = _tok(d)
    tj = json.loads((d / "tokenizer.json").read_text())
    # The premise: neither hash table knows this tokenizer.
    assert vocab_mod.chkhsh(tok) not in vocab_mod.CHKHSH
    assert vocab_mod.split_regex_hash(tj) not in vocab_mod.SPLIT_REGEX_HASH
    assert vocab_mod.pre_tokenizer_name(tj, tok, d) == (expected, "structure")

    v = vocab_mod.load_vocab(d, _n_vocab(d))  # derives and proves
    assert v.pre == expected
    proof = tokprobe.prove(v, tok, d, how="structure")
    assert proof.probes >= len(tokprobe.PROBES) + len(
        TINY["tiny-llama" if arch == "llama" else "tiny-qwen2"]["special"]
    )

    out = tmp_path / "m.gguf"
    write_gguf(d, out, "f16")
    assert _gguf_field(out, "tokenizer.ggml.pre") == expected
    texts = [text for _, text in tokprobe.probe_corpus(tok)] + [DOMAIN]
    for add_special in (True, False):
        want = [tok(t, add_special_tokens=add_special).input_ids for t in texts]
        assert _llama_cpp_ids(out, texts, add_special) == want


# ----------------------------------------------------------------------------- refused


def test_normalizer_llama_cpp_does_not_apply_is_refused_with_the_probe(tmp_path):
    from tokenizers import normalizers

    d = build(tmp_path / "lower", arch="llama", pre="gpt2", normalizer=normalizers.Lowercase())
    tj = json.loads((d / "tokenizer.json").read_text())
    assert vocab_mod.pre_tokenizer_name(tj, _tok(d), d) == ("gpt-2", "structure")  # the split rule is fine
    with pytest.raises(ExportError) as e:
        write_gguf(d, tmp_path / "lower.gguf", "f16")
    msg = e.value.message
    # The first probe with a capital letter differs; both id lists are shown around the difference.
    label, text = next((label, text) for label, text in tokprobe.PROBES if text != text.lower())
    assert f"probe '{label}'" in msg and "pre-tokenizer 'gpt-2' (found by structure)" in msg
    want = _tok(d)(text).input_ids
    i = int(msg.split("first difference at token ")[1].split(" ")[0])
    assert f"transformers {tokprobe._around(want, i)} ({len(want)} ids) vs llama.cpp [" in msg
    assert "first difference at token" in msg and "\n" not in msg
    assert "base model's tokenizer" in e.value.hint
    assert not list(tmp_path.glob("*.gguf*")) and not list(tmp_path.glob(".lower.gguf*"))


def test_wrong_pre_tokenizer_name_is_refused_with_both_id_lists(tiny_llama_dir):
    """Forced onto qwen2 (single digits), a Llama-3-rule tokenizer (digits in threes) fails on numbers."""
    tok = _tok(tiny_llama_dir)
    right = vocab_mod.load_vocab(tiny_llama_dir, _n_vocab(tiny_llama_dir))
    assert right.pre == "llama-bpe"
    with pytest.raises(ExportError) as e:
        tokprobe.prove(replace(right, pre="qwen2"), tok, tiny_llama_dir, how="forced")
    msg = e.value.message
    assert "probe 'numbers'" in msg and "pre-tokenizer 'qwen2' (found by forced)" in msg
    text = dict(tokprobe.PROBES)["numbers"]
    want = tok(text).input_ids
    i = int(msg.split("first difference at token ")[1].split(" ")[0])
    shown = f"transformers {tokprobe._around(want, i)} ({len(want)} ids) vs llama.cpp ["
    assert shown in msg
    theirs = msg.split(" vs llama.cpp ")[1].split("]")[0]
    assert theirs != tokprobe._around(want, i)[:-1]  # the two lists differ where the message says


def test_custom_split_rule_is_not_guessed(tmp_path):
    d = build(tmp_path / "custom", arch="llama", pre="custom")  # (a qwen2 body would run Qwen2's rule)
    with pytest.raises(ExportError) as e:
        write_gguf(d, tmp_path / "custom.gguf", "f16")
    assert (
        "pre-tokenizer not recognized" in e.value.message and "structure Split+ByteLevel" in e.value.message
    )
    assert "gpt-2" in e.value.hint and "llama-bpe" in e.value.hint


def test_derived_name_without_llama_cpp_is_refused_with_install_hint(tmp_path, monkeypatch):
    d = build(tmp_path / "m", arch="llama", pre="gpt2")
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # `import llama_cpp` now raises ImportError
    assert not tokprobe.llama_cpp_available()
    with pytest.raises(ExportError) as e:
        vocab_mod.load_vocab(d, _n_vocab(d))
    assert "must be proven in llama.cpp" in e.value.message and "\n" not in e.value.message
    assert "tools/install-llama-cpp.sh .venv/bin/python" in e.value.hint


def test_known_hash_exports_without_llama_cpp(tiny_llama_dir, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    v = vocab_mod.load_vocab(tiny_llama_dir, _n_vocab(tiny_llama_dir))
    assert v.pre == "llama-bpe"


# ----------------------------------------------------------------------------- known tokenizers


@pytest.mark.parametrize("fixture,expected", [("tiny_llama_dir", "llama-bpe"), ("tiny_qwen2_dir", "qwen2")])
def test_known_tiny_tokenizers_are_proven_and_export(request, tmp_path, fixture, expected):
    d = request.getfixturevalue(fixture)
    tok = _tok(d)
    v = vocab_mod.load_vocab(d, _n_vocab(d))
    assert v.pre == expected
    assert tokprobe.prove(v, tok, d, how="split-regex hash").probes > len(tokprobe.PROBES)
    out = tmp_path / "m.gguf"
    write_gguf(d, out, "f16")
    assert _gguf_field(out, "tokenizer.ggml.pre") == expected


@pytest.mark.slow
def test_smollm2_is_proven_and_exports(smollm2_dir, tmp_path):
    tok = _tok(smollm2_dir)
    v = vocab_mod.load_vocab(smollm2_dir, _n_vocab(smollm2_dir))
    assert v.pre == "smollm"
    proof = tokprobe.prove(v, tok, smollm2_dir, how="chkhsh")
    assert proof.probes > len(tokprobe.PROBES) and proof.seconds < 30
    out = tmp_path / "smol.gguf"
    write_gguf(smollm2_dir, out, "f16")
    assert _gguf_field(out, "tokenizer.ggml.pre") == "smollm"


@pytest.mark.parametrize("prepend", [True, False])
def test_spm_tokenizer_is_proven(tmp_path, prepend):
    """The SentencePiece path (model `llama`, pre `default`) goes through the same proof.

    Without a prepended "▁" (Gemma 3), the GGUF must say add_space_prefix=false: llama.cpp's
    default prepends one, which the proof catches.
    """
    d = _spm_model(tmp_path / "spm", prepend=prepend)
    tok = _tok(d)
    v = vocab_mod.load_vocab(d, _n_vocab(d))
    assert (v.model, v.pre, v.add_space_prefix) == ("llama", "default", prepend)
    assert tokprobe.prove(v, tok, d, how="SentencePiece").probes > len(tokprobe.PROBES)
    if not prepend:
        with pytest.raises(ExportError, match="first difference at token 1") as e:
            tokprobe.prove(replace(v, add_space_prefix=None), tok, d, how="SentencePiece")
        # llama.cpp's piece at the difference is the "▁" it prepended ("▁" or "▁de", by vocabulary).
        assert "probe 'code'" in e.value.message and " vs '▁" in e.value.message


def _spm_model(out: Path, *, prepend: bool) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>", fuse_unk=True))
    prefix = [normalizers.Prepend("\u2581")] if prepend else []
    tk.normalizer = normalizers.Sequence([*prefix, normalizers.Replace(" ", "\u2581")])
    strip = [decoders.Strip(" ", 1, 0)] if prepend else []
    tk.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), *strip]
    )
    specials = ["<unk>", "<s>", "</s>", *[f"<0x{i:02X}>" for i in range(256)]]
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=specials, show_progress=False)
    tk.train_from_iterator([DOMAIN.replace(" ", "\u2581")] * 4, trainer=trainer)
    tk.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)]
    )
    hf = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=640,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(cfg).save_pretrained(out)
    hf.save_pretrained(out)
    return out


def test_name_llama_cpp_does_not_know_is_refused_with_its_reason(tiny_qwen2_dir):
    v = vocab_mod.load_vocab(tiny_qwen2_dir, _n_vocab(tiny_qwen2_dir))
    with pytest.raises(ExportError) as e:
        tokprobe.prove(replace(v, pre="no-such-pre"), _tok(tiny_qwen2_dir), tiny_qwen2_dir, how="forced")
    assert "unknown pre-tokenizer type: 'no-such-pre'" in e.value.message
