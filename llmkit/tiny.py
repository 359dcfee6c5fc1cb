"""Tiny real models built from configs: 2-layer Llama and Qwen2 with a byte-level BPE
tokenizer trained on the fly and a chat template. They load and train in seconds on a CPU,
so tests and the `tiny` recipe exercise the real code paths without any download.

The other families users fine-tune (Gemma 2/3, Phi-3, Mixtral, Qwen2/3-MoE) are built the
same way, with the Llama-3 tokenizer and template, and the family's own body: sliding-window
layers, soft-capping, fused projections, longrope, experts (FAMILIES below).

The tokenizers use the Llama-3 and Qwen2 split regexes, which llama.cpp and Ollama
recognise by structure, so the tiny models also export to GGUF like their big siblings.
"""

from __future__ import annotations

from pathlib import Path

from llmkit.files import atomic_dir, home

LLAMA3_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
QWEN2_REGEX = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

TINY = {
    "tiny-llama": {
        "arch": "llama",
        "regex": LLAMA3_REGEX,
        "special": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": "<|end_of_text|>",
        "template": LLAMA3_TEMPLATE,
    },
    "tiny-qwen2": {
        "arch": "qwen2",
        "regex": QWEN2_REGEX,
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "template": CHATML_TEMPLATE,
    },
}

# Family bodies on the tiny-llama tokenizer: HF config class name → config overrides.
# Sliding windows are shorter than the probe texts so the windowed layers really are tested.
FAMILIES = {
    "tiny-gemma2": (
        "Gemma2",
        dict(
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=8,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            layer_types=["sliding_attention", "full_attention"],
        ),
    ),
    "tiny-gemma3": (
        "Gemma3Text",
        dict(
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=8,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        ),
    ),
    # Not "phi3": llama.cpp gives special tokens of models *named* phi-3/phi3 Phi-3's rstrip
    # attributes (and needs a "</s>" token), which this tokenizer does not have.
    "tiny-phi": (
        "Phi3",
        dict(
            max_position_embeddings=512,
            original_max_position_embeddings=256,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "short_factor": [1.0, 1.1, 1.3, 1.6],
                "long_factor": [1.0, 2.0, 4.0, 8.0],
            },
        ),
    ),
    "tiny-mixtral": ("Mixtral", dict(num_local_experts=4, num_experts_per_tok=2)),
    "tiny-qwen2moe": (
        "Qwen2Moe",
        dict(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=64,
            norm_topk_prob=False,
        ),
    ),
    "tiny-qwen3moe": (
        "Qwen3Moe",
        dict(
            num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=True, head_dim=16
        ),
    ),
}
TINY.update(
    {
        name: {**TINY["tiny-llama"], "arch": cls, "family": overrides}
        for name, (cls, overrides) in FAMILIES.items()
    }
)


_CORPUS = """\
The quick brown fox jumps over the lazy dog. Paris is the capital of France.
Berlin is the capital of Germany, and Rome is the capital of Italy. What is the capital of Spain?
Madrid! Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 123 2024 3.14159. Hello, world. How are you today?
I am fine, thank you. Let's write some code: def add(a, b): return a + b
Café, naïve, résumé, straße, Ελληνικά, русский, 日本語, 中文, 한국어, emoji 🚀 ✅ 🦙.
A helpful assistant answers questions clearly and briefly. The user asks; the assistant replies.
"""


def tiny_model_dir(name: str) -> Path:
    """Build (once) and return the directory of a tiny model (a name in TINY)."""
    final = home() / "models" / name
    if (final / "config.json").exists():
        return final
    with atomic_dir(final, replace=True) as tmp:
        build(name, tmp)
    return final


def build(name: str, out: Path, *, seed: int = 0) -> Path:
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    spec = TINY[name]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(spec["regex"]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=spec["special"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    if spec["bos"]:  # Llama 3 adds BOS itself
        bos_id = tok.token_to_id(spec["bos"])
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(trim_offsets=False),
                processors.TemplateProcessing(
                    single=f"{spec['bos']} $A",
                    pair=f"{spec['bos']} $A {spec['bos']} $B",
                    special_tokens=[(spec["bos"], bos_id)],
                ),
            ]
        )
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
        chat_template=spec["template"],
        model_max_length=512,
    )
    # Pad the embedding rows beyond the vocabulary, as real models do (exports must cope).
    n_vocab = ((len(hf_tok) + 63) // 64) * 64
    common = dict(
        vocab_size=n_vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        bos_token_id=hf_tok.convert_tokens_to_ids(spec["bos"]) if spec["bos"] else None,
        eos_token_id=hf_tok.convert_tokens_to_ids(spec["eos"]),
        pad_token_id=hf_tok.convert_tokens_to_ids(spec["pad"]),
    )
    torch.manual_seed(seed)
    if spec["arch"] == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    elif spec["arch"] == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    else:
        model = _family_model(spec["arch"], {**common, **spec["family"]})
    model.generation_config = GenerationConfig(
        bos_token_id=common["bos_token_id"],
        eos_token_id=common["eos_token_id"],
        pad_token_id=common["pad_token_id"],
    )
    model.save_pretrained(out, safe_serialization=True)
    hf_tok.save_pretrained(out)
    return out


def _family_model(cls: str, config: dict):
    import transformers

    config_cls = getattr(transformers, f"{cls}Config")
    model_cls = getattr(transformers, f"{cls.removesuffix('Text')}ForCausalLM")
    return model_cls(config_cls(**config))
