"""LoRA training throughput on CPU: llmkit vs TRL's SFTTrainer (+PEFT), same model, data and settings.

    python bench/train_throughput.py [--train 512] [--eval 48] [--threads 2] [--configs ...]

Model: SmolLM2-135M-Instruct (the embedded GGUF, converted once). Data: 560 single-turn
conversations of mixed length (recipes/data/chat-llmkit.jsonl plus multi-fact answers up to
~300 tokens; 110 tokens on average); each config trains one epoch on the same `--train` of them and is scored on the
same `--eval` held-out ones. Answers-only loss everywhere (TRL: conversational prompt/completion
rows, so its completion-only loss applies). LoRA r16/alpha32/dropout 0.05 on all linear layers,
max length 512, lr 2e-4 linear, fp32 (bf16 is emulated, ~100x slower, on CPUs without AVX512-BF16;
TRL's bf16 default is turned off for that reason), effective batch 16 sequences (8 x 2 accumulation).

Configs, each in its own process (peak RSS is that process's):
  trl-default    SFTTrainer defaults: padding to the longest in batch, gradient checkpointing on
  trl-packing    packing=True (best-fit-decreasing, padding-free with position ids)
  llmkit         length-grouped batches, output layer on answer tokens only, passes of <= 1024 tokens
  llmkit-packed  the same with packing (rows of up to 512 tokens)
  llmkit-ckpt    llmkit with gradient checkpointing (TRL's default): less memory, some speed
Measured: trained (non-padding) tokens / training wall time; peak RSS; eval loss per answer
token, computed by the same function for all configs on the final adapter.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "train_throughput.json"
CONFIGS = ["trl-default", "trl-packing", "llmkit", "llmkit-packed", "llmkit-ckpt"]
DEFAULT = CONFIGS[:4]  # llmkit-ckpt on request: --configs llmkit-ckpt
MAX_LEN, BATCH, ACCUM, LR = 512, 8, 2, 2e-4


def conversations() -> list[list[dict]]:
    """560 single-turn conversations: the shipped chat data plus longer multi-fact answers."""
    rows = [
        json.loads(ln)["messages"]
        for ln in (ROOT / "recipes/data/chat-llmkit.jsonl").read_text().splitlines()
    ]
    single = [m for m in rows if len(m) == 2]
    rng = random.Random(0)
    out = list(single)
    while len(out) < 560:
        picks = rng.sample(single, rng.randint(2, 8))
        q = "Answer these, one line each: " + " / ".join(p[0]["content"] for p in picks)
        a = "\n".join(p[1]["content"] for p in picks)
        out.append([{"role": "user", "content": q}, {"role": "assistant", "content": a}])
    rng.shuffle(out)
    return out


def run_one(name: str, n_train: int, n_eval: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit import data as datalib
    from llmkit.methods.model import LossModel
    from llmkit.sources import resolve

    base = resolve("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(base)
    convs = conversations()
    train_c, eval_c = convs[:n_train], convs[-n_eval:]
    encode = [datalib.tokenize_row({"messages": c}, "messages", tok, max_length=MAX_LEN) for c in train_c]
    eval_ex = [datalib.tokenize_row({"messages": c}, "messages", tok, max_length=MAX_LEN) for c in eval_c]
    tokens = sum(len(e) for e in encode)
    lora = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"llmkit-bench-{name}-{os.getpid()}"
    if name.startswith("trl"):
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
        ds = Dataset.from_list([{"prompt": c[:1], "completion": c[1:]} for c in train_c])
        args = SFTConfig(
            output_dir=str(work),
            per_device_train_batch_size=BATCH,
            gradient_accumulation_steps=ACCUM,
            learning_rate=LR,
            lr_scheduler_type="linear",
            num_train_epochs=1,
            max_length=MAX_LEN,
            bf16=False,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            seed=42,
            packing=name == "trl-packing",
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(
            model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=LoraConfig(**lora)
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        peft_model = trainer.model
        steps = trainer.state.global_step
    else:
        import llmkit

        path = work / "train.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in train_c))
        recipe = {
            "model": {"name": "smollm2-135m-instruct"},
            "data": {
                "path": str(path),
                "format": "messages",
                "max_length": MAX_LEN,
                "eval_fraction": 0,
                "packing": name == "llmkit-packed",
            },
            "lora": {"r": 16, "alpha": 32, "dropout": 0.05},
            "train": {
                "output_dir": str(work / "run"),
                "epochs": 1,
                "batch_size": BATCH,
                "grad_accum": ACCUM,
                "lr": LR,
                "scheduler": "linear",
                "warmup_ratio": 0,
                "precision": "fp32",
                "eval_every": 0,
                "gradient_checkpointing": name == "llmkit-ckpt",
                "save_every": 0,
                "seed": 42,
            },
        }
        start = time.perf_counter()
        out = llmkit.train(recipe, overwrite=True)
        info = json.loads((out / "run.json").read_text())
        seconds = info["train_seconds"]
        steps = info["steps"]
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
        peft_model = PeftModel.from_pretrained(model, out / "adapter")
        del start

    loss_model = LossModel(peft_model).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(eval_ex), 8):
            batch = datalib.collate(eval_ex, [[j] for j in range(i, min(i + 8, len(eval_ex)))], pad_id=0)
            total += float(loss_model(**batch))
            count += int((batch["labels"][:, 1:] != datalib.IGNORE).sum())
    return {
        "config": name,
        "train_examples": n_train,
        "trained_tokens": tokens,
        "steps": steps,
        "train_seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "eval_loss": round(total / count, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--eval", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="*", default=DEFAULT, choices=CONFIGS)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.train, args.eval, args.threads)))
        return
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "LLMKIT_QUIET": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    results = []
    for name in args.configs:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            name,
            "--train",
            str(args.train),
            "--eval",
            str(args.eval),
            "--threads",
            str(args.threads),
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if r.returncode or not line:
            sys.exit(f"{name} failed:\n{r.stderr[-3000:]}")
        results.append(json.loads(line.removeprefix("RESULT ")))
        print(json.dumps(results[-1]), flush=True)
    if RESULTS.exists():  # a partial rerun (--configs ...) updates the stored results
        kept = [r for r in json.loads(RESULTS.read_text())["results"] if r["config"] not in args.configs]
        results = sorted(kept + results, key=lambda r: CONFIGS.index(r["config"]))
    by = {r["config"]: r for r in results}
    summary = {}
    for ours in ("llmkit", "llmkit-packed", "llmkit-ckpt"):
        for theirs in ("trl-default", "trl-packing"):
            if ours in by and theirs in by:
                summary[f"{ours} / {theirs} tokens/s"] = round(
                    by[ours]["tokens_per_s"] / by[theirs]["tokens_per_s"], 2
                )
    import platform

    import torch
    import transformers
    import trl

    report = {
        "model": "SmolLM2-135M-Instruct (fp32)",
        "device": "cpu",
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "max_length": MAX_LEN,
        "effective_batch": BATCH * ACCUM,
        "lora": "r16 alpha32 dropout0.05 all-linear",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "load_average_at_end": os.getloadavg()[0],
        "results": results,
        "speedup": summary,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
