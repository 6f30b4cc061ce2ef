"""A tiny evaluator of the Go `text/template` constructs that `webhook.template` emits.

This is NOT Go's text/template and proves little about istiod: it exists so `make test`
(which has no Go) can render the template for classic and native sidecars and check the
YAML that comes out. It knows only what the template uses: text, comments, trim markers,
`if`/`else`/`end`, `range` over a list (with `.` the element), `$x := ...`, field chains
(`.ObjectMeta.Labels`, `.Name`), Go string literals, and the builtin functions `index`,
`eq`, `ne`, `or` and `printf` with `%t` or `%q`; anything else is an error. The real check is
`e2e/templatecheck` (Go's own text/template and Kubernetes' strategic merge), run by
`tests/e2e/test_template_e2e.py`, which also asserts that this evaluator renders exactly what
Go renders for every pod there.

The data is a dict with Go's field names (`template_data()` builds it from a pod), as in
Istio's SidecarTemplateData: a missing map key reads as "" (Go's zero value of
`map[string]string`).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from typing import Any

SPACES = " \t\r\n"
STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|(\$\w+)|((?:\.\w+)+|\.)|(\w+)|([()])|(:=))')
FUNCTIONS = {"index", "eq", "ne", "or", "printf"}


class TemplateSyntaxError(ValueError):
    """Something this evaluator does not know (so the template changed: extend both)."""


@dataclass
class Node:
    kind: str  # text, value, assign, if, range
    text: str = ""
    expr: list[str] = field(default_factory=list)
    body: list[Node] = field(default_factory=list)
    orelse: list[Node] = field(default_factory=list)


def template_data(pod: dict[str, Any], native_sidecars: bool) -> dict[str, Any]:
    """The part of Istio's SidecarTemplateData the template reads, from a pod (JSON)."""
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}

    def containers(key: str) -> list[dict[str, Any]]:
        return [{"Name": c.get("name", "")} for c in spec.get(key) or []]

    return {
        "ObjectMeta": {
            "Annotations": dict(metadata.get("annotations") or {}),
            "Labels": dict(metadata.get("labels") or {}),
        },
        "Spec": {
            "Containers": containers("containers"),
            "InitContainers": containers("initContainers"),
        },
        "NativeSidecars": native_sidecars,
    }


def render(template: str, data: dict[str, Any]) -> str:
    nodes, rest = _parse(_lex(template), ())
    if rest:
        raise TemplateSyntaxError(f"unexpected {{{{{' '.join(rest[0][1])}}}}}")
    out: list[str] = []
    _run(nodes, data, {"$": data}, out)
    return "".join(out)


def _lex(template: str) -> list[tuple[str, Any]]:
    """[("text", str) | ("action", tokens)], with Go's trim markers applied."""
    items: list[tuple[str, Any]] = []
    pos = 0
    trim_next = False
    while True:
        start = template.find("{{", pos)
        text = template[pos : len(template) if start < 0 else start]
        if trim_next:
            text = text.lstrip(SPACES)
        if start < 0:
            items.append(("text", text))
            return items
        inner = start + 2
        if template.startswith("- ", inner):
            text, inner = text.rstrip(SPACES), inner + 2
        items.append(("text", text))
        end = _action_end(template, inner)
        trim_next = template.startswith(" -}}", end)
        body = template[inner:end].strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            items.append(("action", _tokens(body)))
        pos = end + (4 if trim_next else 2)


def _action_end(template: str, pos: int) -> int:
    """Where the action that starts at `pos` ends (` -}}` or `}}`), past string literals."""
    if template.startswith("/*", pos):
        close = template.find("*/", pos)
        if close < 0:
            raise TemplateSyntaxError("unclosed comment")
        pos = close + 2
    while pos < len(template):
        if template.startswith(" -}}", pos) or template.startswith("}}", pos):
            return pos
        if template[pos] == '"':
            literal = STRING.match(template, pos)
            if not literal:
                raise TemplateSyntaxError("unterminated quoted string")
            pos = literal.end()
        else:
            pos += 1
    raise TemplateSyntaxError("unclosed action")


def _tokens(body: str) -> list[str]:
    tokens: list[str] = []
    pos = 0
    while pos < len(body.rstrip()):
        match = TOKEN.match(body, pos)
        if not match:
            raise TemplateSyntaxError(f"cannot read {body[pos:]!r}")
        tokens.append(next(g for g in match.groups() if g is not None))
        pos = match.end()
    return tokens


