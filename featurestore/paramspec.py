"""Transform parameters declared once: name, type, default, doc, bounds.

A ``ParamSpec`` lists a transform's (or a nested object's) ``Param`` s. ``parse`` validates a
params object against it (unknown keys, required keys, types, bounds: a ``ValueError`` naming
the param) and returns the values with defaults filled in; a transform adds only the checks
that relate several params. ``reference`` renders every first-party transform's specs as the
reference page ``docs/transforms.md``, which a test keeps equal to the specs.

Types (``Param.type``): ``column`` (a non-empty column name), ``columns`` (a list of distinct
column names), ``int``, ``number``, ``bool``, ``str``, ``list`` (a non-empty list), ``object``
(a JSON object), ``condition`` (see ``featurestore.conditions``), ``any`` (checked by the
transform). ``low``/``high`` bound ``int`` and ``number`` values; ``high`` may name another int
param of the same object (``slope_min_laps <= slope_window``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

REQUIRED: Any = type("Required", (), {"__repr__": lambda self: "required"})()
TYPES = ("column", "columns", "int", "number", "bool", "str", "list", "object", "condition",
         "any")


@dataclass(frozen=True)
class Param:
    """One parameter. ``default`` may be ``REQUIRED``, a value, or a function of the values
    parsed so far (params are parsed in declaration order); ``default_doc`` is how such a
    default reads in the reference."""

    name: str
    type: str
    doc: str
    default: Any = None
    low: float | None = None
    high: float | str | None = None
    exclusive_low: bool = False
    default_doc: str | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"param {self.name!r}: unknown type {self.type!r}")

    def default_text(self) -> str:
        if self.default_doc is not None:
            return self.default_doc
        if self.default is REQUIRED:
            return "required"
        return "—" if self.default is None else f"`{json.dumps(self.default)}`"

    def type_text(self) -> str:
        text = self.type
        if self.low is not None or self.high is not None:
            lo = "" if self.low is None else f"{'>' if self.exclusive_low else '>='} {self.low:g}"
            hi = "" if self.high is None else f"<= {self.high}"
            text += f" ({', '.join(p for p in (lo, hi) if p)})"
        return text


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(param: Param, value: Any, where: str, values: Mapping[str, Any],
           fail: Callable[[str], Exception]) -> Any:
    t = param.type
    if t == "column":
        if not isinstance(value, str) or not value:
            raise fail(f"param '{where}' must be a column name (a non-empty string), got {value!r}")
    elif t == "columns":
        if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
            raise fail(f"param '{where}' must be a list of column names, got {value!r}")
        if len(set(value)) != len(value):
            raise fail(f"param '{where}' has duplicates: {value}")
    elif t in ("int", "number"):
        ok = _is_int(value) if t == "int" else (
            isinstance(value, int | float) and not isinstance(value, bool)
            and value == value and value != float("inf"))
        high = values.get(param.high) if isinstance(param.high, str) else param.high
        low_bad = param.low is not None and ok and (
            value <= param.low if param.exclusive_low else value < param.low)
        if not ok or low_bad or (high is not None and ok and value > high):
            bound = param.type_text().partition(" ")[2].strip("()")
            bound = bound.replace(str(param.high), f"{param.high} ({high})") \
                if isinstance(param.high, str) else bound
            raise fail(f"param '{where}' must be {'an int' if t == 'int' else 'a number'}"
                       f"{' ' + bound if bound else ''}, got {value!r}")
        if t == "number":
            value = float(value)
    elif t == "bool":
        if not isinstance(value, bool):
            raise fail(f"param '{where}' must be true or false, got {value!r}")
    elif t == "str":
        if not isinstance(value, str):
            raise fail(f"param '{where}' must be a string, got {value!r}")
    elif t == "list":
        if not isinstance(value, list) or not value:
            raise fail(f"param '{where}' must be a non-empty list, got {value!r}")
    elif t in ("object", "condition") and not isinstance(value, Mapping):
        raise fail(f"param '{where}' must be an object, got {value!r}")
    return value


@dataclass(frozen=True)
class ParamSpec:
    """The params of one object: a transform's top level, or a nested spec (``features[i]``)."""

    title: str
    params: tuple[Param, ...]
    doc: str = ""
    example: Mapping[str, Any] | None = None
    nested: tuple[ParamSpec, ...] = field(default=())

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def parse(self, raw: Any, fail: Callable[[str], Exception], path: str = "",
              ignore: Sequence[str] = ()) -> dict[str, Any]:
        """Validated values with defaults (None for an absent optional param without one).

        ``path`` prefixes param names in messages (``"features[0]."``); keys in ``ignore``
        are left to the caller.
        """
        if not isinstance(raw, Mapping):
            raise fail(f"param '{path.rstrip('.') or 'params'}' must be an object")
        unknown = sorted(set(raw) - set(self.names) - set(ignore))
        if unknown:
            raise fail(f"unknown param(s) {[path + k for k in unknown]}; allowed: "
                       f"{sorted(self.names)}")
        values: dict[str, Any] = {}
        for p in self.params:
            if p.name in raw and raw[p.name] is not None:
                values[p.name] = _check(p, raw[p.name], path + p.name, values, fail)
            elif p.default is REQUIRED:
                raise fail(f"param '{path}{p.name}' is required: {p.doc.split('.')[0]}")
            elif callable(p.default):
                values[p.name] = _check(p, p.default(values), path + p.name, values, fail)
            else:
                values[p.name] = p.default
        return values

    def markdown(self, level: int = 3) -> str:
        lines = [f"{'#' * level} {self.title}", ""]
        if self.doc:
            lines += [self.doc, ""]
        lines += ["| param | type | default | meaning |", "| --- | --- | --- | --- |"]
        for p in self.params:
            doc = p.doc.replace("|", "\\|").replace("\n", " ")
            lines.append(f"| `{p.name}` | {p.type_text()} | {p.default_text()} | {doc} |")
        lines.append("")
        if self.example is not None:
            lines += ["Example:", "", "```json", _compact(self.example), "```", ""]
        for sub in self.nested:
            lines.append(sub.markdown(level + 1))
        return "\n".join(lines)


