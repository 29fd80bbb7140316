"""Point-in-time (PIT) retrieval: join feature views to a query frame without leakage.

This module is a pure engine: it knows nothing about the registry. A caller hands it a query
frame and one ``ViewFrame`` per feature view, and gets back the query with feature columns added.

Semantics (``DESIGN.md``, "Retrieval semantics"), for each query row (keys ``K``, cutoff ``T``)
and each view, independently:

* the value comes from the view row of the same ``K`` with the greatest ``available_at < T``
  (``<= T`` with ``inclusive=True``); ties on ``available_at`` go to the later
  ``event_timestamp`` (a null ``event_timestamp`` counts as the earliest), then to the later
  ingestion, i.e. the later position in the frame's original row order;
* with ``ttl``, a value whose ``available_at < T - ttl`` is stale: null;
* the chosen row's value is the value: a null value in it stays null (no fall-back to an
  earlier row); view rows with a null ``available_at`` are never available;
* one output row per query row, in the query's order, every query column kept unchanged
  (duplicates too), nulls where nothing qualifies; query rows with a null key or a null cutoff
  match nothing;
* composite keys are compared column by column; key dtypes that differ only in width (``Int32``
  vs ``Int64``, ``Float32`` vs ``Float64``, ``String`` vs ``Categorical``, datetime units) are
  aligned without loss; other combinations raise ``DataError`` naming the view and the column;
* cutoffs are compared as UTC instants. A naive (or ``Date``) cutoff column is read in
  ``cutoff_timezone`` (default UTC); on a DST fall-back the ambiguous wall time is read as the
  *earliest* instant (the conservative choice: it can only remove values), a wall time that does
  not exist (spring-forward gap) raises ``DataError``. A zoned cutoff column is used as is, in
  whatever zone; ``cutoff_timezone`` only applies to naive columns. View ``available_at`` columns
  are UTC (naive ones are read as UTC).

``with_availability=True`` adds, right after each view's feature columns, one
``<feature>__available_at`` column per feature (``Datetime(unit, "UTC")``): the ``available_at`` of
the row the value came from, null when no row qualified. ``audit`` uses these columns to prove
the point-in-time rule on a result.

Engine (``point_in_time_join``). Artifacts are written by the store in ``sort_for_retrieval``
order: sorted by ``(keys, available_at, event_timestamp)`` with ingestion order kept for full
ties. On such a frame, every key is one contiguous run, so the pair (run number, available_at)
is globally sorted and packs into one integer (``Int64``, or ``Int128`` when the time range times
the number of keys would overflow). Retrieval then takes two passes over the artifact:

1. read only the key and ``available_at`` columns; number the key runs (``rle_id``); map each
   query key to its run with a hash join against the (small) table of distinct keys; pack the
   query's (run, cutoff) the same way, sort only the query and binary-search the packed artifact
   column (``side="left"`` finds the last row ``< T``, ``side="right"`` the last ``<= T``: the
   last row of a tie group, which the sort order made the winner of the tie-break);
2. stream the artifact's feature columns once, keeping only the matched rows (a row-index mask),
   and gather them into query order.

Peak memory is the key columns plus the matched rows, never the whole artifact. A frame not
flagged ``presorted`` (or flagged but found unsorted: checked for free on the packed column) is
collected once and its key columns sorted, then the same search runs. A presorted frame is read
twice (plus its ``event_timestamp`` column when it has ``available_at`` ties) and must yield the
same rows in the same order each time (true for Parquet scans and in-memory frames).

``point_in_time_join_lazy`` builds an equivalent pure lazy plan instead (``join_asof`` by key on
the retrieval-sorted frame, after keeping the last row of each ``(keys, available_at)`` tie
group, so polars' own tie rule never matters), for callers that want to compose further or sink
the result with the streaming engine. It trusts ``presorted`` (a lazy plan cannot check it);
it is slower and needs more memory than the eager engine (M scale: ~1.5x time, ~2x memory).
"""

from __future__ import annotations

import warnings
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import polars as pl
from polars.exceptions import ComputeError, InvalidOperationError

from featurestore.errors import DataError
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP

__all__ = [
    "AVAILABILITY_SUFFIX",
    "AuditReport",
    "ViewFrame",
    "audit",
    "availability_column",
    "point_in_time_join",
    "point_in_time_join_lazy",
    "sort_for_retrieval",
]