def _parse(
    items: list[tuple[str, Any]], stop: tuple[str, ...]
) -> tuple[list[Node], list[tuple[str, Any]]]:
    nodes: list[Node] = []
    while items:
        kind, value = items[0]
        items = items[1:]
        if kind == "text":
            nodes.append(Node("text", text=value))
            continue
        head = value[0]
        if head in stop:
            return nodes, [(kind, value), *items]
        if head in ("if", "range"):
            body, items = _parse(items, ("else", "end"))
            orelse: list[Node] = []
            if items and items[0][1] == ["else"]:
                orelse, items = _parse(items[1:], ("end",))
            if not items or items[0][1] != ["end"]:
                raise TemplateSyntaxError(f"{head} without end")
            items = items[1:]
            nodes.append(Node(head, expr=value[1:], body=body, orelse=orelse))
        elif len(value) > 2 and value[0].startswith("$") and value[1] == ":=":
            nodes.append(Node("assign", text=value[0], expr=value[2:]))
        else:
            nodes.append(Node("value", expr=value))
    return nodes, items


def _run(nodes: list[Node], dot: Any, variables: dict[str, Any], out: list[str]) -> None:
    for node in nodes:
        if node.kind == "text":
            out.append(node.text)
        elif node.kind == "value":
            out.append(_string(_eval(node.expr, dot, variables)))
        elif node.kind == "assign":
            variables[node.text] = _eval(node.expr, dot, variables)
        elif node.kind == "if":
            chosen = node.body if _truth(_eval(node.expr, dot, variables)) else node.orelse
            _run(chosen, dot, variables, out)
        else:  # range
            items = _eval(node.expr, dot, variables) or []
            if not isinstance(items, list):
                raise TemplateSyntaxError("range over a non-list")
            for item in items:
                _run(node.body, item, dict(variables), out)
            if not items:
                _run(node.orelse, dot, variables, out)


def _eval(tokens: list[str], dot: Any, variables: dict[str, Any]) -> Any:
    value, rest = _command(tokens, dot, variables)
    if rest:
        raise TemplateSyntaxError(f"unexpected {rest}")
    return value


def _command(tokens: list[str], dot: Any, variables: dict[str, Any]) -> tuple[Any, list[str]]:
    """A function call with its arguments up to `)` or the end, or a single operand."""
    if tokens and tokens[0] in FUNCTIONS:
        name, tokens = tokens[0], tokens[1:]
        args: list[Any] = []
        while tokens and tokens[0] != ")":
            arg, tokens = _operand(tokens, dot, variables)
            args.append(arg)
        return _call(name, args), tokens
    return _operand(tokens, dot, variables)


def _operand(tokens: list[str], dot: Any, variables: dict[str, Any]) -> tuple[Any, list[str]]:
    token, rest = tokens[0], tokens[1:]
    if token == "(":
        value, rest = _command(rest, dot, variables)
        if not rest or rest[0] != ")":
            raise TemplateSyntaxError("missing )")
        return value, rest[1:]
    if token.startswith('"'):
        return ast.literal_eval(token), rest  # the escapes webhook.template writes mean the same
    if token.startswith("$"):
        if token not in variables:
            raise TemplateSyntaxError(f"undefined variable {token}")
        return variables[token], rest
    if token.startswith("."):
        value = dot
        for name in filter(None, token.split(".")):
            if not isinstance(value, dict) or name not in value:
                raise TemplateSyntaxError(f"can't evaluate field {name}")
            value = value[name]
        return value, rest
    raise TemplateSyntaxError(f"unknown function or value {token!r}")


def _call(name: str, args: list[Any]) -> Any:
    if name == "index" and len(args) == 2:
        return (args[0] or {}).get(args[1], "")
    if name in ("eq", "ne") and len(args) == 2:
        return (args[0] == args[1]) == (name == "eq")
    if name == "or" and args:
        return next((a for a in args if _truth(a)), args[-1])
    if name == "printf" and len(args) == 2 and args[0] in ("%t", "%q"):
        if args[0] == "%t" and isinstance(args[1], bool):
            return "true" if args[1] else "false"
        if args[0] == "%q" and isinstance(args[1], str):
            return go_quote(args[1])
    raise TemplateSyntaxError(f"{name} with {args!r}")


def go_quote(value: str) -> str:
    """Go's strconv.Quote (printf %q of a string), for the characters tests use."""
    escapes = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    out = ['"']
    for char in value:
        if char in '"\\':
            out.append("\\" + char)
        elif char in escapes:
            out.append(escapes[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


def _truth(value: Any) -> bool:
    return bool(value)


def _string(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    raise TemplateSyntaxError(f"printing {value!r}")
