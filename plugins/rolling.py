"""The ``rolling`` transform: per-entity window aggregations over the last N rows or a time period.

One call produces many columns: every (window, aggregation) pair of one *feature spec*, and a
params object may hold several specs (``features``) that share one sort of the input.

Params are declared once, in ``rolling_params`` (``SPEC``, ``ITEM``): validation, defaults and the
reference page ``docs/transforms.md`` all come from there. Either one spec at the top level, or
``{"features": [spec, ...]}`` for several specs that share one sort.

Why ``include_current`` defaults to ``true``: that is what "the mean over the last 5 races"
means. The window ends with the row, and the row's value becomes available with the row (its
``available_at``), so the point-in-time rule already keeps it from a prediction made before that.
At a race's start (cutoff = green flag) the newest available result row is the previous race's,
whose window covers races n-5..n-1. ``false`` excludes the row's own value (races n-6..n-2 at
that cutoff: a second lag on top of the point-in-time rule). (Before 0.2.0 the default was
``false``.)

Semantics, per entity (rows with equal key values; composite keys compared column by column):

- Order: rows are ordered by ``(event_timestamp, available_at, *tie_break)``, then by the
  columns the specs read (value, indicator and where columns, in spec order; NaN as null, nulls
  first). Rows still tied are identical in everything the transform reads, so the output never
  depends on the input's row order.
- Row window ``N``: the N rows immediately before the current row in that order
  (``include_current=false``), or the N rows ending at the current row (``true``).
  At the start of an entity the window holds what exists (partial windows; ``min_periods``
  defaults to 1).
- ``"all"``: the row window without a limit, every row before the current row in that order
  (``include_current=false``) or ending at it (``true``). Rows at the same instant ``t`` that
  sort before the current row are in it (they are earlier rows), unlike in a time window.
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

from collections.abc import Mapping
from typing import Any

import polars as pl
from featurestore_plugins.rolling_params import (  # noqa: F401 - re-exported
    _EXPANDING_ROWS,
    AGGS,
    EXPANDING,
    ITEM,
    NAME,
    SPEC,
    Output,
    Plan,
    Spec,
    _fail,
    _is_time,
    parse_params,
)

from featurestore.conditions import (
    check_condition,
    compare,
)
from featurestore.hookspecs import hookimpl
from featurestore.transforms import (
    EVENT_TIMESTAMP,
    Params,
    Transform,
    TransformContext,
)
from featurestore.windowdefs import output_dtype  # the window transform's dtype rules

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
            declared[out.name] = output_dtype(out.agg, value_dtype)
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
        sum_dtype = output_dtype("sum", value_dtype)
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
