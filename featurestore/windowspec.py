"""Params of the ``window`` transform: windows anchored at the cutoff, declared per view.

A params object is one spec, or ``{"features": [spec, ...]}`` for several value columns. A spec:

- ``column``: the value column (numeric or Boolean; optional when ``indicator`` names it);
- ``windows``: a non-empty list of widths, each a duration (``"10m"``, ``"90d"``, ``"1h30m"``;
  units ``us ms s m h d w``) or ``"all"`` (the whole history before the cutoff);
- ``aggs``: a non-empty list among ``count sum mean std min max first last``;
- ``where`` / ``indicator``: conditions as in ``rolling`` (``featurestore.conditions``);
- ``name``: the output naming template, fields ``{column}`` (the alias), ``{agg}``, ``{window}``
  (as written), default ``"{column}_{agg}_{window}"``; ``alias``: what ``{column}`` means.

This module only parses and prepares; ``featurestore.windowengine`` computes.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import polars as pl

from featurestore.conditions import (
    Condition,
    check_condition,
    compare,
    default_alias,
    parse_condition,
)
from featurestore.paramspec import REQUIRED, Param, ParamSpec
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP
from featurestore.windowdefs import AGGS, WindowOutput, output_dtype

NAME = "window"
ALL = "all"
DEFAULT_NAME = "{column}_{agg}_{window}"
_PART = re.compile(r"(\d+)(us|ms|s|m|h|d|w)")
_MICROS = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000,
           "d": 86_400_000_000, "w": 604_800_000_000}
_FIELDS = frozenset({"column", "agg", "window"})


def fail(message: str) -> ValueError:
    return ValueError(f"{NAME}: {message}")


def parse_width(text: Any, param: str) -> timedelta | None:
    """``"all"`` -> None; ``"1h30m"`` -> its ``timedelta``; anything else a ``ValueError``."""
    if text == ALL:
        return None
    if isinstance(text, str) and text:
        pos, micros = 0, 0
        for match in _PART.finditer(text):
            if match.start() != pos:
                break
            pos = match.end()
            micros += int(match.group(1)) * _MICROS[match.group(2)]
        else:
            if pos == len(text) and micros > 0:
                return timedelta(microseconds=micros)
    hint = " (windows anchored at the cutoff are durations; for the last N rows use " \
        "the rolling transform)" if isinstance(text, int) else ""
    raise fail(f"param '{param}' must be a duration like '10m', '90d', '1h30m' (units us ms s "
               f"m h d w) or 'all', got {text!r}{hint}")


@dataclass(frozen=True)
class Spec:
    column: str
    value: str  # the prepared value column's internal name
    indicator: Condition | None
    where: Condition | None
    outputs: tuple[WindowOutput, ...]
    path: str


def _template(raw: Any, param: str) -> str:
    if not isinstance(raw, str) or not raw:
        raise fail(f"param '{param}' must be a non-empty template string")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(raw) if f is not None}
    except ValueError as exc:
        raise fail(f"param '{param}' is not a valid template: {exc}") from None
    bad = sorted(fields - _FIELDS)
    if bad:
        raise fail(f"param '{param}' uses unknown field(s) {bad}; use {sorted(_FIELDS)}")
    return raw


def _distinct(raw: list[Any], param: str) -> list[Any]:
    if len({repr(v) for v in raw}) != len(raw):
        raise fail(f"param '{param}' has duplicates: {raw}")
    return raw


ITEM = ParamSpec("A window spec", (
    Param("column", "column", "The value column: numeric or Boolean (Boolean counts as 0/1). "
          "Optional when `indicator` names the column."),
    Param("windows", "list", "Window widths, each a duration (`\"10m\"`, `\"90d\"`, "
          "`\"1h30m\"`; units us ms s m h d w) or `\"all\"` (every row before the cutoff). "
          "A window of width w at cutoff T holds the rows with T - w <= available_at < T.",
          default=REQUIRED),
    Param("aggs", "list", f"Aggregations among {' '.join(AGGS)}. An empty window gives count 0 "
          "and null for the others.", default=REQUIRED),
    Param("where", "condition", "Only rows where the condition holds count: `{\"column\": ..., "
          "<op>: value, \"ignore_case\": bool}`, op one of eq ne lt le gt ge in."),
    Param("indicator", "condition", "Aggregate the condition as Int32 0/1 instead of the value "
          "(its column defaults to `column`)."),
    Param("name", "str", "Output naming template with fields {column} (the alias), {agg} and "
          "{window} (as written).", default=DEFAULT_NAME),
    Param("alias", "str", "What {column} means in names.",
          default_doc="the column, or `<column>_<op>_<value>` with an indicator"),
), example={"column": "points", "windows": ["90d", "all"], "aggs": ["count", "mean"],
            "where": {"column": "status", "in": ["finished"], "ignore_case": True}})
SPEC = ParamSpec("Params", (
    Param("features", "list", "Several window specs in one view (each an object as below); "
          "without it the params are one window spec."),
), doc="Aggregations over windows anchored at the cutoff: served for each query row from the "
       "view's input rows, whatever the time of the newest row. Online lookups anchor at the "
       "request time.",
    example={"features": [
        {"column": "lap_time", "windows": ["10m", "1h"], "aggs": ["mean", "min", "count"]},
        {"column": "position", "indicator": {"eq": 1}, "alias": "led",
         "windows": ["all"], "aggs": ["sum"]}]},
    nested=(ITEM,))


def _spec(raw: Any, path: str, index: int) -> Spec:
    def p(key: str) -> str:
        return f"{path}{key}"

    values = ITEM.parse(raw, fail, path)
    column = values["column"]
    indicator = None
    if raw.get("indicator") is not None:
        indicator = parse_condition(raw["indicator"], p("indicator"), column, fail)
        if column is not None and indicator.column != column:
            raise fail(f"param '{p('indicator')}.column' ({indicator.column!r}) conflicts with "
                       f"'{p('column')}' ({column!r})")
        column = indicator.column
    if column is None:
        raise fail(f"param '{p('column')}' is required")
    where = None
    if raw.get("where") is not None:
        where = parse_condition(raw["where"], p("where"), column, fail)
    alias = values["alias"] or default_alias(column, indicator)
    windows = [(w, parse_width(w, f"{p('windows')}[{i}]"))
               for i, w in enumerate(_distinct(values["windows"], p("windows")))]
    aggs = _distinct(values["aggs"], p("aggs"))
    for i, agg in enumerate(aggs):
        if agg not in AGGS:
            raise fail(f"param '{p('aggs')}[{i}]' must be one of {list(AGGS)}, got {agg!r}")
    template = _template(values["name"], p("name"))
    value = f"__fs_window_value_{index}"
    outputs = []
    for text, width in windows:
        for agg in aggs:
            try:
                name = template.format(column=alias, agg=agg, window=text)
            except (ValueError, TypeError, IndexError, KeyError) as exc:
                raise fail(f"param '{p('name')}' cannot be formatted: {exc}") from None
            if not name:
                raise fail(f"param '{p('name')}' gives an empty column name")
            outputs.append(WindowOutput(name, value, agg, width))
    return Spec(column, value, indicator, where, tuple(outputs), path)


def parse_params(params: Any) -> tuple[Spec, ...]:
    """Validate params without a schema; ``ValueError`` names the bad param."""
    if not isinstance(params, Mapping):
        raise fail("params must be a JSON object")
    if "features" in params:
        extra = sorted(set(params) - {"features"})
        if extra:
            raise fail(f"with 'features', param(s) {extra} belong inside each feature spec")
        features = params["features"]
        if not isinstance(features, list) or not features:
            raise fail("param 'features' must be a non-empty list of spec objects")
        specs = tuple(_spec(f, f"features[{i}].", i) for i, f in enumerate(features))
    else:
        specs = (_spec(params, "", 0),)
    seen: set[str] = set()
    for spec in specs:
        for out in spec.outputs:
            if out.name in seen:
                raise fail(f"output column {out.name!r} is produced twice (check params "
                           f"'{spec.path}name')")
            if out.name in (EVENT_TIMESTAMP, AVAILABLE_AT):
                raise fail(f"output column {out.name!r} clashes with a reserved column")
            seen.add(out.name)
    return specs


def value_dtype(spec: Spec, schema: Mapping[str, pl.DataType]) -> pl.DataType:
    """The dtype of the prepared value column (Int32 for an indicator or a Boolean)."""
    for cond, key in ((spec.indicator, "indicator"), (spec.where, "where")):
        if cond is not None:
            check_condition(cond, schema, f"{spec.path}{key}", fail)
    if spec.column not in schema:
        raise fail(f"param '{spec.path}column': no column {spec.column!r} in input")
    dtype = schema[spec.column]
    if spec.indicator is not None or dtype == pl.Boolean:
        return pl.Int32()
    if not dtype.is_numeric() or isinstance(dtype, pl.Decimal) or dtype == pl.UInt64:
        raise fail(f"param '{spec.path}column': column {spec.column!r} has dtype {dtype}; a "
                   "window needs a numeric (not UInt64 or Decimal) or Boolean column, or an "
                   "'indicator'")
    return dtype


def declared(params: Any, schema: Mapping[str, pl.DataType]) -> dict[str, pl.DataType]:
    """Output column -> dtype; ``ValueError`` for bad params or missing columns."""
    out: dict[str, pl.DataType] = {}
    for spec in parse_params(params):
        vt = value_dtype(spec, schema)
        for o in spec.outputs:
            out[o.name] = output_dtype(o.agg, vt)
    return out


def value_exprs(specs: tuple[Spec, ...], schema: Mapping[str, pl.DataType]) -> list[pl.Expr]:
    """The prepared value column of every spec: the value (an indicator's 0/1), null where the
    ``where`` condition is false or null; NaN is null."""
    exprs = []
    for spec in specs:
        col = pl.col(spec.column)
        if schema[spec.column].is_float():
            col = col.fill_nan(None)
        if spec.indicator is not None:
            value = compare(col, spec.indicator).cast(pl.Int32)
        elif schema[spec.column] == pl.Boolean:
            value = col.cast(pl.Int32)
        else:
            value = col
        if spec.where is not None:
            where = pl.col(spec.where.column)
            if schema[spec.where.column].is_float():
                where = where.fill_nan(None)
            value = pl.when(compare(where, spec.where)).then(value)
        exprs.append(value.alias(spec.value))
    return exprs


def input_columns(params: Any) -> list[str]:
    """The columns whose values are aggregated: every spec's value and where column."""
    out: list[str] = []
    for spec in parse_params(params):
        for col in (spec.column, spec.where.column if spec.where else None):
            if col is not None and col not in out:
                out.append(col)
    return out
