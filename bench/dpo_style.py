"""How many held-out questions a model answers in the DPO recipe's chosen style ("Ahoy! …").

    python bench/dpo_style.py MODEL_OR_RUN [MODEL_OR_RUN ...]

Greedy answers (48 new tokens at most, the model's own end of turn) to the 40 held-out prompts of
recipes/data/llama-preferences-eval.jsonl; counts answers that open with "Ahoy!" and that carry
the sign-off. Compare the base model with a `llmkit train smollm2-135m-dpo` run:
    python bench/dpo_style.py smollm2-135m-instruct runs/smollm2-135m-dpo
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def style(ref: str) -> dict:
    from llmkit.inference import load_for_inference
    from llmkit.methods.grpo import prompt_ids, sample
    from llmkit.turns import end_of_turn

    model, tok = load_for_inference(ref)
    ends = list(end_of_turn(tok, model.generation_config).ids)
    rows = [
        json.loads(ln) for ln in (ROOT / "recipes/data/llama-preferences-eval.jsonl").read_text().splitlines()
    ]
    answers = []
    for k in range(0, len(rows), 8):
        part = [prompt_ids(r["prompt"], tok) for r in rows[k : k + 8]]
        for a in sample(model, tok, part, 1, max_new_tokens=48, temperature=1.0, end_ids=ends, pad_id=ends[0],
                        greedy=True):  # fmt: skip
            answers.append(tok.decode([t for t in a if t not in ends], skip_special_tokens=True).strip())
    return {
        "model": ref,
        "prompts": len(rows),
        "ahoy": sum(a.startswith("Ahoy!") for a in answers),
        "sign_off": sum("Llama out" in a for a in answers),
        "examples": answers[:3],
    }


if __name__ == "__main__":
    for ref in sys.argv[1:]:
        print(json.dumps(style(ref), ensure_ascii=False))
