"""A GGUF writer for llama-family HF models, on gguf-py, streaming tensor by tensor.

The writer plans every tensor from the safetensors headers (name, shape, output type), writes
the header and metadata, then loads, converts and writes one tensor at a time, so peak memory
is about one tensor (in float32) whatever the model size. The file is written to a temporary
sibling and renamed into place only when complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmkit.errors import ExportError
from llmkit.exporter.archs import EXPERT, Arch, arch_of, n_experts, text_config
from llmkit.exporter.quantize import quantize
from llmkit.exporter.types import TYPES, gguf_type
from llmkit.exporter.vocab import Vocab, load_vocab
from llmkit.headers import read_safetensors


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
    """The type's name as the table spells it, or the usage error listing every type."""
    return gguf_type(out_type).name


def read_config(model_dir: Path) -> dict:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise ExportError(f"{model_dir} has no config.json", "pass a Hugging Face model directory")
    return json.loads(path.read_text(encoding="utf-8"))


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
            h = read_safetensors(model_dir / f)
            for name, entry in h.tensors.items():
                self.entries[name] = (h.path, h.data_offset, entry)

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


# ----------------------------------------------------------------------------- tensors


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF rotate-half rope → llama.cpp's adjacent-pair rope (llama arch only): reorder rows per head."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def text_name(arch: Arch, hf_name: str) -> str | None:
    """The HF name as the text model's (prefixes of multimodal checkpoints removed); None = not text."""
    if hf_name.startswith(arch.skip):
        return None
    for old, new in arch.prefixes:
        if hf_name.startswith(old):
            return new + hf_name[len(old) :]
    return hf_name


def plan_tensors(weights: Weights, arch: Arch, config: dict, out_type: str) -> list[TensorPlan]:
    """Name, shape and output type of every tensor, in a stable order, without loading data.

    Per-expert tensors of a MoE layer are stacked into one [experts, rows, cols] tensor, as
    llama.cpp expects; every other tensor maps one to one.
    """
    import gguf

    n_layers = config["num_hidden_layers"]
    name_map = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch.gguf.upper()), n_layers)
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    tied = config.get("tie_word_embeddings", False) or arch.tied_output
    plans: list[TensorPlan] = []
    groups: dict[str, dict[int, str]] = {}  # stacked HF name → expert index → HF tensor name
    for hf_name in weights.names():
        name = text_name(arch, hf_name)
        if name is None or name.endswith(("rotary_emb.inv_freq", "masked_bias")):
            continue
        if name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        expert = EXPERT.match(name)
        if expert:
            stacked = f"{expert.group(1)}.{expert.group(3)}.weight"
            if stacked not in groups:
                groups[stacked] = {}
                plans.append(TensorPlan(stacked, (), "", lambda: None))  # placeholder, filled below
            groups[stacked][int(expert.group(2))] = hf_name
            continue
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(
                f"tensor {hf_name} has no GGUF name for architecture {arch.gguf}",
                "is this a plain causal LM?",
            )
        transform = None
        if arch.permute_qk and name.endswith(("q_proj.weight", "q_proj.bias")):
            transform = lambda w: permute_qk(w, n_head)  # noqa: E731
        elif arch.permute_qk and name.endswith(("k_proj.weight", "k_proj.bias")):
            transform = lambda w: permute_qk(w, n_kv)  # noqa: E731
        elif arch.norm_offset and name.endswith("norm.weight"):
            transform = lambda w: w + arch.norm_offset  # noqa: E731
        shape = weights.shape(hf_name)
        if gguf_name.endswith("ffn_gate_inp_shexp.weight"):  # [1, n_embd] in HF, a vector in llama.cpp
            shape, transform = shape[1:], lambda w: w.reshape(-1)  # noqa: E731
        plans.append(
            TensorPlan(
                gguf_name,
                shape,
                tensor_type(gguf_name, shape, out_type),
                _loader(weights, hf_name, transform),
            )
        )
    return [
        _stacked_plan(p, groups[p.name], weights, name_map, config, out_type) if p.name in groups else p
        for p in plans
    ]


