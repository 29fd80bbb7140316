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
boundary of every query row is one binary search (``numpy.searchsorted``). Then

* count, sum, mean, std: differences of prefix sums at the two boundaries. For floats the sums
  are of values shifted by their segment's mean and restart at every segment, so a large common
  offset (timestamps as values, say) does not cancel digits away;
* min, max: a sparse table over blocks of 16 rows plus in-block prefix and suffix extrema,
  three lookups per query row (a short scan when both ends fall in one block);
* first, last: the next and the previous row with a value, precomputed for every row.

So ``O((n + q) log n)`` time and ``O(n)`` memory per value column, never a scan per query row.
When the packed integers would overflow (very many segments times a very long time span in
nanoseconds), the searches fall back to a vectorized bisection within each segment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import polars as pl

from featurestore.errors import DataError
from featurestore.materialize import in_order

__all__ = ["AGGS", "WindowOutput", "output_dtype", "window_aggregate"]

AGGS = ("count", "sum", "mean", "std", "min", "max", "first", "last")
_BLOCK = 16
_UNIT_NS = {"ns": 1, "us": 1_000, "ms": 1_000_000}
_PACK_LIMIT = 2**62


@dataclass(frozen=True)
class WindowOutput:
    """One output column: ``agg`` of ``value`` (a column of the rows frame) over ``window``.

    ``window`` is a width (``timedelta``) or None for the expanding window (all rows before T).
    """

    name: str
    value: str
    agg: str
    window: timedelta | None

    def __post_init__(self) -> None:
        if self.agg not in AGGS:
            raise ValueError(f"window output {self.name!r}: unknown aggregation {self.agg!r}; "
                             f"expected one of {', '.join(AGGS)}")
        if self.window is not None and self.window <= timedelta(0):
            raise ValueError(f"window output {self.name!r}: window must be positive, "
                             f"got {self.window}")


def output_dtype(agg: str, value_dtype: pl.DataType) -> pl.DataType:
    """The dtype of ``agg`` over a value column of ``value_dtype`` (Boolean counts as Int32)."""
    if value_dtype == pl.Boolean:
        value_dtype = pl.Int32()
    if agg in ("mean", "std"):
        return pl.Float64()
    if agg == "count":
        return pl.Int64()
    if agg == "sum":
        return pl.Float64() if value_dtype.is_float() else pl.Int64()
    return value_dtype


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
    if s.dtype.time_zone is not None:  # type: ignore[union-attr]
        s = s.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return s.dt.cast_time_unit(unit).to_physical()  # type: ignore[arg-type]


def _finest(units: Sequence[str]) -> str:
    return min(units, key=lambda u: _UNIT_NS[u])


@dataclass
class _Layout:
    """Rows sorted by (segment, time) and every query row's segment and cutoff."""

    av: np.ndarray  # int64 instants of the sorted rows
    seg_start: np.ndarray  # per segment: first row (int64), plus n at the end
    q_seg: np.ndarray  # per query row (sorted by segment, cutoff): segment, -1 for none
    q_t: np.ndarray  # per query row: cutoff instant (valid where q_ok)
    q_ok: np.ndarray  # key and cutoff present
    packed: np.ndarray | None = None  # seg * span + (av - lo_t + 1), when that fits an int64
    lo_t: int = 0
    span: int = 3

    def __post_init__(self) -> None:
        if len(self.av) == 0:
            return
        self.lo_t = int(self.av.min())
        self.span = int(self.av.max()) - self.lo_t + 3
        n_seg = len(self.seg_start) - 1
        if n_seg * self.span < _PACK_LIMIT:
            # Rows pack to seg * span + (1 .. span - 2); a bound clipped to [0, span - 1] stays
            # in its segment, so one global search answers within the segment.
            self.packed = _row_segments(self.seg_start) * self.span + (self.av - (self.lo_t - 1))


