"""GRPO LoRA training throughput on CPU: llmkit vs TRL's GRPOTrainer (+PEFT), same model, prompts, rewards.

    python bench/grpo_throughput.py [--steps 4] [--threads 2] [--repeats 1] [--configs ...]

Model: SmolLM2-135M-Instruct (the embedded GGUF, converted once), fp32. Prompts: the shipped
recipes/data/one-word.jsonl (conversational for TRL, so both ask through the chat template with
the generation prompt). Rewards: the recipe smollm2-135m-grpo's own, llmkit.rewards' exact_answer
(weight 1) and length (weight 0.5) with the recipe's params; TRL calls the same functions through
a plain wrapper, so an answer scores the same in both. Each step: 2 prompts x 8 sampled answers
(temperature 1.0, top-k/top-p off, at most 24 new tokens, KV cache), group-normalised advantages,
the clipped objective normalised by a constant (TRL's loss_type="dr_grpo" is llmkit's loss), no KL
(beta 0), one optimisation pass per group; lr 1e-3 constant, AdamW, grad-norm clip 1.0; LoRA
r16/alpha32/dropout 0 on all linear layers. Both see the same prompts in the same order at every
step (llmkit's data plan, seed 42; TRL with shuffle_dataset=False). The answers themselves are
sampled, so the two runs differ by chance, not only by implementation.

Configs, each in its own process (peak RSS is that process's; llmkit's run as `llmkit train` does, on
tcmalloc or jemalloc where the machine has one (llmkit.allocator), TRL's on glibc's malloc):
  llmkit       train.method=grpo
  llmkit-bf16  the same with train.precision=bf16: llmkit's own default (auto) on a CPU with native
               bf16 (AVX512-BF16, AMX); left out elsewhere
  trl          GRPOTrainer defaults otherwise (gradient checkpointing on)
  trl-bf16     GRPOTrainer with bf16=True, TRL's own default (autocast on CPU; fp32 weights)
  trl-nockpt   GRPOTrainer with gradient_checkpointing=False; on request
  base         no training: the untrained model's held-out score (for reference)
Measured: completions scored / training wall time (sampling, scoring and the update together);
peak RSS (measured before the held-out check); mean training reward per step, over the run and
over its last 3 steps; after training, greedy answers to the 18 held-out prompts
(recipes/data/one-word-eval.jsonl) scored by the same code for every config (mean total reward
and exact-answer rate). With --repeats N the configs run N times, alternating order; the median
completions/s is reported (a shared machine: single runs are noisy).
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
RESULTS = ROOT / "bench" / "results" / "grpo_throughput.json"
RECIPE = ROOT / "recipes" / "smollm2-135m-grpo.yaml"
DATA = ROOT / "recipes" / "data" / "one-word.jsonl"
EVAL = ROOT / "recipes" / "data" / "one-word-eval.jsonl"
CONFIGS = ["llmkit", "llmkit-bf16", "trl", "trl-bf16", "trl-nockpt", "base"]
DEFAULT = ["llmkit", "llmkit-bf16", "trl", "trl-bf16", "base"]  # trl-nockpt on request: --configs trl-nockpt
PROMPTS, GENERATIONS, MAX_NEW, TEMPERATURE, LR, SEED = 2, 8, 24, 1.0, 1e-3, 42


def reward_specs() -> list[dict]:
    """The shipped recipe's rewards: [{name, weight, params}]."""
    from llmkit.recipe import load

    return [r.model_dump() for r in load(RECIPE).grpo.rewards]


def recipe(steps: int, out: Path, precision: str = "fp32") -> dict:
    return {
        "model": {"name": "smollm2-135m-instruct"},
        "data": {"path": str(DATA), "max_length": 128, "eval_fraction": 0},
        "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        "train": {
            "method": "grpo",
            "output_dir": str(out),
            "max_steps": steps,
            "batch_size": PROMPTS,
            "grad_accum": 1,
            "lr": LR,
            "scheduler": "constant",
            "warmup_ratio": 0.0,
            "weight_decay": 0.0,
            "max_grad_norm": 1.0,
            "precision": precision,
            "eval_every": 0,
            "save_every": 0,
            "log_every": 1,
            "seed": SEED,
        },
        "grpo": {
            "num_generations": GENERATIONS,
            "max_completion_length": MAX_NEW,
            "temperature": TEMPERATURE,
            "beta": 0.0,
            "epsilon": 0.2,
            "scale_rewards": True,
            "eval_prompts": 0,
            "rewards": reward_specs(),
        },
    }