def _stacked_plan(placeholder, members: dict[int, str], weights, name_map, config, out_type) -> TensorPlan:
    expected = n_experts(config)
    if sorted(members) != list(range(expected)):
        raise ExportError(
            f"{placeholder.name.removesuffix('.weight')}: found {len(members)} experts, config says {expected}",
            "the checkpoint and its config.json disagree; re-save the model",
        )
    gguf_name = name_map.get_name(placeholder.name, try_suffixes=(".weight",))
    if gguf_name is None:
        raise ExportError(f"expert tensor {placeholder.name} has no GGUF name")
    names = [members[i] for i in range(expected)]
    shape = (expected, *weights.shape(names[0]))

    def load() -> np.ndarray:
        return np.stack([weights.load(n) for n in names])

    return TensorPlan(gguf_name, shape, tensor_type(gguf_name, shape, out_type), load)


def tensor_type(name: str, shape: tuple[int, ...], out_type: str) -> str:
    """Norms, biases and 1-D tensors stay F32; rows not divisible by the quant block fall back to F16."""
    import gguf

    if len(shape) == 1 or name.endswith(("_norm.weight", "ffn_gate_inp.weight", "ffn_gate_inp_shexp.weight")):
        return "F32"  # like llama.cpp's converter: norms and MoE routers keep full precision
    qtype = TYPES[out_type].ggml
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
    from llmkit.files import atomic_path

    try:
        with atomic_path(final) as tmp:
            write(tmp)
    except OSError as exc:
        raise ExportError(
            f"writing {final} failed: {exc.strerror or exc}", "check free disk space and file size limits"
        ) from None


def write_gguf(
    model_dir: Path,
    out: Path,
    out_type: str = "f16",
    *,
    name: str | None = None,
    chat_template: str | None = None,
    keep_f16: bool = False,
    tokenizer=None,
) -> GGUFResult:
    """Convert a HF model dir (safetensors + tokenizer.json) to a GGUF file at `out`.

    K-quants are written as F16 first (next to `out`, as `<stem>.f16.gguf`, removed unless
    `keep_f16`), then quantized by llama.cpp itself. `tokenizer`: the one already loaded from
    `model_dir` (loaded here if None).
    """
    import gguf

    model_dir, out = Path(model_dir), Path(out)
    out_type = check_type(out_type)
    if TYPES[out_type].producer == "llama.cpp":
        f16 = write_gguf(
            model_dir,
            out.with_name(f"{out.stem}.f16.gguf"),
            "f16",
            name=name,
            chat_template=chat_template,
            tokenizer=tokenizer,
        )
        try:
            quantize(f16.path, out, out_type)
        finally:
            if not keep_f16:
                f16.path.unlink(missing_ok=True)
        return GGUFResult(out, f16.arch, out_type, f16.n_tensors, out.stat().st_size, f16.vocab)
    full_config = read_config(model_dir)
    arch = arch_of(full_config, model_dir)
    config = text_config(full_config)
    weights = Weights(model_dir)
    embed = next((n for n in weights.names() if text_name(arch, n) == "model.embed_tokens.weight"), None)
    if embed is None:
        raise ExportError(
            f"{model_dir} has no model.embed_tokens.weight", "is this a complete causal LM checkpoint?"
        )
    n_vocab = weights.shape(embed)[0]
    vocab = load_vocab(model_dir, n_vocab, chat_template=chat_template, tokenizer=tokenizer)
    plans = plan_tensors(weights, arch, config, out_type)
    out.parent.mkdir(parents=True, exist_ok=True)
    check_disk_space(out.parent, sum(nbytes(p.shape, p.qtype)[1] for p in plans))

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, arch.gguf)
        try:
            writer.add_type(gguf.GGUFType.MODEL)
            writer.add_name(name or model_dir.name)
            extra = arch.hparams(writer, config, n_vocab)
            writer.add_file_type(getattr(gguf.LlamaFileType, TYPES[out_type].file_type))
            writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
            vocab.add_to(writer)
            extra_plans = [TensorPlan(n, a.shape, "F32", (lambda x: lambda: x)(a)) for n, a in extra]
            write_tensors(writer, extra_plans + plans, label=f"GGUF {out_type}")
        finally:
            writer.close()

    atomic_write(out, write)
    return GGUFResult(out, arch.gguf, out_type, len(plans), out.stat().st_size, vocab)
