"""Ingest on Spark: a source's files read, validated, timed and causally filled by Spark.

The same steps and rules as the Polars path (``featurestore.sourcedata``), in Spark:

- schema checks: the files' footers go through ``sourcedata.normalize`` (the same code and
  errors; no data is read for them);
- times: naive event and availability times are wall times in the source's zone, converted to
  UTC; a wall time that does not exist there (DST gap) or is ambiguous (DST overlap) is refused,
  as in Polars; ``available_at`` is the availability column or event time plus the tier's lag;
- rows: nulls in keys or times, availability before the event and duplicate (keys, event time)
  rows are refused (or, with ``on_duplicate = "keep_last"``, the last in file order kept);
- causal fills (``forward``, ``expanding_mean``, a ``value``) with window functions per entity
  in event order; entities whose availability goes back in event order (a late correction) are
  filled by the Polars code's exact rule, per entity, inside Spark (``applyInArrow``).

The result is a Spark DataFrame sorted by (keys, event time, availability), which
``io.write_artifact`` writes as the source snapshot.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from featurestore.errors import DataError
from featurestore.sourcedata import normalize, resolve_files, scan
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP

if TYPE_CHECKING:
    from featurestore.store import FeatureStore

_FILE, _POS = "__fs_file", "__fs_pos"
_HOURS_12 = 12 * 3600 * 1_000_000


def unsupported_dtypes(schema: dict[str, pl.DataType]) -> list[str]:
    """Columns whose dtype a Spark-written file cannot keep (Spark has no such type)."""
    bad = []
    for col, dtype in schema.items():
        if (dtype.is_unsigned_integer() or isinstance(dtype, pl.Categorical | pl.Enum)
                or dtype == pl.Categorical
                or isinstance(dtype, pl.Duration | pl.Time | pl.Object | pl.Null)
                or (isinstance(dtype, pl.Datetime) and (dtype.time_unit != "us" or dtype.time_zone
                                                        not in (None, "UTC")))):
            bad.append(f"{col!r} ({dtype})")
    return bad


def read_source(store: FeatureStore, name: str) -> Any:
    """The source ``name`` in store layout as a sorted Spark DataFrame (see the module doc)."""
    from featurestore.engines.spark.session import spark_session
    from featurestore.plan import absolute_source_path

    src = store.registry.get("source", name)
    keys = list(store.registry.get("entity", src["entity"])["join_keys"])
    lag = store.tiers.get(src["tier"]).lag
    path = absolute_source_path(src["path"], store.root)
    lf = scan(path)
    layout = normalize(lf, path=path, keys=keys, event_time=src["event_time"],
                       timezone=src["timezone"], lag=lag, available_time=src["available_time"],
                       expected_schema=src["schema"]).collect_schema()
    bad = unsupported_dtypes(dict(layout))
    if bad:
        raise DataError(f"{path}: the spark engine cannot keep the dtype of column(s) "
                        f"{', '.join(bad)} (Spark has no such type); cast them in the source, or "
                        "ingest it with the polars engine (--engine polars)")
    spark = spark_session()
    files = resolve_files(path)
    parts = [spark.read.parquet(f).select("*", _lit(i).alias(_FILE),
                                          _col("_metadata.row_index").alias(_POS))
             for i, f in enumerate(files)]
    raw = parts[0]
    for p in parts[1:]:
        raw = raw.unionByName(p)
    schema = dict(lf.collect_schema())
    tz = src["timezone"]
    et_col, av_col = src["event_time"], src["available_time"]
    ts, ts_bad = _to_utc(et_col, schema[et_col], tz)
    checks = [(ts_bad, et_col)]
    if av_col:
        avail, av_bad = _to_utc(av_col, schema[av_col], tz)
        checks.append((av_bad, av_col))
    else:
        avail = _add_micros(ts, lag)
    others = [c for c in layout.names() if c not in (*keys, EVENT_TIMESTAMP, AVAILABLE_AT)]
    df = raw.select(*[_col(k) for k in keys], ts.alias(EVENT_TIMESTAMP),
                    avail.alias(AVAILABLE_AT), *[_col(c) for c in others], _col(_FILE),
                    _col(_POS), *[b.alias(f"__fs_bad{i}") for i, (b, _) in enumerate(checks)],
                    *[_col(c).alias(f"__fs_raw{i}") for i, (_, c) in enumerate(checks)])
    df = df.cache()
    _check_times(df, checks, path, name)
    df = df.drop(*[f"__fs_{w}{i}" for i in range(len(checks)) for w in ("bad", "raw")])
    df = _validate_rows(df, path=path, keys=keys, event_time=et_col, files=files,
                        on_duplicate=src["on_duplicate"])
    df = causal_fill(df, keys, src["fills"])
    return df.orderBy(*keys, EVENT_TIMESTAMP, AVAILABLE_AT).drop(_FILE, _POS)


def _col(name: str) -> Any:
    from pyspark.sql import functions as F

    return F.col(name)


def _lit(value: Any) -> Any:
    from pyspark.sql import functions as F

    return F.lit(value)


def _add_micros(ts: Any, lag: timedelta) -> Any:
    from pyspark.sql import functions as F

    return F.timestamp_micros(F.unix_micros(ts) + F.lit(lag // timedelta(microseconds=1)))


def _to_utc(column: str, dtype: pl.DataType, tz: str) -> tuple[Any, Any]:
    """(UTC instant, "this wall time does not exist or is ambiguous in tz") for a time column."""
    from pyspark.sql import functions as F

    c = F.col(column)
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        if dtype.time_unit == "ns":  # read as the nanosecond count
            return F.timestamp_micros(F.floor(c / 1000)), F.lit(False)
        return c.cast("timestamp"), F.lit(False)
    wall = c.cast("timestamp_ntz") if dtype == pl.Date else c
    if isinstance(dtype, pl.Datetime) and dtype.time_unit == "ns":
        wall = F.timestamp_micros(F.floor(c / 1000)).cast("timestamp_ntz")
    # The session zone is UTC: the wall time read as if it were UTC, in microseconds.
    w = F.unix_micros(wall.cast("timestamp"))
    if tz == "UTC":
        return wall.cast("timestamp"), F.lit(False)
    u1 = F.to_utc_timestamp(wall.cast("timestamp"), tz)  # the earlier instant on an overlap
    u1m = F.unix_micros(u1)

    def offset_at(micros: Any) -> Any:
        return F.unix_micros(F.from_utc_timestamp(F.timestamp_micros(micros), tz)) - micros

    missing = offset_at(u1m) != (w - u1m)  # u1 does not show the wall time: a DST gap
    off_later = offset_at(u1m + _HOURS_12)
    # A later instant with the same wall time exists when the offset falls (DST overlap).
    later = w - off_later
    ambiguous = (off_later < (w - u1m)) & (offset_at(later) == off_later) & (later > u1m)
    return u1, F.coalesce(missing | ambiguous, F.lit(False))


def _check_times(df: Any, checks: Sequence[tuple[Any, str]], path: str, name: str) -> None:
    from pyspark.sql import functions as F

    for i, (_, column) in enumerate(checks):
        flag = f"__fs_bad{i}"
        first = df.where(F.col(flag)).select(f"__fs_raw{i}").limit(1).collect()
        if first:
            raise DataError(f"{path}: cannot convert times of source {name!r}: column "
                            f"{column!r} holds {first[0][0]}, a wall time that does not exist or "
                            "is ambiguous in the source's time zone (a DST change)")


def _validate_rows(df: Any, *, path: str, keys: Sequence[str], event_time: str,
                   files: Sequence[str], on_duplicate: str) -> Any:
    """``sourcedata.validate_rows`` on Spark: nulls, order of times, duplicates."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    labels = [*[(k, f"key column {k!r}") for k in keys],
              (EVENT_TIMESTAMP, f"event-time column {event_time!r}"),
              (AVAILABLE_AT, "availability time")]
    counts = df.select(*[F.sum(F.col(c).isNull().cast("long")).alias(f"n{i}")
                         for i, (c, _) in enumerate(labels)],
                       F.sum((F.col(AVAILABLE_AT) < F.col(EVENT_TIMESTAMP)).cast("long"))
                       .alias("early")).collect()[0]
    for i, (col, label) in enumerate(labels):
        n = counts[f"n{i}"] or 0
        if n:
            first = _global_row(df.where(F.col(col).isNull()), df, files)
            raise DataError(f"{path}: {label} has {n} null value(s) (first at row {first}); "
                            "every row needs a key and a time")
    if counts["early"]:
        raise DataError(f"{path}: {counts['early']} row(s) are available before their event "
                        "time; availability must be at or after the event")
    dup_cols = [*keys, EVENT_TIMESTAMP]
    group = Window.partitionBy(*dup_cols)
    marked = df.withColumn("__fs_n", F.count(F.lit(1)).over(group))
    n_dup = marked.where(F.col("__fs_n") > 1).count()
    if not n_dup:
        return df
    if on_duplicate == "error":
        example = (marked.where(F.col("__fs_n") > 1).orderBy(_FILE, _POS)
                   .select(*keys, F.unix_micros(EVENT_TIMESTAMP).alias("__fs_us"))
                   .limit(1).collect()[0])
        # Spark hands timestamps to Python in the machine's zone: rebuild the UTC instant.
        when = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=example["__fs_us"])
        shown = ", ".join([*(f"{k}={example[k]!r}" for k in keys),
                           f"{event_time}={when.isoformat()}"])
        raise DataError(f"{path}: {n_dup} rows share their key and event time (e.g. {shown}); "
                        "set on_duplicate = \"keep_last\" to keep the last")
    last = Window.partitionBy(*dup_cols).orderBy(F.col(_FILE).desc(), F.col(_POS).desc())
    return (df.withColumn("__fs_rank", F.row_number().over(last))
            .where(F.col("__fs_rank") == 1).drop("__fs_rank"))


