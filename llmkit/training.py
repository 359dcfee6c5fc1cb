"""LoRA / QLoRA fine-tuning: one loop, top to bottom, for every method (sft, dpo, orpo, grpo).

    llmkit train RECIPE [a.b=value ...] [--resume] [--overwrite]
    python -m llmkit.training RECIPE ...            accelerate launch -m llmkit.training RECIPE ...
    llmkit.train(recipe)                         (this module is `training`, so the name `llmkit.train` stays the function)

Each optimizer step: for every micro-batch, build the batch → forward pass → loss → backward
pass; then one optimizer step. The method (llmkit.methods) decides how a batch is built (GRPO
samples and scores answers there) and what the loss is; the loop is the same for all. On CPU a
micro-batch's sequences run end to end in one row, without padding (llmkit.attention), and the
LoRA dropout masks are drawn by NumPy (llmkit.dropout); the progress line, metrics and run.json
show the model FLOPs utilisation (llmkit.utilisation). A loss is
summed over the step's units (answer tokens for SFT, pairs for DPO/ORPO, prompts for GRPO) and
divided by their number, so gradient accumulation and several processes give the same update
as one big batch.

What the run writes (recipe.yaml, run.json, adapter/, checkpoints/, metrics) and where is
llmkit.runs' contract; saving and restoring checkpoints is llmkit.checkpoints.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path

import torch

from llmkit import allocator, attention, devices, gated_mlp, methods
from llmkit import data as datalib
from llmkit.checkpoints import load_checkpoint, save_adapter, save_checkpoint
from llmkit.dropout import use_fast_dropout
from llmkit.errors import LlmkitError, TrainError
from llmkit.experts import use_padded_experts
from llmkit.fused_lora import use_fused_lora
from llmkit.lora import fp32_lora_sums, lora_targets
from llmkit.methods.config import longest_sequence
from llmkit.methods.model import Context, LossModel
from llmkit.plan import oom_guard
from llmkit.recipe import Recipe, load
from llmkit.runs import (
    Metrics,
    RunLayout,
    check_run_dir,
    clear_run_dir,
    plot_loss,
    write_info,
    write_recipe,
)
from llmkit.steps import Plan
from llmkit.turns import end_of_turn
from llmkit.ui import field, info, progress_items, quiet_transformers, warn
from llmkit.utilisation import Utilisation

# Measured on 2 cores with SmolLM2-135M: tokens/s is flat from 512 to 4096 tokens per pass,
# while activation memory grows ~3 MB per token, so CPU passes stay at 1024 tokens.
CPU_BATCH_TOKENS = 1024

__all__ = ["train", "load_tokenizer", "load_model", "tokens_per_pass"]


def train(
    recipe: str | Path | Recipe | dict,
    overrides=(),
    *,
    resume: bool = False,
    overwrite: bool = False,
    base_dir: Path | None = None,
) -> Path:
    """Fine-tune the recipe's model with LoRA; returns the run directory. `base_dir`: the model
    already resolved by the caller (`llmkit run`), so it is not looked up twice."""
    from llmkit.sources import check_reference

    recipe = load(recipe, list(overrides))
    check_reference(recipe.model.name)  # a mistyped model fails now, not after the imports below
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    quiet_transformers()
    t = recipe.train
    hw = devices.detect()
    precision = devices.choose_precision(t.precision, hw)
    if recipe.model.load_in_4bit:
        devices.check_4bit(hw)
    run = RunLayout(Path(t.output_dir).expanduser().resolve())
    check_run_dir(run.path, resume=resume, overwrite=overwrite)

    # Accelerate keeps its state per process; a second train() here (the Python API, a notebook)
    # may ask for another precision. The distributed PartialState (process group) is kept.
    AcceleratorState._reset_state()
    accelerator = Accelerator(
        mixed_precision={"fp32": "no"}.get(precision, precision), cpu=hw.device == "cpu"
    )
    main = accelerator.is_main_process
    if hw.device == "cpu" and accelerator.num_processes == 1:
        devices.use_free_cpus()  # one thread per busy core makes every step wait (measured: 9.5 s → 90 s)
    budget = tokens_per_pass(recipe, hw, accelerator)
    if main and overwrite and not resume:
        clear_run_dir(run.path)
    accelerator.wait_for_everyone()
    set_seed(t.seed)
    started = time.time()

    method = methods.get(t.method)
    tokenizer, base_dir = load_tokenizer(recipe, base_dir)
    dataset = method.prepare(recipe, tokenizer, t.seed)  # data errors show before the model loads
    model = load_model(recipe, base_dir, precision, accelerator)
    plan = Plan(dataset.train, recipe, accelerator.num_processes, packing=method.packing)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    ends = list(
        end_of_turn(tokenizer, model.generation_config).ids
    )  # GRPO's answers end where a served turn does
    flat = attention.uses_segments(model.get_base_model())
    ctx = Context(recipe, tokenizer, model, pad_id, accelerator, budget, end_ids=ends, flat=flat)
    mfu = None  # GRPO's steps are mostly sampling, which MFU does not measure
    if t.method != "grpo":
        mfu = Utilisation(model, t.method, dataset.train, hw.device, precision, accelerator.num_processes)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = get_scheduler(
        {"constant": "constant_with_warmup"}.get(t.scheduler, t.scheduler),
        optimizer,
        num_warmup_steps=math.ceil(t.warmup_ratio * plan.total_steps),
        num_training_steps=plan.total_steps,
    )
    loss_model, optimizer = accelerator.prepare(LossModel(model, method, ctx), optimizer)

    start_step, tokens_seen = 0, 0
    if resume:
        start_step, tokens_seen = load_checkpoint(run, accelerator, loss_model, optimizer, scheduler)
        info(f"Resuming {run.path} from step {start_step}/{plan.total_steps}")
    computed = 0  # tokens the passes computed since start: MFU's count (shared prompts once)
    if main:
        write_recipe(run, recipe)
        info(
            f"Training {recipe.model.name} ({t.method}) on {hw.device} ({precision}, {accelerator.num_processes} process(es), "
            f"malloc: {allocator.in_use()}): {len(dataset.train)} examples, {plan.total_steps} steps → {run.path}"
        )
        if hw.device == "cpu" and allocator.missing():
            info(f"tip: {allocator.INSTALL} makes CPU training {allocator.GAIN} faster (docs/train.md)")
        if mfu:
            info(
                f"Model FLOPs: {mfu.flops_per_token / 1e6:,.0f} M per token; this machine's peak "
                f"{mfu.peak / 1e9:,.0f} GFLOP/s ({mfu.source})"
            )
        if dataset.dropped:
            warn("dropped rows: " + ", ".join(f"{n} {why}" for why, n in dataset.dropped.most_common()))
    log = Metrics(run, start_step, enabled=main)

    def to_device(batch):
        return {k: v.to(accelerator.device) for k, v in batch.items()}

    evaluation, loop_start = {}, time.perf_counter()
    bar = progress_items(field("loss"), field("tps", "tok/s"), field("mfu", "MFU"))
    bar.disable = bar.disable or not main  # one bar, from the main process
    with bar, oom_guard(recipe, run.path, budget):  # CUDA OOM → the plan's figures + what to change
        task = bar.add_task("train", total=plan.total_steps, completed=start_step, loss="-", tps="-", mfu="-")
        for step in range(start_step, plan.total_steps):
            loss_model.train()
            micro_batches = [
                piece
                for rows in plan.micro_batches(step, accelerator.process_index)
                for piece in datalib.split_by_tokens(dataset.train, rows, budget)
            ]
            n_units = plan.units(step)  # over all processes and micro-batches of this step
            step_start, step_loss, shared = time.perf_counter(), 0.0, 0
            for k, rows in enumerate(micro_batches):
                rows = ctx.layout(rows)  # padding-free passes: the rows end to end in one
                batch = to_device(method.build(dataset.train, rows, ctx))  # 1. batch (GRPO: sample, score)
                if mfu and ctx.flat:  # the tokens a shared prompt spared this pass
                    shared += (
                        sum(len(dataset.train[i]) for row in rows for i in row) - batch["input_ids"].shape[1]
                    )
                last = k == len(micro_batches) - 1
                with accelerator.no_sync(loss_model) if not last else contextlib.nullcontext():
                    loss_sum = loss_model(**batch)  # 2. forward pass + loss (summed over units)
                    loss = loss_sum / n_units * accelerator.num_processes  # DDP averages gradients
                    accelerator.backward(loss)  # 3. backward pass
                step_loss += loss_sum.detach().float()
            if t.max_grad_norm > 0:
                accelerator.clip_grad_norm_(trainable, t.max_grad_norm)
            optimizer.step()  # 4. optimizer step
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            done = step + 1
            step_tokens = plan.tokens(step)
            tokens_seen += step_tokens
            train_loss = accelerator.reduce(step_loss.reshape(1), "sum").item() / n_units
            figures = ctx.pop_stats()  # the method's own: preference accuracy, rewards, ...
            seconds = time.perf_counter() - step_start
            tps = step_tokens / seconds
            if mfu:
                if ctx.flat and accelerator.num_processes > 1:  # every process joins, shared or not
                    shared = int(accelerator.reduce(torch.tensor(shared, device=accelerator.device), "sum"))
                computed += step_tokens - shared
                figures["mfu"] = round(mfu.of((step_tokens - shared) / seconds), 4)
            shown = f"{figures['mfu']:.0%}" if mfu else "-"
            bar.update(task, completed=done, loss=f"{train_loss:.4f}", tps=f"{tps:,.0f}", mfu=shown)
            if done % t.log_every == 0 or done == plan.total_steps:
                log.write(
                    done,
                    loss=train_loss,
                    lr=scheduler.get_last_lr()[0],
                    tokens=tokens_seen,
                    tokens_per_s=round(tps, 1),
                    epoch=round(plan.epoch_of(step), 3),
                    **figures,
                )
            if dataset.eval and ((t.eval_every and done % t.eval_every == 0) or done == plan.total_steps):
                evaluation = method.evaluate(accelerator.unwrap_model(loss_model), dataset.eval, ctx)
                log.write(done, **evaluation)
            if (t.save_every and done % t.save_every == 0) and done < plan.total_steps:
                save_checkpoint(
                    run, done, tokens_seen, accelerator, loss_model, optimizer, scheduler, t.keep_checkpoints
                )

    train_seconds = time.perf_counter() - loop_start
    accelerator.wait_for_everyone()
    save_adapter(run.adapter, accelerator, loss_model, tokenizer)
    if main:
        log.close()
        plot_loss(run)
        write_info(
            run,
            recipe=recipe,
            base_dir=base_dir,
            hardware={
                "device": hw.device,
                "name": hw.name,
                "processes": accelerator.num_processes,
                "allocator": allocator.in_use(),
            },
            precision=precision,
            max_batch_tokens=budget,
            steps=plan.total_steps,
            epochs=round(plan.total_steps / plan.steps_per_epoch, 3),
            tokens_seen=tokens_seen,
            data=dataset.report(),
            train_loss=log.last_loss,
            eval_loss=evaluation.get("eval_loss"),
            evaluation=evaluation,
            method=t.method,
            started=started,
            train_seconds=train_seconds,
            padding_free=flat,
            **(mfu.figures(computed / max(train_seconds, 1e-9)) if mfu else {}),
        )
        info(f"Done: adapter in {run.adapter}  (chat with it: llmkit chat {run.path})")
    accelerator.wait_for_everyone()
    return run.path


def tokens_per_pass(recipe: Recipe, hw, accelerator) -> int:
    """The most tokens one forward/backward pass may hold (0 = no limit)."""
    t = recipe.train
    deepspeed = accelerator.distributed_type == "DEEPSPEED"  # it steps on every backward
    if deepspeed and t.grad_accum > 1:
        raise TrainError(
            "train.grad_accum > 1 is not supported under DeepSpeed (it steps on every backward)",
            "set train.grad_accum=1 and raise train.batch_size or the number of processes",
        )
    if deepspeed and t.max_batch_tokens:
        raise TrainError(
            "train.max_batch_tokens is not supported under DeepSpeed (it steps on every backward)",
            "unset train.max_batch_tokens and size train.batch_size to fit memory",
        )
    if deepspeed:
        return 0
    if t.max_batch_tokens is not None:
        return t.max_batch_tokens
    return CPU_BATCH_TOKENS if hw.device == "cpu" else 0


# ----------------------------------------------------------------------------- model and loss


def load_tokenizer(recipe: Recipe, base_dir: Path | None = None):
    """The base model's local dir and tokenizer, with the recipe's chat template if it names one."""
    from transformers import AutoTokenizer

    from llmkit.sources import resolve

    m = recipe.model
    base_dir = base_dir or resolve(m.name, revision=m.revision)
    tokenizer = AutoTokenizer.from_pretrained(base_dir, trust_remote_code=m.trust_remote_code)
    if m.chat_template:
        path = recipe.resolve_path(m.chat_template) if len(m.chat_template) < 256 else None
        tokenizer.chat_template = path.read_text() if path and path.is_file() else m.chat_template
    return tokenizer, base_dir


def load_model(recipe: Recipe, base_dir, precision: str, accelerator):
    """Base model (frozen; 4-bit for QLoRA) with LoRA adapters."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    m = recipe.model
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
    kwargs = dict(dtype=dtype, trust_remote_code=m.trust_remote_code)
    if m.attn_implementation:  # else transformers' default: sdpa, or eager where sdpa cannot (soft-capping)
        kwargs["attn_implementation"] = m.attn_implementation
    if m.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": accelerator.local_process_index}
    model = AutoModelForCausalLM.from_pretrained(base_dir, **kwargs)
    model.config.use_cache = False
    # The CPU fast paths (measured there: bench/train_throughput.py); GPUs keep their own kernels.
    cpu = accelerator.device.type == "cpu"
    if cpu and not m.attn_implementation:  # a recipe that names an attention gets exactly that one
        attention.use_segments(model, longest_sequence(recipe))
    gc = recipe.train.gradient_checkpointing
    if m.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    elif gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    lo = recipe.lora
    targets = lora_targets(model, lo.target_modules)
    dropout = lo.dropout
    if targets.get("target_parameters") and dropout:
        info(f"LoRA dropout {dropout} → 0: PEFT cannot apply dropout to stacked expert weights")
        dropout = 0.0
    config = LoraConfig(
        r=lo.r,
        lora_alpha=lo.alpha,
        lora_dropout=dropout,
        **targets,
        use_dora=lo.use_dora,
        use_rslora=lo.use_rslora,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, config)
    if cpu:
        use_fast_dropout(model)
        use_fused_lora(model)
    if gated_mlp.wanted(accelerator.device.type, precision):
        gated_mlp.use_gated_mlp(model)
    if cpu and precision == "bf16":
        fp32_lora_sums(model)  # the layers PEFT still computes (an adapter disabled) sum the same way
        use_padded_experts(model)  # MoE: oneDNN's bf16 kernels, built once per row count, reused
    return model


# ----------------------------------------------------------------------------- python -m llmkit.training


def main(argv: list[str] | None = None) -> None:
    """`python -m llmkit.training RECIPE [a.b=value ...] [--resume] [--overwrite]` (also under accelerate launch)."""
    import argparse

    parser = argparse.ArgumentParser(prog="llmkit.training", description=main.__doc__)
    parser.add_argument("recipe")
    parser.add_argument("overrides", nargs="*", help="a.b=value")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in the output dir")
    args = parser.parse_args(argv)
    try:
        out = train(args.recipe, args.overrides, resume=args.resume, overwrite=args.overwrite)
        if os.environ.get("RANK", "0") == "0":
            print(out)
    except LlmkitError as exc:
        sys.stderr.write(f"Error: {exc.message}\n" + (f"  hint: {exc.hint}\n" if exc.hint else ""))
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
