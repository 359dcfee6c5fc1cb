"""`llmkit embed train RECIPE`: fine-tune a sentence-transformers encoder on the user's pairs.

The loop, top to bottom: batch (train_data.schedule: seeded, no text twice in a batch) →
tokenize → the sentence-transformers loss (MultipleNegativesRanking, its cached form or CoSENT,
in Matryoshka when loss.dims is set; used as they come, not rewritten; under bf16 autocast where
the CPU has native bf16, train.precision) → backward (the embedding tables' gradients sparse,
made dense once after it) → clip → fused AdamW step (fp32 weights and state; no temporaries the
size of the embedding matrix) → scheduler. A plain loop rather than
SentenceTransformerTrainer, so that the run directory keeps llmkit's run contract (llmkit.runs):

    runs/NAME/recipe.yaml     the resolved recipe (absolute input paths)
              metrics.jsonl   step 0: the held-out figures before; then loss per step; the last
                              step: the figures after
              checkpoints/    step-NNNNNN/ model.safetensors, optimizer, scheduler, RNG, state.json
                              (last), renamed into place whole: kill -9 leaves all of one or none;
                              every train.save_every steps, not at the end (encoder/ is the end,
                              as in the SFT loop: 270 MB and up to a second less for MiniLM)
              loss.png, tensorboard/, run.json (written last: the run finished)
              encoder/        the tuned encoder, a plain sentence-transformers model directory

`--resume` continues from the newest checkpoint to the same weights as an uninterrupted run:
the batch order is a function of (seed, step) and the RNG states travel in the checkpoint.
Every check of the recipe, data and model runs before the run directory is touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import time
from pathlib import Path

from llmkit.embedding import train_data, train_eval, train_mine
from llmkit.embedding.tuned import encoder_dir
from llmkit.errors import LlmkitError, RecipeError
from llmkit.files import atomic_dir, atomic_file, write_json
from llmkit.recipe import dump, load_any
from llmkit.runs import Metrics, RunLayout, check_run_dir, clear_run_dir, plot_loss, prune_checkpoints


def load(recipe, overrides=()):
    """An embedding-training recipe by path, shipped name, dict or model, with overrides."""
    return load_any(recipe, overrides, kind="embed-train")


def train(recipe, overrides=(), *, resume: bool = False, overwrite: bool = False) -> dict:
    """Run the recipe; returns run.json's record (evaluation before/after included)."""
    recipe = load(recipe, overrides)
    t = recipe.train
    layout = RunLayout(recipe.resolve_output(t.output_dir))
    data = train_data.load(recipe)  # every data check before a model loads
    _check_loss(recipe, data)
    train_mine.check(data, recipe.data.mine_negatives)
    check_run_dir(layout.path, resume=resume, overwrite=overwrite)
    model_dir = _model_dir(recipe)
    # oneDNN (the bf16 matmuls) keeps a compiled kernel per shape, 1024 by default; batches of
    # texts rarely repeat a shape, so the cache only grew: 32 kept is ~35 MB less peak memory
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "32")
    import torch

    from llmkit.devices import use_free_cpus
    from llmkit.ui import field, info, progress_items, quiet_transformers

    use_free_cpus()  # threads = idle cores: a busy core makes torch's spinning threads crawl
    quiet_transformers()
    model = _load_model(model_dir, recipe)
    loss_fn = _loss(model, recipe)  # dims checked against the model here, still nothing written
    negatives = _negatives(layout, recipe, data, model, resume)  # with the untrained weights
    _lora(model, t.lora)
    params = (
        [p.numel() for p in model.parameters() if p.requires_grad],
        [p.numel() for p in model.parameters()],
    )
    steps = train_data.schedule(data.train, t.batch_size, t.seed, t.epochs, t.max_steps)
    optimizer, scheduler = _optimizer(model, recipe, len(steps))
    tables = _sparse_grads(model)
    precision = _precision(t.precision)

    if overwrite:
        clear_run_dir(layout.path)
    layout.path.mkdir(parents=True, exist_ok=True)
    start, started = 0, time.time()
    if resume:
        start = _load_checkpoint(layout, model, optimizer, scheduler)
        before = next((r["before"] for r in _metrics(layout) if r["step"] == 0 and "before" in r), {})
    else:
        _write_recipe(layout, recipe)
        random.seed(t.seed)
        torch.manual_seed(t.seed)
        before = train_eval.evaluate(_encoder(model), data, recipe.eval.k)
    log = Metrics(layout, start, enabled=True)
    if not resume:
        log.fh.write(json.dumps({"step": 0, "before": before}) + "\n")  # not a scalar: no TensorBoard
    info(
        f"Training {recipe.model.name} ({recipe.loss.name}{' + matryoshka' if recipe.loss.dims else ''}) "
        f"on {data.form} from {data.where}: {len(data.train)} examples, {len(steps)} steps, {precision} → {layout.path}"
    )
    loop_start = time.perf_counter()
    bar = progress_items(field("loss"), field("eps", "examples/s"))
    with bar:
        task = bar.add_task("embed train", total=len(steps), completed=start, loss="-", eps="-")
        for step in range(start, len(steps)):
            model.train()
            t0 = time.perf_counter()
            rows = [data.train[i] for i in steps[step]]
            with _autocast(precision):
                loss = loss_fn(*_features(model, rows))  # 1-2. batch, forward + loss
            loss.backward()  # 3. backward
            _dense_grads(tables)
            if t.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
            optimizer.step()  # 4. step
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done, value = step + 1, float(loss.detach())
            eps = len(rows) / (time.perf_counter() - t0)
            bar.update(task, completed=done, loss=f"{value:.4f}", eps=f"{eps:,.1f}")
            if done % t.log_every == 0 or done == len(steps):
                log.write(done, loss=value, lr=scheduler.get_last_lr()[0], examples_per_s=round(eps, 2))
            if t.save_every and done % t.save_every == 0 and done < len(steps):  # the end: encoder/
                _save_checkpoint(layout, done, model, optimizer, scheduler, t.keep_checkpoints, negatives)
    for table in tables:
        table.sparse = False
    if t.lora:  # the adapters folded into the weights: encoder/ is a plain model directory
        model[0].model = model[0].model.merge_and_unload()
    train_seconds = time.perf_counter() - loop_start
    with atomic_dir(layout.encoder, replace=True) as tmp:  # first: the trained weights are safe
        model.save(str(tmp), create_model_card=False)
    after = train_eval.evaluate(_encoder(model), data, recipe.eval.k)
    log.fh.write(json.dumps({"step": len(steps), "after": after}) + "\n")
    log.close()
    plot_loss(layout)
    return _write_info(
        layout, recipe, model_dir, data, len(steps), before, after, started, train_seconds, precision, params
    )


