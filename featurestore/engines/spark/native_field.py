"""The ``field`` transform as Spark window expressions (no Python worker computes the values).

A row's comparison set (plugins/field.py) is the rows of its bucket (``group_by`` then ``at``
columns) whose ``available_at`` is at or before its own: exactly a window partitioned by the
bucket, ordered by ``available_at``, with the RANGE frame from the start to the current row
(a RANGE frame's current row takes in its peers, the rows with equal ``available_at``). Over it:

- ``count``: the non-null values (NaN read as null); ``delta_mean``, ``delta_best`` and
  ``gap_to_leader``: the row's value (as a double) minus the frame's mean, min or max;
- ``rank``, ``percentile`` and ``delta_median`` need the values themselves: the frame's
  non-null values are collected (``collect_list`` skips nulls) and counted below / above the
  row's own with ``filter``, or sorted for the median (the mean of the two middle values, as
  the Polars transform and its oracle take it). That is quadratic in a bucket's size, which is
  a field at one moment (a lap of 40 cars), not an entity's history.

A row with a null in a bucket column gets nulls everywhere (``count`` too); a row whose own value
is null, or whose set holds fewer than ``min_count`` values, gets null for every output but
``count``; ``percentile`` needs two values. Every param of ``field`` is supported, so the native
path replaces the per-group Polars run whenever the value columns have a Spark numeric type;
the materializer still verifies the values per group against the Polars code's reruns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from featurestore.engines.spark.native import nan_as_null
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP

_SPARK_TYPES = {pl.Int32: "int", pl.Int64: "bigint", pl.Float64: "double"}


def native_field(frame: Any, params: Any, keys: Sequence[str],
                 schema: Mapping[str, pl.DataType]) -> Any | None:
    """The ``field`` output of the Spark DataFrame ``frame`` (store layout: one row per input
    row, in no particular order), or None when a value column's dtype has no exact Spark
    counterpart (a 64-bit unsigned integer) and the Polars code must run."""
    from featurestore_plugins.field import _declare, _statistic, parse_params
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    p = parse_params(params)
    declared = _declare(p, schema)
    if any(schema[c] == pl.UInt64 for c in p.value_columns):
        return None
    bucket = p.bucket
    base = [*keys, EVENT_TIMESTAMP, AVAILABLE_AT]
    w = (Window.partitionBy(*bucket).orderBy(F.col(AVAILABLE_AT).asc_nulls_last())
         .rangeBetween(Window.unboundedPreceding, Window.currentRow))
    in_group = F.lit(True)
    for c in bucket:
        in_group = in_group & F.col(c).isNotNull()

    def clean(col: str) -> Any:
        return nan_as_null(col, schema)

    # Per value column, the frame's aggregates, computed once however many outputs read them.
    tmp: dict[str, Any] = {}
    needs_list = {o.column for o in p.outputs if o.kind in ("rank", "percentile", "delta_median")}
    for i, col in enumerate(p.value_columns):
        value = clean(col)
        tmp[f"_fn_n{i}"] = F.count(value).over(w)
        if col in needs_list:
            tmp[f"_fn_l{i}"] = F.collect_list(value).over(w)
        for o in p.outputs:
            stat = _statistic(o) if o.column == col else None
            if stat in ("mean", "min", "max"):
                fn = {"mean": F.avg, "min": F.min, "max": F.max}[stat]
                tmp[f"_fn_{stat}{i}"] = fn(value.cast("double")).over(w)
    read = [c for c in dict.fromkeys([*bucket, *p.value_columns]) if c not in base]
    staged = frame.select(*base, *read,
                          *[e.alias(n) for n, e in tmp.items()])

    index = {c: i for i, c in enumerate(p.value_columns)}
    exprs = []
    for o in p.outputs:
        i = index[o.column]
        own, n = clean(o.column), F.col(f"_fn_n{i}")
        if o.kind == "count":
            expr = n
        else:
            values = F.col(f"_fn_l{i}")
            below, above = _count_below(values, own), _count_above(values, own)
            better, worse = (above, below) if o.descending else (below, above)
            if o.kind == "rank":
                expr = better + 1
            elif o.kind == "percentile":
                expr = F.when(n >= 2, worse.cast("double") / (n - 1).cast("double"))
            elif o.kind == "delta_median":
                ordered = F.array_sort(values)
                # 0-based middle positions; ``get`` gives null outside the array (n = 0).
                lo = F.get(ordered, F.floor((n - 1) / 2).cast("int"))
                hi = F.get(ordered, F.floor(n / 2).cast("int"))
                expr = own.cast("double") - (lo.cast("double") + hi.cast("double")) / 2
            else:
                expr = own.cast("double") - F.col(f"_fn_{_statistic(o)}{i}")
            expr = F.when(own.isNotNull() & (n >= p.min_count), expr)
        spark_type = _SPARK_TYPES[type(declared[o.name])]  # type: ignore[index]
        exprs.append(F.when(in_group, expr).cast(spark_type).alias(o.name))
    return staged.select(*[F.col(c) for c in base], *exprs)


# Spark reads a lambda's arity (``filter``'s two-argument form passes the index): one argument.
def _count_below(values: Any, own: Any) -> Any:
    from pyspark.sql import functions as F

    return F.size(F.filter(values, lambda x: x < own))


def _count_above(values: Any, own: Any) -> Any:
    from pyspark.sql import functions as F

    return F.size(F.filter(values, lambda x: x > own))
