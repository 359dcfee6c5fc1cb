"""LoRA fine-tuning on a GPU, for real: correctness checks and llmkit vs TRL throughput.

    python bench/gpu_throughput.py [--out DIR] [--models llama1b,qwen05b] [--configs trl,llmkit-sdpa]   (on a CUDA GPU)
    python bench/gpu_throughput.py --cpu-smoke [--out DIR]                              (plumbing, < 1 min)

Models: random-init from public configs (no weights travel): Llama-3.2-1B-shaped (16 layers,
2048 wide, 128k vocab, tied) and Qwen2.5-0.5B-shaped (24 layers, 896 wide, 152k vocab, tied),
with llmkit's tiny byte-level BPE tokenizer and chat template (llmkit/tiny.py). Data: the
shipped chat data (recipes/data/chat-llmkit.jsonl) repeated with several turns per conversation.

Correctness (tiny recipe): bf16 LoRA on CUDA vs fp32 on CPU, loss per step within 2 %;
checkpoint, SIGKILL and --resume on CUDA give the adapter of an uninterrupted run;
`llmkit export RUN --verify` (needs llama-cpp-python there; recorded as skipped otherwise).

Throughput, each config in its own process, one epoch over the same conversations, LoRA r16 /
alpha 32 / no dropout on all linear layers, bf16, answers-only loss, packed rows of --max-length:
  llmkit-sdpa      packing, position ids restart per example, sdpa (no dense mask built)
  llmkit-flex      packing, flex_attention (document mask)
  llmkit-padded    no packing: length-grouped padded batches
  trl              TRL SFTTrainer + PEFT, packing + padding_free (position ids), same LoRA
  trl-liger        the same with use_liger_kernel=True (if liger-kernel was carried)
tokens/s = trained tokens / training-loop seconds; peak = torch.cuda.max_memory_allocated;
MFU = tokens/s x FLOPs per token (llmkit.plan's formula) / the measured bf16 matmul FLOP/s.
`llmkit plan`'s predictions (peak memory, time) are recorded next to each llmkit config.
Writes DIR/gpu.json (device, versions, figures).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {  # public configs (config.json of the Hub repos), weights random
    "llama1b": dict(
        arch="llama",
        tokenizer="tiny-llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        tie_word_embeddings=True,
    ),
    "qwen05b": dict(
        arch="qwen2",
        tokenizer="tiny-qwen2",
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
    ),
    "smoke": dict(  # --cpu-smoke: the same code paths in seconds
        arch="llama",
        tokenizer="tiny-llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=448,
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
    ),
}
LORA = dict(r=16, alpha=32, dropout=0.0)
LR = 2e-4


# ----------------------------------------------------------------------------- assets


def build_model(shape: str, out: Path) -> Path:
    """A random-init model of `shape` with llmkit's tiny tokenizer, saved as a HF dir (bf16)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from llmkit.tiny import build

    if (out / "config.json").is_file():
        return out
    spec = dict(SHAPES[shape])
    arch, tok_name = spec.pop("arch"), spec.pop("tokenizer")
    build(tok_name, out)  # tokenizer + chat template (and a tiny model, replaced below)
    tok = AutoTokenizer.from_pretrained(out)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    cfg_cls, model_cls = (
        (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    )
    torch.manual_seed(0)
    dtype = torch.float32 if shape == "smoke" else torch.bfloat16
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init: seconds on a GPU
        model = model_cls(cfg_cls(**spec, **ids)).to(dtype)
    for f in out.glob("model*.safetensors"):
        f.unlink()
    model.save_pretrained(out, safe_serialization=True)
    return out


def write_data(path: Path, n: int) -> Path:
    """n multi-turn conversations from the shipped chat data (deterministic)."""
    import random

    rows = [
        json.loads(ln)["messages"]
        for ln in (ROOT / "recipes/data/chat-llmkit.jsonl").read_text().splitlines()
    ]
    pairs = [m for m in rows if len(m) == 2]
    rng = random.Random(0)
    with open(path, "w") as fh:
        for _ in range(n):
            turns = [t for p in rng.sample(pairs, rng.randint(1, 6)) for t in p]
            fh.write(json.dumps({"messages": turns}) + "\n")
    return path


def recipe_for(model_dir: Path, data: Path, out: Path, **train) -> dict:
    attn = train.pop("attn", None)
    packing = train.pop("packing", True)
    max_length = train.pop("max_length", 2048)
    return {
        "name": out.name,
        "model": {"name": str(model_dir), **({"attn_implementation": attn} if attn else {})},
        "data": {
            "path": str(data),
            "format": "messages",
            "max_length": max_length,
            "packing": packing,
            "eval_fraction": 0.0,
        },
        "lora": LORA,
        "train": {
            "output_dir": str(out),
            "lr": LR,
            "eval_every": 0,
            "save_every": 0,
            "log_every": 1,
            **train,
        },
    }


# ----------------------------------------------------------------------------- one config (a child process)


def run_llmkit(args) -> dict:
    import torch

    from llmkit.plan import plan, probe_rate
    from llmkit.training import train

    cuda = torch.cuda.is_available()
    recipe = json.loads(Path(args.recipe).read_text())
    predicted = plan(recipe, device="cuda" if cuda else "cpu")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    out = train(recipe, overwrite=True)
    run = json.loads((out / "run.json").read_text())
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "tokens": run["tokens_seen"],
        "dropped": run["data"].get("dropped"),
        "seconds": run["train_seconds"],
        "tokens_per_s": run["tokens_seen"] / run["train_seconds"],
        "tokens_per_s_after_warmup": probe_rate(rows)["tokens_per_s"],
        "peak_allocated": torch.cuda.max_memory_allocated() if cuda else None,
        "flops_per_token": predicted.flops_per_token,
        "plan": {
            "peak": predicted.memory.peak,
            "seconds": predicted.seconds_total,
            "activations": predicted.memory.activations,
            "loss": predicted.memory.loss,
            "weights": predicted.memory.weights,
        },
    }


