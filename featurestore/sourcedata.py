"""Reading a source's Parquet data and normalizing it to the store's row layout.

The layout every later step relies on: the entity's key columns, ``event_timestamp`` and
``available_at`` (both ``Datetime("us", "UTC")``), then the source's other columns. Naive
timestamps are read in the source's declared time zone and converted to UTC here, once.
"""

from __future__ import annotations

import glob
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import polars as pl

from featurestore.errors import DataError, DefinitionError
from featurestore.layout import retrieval_order
from featurestore.packedsort import PACK_FROM_ROWS, packed_key, sort_in_place
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


@contextmanager
def source_read_errors(path: str, name: str) -> Iterator[None]:
    """Turn the engine's failures while reading a source into ``DataError`` naming the file."""
    from featurestore.artifacts import engine_read_fault

    try:
        yield
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:  # a Rust panic on damaged bytes is a BaseException
        fault = engine_read_fault(exc)
        if fault is not None:
            raise DataError(f"{path}: cannot read as Parquet ({fault})") from None
        if not isinstance(exc, pl.exceptions.ComputeError):
            raise
        raise DataError(f"{path}: cannot convert times of source {name!r}: "
                        f"{str(exc).splitlines()[0]}") from None


def validate_rows(df: pl.DataFrame, *, path: str, keys: Sequence[str], event_time: str,
                  on_duplicate: str, row_column: str | None = None,
                  order: str = "event", read_rows: str | None = None,
                  keep_rows: bool = False) -> pl.DataFrame:
    """Row-level checks on a collected, normalized frame, and the snapshot's order.

    Refuses null keys and times and rows available before their event; handles rows that
    share their keys and event time per ``on_duplicate`` (``keep_last``: the last one read).
    Returns the rows sorted by keys, event time (unique from here on, so also by
    ``available_at``): one sort, after which duplicates are neighbours, so finding them needs
    no hash table. With ``order="retrieval"`` the same rows are
    returned in retrieval order instead (``featurestore.layout``: keys, ``available_at``, event
    time), still sorted once; duplicates are then found on a sorted copy of the key and time
    columns only. The sorts pack key and time columns into one integer
    (``featurestore.packedsort``).

    ``read_rows`` names a column of ``df`` holding row numbers in the order the source was read
    (added while reading, so that ``df`` is the only frame holding these rows); ``row_column``
    one holding each row's position in the whole source, when ``df`` is one bucket of it
    (``featurestore.buckets``; counts in errors are then this bucket's: "at least"). Either
    orders duplicates and is what errors cite, and is dropped. With either, ``df`` is the
    caller's to give away: it is sorted in place, column by column, so its rows are never in
    memory twice; without, it is left as it was. With ``keep_rows`` that column is kept (an
    index records each row's position in the source: ``featurestore.reference``).
    """
    some = "" if row_column is None else "at least "
    row = row_column or read_rows or "__fs_ingest_row"
    if row_column is None and read_rows is None:
        while row in df.columns:
            row = "_" + row
        df = df.with_row_index(row)  # a new frame: sorting it in place leaves the caller's
    for col, label in [*[(k, f"key column {k!r}") for k in keys],
                       (EVENT_TIMESTAMP, f"event-time column {event_time!r}"),
                       (AVAILABLE_AT, "availability time")]:
        n = df[col].null_count()
        if n:
            first = df.filter(pl.col(col).is_null())[row].min()
            raise DataError(f"{path}: {label} has {some}{n} null value(s) (first at row "
                            f"{first}); every row needs a key and a time")
    early = df.select((pl.col(AVAILABLE_AT) < pl.col(EVENT_TIMESTAMP)).sum()).item()
    if early:
        raise DataError(f"{path}: {some}{early} row(s) are available before their event time; "
                        "availability must be at or after the event")
    dup_cols = [*keys, EVENT_TIMESTAMP]
    if order == "retrieval":
        # The whole rows are sorted once, in the order retrieval reads. That leaves them nearly
        # sorted by keys and event time, so the narrow copy in which duplicates are neighbours
        # (in read order: the row number) sorts cheaply. Rows left after it are unique on keys
        # and event time, so their order is settled without the row number.
        df = sort_in_place(df, retrieval_order(keys))
        if _no_duplicates(df, dup_cols):  # the common case, proved without moving rows
            return df if keep_rows else df.drop(row)
        ids = sort_in_place(df.select(*dup_cols, row), [*dup_cols, row])
        ids = ids.with_columns(_duplicate_flags(ids, dup_cols))
        _refuse_duplicates(ids, path=path, keys=keys, event_time=event_time,
                           on_duplicate=on_duplicate, some=some)
        if ids["__fs_dup"].any():  # keep_last: the last one read of each run survives
            df = df.filter(~pl.col(row).is_in(ids.filter(pl.col("__fs_next"))[row].implode()))
        return df if keep_rows else df.drop(row)
    if order not in ("event", "retrieval"):
        raise ValueError(f"order must be 'event' or 'retrieval', got {order!r}")
    # The row number as the last sort column: an unstable sort (much faster than a stable one)
    # that still keeps rows sharing keys and event time in the order they were read.
    df = sort_in_place(df, [*dup_cols, row])
    if df.height < 2:
        return df if keep_rows else df.drop(row)
    flags = df.select(_duplicate_flags(df, dup_cols))
    _refuse_duplicates(df.with_columns(flags), path=path, keys=keys, event_time=event_time,
                       on_duplicate=on_duplicate, some=some)
    if flags["__fs_dup"].any():
        df = df.filter(~flags["__fs_next"])  # the last one read of each run survives
    return df if keep_rows else df.drop(row)


