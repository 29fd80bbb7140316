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

_AGGS = {"count", "sum", "min", "max", "mean"}
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
                or not (isinstance(out.window, int) or out.window == EXPANDING)):
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
        value = clean(spec.column)
        if schema[spec.column] == pl.Boolean:
            value = value.cast("int")
        if out.window == EXPANDING:
            lo = Window.unboundedPreceding
            hi = Window.currentRow if spec.include_current else -1
        else:
            n = int(out.window)
            lo, hi = (-(n - 1), 0) if spec.include_current else (-n, -1)
        w = by_entity.rowsBetween(lo, hi)
        count = F.count(value).over(w)
        enough = count >= spec.min_periods
        value_dtype = _value_dtype(spec, schema)
        if out.agg == "count":
            expr = count
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
