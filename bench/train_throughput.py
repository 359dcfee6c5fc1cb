"""LoRA training throughput on CPU: llmkit vs TRL's SFTTrainer (+PEFT), and vs llmkit's own code
before the CPU fast paths (issue 22), same model, data and settings.

    python bench/train_throughput.py [--model smollm2-135m-instruct|gemma3-270m|tiny-qwen3moe]
        [--train 512] [--eval 48] [--threads 2] [--configs ...] [--today REF]

Model: SmolLM2-135M-Instruct (the embedded GGUF, converted once); also Gemma 3 270M (262k
vocabulary, the embedded Q4_K_M GGUF dequantized) and a small Mixture-of-Experts model built here
(`moe-small`: a Qwen3-MoE body, 8 layers of width 512, 8 experts with 2 per token, random weights,
SmolLM2's tokenizer and template; 82M parameters, 44M of them active per token) so the gain is not one model's. Data: 560 single-turn
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
  llmkit-bf16    llmkit in bf16 (autocast; what `precision: auto` picks on CPUs with AVX512-BF16/AMX)
  llmkit-glibc   llmkit and llmkit-bf16 on glibc's malloc: every llmkit config above runs as
  llmkit-glibc-bf16   `llmkit train` does, on tcmalloc/jemalloc where the machine has one
                 (llmkit.allocator); TRL and `today` on the process's own (glibc)
  today          llmkit as it was before the CPU fast paths: git REF (--today) checked out
  today-bf16     side by side in a worktree and imported from there, fp32 and bf16
Measured: trained (non-padding) tokens / training wall time; peak RSS; eval loss per answer
token, computed by the same function for all configs on the final adapter (fp32); model FLOPs
utilisation: llmkit's count of FLOPs per trained token (the one `llmkit plan` and `llmkit train`
use) x tokens computed per second (a prompt shared by several sequences counts once) over this
machine's matmul peak in that precision, measured in this run.
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
CONFIGS = [
    "trl-default",
    "trl-packing",
    "llmkit",
    "llmkit-packed",
    "llmkit-ckpt",
    "llmkit-bf16",
    "llmkit-glibc",
    "llmkit-glibc-bf16",
    "today",
    "today-bf16",
]
DEFAULT = CONFIGS[:4]  # the others on request: --configs today llmkit today-bf16 llmkit-bf16
MODELS = ["smollm2-135m-instruct", "gemma3-270m", "moe-small"]
TODAY = "800684e"  # the last commit before issue 22's fast paths
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


def model_ref(name: str) -> str:
    """What the recipe names: the embedded models by name, moe-small as a directory built once."""
    if name != "moe-small":
        return name
    from llmkit.files import home

    out = home() / "bench" / "moe-small"
    if not (out / "config.json").exists():
        import torch
        from transformers import AutoTokenizer, Qwen3MoeConfig, Qwen3MoeForCausalLM

        from llmkit.sources import resolve

        tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct"))
        cfg = Qwen3MoeConfig(
            vocab_size=len(tok), hidden_size=512, intermediate_size=1024, moe_intermediate_size=512,
            num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4, head_dim=64,
            num_experts=8, num_experts_per_tok=2, max_position_embeddings=2048, tie_word_embeddings=True,
            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
        )  # fmt: skip
        torch.manual_seed(0)
        Qwen3MoeForCausalLM(cfg).save_pretrained(out)
        tok.save_pretrained(out)
    return str(out)


def template(model_name: str) -> str | None:
    """A base model's chat template: the shipped recipe's (Gemma 3 270M is a base model)."""
    import yaml

    recipe = ROOT / "recipes" / f"{model_name}-chat.yaml"
    return yaml.safe_load(recipe.read_text())["model"].get("chat_template") if recipe.exists() else None


def fitting(convs: list, tok, n: int) -> list:
    """The first n conversations that fit MAX_LEN with this model's tokenizer (a tiny model's
    byte-level vocabulary makes the longest ones too long)."""
    from llmkit import data as datalib

    out = []
    for c in convs:
        try:
            datalib.tokenize_row({"messages": c}, "messages", tok, max_length=MAX_LEN)
        except datalib.Skip:
            continue
        out.append(c)
        if len(out) == n:
            break
    return out


def run_one(name: str, model_name: str, n_train: int, n_eval: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmkit import data as datalib
    from llmkit.methods.model import LossModel
    from llmkit.sources import resolve

    model_name = model_ref(model_name)
    base = resolve(model_name)
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = tok.chat_template or template(model_name)
    convs = conversations()
    train_c, eval_c = fitting(convs[:-n_eval], tok, n_train), fitting(convs[-n_eval:], tok, n_eval)
    encode = [datalib.tokenize_row({"messages": c}, "messages", tok, max_length=MAX_LEN) for c in train_c]
    eval_ex = [datalib.tokenize_row({"messages": c}, "messages", tok, max_length=MAX_LEN) for c in eval_c]
    tokens = sum(len(e) for e in encode)
    computed = tokens  # TRL and the code before shared prompts compute every token they train
    lora = dict(r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")

    bf16 = name.endswith("bf16")
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
            "model": {"name": model_name, "chat_template": tok.chat_template},
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
                "precision": "bf16" if bf16 else "fp32",
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
        if "mfu" in info:  # the tokens the passes computed: shared prompts once (llmkit.data.laid_out)
            computed = info["mfu"] * info["peak_flops"] / info["flops_per_token"] * seconds
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
        "model": model_name,
        "train_examples": n_train,
        "trained_tokens": tokens,
        "steps": steps,
        "train_seconds": round(seconds, 2),
        "tokens_per_s": round(tokens / seconds, 1),
        "computed_tokens": round(computed),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "eval_loss": round(total / count, 4),
        "allocator": malloc_in_use(),
    }


def malloc_in_use() -> str:
    """The allocator this process runs on, from its memory map (the `today` code has no
    llmkit.allocator to ask)."""
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    return next((n for n in ("tcmalloc", "jemalloc") if f"lib{n}" in maps), "system")


def flops_and_peaks(model_name: str, n_train: int, n_eval: int, threads: int) -> tuple[float, dict]:
    """llmkit's FLOPs per trained token for this model and data, and this machine's matmul peak
    (fp32, bf16) measured now: the MFU of every config comes from the same two figures."""
    import torch

    torch.set_num_threads(threads)
    from transformers import AutoConfig, AutoTokenizer

    from llmkit import data as datalib
    from llmkit.plan.config import _text_config
    from llmkit.plan.params import count_parameters
    from llmkit.plan.timing import device_flops, trained_token_flops
    from llmkit.recipe import load
    from llmkit.sources import resolve

    model_name = model_ref(model_name)
    base = resolve(model_name)
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = tok.chat_template or template(model_name)
    examples = [
        datalib.tokenize_row({"messages": c}, "messages", tok, max_length=MAX_LEN)
        for c in fitting(conversations()[:-n_eval], tok, n_train)
    ]
    recipe = load(
        {"model": {"name": model_name}, "data": {"path": "x.jsonl"}, "lora": {"r": 16, "alpha": 32}}
    )
    config = AutoConfig.from_pretrained(base)
    tc = _text_config(config)
    flops = trained_token_flops(count_parameters(config, recipe), tc, examples)
    peaks = {p: device_flops("cpu", p, tc, True, "cpu")[0] for p in ("fp32", "bf16")}
    return flops, peaks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=MODELS[0], choices=MODELS)
    ap.add_argument("--train", type=int, default=512)
    ap.add_argument("--eval", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--configs", nargs="*", default=DEFAULT, choices=CONFIGS)
    ap.add_argument("--today", default=TODAY, help="git ref of the code the `today` configs run")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.model, args.train, args.eval, args.threads)))
        return
    from llmkit import allocator

    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "LLMKIT_QUIET": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    import tempfile

    today = None
    if any(c.startswith("today") for c in args.configs):  # the old code, side by side
        today = Path(tempfile.mkdtemp(prefix="llmkit-today-")) / "src"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(today), args.today], check=True
        )
    results = []
    try:
        for name in args.configs:
            cmd = [sys.executable, __file__, "--one", name, "--model", args.model, "--train", str(args.train)]
            cmd += ["--eval", str(args.eval), "--threads", str(args.threads)]
            run_env = env
            if name.startswith("today"):
                run_env = {**env, "PYTHONPATH": str(today)}
            elif name.startswith("llmkit") and "glibc" not in name:
                run_env = allocator.preloaded_env(env) or env  # as `llmkit train` runs
            r = subprocess.run(cmd, capture_output=True, text=True, env=run_env)
            line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if r.returncode or not line:
                sys.exit(f"{name} failed:\n{r.stderr[-3000:]}")
            results.append(json.loads(line.removeprefix("RESULT ")))
            print(json.dumps(results[-1]), flush=True)
    finally:
        if today is not None:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(today)], check=False)
    flops, peaks = flops_and_peaks(args.model, args.train, args.eval, args.threads)
    for r in results:  # MFU counts what the machine computed: a shared prompt once
        computed_per_s = r["tokens_per_s"] * min(1.0, r["computed_tokens"] / r["trained_tokens"])
        r["mfu"] = round(
            flops * computed_per_s / peaks["bf16" if r["config"].endswith("bf16") else "fp32"], 3
        )
    stored = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if "models" not in stored:  # the first layout held SmolLM2 only
        stored = {"models": {MODELS[0]: stored} if stored else {}}
    # a model's entry is this run's, whole: ratios never mix runs (or machines)
    by = {r["config"]: r for r in results}
    summary = {}
    pairs = [
        (o, t) for o in ("llmkit", "llmkit-packed", "llmkit-ckpt") for t in ("trl-default", "trl-packing")
    ]
    pairs += [
        ("llmkit", "today"),
        ("llmkit-bf16", "today-bf16"),
        ("llmkit-bf16", "llmkit"),
        ("llmkit-bf16", "today"),
        ("llmkit", "llmkit-glibc"),
        ("llmkit-bf16", "llmkit-glibc-bf16"),
        ("llmkit-glibc", "today"),
        ("llmkit-glibc-bf16", "today-bf16"),
    ]
    for ours, theirs in pairs:
        if ours in by and theirs in by:
            summary[f"{ours} / {theirs} tokens/s"] = round(
                by[ours]["tokens_per_s"] / by[theirs]["tokens_per_s"], 2
            )
    for ours, theirs in (("llmkit", "today"), ("llmkit-bf16", "today-bf16"), ("llmkit-bf16", "llmkit")):
        if ours in by and theirs in by:
            summary[f"{ours} / {theirs} eval loss"] = round(
                by[ours]["eval_loss"] / by[theirs]["eval_loss"], 4
            )
    import platform

    import torch
    import transformers

    from llmkit.devices import cpu_kernel_flags, cpu_name

    # against TRL and against llmkit's earlier code are separate runs, kept side by side, and so
    # are machines: one entry per model, comparison and CPU
    cpu = cpu_name() or platform.processor() or platform.machine()
    key = f"{args.model} vs {args.today}" if today is not None else args.model
    key += f" on {cpu}"
    stored["models"][key] = {
        "model": args.model,
        "device": "cpu",
        "threads": args.threads,
        "cpu": cpu,
        "cpu_flags": cpu_kernel_flags(),
        "max_length": MAX_LEN,
        "effective_batch": BATCH * ACCUM,
        "lora": "r16 alpha32 dropout0.05 all-linear",
        "today": args.today,
        "flops_per_token": round(flops),
        "peak_flops": {k: round(v) for k, v in peaks.items()},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "load_average_at_end": os.getloadavg()[0],
        "results": results,
        "speedup": summary,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(stored, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
