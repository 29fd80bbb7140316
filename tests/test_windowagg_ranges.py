"""Range min / max of ``featurestore.windowagg`` against a plain loop: the direct path (short
ranges, one ``reduceat``) and the block path (head rows, sparse table over blocks, tail rows)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import windowagg
from featurestore.windowagg import Column, reduce_ranges


def _loop(values: list, agg: str, lo: int, hi: int):  # type: ignore[no-untyped-def]
    """The extreme of the non-null, non-NaN values in ``values[lo:hi]`` (None without any)."""
    kept = [v for v in values[lo:hi] if v is not None and not (isinstance(v, float) and
                                                                   math.isnan(v))]
    if not kept:
        return None
    return min(kept) if agg == "min" else max(kept)


def _check(values: list, dtype: pl.DataType, ranges: list[tuple[int, int]]) -> None:
    n = len(values)
    col = Column.of(pl.Series("x", values, dtype=dtype), np.array([0, n], dtype=np.int64))
    lo = np.array([r[0] for r in ranges], dtype=np.int64)
    hi = np.array([r[1] for r in ranges], dtype=np.int64)
    for agg in ("min", "max"):
        want = [_loop(values, agg, a, b) for a, b in ranges]
        ok = np.array([w is not None for w in want], dtype=bool)
        got = col.extremes(agg).query(lo, hi, ok)
        for i, w in enumerate(want):
            if w is not None:
                assert got[i] == w, (agg, ranges[i], got[i], w)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("dtype", [pl.Float64, pl.Int64])
def test_short_and_long_ranges_match_the_loop(seed, dtype):
    """Ranges of every length from one row to the whole column, starting and ending on and
    off block edges, the column's last row included; nulls and NaN are skipped."""
    rng = np.random.default_rng(seed)
    n = 1500
    raw = rng.integers(-10**6, 10**6, n)
    values: list = [None if rng.random() < 0.2 else
                    (float("nan") if dtype == pl.Float64 and rng.random() < 0.05 else
                     (float(v) if dtype == pl.Float64 else int(v))) for v in raw]
    block = windowagg._BLOCK
    ranges = []
    for length in [1, 2, block - 1, block, block + 1, 2 * block, windowagg._DIRECT,
                   windowagg._DIRECT + 1, 3 * windowagg._DIRECT, 700, n]:
        for start in [0, 1, block - 1, block, 5 * block + 3, n - length]:
            if start >= 0 and start + length <= n:
                ranges.append((start, start + length))
    ranges += [(int(a), int(a) + int(b)) for a, b in
               zip(rng.integers(0, n - 1, 300), rng.integers(1, 400, 300), strict=True)
               if a + b <= n]
    ranges.sort()
    _check(values, dtype, ranges)
    _check(values, dtype, ranges[::-1])  # any order is right, increasing is only cheaper


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.integers(-100, 100)), min_size=1, max_size=400),
       st.data())
def test_any_ranges_match_the_loop(values, data):
    n = len(values)
    pairs = data.draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, n)), max_size=40))
    ranges = [(min(a, b - 1), b) if a < b else (b - 1, a + 1) for a, b in pairs]
    ranges = [(a, min(b, n)) for a, b in ranges]
    _check(values, pl.Int64, ranges)
    _check([None if v is None else float(v) for v in values], pl.Float64, ranges)


def test_reduce_ranges_takes_the_last_row():
    v = np.array([5.0, 1.0, 7.0, 3.0])
    got = reduce_ranges(v, np.maximum, np.array([0, 3, 1, 2]), np.array([4, 4, 2, 4]))
    assert got.tolist() == [7.0, 3.0, 1.0, 7.0]


@pytest.mark.parametrize("dtype", [pl.Float64, pl.Int64])
def test_an_extreme_on_the_first_or_last_row_is_found(dtype):
    """The one row holding the extreme is a range's first or last row, at every offset within
    a block: no head or tail row, however short, is skipped."""
    n = 700
    for p in [*range(0, windowagg._BLOCK + 2), *range(330, 330 + 2 * windowagg._BLOCK + 2),
              n - 2, n - 1]:
        values = [1] * n
        values[p] = -5
        ranges = []
        for length in [1, 2, windowagg._BLOCK, windowagg._DIRECT + 1, 300, 650]:
            if p + length <= n:
                ranges.append((p, p + length))
            if p + 1 - length >= 0:
                ranges.append((p + 1 - length, p + 1))
        _check([float(v) if dtype == pl.Float64 else v for v in values], dtype, ranges)
        _check([-v for v in values], dtype, ranges)


def test_segment_means_subtracted_chunk_by_chunk_equal_one_pass(monkeypatch):
    """Chunks of 7 rows cut through segments of every length: sums, means and std are the same
    as with one chunk holding every row."""
    from datetime import UTC, datetime, timedelta

    from featurestore.windowengine import WindowOutput, window_aggregate

    rng = np.random.default_rng(5)
    n = 3000
    keys = np.sort(rng.integers(0, 40, n) ** 2)  # segments from 1 row to hundreds
    base = datetime(2024, 1, 1, tzinfo=UTC)
    rows = pl.DataFrame({"k": keys, "available_at": [base + timedelta(minutes=int(m)) for m in
                                                     rng.integers(0, 5000, n)],
                         "x": pl.Series(rng.normal(1e9, 5.0, n)).set(
                             pl.Series(rng.random(n) < 0.1), None)}).sort("k", "available_at")
    query = pl.DataFrame({"k": rng.integers(0, 1600, 500),
                          "t": [base + timedelta(minutes=int(m)) for m in
                                rng.integers(0, 5200, 500)]})
    outs = [WindowOutput(f"{a}_{w}", "x", a, timedelta(minutes=w))
            for a in ("sum", "mean", "std") for w in (30, 900)]

    def run() -> pl.DataFrame:
        return pl.DataFrame(window_aggregate(rows, query, outs, keys=["k"], cutoff="t",
                                             event_timestamp=None))

    whole = run()
    monkeypatch.setattr(windowagg, "_CHUNK", 7)
    chunked = run()
    assert whole.equals(chunked)
    assert whole["sum_900"].null_count() < len(whole)  # the windows are not all empty


@pytest.mark.parametrize("step_cost", [0, 10**9])  # always stepwise / never stepwise
@pytest.mark.parametrize("dtype", [pl.Float64, pl.Int64])
def test_stepwise_and_reduceat_short_ranges_match_the_loop(monkeypatch, step_cost, dtype):
    """Short ranges (empty ones among them, as the engine passes for empty windows), sparse
    over the column and overlapping: both ways of reducing them give the loop's extremes."""
    monkeypatch.setattr(windowagg, "_STEP_COST", step_cost)
    rng = np.random.default_rng(step_cost % 7)
    n = 2000
    values: list = [None if rng.random() < 0.2 else
                    (float(v) if dtype == pl.Float64 else int(v))
                    for v in rng.integers(-10**6, 10**6, n)]
    starts = np.sort(rng.integers(0, n, 400))
    lengths = np.where(rng.random(400) < 0.5, rng.poisson(1.5, 400),
                       rng.integers(0, windowagg._DIRECT + 1, 400))
    ranges = [(int(a), min(int(a + b), n)) for a, b in zip(starts, lengths, strict=True)]
    ranges.append((n - 1, n))  # the last row
    _check(values, dtype, ranges)
