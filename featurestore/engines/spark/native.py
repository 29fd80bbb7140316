"""First-party transforms as Spark window expressions (no Python worker computes the values).

``rolling`` with row windows (``N`` rows or ``"all"``), the aggregations ``count sum min max
mean``, ``include_current``, ``min_periods`` and ``tie_break``, without ``indicator`` or ``where``,
is computed here: per entity, rows ordered as the Polars transform orders them (times,
``tie_break``, then the value columns, nulls first; NaN read as null), each output an aggregate
over the frame ``N-1`` rows back to the row (``N`` back to one back without the current row),
null below ``min_periods`` non-null values. Other params return None and run through the
transform's Polars code per entity (``materialize.run_transform``).

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
    from featurestore_plugins.rolling import EXPANDING, _declare, _out_dtype, _value_dtype
    from featurestore_plugins.rolling_params import parse_params
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    plan = parse_params(params)
    declared = _declare(plan, schema)
    for spec, out in plan.outputs:
        if (spec.indicator is not None or spec.where is not None or out.agg not in _AGGS
                or not (isinstance(out.window, int) or out.window == EXPANDING
                        or _period_us(out.window, schema) is not None)):
            return None
    if any(_SPARK_TYPES.get(type(d)) is None for d in declared.values()):  # type: ignore[call-overload]
        return None
    base = [*keys, EVENT_TIMESTAMP, AVAILABLE_AT]
    order_cols = [*base[len(keys):], *[c for c in plan.tie_break if c not in base]]
    for spec in plan.specs:
        if spec.column not in order_cols and spec.column not in keys:
            order_cols.append(spec.column)

    def clean(col: str) -> Any:
        c = F.col(col)
        return F.when(~F.isnan(c), c) if schema[col].is_float() else c

    order = [clean(c).asc_nulls_first() for c in order_cols]
    by_entity = Window.partitionBy(*keys).orderBy(*order)
    exprs = []
    for spec, out in plan.outputs:
        value_dtype = _value_dtype(spec, schema)
        value = clean(spec.column)
        if schema[spec.column] == pl.Boolean:
            value = value.cast("int")
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
            sum_type = _SPARK_TYPES[type(_out_dtype("sum", value_dtype))]  # type: ignore[index]
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
    from featurestore_plugins.rolling import _out_dtype
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    t = F.unix_micros(F.col(EVENT_TIMESTAMP).cast("timestamp"))
    w = Window.partitionBy(*keys).orderBy(t).rangeBetween(-(period - 1), -1)
    present = F.when(value.isNotNull(), F.lit(1)).otherwise(F.lit(0)).cast("bigint")
    n_before = F.count(value).over(w)
    count = n_before + present if spec.include_current else n_before
    if agg == "count":
        return count
    enough = count >= max(spec.min_periods, 2 if agg == "std" else 1)
    x = value.cast("double")
    sum_type = _SPARK_TYPES[type(_out_dtype("sum", value_dtype))]  # type: ignore[index]
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
