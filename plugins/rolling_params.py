"""Parameters of the ``rolling`` transform: declared once (``SPEC``, ``ITEM``) and parsed into a
``Plan`` without a schema; ``ValueError`` names the bad param. The computation is in ``rolling``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from featurestore.conditions import (
    Condition,
    default_alias,
    parse_condition,
)
from featurestore.paramspec import Param, ParamSpec
from featurestore.transforms import (
    AVAILABLE_AT,
    EVENT_TIMESTAMP,
    Params,
)

NAME = "rolling"
AGGS = ("mean", "std", "min", "max", "sum", "count")
DEFAULT_NAME = "{column}_{agg}_last_{window}"
EXPANDING = "all"
_EXPANDING_ROWS = 2**31 - 1
_NAME_FIELDS = frozenset({"column", "agg", "window"})
ITEM = ParamSpec("A rolling spec", (
    Param("column", "column", "The value column: numeric or Boolean (Boolean counts as Int32 "
          "0/1). Optional when `indicator` names the column."),
    Param("windows", "list", "Each an int N >= 1 (the last N rows), a duration like `\"30m\"`, "
          "`\"7d\"`, `\"1h30m\"` (units ns us ms s m h d w: rows with event time in "
          "(t - P, t)), or `\"all\"` (every earlier row in the entity's order, same-instant rows "
          "that sort earlier included). Required unless `outputs` is given."),
    Param("aggs", "list", "Any of mean std min max sum count. Required unless `outputs` is given."),
    Param("include_current", "bool", "Whether the row's own value is in its window.",
          default=True),
    Param("min_periods", "int", "Fewer non-null values than this gives null (count is never "
          "null); at most N for a row window.", default=1, low=1),
    Param("indicator", "condition", "Aggregate `column <op> value` as Int32 0/1: "
          "`{\"column\": ..., <op>: value, \"ignore_case\": bool}`, op one of eq ne lt le gt "
          "ge in."),
    Param("where", "condition", "Rows whose condition is false or null contribute null (ignored "
          "by the aggregations, still counted as a row of a row window)."),
    Param("name", "any", "Output naming template with fields {column} (the alias), {agg} and "
          "{window}; or an object agg -> template.", default_doc=f"`\"{DEFAULT_NAME}\"`"),
    Param("alias", "str", "What {column} means in names.",
          default_doc="the column, or `<column>_<op>_<value>` with an indicator"),
    Param("outputs", "object", "`{output name: {\"agg\": ..., \"window\": ...}}`: explicit "
          "columns instead of windows/aggs/name."),
), example={"column": "lap_time", "windows": [5, "30m", "all"], "aggs": ["mean", "max"]})
SPEC = ParamSpec("Params", (
    Param("features", "list", "Several specs computed in one pass (each an object as below); "
          "without it the params are one spec."),
    Param("tie_break", "columns", "Extra ordering columns after (event_timestamp, "
          "available_at), e.g. `[\"lap\"]` for date-only timestamps; nulls sort first.",
          default=[]),
), doc="Per-entity aggregations over the last N rows, a period, or the whole history, computed "
       "at each row (anchored at the row, not at the cutoff: see `window` for that).",
    example={"features": [
        {"column": "finish", "windows": [5], "aggs": ["mean"]},
        {"column": "position", "indicator": {"eq": 1}, "windows": ["all"], "aggs": ["sum"],
         "alias": "wins"}], "tie_break": ["race_id"]},
    nested=(ITEM,))
_DURATION_PART = re.compile(r"(\d+)(ns|us|ms|s|m|h|d|w)")


@dataclass(frozen=True)
class Output:
    name: str
    agg: str
    window: int | str  # int: rows; str: a duration, or "all" (expanding)


@dataclass(frozen=True)
class Spec:
    column: str
    include_current: bool
    min_periods: int
    indicator: Condition | None
    where: Condition | None
    outputs: tuple[Output, ...]
    path: str  # the param path prefix used in error messages ("" or "features[i].")


@dataclass(frozen=True)
class Plan:
    specs: tuple[Spec, ...]
    tie_break: tuple[str, ...]

    @property
    def outputs(self) -> list[tuple[Spec, Output]]:
        return [(spec, out) for spec in self.specs for out in spec.outputs]


def _fail(message: str) -> ValueError:
    return ValueError(f"{NAME}: {message}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_duration(window: Any) -> bool:
    """Whether ``window`` is a valid positive duration string (``"30m"``, ``"1h30m"``, ...)."""
    if not isinstance(window, str) or not window:
        return False
    pos, total = 0, 0
    for match in _DURATION_PART.finditer(window):
        if match.start() != pos:
            return False
        pos = match.end()
        total += int(match.group(1))
    return pos == len(window) and total > 0


def _parse_condition(raw: Any, param: str, default_column: str | None) -> Condition:
    return parse_condition(raw, param, default_column, _fail)


def _check_template(template: Any, param: str) -> str:
    if not isinstance(template, str) or not template:
        raise _fail(f"param '{param}' must be a non-empty template string")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        raise _fail(f"param '{param}' is not a valid template: {exc}") from None
    bad = sorted(fields - _NAME_FIELDS)
    if bad:
        raise _fail(f"param '{param}' uses unknown field(s) {bad}; use {sorted(_NAME_FIELDS)}")
    return template


def _is_time(window: int | str) -> bool:
    return isinstance(window, str) and window != EXPANDING


def _parse_window(window: Any, param: str) -> int | str:
    if window == EXPANDING:
        return window
    if _is_int(window):
        if window < 1:
            raise _fail(f"param '{param}' row window must be >= 1, got {window}")
        return window
    if isinstance(window, str):
        if not is_duration(window):
            raise _fail(
                f"param '{param}' must be a row count, a duration like '30m', '7d', "
                f"'1h30m' (units ns us ms s m h d w) or 'all', got {window!r}"
            )
        return window
    raise _fail(f"param '{param}' must be an int (rows) or a duration string, got {window!r}")


def _parse_agg(agg: Any, param: str) -> str:
    if agg not in AGGS:
        raise _fail(f"param '{param}' must be one of {list(AGGS)}, got {agg!r}")
    return agg


def _parse_spec(raw: Any, path: str) -> Spec:
    def p(key: str) -> str:
        return f"{path}{key}"

    v = ITEM.parse(raw, _fail, path)
    column = v["column"]
    indicator = None
    if raw.get("indicator") is not None:
        indicator = _parse_condition(raw["indicator"], p("indicator"), column)
        if column is not None and indicator.column != column:
            raise _fail(
                f"param '{p('indicator')}.column' ({indicator.column!r}) conflicts with "
                f"'{p('column')}' ({column!r})"
            )
        column = indicator.column
    if column is None:
        raise _fail(f"param '{p('column')}' is required")
    where = None
    if raw.get("where") is not None:
        where = _parse_condition(raw["where"], p("where"), column)

    include_current, min_periods = v["include_current"], v["min_periods"]
    alias = v["alias"] if v["alias"] is not None else default_alias(column, indicator)
    if not alias:
        raise _fail(f"param '{p('alias')}' must be a non-empty string")

    outputs: list[Output] = []
    if raw.get("outputs") is not None:
        clash = [k for k in ("windows", "aggs", "name") if k in raw]
        if clash:
            raise _fail(f"param '{p('outputs')}' excludes {[p(k) for k in clash]}")
        explicit = raw["outputs"]
        if not isinstance(explicit, Mapping) or not explicit:
            raise _fail(f"param '{p('outputs')}' must be a non-empty object name -> spec")
        for name, out in explicit.items():
            where_ = f"{p('outputs')}.{name}"
            if not isinstance(name, str) or not name:
                raise _fail(f"param '{p('outputs')}' has an empty output name")
            if not isinstance(out, Mapping) or set(out) != {"agg", "window"}:
                raise _fail(f'param \'{where_}\' must be {{"agg": ..., "window": ...}}')
            outputs.append(
                Output(
                    name,
                    _parse_agg(out["agg"], f"{where_}.agg"),
                    _parse_window(out["window"], f"{where_}.window"),
                )
            )
    else:
        windows, aggs = raw.get("windows"), raw.get("aggs")
        for key, value in (("windows", windows), ("aggs", aggs)):
            if not isinstance(value, list) or not value:
                raise _fail(f"param '{p(key)}' must be a non-empty list (or give 'outputs')")
        parsed_windows = [_parse_window(w, f"{p('windows')}[{i}]") for i, w in enumerate(windows)]
        parsed_aggs = [_parse_agg(a, f"{p('aggs')}[{i}]") for i, a in enumerate(aggs)]
        for key, values in (("windows", parsed_windows), ("aggs", parsed_aggs)):
            if len(set(values)) != len(values):
                raise _fail(f"param '{p(key)}' has duplicates: {values}")
        name = raw.get("name", DEFAULT_NAME)
        if isinstance(name, Mapping):
            for agg in name:
                if agg not in parsed_aggs:
                    raise _fail(f"param '{p('name')}' has a template for {agg!r}, not in aggs")
            templates = {
                a: _check_template(name.get(a, DEFAULT_NAME), f"{p('name')}.{a}")
                for a in parsed_aggs
            }
        else:
            template = _check_template(name, p("name"))
            templates = dict.fromkeys(parsed_aggs, template)
        for window in parsed_windows:
            for agg in parsed_aggs:
                try:
                    out_name = templates[agg].format(column=alias, agg=agg, window=window)
                except (ValueError, TypeError, IndexError) as exc:
                    raise _fail(f"param '{p('name')}' cannot be formatted: {exc}") from None
                if not out_name:
                    raise _fail(f"param '{p('name')}' gives an empty column name")
                outputs.append(Output(out_name, agg, window))

    for out in outputs:
        if _is_int(out.window) and min_periods > out.window:
            raise _fail(
                f"param '{p('min_periods')}' ({min_periods}) exceeds the row window {out.window}"
            )
    return Spec(column, include_current, min_periods, indicator, where, tuple(outputs), path)


def parse_params(params: Params) -> Plan:
    """Validate params without a schema and return the plan; ``ValueError`` names the bad param."""
    if not isinstance(params, Mapping):
        raise _fail("params must be a JSON object")
    tie_break = SPEC.parse(params, _fail, ignore=ITEM.names)["tie_break"]
    if "features" in params:
        extra = sorted(set(params) - {"features", "tie_break"})
        if extra:
            raise _fail(f"with 'features', param(s) {extra} belong inside each feature spec")
        features = params["features"]
        if not isinstance(features, list) or not features:
            raise _fail("param 'features' must be a non-empty list of spec objects")
        specs = tuple(_parse_spec(f, f"features[{i}].") for i, f in enumerate(features))
    else:
        specs = (_parse_spec({k: v for k, v in params.items() if k != "tie_break"}, ""),)
    seen: set[str] = set()
    for spec in specs:
        for out in spec.outputs:
            if out.name in seen:
                raise _fail(
                    f"output column {out.name!r} is produced twice (check params "
                    f"'{spec.path}name' / '{spec.path}outputs')"
                )
            if out.name in (EVENT_TIMESTAMP, AVAILABLE_AT):
                raise _fail(
                    f"output column {out.name!r} (params '{spec.path}name' / "
                    f"'{spec.path}outputs') clashes with a reserved column"
                )
            seen.add(out.name)
    return Plan(specs, tuple(tie_break))