# ----------------------------------------------------------------------------- the pieces


def _model_dir(recipe) -> Path:
    from llmkit.embedding.encoders import resolve_model_dir

    local = recipe.resolve_input(recipe.model.name)  # a dir beside the recipe, or an id / alias
    if local.is_dir():
        return encoder_dir(local, "model.name")  # the error names the recipe key
    return resolve_model_dir(recipe.model.name)[1]


def _load_model(path: Path, recipe):
    from sentence_transformers import SentenceTransformer

    from llmkit.ui import quiet_transformers

    quiet_transformers()  # no "Loading weights" bar under our own output

    try:
        model = SentenceTransformer(str(path), device="cpu")
    except Exception as exc:  # a config that sentence-transformers cannot build an encoder from
        raise LlmkitError(
            f"model.name {recipe.model.name}: not a loadable encoder ({type(exc).__name__}: {exc})".splitlines()[
                0
            ],
            "use a sentence-transformers or Hugging Face encoder dir (config.json, tokenizer, weights)",
        ) from None
    if recipe.model.max_length:
        model.max_seq_length = recipe.model.max_length
    return model


def _loss(model, recipe):
    from sentence_transformers.sentence_transformer import losses

    spec = recipe.loss
    if spec.name == "cosent":
        base = losses.CoSENTLoss(model, scale=spec.scale)
    elif spec.name == "cached_mnrl":
        base = losses.CachedMultipleNegativesRankingLoss(
            model, scale=spec.scale, mini_batch_size=spec.mini_batch_size
        )
    else:
        base = losses.MultipleNegativesRankingLoss(model, scale=spec.scale)
    if not spec.dims:
        return base
    dim = model.get_sentence_embedding_dimension()
    if max(spec.dims) > dim:
        raise RecipeError(
            f"loss.dims: {max(spec.dims)} is larger than the model's dimension {dim}",
            f"use dimensions up to {dim}, e.g. loss.dims=[{dim},{dim // 2},{dim // 4}]",
        )
    return losses.MatryoshkaLoss(model, base, sorted(set(spec.dims), reverse=True))


