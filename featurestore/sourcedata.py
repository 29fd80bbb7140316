"""Reading a source's Parquet data and normalizing it to the store's row layout.

The layout every later step relies on: the entity's key columns, ``event_timestamp`` and
``available_at`` (both ``Datetime("us", "UTC")``), then the source's other columns. Naive
timestamps are read in the source's declared time zone and converted to UTC here, once.
"""

from __future__ import annotations

import glob
from collections.abc import Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from featurestore.errors import DataError, DefinitionError
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP

UTC_DT = pl.Datetime("us", "UTC")
RESERVED = (EVENT_TIMESTAMP, AVAILABLE_AT)


def check_timezone(tz: str, what: str) -> str:
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise DefinitionError(f"{what}: unknown time zone {tz!r} (use an IANA name such as "
                              "'UTC' or 'America/New_York')") from None
    return tz


def resolve_files(path: str) -> list[str]:
    """The Parquet files a source path (file, directory or glob) names, sorted."""
    p = Path(path)
    if p.is_dir():
        files = sorted(str(f) for f in p.rglob("*.parquet"))
    elif any(ch in path for ch in "*?["):
        files = sorted(glob.glob(path, recursive=True))
    else:
        files = [path] if p.exists() else []
    if not files:
        raise DataError(f"source path {path}: no Parquet file found there")
    return files


