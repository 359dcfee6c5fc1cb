"""A GGUF writer for llama-family HF models, on gguf-py, streaming tensor by tensor.

The writer plans every tensor from the safetensors headers (name, shape, output type), writes
the header and metadata, then loads, converts and writes one tensor at a time, so peak memory
is about one tensor (in float32) whatever the model size. The file is written to a temporary
sibling and renamed into place only when complete.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.errors import ExportError
from llmkit.export.vocab import Vocab, load_vocab

# HF `architectures[0]` → GGUF architecture name.
ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}

# Output types: name → (GGML tensor type, general.file_type).
TYPES = {
    "f32": ("F32", "ALL_F32"),
    "f16": ("F16", "MOSTLY_F16"),
    "bf16": ("BF16", "MOSTLY_BF16"),
    "q8_0": ("Q8_0", "MOSTLY_Q8_0"),
    "q4_0": ("Q4_0", "MOSTLY_Q4_0"),
    "q4_1": ("Q4_1", "MOSTLY_Q4_1"),
    "q5_0": ("Q5_0", "MOSTLY_Q5_0"),
    "q5_1": ("Q5_1", "MOSTLY_Q5_1"),
}


@dataclass
class TensorPlan:
    name: str  # GGUF name
    shape: tuple[int, ...]  # PyTorch row-major shape
    qtype: str  # GGML type name
    load: Callable[[], np.ndarray]  # float32 array, already transformed


@dataclass
class GGUFResult:
    path: Path
    arch: str
    out_type: str
    n_tensors: int
    size: int
    vocab: Vocab


def check_type(out_type: str) -> str:
    t = out_type.lower()
    if t not in TYPES:
        raise ExportError(
            f"unknown GGUF type '{out_type}'",
            f"choose one of {', '.join(TYPES)} (K-quants such as q4_K_M: export f16 and use --quantize with --ollama)",
        )
    return t


def read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ExportError(f"{model_dir} has no config.json", "pass a Hugging Face model directory")
    return json.loads(path.read_text(encoding="utf-8"))


def gguf_arch(config: dict, where: Path) -> str:
    hf_arch = (config.get("architectures") or ["?"])[0]
    if hf_arch not in ARCHITECTURES:
        raise ExportError(
            f"{where}: architecture {hf_arch} is not supported for GGUF export",
            f"supported: {', '.join(ARCHITECTURES)}",
        )
    return ARCHITECTURES[hf_arch]


# ----------------------------------------------------------------------------- safetensors


class Weights:
    """The tensors of a (possibly sharded) safetensors model dir, read one at a time.

    Plain reads, not mmap: mapped pages stay resident (and count in RSS) after a tensor is
    done, so peak memory would grow to the model size; a read buffer is freed with the tensor.
    """

    DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}

    def __init__(self, model_dir: Path):
        model_dir = Path(model_dir)
        index = model_dir / "model.safetensors.index.json"
        if index.is_file():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        else:
            files = sorted(p.name for p in model_dir.glob("*.safetensors"))
        if not files:
            raise ExportError(
                f"{model_dir} has no *.safetensors weights", "save the model with safe_serialization=True"
            )
        self.entries: dict[str, tuple[Path, int, dict]] = {}
        for f in files:
            path = model_dir / f
            with open(path, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
            header.pop("__metadata__", None)
            for name, entry in header.items():
                self.entries[name] = (path, 8 + n, entry)

    def names(self) -> list[str]:
        return list(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name][2]["shape"])

    def load(self, name: str) -> np.ndarray:
        path, base, entry = self.entries[name]
        if entry["dtype"] not in self.DTYPES:
            raise ExportError(f"{path.name}: tensor {name} has dtype {entry['dtype']}, expected F32/F16/BF16")
        start, end = entry["data_offsets"]
        with open(path, "rb") as fh:
            fh.seek(base + start)
            raw = np.frombuffer(fh.read(end - start), dtype=self.DTYPES[entry["dtype"]])
        if entry["dtype"] == "BF16":  # bfloat16 is the top half of a float32
            raw = (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32, copy=False).reshape(entry["shape"])


# ----------------------------------------------------------------------------- per-arch rules


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rope → llama.cpp's adjacent-pair rope (llama arch only): reorder rows per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def rope_settings(config: dict) -> tuple[float, dict | None]:
    """(rope theta, scaling dict or None) from either the old or the transformers-5 config layout."""
    params = config.get("rope_parameters") or {}
    theta = config.get("rope_theta") or params.get("rope_theta") or 10000.0
    scaling = config.get("rope_scaling") or (
        params if params.get("rope_type", "default") != "default" else None
    )
    if scaling and (scaling.get("rope_type") or scaling.get("type")) == "default":
        scaling = None
    return float(theta), scaling


def llama3_rope_factors(config: dict, theta: float, scaling: dict) -> np.ndarray:
    """Per-frequency divisors of Llama 3.1+ rope scaling (llama.cpp reads them from rope_freqs.weight)."""
    dim = head_dim(config)
    factor = scaling.get("factor", 8.0)
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    old_ctx = scaling.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    freqs = 1.0 / (theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
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


def add_hparams(writer, arch: str, config: dict, n_vocab: int) -> np.ndarray | None:
    """Model hyper-parameters as GGUF metadata; returns rope_freqs for Llama 3.1+ scaling."""
    import gguf

    theta, scaling = rope_settings(config)
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_context_length(config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config.get("num_key_value_heads") or config["num_attention_heads"])
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-6))
    if config.get("head_dim"):
        writer.add_key_length(config["head_dim"])
        writer.add_value_length(config["head_dim"])
    if arch == "llama":
        writer.add_vocab_size(n_vocab)
        writer.add_rope_dimension_count(head_dim(config))
    if not scaling:
        return None
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind == "llama3":
        return llama3_rope_factors(config, theta, scaling)
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
        return None
    raise ExportError(f"rope scaling '{kind}' is not supported for GGUF export", "supported: linear, llama3")


def plan_tensors(weights: Weights, arch: str, config: dict, out_type: str) -> list[TensorPlan]:
    """Name, shape and output type of every tensor, in a stable order, without loading data."""
    import gguf

    n_layers = config["num_hidden_layers"]
    name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), n_layers)
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    tied = config.get("tie_word_embeddings", False)
    plans = []
    for hf_name in weights.names():
        if hf_name.endswith(("rotary_emb.inv_freq", "masked_bias")):
            continue
        if hf_name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(
                f"tensor {hf_name} has no GGUF name for architecture {arch}", "is this a plain causal LM?"
            )
        shape = weights.shape(hf_name)
        transform = None
        if arch == "llama" and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            transform = lambda w: permute_qk(w, n_head)  # noqa: E731
        elif arch == "llama" and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            transform = lambda w: permute_qk(w, n_kv)  # noqa: E731
        plans.append(
            TensorPlan(name, shape, tensor_type(name, shape, out_type), _loader(weights, hf_name, transform))
        )
    return plans


def tensor_type(name: str, shape: tuple[int, ...], out_type: str) -> str:
    """Norms, biases and 1-D tensors stay F32; rows not divisible by the quant block fall back to F16."""
    import gguf

    if len(shape) == 1 or name.endswith("_norm.weight"):
        return "F32"
    qtype = TYPES[out_type][0]
    if qtype.startswith(("Q4", "Q5")) and name in ("output.weight", "token_embd.weight"):
        qtype = (
            "Q8_0"  # like llama-quantize: 4/5-bit logits (tied models read them from token_embd) hurt most
        )
    block = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, qtype)][0]
    if shape[-1] % block:
        return "F16"
    return qtype


def _loader(weights: Weights, hf_name: str, transform) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        w = weights.load(hf_name)
        return transform(w) if transform else w

    return load


def encode(array: np.ndarray, qtype: str) -> np.ndarray:
    import gguf

    if qtype == "F32":
        return np.ascontiguousarray(array, dtype=np.float32)
    if qtype == "F16":
        return np.ascontiguousarray(array, dtype=np.float16)
    return gguf.quants.quantize(
        np.ascontiguousarray(array, dtype=np.float32), getattr(gguf.GGMLQuantizationType, qtype)
    )


def nbytes(shape: tuple[int, ...], qtype: str) -> tuple[tuple[int, ...], int]:
    import gguf

    t = getattr(gguf.GGMLQuantizationType, qtype)
    if qtype in ("F32", "F16"):
        return shape, int(np.prod(shape)) * (4 if qtype == "F32" else 2)
    byte_shape = gguf.quants.quant_shape_to_byte_shape(shape, t)
    return byte_shape, int(np.prod(byte_shape))


# ----------------------------------------------------------------------------- writing


def write_tensors(writer, plans: list[TensorPlan], *, label: str) -> None:
    """Declare all tensors, write header + metadata, then stream tensor data one at a time."""
    import gguf

    from llmkit.ui import progress_items

    for p in plans:
        shape, size = nbytes(p.shape, p.qtype)
        raw = None if p.qtype in ("F32", "F16") else getattr(gguf.GGMLQuantizationType, p.qtype)
        dtype = {"F32": np.float32, "F16": np.float16}.get(p.qtype, np.uint8)
        writer.add_tensor_info(p.name, shape, np.dtype(dtype), size, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    with progress_items() as bar:
        task = bar.add_task(label, total=len(plans))
        for p in plans:
            data = encode(p.load(), p.qtype)
            writer.write_tensor_data(data)
            del data
            bar.advance(task)
    writer.close()


def check_disk_space(target_dir: Path, needed: int) -> None:
    free = shutil.disk_usage(target_dir).free
    if free < needed * 1.05:
        from llmkit.files import human_size

        raise ExportError(
            f"not enough disk space in {target_dir}: need {human_size(needed)}, {human_size(free)} free",
            "free some space or write elsewhere with -o DIR",
        )


def atomic_write(final: Path, write: Callable[[Path], None]) -> None:
    """Run write(tmp) and rename tmp → final; on any failure nothing is left at either path."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, final)
    except OSError as exc:
        raise ExportError(
            f"writing {final} failed: {exc.strerror or exc}", "check free disk space and file size limits"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_gguf(
    model_dir: Path,
    out: Path,
    out_type: str = "f16",
    *,
    name: str | None = None,
    chat_template: str | None = None,
) -> GGUFResult:
    """Convert a HF model dir (safetensors + tokenizer.json) to a GGUF file at `out`."""
    import gguf

    model_dir, out = Path(model_dir), Path(out)
    out_type = check_type(out_type)
    config = read_config(model_dir)
    arch = gguf_arch(config, model_dir)
    weights = Weights(model_dir)
    n_vocab = weights.shape("model.embed_tokens.weight")[0]
    vocab = load_vocab(model_dir, n_vocab, chat_template=chat_template)
    plans = plan_tensors(weights, arch, config, out_type)
    out.parent.mkdir(parents=True, exist_ok=True)
    check_disk_space(out.parent, sum(nbytes(p.shape, p.qtype)[1] for p in plans))

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, arch)
        try:
            writer.add_type(gguf.GGUFType.MODEL)
            writer.add_name(name or model_dir.name)
            rope_freqs = add_hparams(writer, arch, config, n_vocab)
            writer.add_file_type(getattr(gguf.LlamaFileType, TYPES[out_type][1]))
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            vocab.add_to(writer)
            if rope_freqs is not None:
                plans.insert(0, TensorPlan("rope_freqs.weight", rope_freqs.shape, "F32", lambda: rope_freqs))
            write_tensors(writer, plans, label=f"GGUF {out_type}")
        finally:
            writer.close()

    atomic_write(out, write)
    return GGUFResult(out, arch, out_type, len(plans), out.stat().st_size, vocab)


