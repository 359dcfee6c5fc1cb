"""Peak memory of the shard-by-shard merge and the streaming GGUF writer vs model size.

Builds config-only Llama models of two sizes (saved in ~100 MB shards) with a LoRA adapter,
then runs `merge` and `write_gguf` each in a fresh process and reports how much the peak RSS
grew above the process's warm baseline (imports done). Bounded memory shows as growth that
stays near one shard (merge) or one tensor (GGUF) while the model size triples.

    .venv/bin/python bench/export_memory.py     # writes bench/results/export_memory.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "export_memory.json"

BUILD = """
import shutil, torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM
from llmkit.tiny import tiny_model_dir
tok = tiny_model_dir("tiny-llama")
cfg = LlamaConfig(vocab_size=448, hidden_size=768, intermediate_size=2048, num_hidden_layers={layers},
                  num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=512)
m = LlamaForCausalLM(cfg)
m.save_pretrained("{d}/base", max_shard_size="100MB")
for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(tok / f, "{d}/base/" + f)
p = get_peft_model(m, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False))
p.save_pretrained("{d}/adapter")
"""

MEASURE = """
import resource, torch, safetensors.torch, transformers
from transformers import AutoTokenizer
from llmkit.exporter.merge import merge
from llmkit.exporter.gguf import write_gguf
AutoTokenizer.from_pretrained("{d}/base")
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = peak()
{call}
print(before, peak())
"""


def run(code: str) -> str:
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env={"LLMKIT_QUIET": "1", "OMP_NUM_THREADS": "2", **__import__("os").environ},
    )
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return r.stdout


def main() -> None:
    rows = []
    for layers in (4, 12):
        d = Path(tempfile.mkdtemp(prefix="llmkit-bench-mem-"))
        run(BUILD.format(d=d, layers=layers))
        size = sum(p.stat().st_size for p in (d / "base").glob("*.safetensors"))
        shard = max(p.stat().st_size for p in (d / "base").glob("*.safetensors"))
        for step, call in (
            ("merge", f'merge("{d}/base", "{d}/adapter", "{d}/merged")'),
            ("gguf f16", f'write_gguf("{d}/merged", "{d}/m.gguf", "f16")'),
        ):
            before, after = map(int, run(MEASURE.format(d=d, call=call)).split()[-2:])
            rows.append(
                {
                    "layers": layers,
                    "step": step,
                    "model_mib": round(size / 2**20),
                    "largest_shard_mib": round(shard / 2**20),
                    "peak_growth_mib": round((after - before) / 2**20),
                }
            )
            print(json.dumps(rows[-1]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