def plan_order(steps: int) -> list[dict]:
    """The rows llmkit's data plan gives its steps, in order."""
    from transformers import AutoTokenizer

    from llmkit.methods import grpo
    from llmkit.recipe import load
    from llmkit.sources import resolve
    from llmkit.steps import Plan

    r = load(recipe(steps, Path(tempfile.gettempdir()) / "unused"))
    tok = AutoTokenizer.from_pretrained(resolve(r.model.name))
    ds = grpo.prepare(r, tok, SEED)
    plan = Plan(ds.train, r, 1, packing=grpo.packing)
    rows = []
    for step in range(steps):
        idx = [i for mb in plan.micro_batches(step, 0) for row in mb for i in row]
        if len(idx) != PROMPTS:
            sys.exit(f"llmkit's plan gives {len(idx)} prompts at step {step + 1}, not {PROMPTS}")
        rows += [ds.train[i].row for i in idx]
    return rows


def held_out(peft_model, tok) -> dict:
    """Greedy answers to the held-out prompts, scored by the recipe's rewards (the same code for all)."""
    from llmkit.methods import grpo
    from llmkit.rewards import load_reward
    from llmkit.rewards import score as run_rewards
    from llmkit.turns import end_of_turn

    rows = [json.loads(ln) for ln in EVAL.read_text().splitlines() if ln.strip()]
    ends = list(end_of_turn(tok, peft_model.generation_config).ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else ends[0]
    answers = []
    for k in range(0, len(rows), 6):
        part = rows[k : k + 6]
        answers += grpo.sample(
            peft_model, tok, [grpo.prompt_ids(r["prompt"], tok) for r in part], 1,
            max_new_tokens=MAX_NEW, temperature=1.0, end_ids=ends, pad_id=pad, greedy=True,
        )  # fmt: skip
    texts = [tok.decode([t for t in a if t not in ends], skip_special_tokens=True) for a in answers]
    specs = reward_specs()
    rewards = [(s["name"], load_reward(s["name"], RECIPE.parent), s["weight"], s["params"]) for s in specs]
    values = run_rewards(rewards, texts, rows, [r["prompt"] for r in rows])
    totals = [sum(w * values[n][i] for n, _f, w, _p in rewards) for i in range(len(texts))]
    return {
        "eval_prompts": len(rows),
        "eval_reward": round(statistics.mean(totals), 4),
        "eval_exact_answer": round(statistics.mean(values["exact_answer"]), 4),
        "eval_answers": texts[:6],
    }


def run_one(name: str, steps: int, threads: int, order_file: Path) -> dict:
    import torch

    from llmkit.allocator import in_use

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit.sources import resolve

    base = resolve("smollm2-135m-instruct")
    order = json.loads(order_file.read_text())
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"llmkit-bench-grpo-{name}-{os.getpid()}"
    specs = reward_specs()
    weights = {s["name"]: s["weight"] for s in specs}
    per_step: list[dict] = []

    if name == "base":
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
        return {"config": name, **held_out(model, tok)}
    if name.startswith("llmkit"):
        from peft import PeftModel

        import llmkit

        out = llmkit.train(recipe(steps, work / "run", "bf16" if "bf16" in name else "fp32"), overwrite=True)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        seconds = json.loads((out / "run.json").read_text())["train_seconds"]
        for m in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()):
            if "reward" in m:
                per_step.append(
                    {
                        "reward": m["reward"],
                        **{n: m[f"reward_{n}"] for n in weights},
                        "completion_length": m["completion_length"],
                    }
                )
        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
        peft_model = PeftModel.from_pretrained(model, out / "adapter")
    else:
        from datasets import Dataset
        from peft import LoraConfig
        from trl import GRPOConfig, GRPOTrainer

        from llmkit.rewards import load_reward

        tok = AutoTokenizer.from_pretrained(base)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32, attn_implementation="sdpa")
        calls: dict[str, list[list[float]]] = {s["name"]: [] for s in specs}
        lengths: list[list[int]] = []

        def wrap(spec):
            fn = load_reward(spec["name"], RECIPE.parent)

            def reward(prompts, completions, completion_ids=None, **kw):
                texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
                cols = [k for k, v in kw.items() if isinstance(v, list) and len(v) == len(texts)]
                rows = [
                    dict(zip(cols, vals, strict=True)) for vals in zip(*(kw[c] for c in cols), strict=True)
                ]
                values = [float(v) for v in fn(texts, rows, **spec["params"])]
                calls[spec["name"]].append(values)
                if spec is specs[0] and completion_ids is not None:
                    lengths.append([len(c) for c in completion_ids])
                return values

            reward.__name__ = spec["name"]
            return reward

        rows = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in order]
        args = GRPOConfig(
            output_dir=str(work),
            per_device_train_batch_size=PROMPTS * GENERATIONS,  # counts completions, not prompts
            gradient_accumulation_steps=1,
            steps_per_generation=1,  # generation batch = one step's 2 x 8 completions
            num_generations=GENERATIONS,
            max_completion_length=MAX_NEW,
            temperature=TEMPERATURE,
            top_p=1.0,
            top_k=0,
            beta=0.0,
            epsilon=0.2,
            num_iterations=1,
            loss_type="dr_grpo",
            scale_rewards="group",
            reward_weights=[s["weight"] for s in specs],
            shuffle_dataset=False,  # the rows are already in llmkit's plan order
            max_steps=steps,
            learning_rate=LR,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            gradient_checkpointing=name in ("trl", "trl-bf16"),
            use_vllm=False,
            use_cpu=True,
            bf16=name == "trl-bf16",  # TRL's own default is True; the fp32 configs set it off
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            seed=SEED,
            dataloader_num_workers=0,
        )
        lora = LoraConfig(
            r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"
        )
        trainer = GRPOTrainer(
            model=model,
            reward_funcs=[wrap(s) for s in specs],
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            peft_config=lora,
        )
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for k in range(len(calls[specs[0]["name"]])):
            figures = {n: statistics.mean(calls[n][k]) for n in calls}
            per_step.append(
                {
                    "reward": sum(weights[n] * v for n, v in figures.items()),
                    **figures,
                    "completion_length": statistics.mean(lengths[k]) if k < len(lengths) else None,
                }
            )
        peft_model = trainer.model
    peft_model.eval()
    completions = steps * PROMPTS * GENERATIONS
    rewards = [s["reward"] for s in per_step]
    return {
        "config": name,
        "steps": steps,
        "completions": completions,
        "train_seconds": round(seconds, 2),
        "completions_per_s": round(completions / seconds, 3),
        "peak_rss_mb": round(peak / 1024),
        "allocator": in_use(),
        "train_reward_mean": round(statistics.mean(rewards), 4),
        "train_reward_last3": round(statistics.mean(rewards[-3:]), 4),
        "train_exact_answer_mean": round(statistics.mean(s["exact_answer"] for s in per_step), 4),
        "per_step": [{k: round(v, 4) if isinstance(v, float) else v for k, v in s.items()} for s in per_step],
        **held_out(peft_model, tok),
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
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=1, help="run every config N times, alternating order")
    ap.add_argument("--configs", nargs="*", default=DEFAULT, choices=CONFIGS)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--order", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.steps, args.threads, Path(args.order))))
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
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        order_file = Path(tmp) / "order.json"
        order_file.write_text(json.dumps(plan_order(args.steps)))
        for rep in range(args.repeats):
            for name in args.configs if rep % 2 == 0 else args.configs[::-1]:
                if name == "base" and rep:
                    continue  # nothing is timed: once is enough
                cmd = [sys.executable, __file__, "--one", name, "--order", str(order_file)]
                cmd += ["--steps", str(args.steps), "--threads", str(args.threads)]
                # llmkit as `llmkit train` runs: on tcmalloc/jemalloc where the machine has one
                run_env = (allocator.preloaded_env(env) or env) if name.startswith("llmkit") else env
                r = subprocess.run(cmd, capture_output=True, text=True, env=run_env)
                line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if r.returncode or not line:
                    sys.exit(f"{name} failed:\n{r.stderr[-3000:]}")
                runs.append({**json.loads(line.removeprefix("RESULT ")), "load_average": os.getloadavg()[0]})
                print(json.dumps({k: v for k, v in runs[-1].items() if k != "per_step"}), flush=True)

    results = []
    for name in args.configs:
        mine = [r for r in runs if r["config"] == name]
        entry = {k: v for k, v in mine[0].items() if k not in ("train_seconds", "load_average")}
        if name != "base":
            entry.update(
                completions_per_s=round(statistics.median(r["completions_per_s"] for r in mine), 3),
                completions_per_s_runs=[r["completions_per_s"] for r in mine],
                peak_rss_mb=max(r["peak_rss_mb"] for r in mine),
                peak_rss_mb_runs=[r["peak_rss_mb"] for r in mine],
                train_reward_mean_runs=[r["train_reward_mean"] for r in mine],
                eval_reward_runs=[r["eval_reward"] for r in mine],
            )
        entry["load_average_runs"] = [round(r["load_average"], 2) for r in mine]
        results.append(entry)
    by = {r["config"]: r for r in results}
    summary = {}
    for mine, theirs in [
        (m, t) for m in ("llmkit", "llmkit-bf16") for t in ("trl", "trl-bf16", "trl-nockpt")
    ]:
        if mine in by and theirs in by:
            ours, t = by[mine], by[theirs]
            summary[f"{mine} / {theirs}"] = {
                "completions_per_s_ratio": round(ours["completions_per_s"] / t["completions_per_s"], 2),
                "peak_rss_ratio": round(ours["peak_rss_mb"] / t["peak_rss_mb"], 2),
                "train_reward_mean": [ours["train_reward_mean"], t["train_reward_mean"]],
                "train_reward_last3": [ours["train_reward_last3"], t["train_reward_last3"]],
                "eval_reward": [ours["eval_reward"], t["eval_reward"]],
                "eval_exact_answer": [ours["eval_exact_answer"], t["eval_exact_answer"]],
            }
    import torch
    import transformers
    import trl

    report = {
        "model": "SmolLM2-135M-Instruct (fp32; llmkit-bf16: bf16)",
        "device": "cpu",
        "cpu": cpu_model(),
        "threads": args.threads,
        "steps": args.steps,
        "per_step": f"{PROMPTS} prompts x {GENERATIONS} completions, <= {MAX_NEW} new tokens, T={TEMPERATURE}",
        "repeats": args.repeats,
        "lora": "r16 alpha32 dropout0 all-linear",
        "loss": "clipped (eps 0.2), beta 0, advantages / group std, / (generations x max_completion_length)",
        "lr": f"{LR} constant",
        "rewards": reward_specs(),
        "data": str(DATA.relative_to(ROOT)),
        "eval_data": str(EVAL.relative_to(ROOT)),
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
    print(f"\nCPU: {report['cpu']}, {args.threads} threads, {args.steps} steps of {report['per_step']}")
    print(
        f"{'config':<12} {'compl/s':>8} {'peak RSS MB':>12} {'reward run':>11} {'last 3':>7} {'held-out':>9} {'exact':>6}"
    )
    for r in results:
        if r["config"] == "base":
            print(
                f"{'base':<12} {'':>8} {'':>12} {'':>11} {'':>7} {r['eval_reward']:>9.3f} {r['eval_exact_answer']:>6.2f}"
            )
            continue
        print(
            f"{r['config']:<12} {r['completions_per_s']:>8.2f} {r['peak_rss_mb']:>12} {r['train_reward_mean']:>11.3f} "
            f"{r['train_reward_last3']:>7.3f} {r['eval_reward']:>9.3f} {r['eval_exact_answer']:>6.2f}"
        )
    for theirs, s in summary.items():
        print(f"{theirs}: {s['completions_per_s_ratio']}x completions/s, {s['peak_rss_ratio']}x peak RSS")


if __name__ == "__main__":
    main()