def run_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    recipe = json.loads(Path(args.recipe).read_text())
    model_dir = recipe["model"]["name"]
    rows = [json.loads(ln)["messages"] for ln in Path(recipe["data"]["path"]).read_text().splitlines()]
    # conversational prompt/completion rows: TRL's completion-only loss = answers-only, as llmkit
    data = Dataset.from_list([{"prompt": m[:-1], "completion": m[-1:]} for m in rows])
    tok = AutoTokenizer.from_pretrained(model_dir)
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, attn_implementation=args.attn or "sdpa"
    )
    cfg = SFTConfig(
        output_dir=str(Path(args.recipe).parent / "trl-out"),
        num_train_epochs=1,
        max_steps=recipe["train"].get("max_steps") or -1,
        per_device_train_batch_size=recipe["train"]["batch_size"],
        learning_rate=LR,
        bf16=cuda,
        packing=True,
        padding_free=True,
        max_length=recipe["data"]["max_length"],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_liger_kernel=args.liger,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
        use_cpu=not cuda,
    )
    lora = LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=0.0, target_modules="all-linear")
    trainer = SFTTrainer(model=model, args=cfg, train_dataset=data, processing_class=tok, peft_config=lora)
    tokens = sum(len(x) for x in trainer.train_dataset["input_ids"])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    result = trainer.train()
    secs = result.metrics["train_runtime"]
    return {
        "tokens": tokens,
        "seconds": secs,
        "tokens_per_s": tokens / secs,
        "peak_allocated": torch.cuda.max_memory_allocated() if cuda else None,
        "loss": result.metrics.get("train_loss"),
    }


