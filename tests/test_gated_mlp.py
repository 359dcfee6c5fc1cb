"""The gated MLP that keeps gate and up only (llmkit.gated_mlp): the same numbers, less memory,
and only where the MLP is transformers' plain one."""

from __future__ import annotations

import pytest
import torch

from llmkit.gated_mlp import gated, use_gated_mlp


def _lora_model(family: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llmkit.dropout import use_fast_dropout
    from llmkit.fused_lora import use_fused_lora
    from llmkit.tiny import tiny_model_dir

    path = tiny_model_dir(family)  # built on first use, from the RNG: before the seed
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cfg = LoraConfig(
        r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.1, init_lora_weights=False
    )
    peft = get_peft_model(model, cfg)
    use_fast_dropout(peft)
    use_fused_lora(peft)
    return peft.train()


def _pass(family: str, gated_mlps: bool, autocast: bool):
    """Loss and LoRA gradients of one training pass, and the bytes autograd kept for backward."""
    peft = _lora_model(family)
    n = use_gated_mlp(peft) if gated_mlps else 0
    kept: dict = {}
    params = {p.untyped_storage().data_ptr() for p in peft.parameters()}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            kept[s.data_ptr()] = s.nbytes()
        return t

    ids = torch.randint(0, peft.config.vocab_size, (2, 19), generator=torch.Generator().manual_seed(1))
    torch.manual_seed(7)  # the same dropout draws
    hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    with hooks, torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = peft(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {k: p.grad for k, p in peft.named_parameters() if p.grad is not None}
    return loss.detach(), grads, sum(kept.values()), n, ids.numel(), peft


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-gemma3"])
@pytest.mark.parametrize("autocast", [False, True])
def test_the_same_losses_and_gradients_bit_for_bit_with_less_kept(family, autocast):
    """SiLU (Llama) and tanh GELU (Gemma 3) recomputed in backward give exactly autograd's
    numbers, fp32 and under bf16 autocast, and the pass keeps one [tokens, intermediate] tensor
    less per MLP: act(gate), in the dtype the MLP computes in."""
    loss0, grads0, kept0, _, _, _ = _pass(family, False, autocast)
    loss1, grads1, kept1, n, tokens, peft = _pass(family, True, autocast)
    layers = peft.get_base_model().config.num_hidden_layers
    assert n == layers > 0
    assert torch.equal(loss0, loss1)
    assert grads0.keys() == grads1.keys() and grads0
    for name in grads0:
        assert torch.equal(grads0[name], grads1[name]), name
    intermediate = peft.get_base_model().config.intermediate_size
    assert kept0 - kept1 == n * tokens * intermediate * 4  # gate and up are fp32 sums (fused_lora)


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-qwen2moe"])
def test_the_plan_counts_what_the_gated_mlps_leave_out(family, tmp_path):
    """`llmkit plan` finds the gated MLPs on the meta-device model (an MoE's shared expert too, at
    its own width) and, for a CPU bf16 run (where training uses them), plans per token exactly the
    bytes a real pass keeps less."""
    from llmkit.plan import plan

    base = [f"train.output_dir={tmp_path}", f"model.name={family}"]
    fp32 = plan("tiny", [*base, "train.precision=fp32"], device="cpu", measure=False)
    bf16 = plan("tiny", [*base, "train.precision=bf16"], device="cpu", measure=False)
    _, _, kept0, _, tokens, _ = _pass(family, False, False)
    _, _, kept1, n, _, _ = _pass(family, True, False)
    assert n > 0 and kept1 < kept0
    assert fp32.activation_bytes_per_token - bf16.activation_bytes_per_token == (kept0 - kept1) / tokens


class _Custom(torch.nn.Module):
    """Gate, up and down like a plain MLP, but computing something else."""

    def __init__(self, act):
        super().__init__()
        self.gate_proj = torch.nn.Linear(4, 8)
        self.up_proj = torch.nn.Linear(4, 8)
        self.down_proj = torch.nn.Linear(8, 4)
        self.act_fn = act

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)).clamp(max=1) * self.up_proj(x))


class _Plain(_Custom):
    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def test_only_plain_gated_mlps_with_a_known_activation():
    assert gated(_Plain(torch.nn.SiLU())) == "silu"
    assert gated(_Plain(torch.nn.GELU(approximate="tanh"))) == "gelu_tanh"
    assert gated(_Plain(torch.nn.GELU())) is None  # exact GELU: not the tanh kernels
    assert gated(_Plain(torch.nn.ReLU())) is None
    assert gated(_Plain(torch.nn.PReLU())) is None  # an activation with weights
    assert gated(_Custom(torch.nn.SiLU())) is None  # its forward computes something else
    assert gated(torch.nn.Linear(4, 4)) is None
    model = torch.nn.Sequential(_Plain(torch.nn.SiLU()), _Custom(torch.nn.SiLU()))
    x = torch.randn(3, 4)
    before = model(x)
    assert use_gated_mlp(model) == 1
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
