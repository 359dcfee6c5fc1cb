"""What each model family needs to become a GGUF llama.cpp runs exactly like transformers.

One `Arch` per family, all in the table at the bottom: the GGUF architecture name, how tensors
are transformed (Q/K permutation, Gemma's `1 + w` norms, experts stacked), the family's own
metadata, and the config checks that refuse a model llama.cpp would run differently. The
writer (`gguf.py`) has no per-family branches; it asks this table.

Facts come from llama.cpp's loader (`src/models/<arch>.cpp`): which keys it reads, which it
hard-codes. A config value llama.cpp cannot express is an error here, never a silently
different model.

Over 400 lines on purpose: each family's rule reads in one place, both directions (export to
GGUF, and `from_gguf`, the fixes when sources.py imports a GGUF) beside the table.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from llmkit.errors import ExportError, SourceError

# ----------------------------------------------------------------------------- config readers


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def rope_params(config: dict, layer_type: str = "full_attention") -> dict:
    """The rope settings of one layer type, from the transformers-4 or -5 config layout."""
    params = config.get("rope_parameters") or {}
    if layer_type in params or "full_attention" in params:  # per-layer-type (Gemma 3)
        params = params.get(layer_type) or {}
    merged = dict(params)
    legacy = config.get("rope_scaling") or {}
    merged.update({k: v for k, v in legacy.items() if k not in merged})
    if "rope_type" not in merged and "type" in merged:
        merged["rope_type"] = merged["type"]
    if "rope_theta" not in merged and config.get("rope_theta"):
        merged["rope_theta"] = config["rope_theta"]
    merged.setdefault("rope_type", "default")
    merged.setdefault("rope_theta", 10000.0)
    return merged


def n_experts(config: dict) -> int:
    return int(config.get("num_local_experts") or config.get("num_experts") or 0)


def _expect(config: dict, key: str, allowed, why: str, default=None) -> None:
    value = config.get(key, default)
    if value not in allowed:
        raise ExportError(
            f"config {key}={value!r} cannot be written to GGUF exactly ({why})",
            "llama.cpp would run a different model; --verify would have caught it. "
            "Open an issue with the model's config.json",
        )


# ----------------------------------------------------------------------------- rope


def llama3_rope_factors(config: dict, rope: dict) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1+ rope scaling (llama.cpp reads them from rope_freqs.weight)."""
    dim = head_dim(config)
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    freqs = 1.0 / (rope["rope_theta"] ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1.0)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_rope(writer, config: dict, kinds: tuple[str, ...]) -> list[tuple[str, np.ndarray]]:
    """Rope base and scaling of the (global) layers; returns extra tensors (rope factors)."""
    import gguf

    rope = rope_params(config)
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    kind = rope["rope_type"]
    if kind == "default":
        return []
    if kind not in kinds:
        raise ExportError(
            f"rope scaling '{kind}' is not supported for this architecture in GGUF export",
            f"supported here: {', '.join(kinds) or 'none'}; llama.cpp would run a different model",
        )
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
        return []
    if kind == "llama3":
        return [("rope_freqs.weight", llama3_rope_factors(config, rope))]
    if kind == "longrope":  # Phi-3: long/short factors, picked by llama.cpp from the context size
        long_f, short_f = rope.get("long_factor"), rope.get("short_factor")
        original = rope.get("original_max_position_embeddings") or config["original_max_position_embeddings"]
        n_rot = rope_dims(config)
        if not long_f or not short_f or len(long_f) != n_rot // 2 or len(short_f) != n_rot // 2:
            raise ExportError(
                f"longrope factors must be two lists of {n_rot // 2} numbers (rope dims / 2)",
                "check rope_scaling.long_factor / short_factor in config.json",
            )
        scale = config["max_position_embeddings"] / original
        default = math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0
        writer.add_rope_scaling_attn_factors(float(rope.get("attention_factor") or default))
        return [
            ("rope_factors_long.weight", np.asarray(long_f, dtype=np.float32)),
            ("rope_factors_short.weight", np.asarray(short_f, dtype=np.float32)),
        ]
    raise AssertionError(kind)


