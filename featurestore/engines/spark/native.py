"""First-party ``rolling`` as Spark window expressions (no Python worker computes the values).

Every ``rolling`` param runs here (``field`` has its own module, ``native_field``):

- row windows (``N`` rows or ``"all"``): per entity, rows ordered as the Polars transform orders
  them (times, ``tie_break``, then the value and ``where`` columns, nulls first; NaN read as
  null), each output an aggregate over the ROWS frame ``N-1`` rows back to the row (``N`` back to
  one back without the current row);
- time windows (``"30m"``, ``"1h30s"``, ...): the RANGE frame ``[t - P + 1us, t - 1us]`` over the
  event time in microseconds, i.e. ``(t - P, t)`` without the rows at the row's own instant, with
  the row's own value merged in for ``include_current`` as the Polars code merges it. Only when
  the event time is a Datetime of at most microsecond precision and the period a whole number of
  microseconds (``d``/``w`` only in UTC or without a zone, where Polars' calendar day is 24 h);
  other periods return None and run through the Polars code per entity;
- ``count sum min max mean std`` (sample std, null below two values), ``min_periods``,
  ``indicator`` (Int32 0/1) and ``where`` (the value nulled where the condition is not true).

The materializer still verifies causality per entity with ``featurestore.verification``, given
these values as the full run's output: the Polars code's reruns on truncated inputs must agree
with them (floats within the verifier's tolerance), so a native value that differs from the
Polars transform's is caught as well as a leak.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP

_AGGS = {"count", "sum", "min", "max", "mean", "std"}
_UNIT_US = {"us": 1, "ms": 1_000, "s": 1_000_000, "m": 60_000_000, "h": 3_600_000_000}
_SPARK_TYPES = {pl.Int8: "tinyint", pl.Int16: "smallint", pl.Int32: "int", pl.Int64: "bigint",
                pl.Float32: "float", pl.Float64: "double"}


def native_rolling(frame: Any, params: Any, keys: Sequence[str],
                   schema: Mapping[str, pl.DataType]) -> Any | None:
    """The ``rolling`` output of the Spark DataFrame ``frame`` (store layout), or None when the
    params need the Polars code (see the module doc)."""
    from featurestore_plugins.rolling import EXPANDING, _declare, _value_dtype
    from featurestore_plugins.rolling_params import parse_params
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from featurestore.windowdefs import output_dtype

    plan = parse_params(params)
    declared = _declare(plan, schema)
    for _, out in plan.outputs:
        if (out.agg not in _AGGS
                or not (isinstance(out.window, int) or out.window == EXPANDING
                        or _period_us(out.window, schema) is not None)):
            return None
    if any(_SPARK_TYPES.get(type(d)) is None for d in declared.values()):  # type: ignore[call-overload]
        return None
    base = [*keys, EVENT_TIMESTAMP, AVAILABLE_AT]
    order_cols = [*base[len(keys):], *[c for c in plan.tie_break if c not in base]]
    for spec in plan.specs:
        for col in (spec.column, spec.where.column if spec.where else spec.column):
            if col not in order_cols and col not in keys:
                order_cols.append(col)

    def clean(col: str) -> Any:
        return nan_as_null(col, schema)

    order = [clean(c).asc_nulls_first() for c in order_cols]
    by_entity = Window.partitionBy(*keys).orderBy(*order)
    exprs = []
    for spec, out in plan.outputs:
        value_dtype = _value_dtype(spec, schema)
        value = clean(spec.column)
        if spec.indicator is not None:
            value = _compare(value, spec.indicator).cast("int")
        elif schema[spec.column] == pl.Boolean:
            value = value.cast("int")
        if spec.where is not None:
            value = F.when(_compare(clean(spec.where.column), spec.where), value)
        period = None if isinstance(out.window, int) or out.window == EXPANDING else \
            _period_us(out.window, schema)
        if period is not None:
            expr = _time_window(value, spec, out.agg, period, keys, schema, value_dtype)
            spark_type = _SPARK_TYPES[type(declared[out.name])]  # type: ignore[index]
            exprs.append(expr.cast(spark_type).alias(out.name))
            continue
        if out.window == EXPANDING:
            lo = Window.unboundedPreceding
            hi = Window.currentRow if spec.include_current else -1
        else:
            n = int(out.window)
            lo, hi = (-(n - 1), 0) if spec.include_current else (-n, -1)
        w = by_entity.rowsBetween(lo, hi)
        count = F.count(value).over(w)
        enough = count >= spec.min_periods
        if out.agg == "count":
            expr = count
        elif out.agg == "std":
            expr = F.when(count >= max(spec.min_periods, 2),
                          F.stddev_samp(value.cast("double")).over(w))
        elif out.agg == "mean":
            expr = F.when(enough, F.avg(value.cast("double")).over(w))
        elif out.agg == "sum":
            sum_type = _SPARK_TYPES[type(output_dtype("sum", value_dtype))]  # type: ignore[index]
            expr = F.when(enough, F.sum(value.cast(sum_type)).over(w))
        elif out.agg == "min":
            expr = F.when(enough, F.min(value).over(w))
        else:
            expr = F.when(enough, F.max(value).over(w))
        spark_type = _SPARK_TYPES[type(declared[out.name])]  # type: ignore[index]
        exprs.append(expr.cast(spark_type).alias(out.name))
    return frame.select(*[F.col(c) for c in base], *exprs)


def _period_us(window: str, schema: Mapping[str, pl.DataType]) -> int | None:
    """A time window's length in microseconds, when Spark can take it as a RANGE offset over
    the event time in microseconds exactly as Polars' ``rolling_*_by`` takes it: a Datetime
    event time of at most microsecond precision, a whole number of microseconds, and days or
    weeks (calendar units in Polars) only in UTC or without a time zone."""
    from featurestore_plugins.rolling_params import _DURATION_PART

    dtype = schema.get(EVENT_TIMESTAMP)
    if not isinstance(dtype, pl.Datetime) or dtype.time_unit == "ns":
        return None
    total = 0
    for match in _DURATION_PART.finditer(window):
        n, unit = int(match.group(1)), match.group(2)
        if unit in ("d", "w"):
            if dtype.time_zone not in (None, "UTC"):
                return None
            total += n * 86_400_000_000 * (7 if unit == "w" else 1)
        elif unit == "ns":
            return None
        else:
            total += n * _UNIT_US[unit]
    return total or None


def _time_window(value: Any, spec: Any, agg: str, period: int, keys: Sequence[str],
                 schema: Mapping[str, pl.DataType], value_dtype: pl.DataType) -> Any:
    """``rolling``'s time window ``(t - P, t)`` (plus the row with ``include_current``): the
    RANGE frame ``[t - P + 1us, t - 1us]`` over the event time in microseconds, which leaves out
    every row at the row's own instant, merged with the row's own value as the Polars code
    merges it (sums and counts added, min/max of both, std by Chan's update)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from featurestore.windowdefs import output_dtype

    t = F.unix_micros(F.col(EVENT_TIMESTAMP).cast("timestamp"))
    w = Window.partitionBy(*keys).orderBy(t).rangeBetween(-(period - 1), -1)
    present = F.when(value.isNotNull(), F.lit(1)).otherwise(F.lit(0)).cast("bigint")
    n_before = F.count(value).over(w)
    count = n_before + present if spec.include_current else n_before
    if agg == "count":
        return count
    enough = count >= max(spec.min_periods, 2 if agg == "std" else 1)
    x = value.cast("double")
    sum_type = _SPARK_TYPES[type(output_dtype("sum", value_dtype))]  # type: ignore[index]
    before = {"mean": F.avg(x), "std": F.stddev_samp(x), "sum": F.sum(value.cast(sum_type)),
              "min": F.min(value), "max": F.max(value)}
    if not spec.include_current:
        return F.when(enough, before[agg].over(w))
    if agg in ("min", "max"):
        pick = F.least if agg == "min" else F.greatest
        return F.when(enough, pick(before[agg].over(w), value))
    if agg == "sum":
        total = F.coalesce(before["sum"].over(w), F.lit(0).cast(sum_type)) + \
            F.coalesce(value.cast(sum_type), F.lit(0).cast(sum_type))
        return F.when(enough, total)
    total = F.coalesce(F.sum(x).over(w), F.lit(0.0)) + F.coalesce(x, F.lit(0.0))
    if agg == "mean":
        return F.when(enough, total / count)
    n_a = n_before.cast("double")
    mean_a = F.avg(x).over(w)
    m2_a = F.coalesce(F.pow(F.stddev_samp(x).over(w), 2) * (n_a - 1.0), F.lit(0.0))
    m2 = m2_a + F.coalesce(F.pow(x - mean_a, 2) * n_a / (n_a + 1.0), F.lit(0.0))
    return F.when(enough, F.sqrt(m2 / (count.cast("double") - 1.0)))


def _compare(value: Any, cond: Any) -> Any:
    """``featurestore.conditions.compare`` as a Spark expression: ``value <op> operand``, null
    where ``value`` is null (``ignore_case`` compares the lower-cased text)."""
    from pyspark.sql import functions as F

    operand = cond.value
    if cond.ignore_case:
        value = F.lower(value.cast("string"))
        operand = (tuple(v.lower() for v in operand) if isinstance(operand, tuple)
                   else operand.lower())
    if cond.op == "in":
        return F.when(value.isNotNull(), value.isin(list(operand)))
    lit = F.lit(operand)
    return {"eq": value == lit, "ne": value != lit, "lt": value < lit, "le": value <= lit,
            "gt": value > lit, "ge": value >= lit}[cond.op]


def nan_as_null(col: str, schema: Mapping[str, pl.DataType]) -> Any:
    """Column ``col`` with NaN read as null (the first-party transforms' rule) when it is a
    float column; the column as is otherwise."""
    from pyspark.sql import functions as F

    c = F.col(col)
    return F.when(~F.isnan(c), c) if schema[col].is_float() else c