def _row_segments(seg_start: np.ndarray) -> np.ndarray:
    """The segment number of every row (a running count of segment starts)."""
    n = int(seg_start[-1])
    marks = np.zeros(n, dtype=np.int64)
    if n:
        marks[seg_start[1:-1]] = 1
    return np.cumsum(marks)


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
    if not mask.any() or len(lay.av) == 0:
        return out
    seg = lay.q_seg[mask]
    b = bound[mask]
    if lay.packed is not None:
        q = seg * lay.span + np.clip(b - (lay.lo_t - 1), 0, lay.span - 1)
        out[mask] = np.searchsorted(lay.packed, q, side=side)  # type: ignore[call-overload]
        return out
    lo = lay.seg_start[seg].copy()
    hi = lay.seg_start[seg + 1].copy()
    while True:  # bisection within each segment, all query rows at once
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        t = lay.av[np.minimum(mid, len(lay.av) - 1)]
        go_right = active & ((t < b) if side == "left" else (t <= b))
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    out[mask] = lo
    return out


# --------------------------------------------------------------------------------------------
# aggregations over [lo, hi) index ranges


class _Extremes:
    """Range min (or max) queries: a sparse table over blocks of ``_BLOCK`` rows plus in-block
    prefix and suffix extrema, built once per value column and aggregation.

    The in-block arrays are stored transposed (position j of every block contiguous), so that
    building them is ``_BLOCK`` contiguous vector operations; row ``p`` lives at
    ``(p % _BLOCK) * n_blocks + p // _BLOCK``.
    """

    def __init__(self, v: np.ndarray, fn: np.ufunc, identity: int | float) -> None:
        self.v, self.fn, self.identity = v, fn, identity
        n = len(v)
        self.nb = nb = max(-(-n // _BLOCK), 1)
        padded = np.full(nb * _BLOCK, identity, dtype=v.dtype)
        padded[:n] = v
        cols = np.ascontiguousarray(padded.reshape(nb, _BLOCK).T)  # (_BLOCK, nb)
        del padded
        pre, suf = np.empty_like(cols), np.empty_like(cols)
        pre[0], suf[-1] = cols[0], cols[-1]
        for j in range(1, _BLOCK):
            fn(pre[j - 1], cols[j], out=pre[j])
            fn(suf[_BLOCK - j], cols[_BLOCK - 1 - j], out=suf[_BLOCK - 1 - j])
        self.table = [pre[-1].copy()]  # a block's extreme is its last prefix
        del cols
        self.pre, self.suf = pre.ravel(), suf.ravel()
        while (1 << len(self.table)) <= nb:
            prev, half = self.table[-1], 1 << (len(self.table) - 1)
            self.table.append(fn(prev[:-half], prev[half:]))

    def _at(self, p: np.ndarray) -> np.ndarray:
        return (p % _BLOCK) * self.nb + p // _BLOCK

    def query(self, lo: np.ndarray, hi: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """The extreme of ``v[lo:hi]`` for each query where ``ok`` (a non-empty range)."""
        fn, v, n = self.fn, self.v, len(self.v)
        res = np.full(len(lo), self.identity, dtype=v.dtype)
        idx = np.flatnonzero(ok)
        if n == 0 or len(idx) == 0:
            return res
        lo_, r = lo[idx], hi[idx] - 1
        bl, br = lo_ // _BLOCK, r // _BLOCK
        out = np.full(len(idx), self.identity, dtype=v.dtype)
        apart = bl != br
        if apart.any():
            out[apart] = fn(self.suf[self._at(lo_[apart])], self.pre[self._at(r[apart])])
            inner = br - bl - 1
            has = apart & (inner > 0)
            if has.any():
                k = np.zeros(len(idx), dtype=np.int64)
                k[has] = np.floor(np.log2(inner[has])).astype(np.int64)
                for level in np.unique(k[has]):
                    sel = has & (k == level)
                    t = self.table[int(level)]
                    both = fn(t[bl[sel] + 1], t[br[sel] - (1 << int(level))])
                    out[sel] = fn(out[sel], both)
        same = ~apart
        if same.any():
            s_lo, s_r = lo_[same], r[same]
            acc = np.full(len(s_lo), self.identity, dtype=v.dtype)
            for j in range(_BLOCK):
                pos = s_lo + j
                live = pos <= s_r
                if not live.any():
                    break
                acc = np.where(live, fn(acc, v[np.minimum(pos, n - 1)]), acc)
            out[same] = acc
        res[idx] = out
        return res


@dataclass
class _Column:
    """One value column of the sorted rows, with what its aggregations need, built lazily."""

    series: pl.Series
    seg_start: np.ndarray
    _cache: dict[str, np.ndarray]
    _tables: dict[str, _Extremes]

    @classmethod
    def of(cls, series: pl.Series, seg_start: np.ndarray) -> _Column:
        if series.dtype == pl.Boolean:
            series = series.cast(pl.Int32)
        if series.dtype.is_float():
            series = series.fill_nan(None)
        return cls(series, seg_start, {}, {})

    @property
    def is_float(self) -> bool:
        return self.series.dtype.is_float()

    def get(self, what: str) -> np.ndarray:
        if what not in self._cache:
            self._cache[what] = getattr(self, f"_build_{what}")()
        return self._cache[what]

    def _build_seg(self) -> np.ndarray:
        return _row_segments(self.seg_start)

    def _build_valid(self) -> np.ndarray:
        return self.series.is_not_null().to_numpy()

    def _build_count(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.get("valid"), dtype=np.int64)])

    def _build_x0(self) -> np.ndarray:
        """The values as float64, 0 where null."""
        return self.series.cast(pl.Float64).fill_null(0.0).to_numpy()

    def _build_int(self) -> np.ndarray:
        return self.series.cast(pl.Int64).fill_null(0).to_numpy()

    def _build_isum(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.get("int"), dtype=np.int64)])

    def _build_shift(self) -> np.ndarray:
        """Per row: its segment's mean (0 without values), the offset float sums subtract."""
        x = self.get("x0")
        valid = self.get("valid")
        lens = np.diff(self.seg_start)
        starts = self.seg_start[:-1]
        if len(starts) == 0:
            return np.zeros(0)
        nonempty = lens > 0
        sums = np.zeros(len(starts))
        cnts = np.zeros(len(starts))
        sums[nonempty] = np.add.reduceat(x, starts[nonempty])
        cnts[nonempty] = np.add.reduceat(valid.astype(np.float64), starts[nonempty])
        mean = np.divide(sums, cnts, out=np.zeros_like(sums), where=cnts > 0)
        return mean[self.get("seg")]

    def _seg_prefix(self, d: np.ndarray) -> np.ndarray:
        """Inclusive prefix sums of ``d`` restarting at every segment (summed per segment, so
        no segment's rounding reaches another)."""
        frame = pl.DataFrame({"d": d, "s": self.get("seg")})
        return frame.select(pl.col("d").cum_sum().over("s")).to_series().to_numpy()

    def _build_dev(self) -> np.ndarray:
        return np.where(self.get("valid"), self.get("x0") - self.get("shift"), 0.0)

    def _build_fsum(self) -> np.ndarray:
        # Deviations from the segment mean sum to ~0 over each segment, so one running sum
        # stays small and subtracting a segment's base loses nothing that matters.
        cs = np.cumsum(self.get("dev"))
        base = np.where(self.seg_start[:-1] > 0, cs[np.maximum(self.seg_start[:-1] - 1, 0)], 0.0)
        return cs - base[self.get("seg")]

    def _build_fsq(self) -> np.ndarray:
        d = self.get("dev")
        return self._seg_prefix(d * d)

    def _build_next(self) -> np.ndarray:
        n = len(self.series)
        idx = np.where(self.get("valid"), np.arange(n), n)
        return np.minimum.accumulate(idx[::-1])[::-1] if n else idx

    def _build_prev(self) -> np.ndarray:
        n = len(self.series)
        idx = np.where(self.get("valid"), np.arange(n), -1)
        return np.maximum.accumulate(idx) if n else idx

    def extremes(self, agg: str) -> _Extremes:
        if agg not in self._tables:
            if self.is_float:
                ident: int | float = np.inf if agg == "min" else -np.inf
                v = np.where(self.get("valid"), self.get("x0"), ident)
            else:
                info = np.iinfo(np.int64)
                ident = int(info.max if agg == "min" else info.min)
                v = self.series.cast(pl.Int64).fill_null(ident).to_numpy()
            self._tables[agg] = _Extremes(v, np.minimum if agg == "min" else np.maximum, ident)
        return self._tables[agg]


