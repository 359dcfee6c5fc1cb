"""The training run directory: one contract for the writer (llmkit.training) and every reader
(chat, export, plan's probe, the CLI), so no module spells a file name of its own.

    runs/NAME/
      recipe.yaml        the resolved recipe (absolute paths: loads from anywhere)
      run.json           what the run was: base model, versions, hardware, steps, losses (write_info)
      adapter/           the finished PEFT adapter + tokenizer; renamed into place only when complete
      encoder/           (embed train) the tuned encoder, a plain sentence-transformers model dir
      checkpoints/       step-NNNNNN/ (adapter, optimizer, scheduler, RNG, state.json); the newest kept
      metrics.jsonl      one JSON object per logged step: {"step", "loss", …} or {"step", "eval_loss"}
      tensorboard/       the same metrics as TensorBoard events
      loss.png           train (and eval) loss per step

torch is imported only inside the functions that need it, so `chat --help` and export stay light.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from llmkit.errors import SourceError, TrainError
from llmkit.files import atomic_file, write_json


@dataclass(frozen=True)
class RunLayout:
    """Where each part of a run lives; the only place these names are spelled."""

    path: Path

    # everything a run writes; --overwrite removes exactly these (anything else stays)
    FILES = (
        "recipe.yaml",
        "run.json",
        "adapter",
        "encoder",
        "checkpoints",
        "metrics.jsonl",
        "tensorboard",
        "loss.png",
    )

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    recipe = property(lambda self: self.path / "recipe.yaml")
    info = property(lambda self: self.path / "run.json")
    adapter = property(lambda self: self.path / "adapter")
    encoder = property(lambda self: self.path / "encoder")
    checkpoints = property(lambda self: self.path / "checkpoints")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    tensorboard = property(lambda self: self.path / "tensorboard")
    loss_plot = property(lambda self: self.path / "loss.png")

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:06d}"

    def has_run(self) -> bool:
        """Whether a run (finished or not) already wrote anything here."""
        return self.path.is_dir() and any((self.path / name).exists() for name in self.FILES)

    def has_adapter(self) -> bool:
        return (self.adapter / "adapter_config.json").is_file()

    def finished_checkpoints(self) -> list[Path]:
        """Complete checkpoints (state.json is written last), oldest first."""
        done = (p for p in self.checkpoints.glob("step-*") if (p / "state.json").is_file())
        return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def last_checkpoint(out: str | Path) -> Path | None:
    done = RunLayout(out).finished_checkpoints()
    return done[-1] if done else None


def prune_checkpoints(layout: RunLayout, keep: int) -> None:
    """Keep the newest `keep` checkpoints (unfinished ones count as the newest: they are)."""
    for old in sorted(layout.checkpoints.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- starting a run


def check_run_dir(out: str | Path, *, resume: bool, overwrite: bool) -> None:
    layout = RunLayout(out)
    if resume and overwrite:
        raise TrainError("--resume and --overwrite contradict each other", "pass only one of them")
    if resume:
        if not last_checkpoint(layout.path):
            raise TrainError(
                f"{layout.path} has no checkpoint to resume from",
                "checkpoints are written every train.save_every steps; start afresh with --overwrite",
            )
    elif layout.has_run() and not overwrite:
        raise TrainError(
            f"{layout.path} already holds a training run",
            "pass --resume to continue it, --overwrite to replace it, or set train.output_dir",
        )


def clear_run_dir(out: str | Path) -> None:
    """Remove what a previous run wrote (only llmkit's own files; anything else stays)."""
    for name in RunLayout.FILES:
        p = Path(out) / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def write_recipe(layout: RunLayout, recipe) -> None:
    """The recipe with paths made absolute, so the run dir's copy loads from anywhere."""
    from llmkit.recipe import dump, load

    data = recipe.model_dump()
    for section, key in (
        ("data", "path"),
        ("data", "eval_path"),
        ("model", "name"),
        ("model", "chat_template"),
    ):
        value = data[section][key]
        if value and len(value) < 256 and "\n" not in value:
            p = recipe.resolve_path(value)
            if p.exists():
                data[section][key] = str(p.resolve())
    data["train"]["output_dir"] = str(Path(recipe.train.output_dir).expanduser().resolve())
    with atomic_file(layout.recipe) as fh:
        fh.write(dump(load(data)))


# ----------------------------------------------------------------------------- run.json


def write_info(
    layout: RunLayout,
    *,
    recipe,
    base_dir: Path,
    hardware: dict,
    precision: str,
    max_batch_tokens: int,
    steps: int,
    epochs: float,
    tokens_seen: int,
    data: dict,
    train_loss: float | None,
    eval_loss: float | None,
    started: float,
    train_seconds: float,
    method: str = "sft",
    evaluation: dict | None = None,
    **speed,
) -> dict:
    """Write run.json (the run's record; written last, so its presence means the run finished).
    `speed`: how the run was computed and how fast (padding_free, mfu, flops_per_token, peak_flops)."""
    info = {
        "base_model": recipe.model.name,
        "base_path": str(base_dir),
        "adapter": layout.adapter.name,
        "versions": versions(),
        "hardware": hardware,
        "precision": precision,
        "max_batch_tokens": max_batch_tokens,
        "steps": steps,
        "epochs": epochs,
        "tokens_seen": tokens_seen,
        "data": data,
        "train_loss": train_loss,
        "eval_loss": eval_loss,
        "method": method,
        "evaluation": evaluation or {},  # the last held-out figures (eval_loss, preference accuracy, rewards)
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "train_seconds": round(train_seconds, 2),  # the loop only (this session): no loading/saving
        **speed,
    }
    write_json(layout.info, info)
    return info


def read_info(out: str | Path) -> dict:
    """run.json as a dict; {} for a run that has not finished (no run.json yet)."""
    path = RunLayout(out).info
    return json.loads(path.read_text()) if path.is_file() else {}


def versions() -> dict:
    import accelerate
    import peft
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
    }