def scan(path: str) -> pl.LazyFrame:
    """A lazy scan of the source's files with a readable error for unreadable ones."""
    files = resolve_files(path)
    for f in files:
        if Path(f).stat().st_size == 0:
            raise DataError(f"{f}: file is empty (0 bytes), expected Parquet")
    if len(files) > 1:
        check_same_schema(path, files)
    try:
        lf = pl.scan_parquet(files)
        lf.collect_schema()
    except Exception as exc:
        raise DataError(f"{files[0] if len(files) == 1 else path}: cannot read as Parquet "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None
    return lf


def check_same_schema(path: str, files: Sequence[str]) -> None:
    """Every file of a multi-file source must have the first file's columns and dtypes.

    Polars would refuse the mix only when the data is read, with an error naming neither file;
    the footers are read here instead (column order may differ, as Polars allows).
    """
    first = _file_schema(files[0])
    for f in files[1:]:
        other = _file_schema(f)
        if other == first:
            continue
        diffs = [f"{c!r}: {first.get(c, 'absent')} vs "
                 f"{other.get(c, 'absent')}"
                 for c in [*first, *[c for c in other if c not in first]]
                 if first.get(c) != other.get(c)]
        raise DataError(f"source path {path}: files {files[0]} and {f} have different schemas "
                        f"({'; '.join(diffs)}); every file of a source needs the same columns "
                        "and dtypes")


def _file_schema(f: str) -> dict[str, pl.DataType]:
    try:
        return dict(pl.read_parquet_schema(f))
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise DataError(f"{f}: cannot read as Parquet ({type(exc).__name__}: {first})") from None


def read_schema(path: str) -> dict[str, pl.DataType]:
    return dict(scan(path).collect_schema())


def to_utc(expr: pl.Expr, dtype: pl.DataType, tz: str, *, where: str) -> pl.Expr:
    """Convert a timestamp expression to UTC microseconds; naive values are read in ``tz``."""
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            expr = expr.dt.replace_time_zone(tz, ambiguous="raise", non_existent="raise")
        return expr.dt.convert_time_zone("UTC").dt.cast_time_unit("us")
    if dtype == pl.Date:
        return (expr.cast(pl.Datetime("us")).dt.replace_time_zone(tz, ambiguous="raise",
                                                                   non_existent="raise")
                .dt.convert_time_zone("UTC"))
    raise DataError(f"{where}: expected a Datetime or Date column, found {dtype}")


def check_column_roles(schema: Mapping[str, pl.DataType], *, path: str, keys: Sequence[str],
                       event_time: str, available_time: str | None = None) -> None:
    """Keys must be comparable exactly and times must be times: checked at apply and ingest."""
    for col in schema:
        if col == "*" or (len(col) > 1 and col.startswith("^") and col.endswith("$")):
            raise DataError(f"{path}: column {col!r} cannot be used: Polars reads that name as a "
                            "wildcard or a regular expression, not as a column; rename it")
    for key in keys:
        if isinstance(schema[key], pl.Float32 | pl.Float64 | pl.List | pl.Struct | pl.Array):
            raise DataError(f"{path}: key column {key!r} has dtype {schema[key]}; "
                            "keys must be integers, strings, dates or booleans")
    for col, label in ((event_time, "event-time"), (available_time, "availability")):
        if col is not None and not isinstance(schema[col], pl.Datetime | pl.Date):
            raise DataError(f"{path}: {label} column {col!r}: expected a Datetime or Date "
                            f"column, found {schema[col]}")


def normalize(lf: pl.LazyFrame, *, path: str, keys: Sequence[str], event_time: str,
              timezone: str, lag: timedelta, available_time: str | None = None,
              expected_schema: dict[str, str] | None = None) -> pl.LazyFrame:
    """Validate columns lazily and return the frame in store layout (not yet collected)."""
    schema = lf.collect_schema()
    needed = [*keys, event_time] + ([available_time] if available_time else [])
    for col in needed:
        if col not in schema:
            raise DataError(f"{path}: column {col!r} is missing (expected it as "
                            f"{'a key' if col in keys else 'a time'} column); "
                            f"found {', '.join(map(repr, schema.names()))}")
    if expected_schema:
        for col, dtype in expected_schema.items():
            if col in schema and str(schema[col]) != dtype:
                raise DataError(f"{path}: column {col!r} has dtype {schema[col]}, "
                                f"the source was registered with {dtype}")
            if col not in schema:
                raise DataError(f"{path}: column {col!r} of the registered schema is missing")
    for col in RESERVED:
        if col in schema and col not in (event_time, available_time):
            raise DataError(f"{path}: column {col!r} is reserved by featurestore; rename it")
    check_column_roles(schema, path=path, keys=keys, event_time=event_time,
                       available_time=available_time)
    ts = to_utc(pl.col(event_time), schema[event_time], timezone,
                where=f"{path}: event-time column {event_time!r}")
    avail = (to_utc(pl.col(available_time), schema[available_time], timezone,
                    where=f"{path}: availability column {available_time!r}")
             if available_time else ts + pl.lit(lag))
    others = [c for c in schema.names() if c not in (*keys, event_time, available_time)]
    return lf.select(*[pl.col(k) for k in keys], ts.alias(EVENT_TIMESTAMP),
                     avail.alias(AVAILABLE_AT), *[pl.col(c) for c in others])


def validate_rows(df: pl.DataFrame, *, path: str, keys: Sequence[str], event_time: str,
                  on_duplicate: str) -> pl.DataFrame:
    """Row-level checks on a collected, normalized frame: nulls, order of times, duplicates."""
    for col, label in [*[(k, f"key column {k!r}") for k in keys],
                       (EVENT_TIMESTAMP, f"event-time column {event_time!r}"),
                       (AVAILABLE_AT, "availability time")]:
        n = df[col].null_count()
        if n:
            first = df.with_row_index("_row").filter(pl.col(col).is_null())["_row"][0]
            raise DataError(f"{path}: {label} has {n} null value(s) (first at row {first}); "
                            "every row needs a key and a time")
    early = df.filter(pl.col(AVAILABLE_AT) < pl.col(EVENT_TIMESTAMP))
    if early.height:
        raise DataError(f"{path}: {early.height} row(s) are available before their event time; "
                        "availability must be at or after the event")
    dup_cols = [*keys, EVENT_TIMESTAMP]
    dup = df.select(dup_cols).is_duplicated()
    if dup.any():
        example = df.filter(dup).row(0, named=True)
        shown = ", ".join([*(f"{k}={example[k]!r}" for k in keys),
                           f"{event_time}={_iso(example[EVENT_TIMESTAMP])}"])
        if on_duplicate == "error":
            raise DataError(f"{path}: {int(dup.sum())} rows share their key and event time "
                            f"(e.g. {shown}); set on_duplicate = \"keep_last\" to keep the last")
        df = df.unique(subset=dup_cols, keep="last", maintain_order=True)
    return df


def _iso(value: Any) -> str:
    """A time as ISO 8601 text (UTC, as stored), not as a Python repr."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def causal_fill(df: pl.DataFrame, keys: Sequence[str], fills: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """Fill missing values using only earlier rows of the same entity.

    ``forward`` carries the entity's last non-null value forward; ``expanding_mean`` uses the
    mean of the entity's earlier non-null values. A ``value``, when given, fills what is still
    null afterwards (an entity's leading rows). Never a statistic over the whole column: that
    would let later rows leak into earlier ones. Expects ``df`` sorted by keys then time.
    """
    if not fills:
        return df
    exprs = []
    for fill in fills:
        col, method, value = fill["column"], fill.get("method", "forward"), fill.get("value")
        if col not in df.columns:
            raise DataError(f"fill: column {col!r} is not in the source")
        expr = pl.col(col)
        if method == "forward":
            expr = expr.forward_fill().over(list(keys))
        elif method == "expanding_mean":
            seen = pl.col(col).is_not_null().cast(pl.Int64)
            csum = pl.col(col).fill_null(0).cast(pl.Float64).cum_sum().over(list(keys))
            ccount = seen.cum_sum().over(list(keys))
            prior_mean = ((csum - pl.col(col).fill_null(0).cast(pl.Float64))
                          / (ccount - seen).cast(pl.Float64))
            mean = pl.when(ccount - seen > 0).then(prior_mean).otherwise(None)
            if not df.schema[col].is_float():
                raise DataError(f"fill: expanding_mean needs a float column, {col!r} is "
                                f"{df.schema[col]}; use method = \"forward\" instead")
            expr = pl.coalesce(pl.col(col), mean).cast(df.schema[col])
        if value is not None:
            expr = expr.fill_null(pl.lit(value))
        exprs.append(expr.alias(col))
    return df.with_columns(exprs)
