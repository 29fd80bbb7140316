"""Point-in-time retrieval on Spark, natively: the artifact files are read and joined by Spark.

The contract is ``featurestore.retrieval``'s, checked the same way: the query and every view's
schema (the Parquet footer) go through the Polars engine's own planner, so key alignment,
column clashes, cutoff time zones and their errors are identical. Then, per view:

1. the artifact is read by Spark (``artifact_files``), keeping the key columns, ``available_at``
   and ``event_timestamp`` as microseconds, the file order of each row (``_metadata.row_index``,
   ingestion order for full ties) and the feature columns packed in one struct;
2. query rows (their key columns aligned to the view's, their cutoff as a microsecond bound) and
   view rows are unioned and sorted per key by time; a view row sorts before a query row of the
   same time, and among view rows of one ``available_at`` the later ``event_timestamp`` (nulls
   first) and then the later file row come last. The last view row before each query row
   (``last(..., ignorenulls)`` over a window per key) is its value: the newest row available
   before the cutoff, with the tie rule;
3. with ``ttl`` a value available before ``cutoff - ttl`` is dropped.

Cutoffs finer than a microsecond are exact: ``available_at < T`` is ``available_at <= ceil(T) -
1µs`` and ``available_at <= T`` is ``available_at <= floor(T)`` in whole microseconds.

``historical_features`` returns the joined Spark DataFrame (query row number and the features),
for pipelines that stay on the cluster; ``point_in_time_join`` collects it through Arrow at the
very end and returns the query with the features added, in query order, as a Polars frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
from polars.exceptions import ComputeError, InvalidOperationError

from featurestore.errors import DataError
from featurestore.retrieval_plan import (
    ViewFrame,
    ViewPlan,
    availability_column,
    internal_prefix,
    normalize_views,
    plan_views,
    timestamp_unit,
    utc_instant,
)
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP

__all__ = ["historical_features", "point_in_time_join", "read_artifact"]


def read_artifact(files: Sequence[Path | str] | Path | str) -> Any:
    """A Spark DataFrame of an artifact's rows (its file, or its part files in row order, as
    ``featurestore.artifacts.artifact_files`` lists them) with their order: ``__fs_file`` (the
    file's position) and ``__fs_pos`` (the row's position in it)."""
    from pyspark.sql import functions as F

    from featurestore.engines.spark.session import spark_session

    spark = spark_session()
    listed = [files] if isinstance(files, str | Path) else list(files)
    frames = [spark.read.parquet(str(f)).select("*", F.lit(i).alias("__fs_file"),
                                               F.col("_metadata.row_index").alias("__fs_pos"))
              for i, f in enumerate(listed)]
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out


def _instant(column: str, dtype: pl.DataType, unit: str) -> Any:
    """A UTC Datetime/Date column as whole ``unit``s since the epoch (a Spark expression); the
    values are exact: ``unit`` is never coarser than the column's own."""
    from pyspark.sql import functions as F

    if isinstance(dtype, pl.Datetime) and dtype.time_unit == "ns":
        return F.col(column)  # read as the raw nanosecond count (spark.sql.legacy...nanosAsLong)
    ts = F.col(column).cast("timestamp")
    if unit == "ms":
        return F.unix_millis(ts)
    return F.unix_micros(ts) * (1000 if unit == "ns" else 1)


def _query_bounds(q: pl.DataFrame, plans: Sequence[ViewPlan], cutoff: str,
                  cutoff_timezone: str | None, inclusive: bool, ttl: timedelta | None,
                  prefix: str) -> list[pl.Series]:
    """Per view and query row: the last ``available_at`` a value may have and, with ``ttl``,
    the first, as integers in the view's comparison unit (the Polars engine's: the finer of the
    cutoff's and the view's), so the comparisons are the Polars engine's, exactly."""
    from featurestore.retrieval_packed import _ttl_units

    tz = cutoff_timezone or "UTC"
    try:
        cut = q.select(utc_instant(pl.col(cutoff), q.schema[cutoff], tz)).to_series()
    except (ComputeError, InvalidOperationError) as exc:
        raise DataError(
            f"query cutoff column {cutoff!r}: cannot read naive times in zone {tz!r}: {exc}"
        ) from exc
    out = []
    for plan in plans:
        t = cut.dt.cast_time_unit(plan.unit).to_physical().cast(pl.Int64)  # type: ignore[arg-type]
        out.append((t if inclusive else t - 1).alias(f"{prefix}last{plan.index}"))
        if ttl is not None:
            out.append((t - min(_ttl_units(ttl, plan.unit), 2**62))
                       .alias(f"{prefix}first{plan.index}"))
    return out


