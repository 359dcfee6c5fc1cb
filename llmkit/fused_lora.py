"""LoRA layers on CPU as one autograd function: the frozen matmul, dropout and the LoRA update
with the fewest dtype conversions and elementwise passes.

Under bf16 autocast PEFT's LoRA layer casts its input to fp32 for the adapter, autocast casts it
back to bf16 for each matmul (q, k and v each cast the same input again), dropout runs on the
fp32 copy, and the update is scaled and added by separate passes. Here the input is cast once
(and shared by the layers that read it), dropout zeroes the positions it drops in a passing copy
of it (kept for backward: the shared input and the positions) and its 1/(1-p) folds into the
LoRA scale, and the update is added to the frozen layer's output by one fp32 `addmm`: the sum
stays fp32, as `lora.fp32_lora_sums` requires, and the narrow LoRA matmul into it is fp32 too,
so it rounds less than PEFT's bf16 one. The backward pass computes only the gradients autograd
asks for, its big matmul in the forward's dtype. Measured on SmolLM2-135M, bf16, fixed passes,
6 paired rounds: 220 -> 272 tokens/s (bench/train_throughput.py has the whole-run figures).

The same arithmetic as PEFT's layer, in another order (tested against it: fp32 to float
rounding, bf16 no further from fp32 than PEFT's). Anything it does not cover (DoRA, merged or
disabled adapters, several active adapters, a GPU, trained base weights) goes to PEFT's forward.
"""

from __future__ import annotations

import types
import weakref

import torch
import torch.nn.functional as F

from llmkit.dropout import FastDropout, zero_at


class _LoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, xc, weight, bias, lora_a, lora_b, dropped, scale: float, dtype, wide: bool):
        # xc: x in the matmuls' dtype (shared by the layers that read the same x)
        with torch.autocast("cpu", enabled=False):
            out = F.linear(xc, weight.to(dtype), None if bias is None else bias.to(dtype))
            xd = xc if dropped is None else zero_at(xc, dropped)  # a copy, freed once h is made
            h = F.linear(xd, lora_a.to(dtype))  # (..., r): the adapter's narrow middle
            if wide:
                out, h = out.float(), h.float()
            b = lora_b.to(out.dtype)
            shape = out.shape
            out = out.view(-1, shape[-1]).addmm_(h.view(-1, h.shape[-1]), b.t(), alpha=scale).view(shape)
        # xc, shared by the layers reading one x, and the dropped positions: a dropped copy per
        # layer would be 7 more activations per decoder layer to write and read back
        ctx.save_for_backward(weight, lora_a, lora_b, xc, h, dropped)
        ctx.scale, ctx.dtype, ctx.x_dtype = scale, dtype, x.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        weight, lora_a, lora_b, xc, h, dropped = ctx.saved_tensors
        need_x, _, _, _, need_a, need_b = ctx.needs_input_grad[:6]
        g = grad.reshape(-1, grad.shape[-1])
        h2 = h.view(-1, h.shape[-1])
        gx = ga = gb = None
        with torch.autocast("cpu", enabled=False):
            if need_b:
                gb = (g.t().to(h.dtype) @ h2).mul_(ctx.scale).to(lora_b.dtype)
            gh = (g.to(h.dtype) @ lora_b.to(h.dtype)).mul_(ctx.scale)  # (tokens, r)
            if need_a:
                xd = xc if dropped is None else zero_at(xc, dropped)
                ga = (gh.t().to(xd.dtype) @ xd.reshape(-1, xd.shape[-1])).to(lora_a.dtype)
            if need_x:
                via_lora = gh @ lora_a.to(gh.dtype)  # (tokens, in), contiguous: x's flat positions
                if dropped is not None:
                    zero_at(via_lora, dropped, inplace=True)
                gx = (g.to(ctx.dtype) @ weight.to(ctx.dtype)).to(via_lora.dtype).add_(via_lora)
                gx = gx.view(*grad.shape[:-1], gx.shape[-1]).to(ctx.x_dtype)
        return gx, None, None, None, ga, gb, None, None, None, None


def _fused_forward(self, x, *args, **kwargs):
    adapter = self.active_adapters[0] if len(self.active_adapters) == 1 else None
    base = self.base_layer
    if (
        args
        or kwargs
        or self.disable_adapters
        or self.merged
        or adapter not in self.lora_A
        or adapter in getattr(self, "lora_variant", {})
        or x.device.type != "cpu"
        or not isinstance(base, torch.nn.Linear)
        or base.weight.requires_grad
        or (base.bias is not None and base.bias.requires_grad)
    ):
        return self._peft_forward(x, *args, **kwargs)
    drop = self.lora_dropout[adapter]
    scale, dropped = self.scaling[adapter], None
    if isinstance(drop, FastDropout) and drop.training and drop.p > 0:
        if drop.p >= 1:  # everything dropped: PEFT's forward (torch's dropout) says what that means
            return self._peft_forward(x, *args, **kwargs)
        dropped = drop.dropped(x)
        scale = scale / (1.0 - drop.p)
    elif not isinstance(drop, (torch.nn.Identity, FastDropout)):
        return self._peft_forward(x, *args, **kwargs)
    # Under autocast: its dtype for the matmuls, the output fp32 (lora.fp32_lora_sums' rule).
    # Without it, fp32 throughout; a half-precision model outside autocast goes to PEFT.
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu") if autocast else base.weight.dtype
    if dtype != torch.float32 and not autocast:
        return self._peft_forward(x, *args, **kwargs)
    a, b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
    xc = _cast(x, dtype)
    return _LoraLinear.apply(
        x, xc, base.weight, base.bias, a, b, dropped, scale, dtype, dtype != torch.float32
    )


_last_cast: tuple = (None, -1, None, None)


def _cast(x, dtype):
    """x in `dtype`, cast once for the layers that read the same x (q, k, v; gate, up)."""
    global _last_cast
    if x.is_inference():  # no version counter to check: cast every time
        return x.to(dtype)
    ref, version, was, xc = _last_cast
    if ref is not None and ref() is x and version == x._version and was == dtype:
        return xc
    xc = x.detach().to(dtype)
    _last_cast = (weakref.ref(x), x._version, dtype, xc)
    return xc


def use_fused_lora(peft_model) -> int:
    """Route every plain LoRA linear layer of `peft_model` through the fused CPU function;
    returns how many layers were routed."""
    from peft.tuners.lora import Linear as LoraLinear

    n = 0
    for module in peft_model.modules():
        if type(module) is LoraLinear and isinstance(module.base_layer, torch.nn.Linear):
            module._peft_forward = module.forward
            module.forward = types.MethodType(_fused_forward, module)
            n += 1
    return n
