"""How a recipe's validation errors read: every problem at once, one line each.

Shared by training and embedding recipes. Each line is `path.to.key: message`; an unknown key
gets the nearest valid key at that level ("did you mean …"), a union field (`int | "auto"`)
one line listing every accepted form, and a wrong value shows what was given.
"""

from __future__ import annotations

import difflib
import types
import typing

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from llmkit.errors import RecipeError


def render(exc: ValidationError, schema: type[BaseModel], where: str, hint: str) -> RecipeError:
    """One RecipeError listing every problem in `exc` (raised validating `schema`)."""
    groups: dict[str, list[ErrorDetails]] = {}
    for err in exc.errors():
        groups.setdefault(_key(err, schema), []).append(err)
    lines = [_describe(path, errs, schema) for path, errs in groups.items()]
    return RecipeError(
        f"{where}: {len(lines)} problem{'s' if len(lines) > 1 else ''}:\n  " + "\n  ".join(lines), hint
    )


def _key(err: ErrorDetails, schema: type[BaseModel]) -> str:
    """The error's place as the user writes it: field names and list indexes, no union tags."""
    model: type[BaseModel] | None = schema
    out: list[str] = []
    for part in err["loc"]:
        if model is not None:
            if part not in model.model_fields and err["type"] != "extra_forbidden":
                model = None  # a union member's tag such as 'int' or "literal['auto']"
                continue
            out.append(str(part))
            model = _submodel(model, str(part))
        elif isinstance(part, int):
            out.append(str(part))
    return ".".join(out)


def _describe(path: str, errs: list[ErrorDetails], schema: type[BaseModel]) -> str:
    err = errs[0]
    if not path:  # a check across sections: its message names the keys
        return err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        parent, _, key = path.rpartition(".")
        model = _model_at(parent.split(".") if parent else [], schema)
        fields = list(model.model_fields) if model else []
        near = difflib.get_close_matches(key, fields, n=1, cutoff=0.5)
        where = f"{parent}." if parent else ""
        suggestion = f"did you mean '{where}{near[0]}'?" if near else f"valid keys: {', '.join(fields)}"
        return f"{path}: unknown key ({suggestion})"
    if err["type"] == "missing":
        return f"{path}: required key is missing"
    got = err.get("input")
    shown = repr(got) if not isinstance(got, dict) else "a mapping"
    if len(errs) == 1:
        return f"{path}: {err['msg']} (got {shown})"
    # a union: "Input should be a valid integer or 'auto'"
    prefix = "Input should be "
    forms = [e["msg"].split(",")[0] for e in errs]
    if all(f.startswith(prefix) for f in forms):
        return f"{path}: {prefix}{' or '.join(f[len(prefix) :] for f in forms)} (got {shown})"
    return f"{path}: {' or '.join(forms)} (got {shown})"


def _model_at(loc: list[str], schema: type[BaseModel]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = schema
    for part in loc:
        if model is None:
            return None
        model = _submodel(model, part)
    return model


def _submodel(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    """The section model behind `model.name`, also through `Section | None`."""
    field = model.model_fields.get(name)
    ann = getattr(field, "annotation", None)
    options = typing.get_args(ann) if isinstance(ann, types.UnionType) or _is_union(ann) else (ann,)
    for option in options:
        if isinstance(option, type) and issubclass(option, BaseModel):
            return option
    return None


def _is_union(ann: object) -> bool:
    return typing.get_origin(ann) is typing.Union
