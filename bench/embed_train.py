"""Embedding fine-tuning on CPU: `llmkit embed train` vs sentence-transformers' SentenceTransformerTrainer.

    python bench/embed_train.py [--rounds 2] [--threads 2] [--epochs 1] [--configs llmkit st]
                                [--override train.precision=fp32 ...]

Model: all-MiniLM-L6-v2 (the embedded default). Loss: MultipleNegativesRankingLoss (scale 20).
Data: the shipped recipe minilm-support (recipes/data/support-pairs.jsonl), split by llmkit's own
train_data.load (seed 42, a fifth held out). Both train on the *same batches in the same order*:
llmkit's schedule (train_data.schedule, no text twice in a batch) is computed in each process and
the trainer gets those rows through a batch sampler that yields exactly those batches. Batch 16,
lr 5e-5 linear with round(10% of steps) warmup, AdamW (weight decay 0.01, none on biases/norms),
grad-norm clip 1.0, seed 42.

Configs, each in its own process (peak RSS is that process's, ru_maxrss):
  llmkit    llmkit.embedding.train.train(minilm-support) with the recipe's defaults (+ --override)
  st        SentenceTransformerTrainer, fp32 (its default), no saving, no logging
  st-bf16   the same with bf16=True (the trainer's CPU autocast); on request
Measured: training examples / wall time of the training loop (llmkit: its reported train_seconds,
which include its end-of-run checkpoint; the trainer: trainer.train()); peak RSS; and the held-out
recall@1 / recall@10 / MRR of each final model computed by the same function
(llmkit.embedding.train_eval.evaluate with llmkit's encoder wrapper). With --rounds N the configs
run N times in alternating order (AB BA ...); medians are reported, and the ratio of each round's
pair with their median. OMP_NUM_THREADS = --threads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "embed_train.json"
RECIPE = "minilm-support"
CONFIGS = ["llmkit", "st", "st-bf16"]
DEFAULT = ["llmkit", "st"]


def _recipe(out: Path, epochs: float, overrides: list[str]):
    from llmkit.embedding.train import load

    base = [f"train.output_dir={out}", f"train.epochs={epochs}", "train.save_every=0"]
    return load(RECIPE, base + list(overrides))


def run_one(name: str, epochs: float, overrides: list[str]) -> dict:
    import torch

    from llmkit.embedding import train_data, train_eval
    from llmkit.embedding.train import _encoder

    work = Path(tempfile.mkdtemp(prefix=f"llmkit-bench-embed-{name}-"))
    recipe = _recipe(work / "run", epochs, overrides if name == "llmkit" else [])
    t = recipe.train
    data = train_data.load(recipe)
    steps = train_data.schedule(data.train, t.batch_size, t.seed, t.epochs, t.max_steps)
    examples = sum(len(b) for b in steps)

    if name == "llmkit":
        from llmkit.embedding.train import train

        info = train(recipe, overwrite=True)
        seconds = info["train_seconds"]
        before, after = info["evaluation"]["before"], info["evaluation"]["after"]
        threads = torch.get_num_threads()
    else:
        from datasets import Dataset
        from sentence_transformers import (
            SentenceTransformer,
            SentenceTransformerTrainer,
            SentenceTransformerTrainingArguments,
        )
        from sentence_transformers.base.sampler import DefaultBatchSampler
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        from llmkit.embedding.train import _model_dir

        torch.manual_seed(t.seed)
        model = SentenceTransformer(str(_model_dir(recipe)), device="cpu")
        before = train_eval.evaluate(_encoder(model), data, recipe.eval.k)
        flat = [data.train[i] for b in steps for i in b]  # llmkit's rows in step order
        bounds, at = [], 0
        for b in steps:
            bounds.append(list(range(at, at + len(b))))
            at += len(b)

        class SameBatches(DefaultBatchSampler):  # exactly llmkit's batches, in order
            def __iter__(self):
                yield from bounds

            def __len__(self):
                return len(bounds)

        dataset = Dataset.from_dict(
            {"anchor": [e.texts[0] for e in flat], "positive": [e.texts[1] for e in flat]}
        )
        args = SentenceTransformerTrainingArguments(
            output_dir=str(work / "st"),
            num_train_epochs=1,
            per_device_train_batch_size=t.batch_size,
            learning_rate=t.lr,
            lr_scheduler_type=t.scheduler,
            warmup_steps=round(t.warmup_ratio * len(steps)),
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            batch_sampler=lambda ds, **kw: SameBatches(ds, **kw),
            bf16=name == "st-bf16",
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=10_000,
            disable_tqdm=True,
            seed=t.seed,
            dataloader_num_workers=0,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            loss=MultipleNegativesRankingLoss(model, scale=recipe.loss.scale),
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        if trainer.state.global_step != len(steps):
            sys.exit(f"the trainer ran {trainer.state.global_step} steps, llmkit's schedule has {len(steps)}")
        after = train_eval.evaluate(_encoder(model), data, recipe.eval.k)
        threads = torch.get_num_threads()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "config": name,
        "overrides": overrides if name == "llmkit" else [],
        "threads": threads,
        "steps": len(steps),
        "examples": examples,
        "train_seconds": round(seconds, 2),
        "examples_per_s": round(examples / seconds, 2),
        "peak_rss_mb": round(peak / 1024),
        "before": before,
        "after": after,
    }


def cpu_model() -> str:
    from llmkit.devices import cpu_name

    return cpu_name()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return sorted(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have)
    except OSError:
        pass
    return []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="run every config N times, alternating order")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--configs", nargs="*", default=DEFAULT, choices=CONFIGS)
    ap.add_argument("--override", nargs="*", default=[], help="recipe overrides for the llmkit config")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.epochs, args.override)))
        return
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "LLMKIT_QUIET": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    runs: list[dict] = []
    for rnd in range(args.rounds):
        for name in args.configs if rnd % 2 == 0 else args.configs[::-1]:
            cmd = [sys.executable, __file__, "--one", name, "--epochs", str(args.epochs)]
            cmd += ["--override", *args.override] if args.override else []
            load_before = os.getloadavg()[0]
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if r.returncode or not line:
                sys.exit(f"{name} failed:\n{r.stderr[-3000:]}")
            result = json.loads(line.removeprefix("RESULT "))
            result["load_average"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
            result["round"] = rnd
            runs.append(result)
            print(json.dumps({k: v for k, v in result.items() if k != "before"}), flush=True)

    results = []
    for name in args.configs:
        mine = [r for r in runs if r["config"] == name]
        results.append(
            {
                **{
                    k: v
                    for k, v in mine[0].items()
                    if k not in ("train_seconds", "load_average", "after", "round")
                },
                "examples_per_s": round(statistics.median(r["examples_per_s"] for r in mine), 2),
                "examples_per_s_runs": [r["examples_per_s"] for r in mine],
                "peak_rss_mb": max(r["peak_rss_mb"] for r in mine),
                "peak_rss_mb_runs": [r["peak_rss_mb"] for r in mine],
                "after": mine[-1]["after"],
                "after_runs": [r["after"] for r in mine],
                "load_average_runs": [r["load_average"] for r in mine],
            }
        )
    by = {r["config"]: r for r in results}
    summary = {}
    for theirs in ("st", "st-bf16"):
        if "llmkit" not in by or theirs not in by:
            continue
        ours, t = by["llmkit"], by[theirs]
        pairs = [  # round by round (the two ran back to back): drift of the shared machine cancels
            a["examples_per_s"] / b["examples_per_s"]
            for a in runs
            for b in runs
            if a["config"] == "llmkit" and b["config"] == theirs and a["round"] == b["round"]
        ]
        summary[f"llmkit / {theirs}"] = {
            "examples_per_s_ratio": round(ours["examples_per_s"] / t["examples_per_s"], 2),
            "examples_per_s_ratio_by_round": [round(r, 2) for r in pairs],
            "examples_per_s_ratio_median_of_rounds": round(statistics.median(pairs), 2),
            "peak_rss_ratio": round(ours["peak_rss_mb"] / t["peak_rss_mb"], 2),
            "recall@1_points": round((ours["after"]["recall@1"] - t["after"]["recall@1"]) * 100, 1),
            "mrr_points": round((ours["after"]["mrr"] - t["after"]["mrr"]) * 100, 1),
        }
    import sentence_transformers
    import torch
    import transformers

    report = {
        "model": "all-MiniLM-L6-v2",
        "device": "cpu",
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "threads": args.threads,
        "shared_machine": "yes: other jobs run on these cores; load averages per run are given",
        "recipe": RECIPE,
        "config": {
            "loss": "MultipleNegativesRankingLoss (scale 20)",
            "data": "recipes/data/support-pairs.jsonl, llmkit's split (seed 42, 20% held out)",
            "batches": "llmkit's schedule, fed to both (same rows, same order)",
            "batch_size": 16,
            "lr": "5e-05 linear, 10% warmup",
            "epochs": args.epochs,
            "llmkit_overrides": args.override,
            "rounds": args.rounds,
        },
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence-transformers": sentence_transformers.__version__,
        },
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "results": results,
        "llmkit_vs": summary,
        "target": ">= 1.5x examples/s at <= 1.0x peak RSS, held-out score within 1 point",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nCPU: {report['cpu']} ({', '.join(report['cpu_flags'])}), {args.threads} threads")
    print(f"{'config':<10} {'examples/s':>11} {'peak RSS MB':>12} {'recall@1':>9} {'MRR':>7}")
    for r in results:
        a = r["after"]
        print(
            f"{r['config']:<10} {r['examples_per_s']:>11.2f} {r['peak_rss_mb']:>12} "
            f"{a['recall@1']:>9.3f} {a['mrr']:>7.3f}"
        )
    for theirs, s in summary.items():
        print(
            f"{theirs}: {s['examples_per_s_ratio']}x examples/s (rounds: {s['examples_per_s_ratio_by_round']}), "
            f"{s['peak_rss_ratio']}x peak RSS, "
            f"recall@1 {s['recall@1_points']:+.1f} pt, MRR {s['mrr_points']:+.1f} pt"
        )


if __name__ == "__main__":
    main()
