"""The embedding-training recipe's schema (`llmkit embed train RECIPE`; recipes/embed/*.yaml with
a `loss:` section). Running it is embedding/train.py; this module stays light (pydantic and leaf
modules only) because the recipe loader imports it to validate.

    model:  the encoder to fine-tune (default the embedded all-MiniLM-L6-v2; a local
            sentence-transformers / Hugging Face encoder dir, or an HF id)
    data:   one file in any format the readers take, in one of four forms (`format`):
              pairs     anchor, positive                (MultipleNegativesRanking)
              triplets  anchor, positive, negative      (MultipleNegativesRanking, hard negative)
              scored    anchor, positive, score in 0-1  (CoSENT)
              labelled  text, label → pairs of rows with the same label
            `auto` tells them apart by the columns present. Column names are keys of their own.
            `mine_negatives: K` adds K hard negatives per anchor, mined with the model being
            trained (train_mine.py).
    loss:   mnrl | cached_mnrl | cosent, wrapped in Matryoshka when `dims` is given
    train:  the loop (output_dir is the run directory: the llmkit run contract); `lora: {r, alpha,
            dropout}` trains low-rank adapters instead of every weight, merged at the end
    eval:   held-out fraction and the k of recall@k

Paths follow the recipe rule (recipe_base.py): data paths against the recipe file's folder,
train.output_dir against the current directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llmkit.embedding.choices import DEFAULT_MODEL
from llmkit.readers import FORMATS, HF_PREFIX
from llmkit.recipe_base import RecipeBase

FORMS = ("auto", "pairs", "triplets", "scored", "labelled")
LOSSES = ("mnrl", "cached_mnrl", "cosent")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(_Section):
    name: str = Field(DEFAULT_MODEL, description="Encoder: the embedded default, a local dir or an HF id.")
    max_length: int | None = Field(
        None, ge=8, description="Tokens per text while training (default: the model's own limit)."
    )


class DataSection(_Section):
    path: str = Field(description="Pairs, triplets, scored pairs or labelled rows (.jsonl/.csv/...).")
    format: Literal[FORMS] = "auto"  # type: ignore[valid-type]
    anchor: str = "anchor"
    positive: str = "positive"
    negative: str = "negative"
    score: str = "score"
    text: str = "text"
    label: str = "label"
    split: str = Field("train", description="Split of a saved dataset or hf:NAME.")
    limit: int | None = Field(None, ge=1, description="Use only the first N rows (quick trials).")
    mine_negatives: int | None = Field(
        None,
        ge=1,
        description="Mine K hard negatives per anchor from the corpus with the model being trained "
        "(its nearest texts that are not the anchor's positives): pairs become triplets.",
    )


class LossSection(_Section):
    name: Literal[LOSSES] = Field(  # type: ignore[valid-type]
        "mnrl",
        description="mnrl (in-batch negatives), cached_mnrl (the same with large batches in small "
        "memory), cosent (scored pairs).",
    )
    dims: list[int] | None = Field(
        None, description="Matryoshka: also train these leading dimensions (largest first)."
    )
    scale: float = Field(20.0, gt=0, description="Similarity scale (inverse temperature).")
    mini_batch_size: int = Field(16, ge=1, description="cached_mnrl: texts per forward pass.")

    @model_validator(mode="after")
    def _dims(self) -> LossSection:
        if self.dims is not None and (not self.dims or min(self.dims) < 1):
            raise ValueError("loss.dims: give positive dimensions, e.g. [384, 128, 64]")
        return self


class LoraSection(_Section):
    r: int = Field(8, ge=1, description="Rank of the low-rank update.")
    alpha: float = Field(16.0, gt=0, description="Scale: the update is multiplied by alpha / r.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")


class TrainSection(_Section):
    output_dir: str = Field("runs/embed-train", description="Run directory (encoder, checkpoints, metrics).")
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps (overrides epochs).")
    batch_size: int = Field(
        32, ge=2, description="Rows per step (capped at the number of distinct positives or labels)."
    )
    lr: float = Field(2e-5, gt=0)
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    max_grad_norm: float = Field(1.0, ge=0.0, description="0 disables clipping.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="auto: bf16 autocast where the CPU has native bf16 (AVX512-BF16 or AMX), else fp32; "
        "weights and optimizer stay fp32.",
    )
    lora: LoraSection | None = Field(
        None,
        description="LoRA on the encoder's attention and feed-forward linears (PEFT), merged into the "
        "saved encoder; unset: full fine-tune.",
    )
    seed: int = 42
    save_every: int = Field(50, ge=0, description="Steps between checkpoints (0 = only at the end).")
    log_every: int = Field(1, ge=1)
    keep_checkpoints: int = Field(2, ge=1)


class EvalSection(_Section):
    fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Rows held out for evaluation (0: none).")
    k: int = Field(10, ge=1, description="recall@k beside recall@1.")


class ExportSection(_Section):
    ollama: str | None = Field(None, description="Ollama model name to create from the tuned encoder.")


class EmbedTrainRecipe(RecipeBase):
    """An embedding-training recipe."""

    kind: ClassVar[str] = "embed-train"
    example: ClassVar[str] = "minilm-support"

    name: str | None = None
    description: str | None = None
    model: ModelSection = Field(default_factory=ModelSection)
    data: DataSection
    loss: LossSection = Field(default_factory=LossSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    export: ExportSection = Field(default_factory=ExportSection)

    def data_path(self) -> Path | str:
        """data.path by the path rule; `hf:NAME` and bare Hub names are kept as written."""
        value = self.data.path
        if value.startswith(HF_PREFIX):
            return value
        path = self.resolve_input(value)
        return path if path.exists() or Path(value).suffix.lower() in FORMATS else value

    def inputs(self) -> dict[str, Path]:
        found = self.data_path()
        return {"data.path": found} if isinstance(found, Path) and found.suffix.lower() in FORMATS else {}
