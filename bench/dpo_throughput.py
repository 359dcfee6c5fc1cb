"""DPO LoRA training throughput on CPU: llmkit vs TRL's DPOTrainer (+PEFT), same model, data and settings.

    python bench/dpo_throughput.py [--steps 6] [--pairs 4] [--threads 2] [--repeats 1] [--configs ...]

Model: SmolLM2-135M-Instruct (the embedded GGUF, converted once), fp32 (see the bf16 configs). Data: the shipped
preference pairs recipes/data/llama-preferences.jsonl (prompt/chosen/rejected; TRL gets them in
its conversational form so both apply the model's chat template to a user turn and an assistant
turn). Both train `--steps` steps of `--pairs` pairs on the *same pairs in the same order*:
llmkit's data plan (seed 42) is computed here and TRL reads the rows in that order with a
sequential sampler, so the per-step losses are comparable. LoRA r16/alpha32/dropout 0 on all
linear layers; DPO sigmoid loss, beta 0.1; reference = the adapter-disabled model in both (no
precomputed reference log-probabilities); lr 1e-3 linear with 10% warmup, AdamW, weight decay 0,
grad-norm clip 1.0; max length 256 (no pair is truncated by either).

Configs, each in its own process (peak RSS is that process's; llmkit's run as `llmkit train` does, on
tcmalloc or jemalloc where the machine has one (llmkit.allocator), TRL's on glibc's malloc):
  llmkit       train.method=dpo, unpacked (chosen and rejected laid end to end in one row)
  llmkit-256   the same with passes of at most 256 tokens (train.max_batch_tokens; CPU default 1024):
               a pair per pass, less activation memory, no recomputation
  llmkit-ckpt  the same with gradient checkpointing (TRL's default)
  llmkit-bf16, llmkit-bf16-ckpt  train.precision=bf16: llmkit's own default (auto) on a CPU with
               native bf16 (AVX512-BF16, AMX): bf16 weights, LoRA sums in fp32
  trl          DPOTrainer defaults otherwise (gradient checkpointing on, padding to the longest)
  trl-nockpt   DPOTrainer with gradient_checkpointing=False
  trl-bf16     DPOTrainer with bf16=True, TRL's own default (autocast on CPU; fp32 weights); left
               out, like llmkit's bf16 configs, on a CPU without native bf16
Measured: trained tokens (non-padding tokens of prompt+chosen and prompt+rejected) / training
wall time; peak RSS; per-step training loss of each, and its largest relative difference to
llmkit's over the steps. With --repeats N the configs run N times, alternating order (ABC CBA
...), and the median tokens/s is reported: the machine is shared, single runs are noisy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "dpo_throughput.json"
DATA = ROOT / "recipes" / "data" / "llama-preferences.jsonl"
CONFIGS = [
    "llmkit",
    "llmkit-256",
    "llmkit-ckpt",
    "llmkit-bf16",
    "llmkit-bf16-ckpt",
    "trl",
    "trl-nockpt",
    "trl-bf16",
]
DEFAULT = CONFIGS  # README's table: all eight
MAX_LEN, LR, WARMUP, BETA, SEED = 256, 1e-3, 0.1, 0.1, 42


def recipe(
    steps: int, pairs: int, out: Path, ckpt: bool = False, precision: str = "fp32", budget: int = 0
) -> dict:
    return {
        "model": {"name": "smollm2-135m-instruct"},
        "data": {"path": str(DATA), "max_length": MAX_LEN, "packing": False, "eval_fraction": 0},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "train": {
            "method": "dpo",
            "output_dir": str(out),
            "max_steps": steps,
            "batch_size": pairs,
            "grad_accum": 1,
            "lr": LR,
            "scheduler": "linear",
            "warmup_ratio": WARMUP,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "precision": precision,
            "eval_every": 0,
            "save_every": 0,
            "log_every": 1,
            "gradient_checkpointing": ckpt,
            **({"max_batch_tokens": budget} if budget else {}),
            "seed": SEED,
        },
        "dpo": {"beta": BETA, "loss": "sigmoid"},
    }


def plan_order(steps: int, pairs: int) -> dict:
    """llmkit's pairs for each step (its data plan), their token counts and answer-token counts."""
    from transformers import AutoTokenizer

    from llmkit.methods import pairs as pairlib
    from llmkit.recipe import load
    from llmkit.sources import resolve
    from llmkit.steps import Plan

    r = load(recipe(steps, pairs, Path(tempfile.gettempdir()) / "unused"))
    tok = AutoTokenizer.from_pretrained(resolve(r.model.name))
    ds = pairlib.prepare(r, tok, SEED)
    plan = Plan(ds.train, r, 1, packing=False)
    order = []
    for step in range(steps):
        idx = [i for mb in plan.micro_batches(step, 0) for row in mb for i in row]
        if len(idx) != pairs:
            sys.exit(f"llmkit's plan gives {len(idx)} pairs at step {step + 1}, not {pairs}")
        order += idx
    ex = [ds.train[i] for i in order]
    return {
        "rows": [e.row for e in ex],
        "tokens": [len(e) for e in ex],
        "answer_tokens": [sum(lab != -100 for lab in e.labels) for e in ex],
        "dropped": sum(ds.dropped.values()),
    }