def _no_duplicates(df: pl.DataFrame, columns: Sequence[str]) -> bool:
    """True when no two rows share ``columns``, proved cheaply; False when they may (then the
    caller looks properly). Cheap when the columns pack into one integer
    (``featurestore.packedsort``): that one column is sorted and neighbours compared, at a
    third of the cost of sorting the columns with a row number and gathering them."""
    packed, used = packed_key(df, columns) if df.height >= PACK_FROM_ROWS else (None, 0)
    if packed is None or used < len(columns):
        return False
    key = df.select(packed.alias("k")).to_series().sort()
    return not (key == key.shift(1)).any()


def snapshot_rows(df: pl.DataFrame, src: Mapping[str, Any], *, path: str, keys: Sequence[str],
                  order: str, row_column: str | None = None,
                  read_rows: str | None = None, keep_rows: bool = False) -> pl.DataFrame:
    """A source's collected, normalized rows (or one bucket of them) as its snapshot holds
    them: validated (``validate_rows``, which takes ``row_column``, ``read_rows`` and
    ``keep_rows`` and so may sort ``df`` in place), filled (``causal_fill``, which reads event order) and in ``order``
    (``"event"`` or ``"retrieval"``)."""
    from featurestore.layout import sort_for_retrieval

    fills = src["fills"]
    df = validate_rows(df, path=path, keys=keys, event_time=src["event_time"],
                       on_duplicate=src["on_duplicate"], row_column=row_column,
                       read_rows=read_rows, order="event" if fills else order,
                       keep_rows=keep_rows)
    df = causal_fill(df, keys, fills)
    return sort_for_retrieval(df, keys, in_place=True) if fills and order == "retrieval" else df


def _duplicate_flags(df: pl.DataFrame, dup_cols: Sequence[str]) -> list[pl.Expr]:
    """On rows sorted by ``dup_cols``: ``__fs_next`` (the next row has the same values) and
    ``__fs_dup`` (a neighbour has)."""
    same_next = pl.all_horizontal(pl.col(c) == pl.col(c).shift(-1) for c in dup_cols)
    same_prev = pl.all_horizontal(pl.col(c) == pl.col(c).shift(1) for c in dup_cols)
    return [same_next.fill_null(False).alias("__fs_next"),
            (same_next | same_prev).fill_null(False).alias("__fs_dup")]


def _refuse_duplicates(flagged: pl.DataFrame, *, path: str, keys: Sequence[str],
                       event_time: str, on_duplicate: str, some: str) -> None:
    """Raise for duplicate rows (``__fs_dup``, in (keys, event time, row) order) unless
    ``on_duplicate`` keeps the last."""
    n_dup = int(flagged["__fs_dup"].sum())
    if not n_dup or on_duplicate != "error":
        return
    example = flagged.filter(pl.col("__fs_dup")).row(0, named=True)
    shown = ", ".join([*(f"{k}={example[k]!r}" for k in keys),
                       f"{event_time}={_iso(example[EVENT_TIMESTAMP])}"])
    raise DataError(f"{path}: {some}{n_dup} rows share their key and event time "
                    f"(e.g. {shown}); set on_duplicate = \"keep_last\" to keep the last")


