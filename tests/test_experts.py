"""The padded experts (llmkit/experts.py) compute what transformers' experts compute: per
experts layout (gated or not, biases, transposed weights, interleaved gate) against the
model's own eager loop in fp32, and in a bf16 LoRA model against transformers' grouped_mm."""

from __future__ import annotations

import pytest
import torch

from llmkit import attention
from llmkit import data as datalib
from llmkit.experts import BLOCK, NAME, padded_experts_forward, padded_rows, use_padded_experts
from llmkit.methods.model import LossModel

# (module, experts class, config class, config fields): the layouts transformers' experts come in
LAYOUTS = {
    "qwen3moe": (
        "qwen3_moe",
        "Qwen3MoeExperts",
        "Qwen3MoeConfig",
        dict(num_experts=6, moe_intermediate_size=24),
    ),
    "mixtral": (
        "mixtral",
        "MixtralExperts",
        "MixtralConfig",
        dict(num_local_experts=6, intermediate_size=24),
    ),
    # biases, (E, in, out) weights, gate and up interleaved, a clamped gate of its own
    "gpt_oss": ("gpt_oss", "GptOssExperts", "GptOssConfig", dict(num_local_experts=6, intermediate_size=24)),
    # no gate: up, activation, down
    "nemotron_h": (
        "nemotron_h",
        "NemotronHExperts",
        "NemotronHConfig",
        dict(n_routed_experts=6, moe_intermediate_size=24, moe_latent_size=None),
    ),
}