def rope_dims(config: dict) -> int:
    factor = rope_params(config).get("partial_rotary_factor") or config.get("partial_rotary_factor") or 1.0
    return int(factor * head_dim(config))


# ----------------------------------------------------------------------------- family metadata


def _common(writer, config: dict) -> None:
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    if config.get("head_dim"):
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])


def _experts(writer, config: dict) -> None:
    writer.add_expert_count(n_experts(config))
    writer.add_expert_used_count(config["num_experts_per_tok"])
    if config.get("moe_intermediate_size"):
        writer.add_expert_feed_forward_length(config["moe_intermediate_size"])
    if config.get("shared_expert_intermediate_size"):
        writer.add_expert_shared_feed_forward_length(config["shared_expert_intermediate_size"])


def _llama(writer, config: dict, n_vocab: int) -> list:
    _common(writer, config)
    writer.add_vocab_size(n_vocab)
    writer.add_rope_dimension_count(head_dim(config))
    if n_experts(config):
        _experts(writer, config)
    return write_rope(writer, config, ("linear", "llama3"))


def _qwen(writer, config: dict, n_vocab: int) -> list:
    _common(writer, config)
    if n_experts(config):
        _experts(writer, config)
    return write_rope(writer, config, ("linear",))


def _sliding_pattern(config: dict) -> list[bool]:
    types = config.get("layer_types")
    if not types:
        raise ExportError(
            "config has sliding_window but no layer_types", "re-save the config with transformers>=4.56"
        )
    return [t == "sliding_attention" for t in types]


def _gemma_attention_scale(config: dict) -> None:
    # llama.cpp scales queries by 1/sqrt(head_dim) (1/sqrt(hidden/heads) for the 27B models).
    hd, scalar = head_dim(config), config.get("query_pre_attn_scalar", head_dim(config))
    if scalar != hd and scalar != config["hidden_size"] // config["num_attention_heads"]:
        raise ExportError(
            f"config query_pre_attn_scalar={scalar} is neither head_dim ({hd}) nor hidden/heads; "
            "llama.cpp cannot express it",
            "llama.cpp would run a different model; --verify would have caught it",
        )


def _gemma2(writer, config: dict, n_vocab: int) -> list:
    _common(writer, config)
    _gemma_attention_scale(config)
    writer.add_attn_logit_softcapping(float(config.get("attn_logit_softcapping") or 0.0))
    writer.add_final_logit_softcapping(float(config.get("final_logit_softcapping") or 0.0))
    writer.add_sliding_window(int(config["sliding_window"]))
    writer.add_sliding_window_pattern(_sliding_pattern(config))
    return write_rope(writer, config, ())


def _gemma3(writer, config: dict, n_vocab: int) -> list:
    _common(writer, config)
    _gemma_attention_scale(config)
    _expect(config, "attn_logit_softcapping", (None,), "Gemma 3 has no attention soft-capping in llama.cpp")
    if config.get("final_logit_softcapping"):
        writer.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    pattern = _sliding_pattern(config) if config.get("sliding_window") else []
    if any(pattern):
        writer.add_sliding_window(int(config["sliding_window"]))
        writer.add_sliding_window_pattern(pattern)
        local = rope_params(config, "sliding_attention")
        if local["rope_type"] != "default":
            raise ExportError(f"rope scaling '{local['rope_type']}' on sliding layers is not supported")
        theta = config.get("rope_local_base_freq") or local["rope_theta"]
        writer.add_rope_freq_base_swa(float(theta))
    return write_rope(writer, config, ("linear",))


def _phi3(writer, config: dict, n_vocab: int) -> list:
    _common(writer, config)
    writer.add_rope_dimension_count(rope_dims(config))
    original = rope_params(config).get("original_max_position_embeddings") or config.get(
        "original_max_position_embeddings"
    )
    if original:
        writer.add_rope_scaling_orig_ctx_len(int(original))
    writer.add_sliding_window(int(config.get("sliding_window") or 0))
    return write_rope(writer, config, ("longrope",))