AVAILABILITY_SUFFIX = "__available_at"
_UNIT_RANK = {"ms": 0, "us": 1, "ns": 2}
_INT128_LIMIT = 2**63


def availability_column(feature: str) -> str:
    """Name of the column ``with_availability=True`` adds for output feature ``feature``."""
    return f"{feature}{AVAILABILITY_SUFFIX}"


@dataclass(frozen=True)
class ViewFrame:
    """One feature view as the engine sees it.

    ``frame`` holds the key columns, ``event_timestamp`` and ``available_at`` (UTC datetimes) and
    the feature columns. ``features`` maps output column name -> column in ``frame``.
    ``query_keys`` names the query columns matched to ``keys`` (default: the same names).
    ``presorted`` says ``frame`` is in ``sort_for_retrieval`` order (what the store writes). The
    engine checks that order as it goes (keys contiguous, ``available_at`` non-decreasing within
    a key, ``event_timestamp`` non-decreasing within an ``available_at`` tie: nearly free) and,
    if it does not hold, warns and sorts instead. Ingestion order within full ties is the
    frame's row order, so it cannot be checked: it is what the frame says.
    """

    name: str
    frame: pl.LazyFrame
    keys: tuple[str, ...]
    features: Mapping[str, str]
    query_keys: tuple[str, ...] | None = None
    presorted: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        if self.query_keys is not None:
            object.__setattr__(self, "query_keys", tuple(self.query_keys))
        if isinstance(self.frame, pl.DataFrame):
            object.__setattr__(self, "frame", self.frame.lazy())

    @property
    def matched_query_keys(self) -> tuple[str, ...]:
        return self.keys if self.query_keys is None else self.query_keys  # type: ignore[return-value]


@dataclass(frozen=True)
class AuditReport:
    """Outcome of ``audit``: how many values were checked and which broke the rule."""

    n_checked: int
    n_violations: int
    examples: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.n_violations == 0

    def __str__(self) -> str:
        head = f"audit: {self.n_checked} values checked, {self.n_violations} violations"
        return head + "".join(f"\n  {e}" for e in self.examples)


# --------------------------------------------------------------------------------------------
# layout


def sort_for_retrieval(
    frame: pl.LazyFrame | pl.DataFrame,
    keys: Sequence[str],
    *,
    event_timestamp: str = EVENT_TIMESTAMP,
    available_at: str = AVAILABLE_AT,
) -> pl.LazyFrame:
    """The artifact layout retrieval expects: sorted by (keys, available_at, event_timestamp).

    The sort is stable, so rows equal on all three keep their ingestion order (later rows win
    ties). Null ``available_at`` rows go last within their key (they are never available); a
    null ``event_timestamp`` sorts first within an ``available_at`` tie (it loses the tie).
    """
    keys = list(keys)
    return frame.lazy().sort(
        [*keys, available_at, event_timestamp],
        nulls_last=[True] * len(keys) + [True, False],
        maintain_order=True,
    )


# --------------------------------------------------------------------------------------------
# validation and dtype alignment shared by both engines


def _dtype_family(dtype: pl.DataType) -> str:
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, (pl.Categorical, pl.Enum)):
        return "string"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    if isinstance(dtype, pl.Duration):
        return "duration"
    if dtype == pl.Null:
        return "null"
    return "other"


def _finer_unit(a: str, b: str) -> str:
    return a if _UNIT_RANK[a] >= _UNIT_RANK[b] else b


@dataclass(frozen=True)
class _KeyPair:
    query_col: str
    frame_col: str
    internal: str
    query_dtype: pl.DataType
    frame_dtype: pl.DataType
    common: pl.DataType
    query_strict: bool  # False: values that do not fit become null (and so match nothing)

    def query_expr(self) -> pl.Expr:
        return _cast_to(pl.col(self.query_col), self.query_dtype, self.common, self.query_strict)

    def frame_expr(self) -> pl.Expr:
        return _cast_to(pl.col(self.frame_col), self.frame_dtype, self.common, True)


def _cast_to(expr: pl.Expr, src: pl.DataType, dst: pl.DataType, strict: bool) -> pl.Expr:
    if src == dst:
        return expr
    if isinstance(src, pl.Datetime) and isinstance(dst, pl.Datetime):
        if src.time_zone is not None and dst.time_zone is not None:
            expr = expr.dt.convert_time_zone(dst.time_zone)
        return expr.dt.cast_time_unit(dst.time_unit)
    return expr.cast(dst, strict=strict)