def _experts(layout: str):
    import importlib

    module, cls, config_cls, fields = LAYOUTS[layout]
    config = getattr(importlib.import_module("transformers"), config_cls)(hidden_size=32, **fields)
    config._experts_implementation = "eager"
    experts = getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), cls)(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in experts.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return experts


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_padded_experts_compute_the_eager_loop(layout):
    """Outputs and every gradient (weights, biases, input) as the model's own per-expert loop,
    to float rounding, with groups of every kind: empty, a few rows (padded to a power of two),
    under BLOCK, exactly BLOCK, and over it."""
    experts = _experts(layout)
    n_experts = experts.num_experts
    g = torch.Generator().manual_seed(1)
    tokens = 2 * BLOCK + 13
    # expert 0 gets every token (a group over BLOCK), expert 1 exactly BLOCK, the last none
    first = torch.zeros(tokens, dtype=torch.long)
    second = torch.randint(3, n_experts - 1, (tokens,), generator=g)  # experts 3 .. E-2: the rest
    second[:BLOCK] = 1
    second[BLOCK : BLOCK + 5] = 2
    index = torch.stack([first, second], dim=1)
    weights = torch.softmax(torch.randn(tokens, 2, generator=g), dim=-1)
    hidden = torch.randn(tokens, 32, generator=g)
    counts = torch.bincount(index.flatten(), minlength=n_experts).tolist()
    assert counts[:3] == [tokens, BLOCK, 5] and 0 < min(counts[3:-1]) < BLOCK and counts[-1] == 0

    results = []
    for forward in (type(experts).forward, padded_experts_forward):
        experts.zero_grad()
        x = hidden.clone().requires_grad_()
        out = forward(experts, x, index, weights)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        results.append((out.detach(), x.grad, {n: p.grad.clone() for n, p in experts.named_parameters()}))
    (eager, dx1, g1), (padded, dx2, g2) = results
    torch.testing.assert_close(padded, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dx2, dx1, rtol=1e-5, atol=1e-5)
    assert g1.keys() == g2.keys() and g1
    for name in g1:
        torch.testing.assert_close(g2[name], g1[name], rtol=1e-4, atol=1e-5, msg=name)


def test_groups_are_padded_to_few_row_counts_at_bounded_cost():
    """Up to BLOCK rows: the next power of two (a sampling step's few rows per expert are not
    made 64 each); above: the next multiple of BLOCK. Either way under 2x the rows, and at most
    BLOCK - 1 more."""
    counts = torch.arange(0, 5 * BLOCK)
    padded = padded_rows(counts)
    assert padded[:9].tolist() == [0, 1, 2, 4, 4, 8, 8, 8, 8]
    assert padded[BLOCK].item() == BLOCK and padded[BLOCK + 1].item() == 2 * BLOCK
    assert (padded >= counts).all() and (padded < 2 * counts.clamp(min=1)).all()
    assert (padded - counts < BLOCK).all()
    assert len(set(padded.tolist())) == 7 + 5  # 0, 1, 2, ... 32; 64, 128, ... 320


def _bf16_moe_step(padded: bool, upcast: bool = False):
    """Per-token log-probs and LoRA gradients of one training pass of tiny-qwen3moe in bf16,
    LoRA on the stacked expert weights as training puts it (PEFT target_parameters)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmkit.lora import lora_targets
    from llmkit.tiny import tiny_model_dir

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir("tiny-qwen3moe"), dtype=torch.bfloat16)
    assert model.config._experts_implementation == "grouped_mm"  # transformers' default
    lengths = (40, 70, 55, 90)  # 255 tokens × 2 experts each over 4 experts: groups over BLOCK
    attention.use_segments(model, max(lengths))
    torch.manual_seed(0)
    peft = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, **lora_targets(model, "all-linear"))
    )
    if padded:
        assert use_padded_experts(peft) and model.config._experts_implementation == NAME
    if upcast:  # the bf16 weights in fp32: the computation both bf16 variants approximate
        peft = peft.float()
    g = torch.Generator().manual_seed(0)
    examples = []
    for n in lengths:
        ids = torch.randint(3, model.config.vocab_size, (n,), generator=g).tolist()
        examples.append(datalib.Example(ids, [datalib.IGNORE] * 2 + ids[2:]))
    batch = datalib.collate(examples, [[0, 1, 2, 3]], 0, segments=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not upcast):
        values = LossModel(peft).token_logps(batch["input_ids"], batch["position_ids"], batch["labels"])
    values.float().sum().backward()
    grads = {n: p.grad.float() for n, p in peft.named_parameters() if p.grad is not None}
    assert any("experts" in n for n in grads)  # the expert LoRA is trained through the padded path
    return torch.cat([values.detach().float()] + [grads[n].flatten() for n in sorted(grads)])


def test_bf16_training_through_padded_experts_is_as_close_to_fp32_as_grouped_mm():
    """In a bf16 LoRA pass the padded experts give grouped_mm's losses and gradients up to bf16
    rounding: measured against the same weights in fp32, no further off than grouped_mm itself."""
    truth = _bf16_moe_step(padded=False, upcast=True)
    plain = float((_bf16_moe_step(padded=False) - truth).norm() / truth.norm())
    padded = float((_bf16_moe_step(padded=True) - truth).norm() / truth.norm())
    assert padded < 0.05 and padded <= 1.25 * plain, (padded, plain)


def test_dense_models_and_chosen_implementations_keep_theirs():
    from transformers import AutoModelForCausalLM

    from llmkit.tiny import tiny_model_dir

    dense = AutoModelForCausalLM.from_pretrained(tiny_model_dir("tiny-llama"))
    assert not use_padded_experts(dense)
    eager = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir("tiny-mixtral"), experts_implementation="eager"
    )
    assert not use_padded_experts(eager) and eager.config._experts_implementation == "eager"


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_training_takes_the_padded_experts_in_bf16_on_cpu(precision, tmp_path):
    """Training's loader switches an MoE model to the padded experts in bf16 on CPU; fp32 keeps
    transformers' grouped_mm, which MKL runs at the same speed whatever the group sizes."""
    from accelerate import Accelerator

    from llmkit.recipe import load
    from llmkit.training import load_model, load_tokenizer

    recipe = load("tiny", ["model.name=tiny-qwen3moe", f"train.output_dir={tmp_path}"])
    _, base_dir = load_tokenizer(recipe)
    model = load_model(recipe, base_dir, precision, Accelerator(cpu=True))
    chosen = model.get_base_model().config._experts_implementation
    assert chosen == (NAME if precision == "bf16" else "grouped_mm")