def window_limit(config: dict) -> int | None:
    """Mistral's sliding window when shorter than the context: llama.cpp's llama graph has no
    window, so past it the served model differs; within it the two are identical."""
    window, context = config.get("sliding_window"), config.get("max_position_embeddings")
    if window and (not context or int(window) < int(context)):
        return int(window)
    return None


def _mistral(writer, config: dict, n_vocab: int) -> list:
    limit = window_limit(config)
    return _llama(writer, {**config, "max_position_embeddings": limit} if limit else config, n_vocab)


# ----------------------------------------------------------------------------- GGUF import
# The other direction (sources.convert_gguf): set what transformers' GGUF config reader leaves at
# its defaults, from the file's metadata (`get(key)` reads "<arch>.<key>"); without it a Gemma 3
# with its own layer pattern or a MoE with its own expert sizes would load as a different model.


def _llama_import(config, get, where) -> None:
    if get("expert_count"):
        raise SourceError(
            f"{where}: a Mixtral-style MoE GGUF cannot be loaded by transformers (it would drop the experts)",
            "start from the Hugging Face checkpoint instead (llmkit pull mistralai/...)",
        )


def _gemma3_import(config, get, where) -> None:
    pattern = get("attention.sliding_window_pattern")
    if isinstance(pattern, list):
        config.layer_types = ["sliding_attention" if p else "full_attention" for p in pattern]
    config.query_pre_attn_scalar = get("attention.key_length", config.query_pre_attn_scalar)
    local = get("rope.freq_base_swa")
    if local and isinstance(getattr(config, "rope_parameters", None), dict):
        config.rope_parameters.setdefault("sliding_attention", {"rope_type": "default"})["rope_theta"] = local


def _moe_import(config, get, where) -> None:
    config.moe_intermediate_size = get("expert_feed_forward_length", config.moe_intermediate_size)
    config.num_experts = get("expert_count", config.num_experts)
    config.num_experts_per_tok = get("expert_used_count", config.num_experts_per_tok)


def _qwen2moe_import(config, get, where) -> None:
    _moe_import(config, get, where)
    config.shared_expert_intermediate_size = get(
        "expert_shared_feed_forward_length", config.shared_expert_intermediate_size
    )


# ----------------------------------------------------------------------------- checks


def _check_llama(config: dict) -> None:
    _expect(config, "hidden_act", ("silu",), "llama.cpp's llama graph uses SiLU", "silu")
    _expect(config, "mlp_bias", (False, None), "llama.cpp's llama graph has no MLP bias", False)


def _check_qwen2_moe(config: dict) -> None:
    _check_llama(config)
    _expect(config, "norm_topk_prob", (False, None), "llama.cpp's qwen2moe does not renormalize top-k", False)
    _expect(config, "decoder_sparse_step", (1, None), "llama.cpp expects every layer to be MoE", 1)
    _expect(config, "mlp_only_layers", ([], None), "llama.cpp expects every layer to be MoE", [])


def _check_qwen3_moe(config: dict) -> None:
    _check_llama(config)
    _expect(config, "norm_topk_prob", (True,), "llama.cpp's qwen3moe renormalizes the top-k weights")
    _expect(config, "decoder_sparse_step", (1, None), "llama.cpp expects every layer to be MoE", 1)
    _expect(config, "mlp_only_layers", ([], None), "llama.cpp expects every layer to be MoE", [])


def _check_gemma(config: dict) -> None:
    act = config.get("hidden_activation") or config.get("hidden_act")
    if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
        raise ExportError(
            f"config hidden_activation={act!r}: llama.cpp's Gemma graph uses tanh-approximated GELU",
            "llama.cpp would run a different model; --verify would have caught it",
        )


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Arch:
    gguf: str  # general.architecture
    hparams: Callable  # (writer, config, n_vocab) → extra tensors [(gguf name, float32 array)]
    check: Callable[[dict], None] = lambda config: None
    permute_qk: bool = False  # HF rotate-half rope → llama.cpp's adjacent pairs (llama graph only)
    norm_offset: float = 0.0  # Gemma's RMSNorm computes x·(1 + w): llama.cpp wants 1 + w stored
    tied_output: bool = False  # llama.cpp always reads the output from token_embd
    prefixes: tuple[tuple[str, str], ...] = field(default=())  # HF name prefix rewrites (multimodal)
    skip: tuple[str, ...] = ()  # HF name prefixes that are not part of the text model
    # The longest context llama.cpp runs exactly like transformers, when the config's is longer
    # (written as the GGUF's context length; export caps the Modelfile's num_ctx to it).
    context_limit: Callable[[dict], int | None] = lambda config: None
    limit_reason: str = ""  # what the limit is, for export's info line and verify's hint
    # GGUF import: (transformers config, get(key, default), file name) → fix the config in place.
    from_gguf: Callable = lambda config, get, where: None
    # Ollama serves a GGUF adapter (ADAPTER) on this family: checked for llama on a real server;
    # Ollama runs Gemma in its own engine, which refuses LoRAs ("loras are not yet implemented").
    ollama_adapter: bool = True