def _align_key(view: str, qcol: str, qd: pl.DataType, fcol: str, fd: pl.DataType) -> tuple:
    """Return (common dtype, query cast strict?) or raise DataError."""
    if qd == fd:
        return fd, True
    fq, ff = _dtype_family(qd), _dtype_family(fd)
    if fq == "null":
        return fd, True
    if ff == "null":
        return qd, True
    if fq == ff == "int":
        # Cast the query side to the frame's type; a value that does not fit cannot be in the
        # frame, so it becomes null and matches nothing.
        return fd, False
    if fq == ff == "float":
        return pl.Float64(), True
    if fq == ff == "string":
        return pl.String(), True
    if fq == ff == "datetime":
        if (qd.time_zone is None) != (fd.time_zone is None):  # type: ignore[union-attr]
            raise DataError(
                f"view {view!r}: key column {fcol!r} is {fd} but query column {qcol!r} is {qd}; "
                "cannot compare a naive and a zoned datetime key"
            )
        unit = _finer_unit(qd.time_unit, fd.time_unit)  # type: ignore[union-attr]
        tz = None if fd.time_zone is None else "UTC"  # type: ignore[union-attr]
        return pl.Datetime(unit, tz), True
    if fq == ff == "duration":
        return pl.Duration(_finer_unit(qd.time_unit, fd.time_unit)), True  # type: ignore[union-attr]
    raise DataError(
        f"view {view!r}: key column {fcol!r} has dtype {fd} but query column {qcol!r} has dtype "
        f"{qd}; these cannot be compared"
    )


def _timestamp_unit(dtype: pl.DataType) -> str:
    return dtype.time_unit if isinstance(dtype, pl.Datetime) else "us"  # Date -> us


def _utc_instant(expr: pl.Expr, dtype: pl.DataType, naive_zone: str) -> pl.Expr:
    """Datetime/Date expression -> Datetime(unit, "UTC") of the same instants."""
    if dtype == pl.Date:
        expr = expr.cast(pl.Datetime("us"))
        dtype = pl.Datetime("us")
    if dtype.time_zone is None:  # type: ignore[union-attr]
        if naive_zone == "UTC":
            return expr.dt.replace_time_zone("UTC")
        return expr.dt.replace_time_zone(
            naive_zone, ambiguous="earliest", non_existent="raise"
        ).dt.convert_time_zone("UTC")
    return expr.dt.convert_time_zone("UTC")


@dataclass(frozen=True)
class _ViewPlan:
    view: ViewFrame
    index: int
    pairs: tuple[_KeyPair, ...]
    av_dtype: pl.DataType
    unit: str  # common time unit of cutoff and available_at for this view
    outputs: tuple[tuple[str, str, pl.DataType], ...]  # (output name, frame column, dtype)

    @property
    def av_out_dtype(self) -> pl.DataType:
        return pl.Datetime(_timestamp_unit(self.av_dtype), "UTC")


def _internal_prefix(columns: Iterable[str], views: Sequence[ViewFrame] = ()) -> str:
    """A column-name prefix no query or view column starts with (for temporary columns)."""
    prefix = "__fs_"
    cols = list(columns)
    for v in views:
        cols += v.frame.collect_schema().names()
    while any(c.startswith(prefix) for c in cols):
        prefix = "_" + prefix
    return prefix


def _normalize_views(views: ViewFrame | Sequence[ViewFrame]) -> list[ViewFrame]:
    if isinstance(views, ViewFrame):
        return [views]
    out = list(views)
    for v in out:
        if not isinstance(v, ViewFrame):
            raise TypeError(f"expected ViewFrame, got {type(v).__name__}")
    return out