def _features(model, rows: list) -> tuple[list[dict], object]:
    """The loss's inputs: one tokenized batch per column (anchor, positive[, negative]), and the
    labels (the scores for CoSENT; ignored by the ranking losses)."""
    import torch

    columns = len(rows[0].texts)
    prepare = getattr(model, "preprocess", None) or model.tokenize  # renamed in sentence-transformers 6
    features = [prepare([r.texts[c] for r in rows]) for c in range(columns)]
    scores = [r.score if r.score is not None else 1.0 for r in rows]
    return features, torch.tensor(scores, dtype=torch.float32)


def _negatives(layout, recipe, data, model, resume: bool) -> dict | None:
    """data.mine_negatives: mined once with the untrained model (a resumed run reads them back from
    its checkpoint), then added to the training examples."""
    k = recipe.data.mine_negatives
    if not k:
        return None
    found = resume and layout.finished_checkpoints() and train_mine.load(layout.finished_checkpoints()[-1])
    negatives = found or train_mine.mine(data, _encoder(model), k)
    train_mine.apply(data, negatives)
    return negatives


def _lora(model, spec) -> None:
    """train.lora: PEFT LoRA adapters on every linear of the encoder's layers (BERT: query, key,
    value, attention output, intermediate, output; the unused pooler is left out); all else frozen."""
    if spec is None:
        return
    import torch
    from peft import LoraConfig, get_peft_model

    inner = model[0].model
    targets = [
        name
        for name, module in inner.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.startswith("pooler")
    ]
    config = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets)
    model[0].model = get_peft_model(inner, config)


def _sparse_grads(model) -> list:
    """The trained embedding tables, switched to sparse gradients: backward then writes only
    the rows a batch used (each pass of the vocabulary-sized table, 47 MB for MiniLM, was a
    zero-fill and an add per column), and one dense gradient is made after backward, when
    the activations are gone. The same sums, the same AdamW step."""
    import torch

    tables = [m for m in model.modules() if isinstance(m, torch.nn.Embedding) and m.weight.requires_grad]
    for table in tables:
        table.sparse = True
    return tables


def _dense_grads(tables) -> None:
    """The sparse gradients as the dense ones clipping and the fused AdamW step take."""
    for table in tables:
        grad = table.weight.grad
        if grad is not None and grad.is_sparse:
            table.weight.grad = grad.coalesce().to_dense()


def _precision(choice: str) -> str:
    """auto → bf16 where the CPU has native bf16 math (measured faster there, score held), else fp32."""
    if choice != "auto":
        return choice
    from llmkit.devices import cpu_native_bf16

    return "bf16" if cpu_native_bf16() else "fp32"


def _autocast(precision: str):
    import torch

    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _optimizer(model, recipe, total: int):
    import torch
    from transformers import get_scheduler

    t = recipe.train
    decay, no_decay = [], []
    for p in model.parameters():  # no weight decay on biases and norms (as BERT trained)
        if p.requires_grad:  # LoRA: the adapters only
            (no_decay if p.ndim < 2 else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t.lr,
        fused=True,  # one kernel per tensor: no temporaries as large as the embedding matrix
    )
    scheduler = get_scheduler(t.scheduler, optimizer, round(t.warmup_ratio * total), total)
    return optimizer, scheduler


def _encoder(model):
    """The model as evaluation's `encode`: unit vectors, eval mode (no dropout)."""

    def encode(texts: list[str]):
        model.eval()
        return model.encode(
            texts, batch_size=64, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False
        )

    return encode