# ----------------------------------------------------------------------------- metrics


def read_metrics(out: str | Path) -> list[dict]:
    path = RunLayout(out).metrics
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()] if path.is_file() else []


class Metrics:
    """metrics.jsonl + TensorBoard; on resume, entries past the checkpoint are dropped first."""

    def __init__(self, layout: RunLayout, start_step: int, enabled: bool):
        self.enabled, self.path, self.last_loss = enabled, layout.metrics, None
        if not enabled:
            return
        if start_step and self.path.exists():
            kept = [r for r in read_metrics(layout.path) if r["step"] <= start_step]
            with atomic_file(self.path) as fh:
                fh.writelines(json.dumps(r) + "\n" for r in kept)
        elif self.path.exists():
            self.path.unlink()
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(layout.tensorboard), purge_step=start_step or None)
        self.fh = open(self.path, "a")  # noqa: SIM115 (an append-only log, closed in close())

    def write(self, step: int, **values) -> None:
        if not self.enabled:
            return
        if "loss" in values:
            self.last_loss = round(values["loss"], 6)
        self.fh.write(json.dumps({"step": step, **values}) + "\n")
        self.fh.flush()
        for k, v in values.items():
            self.tb.add_scalar(f"{'eval' if k == 'eval_loss' else 'train'}/{k}", v, step)

    def close(self) -> None:
        if self.enabled:
            self.fh.close()
            self.tb.close()


def plot_loss(layout: RunLayout) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(layout.path)
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train"), ("eval_loss", "eval")):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o" if key == "eval_loss" else None, label=label)
    ax.set(xlabel="step", ylabel="loss (per answer token)", title=layout.path.name)
    ax.legend()
    fig.tight_layout()
    with atomic_file(layout.loss_plot, "wb") as fh:
        fig.savefig(fh, format="png")
    plt.close(fig)


# ----------------------------------------------------------------------------- reading a finished run


@dataclass
class Run:
    path: Path
    recipe: object  # llmkit.recipe.Recipe
    adapter_dir: Path

    @property
    def base_ref(self) -> str:
        return self.recipe.model.name


def is_run_dir(path: str | Path) -> bool:
    """A run with an adapter/ (finished or not); see RunLayout.recipe for any run at all."""
    layout = RunLayout(path)
    return layout.recipe.is_file() and layout.adapter.is_dir()


def open_run(path: str | Path) -> Run:
    """A finished run; a run dir without a finished adapter is a one-line error saying so."""
    from llmkit.recipe import load

    layout = RunLayout(path)
    if not layout.recipe.is_file():
        raise SourceError(f"{layout.path} is not a training run directory (no {layout.recipe.name})")
    if not layout.has_adapter():
        raise SourceError(
            f"{layout.path} has no finished adapter (its training failed, was stopped, or is still running)",
            f"continue it from its last checkpoint: llmkit train {layout.recipe} --resume",
        )
    return Run(path=layout.path, recipe=load(layout.recipe), adapter_dir=layout.adapter)