def _plan(
    query_schema: Mapping[str, pl.DataType],
    views: list[ViewFrame],
    cutoff: str,
    cutoff_timezone: str | None,
    with_availability: bool,
    ttl: timedelta | None,
    prefix: str,
) -> list[_ViewPlan]:
    if cutoff not in query_schema:
        raise DataError(f"query has no cutoff column {cutoff!r}")
    cdt = query_schema[cutoff]
    if not (isinstance(cdt, pl.Datetime) or cdt == pl.Date):
        raise DataError(
            f"query cutoff column {cutoff!r} has dtype {cdt}; expected Datetime or Date"
        )
    if cutoff_timezone is not None:
        try:
            zoneinfo.ZoneInfo(cutoff_timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise DataError(f"unknown cutoff_timezone {cutoff_timezone!r}") from exc
    if ttl is not None:
        if not isinstance(ttl, timedelta):
            raise TypeError(f"ttl must be a datetime.timedelta, got {type(ttl).__name__}")
        if ttl < timedelta(0):
            raise DataError(f"ttl must not be negative, got {ttl}")
    cunit = _timestamp_unit(cdt)
    taken: dict[str, str] = {c: "the query" for c in query_schema}
    plans: list[_ViewPlan] = []
    for i, view in enumerate(views):
        schema = view.frame.collect_schema()
        qkeys = view.matched_query_keys
        if not view.keys:
            raise DataError(f"view {view.name!r}: no key columns")
        if len(qkeys) != len(view.keys):
            raise DataError(
                f"view {view.name!r}: {len(view.keys)} key columns {list(view.keys)} but "
                f"{len(qkeys)} query key columns {list(qkeys)}"
            )
        for col in (*view.keys, AVAILABLE_AT, *view.features.values()):
            if col not in schema:
                raise DataError(f"view {view.name!r}: frame has no column {col!r}")
        avd = schema[AVAILABLE_AT]
        if not (isinstance(avd, pl.Datetime) or avd == pl.Date):
            raise DataError(
                f"view {view.name!r}: column {AVAILABLE_AT!r} has dtype {avd}; expected Datetime"
            )
        pairs = []
        for j, (qk, fk) in enumerate(zip(qkeys, view.keys, strict=True)):
            if qk not in query_schema:
                raise DataError(f"view {view.name!r}: query has no key column {qk!r}")
            common, strict = _align_key(view.name, qk, query_schema[qk], fk, schema[fk])
            pairs.append(
                _KeyPair(qk, fk, f"{prefix}k{j}", query_schema[qk], schema[fk], common, strict)
            )
        outputs = []
        for out, col in view.features.items():
            names = [out, availability_column(out)] if with_availability else [out]
            for name in names:
                if name in taken:
                    raise DataError(
                        f"view {view.name!r}: output column {name!r} clashes with a column of "
                        f"{taken[name]}"
                    )
                if name.startswith(prefix):
                    raise DataError(f"view {view.name!r}: output column {name!r} is reserved")
                taken[name] = f"view {view.name!r}"
            outputs.append((out, col, schema[col]))
        unit = _finer_unit(cunit, _timestamp_unit(avd))
        plans.append(_ViewPlan(view, i, tuple(pairs), avd, unit, tuple(outputs)))
    return plans


def _ttl_units(ttl: timedelta, unit: str) -> int:
    """ttl in whole ``unit`` (floored: with integer instants, ``av < T - ttl`` is
    ``av < T - floor(ttl)``)."""
    if unit == "ns":
        return (ttl // timedelta(microseconds=1)) * 1000
    if unit == "us":
        return ttl // timedelta(microseconds=1)
    return ttl // timedelta(milliseconds=1)


def _null_result(plan: _ViewPlan, n: int, with_availability: bool) -> list[pl.Series]:
    schema = {out: dt for out, _, dt in plan.outputs}
    if with_availability:
        schema |= {availability_column(out): plan.av_out_dtype for out, _, _ in plan.outputs}
    return pl.DataFrame(schema=schema).clear(n).get_columns()


# --------------------------------------------------------------------------------------------
# eager engine: packed search + one streaming pass over the matched rows


def point_in_time_join(
    query: pl.DataFrame | pl.LazyFrame,
    views: ViewFrame | Sequence[ViewFrame],
    *,
    cutoff: str = EVENT_TIMESTAMP,
    inclusive: bool = False,
    ttl: timedelta | None = None,
    cutoff_timezone: str | None = None,
    with_availability: bool = False,
) -> pl.DataFrame:
    """Join each view's features to ``query`` as of each row's ``cutoff`` (see module doc).

    Returns the query's columns unchanged followed, view by view, by the feature columns (and
    their ``<feature>__available_at`` columns when ``with_availability``).
    """
    q = query.collect() if isinstance(query, pl.LazyFrame) else query
    vs = _normalize_views(views)
    prefix = _internal_prefix(q.columns, vs)
    plans = _plan(q.schema, vs, cutoff, cutoff_timezone, with_availability, ttl, prefix)
    if not plans:
        return q
    tz = cutoff_timezone or "UTC"
    try:
        cut_utc = q.select(_utc_instant(pl.col(cutoff), q.schema[cutoff], tz)).to_series()
    except (ComputeError, InvalidOperationError) as exc:
        raise DataError(
            f"query cutoff column {cutoff!r}: cannot read naive times in zone {tz!r}: {exc}"
        ) from exc
    out = [q]
    for plan in plans:
        cols = _join_view(q, cut_utc, plan, inclusive, ttl, with_availability, prefix)
        out.append(pl.DataFrame(cols))
    return pl.concat(out, how="horizontal")


def _join_view(
    q: pl.DataFrame,
    cut_utc: pl.Series,
    plan: _ViewPlan,
    inclusive: bool,
    ttl: timedelta | None,
    with_availability: bool,
    prefix: str,
) -> list[pl.Series]:
    view = plan.view
    n_query = q.height
    if not plan.outputs or n_query == 0:
        return _null_result(plan, n_query, with_availability)
    fkeys = [p.frame_col for p in plan.pairs]
    ridx = f"{prefix}i"
    avp = f"{prefix}av"
    av_expr = (
        pl.col(AVAILABLE_AT).cast(pl.Datetime("us"))
        if plan.av_dtype == pl.Date
        else pl.col(AVAILABLE_AT)
    )
    av_phys = av_expr.dt.cast_time_unit(plan.unit).to_physical().alias(avp)

    gcol = f"{prefix}g"
    run = (pl.struct(fkeys) if len(fkeys) > 1 else pl.col(fkeys[0])).rle_id().alias(gcol)
    source: pl.LazyFrame | pl.DataFrame = view.frame
    packed = None
    if view.presorted:
        k = view.frame.select(*fkeys, av_phys).with_columns(run).collect()
        n_rows = k.height
        if k[avp].null_count():
            k = k.with_row_index(ridx).filter(pl.col(avp).is_not_null()).with_columns(run)
        packed = _pack(k, fkeys, avp, gcol)
        if packed is not None and not _ties_in_order(view.frame, k, packed[0], ridx):
            packed = None
        if packed is None:
            warnings.warn(
                f"view {view.name!r}: frame flagged presorted is not sorted by "
                f"(keys, {AVAILABLE_AT}, {EVENT_TIMESTAMP}); sorting it",
                stacklevel=3,
            )
    if packed is None:
        # Not presorted: materialize once, sort only the narrow columns (stable: ingestion order
        # decides full ties), and gather features from the in-memory frame.
        df = view.frame.collect()
        source = df
        n_rows = df.height
        et = [pl.col(EVENT_TIMESTAMP)] if EVENT_TIMESTAMP in df.columns else []
        k = (
            df.select(*fkeys, av_phys, *et)
            .with_row_index(ridx)
            .filter(pl.col(avp).is_not_null())
            .sort(
                [*fkeys, avp, *([EVENT_TIMESTAMP] if et else [])],
                nulls_last=False,
                maintain_order=True,
            )
            .with_columns(run)
        )
        packed = _pack(k, fkeys, avp, gcol)
        assert packed is not None  # sorted just above
    packed_a, grp, lo, span = packed
    k = k.select(avp, *([ridx] if ridx in k.columns else []))  # free the key columns

    # Query side: run number of each key (hash join against the distinct keys), packed cutoff.
    internals = [p.internal for p in plan.pairs]
    gtab = grp.select(*[p.frame_expr().alias(p.internal) for p in plan.pairs], pl.col(gcol))
    qk = q.select([p.query_expr().alias(p.internal) for p in plan.pairs])
    g = qk.join(gtab, on=internals, how="left", maintain_order="left", nulls_equal=False)[gcol]
    t = cut_utc.dt.cast_time_unit(plan.unit).to_physical()
    dt = packed_a.dtype
    packed_q = pl.select(
        (
            pl.lit(g).cast(dt) * pl.lit(span, dtype=dt)
            + (pl.lit(t).clip(lo - 1, lo + span - 2).cast(dt) - pl.lit(lo - 1, dtype=dt))
        ).alias("q")
    ).to_series()
    # Sort only the query (nulls: no key run or no cutoff, last and dropped), then search.
    order = packed_q.arg_sort(nulls_last=True).slice(0, n_query - packed_q.null_count())
    pos = packed_a.search_sorted(packed_q.gather(order), side="right" if inclusive else "left")
    m = pos.cast(pl.Int64) - 1
    m_safe = m.clip(0, None)
    # A hit in an earlier key run packs below this run's base: not a match.
    ok = pl.select(
        (pl.lit(m) >= 0)
        & (
            pl.lit(packed_a.gather(m_safe))
            > pl.lit(g.gather(order)).cast(dt) * pl.lit(span, dtype=dt)
        )
    ).to_series()
    if ttl is not None:
        stale_before = t.gather(order) - min(_ttl_units(ttl, plan.unit), 2**62)
        ok = ok & (k[avp].gather(m_safe) >= stale_before)
    rows = k[ridx].gather(m_safe) if ridx in k.columns else m_safe
    return _fetch(
        plan, source, n_rows, n_query, order, ok, rows, k[avp], m_safe, with_availability, prefix
    )


def _pack(
    k: pl.DataFrame, fkeys: list[str], avp: str, gcol: str
) -> tuple[pl.Series, pl.DataFrame, int, int] | None:
    """Pack (key run, available_at) of a key-sorted frame into one sorted integer column.

    ``k`` holds the key columns, the physical ``available_at`` (no nulls) and the key run
    number ``gcol`` (``rle_id``). Returns (packed, distinct keys with their run number, lowest
    instant, span) or None when ``k`` is not sorted by (keys, available_at): a key in two runs,
    or time going back within a run.
    """
    if k.height == 0:
        return pl.Series("A", [], dtype=pl.Int64), k.select(*fkeys, gcol), 0, 3
    runs = k[gcol]
    n_runs = int(runs[-1]) + 1
    starts = runs.search_sorted(pl.int_range(n_runs, dtype=pl.UInt32, eager=True), side="left")
    grp = k.select(*fkeys, gcol).gather(starts)
    if n_runs > 1 and grp.select(pl.struct(fkeys).is_duplicated().any()).item():
        return None
    lo, hi = k.select(pl.col(avp).min(), pl.col(avp).max().alias("hi")).row(0)
    span = hi - lo + 3  # offsets 1..hi-lo+1 for rows; 0 and hi-lo+2 for cutoffs outside
    dt = pl.Int64 if n_runs * span < _INT128_LIMIT else pl.Int128
    packed = k.select(
        (
            pl.col(gcol).cast(dt) * pl.lit(span, dtype=dt)
            + (pl.col(avp).cast(dt) - pl.lit(lo - 1, dtype=dt))
        ).alias("A")
    ).to_series()
    if not packed.is_sorted():
        return None
    return packed, grp, lo, span


def _ties_in_order(frame: pl.LazyFrame, k: pl.DataFrame, packed: pl.Series, ridx: str) -> bool:
    """Within each (keys, available_at) tie, is ``event_timestamp`` non-decreasing (nulls first)?

    Only read when there are ties at all (a strictly increasing packed column has none).
    """
    same = (packed == packed.shift(1)).fill_null(False)
    if EVENT_TIMESTAMP not in frame.collect_schema() or not same.any():
        return True
    et = frame.select(pl.col(EVENT_TIMESTAMP).to_physical()).collect().to_series()
    if ridx in k.columns:  # rows with a null available_at were dropped from k
        et = et.gather(k[ridx])
    prev = et.shift(1)
    back = (et.is_null() & prev.is_not_null()) | (et < prev).fill_null(False)
    return not (same & back).any()


def _fetch(
    plan: _ViewPlan,
    source: pl.LazyFrame | pl.DataFrame,
    n_rows: int,
    n_query: int,
    order: pl.Series,
    ok: pl.Series,
    rows: pl.Series,
    av: pl.Series,
    m: pl.Series,
    with_availability: bool,
    prefix: str,
) -> list[pl.Series]:
    """Gather the matched rows' features (one pass over ``source``) into query order.

    ``order[j]`` is the query row of the j-th searched value, ``rows[j]`` its matched row in
    ``source`` (valid where ``ok[j]``), ``m[j]`` its position in the searched frame.
    """
    view = plan.view
    valid_order = order.filter(ok)
    valid_rows = rows.filter(ok).cast(pl.UInt32)
    if valid_rows.len() == 0:
        return _null_result(plan, n_query, with_availability)
    if valid_rows.is_sorted():  # always, for a presorted frame: no hashing needed
        uniq = valid_rows.filter(valid_rows.ne_missing(valid_rows.shift(1)))
    else:
        uniq = valid_rows.unique().sort()
    # Position of each matched row in the fetched subset (ascending unique rows), in query order.
    sub_pos = uniq.search_sorted(valid_rows, side="left")
    pos = pl.repeat(None, n_query, dtype=pl.UInt32, eager=True).scatter(valid_order, sub_pos)
    distinct_cols = list(dict.fromkeys(c for _, c, _ in plan.outputs))
    if isinstance(source, pl.DataFrame):
        sub = source.select(distinct_cols).gather(uniq)
    else:
        ridx = f"{prefix}row"
        mask = pl.repeat(False, n_rows, dtype=pl.Boolean, eager=True).scatter(uniq, True)
        sub = (
            source.select(distinct_cols)
            .with_row_index(ridx)
            .filter(pl.lit(mask).gather(pl.col(ridx)))
            .drop(ridx)
            .collect(engine="streaming")
        )
        if sub.height != uniq.len():
            raise DataError(
                f"view {view.name!r}: frame returned different rows on a second read; a "
                "presorted frame must be deterministic (e.g. a Parquet scan)"
            )
    # Column by column (peak memory: the fetched rows plus one column): rechunk (the scan gives
    # one chunk per row group: slow gathers), gather with non-null indices, then null the
    # unmatched rows, which is faster than a gather with null indices.
    idx = pos.fill_null(0)
    matched = pos.is_not_null() if pos.null_count() else None
    got: dict[str, pl.Series] = {}
    for c in distinct_cols:
        col = sub.get_column(c).rechunk().gather(idx)
        sub = sub.drop(c)
        if matched is not None:
            col = pl.select(pl.when(matched).then(col)).to_series()
        got[c] = col
    result = [got[c].alias(out) for out, c, _ in plan.outputs]
    if with_availability:
        av_q = pl.repeat(None, n_query, dtype=pl.Int64, eager=True).scatter(
            valid_order, av.gather(m.filter(ok))
        )
        av_dt = av_q.cast(pl.Datetime(plan.unit, "UTC")).dt.cast_time_unit(
            _timestamp_unit(plan.av_dtype)
        )
        result += [av_dt.alias(availability_column(out)) for out, _, _ in plan.outputs]
    return result


# --------------------------------------------------------------------------------------------
# lazy engine: join_asof plan


def point_in_time_join_lazy(
    query: pl.DataFrame | pl.LazyFrame,
    views: ViewFrame | Sequence[ViewFrame],
    *,
    cutoff: str = EVENT_TIMESTAMP,
    inclusive: bool = False,
    ttl: timedelta | None = None,
    cutoff_timezone: str | None = None,
    with_availability: bool = False,
) -> pl.LazyFrame:
    """Same result as ``point_in_time_join``, as a lazy plan (``join_asof`` by key).

    Validation (columns, dtypes, name clashes) happens now; a naive cutoff that does not exist in
    ``cutoff_timezone`` raises polars' ``ComputeError`` at collect time.
    """
    lq = query.lazy()
    qschema = lq.collect_schema()
    vs = _normalize_views(views)
    prefix = _internal_prefix(qschema.names(), vs)
    plans = _plan(qschema, vs, cutoff, cutoff_timezone, with_availability, ttl, prefix)
    if not plans:
        return lq
    row, cut = f"{prefix}row", f"{prefix}cut"
    tz = cutoff_timezone or "UTC"
    lq = (
        lq.with_row_index(row)
        .with_columns(_utc_instant(pl.col(cutoff), qschema[cutoff], tz).alias(cut))
        .sort(cut, nulls_last=False, maintain_order=True)
    )
    new_cols: list[str] = []
    for plan in plans:
        view = plan.view
        i = plan.index
        av, qcut = f"{prefix}av{i}", f"{prefix}cut{i}"
        keyn = [f"{p.internal}_{i}" for p in plan.pairs]
        if not plan.outputs:
            continue
        frame = view.frame if view.presorted else sort_for_retrieval(view.frame, view.keys)
        av_expr = (
            pl.col(AVAILABLE_AT).cast(pl.Datetime("us"))
            if plan.av_dtype == pl.Date
            else pl.col(AVAILABLE_AT)
        )
        f = frame.filter(pl.col(AVAILABLE_AT).is_not_null()).select(
            *[p.frame_expr().alias(n) for p, n in zip(plan.pairs, keyn, strict=True)],
            _utc_instant(
                av_expr, plan.av_dtype if plan.av_dtype != pl.Date else pl.Datetime("us"), "UTC"
            )
            .dt.cast_time_unit(plan.unit)
            .alias(av),
            *[pl.col(c).alias(out) for out, c, _ in plan.outputs],
        )
        # Keep the last row of each (keys, available_at) tie group: the tie-break winner.
        # (The last row compares with a null shift: ``ne_missing`` is true on its non-null av.)
        f = f.filter(
            pl.any_horizontal(*[pl.col(n).ne_missing(pl.col(n).shift(-1)) for n in [*keyn, av]])
        )
        lq = lq.with_columns(
            *[p.query_expr().alias(n) for p, n in zip(plan.pairs, keyn, strict=True)],
            pl.col(cut).dt.cast_time_unit(plan.unit).alias(qcut),
        ).join_asof(
            f,
            left_on=qcut,
            right_on=av,
            by=keyn,
            strategy="backward",
            allow_exact_matches=inclusive,
            check_sortedness=False,
        )
        ok = pl.all_horizontal(*[pl.col(n).is_not_null() for n in keyn]) & pl.col(av).is_not_null()
        if ttl is not None:
            ok = ok & (pl.col(av) >= pl.col(qcut) - ttl)
        exprs = [
            pl.when(ok).then(pl.col(out)).otherwise(None).alias(out) for out, _, _ in plan.outputs
        ]
        new_cols += [out for out, _, _ in plan.outputs]
        if with_availability:
            av_out = pl.col(av).dt.cast_time_unit(_timestamp_unit(plan.av_dtype))
            exprs += [
                pl.when(ok).then(av_out).otherwise(None).alias(availability_column(out))
                for out, _, _ in plan.outputs
            ]
            new_cols += [availability_column(out) for out, _, _ in plan.outputs]
        lq = lq.with_columns(exprs).drop([*keyn, av, qcut], strict=False)
    return lq.sort(row).select([*qschema.names(), *new_cols])


# --------------------------------------------------------------------------------------------
# audit


def audit(
    frame: pl.DataFrame | pl.LazyFrame,
    cutoff: str = EVENT_TIMESTAMP,
    features: Iterable[str] | None = None,
    inclusive: bool = False,
    *,
    cutoff_timezone: str | None = None,
    max_examples: int = 10,
) -> AuditReport:
    """Prove the point-in-time rule on a ``with_availability=True`` result.

    For every feature (default: every column with a ``__available_at`` partner) and row, a
    present value or availability is *checked*; it is a *violation* unless its availability is
    known and ``< cutoff`` (``<=`` when ``inclusive``). A value without availability, or a value
    on a row whose cutoff is null, is a violation: it cannot be proven safe.
    """
    df = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
    if cutoff not in df.columns:
        raise DataError(f"audit: frame has no cutoff column {cutoff!r}")
    if features is None:
        features = [
            c[: -len(AVAILABILITY_SUFFIX)]
            for c in df.columns
            if c.endswith(AVAILABILITY_SUFFIX) and c[: -len(AVAILABILITY_SUFFIX)] in df.columns
        ]
    features = list(features)
    for f in features:
        for col in (f, availability_column(f)):
            if col not in df.columns:
                raise DataError(f"audit: frame has no column {col!r}")
    tz = cutoff_timezone or "UTC"
    cut = _utc_instant(pl.col(cutoff), df.schema[cutoff], tz)
    n_checked = 0
    n_bad = 0
    examples: list[dict[str, Any]] = []
    rowi = _internal_prefix(df.columns) + "row"
    for f in features:
        a = availability_column(f)
        avail = _utc_instant(pl.col(a), df.schema[a], "UTC")
        present = pl.col(f).is_not_null() | pl.col(a).is_not_null()
        safe = (avail <= cut) if inclusive else (avail < cut)
        bad = present & ~safe.fill_null(False)
        stats = df.select(present.sum().alias("n"), bad.sum().alias("b")).row(0)
        n_checked += int(stats[0])
        n_bad += int(stats[1])
        if stats[1] and len(examples) < max_examples:
            rows = (
                df.with_row_index(rowi)
                .filter(bad)
                .head(max_examples - len(examples))
                .select(rowi, pl.col(cutoff), pl.col(a), pl.col(f))
            )
            for r in rows.iter_rows():
                examples.append(
                    {"row": r[0], "feature": f, "cutoff": r[1], "available_at": r[2], "value": r[3]}
                )
    return AuditReport(n_checked, n_bad, tuple(examples))
