"""Window aggregation over multi-chunk frames (as a Parquet read with several row groups gives):
the order check and the key runs read the key column chunk by chunk, so a key run, an
``available_at`` tie or a step back in order that straddles a chunk border must count exactly as
in a single-chunk frame."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from featurestore.windowengine import WindowOutput, window_aggregate

OUTS = [WindowOutput(f"x_{a}_{w}", "x", a, timedelta(seconds=w) if w else None)
        for w in (5, 40, 0) for a in ("count", "sum", "min", "last")]


def _chunked(frame: pl.DataFrame, cuts: list[int]) -> pl.DataFrame:
    parts = [frame.slice(a, b - a) for a, b in zip([0, *cuts], [*cuts, frame.height], strict=True)]
    out = pl.concat(parts, rechunk=False)
    assert out["k"].n_chunks() == len(parts)
    return out


def _run(rows: pl.DataFrame, query: pl.DataFrame) -> pl.DataFrame:
    # with the availability columns: a multi-chunk frame's converted times are packed in place,
    # and the newest row's available_at is then read back from the packing
    return pl.DataFrame(window_aggregate(rows, query, OUTS, keys=["k"], cutoff="t",
                                         event_timestamp="e", with_availability=True))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("order", ["sorted", "shuffled", "swap_at_border"])
def test_multi_chunk_rows_match_one_chunk(seed: int, order: str) -> None:
    rng = np.random.default_rng(seed)
    n = 200
    base = datetime(2024, 1, 1, tzinfo=UTC)
    # few keys and few distinct times: runs and available_at ties cross the chunk borders
    rows = pl.DataFrame({
        "k": rng.integers(0, 4, n),
        "available_at": [base + timedelta(seconds=int(s)) for s in rng.integers(0, 60, n)],
        # distinct event times: no two rows tie on the whole order, so a sort up front is unique
        "e": [base + timedelta(seconds=int(s)) for s in rng.permutation(n)],
        "x": rng.normal(size=n),
    }).sort("k", "available_at", "e")
    cuts = sorted({int(c) for c in rng.integers(1, n - 1, 5)})
    if order == "shuffled":
        rows = rows.sample(fraction=1.0, shuffle=True, seed=seed)
    elif order == "swap_at_border":  # out of order only across one chunk border
        c = cuts[0]
        idx = list(range(n))
        idx[c - 1], idx[c] = idx[c], idx[c - 1]
        rows = rows[idx]
    query = pl.DataFrame({
        "k": rng.integers(-1, 5, 80),
        "t": [base + timedelta(seconds=int(s)) for s in rng.integers(-5, 70, 80)],
    })
    one = _run(rows.rechunk(), query)
    many = _run(_chunked(rows, cuts), query)
    assert many.equals(one)
    # and both equal a sort done up front
    assert _run(rows.sort("k", "available_at", "e"), query).equals(one)
