"""Row conditions for transform params: ``{"column": ..., <op>: value, "ignore_case": bool}``.

Used by the ``rolling`` and ``window`` transforms for ``indicator`` (the condition as an Int32
0/1 value) and ``where`` (rows whose condition is false or null are left out). Exactly one op
among ``eq ne lt le gt ge in`` (``in`` takes a non-empty list). ``ignore_case`` (default false)
compares strings case-insensitively (``eq``, ``ne`` and ``in`` on a string column only). A null
in the column makes the condition null, never true.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

OPS = ("eq", "ne", "lt", "le", "gt", "ge", "in")
_CASELESS_OPS = ("eq", "ne", "in")


@dataclass(frozen=True)
class Condition:
    """A comparison ``column <op> value`` (``value`` is a tuple for ``in``)."""

    column: str
    op: str
    value: Any
    ignore_case: bool = False


def is_scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool)


def parse_condition(raw: Any, param: str, default_column: str | None,
                    fail: Callable[[str], Exception]) -> Condition:
    """Validate a condition object; ``fail(message)`` builds the error naming ``param``."""
    if not isinstance(raw, Mapping):
        raise fail(f"param '{param}' must be an object like {{\"eq\": 1}}")
    unknown = sorted(set(raw) - {"column", "ignore_case", *OPS})
    if unknown:
        raise fail(f"param '{param}' has unknown key(s) {unknown}; ops are {list(OPS)}, "
                   "options 'column' and 'ignore_case'")
    ops = [op for op in OPS if op in raw]
    if len(ops) != 1:
        raise fail(f"param '{param}' needs exactly one op among {list(OPS)}, got {ops}")
    op = ops[0]
    column = raw.get("column", default_column)
    if not isinstance(column, str) or not column:
        raise fail(f"param '{param}.column' must be a non-empty column name")
    value = raw[op]
    if op == "in":
        if not isinstance(value, list) or not value or not all(is_scalar(v) for v in value):
            raise fail(f"param '{param}.in' must be a non-empty list of scalars")
        value = tuple(value)
    elif not is_scalar(value):
        raise fail(f"param '{param}.{op}' must be a string, number or boolean")
    ignore_case = raw.get("ignore_case", False)
    if not isinstance(ignore_case, bool):
        raise fail(f"param '{param}.ignore_case' must be true or false")
    if ignore_case:
        values = value if isinstance(value, tuple) else (value,)
        if op not in _CASELESS_OPS or not all(isinstance(v, str) for v in values):
            raise fail(f"param '{param}.ignore_case' applies to 'eq', 'ne' and 'in' with "
                       f"string values, not {op!r} {value!r}")
    return Condition(column, op, value, ignore_case)


def comparable(dtype: pl.DataType, cond: Condition) -> bool:
    """Whether ``cond``'s value(s) can be compared with a column of ``dtype``."""
    values = cond.value if isinstance(cond.value, tuple) else (cond.value,)
    if dtype == pl.Boolean:
        return all(isinstance(v, bool) for v in values)
    if dtype.is_numeric():
        return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, pl.Enum):
        return all(isinstance(v, str) for v in values)
    return False


def check_condition(cond: Condition, schema: Mapping[str, pl.DataType], param: str,
                    fail: Callable[[str], Exception]) -> None:
    """The condition's column exists and its value can be compared with it."""
    if cond.column not in schema:
        raise fail(f"param '{param}.column': no column {cond.column!r} in input")
    if not comparable(schema[cond.column], cond):
        raise fail(f"param '{param}.{cond.op}': value {cond.value!r} cannot be compared with "
                   f"column {cond.column!r} of dtype {schema[cond.column]}")


def compare(expr: pl.Expr, cond: Condition) -> pl.Expr:
    """The Boolean expression ``expr <op> value`` (null where ``expr`` is null)."""
    value = cond.value
    if cond.ignore_case:
        expr = expr.cast(pl.String).str.to_lowercase()
        value = tuple(v.lower() for v in value) if isinstance(value, tuple) else value.lower()
    if cond.op == "in":
        return pl.when(expr.is_not_null()).then(expr.is_in(list(value)))
    return {
        "eq": expr.__eq__,
        "ne": expr.__ne__,
        "lt": expr.__lt__,
        "le": expr.__le__,
        "gt": expr.__gt__,
        "ge": expr.__ge__,
    }[cond.op](pl.lit(value))


def default_alias(column: str, indicator: Condition | None) -> str:
    """``column``, or ``<column>_<op>_<value>`` for an indicator (``position_eq_1``)."""
    if indicator is None:
        return column
    values = indicator.value if isinstance(indicator.value, tuple) else (indicator.value,)
    text = "_".join(str(v).lower() if isinstance(v, bool) else str(v) for v in values)
    return f"{column}_{indicator.op}_{text}"
