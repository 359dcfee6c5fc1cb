"""Reward functions for GRPO and `llmkit eval`: plain functions, no torch.

A reward is `fn(completions: list[str], rows: list[dict], **params) -> list[float]`: one number per
completion; `rows[i]` is the dataset row the i-th completion answers (fields such as `answer`);
`params` come from the recipe. Built-ins live in REGISTRY; a recipe may also name its own function
as `file.py:function` (path relative to the recipe's folder), loaded only because the recipe names it.

A reward may declare the row fields it reads as `fn.reads`: a list of names, or a callable
`params -> list of names` (the built-ins do), so `check_rows` can reject a bad row before any model
is loaded. A reward whose signature has a `base_dir` keyword gets the recipe's folder (json_schema
uses it to find its schema file).

Over 400 lines on purpose: each built-in reward is a short function with its own docstring, and
loading, checking and scoring them sit beside them so a reward's contract reads in one file.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import inspect
import json
import math
import numbers
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from llmkit.errors import LlmkitError, RecipeError

RewardFn = Callable[..., list[float]]
# (name, function, weight, params): what a recipe's reward list resolves to.
RewardSpec = tuple[str, RewardFn, float, dict[str, Any]]

REGISTRY: dict[str, RewardFn] = {}


def _builtin(name: str, reads: Callable[[dict], list[str]]):
    def register(fn: RewardFn) -> RewardFn:
        fn.reads = reads  # type: ignore[attr-defined]
        REGISTRY[name] = fn
        return fn

    return register


# ---- parsing helpers ------------------------------------------------------------------------

# A number as people write it: optional sign, thousands commas (1,000) or plain digits, decimals.
# The look-behind keeps "10-3" from reading as -3 and "v2" from reading as 2.
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\d])")
_NUMBER_FULL = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")


def _as_number(text: str) -> Decimal | None:
    """`text` as a number if the whole of it is one (1,000 / 1000 / 1000.0 / -3), else None."""
    t = text.strip().rstrip(".").strip()
    if not _NUMBER_FULL.fullmatch(t):
        return None
    try:
        return Decimal(t.replace(",", ""))
    except InvalidOperation:  # pragma: no cover - the regex admits only valid decimals
        return None


def _tag_re(tag: str) -> re.Pattern[str]:
    return re.compile(rf"<{re.escape(tag)}>(.*?)</{re.escape(tag)}>", re.DOTALL | re.IGNORECASE)


def _last_tag(text: str, tag: str) -> str | None:
    # The last block counts: a model that restates its answer is judged on the final one.
    found = _tag_re(tag).findall(text)
    return found[-1].strip() if found else None


def _same(got: str | None, expected: Any) -> bool:
    if got is None or expected is None:
        return False
    want = str(expected)
    a, b = _as_number(got), _as_number(want)
    if a is not None and b is not None:
        return a == b
    norm = lambda s: " ".join(s.split()).casefold()  # noqa: E731
    return norm(got) == norm(want)


# ---- built-in rewards -----------------------------------------------------------------------


@_builtin("exact_answer", reads=lambda p: [p.get("field", "answer")])
def exact_answer(
    completions: list[str],
    rows: list[dict],
    *,
    field: str = "answer",
    mode: str | None = None,
    pattern: str | None = None,
    tag: str = "answer",
) -> list[float]:
    """1.0 when the answer pulled out of the completion equals the row's `field`, else 0.0.

    How the answer is pulled out (`mode`):
      tag     (default) the content of the last <answer>…</answer> (`tag` renames it);
      regex   the last match of `pattern` (its first group if it has one); giving `pattern`
              selects this mode;
      number  the last number in the text.
    If both sides read as numbers they compare numerically (1,000 = 1000 = 1000.0), otherwise as
    strings after stripping, collapsing whitespace and casefolding. No answer found scores 0.0.
    """
    mode = mode or ("regex" if pattern is not None else "tag")
    if mode not in ("tag", "regex", "number"):
        raise RecipeError(
            f"exact_answer: unknown mode '{mode}'", hint="use mode: tag, regex (with pattern) or number"
        )
    if mode == "regex":
        if not pattern:
            raise RecipeError("exact_answer: mode regex needs a pattern", hint="add pattern: '<regex>'")
        try:
            regex = re.compile(pattern, re.DOTALL)
        except re.error as e:
            raise RecipeError(f"exact_answer: pattern {pattern!r} is not a valid regex: {e}") from None
    elif pattern is not None:
        raise RecipeError(
            f"exact_answer: pattern is only used with mode regex (mode is {mode})",
            hint="drop mode, or drop pattern",
        )

    def pull(text: str) -> str | None:
        if mode == "tag":
            return _last_tag(text, tag)
        if mode == "number":
            found = _NUMBER.findall(text)
            return found[-1] if found else None
        matches = list(regex.finditer(text))
        if not matches:
            return None
        m = matches[-1]
        return (m.group(1) if regex.groups else m.group(0)) or ""

    return [1.0 if _same(pull(c), row.get(field)) else 0.0 for c, row in zip(completions, rows, strict=True)]


def _block(tag: str) -> str:
    # A non-empty block that does not run past its own closing tag (so one fullmatch cannot
    # swallow text between two answer blocks).
    t = re.escape(tag)
    return rf"<{t}>\s*\S(?:(?!</{t}>).)*</{t}>"


@_builtin("format", reads=lambda p: [])
def format(
    completions: list[str],
    rows: list[dict],
    *,
    think_tag: str | None = "think",
    answer_tag: str = "answer",
) -> list[float]:
    """How well the completion keeps the shape <think>…</think> <answer>…</answer>.

      1.0  exactly a non-empty think block then a non-empty answer block, with only whitespace
           around and between them;
      0.5  a non-empty answer block is there, but the think block is missing or other text
           surrounds the blocks;
      0.0  no non-empty answer block.
    `think_tag: null` asks for the answer block alone (1.0 when the completion is just that).
    Tags are matched case-insensitively.
    """
    answer = _block(answer_tag)
    if think_tag:
        whole = re.compile(rf"\s*{_block(think_tag)}\s*{answer}\s*", re.DOTALL | re.IGNORECASE)
    else:
        whole = re.compile(rf"\s*{answer}\s*", re.DOTALL | re.IGNORECASE)
    has_answer = re.compile(answer, re.DOTALL | re.IGNORECASE)
    return [1.0 if whole.fullmatch(c) else 0.5 if has_answer.search(c) else 0.0 for c in completions]


_FENCE = re.compile(r"```(?:json)?[ \t]*\n?(.*?)```", re.DOTALL | re.IGNORECASE)


@functools.lru_cache(maxsize=16)
def _load_schema(path: Path, mtime: float) -> Any:  # mtime: a changed file is read again
    from jsonschema import validators
    from jsonschema.exceptions import SchemaError

    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"json_schema: cannot read schema {path}: {e.__class__.__name__}") from None
    except json.JSONDecodeError as e:
        raise RecipeError(
            f"json_schema: schema {path} is not JSON (line {e.lineno}: {e.msg})",
            hint='a JSON Schema file is a JSON object such as {"type": "object", ...}',
        ) from None
    cls = validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except SchemaError as e:
        raise RecipeError(f"json_schema: {path} is not a valid JSON Schema: {e.message}") from None
    return cls(schema)


@_builtin("json_schema", reads=lambda p: [])
def json_schema(
    completions: list[str],
    rows: list[dict],
    *,
    schema: str,
    tag: str = "answer",
    base_dir: str | Path | None = None,
) -> list[float]:
    """Does the completion's JSON validate against the JSON Schema file `schema`?

    The JSON is the last ```json (or plain ```) fence if there is one, else the last <answer>
    block (`tag`), else the whole completion. 1.0 parses and validates; 0.5 parses but does not
    validate; 0.0 no JSON. `schema` is relative to the recipe's folder.
    """
    path = Path(schema).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    if not path.is_file():
        raise RecipeError(
            f"json_schema: schema file not found: {path}",
            hint="give params.schema as a path relative to the recipe's folder",
        )
    validator = _load_schema(path.resolve(), path.stat().st_mtime)

    def one(text: str) -> float:
        fences = _FENCE.findall(text)
        body = fences[-1] if fences else _last_tag(text, tag)
        try:
            value = json.loads(body if body is not None else text)
        except (json.JSONDecodeError, RecursionError):
            return 0.0
        return 1.0 if validator.is_valid(value) else 0.5

    return [one(c) for c in completions]


@_builtin("length", reads=lambda p: [])
def length(
    completions: list[str],
    rows: list[dict],
    *,
    target: float,
    unit: str = "chars",
    width: float | None = None,
) -> list[float]:
    """1.0 at `target` length, falling linearly to 0.0 at `width` away (default: `target`).

    Length is counted in `unit`: chars (of the stripped completion) or words (whitespace-split).
    With the default width an empty completion and one twice the target both score 0.0.
    """
    if unit not in ("chars", "words"):
        raise RecipeError(f"length: unknown unit '{unit}'", hint="use unit: chars or words")
    width = target if width is None else width
    for key, v in (("target", target), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0:
            raise RecipeError(f"length: {key} must be a positive number, got {v!r}")

    def n(text: str) -> int:
        return len(text.split()) if unit == "words" else len(text.strip())

    return [max(0.0, 1.0 - abs(n(c) - target) / width) for c in completions]


# ---- resolving a recipe's rewards -----------------------------------------------------------


def _bind_base_dir(fn: RewardFn, base_dir: Path) -> RewardFn:
    try:
        takes = "base_dir" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins/C callables have no readable signature
        takes = False
    if not takes:
        return fn
    bound = functools.partial(fn, base_dir=base_dir)
    functools.update_wrapper(bound, fn)  # keeps __name__, __doc__ and `reads`
    return bound


def load_reward(spec: str, base_dir: Path) -> RewardFn:
    """The reward named `spec`: a REGISTRY name, or `file.py:function` relative to `base_dir`
    (the recipe's folder). The file is imported here, only because the recipe names it."""
    base_dir = Path(base_dir)
    file, sep, func = spec.rpartition(":")
    if not sep and spec.endswith(".py"):
        raise RecipeError(
            f"reward '{spec}' names a file but no function", hint=f"write it as {spec}:function_name"
        )
    if not sep or not file.endswith(".py"):
        if spec in REGISTRY:
            return _bind_base_dir(REGISTRY[spec], base_dir)
        near = difflib.get_close_matches(spec, list(REGISTRY), n=1)
        guess = f"did you mean '{near[0]}'? " if near else ""
        raise RecipeError(
            f"unknown reward '{spec}'",
            hint=f"{guess}built-in rewards: {', '.join(sorted(REGISTRY))}; or your own as file.py:function",
        )
    path = Path(file).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        raise RecipeError(
            f"reward file not found: {path} (from '{spec}')",
            hint="the path is relative to the recipe's folder",
        )
    module = _import_file(path, spec)
    if not func.isidentifier():
        raise RecipeError(
            f"reward '{spec}': '{func}' is not a Python name", hint="write it as file.py:function"
        )
    if not hasattr(module, func):
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        near = difflib.get_close_matches(func, names, n=1)
        raise RecipeError(
            f"reward file {path} has no function '{func}'",
            hint=f"did you mean '{near[0]}'?" if near else f"functions there: {', '.join(names) or 'none'}",
        )
    fn = getattr(module, func)
    if not callable(fn):
        raise RecipeError(
            f"reward '{spec}': {func} is a {type(fn).__name__}, not a function",
            hint="name a function fn(completions, rows, **params) -> list[float]",
        )
    return _bind_base_dir(fn, base_dir)


def _import_file(path: Path, spec: str):
    # A name per file so two recipes' reward files never share a module; not added to sys.modules
    # under a name anything else could import by accident.
    name = f"llmkit_reward_{abs(hash(str(path.resolve()))):x}"
    mod_spec = importlib.util.spec_from_file_location(name, path)
    if mod_spec is None or mod_spec.loader is None:
        raise RecipeError(f"reward file {path} cannot be imported", hint="name a .py file")
    module = importlib.util.module_from_spec(mod_spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up here
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise RecipeError(
            f"reward file {path} failed to import: {_last_line(e)}", hint=f"fix the file named by '{spec}'"
        ) from e
    return module


def check_params(name: str, fn: RewardFn, params: dict[str, Any]) -> None:
    """Reject params the reward does not take (and, for built-ins, bad values) before any model
    is loaded. Built-ins are called on an empty batch, which checks their params; a user's
    function is only matched against its signature, never called here."""
    try:
        inspect.signature(fn).bind([], [], **params)
    except TypeError as e:
        raise RecipeError(f"reward '{name}': {e}", hint=f"its params: {_param_names(fn) or 'none'}") from None
    except ValueError:  # no readable signature: nothing to check
        return
    if getattr(fn, "func", fn) in REGISTRY.values():
        fn([], [], **params)


def _param_names(fn: RewardFn) -> str:
    ps = list(inspect.signature(fn).parameters.values())[2:]
    return ", ".join(p.name for p in ps if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD))


def fields_read(fn: RewardFn, params: dict[str, Any]) -> list[str]:
    """The row fields `fn` declares it reads (its `reads` attribute), [] when it declares none."""
    reads = getattr(fn, "reads", None)
    if reads is None:
        return []
    got = reads(params) if callable(reads) else reads
    return [got] if isinstance(got, str) else list(got)


def check_rows(rewards: Sequence[RewardSpec], rows: Sequence[dict], where: str) -> None:
    """Every row has every field its rewards read, else one RecipeError naming `where`, the row
    (1-based) and the field."""
    needs = [(name, f) for name, fn, _w, params in rewards for f in fields_read(fn, params)]
    for i, row in enumerate(rows, 1):
        for name, f in needs:
            if row.get(f) is None:
                raise RecipeError(
                    f"{where} row {i}: no field '{f}', which reward '{name}' reads",
                    hint=f"give every row a '{f}' (or point the reward at another field with params.field)",
                )


# ---- scoring ---------------------------------------------------------------------------------


def _last_line(e: BaseException) -> str:
    return traceback.format_exception_only(type(e), e)[-1].strip()


def _short_prompt(prompt: Any, limit: int = 80) -> str:
    if isinstance(prompt, list):  # chat messages: the last user turn is what identifies it
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[-1] if users else str(prompt)
    text = " ".join(str(prompt).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _describe(fn: RewardFn) -> str:
    inner = getattr(fn, "func", fn)
    where = getattr(inspect.getmodule(inner), "__file__", None)
    qual = getattr(inner, "__qualname__", repr(inner))
    return f"{qual} in {where}" if where and not inner.__module__.startswith("llmkit.") else qual


def _as_floats(name: str, fn: RewardFn, out: Any, n: int) -> list[float]:
    shown = repr(out)
    shown = shown if len(shown) <= 60 else shown[:59] + "…"
    bad = None
    if hasattr(out, "tolist") and not isinstance(out, Sequence):  # a numpy array or tensor
        out = out.tolist()
    if isinstance(out, (str, bytes, dict)) or not isinstance(out, Sequence):
        bad = f"a {type(out).__name__} ({shown}), not a list of numbers"
    elif len(out) != n:
        bad = f"{len(out)} values for {n} completions"
    else:
        for i, v in enumerate(out):
            if not isinstance(v, numbers.Real):
                bad = f"{v!r} ({type(v).__name__}) at index {i}, not a number"
                break
            if not math.isfinite(v):
                bad = f"{v} at index {i}"
                break
    if bad:
        raise LlmkitError(
            f"reward '{name}' ({_describe(fn)}) returned {bad}",
            hint="a reward returns one finite number per completion: list[float] of len(completions)",
        )
    return [float(v) for v in out]


def score(
    rewards: Sequence[RewardSpec],
    completions: list[str],
    rows: list[dict],
    prompts: Sequence[Any],
) -> dict[str, list[float]]:
    """Each reward's scores, unweighted, by name. A reward that raises or returns anything but
    one number per completion stops here with an LlmkitError naming it (and, when it raised, the
    prompt it failed on and the last line of its error)."""
    if not len(completions) == len(rows) == len(prompts):
        raise LlmkitError(
            f"score: {len(completions)} completions, {len(rows)} rows, {len(prompts)} prompts",
            hint="pass one row and one prompt per completion",
        )
    names = [r[0] for r in rewards]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise RecipeError(f"reward '{dup}' is listed twice", hint="give each reward entry its own name")
    out: dict[str, list[float]] = {}
    for name, fn, _weight, params in rewards:
        try:
            got = fn(completions, rows, **params)
        except LlmkitError:
            raise  # already a user-facing message (a bad param or schema)
        except Exception as e:
            i, err = _first_failure(fn, completions, rows, params, e)
            raise LlmkitError(
                f"reward '{name}' ({_describe(fn)}) failed on prompt \"{_short_prompt(prompts[i])}\": {err}",
                hint="fix the reward function (the run stopped; checkpoints already written are kept)",
            ) from e
        out[name] = _as_floats(name, fn, got, len(completions))
    return out


def _first_failure(fn, completions, rows, params, batch_error: Exception) -> tuple[int, str]:
    # The batch call does not say which completion broke it: retry one at a time to name the prompt.
    for i, (c, r) in enumerate(zip(completions, rows, strict=True)):
        try:
            fn([c], [r], **params)
        except Exception as e:
            return i, _last_line(e)
    return 0, _last_line(batch_error)


def total(rewards: Sequence[RewardSpec], scores: dict[str, list[float]]) -> list[float]:
    """The weighted sum of `score`'s output per completion: what GRPO turns into advantages."""
    n = len(next(iter(scores.values()), []))
    return [sum(w * scores[name][i] for name, _fn, w, _p in rewards) for i in range(n)]