LLAMA = Arch("llama", _llama, _check_llama, permute_qk=True, from_gguf=_llama_import)
MISTRAL = Arch(
    "llama",
    _mistral,
    _check_llama,
    permute_qk=True,
    context_limit=window_limit,
    limit_reason="sliding_window: llama.cpp runs this architecture without a window",
    from_gguf=_llama_import,
)
GEMMA3 = Arch(
    "gemma3", _gemma3, _check_gemma, norm_offset=1.0, from_gguf=_gemma3_import, ollama_adapter=False
)

ARCHITECTURES: dict[str, Arch] = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": MISTRAL,
    "MixtralForCausalLM": MISTRAL,
    "Qwen2ForCausalLM": Arch("qwen2", _qwen),
    "Qwen3ForCausalLM": Arch("qwen3", _qwen),
    "Qwen2MoeForCausalLM": Arch("qwen2moe", _qwen, _check_qwen2_moe, from_gguf=_qwen2moe_import),
    "Qwen3MoeForCausalLM": Arch("qwen3moe", _qwen, _check_qwen3_moe, from_gguf=_moe_import),
    "Gemma2ForCausalLM": Arch(
        "gemma2", _gemma2, _check_gemma, norm_offset=1.0, tied_output=True, ollama_adapter=False
    ),
    "Gemma3ForCausalLM": GEMMA3,
    # The text half of a Gemma 3 vision-language checkpoint.
    "Gemma3ForConditionalGeneration": Arch(
        "gemma3",
        _gemma3,
        _check_gemma,
        norm_offset=1.0,
        ollama_adapter=False,
        prefixes=(("model.language_model.", "model."), ("language_model.model.", "model.")),
        skip=(
            "model.vision_tower.",
            "vision_tower.",
            "model.multi_modal_projector.",
            "multi_modal_projector.",
        ),
    ),
    "Phi3ForCausalLM": Arch("phi3", _phi3),
}


def text_config(config: dict) -> dict:
    """The language model's config (a vision-language checkpoint nests it under text_config)."""
    if "text_config" in config and "num_hidden_layers" not in config:
        text = dict(config["text_config"])
        text.setdefault("architectures", config.get("architectures"))
        text.setdefault("tie_word_embeddings", config.get("tie_word_embeddings", True))
        return text
    return config


def arch_of(config: dict, where) -> Arch:
    hf_arch = (config.get("architectures") or ["?"])[0]
    if hf_arch not in ARCHITECTURES:
        raise ExportError(
            f"{where}: architecture {hf_arch} is not supported for GGUF export",
            f"supported: {', '.join(ARCHITECTURES)}. Writing it anyway would give a file that "
            "llama.cpp runs differently (--verify would catch it)",
        )
    arch = ARCHITECTURES[hf_arch]
    arch.check(text_config(config))
    return arch


# HF per-expert tensors: model.layers.{L}.(mlp|block_sparse_moe).experts.{E}.{proj}.weight
EXPERT = re.compile(r"^(model\.layers\.\d+\.(?:mlp|block_sparse_moe)\.experts)\.(\d+)\.(\w+)\.weight$")


def gguf_rule(gguf_arch: str) -> Arch | None:
    """The family's rule for a GGUF `general.architecture` (the first entry writing it)."""
    return next((a for a in ARCHITECTURES.values() if a.gguf == gguf_arch), None)