def _compact(value: Mapping[str, Any]) -> str:
    """JSON with one top-level key (or list item of ``features``) per line."""
    parts = []
    for k, v in value.items():
        if isinstance(v, list) and v and all(isinstance(i, Mapping) for i in v):
            items = ",\n".join(f"    {json.dumps(i)}" for i in v)
            parts.append(f'  "{k}": [\n{items}\n  ]')
        else:
            parts.append(f'  "{k}": {json.dumps(v)}')
    return "{\n" + ",\n".join(parts) + "\n}"


def first_party_specs() -> dict[str, ParamSpec]:
    """Every first-party transform's spec, by transform name."""
    from featurestore_plugins.falloff import SPEC as FALLOFF
    from featurestore_plugins.field import SPEC as FIELD
    from featurestore_plugins.rolling import SPEC as ROLLING

    from featurestore.windowspec import SPEC as WINDOW

    return {"rolling": ROLLING, "window": WINDOW, "falloff": FALLOFF, "field": FIELD}


HEADER = """# Transform reference

Every parameter of every first-party transform, generated from the transforms' own parameter
specs (`featurestore/paramspec.py`); `tests/test_paramspec.py` fails when this page and the
specs differ. Regenerate it with

```console
$ python -m featurestore.paramspec > docs/transforms.md
```

A view names its transform and gives these params under `[views.params]` in TOML, or as
`View(..., params={...})` in Python. What each transform computes is described in its module
docstring and in [plugins.md](plugins.md); what "available" means is in
[semantics.md](semantics.md).
"""


def reference() -> str:
    """The text of ``docs/transforms.md``."""
    parts = [HEADER]
    for name, spec in first_party_specs().items():
        parts.append(f"## `{name}`\n\n{spec.markdown(3)}")
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
