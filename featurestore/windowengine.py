"""Windows anchored at the cutoff: aggregate each entity's rows over ``[T - w, T)`` per query row.

For a query row (keys ``K``, cutoff ``T``) and a window of width ``w``, the window holds the rows
of ``K`` with ``T - w <= available_at < T`` (``<= T`` with ``inclusive``); the lower bound is
always closed. ``w = None`` is the expanding window: every row of ``K`` available before ``T``.
With ``ttl`` a row available before ``T - ttl`` is stale, as in point-in-time retrieval, so the
lower bound becomes ``max(T - w, T - ttl)``. Whatever the newest row's time, an empty window
gives count 0 and null for every other aggregation: never a stale value.

Aggregations over a value column (a null value, NaN included, is not a value: it is skipped, so a
``where`` filter is expressed by nulling the rows it rejects): ``count`` (non-null values),
``sum``, ``mean``, ``std`` (sample, ddof 1: null below two values), ``min``, ``max``, ``first``
and ``last`` (the value of the earliest and of the latest row with a value, in the order
``available_at``, ``event_timestamp``, then the rows' order in the frame, the tie rule of
point-in-time retrieval). A query row with a null key or a null cutoff matches nothing: every
output, count included, is null.

Cost, with ``n`` rows and ``q`` query rows: rows are sorted by (keys, ``available_at``) once (a
frame already in that order, as view artifacts are, is only checked), every key run becomes a
segment, and the (segment, time) pairs pack into one sorted integer column, so each window
boundary of every query row is one binary search; the query rows are taken in (segment,
cutoff) order (``featurestore.windowout``), so the searches go run by run of query rows
within the stretch of the column the run falls in (``featurestore.sortedsearch``). Then

* count, sum, mean, std: differences of prefix sums at the two boundaries. For floats the sums
  are of values shifted by their segment's mean (so the running sum is back near zero at every
  segment's end; the squares for std restart at every segment), so a large common offset
  (timestamps as values, say) does not cancel digits away;
* min, max: a window of at most 128 rows is reduced directly over its rows, all windows in one
  ``reduceat`` (the query rows come in row order, so the rows between consecutive windows that
  it also reduces add at most ``n``), or, when the windows hold few of the rows they span,
  step by step from each window's first row;
  a longer one is its head and tail rows plus whole 32-row blocks from a sparse table over the
  block extremes, built only up to the levels the windows need;
* first, last: the next and the previous row with a value, precomputed for every row.

So ``O((n + q) log n)`` time and ``O(n)`` memory per value column, never a scan of more than
128 rows per query row.
When the packed integers would overflow (very many segments times a very long time span in
nanoseconds), the searches fall back to a vectorized bisection within each segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import polars as pl

from featurestore.errors import DataError
from featurestore.layout import sorted_by
from featurestore.numpy_memory import no_hugepages, reuse_freed_memory
from featurestore.sortedsearch import searchsorted_runs
from featurestore.windowagg import Column, add_per_segment, aggregate, newest_row
from featurestore.windowdefs import AGGS, WindowOutput, output_dtype
from featurestore.windowout import QueryOrder, series_with_nulls

__all__ = ["AGGS", "WindowOutput", "output_dtype", "window_aggregate"]

_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000}
_PACK_LIMIT = 2**62
_CHUNK = 1 << 18  # rows per step of a chunked pass: its temporaries stay in cache
_REUSE_FROM = 1 << 21  # rows + query rows from which freed memory is kept for reuse


# --------------------------------------------------------------------------------------------
# layout: segments and boundary searches


def _ns(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000


def _unit_of(dtype: pl.DataType) -> str:
    return dtype.time_unit if isinstance(dtype, pl.Datetime) else "us"  # type: ignore[union-attr]


def _physical(s: pl.Series, unit: str) -> pl.Series:
    """A Datetime/Date series as Int64 instants in ``unit`` (UTC when zoned)."""
    if s.dtype == pl.Date:
        s = s.cast(pl.Datetime("us"))
    # A zoned datetime's physical value is already the UTC instant (a naive one is read as
    # UTC): only the unit may need converting, and no copy is made when it does not.
    if s.dtype.time_unit != unit:  # type: ignore[union-attr]
        s = s.dt.cast_time_unit(unit)  # type: ignore[arg-type]
    return s.to_physical()


def _finest(units: Sequence[str]) -> str:
    return min(units, key=lambda u: _UNIT_NS[u])


@dataclass
class _Layout:
    """Rows sorted by (segment, time) and every query row's segment and cutoff.

    When the packing fits and ``av`` is a writable array of our own (a converted multi-chunk
    column is; a zero-copy view of the frame's buffer never is), the rows are packed in its
    place instead of in one more array of ``n`` integers: ``av`` is then None and
    ``time_at`` reads the instants back from the packing."""

    av: np.ndarray | None  # int64 instants of the sorted rows (None once packed in place)
    seg_start: np.ndarray  # per segment: first row (int64), plus n at the end
    q_seg: np.ndarray  # per query row (sorted by segment, cutoff): segment, -1 for none
    q_t: np.ndarray  # per query row: cutoff instant (valid where q_ok)
    q_ok: np.ndarray  # key and cutoff present
    packed: np.ndarray | None = None  # seg * span + (av - lo_t + 1), when that fits an int64
    # per query row: its segment's offset in the packing (with ``packed``)
    q_base: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    lo_t: int = 0
    span: int = 3
    n: int = 0

    def __post_init__(self) -> None:
        assert self.av is not None
        self.n = len(self.av)
        if self.n == 0:
            return
        self.lo_t = int(self.av.min())
        self.span = int(self.av.max()) - self.lo_t + 3
        n_seg = len(self.seg_start) - 1
        if n_seg * self.span < _PACK_LIMIT:
            # Rows pack to seg * span + (1 .. span - 2); a bound clipped to [0, span - 1] stays
            # in its segment, so one global search answers within the segment.
            if self.av.flags.writeable and self.av.dtype == np.int64:
                packed, self.av = self.av, None
                packed -= self.lo_t - 1
            else:
                packed = self.av - (self.lo_t - 1)
            add_per_segment(packed, np.arange(n_seg, dtype=np.int64) * self.span, self.seg_start)
            self.packed = packed
            self.q_base = np.maximum(self.q_seg, 0) * self.span

    def time_at(self, rows: np.ndarray) -> np.ndarray:
        """The instants of ``rows``, one row of its query row's segment per query row."""
        if self.av is not None:
            return self.av[rows]
        assert self.packed is not None
        out = self.packed[rows]
        out -= self.q_base
        out += self.lo_t - 1
        return out


def _segments(keys_df: pl.DataFrame) -> np.ndarray:
    """First row of every key run of a key-sorted frame, plus its height at the end."""
    n = keys_df.height
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    if keys_df.width == 1 and keys_df.dtypes[0].is_numeric():
        k = keys_df.to_series().to_numpy()
        starts = np.flatnonzero(k[1:] != k[:-1]) + 1
        return np.concatenate([[0], starts, [n]]).astype(np.int64)
    change = pl.select(pl.any_horizontal(
        [pl.lit(keys_df[c]).ne_missing(pl.lit(keys_df[c]).shift(1)) for c in keys_df.columns]
    )).to_series().fill_null(True).to_numpy()
    change[0] = True
    return np.append(np.flatnonzero(change), n).astype(np.int64)


def _query_segments(rows_keys: pl.DataFrame, seg_start: np.ndarray, query_keys: pl.DataFrame,
                    keys: Sequence[str], query_key_names: Sequence[str]) -> np.ndarray:
    """Each query row's segment (hash join against the distinct keys), -1 for none."""
    starts = seg_start[:-1]
    distinct = rows_keys.gather(starts).with_columns(
        pl.int_range(len(starts), dtype=pl.Int64).alias("__seg"))
    names = [f"__k{i}" for i in range(len(keys))]
    left = distinct.select([pl.col(k).alias(n) for k, n in zip(keys, names, strict=True)]
                           + [pl.col("__seg")])
    cols = []
    for k, qk, n in zip(keys, query_key_names, names, strict=True):
        target = rows_keys.schema[k]
        q = query_keys[qk]
        if q.dtype != target:
            if target in (pl.String, pl.Categorical) or isinstance(target, pl.Enum):
                left = left.with_columns(pl.col(n).cast(pl.String))
                q = q.cast(pl.String)
            else:
                q = q.cast(target, strict=False)  # a value that cannot fit is in no segment
        cols.append(q.alias(n))
    joined = pl.DataFrame(cols).join(left, on=names, how="left", maintain_order="left",
                                     nulls_equal=False)
    return joined["__seg"].fill_null(-1).to_numpy().astype(np.int64)


def _search(lay: _Layout, bound: np.ndarray, side: str, mask: np.ndarray) -> np.ndarray:
    """For each query row (where ``mask``), the first row of its segment whose time is ``>=
    bound`` (``side="left"``) or ``> bound`` (``side="right"``); other rows get 0."""
    out = np.zeros(len(bound), dtype=np.int64)
    if not mask.any() or lay.n == 0:
        return out
    if lay.packed is not None:
        # in place on one temporary: the same packing as the rows', clipped into the segment
        q = bound - (lay.lo_t - 1)
        np.clip(q, 0, lay.span - 1, out=q)
        q += lay.q_base
        found = searchsorted_runs(lay.packed, q, side)  # the query rows come in order
        return np.where(mask, found, 0)
    assert lay.av is not None  # packed in its place only with the packing
    seg = lay.q_seg[mask]
    b = bound[mask]
    lo = lay.seg_start[seg].copy()
    hi = lay.seg_start[seg + 1].copy()
    while True:  # bisection within each segment, all query rows at once
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        t = lay.av[np.minimum(mid, lay.n - 1)]
        go_right = active & ((t < b) if side == "left" else (t <= b))
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    out[mask] = lo
    return out


def _in_order(rows: pl.DataFrame, keys: list[str], available_at: str, ets: list[str]) -> bool:
    """Whether ``rows`` (no null key or time) are sorted by (keys, available_at, event time)."""
    if rows.height < 2:
        return True
    return sorted_by(rows, [*keys, available_at, *ets], nulls_last=False)


def _sorted_runs(key: pl.Series, av: np.ndarray, rows: pl.DataFrame, ets: list[str]
                 ) -> np.ndarray | None:
    """The first row of every key run plus ``n`` at the end, as ``_segments`` gives, when the
    rows (one integer ``key`` without nulls, times ``av``) are sorted by (key, available_at,
    event time); None when they are not.

    The order check and the run starts are one pass, chunk by chunk over numpy views of the
    key's own buffers (no copy of the column, and the temporaries stay small): view
    artifacts are sorted, and then this pass is all the layout costs."""
    n = len(key)
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    starts = [np.zeros(1, dtype=np.int64)]
    tied = False
    off = 0
    prev: int | None = None
    for part in key.get_chunks():
        k = part.to_numpy()
        m = len(k)
        if m == 0:
            continue
        if prev is not None:  # the pair across the chunk border
            if k[0] < prev:
                return None
            if k[0] != prev:
                starts.append(np.array([off], dtype=np.int64))
            elif av[off] < av[off - 1]:
                return None
            else:
                tied = tied or av[off] == av[off - 1]
        for a in range(0, m - 1, _CHUNK):
            b = min(a + _CHUNK, m - 1)
            k0, k1 = k[a:b], k[a + 1:b + 1]
            if (k1 < k0).any():
                return None
            same = k1 == k0
            a0, a1 = av[off + a:off + b], av[off + a + 1:off + b + 1]
            if (same & (a1 < a0)).any():
                return None
            if ets and not tied:
                tied = bool((same & (a1 == a0)).any())
            starts.append(np.flatnonzero(~same) + (off + a + 1))
        prev = int(k[-1])
        off += m
    starts.append(np.array([n], dtype=np.int64))
    if tied and ets:  # equal (key, available_at): the event time must not go back (null first)
        k = key.to_numpy()
        tie = (k[1:] == k[:-1]) & (av[1:] == av[:-1])
        et = rows[ets[0]]
        back = pl.select((et.is_null() & et.shift(1).is_not_null())
                         | (et < et.shift(1)).fill_null(False)).to_series().to_numpy()[1:]
        if (tie & back).any():
            return None
    return np.concatenate(starts).astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------
# entry point


def window_aggregate(rows: pl.DataFrame, query: pl.DataFrame, outputs: Sequence[WindowOutput],
                     *, keys: Sequence[str], query_keys: Sequence[str] | None = None,
                     cutoff: str, available_at: str = "available_at",
                     event_timestamp: str | None = "event_timestamp", inclusive: bool = False,
                     ttl: timedelta | None = None, cutoff_timezone: str = "UTC",
                     with_availability: bool = False) -> list[pl.Series]:
    """One series per output (and, with ``with_availability``, one ``Datetime(unit, "UTC")``
    series per output right after it: the ``available_at`` of the newest row that contributed,
    null when none, except an empty window's count of 0, known just before T: ``T - 1`` unit,
    ``T`` when inclusive), each with one value per query row, in the query's order.

    ``rows`` holds ``keys``, ``available_at`` and the value columns (and ``event_timestamp``,
    which breaks ``available_at`` ties); any order. ``query`` holds ``query_keys`` (default
    ``keys``) and ``cutoff``; naive cutoffs are read in ``cutoff_timezone`` (an ambiguous wall
    time as the earlier instant), naive ``available_at`` as UTC.
    """
    # see featurestore.numpy_memory: short-lived arrays, no THP stalls; and from the size where
    # the temporaries outgrow glibc's mmap threshold, their pages reused (a small call, an online
    # lookup say, is spared the switch and the malloc_trim at its end)
    big = rows.height + query.height >= _REUSE_FROM
    with no_hugepages(), reuse_freed_memory() if big else nullcontext():
        return _window_aggregate(rows, query, outputs, keys=keys, query_keys=query_keys,
                                 cutoff=cutoff, available_at=available_at,
                                 event_timestamp=event_timestamp, inclusive=inclusive, ttl=ttl,
                                 cutoff_timezone=cutoff_timezone,
                                 with_availability=with_availability)


def _window_aggregate(rows: pl.DataFrame, query: pl.DataFrame,
                      outputs: Sequence[WindowOutput], *, keys: Sequence[str],
                      query_keys: Sequence[str] | None, cutoff: str, available_at: str,
                      event_timestamp: str | None, inclusive: bool, ttl: timedelta | None,
                      cutoff_timezone: str, with_availability: bool) -> list[pl.Series]:
    """``window_aggregate`` itself, with numpy's huge-page hint off."""
    keys = list(keys)
    query_keys = list(query_keys) if query_keys is not None else keys
    if len(query_keys) != len(keys):
        raise DataError(f"window: {len(keys)} key columns {keys} but {len(query_keys)} query key "
                        f"columns {query_keys}")
    for col in (*keys, available_at, *(o.value for o in outputs)):
        if col not in rows.columns:
            raise DataError(f"window: the rows have no column {col!r}")
    for col in (*query_keys, cutoff):
        if col not in query.columns:
            raise DataError(f"window: the query has no column {col!r}")
    if ttl is not None and ttl < timedelta(0):
        raise DataError(f"ttl must not be negative, got {ttl}")
    cdt, adt = query.schema[cutoff], rows.schema[available_at]
    for what, dt in (("query cutoff", cdt), ("rows available_at", adt)):
        if not (isinstance(dt, pl.Datetime) or dt == pl.Date):
            raise DataError(f"window: {what} column has dtype {dt}; expected Datetime or Date")

    widths = [_ns(o.window) for o in outputs if o.window is not None]
    if ttl is not None:
        widths.append(_ns(ttl))
    units = [_unit_of(cdt), _unit_of(adt)]
    if any(w % _UNIT_NS[u] for w in widths for u in units):
        units.append("ns")
    unit = _finest(units)

    # Rows: drop never-available ones, order by (keys, available_at, event_timestamp).
    ets = [event_timestamp] if event_timestamp and event_timestamp in rows.columns else []
    # A row with a null key or time can match nothing.
    if any(rows[c].null_count() for c in (*keys, available_at)):
        rows = rows.filter(pl.all_horizontal([pl.col(c).is_not_null()
                                              for c in (*keys, available_at)]))
    order = [*keys, available_at, *ets]
    rows = rows.select(list(dict.fromkeys([*order, *(o.value for o in outputs)])))
    seg_start: np.ndarray | None = None
    if len(keys) == 1 and rows.schema[keys[0]].is_integer():
        # available_at is converted once (a multi-chunk column is copied by the conversion)
        # for the order check, the key runs and the searches; the key is only read in place.
        av = np.asarray(_physical(rows[available_at], unit).to_numpy(), dtype=np.int64)
        seg_start = _sorted_runs(rows[keys[0]], av, rows, ets)
    elif _in_order(rows, keys, available_at, ets):
        av = np.asarray(_physical(rows[available_at], unit).to_numpy(), dtype=np.int64)
        seg_start = _segments(rows.select(keys))
    if seg_start is None:
        # a null event time sorts first: it loses an available_at tie
        rows = rows.sort(order, nulls_last=False, maintain_order=True)
        av = np.asarray(_physical(rows[available_at], unit).to_numpy(), dtype=np.int64)
        seg_start = _segments(rows.select(keys))

    # Query: cutoff as a UTC instant; segment of each key.
    cut = query[cutoff]
    if cdt == pl.Date:
        cut = cut.cast(pl.Datetime("us"))
    if cut.dtype.time_zone is None:  # type: ignore[union-attr]
        cut = cut.dt.replace_time_zone(cutoff_timezone, ambiguous="earliest",
                                       non_existent="raise")
    q_t_s = _physical(cut, unit)
    q_seg = _query_segments(rows.select(keys), seg_start, query.select(query_keys), keys,
                            query_keys)
    q_ok = q_t_s.is_not_null().to_numpy() & query.select(
        pl.all_horizontal([pl.col(k).is_not_null() for k in query_keys])).to_series().to_numpy()
    q_t = q_t_s.fill_null(0).to_numpy().astype(np.int64)
    # Work on the query rows in (segment, cutoff) order: every lookup into the row arrays then
    # moves forward through memory instead of jumping; results go back to query order at the end.
    qorder = QueryOrder(q_seg, q_t, q_ok)
    perm = qorder.perm
    q_seg, q_t, q_ok = q_seg[perm], q_t[perm], q_ok[perm]
    back = qorder.back

    lay = _Layout(av, seg_start, q_seg, q_t, q_ok)
    del av  # the layout may have packed the rows in its place
    found = q_ok & (q_seg >= 0)

    hi = _search(lay, q_t, "right" if inclusive else "left", found)
    starts = np.where(found, seg_start[np.maximum(q_seg, 0)], 0)  # expanding windows
    ttl_units = None if ttl is None else _ns(ttl) // _UNIT_NS[unit]
    lows: dict[timedelta | None, np.ndarray] = {}
    for w in dict.fromkeys(o.window for o in outputs):
        bounds = []
        if w is not None:
            bounds.append(_ns(w) // _UNIT_NS[unit])
        if ttl_units is not None:
            bounds.append(ttl_units)
        if not bounds:
            lows[w] = starts
            continue
        lower = q_t - min(min(bounds), 2**62)
        lows[w] = np.minimum(_search(lay, lower, "left", found), hi)
    av_unit = _unit_of(adt)
    columns: dict[str, Column] = {}
    counts: dict[tuple[str, timedelta | None], np.ndarray] = {}  # shared by a window's outputs
    shared: dict[tuple[str, timedelta | None], dict[str, object]] = {}  # and what else they share
    seg = np.maximum(q_seg, 0)
    oks: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # id(valid) -> (valid, in query order)
    result: list[pl.Series] = []
    for o in outputs:
        if o.value not in columns:
            columns[o.value] = Column.of(rows[o.value], seg_start)
        col = columns[o.value]
        lo, h = lows[o.window], hi  # both 0 where not found: an empty range
        if (o.value, o.window) not in counts:
            cnt = col.get("count")
            counts[o.value, o.window] = cnt[h] - cnt[lo]
        count = counts[o.value, o.window]
        values, valid, newest = aggregate(col, o.agg, lo, h, seg, count,
                                          shared.setdefault((o.value, o.window), {}))
        if with_availability and newest is None:
            newest = newest_row(col, h, count > 0)
        dtype = output_dtype(o.agg, rows.schema[o.value])
        if id(valid) not in oks:  # outputs over one window share their validity
            oks[id(valid)] = (valid, back(valid & q_ok))
        ok = oks[id(valid)][1]
        if with_availability:
            assert newest is not None
            has = (newest >= 0) & q_ok
            stamp_np = np.where(has, lay.time_at(np.maximum(newest, 0)) if lay.n else 0, 0)
            if o.agg == "count":
                # An empty window's 0 is known from the rows available before T: the last
                # instant before T (T itself when inclusive) is its availability.
                empty = (newest < 0) & q_ok
                stamp_np = np.where(empty, q_t - (0 if inclusive else 1), stamp_np)
                has = has | empty
            stamp_np, has = back(stamp_np), back(has)
        values = back(values)
        if o.agg in ("first", "last"):
            n = len(col.series)
            series = col.series.gather(np.clip(values, 0, n - 1)) if n else \
                pl.Series(o.value, [None] * len(values), dtype=col.series.dtype)
            series = series.cast(dtype)
            invalid = np.flatnonzero(~ok)
            if len(invalid):
                series = series.scatter(invalid, None)
        else:
            series = series_with_nulls(o.value, values, ok, dtype)
        result.append(series.alias(o.name))
        if with_availability:
            stamp = series_with_nulls(o.name, stamp_np, has, pl.Int64())
            result.append(stamp.cast(pl.Datetime(unit, "UTC")).dt.cast_time_unit(av_unit)
                          .alias(f"{o.name}__available_at"))
    return result
