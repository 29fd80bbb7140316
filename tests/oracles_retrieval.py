"""Two independent reference implementations of point-in-time retrieval, for tests only.

Both take the same inputs as ``featurestore.retrieval.point_in_time_join`` and return a
``list[dict]`` (one dict per query row: the query's columns, then the features and, with
``with_availability``, the ``<feature>__available_at`` columns), so results compare with
``DataFrame.to_dicts()``.

1. ``python_oracle``: a plain loop over rows, written to be checked by reading.
2. ``duckdb_oracle``: one SQL query per view: a left join on the keys and the availability
   rule, then ``QUALIFY row_number() OVER (... ORDER BY available_at DESC, event_timestamp DESC
   NULLS LAST, ingestion DESC) = 1`` (DuckDB's ASOF JOIN cannot express the tie-break).
   Time zones are converted by DuckDB too; note that DuckDB reads an *ambiguous* naive wall time
   (DST fall-back) as the later instant, where the contract says earliest, so DST-ambiguity cases
   are checked against ``python_oracle`` only.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import duckdb
import polars as pl

from featurestore.retrieval import ViewFrame, availability_column

AV = "available_at"
ET = "event_timestamp"


# --------------------------------------------------------------------------------------------
# 1. plain Python


def to_utc(value: datetime | date | None, naive_zone: str = "UTC") -> datetime | None:
    """A cutoff as an aware UTC datetime; naive values are wall times in ``naive_zone``.

    Ambiguous wall times (DST fall-back) take the earlier instant (fold=0); wall times that do
    not exist (spring-forward gap) raise ValueError.
    """
    if value is None:
        return None
    if not isinstance(value, datetime):
        value = datetime.combine(value, time())
    if value.tzinfo is not None:
        return value.astimezone(UTC)
    zone = ZoneInfo(naive_zone)
    aware = value.replace(tzinfo=zone, fold=0)
    back = aware.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if back != value:
        raise ValueError(f"{value} does not exist in {naive_zone}")
    return aware.astimezone(UTC)


def python_oracle(
    query: pl.DataFrame,
    views: Sequence[ViewFrame],
    *,
    cutoff: str = ET,
    inclusive: bool = False,
    ttl: timedelta | None = None,
    cutoff_timezone: str | None = None,
    with_availability: bool = False,
) -> list[dict]:
    zone = cutoff_timezone or "UTC"
    view_rows = [v.frame.collect().to_dicts() for v in views]
    out = []
    for qrow in query.to_dicts():
        result = dict(qrow)
        t = to_utc(qrow[cutoff], zone)
        for view, rows in zip(views, view_rows, strict=True):
            qkeys = view.query_keys or view.keys
            wanted = [qrow[k] for k in qkeys]
            best = None  # (available_at, event_timestamp rank, position, row)
            if t is not None and None not in wanted:
                for position, row in enumerate(rows):
                    if [row[k] for k in view.keys] != wanted or row[AV] is None:
                        continue
                    av = to_utc(row[AV])  # view times are UTC
                    if not (av < t or (inclusive and av == t)):
                        continue
                    et = row.get(ET)
                    et_rank = (
                        (0, datetime.min) if et is None else (1, to_utc(et).replace(tzinfo=None))
                    )
                    candidate = (av, et_rank, position, row)
                    if best is None or candidate[:3] > best[:3]:
                        best = candidate
            if best is not None and ttl is not None and best[0] < t - ttl:
                best = None
            for name, col in view.features.items():
                result[name] = None if best is None else best[3][col]
            if with_availability:
                for name in view.features:
                    result[availability_column(name)] = None if best is None else best[0]
        out.append(result)
    return out


# --------------------------------------------------------------------------------------------
# 2. DuckDB SQL


def _utc_sql(column: str, dtype: pl.DataType, naive_zone: str) -> str:
    if dtype == pl.Date:
        column, dtype = f"CAST({column} AS TIMESTAMP)", pl.Datetime("us")
    if dtype.time_zone is None:  # type: ignore[union-attr]
        return f"timezone('{naive_zone}', CAST({column} AS TIMESTAMP))"
    return column  # TIMESTAMPTZ compares as an instant


def duckdb_oracle(
    query: pl.DataFrame,
    views: Sequence[ViewFrame],
    *,
    cutoff: str = ET,
    inclusive: bool = False,
    ttl: timedelta | None = None,
    cutoff_timezone: str | None = None,
    with_availability: bool = False,
) -> list[dict]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    zone = cutoff_timezone or "UTC"
    q = query.select(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("qid"), pl.col(cutoff).alias("cut")
    )
    result = query
    for view in views:
        frame = view.frame.collect()
        qkeys = view.query_keys or view.keys
        qv = pl.concat(
            [q, query.select([pl.col(qk).alias(f"k{j}") for j, qk in enumerate(qkeys)])],
            how="horizontal",
        )
        has_et = ET in frame.columns
        fv = frame.select(
            pl.int_range(pl.len(), dtype=pl.Int64).alias("pos"),
            *[pl.col(k).alias(f"k{j}") for j, k in enumerate(view.keys)],
            pl.col(AV).alias("av"),
            (pl.col(ET) if has_et else pl.lit(None, dtype=pl.Datetime("us"))).alias("et"),
        )
        con.register("qv", qv.to_arrow())
        con.register("fv", fv.to_arrow())
        cut = _utc_sql("qv.cut", query.schema[cutoff], zone)
        av = _utc_sql("fv.av", frame.schema[AV], "UTC")
        op = "<=" if inclusive else "<"
        keys_eq = " AND ".join(f"qv.k{j} = fv.k{j}" for j in range(len(view.keys)))
        fresh = "TRUE"
        if ttl is not None:
            micros = ttl // timedelta(microseconds=1)
            fresh = f"{av} >= {cut} - INTERVAL '{micros} microseconds'"
        sql = f"""
            SELECT qv.qid,
                   CASE WHEN {fresh} THEN fv.pos END AS pos
            FROM qv LEFT JOIN fv ON {keys_eq} AND {av} {op} {cut}
            QUALIFY row_number() OVER (
                PARTITION BY qv.qid ORDER BY {av} DESC, fv.et DESC NULLS LAST, fv.pos DESC
            ) = 1
            ORDER BY qv.qid
        """
        picked = pl.from_arrow(con.sql(sql).to_arrow_table())["pos"]
        assert picked.len() == query.height
        cols = list(view.features.items())
        taken = frame.select([pl.col(c).alias(name) for name, c in cols]).gather(picked)
        if with_availability:
            av_dtype = frame.schema[AV]
            av_col = pl.col(AV).cast(pl.Datetime("us")) if av_dtype == pl.Date else pl.col(AV)
            if av_dtype == pl.Date or av_dtype.time_zone is None:  # type: ignore[union-attr]
                av_col = av_col.dt.replace_time_zone("UTC")
            else:
                av_col = av_col.dt.convert_time_zone("UTC")
            av_utc = frame.select(av_col).to_series().gather(picked)
            taken = taken.with_columns(
                [av_utc.alias(availability_column(name)) for name, _ in cols]
            )
        result = pl.concat([result, taken], how="horizontal")
        con.unregister("qv")
        con.unregister("fv")
    return result.to_dicts()
