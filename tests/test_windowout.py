"""The window engine's query order and output columns: the order is a permutation by segment
(and by cutoff within a segment, up to its grain) on each of its three paths, and a result with
its validity becomes the same series whether its buffer is handed over or cast and nulled."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from featurestore.windowout import QueryOrder, _order, series_with_nulls


def _frame(rng: np.random.Generator, m: int, seg_hi: int, t_span: int):
    q_seg = rng.integers(-1, seg_hi, m)
    q_seg[rng.random(m) < 0.3] = seg_hi - 1  # the largest segment number: the key's edge
    q_t = rng.integers(10**12, 10**12 + t_span, m)
    q_ok = rng.random(m) > 0.05
    q_t[~q_ok] = 0  # the engine's placeholder for a missing cutoff
    return q_seg, q_t, q_ok


@pytest.mark.parametrize(("seg_hi", "t_span", "exact"), [
    (1000, 2 * 365 * 86_400 * 10**6, False),  # packed with a coarse time grain
    (1000, 50, True),  # packed with the exact time (a grain of one unit)
    (2**52, 60, True),  # too many segments for a grain: argsort of (segment, cutoff) packed
    (2**58, 10**15, True),  # not even that fits: lexsort
])
def test_order_is_a_permutation_by_segment_then_time(seg_hi, t_span, exact) -> None:
    rng = np.random.default_rng(seg_hi % 97 + t_span % 89)
    for m in (1, 2, 3000):
        q_seg, q_t, q_ok = _frame(rng, m, seg_hi, t_span)
        perm = _order(q_seg, q_t, q_ok)
        assert np.array_equal(np.sort(perm), np.arange(m))
        s, t, ok = q_seg[perm], q_t[perm], q_ok[perm]
        assert (np.diff(s) >= 0).all()
        same = (s[1:] == s[:-1]) & ok[1:] & ok[:-1]
        back_in_time = same & (t[1:] < t[:-1])
        if exact:
            assert not back_in_time.any()
        else:  # only within a grain (well under a minute at 3000 rows and 1000 segments)
            assert (t[:-1] - t[1:])[back_in_time].max(initial=0) < 60 * 10**6


def test_back_restores_the_query_order() -> None:
    rng = np.random.default_rng(1)
    q_seg, q_t, q_ok = _frame(rng, 5000, 40, 10**9)
    order = QueryOrder(q_seg, q_t, q_ok)
    assert np.array_equal(order.back(q_t[order.perm]), q_t)
    assert np.array_equal(order.back(q_ok[order.perm]), q_ok)


@pytest.mark.parametrize("np_dtype,dtype", [
    (np.float64, pl.Float64()), (np.int64, pl.Int64()),  # handed over with a bitmap
    (np.int64, pl.Int32()), (np.float64, pl.Float32()),  # cast, then nulled
])
@pytest.mark.parametrize("nulls", [0.0, 0.3, 1.0])
def test_series_with_nulls_equals_cast_and_null(np_dtype, dtype, nulls) -> None:
    rng = np.random.default_rng(int(nulls * 10))
    values = rng.integers(-1000, 1000, 1001).astype(np_dtype)
    ok = rng.random(1001) >= nulls
    got = series_with_nulls("v", values, ok, dtype)
    want = pl.Series("v", [(int(v) if np_dtype is np.int64 else float(v)) if k else None
                           for v, k in zip(values, ok, strict=True)]).cast(dtype)
    assert got.dtype == dtype
    assert got.equals(want, check_names=True)
    assert got.null_count() == int((~ok).sum())


def test_engine_results_do_not_depend_on_keeping_freed_memory(monkeypatch) -> None:
    from datetime import UTC, datetime, timedelta

    import featurestore.windowengine as we

    rng = np.random.default_rng(4)
    base = datetime(2024, 1, 1, tzinfo=UTC)
    rows = pl.DataFrame({"k": rng.integers(0, 30, 3000),
                         "available_at": [base + timedelta(minutes=int(m))
                                          for m in rng.integers(0, 10_000, 3000)],
                         "x": rng.normal(size=3000)})
    query = pl.DataFrame({"k": rng.integers(0, 32, 500),
                          "t": [base + timedelta(minutes=int(m))
                                for m in rng.integers(0, 10_500, 500)]})
    outs = [we.WindowOutput(f"{a}_{w}", "x", a, timedelta(minutes=w))
            for a in ("count", "sum", "min", "max", "last") for w in (30, 2000)]

    def run() -> pl.DataFrame:
        return pl.DataFrame(we.window_aggregate(rows, query, outs, keys=["k"], cutoff="t",
                                                with_availability=True))

    monkeypatch.setattr(we, "_REUSE_FROM", 10**12)
    small = run()
    monkeypatch.setattr(we, "_REUSE_FROM", 0)
    assert run().equals(small)