def _spark_query(q: pl.DataFrame, plans: Sequence[ViewPlan], bounds: list[pl.Series],
                 prefix: str) -> Any:
    """The query's part Spark needs: row number, every view's aligned keys and time bounds."""
    from featurestore.engines.spark.session import to_spark

    cols = [pl.int_range(pl.len(), dtype=pl.Int64).alias(f"{prefix}row"),
            *[pl.lit(b) for b in bounds]]
    for plan in plans:
        cols += [p.query_expr().alias(f"{p.internal}_{plan.index}") for p in plan.pairs]
    return to_spark(q.select(cols))


def _join_one(sq: Any, plan: ViewPlan, files: Sequence[Path | str] | Path | str, prefix: str,
              with_availability: bool) -> Any:
    """Spark DataFrame (row, features..., availability...) of one view, one row per matched
    query row."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    view = plan.view
    keys = [f"{p.internal}_{plan.index}" for p in plan.pairs]
    t, kind, et, fpos, pos, val = (f"{prefix}{n}" for n in ("t", "kind", "et", "file", "pos",
                                                            "val"))
    row = f"{prefix}row"
    last, first = f"{prefix}last{plan.index}", f"{prefix}first{plan.index}"
    art = read_artifact(files)
    schema = view.frame.collect_schema()
    # Event times only order ties within this view: their own exact unit does.
    et_dtype = schema.get(EVENT_TIMESTAMP)
    et_col = (F.lit(None).cast("long") if et_dtype is None else _instant(
        EVENT_TIMESTAMP, et_dtype, "ns" if timestamp_unit(et_dtype) == "ns" else "us"))
    feats = list(dict.fromkeys(c for _, c, _ in plan.outputs))
    qtypes = dict(sq.dtypes)
    fv = art.select(
        *[F.col(p.frame_col).cast(qtypes[k]).alias(k) for p, k in zip(plan.pairs, keys,
                                                                       strict=True)],
        _instant(AVAILABLE_AT, plan.av_dtype, plan.unit).alias(t),
        F.lit(0).alias(kind), et_col.alias(et), F.col("__fs_file").alias(fpos),
        F.col("__fs_pos").alias(pos),
        F.struct(_instant(AVAILABLE_AT, plan.av_dtype, plan.unit).alias("__av"),
                 *[F.col(c).alias(f"c{i}") for i, c in enumerate(feats)]).alias(val),
        F.lit(None).cast("long").alias(row), F.lit(None).cast("long").alias(first),
    ).where(F.col(t).isNotNull() & _all_not_null(keys))
    qv = sq.where(F.col(last).isNotNull() & _all_not_null(keys)).select(
        *keys, F.col(last).alias(t), F.lit(1).alias(kind), F.lit(None).cast("long").alias(et),
        F.lit(None).cast("long").alias(fpos), F.lit(None).cast("long").alias(pos),
        F.lit(None).cast(fv.schema[val].dataType).alias(val), F.col(row),
        (F.col(first) if first in sq.columns else F.lit(None).cast("long")).alias(first))
    window = (Window.partitionBy(*keys)
              .orderBy(F.col(t), F.col(kind), F.col(et).asc_nulls_first(), F.col(fpos),
                       F.col(pos))
              .rowsBetween(Window.unboundedPreceding, Window.currentRow))
    best = F.last(F.col(val), ignorenulls=True).over(window)
    joined = fv.unionByName(qv).select(F.col(row), F.col(kind), F.col(first), best.alias(val))
    joined = joined.where(F.col(kind) == 1)
    fresh = F.col(f"{val}.__av").isNotNull()
    if first in sq.columns:
        fresh = fresh & (F.col(f"{val}.__av") >= F.col(first))
    out = [F.col(row)]
    for name, c, _ in plan.outputs:
        out.append(F.when(fresh, F.col(f"{val}.c{feats.index(c)}")).alias(name))
    if with_availability:
        out += [F.when(fresh, F.col(f"{val}.__av")).alias(availability_column(name))
                for name, _, _ in plan.outputs]
    return joined.select(*out)


def _all_not_null(columns: Sequence[str]) -> Any:
    from pyspark.sql import functions as F

    cond = F.lit(True)
    for c in columns:
        cond = cond & F.col(c).isNotNull()
    return cond


def historical_features(query: pl.DataFrame, views: Sequence[ViewFrame],
                        files: Sequence[Sequence[Path | str] | Path | str], *,
                        cutoff: str = EVENT_TIMESTAMP,
                        inclusive: bool = False, ttl: timedelta | None = None,
                        cutoff_timezone: str | None = None, with_availability: bool = False
                        ) -> tuple[Any, list[ViewPlan], str]:
    """The join as a Spark DataFrame: ``<prefix>row`` (the query row number) and each view's
    output columns (availability as an integer in the view's comparison unit, ``plan.unit``);
    plus the plans and the prefix.

    Only query rows some view matched appear; rows absent get nulls."""
    vs = normalize_views(views)
    if len(files) != len(vs):
        raise ValueError(f"{len(vs)} views but {len(files)} artifacts' files")
    prefix = internal_prefix(query.columns, vs)
    plans = [p for p in plan_views(query.schema, vs, cutoff, cutoff_timezone, with_availability, ttl,
                              prefix) if p.outputs]
    if not plans or query.height == 0:
        return None, plans, prefix
    bounds = _query_bounds(query, plans, cutoff, cutoff_timezone, inclusive, ttl, prefix)
    sq = _spark_query(query, plans, bounds, prefix).cache()
    row = f"{prefix}row"
    result = None
    for plan in plans:
        part = _join_one(sq, plan, files[plan.index], prefix, with_availability)
        result = part if result is None else result.join(part, on=row, how="full")
    return result, plans, prefix


def point_in_time_join(query: pl.DataFrame | pl.LazyFrame, views: ViewFrame | Sequence[ViewFrame],
                       files: Sequence[Sequence[Path | str] | Path | str], *,
                       cutoff: str = EVENT_TIMESTAMP,
                       inclusive: bool = False, ttl: timedelta | None = None,
                       cutoff_timezone: str | None = None,
                       with_availability: bool = False) -> pl.DataFrame:
    """``featurestore.retrieval.point_in_time_join`` computed by Spark from the artifacts'
    files (``files[i]``: view ``i``'s file or part files in row order): the same frame, column
    for column and dtype for dtype."""
    from featurestore.engines.spark.session import to_polars

    q = query.collect() if isinstance(query, pl.LazyFrame) else query
    vs = normalize_views(views)
    result, plans, prefix = historical_features(
        q, vs, files, cutoff=cutoff, inclusive=inclusive, ttl=ttl,
        cutoff_timezone=cutoff_timezone, with_availability=with_availability)
    if not plans:
        return q
    row = f"{prefix}row"
    schema: dict[str, pl.DataType] = {}
    for plan in plans:
        schema |= {out: dt for out, _, dt in plan.outputs}
        if with_availability:
            schema |= {availability_column(out): pl.Int64() for out, _, _ in plan.outputs}
    got = pl.DataFrame(schema={row: pl.Int64, **schema}) if result is None else to_polars(result)
    # Every query row, in query order: unmatched rows are null.
    order = pl.DataFrame({row: pl.int_range(q.height, dtype=pl.Int64, eager=True)})
    got = order.join(got.with_columns(pl.col(row).cast(pl.Int64)), on=row, how="left",
                     maintain_order="left")
    columns = []
    all_plans = plan_views(q.schema, vs, cutoff, cutoff_timezone, with_availability, ttl, prefix)
    for plan in all_plans:
        names = [out for out, _, _ in plan.outputs]
        for out, _, dtype in plan.outputs:
            columns.append(_restore(got, out, dtype))
        if with_availability:
            unit = timestamp_unit(plan.av_dtype)
            for out in names:
                a = availability_column(out)
                av = got[a] if a in got.columns else pl.Series(a, [None] * q.height, pl.Int64)
                columns.append(av.cast(pl.Int64).cast(pl.Datetime(plan.unit, "UTC"))  # type: ignore[arg-type]
                               .dt.cast_time_unit(unit).alias(a))  # type: ignore[arg-type]
    return pl.concat([q, pl.DataFrame(columns)], how="horizontal") if columns else q


def _restore(got: pl.DataFrame, name: str, dtype: pl.DataType) -> pl.Series:
    """An output column in the dtype the artifact has (Spark has no unsigned, nanosecond or
    categorical types: they come back as their wider or physical form)."""
    if name not in got.columns:
        return pl.Series(name, [None] * got.height, dtype=dtype)
    col = got[name]
    if col.dtype == dtype:
        return col
    if isinstance(dtype, pl.Datetime) and isinstance(col.dtype, pl.Datetime):
        col = col.dt.cast_time_unit(dtype.time_unit)
        if dtype.time_zone is not None:
            return (col.dt.replace_time_zone("UTC") if col.dtype.time_zone is None  # type: ignore[attr-defined]
                    else col).dt.convert_time_zone(dtype.time_zone)
        return col.dt.replace_time_zone(None) if col.dtype.time_zone else col  # type: ignore[attr-defined]
    return col.cast(dtype)
