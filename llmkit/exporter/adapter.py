"""A PEFT LoRA adapter as a GGUF adapter (general.type=adapter), for Ollama's ADAPTER and
llama.cpp's --lora: the base model's tensor names with .lora_a / .lora_b, written by the same
streaming writer as the full model."""

from __future__ import annotations

from pathlib import Path

from llmkit.errors import ExportError
from llmkit.exporter.archs import arch_of, text_config
from llmkit.exporter.gguf import (
    TensorPlan,
    atomic_write,
    check_type,
    permute_qk,
    read_config,
    text_name,
    write_tensors,
)
from llmkit.exporter.types import TYPES


def write_adapter_gguf(adapter_dir: Path, base_dir: Path, out: Path, out_type: str = "f16") -> Path:
    """A PEFT LoRA adapter as a GGUF adapter (general.type=adapter) for Ollama's ADAPTER / llama.cpp --lora."""
    import gguf

    from llmkit.exporter.merge import load_adapter

    out_type = check_type(out_type)
    if not TYPES[out_type].adapter_ok:
        floats = ", ".join(t.name for t in TYPES.values() if t.adapter_ok)
        raise ExportError(f"a GGUF adapter can be {floats}, not {out_type}", "use --gguf f16")
    full_config = read_config(base_dir)
    arch = arch_of(full_config, base_dir)
    config = text_config(full_config)
    adapter = load_adapter(adapter_dir)
    cfg = adapter.config
    if (
        cfg.get("use_dora")
        or cfg.get("modules_to_save")
        or any("lora_embedding" in k for k in adapter.tensors)
        or cfg.get("target_parameters")
    ):
        raise ExportError(
            f"{adapter_dir} uses DoRA, modules_to_save, embedding or expert LoRA, which a GGUF adapter cannot hold",
            "export the merged model instead (drop --adapter-only)",
        )
    name_map = gguf.get_tensor_name_map(
        getattr(gguf.MODEL_ARCH, arch.gguf.upper()), config["num_hidden_layers"]
    )
    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    alpha = float(cfg["lora_alpha"])
    qtype = TYPES[out_type].ggml
    plans = []
    for key in sorted(k for k in adapter.tensors if k.endswith(".lora_A.weight")):
        module = key.removesuffix(".lora_A.weight")
        a = adapter.tensors[key].float().numpy()
        b = adapter.tensors[f"{module}.lora_B.weight"].float().numpy()
        # llama.cpp scales by alpha / rank; fold any per-module difference (rsLoRA, patterns) into B.
        b = b * (adapter.scale(module) * a.shape[0] / alpha)
        if arch.permute_qk and module.endswith("q_proj"):
            b = permute_qk(b, n_head)
        elif arch.permute_qk and module.endswith("k_proj"):
            b = permute_qk(b, n_kv)
        base = name_map.get_name(text_name(arch, f"{module}.weight") or "", try_suffixes=(".weight",))
        if base is None:
            raise ExportError(f"adapter module {module} has no GGUF name for architecture {arch.gguf}")
        for suffix, arr in (("lora_a", a), ("lora_b", b)):
            plans.append(
                TensorPlan(
                    f"{base}.{suffix}",
                    arr.shape,
                    qtype,
                    (lambda x: lambda: x)(arr),
                )
            )

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(tmp, arch.gguf)
        try:
            writer.add_type(gguf.GGUFType.ADAPTER)
            writer.add_name(Path(adapter_dir).parent.name or "adapter")
            writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
            writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
            writer.add_file_type(getattr(gguf.LlamaFileType, TYPES[out_type].file_type))
            write_tensors(writer, plans, label="GGUF adapter")
        finally:
            writer.close()

    atomic_write(Path(out), write)
    return Path(out)
