"""What a plan answers: the memory breakdown and the full result (`--json` prints it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Memory:
    """Peak memory of the training process, bytes, by what holds it."""

    weights: int
    lora: int  # LoRA params + grads + AdamW moments (fp32)
    activations: int  # saved for backward, largest pass
    loss: int  # logits on label tokens + log-softmax + their gradients
    overhead: int  # allocator slack + the working set of the run beyond its imports
    runtime: int  # the process before training: Python + torch imports (CPU) or CUDA context (GPU)

    @property
    def peak(self) -> int:
        """What training adds to the process: the figure `--memory` is compared against, less runtime."""
        return self.weights + self.lora + self.activations + self.loss + self.overhead

    @property
    def total(self) -> int:
        return self.peak + self.runtime


@dataclass
class PlanResult:
    recipe: str
    model: str
    architecture: str
    device: str
    device_name: str
    precision: str
    weights_dtype: str  # fp32 | bf16 | fp16 | nf4
    memory_available: int
    params_total: int
    params_active: int  # per token (MoE: routed experts that run)
    params_trainable: int
    lora_modules: list[str]
    gradient_checkpointing: bool
    max_batch_tokens: int  # 0 = no limit
    largest_pass_tokens: int  # rows x width of the largest forward pass (padding included)
    largest_pass_labels: int
    activation_bytes_per_token: int  # this run's setting
    activation_bytes_per_token_no_ckpt: int
    activation_bytes_per_token_ckpt: int
    loss_bytes_per_label: int
    memory: Memory
    disk: dict[str, int]
    steps: int
    steps_per_epoch: int
    tokens_per_epoch: int  # padded tokens the model processes in one epoch
    label_tokens_per_epoch: int
    flops_per_token: float
    device_flops: float  # measured (or table) FLOP/s of a matmul at this precision
    flops_source: str
    efficiency: float
    seconds_per_epoch: float
    seconds_total: float
    fits: bool
    short_by: int
    advice: list[str] = field(default_factory=list)
    probe: dict | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory"] = {**d["memory"], "peak": self.memory.peak, "total": self.memory.total}
        return d