def _global_row(rows: Any, df: Any, files: Sequence[str]) -> int:
    """The row number, across all files in order, of the first of ``rows``."""
    from pyspark.sql import functions as F

    first = rows.orderBy(_FILE, _POS).select(_FILE, _POS).limit(1).collect()[0]
    before = df.where(F.col(_FILE) < first[_FILE]).count() if first[_FILE] else 0
    return int(before + first[_POS])


def causal_fill(df: Any, keys: Sequence[str], fills: Sequence[dict[str, Any]]) -> Any:
    """``sourcedata.causal_fill`` on Spark (see the module doc); ``df`` has keys, both times,
    the columns and the file order columns."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if not fills:
        return df
    types = dict(df.dtypes)
    for fill in fills:
        col, method = fill["column"], fill.get("method", "forward")
        if col not in types:
            raise DataError(f"fill: column {col!r} is not in the source")
        if method == "expanding_mean" and types[col] not in ("double", "float"):
            raise DataError(f"fill: expanding_mean needs a float column, {col!r} is "
                            f"{types[col]}; use method = \"forward\" instead")
    keys = list(keys)
    order = [F.col(EVENT_TIMESTAMP), F.col(AVAILABLE_AT)]
    by_event = Window.partitionBy(*keys).orderBy(*order)
    back = F.coalesce(F.col(AVAILABLE_AT) < F.lag(AVAILABLE_AT).over(by_event), F.lit(False))
    df = df.withColumn("__fs_back", back)
    df = df.withColumn("__fs_broken", F.max("__fs_back").over(Window.partitionBy(*keys)))
    easy = df.where(~F.col("__fs_broken")).drop("__fs_back", "__fs_broken")
    hard = df.where(F.col("__fs_broken")).drop("__fs_back", "__fs_broken")
    upto = by_event.rowsBetween(Window.unboundedPreceding, Window.currentRow)
    exprs = {}
    for fill in fills:
        col, method, value = fill["column"], fill.get("method", "forward"), fill.get("value")
        expr = F.col(col)
        if method == "forward":
            expr = F.last(F.col(col), ignorenulls=True).over(upto)
        elif method == "expanding_mean":
            # The Polars code's arithmetic, operation for operation, so floats agree to the bit.
            zero = F.coalesce(F.col(col).cast("double"), F.lit(0.0))
            seen = F.col(col).isNotNull().cast("long")
            csum = F.sum(zero).over(upto)
            ccount = F.sum(seen).over(upto)
            prior = (csum - zero) / (ccount - seen).cast("double")
            expr = F.coalesce(F.col(col), F.when(ccount - seen > 0, prior).cast(types[col]))
        if value is not None:
            expr = F.coalesce(expr, F.lit(value).cast(types[col]))
        exprs[col] = expr.cast(types[col])
    easy = easy.withColumns(exprs)
    return easy.unionByName(_fill_by_availability(hard, keys, fills))


def _fill_by_availability(df: Any, keys: list[str], fills: Sequence[dict[str, Any]]) -> Any:
    """Entities whose availability goes back in event order: the Polars rule, per entity."""
    import pyarrow as pa

    from featurestore.engines.spark.session import arrow_caster
    from featurestore.sourcedata import causal_fill as polars_fill

    schema = df.schema
    names = df.columns
    to_spark_types = arrow_caster(schema)

    def fill_entity(table: pa.Table) -> pa.Table:
        frame = pl.from_arrow(table)
        assert isinstance(frame, pl.DataFrame)
        frame = frame.sort([EVENT_TIMESTAMP, AVAILABLE_AT], maintain_order=True)
        filled = polars_fill(frame, keys, fills)
        return to_spark_types(filled.select(names).to_arrow())

    return df.groupBy(*keys).applyInArrow(fill_entity, schema)
