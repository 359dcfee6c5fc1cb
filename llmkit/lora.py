"""Which modules a LoRA adapts: one rule for training (`train.py`) and planning (`plan/params.py`),
so the planner counts exactly the parameters a run will train."""

from __future__ import annotations

import re


def lora_targets(model, target_modules) -> dict:
    """LoraConfig targets. On Mixture-of-Experts models `all-linear` means attention, shared
    experts and every routed expert (stacked 3-D weights, so PEFT `target_parameters`), never the
    router: PEFT's own all-linear would adapt the router, which destabilises expert choice."""
    import torch

    experts = sorted(
        {
            n.rsplit(".", 2)[-2] + "." + n.rsplit(".", 1)[-1]
            for n, p in model.named_parameters()
            if ".experts." in n and p.ndim == 3
        }
    )
    if target_modules != "all-linear" or not experts:
        return {"target_modules": target_modules}
    linear = {
        re.sub(r"^.*?\.layers\.\d+\.", "", name)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in name
    }
    routers = {n for n in linear if n.endswith((".gate", "shared_expert_gate"))}
    keep = "|".join(re.escape(n) for n in sorted(linear - routers))
    return {"target_modules": rf".*\.layers\.\d+\.({keep})$", "target_parameters": experts}
