"""`llmkit chat`: talk to a model (or a training run: base + adapter) with transformers.

Prompts are built with the model's own chat template; answers stream to stdout and end where
llmkit.turns says a turn ends (the same answer Ollama's stops and export's --verify get). A
model with no chat template (and none set by the recipe) is a completion model: the prompt is
continued as plain text until EOS. The interactive loop and its commands are
llmkit.chat_loop's, shared with `llmkit ollama run`.
"""

from __future__ import annotations

import sys

from llmkit.chat_loop import chat_loop, check_prompt, one_shot
from llmkit.errors import InvalidArgument, SourceError
from llmkit.ui import info


def chat(
    model_ref: str,
    prompt: str | None = None,
    *,
    system: str | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
) -> str | None:
    """One-shot when `prompt` is given (returns the answer); interactive otherwise (llmkit.chat_loop)."""
    from llmkit.inference import load_for_inference

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
    completion = not tokenizer.chat_template
    if completion:
        if system:
            raise SourceError(
                f"{model_ref} has no chat template, so it has no system prompt (--system)",
                "put the instruction at the start of your prompt, or train with model.chat_template set",
            )
        info(
            f"{model_ref} has no chat template: running it as a completion model (your text is "
            "continued, each prompt on its own, until end of text)"
        )
    takes_system = not completion and _accepts_system(tokenizer)
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
    """The answer to `messages`, ending where llmkit.turns says the turn ends. Without a chat
    template the last user message is continued as plain text (a completion model)."""
    import torch

    from llmkit.turns import end_of_turn

    ends = end_of_turn(tokenizer, model.generation_config)
    if ends.completion:
        inputs = tokenizer(messages[-1]["content"], return_tensors="pt")
    else:
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
    inputs = inputs.to(model.device)
    streamer = _streamer(tokenizer, ends.texts) if stream else None
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    # text stops (a template whose turns end in plain text) need the tokenizer to be matched
    texts = {"stop_strings": list(ends.texts), "tokenizer": tokenizer} if ends.texts else {}
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            streamer=streamer,
            eos_token_id=list(ends.ids),
            pad_token_id=tokenizer.pad_token_id
            if tokenizer.pad_token_id is not None
            else min(ends.ids, default=0),
            top_p=None,
            top_k=None,
            **texts,
            **sampling,
        )
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    if stream:
        sys.stdout.flush()
    return _cut(answer, ends.texts).strip()


def _cut(text: str, stops) -> str:
    """Text before the first text stop (generation ends on the token that completes it)."""
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if at < 0 else text[:at]


def _streamer(tokenizer, stops):
    """transformers' TextStreamer; with text stops, one that never prints them: text that could
    begin a stop is held back until it is clear either way (Ollama cuts stops the same way)."""
    from transformers import TextStreamer

    if not stops:
        return TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)

    class HoldBack(TextStreamer):
        held, done = "", False

        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            if self.done:
                return
            text = self.held + text
            shown = _cut(text, stops)
            self.done = len(shown) < len(text)
            keep = 0 if self.done or stream_end else _partial(text, stops)
            self.held = text[len(text) - keep :] if keep else ""
            super().on_finalized_text(shown[: len(shown) - keep], stream_end=stream_end or self.done)

    return HoldBack(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _partial(text: str, stops) -> int:
    """Length of the longest end of `text` that is the start of a stop."""
    return max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
