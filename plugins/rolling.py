"""The ``rolling`` transform: per-entity window aggregations over the last N rows or a time period.

One call produces many columns: every (window, aggregation) pair of one *feature spec*, and a
params object may hold several specs (``features``) that share one sort of the input.

Params (JSON object) — either one spec at the top level, or ``{"features": [spec, ...]}``:

- ``features`` (list of spec objects, optional): several specs computed in one pass. When given,
  only ``features`` and ``tie_break`` may appear at the top level.
- ``tie_break`` (list of column names, default ``[]``): extra ordering columns applied after
  ``(event_timestamp, available_at)`` (e.g. ``["lap"]`` for date-only timestamps). Nulls sort
  first.

A spec:

- ``column`` (str): the value column (numeric or Boolean; Boolean counts as Int32 0/1).
  Optional when ``indicator`` names the column.
- ``windows`` (list): each an int ``N >= 1`` (the last N rows), a duration string made of
  ``<int><unit>`` parts with units ``ns us ms s m h d w`` (e.g. ``"30m"``, ``"7d"``, ``"1h30m"``),
  or ``"all"``: the expanding window, every earlier row of the entity (a row window without end).
- ``aggs`` (list): any of ``mean std min max sum count``.
- ``include_current`` (bool, default ``true``): whether the row's own value is in its window.
  The default is what "the mean over the last 5 races" means: the window ends with the row, and
  the row's value becomes available with the row (its ``available_at``), so the point-in-time
  rule already keeps it from a prediction made before that. At a race's start (cutoff = green
  flag) the newest available result row is the previous race's, whose window covers races
  n-5..n-1. ``false`` excludes the row's own value (races n-6..n-2 at that cutoff: a second lag
  on top of the point-in-time rule); use it only for a value that must not see its own row.
  (Before 0.2.0 the default was ``false``.)
- ``min_periods`` (int >= 1, default 1): fewer non-null values in the window than this gives
  null (``count`` is never null). For a row window it may not exceed N.
- ``indicator`` (object, optional): ``{"column": <optional, defaults to column>, <op>: value}``
  with exactly one op among ``eq ne lt le gt ge in`` (``in`` takes a non-empty list), and
  ``"ignore_case": true`` to compare strings case-insensitively (``eq ne in``). The value
  becomes Int32 1 where the comparison holds, 0 where it does not, null where the column is null.
  ``laps_led_last_Nl`` is ``{"column": "position", "indicator": {"eq": 1}, "aggs": ["sum"]}``.
- ``where`` (object, optional): ``{"column": <optional, defaults to column>, <op>: value}``;
  a row whose condition is false or null contributes null (it is ignored by the aggregations but
  still occupies its place in a row window: "the last N rows, counting only those where ...").
- ``name`` (str, or object agg -> str; default ``"{column}_{agg}_last_{window}"``): the output
  naming template with fields ``{column}`` (the ``alias``), ``{agg}`` and ``{window}`` (the int or
  duration string as given). An object gives per-agg templates; missing aggs use the default.
- ``alias`` (str, optional): what ``{column}`` means in names. Default: the column, or
  ``<column>_<op>_<value>`` with an indicator (e.g. ``position_eq_1``).
- ``outputs`` (object, optional): ``{output_name: {"agg": ..., "window": ...}}``, an explicit
  list of columns used instead of ``windows``/``aggs``/``name``.

Semantics, per entity (rows with equal key values; composite keys compared column by column):

- Order: rows are ordered by ``(event_timestamp, available_at, *tie_break)``, then by the
  columns the specs read (value, indicator and where columns, in spec order; NaN as null, nulls
  first). Rows still tied are identical in everything the transform reads, so the output never
  depends on the input's row order.
- Row window ``N``: the N rows immediately before the current row in that order
  (``include_current=false``), or the N rows ending at the current row (``true``).
  At the start of an entity the window holds what exists (partial windows; ``min_periods``
  defaults to 1).
- Time window ``P``: rows with ``event_timestamp`` in ``(t - P, t)``, where ``t`` is the current
  row's event time, plus the current row itself when ``include_current=true``. Other rows at the
  same instant ``t`` are excluded (none of them is "before" another), whatever their order.
- Nulls (and NaN, which is treated as null) are ignored. ``mean min max sum std`` of a window
  with no non-null value (or fewer than ``min_periods``) are null; ``count`` counts non-null
  values and is 0 for such a window. ``std`` is the sample standard deviation (ddof=1), null
  for fewer than 2 values.
- Dtypes: ``mean``/``std`` Float64; ``count`` Int64; ``sum`` Float64 for float input, else Int64;
  ``min``/``max`` the value's dtype (Int32 for Boolean columns and indicators).

Output: the key columns, ``event_timestamp``, ``available_at`` and the declared columns, one row
per input row, *sorted* by the keys and then the order above (not in input order).
``lookback``: the largest N (N-1 with ``include_current``); ``None`` when any time window is used.

Causality follows the event order: a value depends only on rows of its entity at or before it in
that order. That satisfies the core's ``available_at`` invariant when ``available_at`` never
decreases as ``event_timestamp`` increases within an entity (the usual case: a fixed lag, or
whole sessions published at once). If a source breaks that (a late correction of an old row),
the materializer's causality verification reports it.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from featurestore.conditions import (
    Condition,
    check_condition,
    compare,
    default_alias,
    parse_condition,
)
from featurestore.hookspecs import hookimpl
from featurestore.paramspec import Param, ParamSpec
from featurestore.transforms import (
    AVAILABLE_AT,
    EVENT_TIMESTAMP,
    Params,
    Transform,
    TransformContext,
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
          "(t - P, t)), or `\"all\"` (every earlier row). Required unless `outputs` is given."),
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


# --------------------------------------------------------------------------- schema


def _value_dtype(spec: Spec, schema: Mapping[str, pl.DataType]) -> pl.DataType:
    """The dtype of the series being aggregated (after indicator / Boolean casting)."""
    for cond, key in ((spec.indicator, "indicator"), (spec.where, "where")):
        if cond is not None:
            check_condition(cond, schema, f"{spec.path}{key}", _fail)
    if spec.column not in schema:
        raise _fail(f"param '{spec.path}column': no column {spec.column!r} in input")
    if spec.indicator is not None:
        return pl.Int32()
    dtype = schema[spec.column]
    if dtype == pl.Boolean:
        return pl.Int32()
    if not dtype.is_numeric() or isinstance(dtype, pl.Decimal):
        raise _fail(
            f"param '{spec.path}column': column {spec.column!r} has dtype {dtype}; rolling "
            "needs a numeric or Boolean column (or an 'indicator')"
        )
    return dtype


def _out_dtype(agg: str, value_dtype: pl.DataType) -> pl.DataType:
    if agg in ("mean", "std"):
        return pl.Float64()
    if agg == "count":
        return pl.Int64()
    if agg == "sum":
        return pl.Float64() if value_dtype.is_float() else pl.Int64()
    return value_dtype


def _declare(plan: Plan, schema: Mapping[str, pl.DataType]) -> dict[str, pl.DataType]:
    for col in plan.tie_break:
        if col not in schema:
            raise _fail(f"param 'tie_break': no column {col!r} in input")
    time_dtype = schema.get(EVENT_TIMESTAMP)
    declared: dict[str, pl.DataType] = {}
    for spec in plan.specs:
        value_dtype = _value_dtype(spec, schema)
        for out in spec.outputs:
            temporal = time_dtype is None or isinstance(time_dtype, pl.Datetime | pl.Date)
            if _is_time(out.window) and not temporal:
                raise _fail(
                    f"param '{spec.path}windows': time window {out.window!r} needs a temporal "
                    "event time column"
                )
            declared[out.name] = _out_dtype(out.agg, value_dtype)
    return declared


def output_columns(
    params: Params, input_schema: Mapping[str, pl.DataType]
) -> dict[str, pl.DataType]:
    """The declared output columns and dtypes; ``ValueError`` for bad params or missing columns."""
    return _declare(parse_params(params), input_schema)


def lookback(params: Params) -> int | None:
    """Earlier rows per entity a value depends on: max N (N-1 with include_current), or None."""
    plan = parse_params(params)
    rows = 0
    for spec, out in plan.outputs:
        if isinstance(out.window, str):  # a period, or the whole history
            return None
        rows = max(rows, out.window - 1 if spec.include_current else out.window)
    return rows


# --------------------------------------------------------------------------- compute


_compare = compare


def _value_expr(
    spec: Spec, schema: Mapping[str, pl.DataType], clean: Mapping[str, pl.Expr]
) -> pl.Expr:
    """The series to aggregate. Float columns arrive with NaN already replaced by null, except
    those in ``clean`` (keys and times, left untouched), which map to their NaN-free form."""
    value = clean.get(spec.column, pl.col(spec.column))
    if spec.indicator is not None:
        value = _compare(value, spec.indicator).cast(pl.Int32)
    elif schema[spec.column] == pl.Boolean:
        value = value.cast(pl.Int32)
    if spec.where is not None:
        where = clean.get(spec.where.column, pl.col(spec.where.column))
        value = pl.when(_compare(where, spec.where)).then(value)
    return value


def _row_window(value: pl.Expr, spec: Spec, out: Output, sum_dtype: pl.DataType) -> pl.Expr:
    # "all": a window longer than any entity is the whole history so far.
    n = _EXPANDING_ROWS if out.window == EXPANDING else int(out.window)
    m = spec.min_periods
    v = value if spec.include_current else value.shift(1)
    if out.agg == "count":
        return v.is_not_null().cast(pl.Int64).rolling_sum(n, min_samples=1)
    if out.agg == "mean":
        return v.cast(pl.Float64).rolling_mean(n, min_samples=m)
    if out.agg == "std":
        if n < 2:  # a single value has no sample standard deviation
            return pl.when(pl.lit(False)).then(v.cast(pl.Float64))
        return v.cast(pl.Float64).rolling_std(n, min_samples=max(m, 2))
    if out.agg == "sum":
        return v.cast(sum_dtype).rolling_sum(n, min_samples=m)
    if out.agg == "min":
        return v.rolling_min(n, min_samples=m)
    return v.rolling_max(n, min_samples=m)


def _time_window(
    value: pl.Expr, spec: Spec, out: Output, sum_dtype: pl.DataType, by: str
) -> pl.Expr:
    """Window ``(t - P, t)`` on event time, plus the current row when ``include_current``."""
    period, m = str(out.window), spec.min_periods

    def before(expr: pl.Expr, fn: str) -> pl.Expr:
        return getattr(expr, f"rolling_{fn}_by")(by, period, closed="none")

    present = value.is_not_null().cast(pl.Int64)
    count = before(present, "sum")
    if spec.include_current:
        count = count + present
    if out.agg == "count":
        return count
    enough = count >= max(m, 2 if out.agg == "std" else 1)
    if not spec.include_current:
        fn = {"mean": "mean", "std": "std", "sum": "sum", "min": "min", "max": "max"}[out.agg]
        source = value.cast(sum_dtype) if out.agg == "sum" else value
        source = source.cast(pl.Float64) if out.agg in ("mean", "std") else source
        return pl.when(enough).then(before(source, fn))
    if out.agg == "min":
        return pl.when(enough).then(pl.min_horizontal(before(value, "min"), value))
    if out.agg == "max":
        return pl.when(enough).then(pl.max_horizontal(before(value, "max"), value))
    if out.agg == "sum":
        total = before(value.cast(sum_dtype), "sum") + value.cast(sum_dtype).fill_null(0)
        return pl.when(enough).then(total)
    x = value.cast(pl.Float64)
    total = before(x, "sum") + x.fill_null(0.0)
    if out.agg == "mean":
        return pl.when(enough).then(total / count)
    # std: merge the earlier rows (n_a, mean_a, std_a) with the current value (Chan et al.).
    n_a = before(present, "sum").cast(pl.Float64)
    mean_a = before(x, "mean")
    m2_a = (before(x, "std") ** 2 * (n_a - 1.0)).fill_null(0.0)
    m2 = m2_a + ((x - mean_a) ** 2 * n_a / (n_a + 1.0)).fill_null(0.0)
    return pl.when(enough).then((m2 / (count.cast(pl.Float64) - 1.0)).sqrt())


def _rolling(frame: pl.LazyFrame, params: Params, ctx: TransformContext) -> pl.LazyFrame:
    plan = parse_params(params)
    schema = frame.collect_schema()
    declared = _declare(plan, schema)
    keys = list(ctx.keys)
    base = [*keys, ctx.time_column, ctx.available_column]
    for name in declared:
        if name in base:
            raise _fail(f"output column {name!r} clashes with a key or time column")
    time_dtype = schema.get(ctx.time_column)
    if any(_is_time(out.window) for _, out in plan.outputs) and not isinstance(
        time_dtype, pl.Datetime | pl.Date
    ):
        raise _fail(
            f"time windows need a temporal time column, {ctx.time_column!r} is {time_dtype}"
        )
    # Sort order: times, tie_break, then every column the specs read (ties left after that are
    # rows identical in all the transform reads, so input order cannot matter).
    order = [*base, *[c for c in plan.tie_break if c not in base]]
    for spec in plan.specs:
        for col in (spec.column, spec.where.column if spec.where else spec.column):
            if col not in order:
                order.append(col)
    # NaN counts as null: normalise the float columns read once, up front (keys and times are
    # passed through untouched, so a float column among them is normalised inside expressions).
    read = [c for c in order if c not in base]
    frame = frame.with_columns(pl.col(c).fill_nan(None) for c in read if schema[c].is_float())
    clean = {c: pl.col(c).fill_nan(None) for c in base if schema[c].is_float()}

    exprs = []
    for spec in plan.specs:
        value = _value_expr(spec, schema, clean)
        value_dtype = _value_dtype(spec, schema)
        sum_dtype = _out_dtype("sum", value_dtype)
        for out in spec.outputs:
            if _is_time(out.window):
                expr = _time_window(value, spec, out, sum_dtype, ctx.time_column)
            else:
                expr = _row_window(value, spec, out, sum_dtype)
            if keys:
                expr = expr.over(keys)
            exprs.append(expr.cast(declared[out.name]).alias(out.name))
    by = [clean.get(c, pl.col(c)) for c in order]
    return frame.sort(by, maintain_order=True).select(*base, *exprs)


def input_columns(params: Params) -> list[str]:
    """The columns whose values are aggregated: each spec's value, indicator and where column
    (``tie_break`` columns only order rows)."""
    plan = parse_params(params)
    out: list[str] = []
    for spec in plan.specs:
        for col in (spec.column, spec.where.column if spec.where else None):
            if col is not None and col not in out:
                out.append(col)
    return out


ROLLING = Transform(
    name=NAME,
    fn=_rolling,
    output_columns=output_columns,
    description="Per-entity rolling mean/std/min/max/sum/count over the last N rows or a period",
    lookback=lookback,
    input_columns=input_columns,
)


@hookimpl
def register_transforms(register: Any) -> None:
    register(ROLLING)