def iter_fields(path: Path) -> Iterator[tuple[str, object]]:
    """(key, value) of a GGUF file's metadata, for tests and `--json` reports."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    for key, f in reader.fields.items():
        try:
            yield key, f.contents()
        except Exception:  # exotic types: skip
            continue


# ----------------------------------------------------------------------------- LoRA adapter


def write_adapter_gguf(adapter_dir: Path, base_dir: Path, out: Path, out_type: str = "f16") -> Path:
    """A PEFT LoRA adapter as a GGUF adapter (general.type=adapter) for Ollama's ADAPTER / llama.cpp --lora."""
    import gguf

    from llmkit.export.merge import load_adapter

    out_type = check_type(out_type)
    if out_type not in ("f32", "f16", "bf16"):
        raise ExportError(f"a GGUF adapter can be f32, f16 or bf16, not {out_type}", "use --gguf f16")
    config = read_config(base_dir)
    arch = gguf_arch(config, base_dir)
    adapter = load_adapter(adapter_dir)
    cfg = adapter.config
    if (
        cfg.get("use_dora")
        or cfg.get("modules_to_save")
        or any("lora_embedding" in k for k in adapter.tensors)
    ):
        raise ExportError(
            f"{adapter_dir} uses DoRA, modules_to_save or embedding LoRA, which a GGUF adapter cannot hold",
            "export the merged model instead (drop --adapter-only)",
        )
    name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.upper()), config["num_hidden_layers"])
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    alpha = float(cfg["lora_alpha"])
    qtype = TYPES[out_type][0]
    plans = []
    for key in sorted(k for k in adapter.tensors if k.endswith(".lora_A.weight")):
        module = key.removesuffix(".lora_A.weight")
        a = adapter.tensors[key].float().numpy()
        b = adapter.tensors[f"{module}.lora_B.weight"].float().numpy()
        # llama.cpp scales by alpha / rank; fold any per-module difference (rsLoRA, patterns) into B.
        b = b * (adapter.scale(module) * a.shape[0] / alpha)
        if arch == "llama" and module.endswith("q_proj"):
            b = permute_qk(b, n_head)
        elif arch == "llama" and module.endswith("k_proj"):
            b = permute_qk(b, n_kv)
        base = name_map.get_name(f"{module}.weight", try_suffixes=(".weight",))
        if base is None:
            raise ExportError(f"adapter module {module} has no GGUF name for architecture {arch}")
        for suffix, arr in (("lora_a", a), ("lora_b", b)):
            plans.append(
                TensorPlan(
                    f"{base}.{suffix}",
                    arr.shape,
                    qtype if qtype != "F32" else "F32",
                    (lambda x: lambda: x)(arr),
                )
            )

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, arch)
        try:
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_name(Path(adapter_dir).parent.name or "adapter")
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
            writer.add_file_type(getattr(gguf.LlamaFileType, TYPES[out_type][1]))
            write_tensors(writer, plans, label="GGUF adapter")
        finally:
            writer.close()

    atomic_write(Path(out), write)
    return Path(out)
