"""Reading dtype strings back from the registry, without ever evaluating them.

The registry stores dtypes as the text ``str(polars dtype)`` gives (``Int64``,
``Datetime(time_unit='us', time_zone='UTC')``, ``List(Struct({'a': Int64}))`` ...). A registry
can be shared (PostgreSQL) and its rows edited by anyone with access, so that text is data, not
code: ``parse_dtype_string`` reads it with a small grammar over a fixed table of dtype
constructors. Anything else (a call to an unknown name, an attribute access, an operator) is
refused with a ``DefinitionError`` naming the text and where it came from; nothing is imported or
evaluated.

Grammar (whitespace ignored)::

    dtype  := NAME [ "(" [ arg ("," arg)* [","] ] ")" ]
    arg    := [ IDENT "=" ] value
    value  := dtype | STRING | INT | None | True | False
            | "(" [ value ("," value)* [","] ] ")"        # a tuple (Array shapes)
            | "[" [ value ("," value)* [","] ] "]"        # a list (Enum categories)
            | "{" [ STRING ":" value ("," ...)* ] "}"     # a dict (Struct fields)
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Callable
from typing import Any

import polars as pl

from featurestore.errors import DefinitionError

_TOKEN = re.compile(r"""
    \s*(?:
      (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<int>-?\d+)
    | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<punct>[()\[\]{},:=])
    )""", re.VERBOSE)

# Dtypes without parameters, by the names polars prints (and older aliases).
_SIMPLE: dict[str, Callable[[], pl.DataType]] = {
    name: getattr(pl, name) for name in (
        "Int8", "Int16", "Int32", "Int64", "Int128", "UInt8", "UInt16", "UInt32", "UInt64",
        "UInt128", "Float16", "Float32", "Float64", "Boolean", "String", "Utf8", "Binary",
        "Date", "Time", "Null", "Object", "Unknown")
    if isinstance(getattr(pl, name, None), type)
}
_TIME_UNITS = ("ns", "us", "ms")
_MAX_DEPTH = 32


class _Invalid(Exception):
    """Internal: the text does not follow the grammar or names an unknown dtype."""


class _Dtype:
    """A parsed ``NAME(args)`` before it is turned into a polars dtype."""

    def __init__(self, name: str, args: list[Any], kwargs: dict[str, Any], called: bool) -> None:
        self.name, self.args, self.kwargs, self.called = name, args, kwargs, called


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = _TOKEN.match(text, pos)
            if match is None or match.end() == pos:
                raise _Invalid(f"unexpected character {text[pos:].lstrip()[:1]!r}")
            kind = match.lastgroup or ""
            self.tokens.append((kind, match.group(kind)))
            pos = match.end()
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise _Invalid(f"expected {value!r}" if value else "unexpected end")
        self.i += 1
        return tok

    def at(self, value: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[0] == "punct" and tok[1] == value

    def sequence(self, close: str, item: Callable[[], Any]) -> list[Any]:
        items: list[Any] = []
        while not self.at(close):
            items.append(item())
            if not self.at(close):
                self.take(",")
        self.take(close)
        return items

    def value(self, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise _Invalid("nested too deeply")
        tok = self.peek()
        if tok is None:
            raise _Invalid("unexpected end")
        kind, text = tok
        if kind == "int":
            self.i += 1
            return int(text)
        if kind == "str":
            self.i += 1
            return ast.literal_eval(text)  # a quoted string literal only (the token regex)
        if kind == "name":
            if text in ("None", "True", "False"):
                self.i += 1
                return {"None": None, "True": True, "False": False}[text]
            return self.dtype(depth)
        self.i += 1
        if text == "(":
            return tuple(self.sequence(")", lambda: self.value(depth + 1)))
        if text == "[":
            return self.sequence("]", lambda: self.value(depth + 1))
        if text == "{":
            def pair() -> tuple[Any, Any]:
                key = self.value(depth + 1)
                if not isinstance(key, str):
                    raise _Invalid("a struct field name must be a quoted string")
                self.take(":")
                return key, self.value(depth + 1)
            return dict(self.sequence("}", pair))
        raise _Invalid(f"unexpected {text!r}")

    def dtype(self, depth: int) -> _Dtype:
        kind, name = self.take()
        if kind != "name":
            raise _Invalid(f"expected a dtype name, found {name!r}")
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        called = self.at("(")
        if called:
            self.take("(")

            def arg() -> None:
                tok = self.peek()
                nxt = self.tokens[self.i + 1] if self.i + 1 < len(self.tokens) else None
                if tok and tok[0] == "name" and nxt == ("punct", "="):
                    self.i += 2
                    if tok[1] in kwargs:
                        raise _Invalid(f"argument {tok[1]!r} given twice")
                    kwargs[tok[1]] = self.value(depth + 1)
                else:
                    if kwargs:
                        raise _Invalid("positional argument after a keyword argument")
                    args.append(self.value(depth + 1))
            self.sequence(")", arg)
        return _Dtype(name, args, kwargs, called)


def _bind(node: _Dtype, names: tuple[str, ...]) -> dict[str, Any]:
    """Map positional and keyword arguments onto ``names``; anything else is invalid."""
    if len(node.args) > len(names):
        raise _Invalid(f"{node.name} takes at most {len(names)} argument(s)")
    bound = dict(zip(names, node.args, strict=False))
    for key, value in node.kwargs.items():
        if key not in names or key in bound:
            raise _Invalid(f"{node.name} has no argument {key!r}")
        bound[key] = value
    return bound


def _opt_str(value: Any, what: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise _Invalid(f"{what} must be a string or None")
    return value


def _build(node: Any) -> pl.DataType:
    if not isinstance(node, _Dtype):
        raise _Invalid(f"expected a dtype, found {node!r}")
    name = node.name
    if name in _SIMPLE:
        if node.args or node.kwargs:
            raise _Invalid(f"{name} takes no arguments")
        return _SIMPLE[name]()
    if name == "Categorical":
        # Older polars printed Categorical(ordering='physical'); the ordering is not kept.
        _opt_str(_bind(node, ("ordering",)).get("ordering"), "ordering")
        return pl.Categorical()
    if name in ("Datetime", "Duration"):
        a = _bind(node, ("time_unit", "time_zone") if name == "Datetime" else ("time_unit",))
        unit = a.get("time_unit", "us")
        if unit not in _TIME_UNITS:
            raise _Invalid(f"time_unit must be one of {', '.join(_TIME_UNITS)}, got {unit!r}")
        if name == "Duration":
            return pl.Duration(unit)
        return pl.Datetime(unit, _opt_str(a.get("time_zone"), "time_zone"))
    if name == "Decimal":
        a = _bind(node, ("precision", "scale"))
        precision, scale = a.get("precision"), a.get("scale", 0)
        if not (precision is None or type(precision) is int) or type(scale) is not int:
            raise _Invalid("Decimal precision and scale must be integers")
        return pl.Decimal(precision, scale)
    if name == "List":
        a = _bind(node, ("inner",))
        if "inner" not in a:
            raise _Invalid("List needs an inner dtype")
        return pl.List(_build(a["inner"]))
    if name == "Array":
        a = _bind(node, ("inner", "shape"))
        shape = a.get("shape")
        dims = shape if isinstance(shape, tuple) else (shape,)
        if "inner" not in a or not dims or not all(type(d) is int and d >= 0 for d in dims):
            raise _Invalid("Array needs an inner dtype and a shape of non-negative integers")
        return pl.Array(_build(a["inner"]), shape)
    if name == "Struct":
        a = _bind(node, ("fields",))
        fields = a.get("fields")
        if not isinstance(fields, dict):
            raise _Invalid("Struct needs a {'name': dtype, ...} mapping")
        return pl.Struct({k: _build(v) for k, v in fields.items()})
    if name == "Enum":
        a = _bind(node, ("categories",))
        cats = a.get("categories")
        if not isinstance(cats, list | tuple) or not all(isinstance(c, str) for c in cats):
            raise _Invalid("Enum needs a list of string categories")
        return pl.Enum(list(cats))
    raise _Invalid(f"{name!r} is not a dtype")


@functools.lru_cache(maxsize=1024)
def _parse(text: str) -> pl.DataType:
    parser = _Parser(text)
    node = parser.dtype(0)
    if parser.peek() is not None:
        raise _Invalid(f"unexpected {parser.peek()[1]!r} after the dtype")  # type: ignore[index]
    try:
        return _build(node)
    except _Invalid:
        raise
    except Exception as exc:  # a polars constructor refusing a value we let through
        raise _Invalid(f"{type(exc).__name__}: {exc}") from None


def parse_dtype_string(text: str, *, what: str = "registry") -> pl.DataType:
    """The polars dtype ``text`` (as ``str(dtype)`` prints it) names; never evaluates ``text``.

    Raises ``DefinitionError`` naming ``what`` (where the text came from) and the text for
    anything outside the grammar above.
    """
    if not isinstance(text, str) or len(text) > 10_000:
        raise DefinitionError(f"{what}: dtype {str(text)[:80]!r} is not a dtype string")
    try:
        return _parse(text)
    except _Invalid as exc:
        shown = text if len(text) <= 120 else text[:117] + "..."
        raise DefinitionError(
            f"{what}: unknown dtype string {shown!r} ({exc}); featurestore only reads the "
            "dtype names polars prints, such as 'Int64' or \"Datetime(time_unit='us', "
            "time_zone='UTC')\" (the registry row may be damaged or edited by hand)") from None


def dtype_from_str(text: str, *, what: str = "registry") -> pl.DataType:
    """A dtype recorded in the registry; parsed by a fixed grammar, never evaluated."""
    return parse_dtype_string(text, what=what)