def _windowed_sum(prefix: np.ndarray, lo: np.ndarray, hi: np.ndarray, starts: np.ndarray,
                  nonempty: np.ndarray) -> np.ndarray:
    """Sum over rows [lo, hi) of one segment from its restarting inclusive ``prefix``."""
    if len(prefix) == 0:
        return np.zeros(len(lo))
    upto = prefix[np.maximum(hi - 1, 0)]
    before = np.where(lo > starts, prefix[np.maximum(lo - 1, 0)], 0.0)
    return np.where(nonempty, upto - before, 0.0)


def _newest(col: _Column, hi: np.ndarray, nonempty: np.ndarray) -> np.ndarray:
    """The newest row with a value in each window (-1 for an empty one)."""
    prev = col.get("prev")
    return np.where(nonempty, prev[np.maximum(hi - 1, 0)] if len(prev) else -1, -1)


def _aggregate(col: _Column, agg: str, lo: np.ndarray, hi: np.ndarray, starts: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(values, valid mask, index of the newest contributing row or -1) for one output.

    The newest row is only looked up for ``last`` (None otherwise: see ``_newest``)."""
    cnt = col.get("count")
    count = cnt[hi] - cnt[lo]
    nonempty = count > 0
    newest = _newest(col, hi, nonempty) if agg == "last" else None
    if agg == "count":
        return count, np.ones(len(lo), dtype=bool), newest
    if agg == "sum" and not col.is_float:
        isum = col.get("isum")
        return isum[hi] - isum[lo], nonempty, newest
    if agg in ("sum", "mean", "std"):
        s = _windowed_sum(col.get("fsum"), lo, hi, starts, nonempty)
        safe = np.maximum(count, 1).astype(np.float64)
        shift = col.get("shift")
        c = shift[np.minimum(lo, max(len(shift) - 1, 0))] if len(shift) else np.zeros(len(lo))
        if agg == "sum":
            return s + c * count, nonempty, newest
        if agg == "mean":
            return c + s / safe, nonempty, newest
        q = _windowed_sum(col.get("fsq"), lo, hi, starts, nonempty)
        var = (q - s * s / safe) / np.maximum(count - 1, 1)
        return np.sqrt(np.maximum(var, 0.0)), count >= 2, newest
    if agg in ("min", "max"):
        return col.extremes(agg).query(lo, hi, nonempty), nonempty, newest
    if agg == "first":
        nxt = col.get("next")
        at = nxt[np.minimum(lo, max(len(nxt) - 1, 0))] if len(nxt) else np.zeros(len(lo), int)
        return at, nonempty, newest
    return newest, nonempty, newest  # last


def _in_order(rows: pl.DataFrame, keys: list[str], available_at: str, ets: list[str],
              unit: str) -> bool:
    """Whether ``rows`` (no null key or time) are sorted by (keys, available_at, event time),
    checked in one pass: view artifacts are, and then nothing is sorted."""
    if rows.height < 2:
        return True
    if len(keys) > 1 or not rows[keys[0]].is_sorted():
        return in_order(rows, [*keys, available_at, *ets])
    av = _physical(rows[available_at], unit).to_numpy()
    same_key = (rows[keys[0]].to_numpy()[1:] == rows[keys[0]].to_numpy()[:-1])
    step = np.diff(av)
    if (same_key & (step < 0)).any():
        return False
    tie = same_key & (step == 0)
    if not ets or not tie.any():
        return True
    et = rows[ets[0]]
    back = pl.select((et.is_null() & et.shift(1).is_not_null())
                     | (et < et.shift(1)).fill_null(False)).to_series().to_numpy()[1:]
    return not (tie & back).any()


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
    rows = rows.filter(pl.all_horizontal([pl.col(c).is_not_null() for c in (*keys, available_at)]))
    order = [*keys, available_at, *ets]
    if not _in_order(rows, keys, available_at, ets, unit):
        # a null event time sorts first: it loses an available_at tie
        rows = rows.sort(order, nulls_last=False, maintain_order=True)
    av = _physical(rows[available_at], unit).to_numpy().astype(np.int64)
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
    perm = np.lexsort((q_t, q_seg))
    q_seg, q_t, q_ok = q_seg[perm], q_t[perm], q_ok[perm]

    def back(a: np.ndarray) -> np.ndarray:
        out = np.empty_like(a)
        out[perm] = a
        return out

    lay = _Layout(av, seg_start, q_seg, q_t, q_ok)
    found = q_ok & (q_seg >= 0)

    hi = _search(lay, q_t, "right" if inclusive else "left", found)
    starts = np.where(found, seg_start[np.maximum(q_seg, 0)], 0)
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
    columns: dict[str, _Column] = {}
    result: list[pl.Series] = []
    for o in outputs:
        if o.value not in columns:
            columns[o.value] = _Column.of(rows[o.value], seg_start)
        col = columns[o.value]
        lo = lows[o.window]
        h = np.where(found, hi, 0)
        lo = np.where(found, lo, 0)
        values, valid, newest = _aggregate(col, o.agg, lo, h, starts)
        if with_availability and newest is None:
            cnt = col.get("count")
            newest = _newest(col, h, (cnt[h] - cnt[lo]) > 0)
        dtype = output_dtype(o.agg, rows.schema[o.value])
        ok = back(valid & q_ok)
        if with_availability:
            assert newest is not None
            has = (newest >= 0) & q_ok
            stamp_np = np.where(has, av[np.maximum(newest, 0)] if len(av) else 0, 0)
            if o.agg == "count":
                # An empty window's 0 is known from the rows available before T: the last
                # instant before T (T itself when inclusive) is its availability.
                empty = (newest < 0) & q_ok
                stamp_np = np.where(empty, q_t - (0 if inclusive else 1), stamp_np)
                has = has | empty
            stamp_np, has = back(stamp_np), back(has)
        values = back(values)
        if o.agg in ("min", "max", "first", "last"):
            if o.agg in ("first", "last"):
                n = len(col.series)
                series = col.series.gather(np.clip(values, 0, n - 1)) if n else \
                    pl.Series(o.value, [None] * len(values), dtype=col.series.dtype)
            else:
                series = pl.Series(o.value, values)
            series = series.cast(dtype)
        else:
            series = pl.Series(o.value, values).cast(dtype)
        invalid = np.flatnonzero(~ok)
        if len(invalid):
            series = series.scatter(invalid, None)
        result.append(series.alias(o.name))
        if with_availability:
            stamp = pl.Series(stamp_np)
            if not has.all():
                stamp = stamp.scatter(np.flatnonzero(~has), None)
            result.append(stamp.cast(pl.Datetime(unit, "UTC")).dt.cast_time_unit(av_unit)
                          .alias(f"{o.name}__available_at"))
    return result
