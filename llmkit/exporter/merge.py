"""Fold a PEFT LoRA adapter into the base weights, shard by shard.

We never load the whole model, nor even a whole shard: each output shard's header is written
first (shapes and dtypes are those of the base shard), then each tensor is read, gets its LoRA
delta (scale · B @ A, computed in float32) and is written before the next one is read. Peak
memory is about the largest tensor plus the (small) adapter.
Supports LoRA, rsLoRA, DoRA, rank/alpha patterns, embedding LoRA and modules_to_save.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import ExportError
from llmkit.files import atomic_dir, write_json
from llmkit.headers import read_safetensors

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
MODEL_FILES = ("config.json", "generation_config.json")


@dataclass
class Adapter:
    config: dict
    tensors: dict  # name without the "base_model.model." prefix → torch tensor

    def scale(self, module: str) -> float:
        r = _pattern_value(self.config.get("rank_pattern") or {}, module, self.config["r"])
        alpha = _pattern_value(self.config.get("alpha_pattern") or {}, module, self.config["lora_alpha"])
        return alpha / math.sqrt(r) if self.config.get("use_rslora") else alpha / r


def _pattern_value(patterns: dict, module: str, default):
    for key, value in patterns.items():  # PEFT's rule: the key matches a suffix of the module name
        if re.match(rf"(.*\.)?{key}$", module):
            return value
    return default


def load_adapter(adapter_dir: Path) -> Adapter:
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    cfg_path, weights = adapter_dir / "adapter_config.json", adapter_dir / "adapter_model.safetensors"
    if not cfg_path.is_file() or not weights.is_file():
        raise ExportError(
            f"{adapter_dir} holds no PEFT adapter (adapter_config.json + adapter_model.safetensors)",
            "train first (llmkit train RECIPE), or pass a model directory instead of a run",
        )
    config = json.loads(cfg_path.read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise ExportError(f"{adapter_dir}: only LoRA adapters can be merged (got {config.get('peft_type')})")
    if config.get("fan_in_fan_out"):
        raise ExportError(f"{adapter_dir}: fan_in_fan_out adapters (GPT-2 Conv1D) are not supported")
    tensors = {k.removeprefix("base_model.model."): v for k, v in load_file(weights).items()}
    return Adapter(config, tensors)


def lora_delta(adapter: Adapter, module: str, base):
    """The merged weight for `module` (float32), or None if the adapter does not touch it."""
    import torch

    t = adapter.tensors
    if f"{module}.lora_A.weight" in t:
        a, b = t.pop(f"{module}.lora_A.weight").float(), t.pop(f"{module}.lora_B.weight").float()
        delta = (b @ a) * adapter.scale(module)
    elif f"{module}.lora_embedding_A" in t:
        a, b = t.pop(f"{module}.lora_embedding_A").float(), t.pop(f"{module}.lora_embedding_B").float()
        delta = (b @ a).T * adapter.scale(module)
    else:
        return None
    merged = base.float() + delta
    magnitude = t.pop(f"{module}.lora_magnitude_vector", None)
    if magnitude is None:
        magnitude = t.pop(f"{module}.lora_magnitude_vector.weight", None)
    if magnitude is not None:  # DoRA: rescale each output row to the learned magnitude
        norm = torch.linalg.norm(merged, dim=1)
        merged = merged * (magnitude.float() / norm).unsqueeze(1)
    return merged


# A routed expert's projection on disk → which half of the fused in-memory `gate_up_proj` it is
# (transformers 5 keeps experts stacked in memory, PEFT trains them there; checkpoints stay per expert).
EXPERT_HALF = {"gate_proj": 0, "w1": 0, "up_proj": 1, "w3": 1, "down_proj": None, "w2": None}
EXPERT_LORA = re.compile(r"^(model\.layers\.\d+\.mlp\.experts)((?:\.base_layer)*)\.lora_A\.weight$")


class ExpertLora:
    """LoRA on stacked expert parameters (PEFT `target_parameters`), applied to per-expert tensors.

    PEFT stores one factor pair per stacked parameter: A [r·E, in], B [out, r·E]; expert e's
    update is B[:, :, e] @ A[e] (the layout of PEFT's ParamWrapper). Which pair belongs to
    gate_up_proj and which to down_proj is read from their shapes; the delta of one expert is
    computed when its tensor is written, so memory stays at one expert.
    """

    def __init__(self, adapter: Adapter, n_experts: int):
        self.adapter, self.n_experts, self.used = adapter, n_experts, set()
        self.pairs: dict[str, list[tuple[str, object, object]]] = {}
        for key in adapter.tensors:
            m = EXPERT_LORA.match(key)
            if m:
                b_key = key.replace(".lora_A.", ".lora_B.")
                self.pairs.setdefault(m.group(1), []).append(
                    (key, adapter.tensors[key], adapter.tensors[b_key])
                )

    def delta(self, name: str, base):
        from llmkit.exporter.archs import EXPERT

        m = EXPERT.match(name)
        if not m or not self.pairs:
            return None
        module = m.group(1).replace(".block_sparse_moe.", ".mlp.")
        expert, proj = int(m.group(2)), m.group(3)
        if proj not in EXPERT_HALF:
            return None
        out_f, in_f = base.shape
        half = EXPERT_HALF[proj]
        want = (in_f, 2 * out_f) if half is not None else (in_f, out_f)
        for key, a, b in self.pairs.get(module, []):
            if (a.shape[1], b.shape[0]) != want:
                continue
            r = a.shape[0] // self.n_experts
            a_e = a.float().reshape(self.n_experts, r, -1)[expert]
            b_e = b.float().reshape(b.shape[0], r, self.n_experts)[:, :, expert]
            delta = (b_e @ a_e) * self.adapter.scale(module)
            if half is not None:
                delta = delta[half * out_f : (half + 1) * out_f]
            self.used.update((key, key.replace(".lora_A.", ".lora_B.")))
            return delta
        return None

    def consume(self) -> None:
        for key in self.used:
            self.adapter.tensors.pop(key, None)


def merge(base_dir: Path, adapter_dir: Path, out_dir: Path) -> Path:
    """Write base + adapter as a plain HF model dir at `out_dir` (atomic). The tokenizer is the
    run's (saved beside the adapter by training), else the base's."""
    import torch

    from llmkit.ui import progress_items

    base_dir, out_dir = Path(base_dir), Path(out_dir)
    adapter = load_adapter(adapter_dir)
    index = base_dir / "model.safetensors.index.json"
    shards = (
        sorted(set(json.loads(index.read_text())["weight_map"].values()))
        if index.is_file()
        else sorted(p.name for p in base_dir.glob("*.safetensors"))
    )
    if not shards:
        raise ExportError(f"{base_dir} has no safetensors weights to merge into")
    tokenizer_dir = Path(adapter_dir)
    if not (tokenizer_dir / "tokenizer_config.json").is_file():
        tokenizer_dir = base_dir
    base_names: set[str] = set()
    from llmkit.exporter.archs import n_experts, text_config

    config = (
        json.loads((base_dir / "config.json").read_text()) if (base_dir / "config.json").is_file() else {}
    )
    experts = ExpertLora(adapter, n_experts(text_config(config)))

    def merged(name: str, tensor):
        base_names.add(name)
        replaced = adapter.tensors.pop(name, None)  # modules_to_save: a full new tensor
        if replaced is not None:
            return replaced.to(tensor.dtype)
        expert = experts.delta(name, tensor)
        if expert is not None:
            return (tensor.float() + expert).to(tensor.dtype)
        if name.endswith(".weight"):
            folded = lora_delta(adapter, name.removesuffix(".weight"), tensor)
            if folded is not None:
                return folded.to(tensor.dtype)
        return tensor

    with atomic_dir(out_dir, replace=True) as tmp, progress_items() as bar:
        task = bar.add_task("merging shards", total=len(shards))
        for shard in shards:
            rewrite_safetensors(base_dir / shard, tmp / shard, merged)
            bar.advance(task)
        experts.consume()
        _check_consumed(adapter, base_names, adapter_dir)
        for f in MODEL_FILES:
            if (base_dir / f).is_file():
                shutil.copy2(base_dir / f, tmp / f)
        if index.is_file():
            shutil.copy2(index, tmp / index.name)
        for f in TOKENIZER_FILES:
            if (tokenizer_dir / f).is_file():
                shutil.copy2(tokenizer_dir / f, tmp / f)
        write_json(
            tmp / "llmkit-merge.json",
            {
                "base": str(base_dir),
                "adapter": str(adapter_dir),
                "torch": torch.__version__,
                "lora": {
                    k: adapter.config.get(k)
                    for k in (
                        "r",
                        "lora_alpha",
                        "use_rslora",
                        "use_dora",
                        "target_modules",
                        "target_parameters",
                    )
                },
            },
        )
    return out_dir


def rewrite_safetensors(src: Path, dst: Path, transform) -> None:
    """Copy a safetensors file through `transform(name, tensor)`, one tensor in memory at a time.

    `transform` keeps every dtype and shape, so the header (names, dtypes, shapes, offsets) is the
    same: it is copied first and each tensor's bytes follow as soon as they are computed. Plain
    reads, not mmap: mapped pages would stay resident and grow RSS to the shard size.
    """
    import torch

    dtypes = {
        "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
        "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
        "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    }  # fmt: skip
    h = read_safetensors(src)
    with open(src, "rb") as fh, open(dst, "wb") as out:
        out.write(fh.read(h.data_offset))  # the header, unchanged
        for name, entry in sorted(h.tensors.items(), key=lambda item: item[1]["data_offsets"][0]):
            start, end = entry["data_offsets"]
            dtype, shape = dtypes[entry["dtype"]], entry["shape"]
            fh.seek(h.data_offset + start)
            data = bytearray(fh.read(end - start))
            tensor = (
                torch.frombuffer(data, dtype=dtype).reshape(shape)
                if data
                else torch.empty(shape, dtype=dtype)
            )
            new = transform(name, tensor).contiguous()
            if new.dtype != dtype or list(new.shape) != shape:
                raise ExportError(
                    f"{src.name}: {name} would change from {tuple(shape)} {dtype} "
                    f"to {tuple(new.shape)} {new.dtype} when merged",
                    "was this adapter trained on a different base model?",
                )
            out.write(new.reshape(-1).view(torch.uint8).numpy().data)
            del data, tensor, new


def _check_consumed(adapter: Adapter, base_names: set[str], adapter_dir: Path) -> None:
    left = sorted(adapter.tensors)
    if not left:
        return
    if any(k.startswith("lm_head.") for k in left) and "lm_head.weight" not in base_names:
        raise ExportError(
            f"{adapter_dir} changes lm_head but the base model ties it to the input embeddings",
            "train without lm_head in target_modules/modules_to_save for tied-embedding models",
        )
    raise ExportError(
        f"{adapter_dir}: {len(left)} adapter tensors match no base weight (e.g. {left[0]})",
        "was this adapter trained on a different base model?",
    )