def run_one(name: str, steps: int, pairs: int, threads: int, order_file: Path) -> dict:
    import torch

    from llmkit.allocator import in_use

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    order = json.loads(order_file.read_text())
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"llmkit-bench-dpo-{name}-{os.getpid()}"

    if name.startswith("llmkit"):
        import llmkit

        precision = "bf16" if "bf16" in name else "fp32"
        budget = 256 if name == "llmkit-256" else 0
        out = llmkit.train(
            recipe(steps, pairs, work / "run", "ckpt" in name, precision, budget), overwrite=True
        )
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        info = json.loads((out / "run.json").read_text())
        seconds, tokens = info["train_seconds"], info["tokens_seen"]
        lines = (out / "metrics.jsonl").read_text().splitlines()
        losses = [m["loss"] for m in map(json.loads, lines) if "loss" in m]
        answer_tokens = sum(order["answer_tokens"])
    else:
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import DPOConfig, DPOTrainer

        from llmkit.sources import resolve

        base = resolve("smollm2-135m-instruct")
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
        rows = [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
            }
            for r in order["rows"]
        ]
        args = DPOConfig(
            output_dir=str(work),
            per_device_train_batch_size=pairs,
            gradient_accumulation_steps=1,
            max_steps=steps,
            learning_rate=LR,
            lr_scheduler_type="linear",
            warmup_steps=math.ceil(WARMUP * steps),  # llmkit's rounding of warmup_ratio
            weight_decay=0.0,
            max_grad_norm=1.0,
            beta=BETA,
            loss_type=["sigmoid"],
            max_length=MAX_LEN,
            gradient_checkpointing=name in ("trl", "trl-bf16"),
            train_sampling_strategy="sequential",  # the rows are already in llmkit's plan order
            bf16=name == "trl-bf16",  # TRL's own default is True; the fp32 configs set it off
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            seed=SEED,
            dataloader_num_workers=0,
        )
        losses: list[float] = []

        class Recorded(DPOTrainer):  # the exact per-step loss (the logs round it to 4 digits)
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
                if model.training:
                    losses.append(float((out[0] if return_outputs else out).detach()))
                return out

        lora = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        trainer = Recorded(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=lora,
        )
        ds = trainer.train_dataset
        if len(ds) != len(rows):
            sys.exit(f"TRL kept {len(ds)} of {len(rows)} pairs (max_length?)")
        p, c, rj = ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]
        tokens = sum(2 * len(a) + len(b) + len(d) for a, b, d in zip(p, c, rj, strict=True))
        answer_tokens = sum(len(b) + len(d) for b, d in zip(c, rj, strict=True))
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "config": name,
        "steps": steps,
        "pairs": steps * pairs,
        "trained_tokens": tokens,
        "answer_tokens": answer_tokens,
        "train_seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "peak_rss_mb": round(peak / 1024),
        "allocator": in_use(),
        "losses": [round(v, 6) for v in losses],
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--pairs", type=int, default=4, help="preference pairs per optimizer step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="run every config N times, alternating order")
    ap.add_argument("--configs", nargs="*", default=DEFAULT, choices=CONFIGS)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--order", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        result = run_one(args.one, args.steps, args.pairs, args.threads, Path(args.order))
        print("RESULT " + json.dumps(result))
        return
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "LLMKIT_QUIET": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    from llmkit import allocator
    from llmkit.devices import cpu_native_bf16

    if not cpu_native_bf16() and any("bf16" in c for c in args.configs):
        print("this CPU has no native bf16 (emulated, many times slower): the bf16 configs are left out")
        args.configs = [c for c in args.configs if "bf16" not in c]
    order = plan_order(args.steps, args.pairs)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        order_file = Path(tmp) / "order.json"
        order_file.write_text(json.dumps(order))
        for rep in range(args.repeats):
            for name in args.configs if rep % 2 == 0 else args.configs[::-1]:
                cmd = [sys.executable, __file__, "--one", name, "--order", str(order_file)]
                cmd += [
                    "--steps",
                    str(args.steps),
                    "--pairs",
                    str(args.pairs),
                    "--threads",
                    str(args.threads),
                ]
                # llmkit as `llmkit train` runs: on tcmalloc/jemalloc where the machine has one
                run_env = (allocator.preloaded_env(env) or env) if name.startswith("llmkit") else env
                r = subprocess.run(cmd, capture_output=True, text=True, env=run_env)
                line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if r.returncode or not line:
                    sys.exit(f"{name} failed:\n{r.stderr[-3000:]}")
                runs.append({**json.loads(line.removeprefix("RESULT ")), "load_average": os.getloadavg()[0]})
                short = {k: v for k, v in runs[-1].items() if k != "losses"}
                print(json.dumps(short), flush=True)

    results = []
    for name in args.configs:
        mine = [r for r in runs if r["config"] == name]
        results.append(
            {
                **{k: v for k, v in mine[0].items() if k not in ("train_seconds", "load_average")},
                "tokens_per_s": round(statistics.median(r["tokens_per_s"] for r in mine), 1),
                "tokens_per_s_runs": [r["tokens_per_s"] for r in mine],
                "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                "peak_rss_mb_runs": [r["peak_rss_mb"] for r in mine],
                "load_average_runs": [round(r["load_average"], 2) for r in mine],
            }
        )
    by = {r["config"]: r for r in results}
    summary = {}
    for mine, theirs in [
        (m, t) for m in CONFIGS if m.startswith("llmkit") for t in ("trl", "trl-nockpt", "trl-bf16")
    ]:
        if mine not in by or theirs not in by:
            continue
        ours, t = by[mine], by[theirs]
        rel = [abs(a - b) / abs(b) for a, b in zip(ours["losses"], t["losses"], strict=True)]
        summary[f"{mine} / {theirs}"] = {
            "tokens_per_s_ratio": round(ours["tokens_per_s"] / t["tokens_per_s"], 2),
            "peak_rss_ratio": round(ours["peak_rss_mb"] / t["peak_rss_mb"], 2),
            "loss_max_rel_diff": round(max(rel), 4),
            "loss_max_rel_diff_step": rel.index(max(rel)) + 1,
            "loss_max_abs_diff": round(
                max(abs(a - b) for a, b in zip(ours["losses"], t["losses"], strict=True)), 5
            ),
            "trained_tokens_differ_by": ours["trained_tokens"] - t["trained_tokens"],
            "answer_tokens_differ_by": ours["answer_tokens"] - t["answer_tokens"],
        }
    import torch
    import transformers
    import trl

    report = {
        "model": "SmolLM2-135M-Instruct (fp32; the llmkit-bf16 configs: bf16)",
        "device": "cpu",
        "cpu": cpu_model(),
        "threads": args.threads,
        "steps": args.steps,
        "pairs_per_step": args.pairs,
        "repeats": args.repeats,
        "max_length": MAX_LEN,
        "lora": "r16 alpha32 dropout0 all-linear",
        "dpo": f"sigmoid beta {BETA}, reference = adapter disabled",
        "lr": f"{LR} linear, warmup {math.ceil(WARMUP * args.steps)} steps",
        "data": str(DATA.relative_to(ROOT)),
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "trl": trl.__version__,
        },
        "load_average_at_end": os.getloadavg()[0],
        "results": results,
        "llmkit_vs": summary,
    }
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "results" in stored:  # a single run, written before runs were kept per CPU
        stored = {stored["cpu"]: stored}
    stored[report["cpu"]] = report  # one run per CPU: the AMD and Intel figures side by side
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(stored, indent=2) + "\n")
    print(f"\nCPU: {report['cpu']}, {args.threads} threads, {args.steps} steps x {args.pairs} pairs")
    print(f"{'config':<12} {'tokens/s':>9} {'peak RSS MB':>12}  loss first -> last")
    for r in results:
        print(
            f"{r['config']:<12} {r['tokens_per_s']:>9.1f} {r['peak_rss_mb']:>12}  "
            f"{r['losses'][0]:.4f} -> {r['losses'][-1]:.4f}"
        )
    for theirs, s in summary.items():
        print(
            f"{theirs}: {s['tokens_per_s_ratio']}x tokens/s, {s['peak_rss_ratio']}x peak RSS, "
            f"loss curve max rel. diff {s['loss_max_rel_diff']:.2%} (step {s['loss_max_rel_diff_step']})"
        )


if __name__ == "__main__":
    main()