def _iso(value: Any) -> str:
    """A time as ISO 8601 text (UTC, as stored), not as a Python repr."""
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def causal_fill(df: pl.DataFrame, keys: Sequence[str], fills: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """Fill missing values using only earlier rows of the same entity, available in time.

    A null in row r may take a value only from a row q of the same entity that comes before r
    in event order *and* was available no later than r (``available_at(q) <= available_at(r)``):
    a correction published late never donates to a row known before it. ``forward`` takes the
    value of the last such q (in event order) with a value; ``expanding_mean`` the mean of all
    such q's values. A ``value``, when given, fills what is still null afterwards (an entity's
    leading rows). Never a statistic over the whole column: that would let later rows leak into
    earlier ones. Expects ``df`` sorted by keys then event time; without an ``available_at``
    column, rows are taken as available in event order.

    When availability never decreases in event order within an entity (a fixed lag, whole
    sessions published at once) every earlier row qualifies and one vectorized pass does it;
    only entities where it does decrease take the row-by-row path.
    """
    if not fills:
        return df
    for fill in fills:
        col, method = fill["column"], fill.get("method", "forward")
        if col not in df.columns:
            raise DataError(f"fill: column {col!r} is not in the source")
        if method == "expanding_mean" and not df.schema[col].is_float():
            raise DataError(f"fill: expanding_mean needs a float column, {col!r} is "
                            f"{df.schema[col]}; use method = \"forward\" instead")
    keys = list(keys)
    if AVAILABLE_AT not in df.columns or df.height < 2:
        return _fill_in_order(df, keys, fills)
    back = (pl.col(AVAILABLE_AT) < pl.col(AVAILABLE_AT).shift(1)).fill_null(False)
    if keys:
        back = back.over(keys)
    if not df.select(back.any()).item():
        return _fill_in_order(df, keys, fills)
    row = "__fs_fill_row"
    broken = back.any().over(keys) if keys else back.any()
    marked = df.with_row_index(row).with_columns(broken.alias("__fs_broken"))
    easy = _fill_in_order(marked.filter(~pl.col("__fs_broken")), keys, fills)
    hard = _fill_by_availability(marked.filter(pl.col("__fs_broken")), keys, fills)
    return pl.concat([easy, hard]).sort(row).drop(row, "__fs_broken")


def _fill_in_order(df: pl.DataFrame, keys: list[str], fills: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """The fills when every earlier row of an entity may donate (availability in event order)."""
    def over(expr: pl.Expr) -> pl.Expr:
        return expr.over(keys) if keys else expr

    exprs = []
    for fill in fills:
        col, method, value = fill["column"], fill.get("method", "forward"), fill.get("value")
        expr = pl.col(col)
        if method == "forward":
            expr = over(expr.forward_fill())
        elif method == "expanding_mean":
            seen = pl.col(col).is_not_null().cast(pl.Int64)
            csum = over(pl.col(col).fill_null(0).cast(pl.Float64).cum_sum())
            ccount = over(seen.cum_sum())
            prior_mean = ((csum - pl.col(col).fill_null(0).cast(pl.Float64))
                          / (ccount - seen).cast(pl.Float64))
            mean = pl.when(ccount - seen > 0).then(prior_mean).otherwise(None)
            expr = pl.coalesce(pl.col(col), mean).cast(df.schema[col])
        if value is not None:
            expr = expr.fill_null(pl.lit(value))
        exprs.append(expr.alias(col))
    return df.with_columns(exprs)


def _fill_by_availability(df: pl.DataFrame, keys: list[str],
                          fills: Sequence[dict[str, Any]]) -> pl.DataFrame:
    """The fills row by row, for entities whose availability goes back in event order.

    Rows are visited by availability; a batch of equal availability is first added to Fenwick
    trees indexed by event position, then each null of the batch asks them about the positions
    before its own: O(n log n) per entity.
    """
    if df.height == 0:
        return df
    ids = df.select(keys).rows() if keys else [()] * df.height
    avail = df[AVAILABLE_AT].to_list()
    groups: dict[Any, list[int]] = {}
    for i, e in enumerate(ids):
        groups.setdefault(e, []).append(i)  # row order within an entity is event order
    columns = []
    for fill in fills:
        col, method, value = fill["column"], fill.get("method", "forward"), fill.get("value")
        values = df[col].to_list()
        out = list(values)
        for rows in groups.values() if method in ("forward", "expanding_mean") else ():
            for i, filled in _fill_entity([values[i] for i in rows], [avail[i] for i in rows],
                                          method):
                out[rows[i]] = filled
        series = pl.Series(col, out, dtype=pl.Float64 if method == "expanding_mean"
                           else df.schema[col], strict=False).cast(df.schema[col])
        if value is not None:
            series = series.fill_null(value)
        columns.append(series)
    return df.with_columns(columns)


def _fill_entity(values: list[Any], avail: list[Any], method: str) -> Iterable[tuple[int, Any]]:
    """``(position, filled value)`` for the nulls of one entity that an allowed row can fill."""
    n = len(values)
    best = [-1] * (n + 1)      # Fenwick: prefix max of donor positions (forward)
    total = [0.0] * (n + 1)    # Fenwick: prefix sums of donor values (expanding_mean)
    count = [0] * (n + 1)
    order = sorted(range(n), key=lambda i: (avail[i], i))
    start = 0
    while start < n:
        end = start
        while end < n and avail[order[end]] == avail[order[start]]:
            end += 1
        batch = order[start:end]
        for p in batch:  # donors first: equal availability counts as available in time
            if values[p] is None:
                continue
            j = p + 1
            while j <= n:
                if method == "forward":
                    best[j] = max(best[j], p)
                else:
                    total[j] += values[p]
                    count[j] += 1
                j += j & -j
        for p in batch:
            if values[p] is not None:
                continue
            j, donor, s, c = p, -1, 0.0, 0  # positions 0..p-1 are tree indices 1..p
            while j > 0:
                if method == "forward":
                    donor = max(donor, best[j])
                else:
                    s += total[j]
                    c += count[j]
                j -= j & -j
            if method == "forward" and donor >= 0:
                yield p, values[donor]
            elif method == "expanding_mean" and c:
                yield p, s / c
        start = end
