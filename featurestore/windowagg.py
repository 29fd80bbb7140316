"""Aggregations over index ranges ``[lo, hi)`` of a segmented, sorted value column.

``featurestore.windowengine`` finds each window's row range with two binary searches; this
module turns ranges into values: prefix sums (counts, integer sums, float sums of values shifted
by their segment's mean so a large common offset cancels no digits), a block sparse table for
min and max, and the next / previous row with a value for first and last.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

_BLOCK = 16


def row_segments(seg_start: np.ndarray) -> np.ndarray:
    """The segment number of every row (a running count of segment starts)."""
    n = int(seg_start[-1])
    marks = np.zeros(n, dtype=np.int64)
    if n:
        marks[seg_start[1:-1]] = 1
    return np.cumsum(marks)


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
class Column:
    """One value column of the sorted rows, with what its aggregations need, built lazily."""

    series: pl.Series
    seg_start: np.ndarray
    _cache: dict[str, np.ndarray]
    _tables: dict[str, _Extremes]

    @classmethod
    def of(cls, series: pl.Series, seg_start: np.ndarray) -> Column:
        if series.dtype == pl.Boolean:
            series = series.cast(pl.Int32)
        return cls(series, seg_start, {}, {})

    @property
    def is_float(self) -> bool:
        return self.series.dtype.is_float()

    def get(self, what: str) -> np.ndarray:
        if what not in self._cache:
            self._cache[what] = getattr(self, f"_build_{what}")()
        return self._cache[what]

    def _build_seg(self) -> np.ndarray:
        return row_segments(self.seg_start)

    def _build_valid(self) -> np.ndarray:
        if self.is_float:  # NaN is not a value either
            return ~np.isnan(self.get("raw"))
        return self.series.is_not_null().to_numpy()

    def _build_raw(self) -> np.ndarray:
        """Float values as float64 with NaN for null (one conversion, numpy-owned)."""
        return self.series.cast(pl.Float64).to_numpy()

    def _build_count(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.get("valid"), dtype=np.int64)])

    def _build_x0(self) -> np.ndarray:
        """The values as float64, 0 where null."""
        if self.is_float:
            x = self.get("raw").copy()
            x[~self.get("valid")] = 0.0
            return x
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


def windowed_sum(prefix: np.ndarray, lo: np.ndarray, hi: np.ndarray, starts: np.ndarray,
                  nonempty: np.ndarray) -> np.ndarray:
    """Sum over rows [lo, hi) of one segment from its restarting inclusive ``prefix``."""
    if len(prefix) == 0:
        return np.zeros(len(lo))
    upto = prefix[np.maximum(hi - 1, 0)]
    before = np.where(lo > starts, prefix[np.maximum(lo - 1, 0)], 0.0)
    return np.where(nonempty, upto - before, 0.0)


def newest_row(col: Column, hi: np.ndarray, nonempty: np.ndarray) -> np.ndarray:
    """The newest row with a value in each window (-1 for an empty one)."""
    prev = col.get("prev")
    return np.where(nonempty, prev[np.maximum(hi - 1, 0)] if len(prev) else -1, -1)


def aggregate(col: Column, agg: str, lo: np.ndarray, hi: np.ndarray, starts: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(values, valid mask, index of the newest contributing row or -1) for one output.

    The newest row is only looked up for ``last`` (None otherwise: see ``_newest``)."""
    cnt = col.get("count")
    count = cnt[hi] - cnt[lo]
    nonempty = count > 0
    newest = newest_row(col, hi, nonempty) if agg == "last" else None
    if agg == "count":
        return count, np.ones(len(lo), dtype=bool), newest
    if agg == "sum" and not col.is_float:
        isum = col.get("isum")
        return isum[hi] - isum[lo], nonempty, newest
    if agg in ("sum", "mean", "std"):
        s = windowed_sum(col.get("fsum"), lo, hi, starts, nonempty)
        safe = np.maximum(count, 1).astype(np.float64)
        shift = col.get("shift")
        c = shift[np.minimum(lo, max(len(shift) - 1, 0))] if len(shift) else np.zeros(len(lo))
        if agg == "sum":
            return s + c * count, nonempty, newest
        if agg == "mean":
            return c + s / safe, nonempty, newest
        q = windowed_sum(col.get("fsq"), lo, hi, starts, nonempty)
        var = (q - s * s / safe) / np.maximum(count - 1, 1)
        return np.sqrt(np.maximum(var, 0.0)), count >= 2, newest
    if agg in ("min", "max"):
        return col.extremes(agg).query(lo, hi, nonempty), nonempty, newest
    if agg == "first":
        nxt = col.get("next")
        at = nxt[np.minimum(lo, max(len(nxt) - 1, 0))] if len(nxt) else np.zeros(len(lo), int)
        return at, nonempty, newest
    return newest, nonempty, newest  # last
