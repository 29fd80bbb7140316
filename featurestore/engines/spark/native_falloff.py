"""The ``falloff`` transform as Spark window expressions (no Python worker computes the values).

Per partition (keys and ``group_by``), rows in the Polars transform's total order (times, lap,
group, lap time, pit, caution; NaN as null, nulls first), every running quantity a ROWS frame from
the partition's (or stint's) first row to the row, so tied rows are numbered as Polars numbers
them: the pit flag (with ``jump_seconds``: against the previous row's lap time), the stint (a
running count of stint starts), the tyre age, the clean-lap index ``k``. Over ``k`` (a RANGE
frame, which takes in the non-clean rows that share a ``k`` and add nulls):

- ``deg_slope``: least squares from window sums of x (tyre age), y (lap time), x², xy over the
  last ``slope_window`` clean laps, x and y centred on the stint's first clean lap as the Polars
  code centres them (x stays integral, so an all-equal window has a denominator of exactly 0);
- ``slow_lap``: the median (sorted collected values, the mean of the two middle ones) of the
  last ``slow_window`` clean laps strictly before the row.

Every param is supported. The materializer verifies the values per entity against the Polars
code's reruns, as for ``rolling`` and ``field``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from featurestore.engines.spark.native import nan_as_null
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP

_SPARK_TYPES = {pl.Int32: "int", pl.Float64: "double", pl.Boolean: "boolean"}


def native_falloff(frame: Any, params: Any, keys: Sequence[str],
                   schema: Mapping[str, pl.DataType]) -> Any:
    """The ``falloff`` output of the Spark DataFrame ``frame`` (store layout, one row per input
    row, in no particular order)."""
    from featurestore_plugins.falloff import _declare, parse_params
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    p = parse_params(params)
    declared = _declare(p, schema)
    keys = list(keys)
    base = [*keys, EVENT_TIMESTAMP, AVAILABLE_AT]
    part = [*keys, *[c for c in p.group_by if c not in keys]]
    order = list(base)
    for col in (p.lap_column, *p.group_by, p.lap_time_column, p.pit_column, p.caution_column):
        if col is not None and col not in order:
            order.append(col)

    def clean(col: str) -> Any:
        return nan_as_null(col, schema)

    def flag(col: str | None) -> Any:
        return F.lit(False) if col is None else F.coalesce(F.col(col).cast("boolean"),
                                                           F.lit(False))

    sort = [(F.col(c) if c in base else clean(c)).asc_nulls_first() for c in order]
    by_part = Window.partitionBy(*part).orderBy(*sort)
    upto = by_part.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    lt = clean(p.lap_time_column).cast("double")
    caution, pit = flag(p.caution_column), flag(p.pit_column)
    if p.jump_seconds is not None:
        jump = (lt - F.lag(lt, 1).over(by_part)) > F.lit(float(p.jump_seconds))
        pit = pit | F.coalesce(~caution & jump, F.lit(False))
    df = frame.select(*base, *[c for c in order if c not in base],
                      lt.alias("_fo_lt"), pit.alias("_fo_pit"), caution.alias("_fo_caution"))
    new_stint = F.coalesce(F.col("_fo_pit") & ~F.lag("_fo_pit", 1).over(by_part), F.lit(False))
    df = df.withColumn("_fo_stint", F.sum(new_stint.cast("int")).over(upto) + 1)
    stint = [*part, "_fo_stint"]
    by_stint = Window.partitionBy(*stint).orderBy(*sort)
    s_upto = by_stint.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    s_all = by_stint.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    if p.lap_column is not None:
        lap = F.col(p.lap_column).cast("bigint")
        age = lap - F.first(lap, ignorenulls=True).over(s_all) + 1
    else:
        age = F.row_number().over(by_stint).cast("bigint")
    is_clean = ~F.col("_fo_pit") & ~F.col("_fo_caution") & F.col("_fo_lt").isNotNull()
    if p.lap_column is not None:
        is_clean = is_clean & F.col(p.lap_column).isNotNull()
    df = df.withColumn("_fo_age", age).withColumn("_fo_clean", is_clean)
    df = (df.withColumn("_fo_k", F.sum(F.col("_fo_clean").cast("bigint")).over(s_upto))
          .withColumn("_fo_clean_lt", F.when(F.col("_fo_clean"), F.col("_fo_lt"))))
    df = df.withColumn("_fo_kb", F.col("_fo_k") - F.col("_fo_clean").cast("bigint"))
    lt_c, k, clean_lt = F.col("_fo_lt"), F.col("_fo_k"), F.col("_fo_clean_lt")

    exprs: dict[str, Any] = {"stint": F.col("_fo_stint"), "tyre_age": F.col("_fo_age"),
                             "delta_best": lt_c - F.min(clean_lt).over(s_upto)}
    n = p.first_n
    first_sum = F.sum(F.coalesce(F.when(F.col("_fo_clean") & (k <= n), lt_c),
                                 F.lit(0.0))).over(s_upto)
    first_count = F.least(k, F.lit(n).cast("bigint"))
    first_mean = F.when(first_count >= (1 if p.first_n_partial else n), first_sum / first_count)
    exprs["delta_first_n"] = lt_c - first_mean

    x = F.when(F.col("_fo_clean"), F.col("_fo_age")).cast("double")
    x = x - F.first(x, ignorenulls=True).over(s_all)
    y = clean_lt - F.first(clean_lt, ignorenulls=True).over(s_all)
    by_k = Window.partitionBy(*stint).orderBy("_fo_k")
    w = by_k.rangeBetween(-(p.slope_window - 1), 0)
    count = F.least(k, F.lit(p.slope_window).cast("bigint")).cast("double")
    sx, sy = F.sum(x).over(w), F.sum(y).over(w)
    sxx, sxy = F.sum(x * x).over(w), F.sum(x * y).over(w)
    denominator = count * sxx - sx * sx
    exprs["deg_slope"] = F.when((count >= p.slope_min_laps) & (denominator > 0),
                                (count * sxy - sx * sy) / denominator)

    # Clean laps strictly before the row: those with kb in [kb - W, kb).
    by_kb = Window.partitionBy(*stint).orderBy("_fo_kb").rangeBetween(-p.slow_window, -1)
    prior_values = F.array_sort(F.collect_list(clean_lt).over(by_kb))
    size = F.size(prior_values)
    lo = F.get(prior_values, F.floor((size - 1) / 2).cast("int"))
    hi = F.get(prior_values, F.floor(size / 2).cast("int"))
    median = (lo + hi) / 2
    prior = F.least(F.col("_fo_kb"), F.lit(p.slow_window).cast("bigint"))
    exprs["slow_lap"] = F.when(prior >= p.slow_min_laps, lt_c > F.lit(float(p.slow_k)) * median)

    outputs = [exprs[kind].cast(_SPARK_TYPES[type(declared[name])]).alias(name)  # type: ignore[index]
               for kind, name in p.outputs.items()]
    return df.select(*[F.col(c) for c in base], *outputs)
