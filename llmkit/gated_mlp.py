"""The gated MLP's middle, act(gate) * up, as one autograd function that keeps gate and up only.

Autograd keeps three [tokens, intermediate] tensors for `act(gate) * up`: gate (for act's
backward), act(gate) and up (for the product's). act(gate) is one elementwise pass from gate, so
here it is computed again in the backward pass instead of kept: a quarter of the MLP's saved
activations, the largest share of a decoder layer's (`wanted` says where that pays). The same
kernels run on the same inputs, so values and gradients are the same bit for bit.

It applies to an MLP whose forward is transformers' plain `down(act(gate(x)) * up(x))` (read from
its source, so a model that computes anything else keeps its own) and whose act is SiLU or tanh-
approximated GELU (found by evaluating it: the kernels with a backward that needs only gate).
`llmkit plan` asks `gated` of the same modules to count what a run keeps.
"""

from __future__ import annotations

import inspect
import re
import types

import torch
import torch.nn.functional as F

# transformers' plain gated MLP forward, whitespace removed (Llama, Mistral, Qwen, Gemma, ...)
PLAIN_FORWARDS = (
    "returnself.down_proj(self.act_fn(self.gate_proj(x))*self.up_proj(x))",
    "down_proj=self.down_proj(self.act_fn(self.gate_proj(x))*self.up_proj(x))returndown_proj",
)
# act -> (forward, backward given the gradient and gate), the ones recognised by evaluation
KERNELS = {
    "silu": (F.silu, torch.ops.aten.silu_backward),
    "gelu_tanh": (
        lambda x: F.gelu(x, approximate="tanh"),
        lambda g, x: torch.ops.aten.gelu_backward(g, x, approximate="tanh"),
    ),
}


class _GatedProduct(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gate, up, kind: str):
        ctx.save_for_backward(gate, up)
        ctx.kind = kind
        return KERNELS[kind][0](gate).mul_(up)

    @staticmethod
    def backward(ctx, grad):
        gate, up = ctx.saved_tensors
        act, act_backward = KERNELS[ctx.kind]
        g_gate = act_backward(grad * up, gate) if ctx.needs_input_grad[0] else None
        g_up = grad * act(gate) if ctx.needs_input_grad[1] else None
        return g_gate, g_up, None


def _body(fn) -> str:
    """A function's body, whitespace removed ('' where its source cannot be read)."""
    try:
        lines = inspect.getsource(fn).splitlines()
    except (OSError, TypeError):
        return ""
    body = [line for line in lines[1:] if not line.strip().startswith(("#", '"""'))]
    return re.sub(r"\s+", "", "".join(body))


def _act_kind(act) -> str | None:
    """Which of KERNELS `act` computes, by evaluating it on CPU (activations hold no weights)."""
    if not isinstance(act, torch.nn.Module) or any(True for _ in act.parameters()):
        return None
    x = torch.linspace(-12, 12, 4001, device="cpu")
    with torch.no_grad():
        try:
            y = act(x)
        except Exception:  # an activation that cannot run on a CPU tensor: not one of ours
            return None
        return next((k for k, (f, _) in KERNELS.items() if torch.equal(y, f(x))), None)


def gated(module) -> str | None:
    """The act kind where `module` is a plain gated MLP this function computes, else None."""
    if not all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
        return None
    if _body(type(module).forward) not in PLAIN_FORWARDS:
        return None
    return _act_kind(module.act_fn)


def wanted(device: str, precision: str) -> bool:
    """Where training computes the gated MLPs this way: CPU bf16, where whole SmolLM2 runs kept
    8 % less and ran 1-2 % faster; in fp32 they kept 6 % less but ran 2 % slower (docs/train.md)."""
    return (device, precision) == ("cpu", "bf16")


def _forward(self, x):
    return self.down_proj(_GatedProduct.apply(self.gate_proj(x), self.up_proj(x), self._llmkit_act))


def use_gated_mlp(model) -> int:
    """Compute every plain gated MLP of `model` through `_GatedProduct`; returns how many."""
    n = 0
    for module in model.modules():
        kind = gated(module)
        if kind:
            module._llmkit_act = kind
            module.forward = types.MethodType(_forward, module)
            n += 1
    return n