def child(name: str, recipe: dict, work: Path, timeout: float, **flags) -> dict:
    """Run one config in its own process (its own CUDA memory statistics)."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{name}.recipe.json"
    path.write_text(json.dumps(recipe))
    cmd = [
        sys.executable,
        __file__,
        "--child",
        "trl" if name.startswith("trl") else "llmkit",
        "--recipe",
        str(path),
    ]
    if flags.get("attn"):
        cmd += ["--attn", flags["attn"]]
    if flags.get("liger"):
        cmd.append("--liger")
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "LLMKIT_QUIET": "1"}
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        return {
            "error": (proc.stderr.strip().splitlines() or ["failed"])[-1][:300],
            "wall_s": round(time.perf_counter() - start, 1),
        }
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {
        "wall_s": round(time.perf_counter() - start, 1)
    }


# ----------------------------------------------------------------------------- correctness


def llmkit_cli(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "LLMKIT_QUIET": "1", "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run(
        [sys.executable, "-m", "llmkit", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def losses(run: Path) -> list[float]:
    return [
        json.loads(ln)["loss"] for ln in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln
    ]


def correctness(work: Path, device: str, steps: int = 10) -> dict:
    """CUDA bf16 vs CPU fp32 loss curve; kill + --resume; export --verify."""
    res: dict = {}
    half = steps // 2
    common = [
        f"train.max_steps={steps}",
        "train.eval_every=0",
        f"train.save_every={half}",
        "lora.dropout=0.0",
    ]
    cpu = llmkit_cli(
        "train",
        "tiny",
        f"train.output_dir={work}/tiny-cpu",
        "train.precision=fp32",
        *common,
        "--overwrite",
        "--json",
    )
    env_dev = {"cuda": "bf16", "cpu": "fp32"}[device]
    gpu = llmkit_cli(
        "train",
        "tiny",
        f"train.output_dir={work}/tiny-dev",
        f"train.precision={env_dev}",
        *common,
        "--overwrite",
        "--json",
    )
    if cpu.returncode or gpu.returncode:
        res["loss_curve"] = {"error": (cpu.stderr or gpu.stderr).strip().splitlines()[-1:]}
    else:
        a, b = losses(work / "tiny-cpu"), losses(work / "tiny-dev")
        worst = max(abs(x - y) / abs(x) for x, y in zip(a, b, strict=True))
        res["loss_curve"] = {
            "cpu_fp32": a,
            f"{device}_{env_dev}": b,
            "max_rel_diff": worst,
            "ok": worst <= 0.02,
        }
    # kill after the step-5 checkpoint, then --resume; the adapter must match the uninterrupted run's
    out = work / "tiny-killed"
    env = {**os.environ, "LLMKIT_QUIET": "1", "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"}
    args = ["tiny", f"train.output_dir={out}", f"train.precision={env_dev}", *common, "--overwrite"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmkit.training", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "checkpoints" / f"step-{half:06d}" / "state.json").is_file():
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    killed_at = None
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed_at = len(losses(out)) if (out / "metrics.jsonl").is_file() else None
    resumed = llmkit_cli(
        "train", "tiny", f"train.output_dir={out}", f"train.precision={env_dev}", *common, "--resume"
    )
    if resumed.returncode:
        res["resume"] = {"error": resumed.stderr.strip().splitlines()[-1:]}
    else:
        from safetensors.torch import load_file

        x = load_file(work / "tiny-dev" / "adapter" / "adapter_model.safetensors")
        y = load_file(out / "adapter" / "adapter_model.safetensors")
        diff = max(float((x[k].float() - y[k].float()).abs().max()) for k in x)
        scale = max(float(v.float().abs().max()) for v in x.values())
        res["resume"] = {
            "killed_after_step": killed_at,
            "max_abs_diff": diff,
            "max_abs": scale,
            "ok": diff <= 1e-3 * scale,
        }
    try:
        import llama_cpp  # noqa: F401

        v = llmkit_cli("export", str(work / "tiny-dev"), "--verify", timeout=900)
        res["export_verify"] = {
            "ok": v.returncode == 0,
            "tail": (v.stdout + v.stderr).strip().splitlines()[-3:],
        }
    except ImportError:
        res["export_verify"] = {
            "skipped": "llama-cpp-python is not installed here (no wheel for this Python carried)"
        }
    return res


# ----------------------------------------------------------------------------- main


def device_info() -> dict:
    import peft
    import torch
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
    }
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("trl", "liger-kernel", "bitsandbytes", "datasets"):  # liger_kernel has no __version__
        try:
            info[dist.replace("-", "_")] = version(dist)
        except PackageNotFoundError:
            info[dist.replace("-", "_")] = None
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["memory"] = torch.cuda.get_device_properties(0).total_memory
    else:
        from llmkit.devices import detect

        info["device"] = f"CPU: {detect().name}"
    return info


def matmul_flops(cpu: bool) -> float:
    from llmkit.plan import device_flops

    class _Shape:  # a 4096-wide model: the GPU's achievable bf16 rate
        hidden_size, intermediate_size, num_attention_heads, num_hidden_layers, vocab_size = (
            4096,
            4096,
            32,
            1,
            1,
        )

    return device_flops("cpu" if cpu else "cuda", "fp32" if cpu else "bf16", _Shape, True, "")[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "bench" / "results"))
    p.add_argument("--models", default="qwen05b,llama1b")
    p.add_argument("--conversations", type=int, default=800)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--batch-size", type=int, default=8, help="packed rows per micro-batch")
    p.add_argument("--timeout", type=float, default=120, help="seconds per throughput config")
    p.add_argument("--configs", help="comma-separated subset of the throughput configs (default: all)")
    p.add_argument(
        "--cpu-smoke", action="store_true", help="tiny model on CPU: checks the plumbing in < 1 min"
    )
    p.add_argument("--skip-correctness", action="store_true")
    p.add_argument("--child", choices=["llmkit", "trl"], help=argparse.SUPPRESS)
    p.add_argument("--recipe", help=argparse.SUPPRESS)
    p.add_argument("--attn", help=argparse.SUPPRESS)
    p.add_argument("--liger", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_llmkit(args) if args.child == "llmkit" else run_trl(args)))
        return

    import torch

    smoke = args.cpu_smoke
    if not smoke and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run with --cpu-smoke to check the script on a CPU")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("BENCH_WORK", "/tmp/llmkit-gpu-bench"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LLMKIT_HOME", str(work / "home"))
    device = "cpu" if smoke else "cuda"
    result = {
        "device": device_info(),
        "mode": "cpu-smoke" if smoke else "gpu",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    dest = out / ("gpu-smoke.json" if smoke else "gpu.json")

    def save() -> None:  # after every part: a run stopped at its time limit keeps what it measured
        result["seconds"] = round(time.perf_counter() - t0, 1)
        dest.write_text(json.dumps(result, indent=2, default=str))

    t0 = time.perf_counter()
    peak_flops = matmul_flops(smoke)
    result["matmul_flops"] = peak_flops
    if not args.skip_correctness:
        result["correctness"] = correctness(work / "correctness", device, steps=4 if smoke else 10)
        print(json.dumps({"correctness": result["correctness"]}, default=str), flush=True)
        save()
    models = ["smoke"] if smoke else args.models.split(",")
    n_conv = 16 if smoke else args.conversations
    max_len = (
        1024 if smoke else args.max_length
    )  # every conversation fits: llmkit and TRL see the same tokens
    data = write_data(work / "chat.jsonl", n_conv)
    result["throughput"] = {}
    liger = _has("liger_kernel")
    for shape in models:
        mdir = build_model(shape, work / "models" / shape)
        common = dict(
            batch_size=2 if smoke else args.batch_size,
            max_length=max_len,
            precision="fp32" if smoke else "bf16",
            max_batch_tokens=0,
            epochs=1,
        )
        configs = {
            "llmkit-sdpa": (
                "llmkit",
                recipe_for(mdir, data, work / "runs" / f"{shape}-sdpa", attn="sdpa", **common),
                {},
            ),
            "llmkit-flex": (
                "llmkit",
                recipe_for(mdir, data, work / "runs" / f"{shape}-flex", attn="flex_attention", **common),
                {},
            ),
            "llmkit-padded": (
                "llmkit",
                recipe_for(
                    mdir, data, work / "runs" / f"{shape}-padded", attn="sdpa", packing=False, **common
                ),
                {},
            ),
            "trl": (
                "trl",
                recipe_for(mdir, data, work / "runs" / f"{shape}-trl", **common),
                {"attn": "sdpa"},
            ),
        }
        if liger:
            configs["trl-liger"] = (
                "trl",
                recipe_for(mdir, data, work / "runs" / f"{shape}-trl-liger", **common),
                {"attn": "sdpa", "liger": True},
            )
        if smoke:  # flex_attention on CPU compiles for minutes: the GPU run measures it
            configs.pop("llmkit-flex")
        if args.configs:
            wanted = args.configs.split(",")
            configs = {name: configs[name] for name in wanted if name in configs}
        rows = {}
        for name, (_, recipe, flags) in configs.items():
            r = child(name, recipe, work / "recipes" / shape, args.timeout * (4 if smoke else 1), **flags)
            if "tokens_per_s" in r:
                fpt = r.get("flops_per_token") or rows.get("llmkit-sdpa", {}).get("flops_per_token")
                if fpt:
                    r["mfu"] = r["tokens_per_s"] * fpt / peak_flops
            rows[name] = r
            result["throughput"][shape] = rows
            save()
            print(json.dumps({shape: {name: r}}, default=str), flush=True)
        base = rows.get("trl", {})
        for name, r in rows.items():
            if name.startswith("llmkit") and "tokens_per_s" in r and "tokens_per_s" in base:
                r["speed_vs_trl"] = r["tokens_per_s"] / base["tokens_per_s"]
                if r.get("peak_allocated") and base.get("peak_allocated"):
                    r["memory_vs_trl"] = r["peak_allocated"] / base["peak_allocated"]
        result["throughput"][shape] = rows
    save()
    print(f"wrote {dest}")


def _has(mod: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(mod) is not None


if __name__ == "__main__":
    main()
