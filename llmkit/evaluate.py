"""`llmkit eval`: the rewards of a model's greedy answers, as trained and as served.

    llmkit eval RUN_OR_MODEL --rewards RECIPE [--prompts FILE] [--backend transformers|llama.cpp|ollama]

Held-out prompts (the recipe's data.eval_path unless --prompts names a file) are answered greedily
and scored with the recipe's `grpo.rewards`, on each backend asked for:

  transformers  the run (base + adapter) or model, prompts rendered with its chat template;
  llama.cpp     the exported GGUF of the run, prompts rendered the way Ollama renders them (the
                Modelfile's Go TEMPLATE, or the GGUF's own chat template when it has none), BOS
                added as llama.cpp adds it, stopping at end-of-generation tokens and the
                Modelfile's stops;
  ollama        the Ollama model the run was exported to (or --ollama NAME), through the server.

The served model passes when its mean total reward is within `tolerance` points (out of 100)
of the trained model's; otherwise the prompts whose answers differ are listed with why (a
stop cut the answer, a tag was lost, the text differs).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmkit.errors import InvalidArgument, LlmkitError

BACKENDS = ("transformers", "llama.cpp", "ollama")


@dataclass
class BackendScore:
    backend: str
    answers: list[str]
    rewards: dict[str, list[float]]  # reward name → one value per prompt
    total: list[float]  # weighted sum per prompt

    @property
    def mean(self) -> float:
        return sum(self.total) / max(1, len(self.total))

    def means(self) -> dict[str, float]:
        return {k: round(sum(v) / max(1, len(v)), 4) for k, v in self.rewards.items()}


@dataclass
class EvalReport:
    prompts: list[str]
    scores: list[BackendScore] = field(default_factory=list)
    tolerance: float = 1.0  # points out of 100 of the weighted total's range
    weights: list[float] = field(default_factory=list)  # the rewards' weights: the scale of "points"

    def differences(self, limit: int = 5) -> list[str]:
        """Prompts whose served answer scored differently from the trained one, with why."""
        if len(self.scores) < 2:
            return []
        ref, out = self.scores[0], []
        for other in self.scores[1:]:
            for i, (a, b) in enumerate(zip(ref.answers, other.answers, strict=True)):
                if ref.total[i] != other.total[i] and len(out) < limit:
                    out.append(f"{other.backend} on {self.prompts[i][:60]!r}: {why_different(a, b)}")
        return out

    @property
    def passed(self) -> bool:
        if len(self.scores) < 2:
            return True
        scale = sum(abs(w) for w in self.weights) or 1.0  # the total's range when each reward is 0-1
        return all(abs(s.mean - self.scores[0].mean) * 100 / scale <= self.tolerance for s in self.scores[1:])

    def as_dict(self) -> dict:
        return {
            "prompts": len(self.prompts),
            "backends": {s.backend: {"total": round(s.mean, 4), **s.means()} for s in self.scores},
            "passed": self.passed,
            "differences": self.differences(),
        }


def why_different(trained: str, served: str) -> str:
    for tag in ("think", "answer"):
        if f"<{tag}>" in trained and f"<{tag}>" not in served:
            return f"the served answer lost the <{tag}> tag ({served[:60]!r})"
    if served and trained.startswith(served):
        return f"the served answer stops early, after {served[-30:]!r} (a stop string cut it?)"
    return f"the answers differ: trained {trained[:50]!r}, served {served[:50]!r}"


def evaluate(
    model_ref: str | Path,
    rewards_recipe,
    *,
    prompts: str | Path | None = None,
    backends: tuple[str, ...] = ("transformers",),
    limit: int | None = None,
    ollama_model: str | None = None,
    tolerance: float = 1.0,
) -> EvalReport:
    from llmkit.data import read_rows
    from llmkit.methods import grpo
    from llmkit.recipe import load
    from llmkit.rewards import check_rows

    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise InvalidArgument(f"unknown backend '{unknown[0]}'", f"choose from {', '.join(BACKENDS)}")
    recipe = load(rewards_recipe)
    if recipe.grpo is None:
        raise InvalidArgument(
            f"{recipe.source or rewards_recipe} has no grpo section, so it names no rewards",
            "pass a GRPO recipe (with grpo.rewards), e.g. --rewards smollm2-135m-grpo",
        )
    path = Path(prompts) if prompts else recipe.resolve_path(recipe.data.eval_path or recipe.data.path)
    rows = read_rows(path)[: limit or None]
    rewards = grpo.load_rewards(recipe)
    check_rows(rewards, rows, str(path))
    weights = [w for _n, _f, w, _p in rewards]
    report = EvalReport([_prompt_text(r.get("prompt")) for r in rows], tolerance=tolerance, weights=weights)
    length = recipe.grpo.max_completion_length
    for backend in backends:
        if backend == "transformers":
            answers = _transformers(model_ref, rows, length, recipe.data.system)
        elif backend == "llama.cpp":
            answers = _llama_cpp(model_ref, rows, length)
        else:
            answers = _ollama(ollama_model or _run_ollama_name(model_ref), rows, length)
        from llmkit.rewards import score, total

        values = score(rewards, answers, rows, [r.get("prompt") for r in rows])
        report.scores.append(BackendScore(backend, answers, values, total(rewards, values)))
    return report


def _prompt_text(prompt) -> str:
    if isinstance(prompt, list):
        return " ".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
    return str(prompt)


def _messages(prompt) -> list[dict]:
    return list(prompt) if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]


def _transformers(model_ref, rows, length: int, system: str | None) -> list[str]:
    from llmkit.inference import load_for_inference
    from llmkit.methods.grpo import prompt_ids, sample
    from llmkit.turns import end_of_turn

    model, tok = load_for_inference(model_ref)
    ends = list(end_of_turn(tok, model.generation_config).ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (ends[0] if ends else 0)
    out: list[str] = []
    for k in range(0, len(rows), 8):
        part = [prompt_ids(r.get("prompt"), tok, system) for r in rows[k : k + 8]]
        answers = sample(model, tok, part, 1, max_new_tokens=length, temperature=1.0, end_ids=ends,
                         pad_id=pad, greedy=True)  # fmt: skip
        out += [tok.decode([t for t in a if t not in ends], skip_special_tokens=True) for a in answers]
    return out


def served_template(run_dir: Path) -> tuple[str | None, list[str]]:
    """The Go TEMPLATE (None when the Modelfile leaves it to the GGUF) and stops of an export."""
    modelfile = Path(run_dir) / "Modelfile"
    if not modelfile.is_file():
        raise LlmkitError(
            f"{run_dir} has no Modelfile: it was not exported",
            f"export it first: llmkit export {run_dir}",
        )
    text = modelfile.read_text(encoding="utf-8")
    match = re.search(r'^TEMPLATE """(.*?)"""', text, re.S | re.M)
    stops = [json.loads(m) for m in re.findall(r"^PARAMETER stop (.*)$", text, re.M)]
    return (match.group(1) if match else None), stops


def _llama_cpp(model_ref, rows, length: int) -> list[str]:
    from llmkit.runs import RunLayout

    run = Path(model_ref)
    gguf = run / "model.gguf"
    if not RunLayout(run).recipe.is_file() or not gguf.is_file():
        raise InvalidArgument(
            f"the llama.cpp backend needs an exported run (a run dir with model.gguf), got {model_ref}",
            f"export the run first: llmkit export {model_ref}",
        )
    from transformers import AutoTokenizer

    go, stops = served_template(run)
    return served_answers(gguf, go, stops, AutoTokenizer.from_pretrained(run / "adapter"), rows, length)


def served_answers(gguf: Path, go: str | None, stops: list[str], tokenizer, rows, length: int) -> list[str]:
    """Greedy answers of a GGUF in llama.cpp, asked the way Ollama asks it: the Go TEMPLATE (or,
    with none, the model's own chat template), BOS as llama.cpp adds it, the Modelfile's stops."""
    import llama_cpp

    from llmkit.devices import free_cpus
    from llmkit.exporter.generation import llama_generate
    from llmkit.exporter.gotemplate import render
    from llmkit.exporter.templates import hf_render

    llm = llama_cpp.Llama(str(gguf), n_ctx=2048, n_threads=free_cpus(), verbose=False)
    out = []
    for row in rows:
        msgs = _messages(row.get("prompt"))
        text = render(go, msgs) if go else hf_render(tokenizer, tokenizer.chat_template, msgs)
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        new, _stopped = llama_generate(llm, ids, stops, max_tokens=length)
        out.append(llm.detokenize(new, special=False).decode("utf-8", "replace"))
    return out


def check_served(run_dir: Path, gguf: Path, go: str | None, stops: list[str], tokenizer,
                 ollama_model: str | None = None, limit: int = 32) -> EvalReport:  # fmt: skip
    """export --verify on a GRPO run: the recipe's rewards on held-out prompts, trained model vs
    the GGUF as it will be served (and the Ollama model when one was created)."""
    from llmkit.data import read_rows
    from llmkit.methods import grpo
    from llmkit.recipe import load
    from llmkit.rewards import score, total

    recipe = load(Path(run_dir) / "recipe.yaml")
    rows = read_rows(recipe.resolve_path(recipe.data.eval_path or recipe.data.path))[:limit]
    rewards = grpo.load_rewards(recipe)
    length = recipe.grpo.max_completion_length
    report = EvalReport(
        [_prompt_text(r.get("prompt")) for r in rows], weights=[w for _n, _f, w, _p in rewards]
    )
    backends = [("transformers", lambda: _transformers(run_dir, rows, length, recipe.data.system))]
    backends.append(("llama.cpp", lambda: served_answers(gguf, go, stops, tokenizer, rows, length)))
    if ollama_model:
        backends.append(("ollama", lambda: _ollama(ollama_model, rows, length)))
    for name, answer in backends:
        answers = answer()
        values = score(rewards, answers, rows, [r.get("prompt") for r in rows])
        report.scores.append(BackendScore(name, answers, values, total(rewards, values)))
    return report


def _run_ollama_name(model_ref) -> str:
    from llmkit.runs import RunLayout, open_run

    if RunLayout(model_ref).recipe.is_file() and open_run(model_ref).recipe.export.ollama:
        return open_run(model_ref).recipe.export.ollama
    raise InvalidArgument(
        f"which Ollama model is {model_ref}? its recipe names none (export.ollama)",
        "pass --ollama NAME",
    )


def _ollama(name: str, rows, length: int) -> list[str]:
    from llmkit.ollama.client import client, errors

    out = []
    with errors(f"eval {name}"):
        c = client()
        for row in rows:
            options = {"temperature": 0, "top_k": 1, "num_predict": length, "seed": 0}
            reply = c.chat(model=name, messages=_messages(row.get("prompt")), options=options, stream=False)
            out.append(reply.message.content or "")
    return out