def _check_loss(recipe, data) -> None:
    """The loss must fit the data's form (CoSENT needs scores; the ranking losses, matches)."""
    if recipe.loss.name == "cosent" and data.form != "scored":
        raise RecipeError(
            f"loss.name cosent needs scored pairs, but {data.where} holds {data.form}",
            "use loss.name=mnrl (or cached_mnrl), or give anchor/positive/score rows",
        )
    if recipe.loss.name != "cosent" and data.form == "scored":
        raise RecipeError(
            f"loss.name {recipe.loss.name} ranks matches, but {data.where} holds scored pairs",
            "use loss.name=cosent for scored pairs",
        )


# ----------------------------------------------------------------------------- run directory


def _write_recipe(layout: RunLayout, recipe) -> None:
    """The recipe with its input path made absolute, so the run's copy loads from anywhere."""
    data = recipe.model_dump()
    found = recipe.data_path()
    if isinstance(found, Path):
        data["data"]["path"] = str(found.resolve())
    model = Path(recipe.model.name).expanduser()
    if model.exists():
        data["model"]["name"] = str(recipe.resolve_input(recipe.model.name).resolve())
    data["train"]["output_dir"] = str(layout.path.resolve())
    with atomic_file(layout.recipe) as fh:
        fh.write(dump(load(data)))


def _save_checkpoint(layout, step, model, optimizer, scheduler, keep, negatives=None) -> None:
    import torch
    from safetensors.torch import save_file, save_model

    with atomic_dir(layout.checkpoint(step), replace=True) as d:
        trained = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        if len(trained) < len(list(model.parameters())):  # LoRA: the adapters are the whole state
            save_file(trained, str(d / "model.safetensors"))
        else:
            save_model(model, str(d / "model.safetensors"))
        torch.save(optimizer.state_dict(), d / "optimizer.pt")
        torch.save(scheduler.state_dict(), d / "scheduler.pt")
        torch.save({"python": random.getstate(), "torch": torch.get_rng_state()}, d / "rng.pt")
        if negatives is not None:
            train_mine.save(d, negatives)
        write_json(d / "state.json", {"step": step})  # last: its presence means complete
    prune_checkpoints(layout, keep)


def _load_checkpoint(layout, model, optimizer, scheduler) -> int:
    import torch
    from safetensors.torch import load_file, load_model

    path = layout.finished_checkpoints()[-1]
    if all(p.requires_grad for p in model.parameters()):
        load_model(model, str(path / "model.safetensors"))
    else:  # LoRA: the adapters only, every one of them
        state = load_file(str(path / "model.safetensors"))
        wanted = {n for n, p in model.named_parameters() if p.requires_grad}
        if set(state) != wanted:
            raise LlmkitError(
                f"{path}: the checkpoint's adapters do not match train.lora of the recipe",
                "resume with the recipe the run started with (its recipe.yaml)",
            )
        model.load_state_dict(state, strict=False)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = torch.load(path / "rng.pt", weights_only=False)  # our own file: Python's RNG state is a tuple
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    return json.loads((path / "state.json").read_text())["step"]


def _metrics(layout) -> list[dict]:
    from llmkit.runs import read_metrics

    return read_metrics(layout.path)


def _write_info(
    layout, recipe, model_dir, data, steps, before, after, started, train_seconds, precision, params
) -> dict:
    import sentence_transformers
    import torch
    import transformers

    from llmkit.devices import cpu_name, usable_cpus

    info = {
        "kind": "embed-train",
        "base_model": recipe.model.name,
        "base_path": str(model_dir),
        "run_dir": str(layout.path),
        "encoder": layout.encoder.name,
        "loss": recipe.loss.model_dump(),
        "data": {**data.summary(), "mine_negatives": recipe.data.mine_negatives},
        "lora": recipe.train.lora.model_dump() if recipe.train.lora else None,
        "parameters": {"trainable": sum(params[0]), "total": sum(params[1])},
        "steps": steps,
        "precision": precision,
        "evaluation": {"before": before, "after": after, "k": recipe.eval.k},
        "hardware": {"cpu": cpu_name(), "threads": usable_cpus()},
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "sentence-transformers": sentence_transformers.__version__,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "train_seconds": round(train_seconds, 2),
    }
    write_json(layout.info, info)
    return info
