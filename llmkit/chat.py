"""`llmkit chat`: talk to a model (or a training run: base + adapter) with transformers.

Prompts are built with the model's own chat template; answers stream to stdout. The
interactive loop and its commands are llmkit.chat_loop's, shared with `llmkit ollama run`.
"""

from __future__ import annotations

import sys

from llmkit.chat_loop import chat_loop, check_prompt, one_shot
from llmkit.errors import InvalidArgument, SourceError


def chat(
    model_ref: str,
    prompt: str | None = None,
    *,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
) -> str | None:
    """One-shot when `prompt` is given (returns the answer); interactive otherwise (llmkit.chat_loop)."""
    from llmkit.runs import load_for_inference

    check_prompt(prompt)  # bad input is reported before the model loads
    if max_new_tokens < 1:
        raise InvalidArgument(
            f"--max-new-tokens must be at least 1, got {max_new_tokens}", "pass --max-new-tokens 1 or more"
        )
    if temperature < 0:
        raise InvalidArgument(
            f"--temperature must be 0 or more, got {temperature}", "pass --temperature 0 for greedy answers"
        )
    model, tokenizer = load_for_inference(model_ref)
    if not tokenizer.chat_template:
        raise SourceError(
            f"{model_ref} has no chat template, so it cannot chat",
            "use an instruct/chat model, or train with model.chat_template set in the recipe",
        )
    takes_system = _accepts_system(tokenizer)
    if system and not takes_system:
        raise SourceError(
            f"{model_ref}'s chat template rejects system messages, so --system cannot be used",
            "put the instruction in your first message instead",
        )

    def reply(messages: list[dict]) -> str:
        return generate(model, tokenizer, messages, max_new_tokens=max_new_tokens, temperature=temperature)

    if prompt is not None:
        return one_shot(reply, prompt, system)
    chat_loop(reply, name=str(model_ref), system=system, accepts_system=takes_system)
    return None


def _accepts_system(tokenizer) -> bool:
    """Whether the chat template renders a system message (some, e.g. Gemma 2's, raise on one)."""
    probe = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
    try:
        tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    except Exception:  # templates reject roles by raising their own exceptions
        return False
    return True


def generate(model, tokenizer, messages, *, max_new_tokens=256, temperature=0.0, stream=True) -> str:
    import torch
    from transformers import TextStreamer

    inputs = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    ).to(model.device)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if stream else None
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    eos = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)} - {None}
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            streamer=streamer,
            eos_token_id=sorted(eos),
            pad_token_id=tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else min(eos, default=0),
            top_p=None,
            top_k=None,
            **sampling,
        )
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    if stream:
        sys.stdout.flush()
    return answer.strip()


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
