"""``featurestore.packedsort`` against Polars' own multi-column sort (the oracle): the same
permutation for every mix of packable and unpackable columns, nulls, ties, wide ranges."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import packedsort
from featurestore.packedsort import packed_key, sort_in_place, sort_indices

T0 = dt.datetime(2024, 3, 10, tzinfo=dt.UTC)
COLUMNS = {
    "small": pl.Int64, "wide": pl.Int64, "u64": pl.UInt64, "t": pl.Datetime("us", "UTC"),
    "d": pl.Date, "flag": pl.Boolean, "name": pl.String, "x": pl.Float64, "i8": pl.Int8,
}


def _values(name: str) -> st.SearchStrategy:
    base = {
        "small": st.integers(-3, 3),
        # Ranges of 2**62 and more: too wide to pack beside anything, or at all.
        "wide": st.sampled_from([-(2**63), -1, 0, 1, 2**62, 2**63 - 1]),
        "u64": st.sampled_from([0, 1, 2**63, 2**64 - 1]),
        "t": st.integers(0, 5).map(lambda m: T0 + dt.timedelta(microseconds=m)),
        "d": st.integers(0, 3).map(lambda n: dt.date(2024, 1, 1) + dt.timedelta(days=n)),
        "flag": st.booleans(),
        "name": st.sampled_from(["a", "b", "c"]),
        "x": st.sampled_from([-1.5, 0.0, 2.25]),
        "i8": st.integers(-128, 127),
    }[name]
    return st.one_of(st.none(), base) if name in ("small", "t", "name") else base


@pytest.fixture(autouse=True, scope="module")
def _pack_small_frames() -> Iterator[None]:
    """Packing starts at ``PACK_FROM_ROWS`` rows: here at every size, so that these small
    frames go through the packed sort and the in-place gather."""
    before = packedsort.PACK_FROM_ROWS
    packedsort.PACK_FROM_ROWS = 0
    yield
    packedsort.PACK_FROM_ROWS = before


rows = st.lists(st.fixed_dictionaries({c: _values(c) for c in COLUMNS}), max_size=50)
orders = st.lists(st.sampled_from(list(COLUMNS)), min_size=1, max_size=4, unique=True)


@settings(max_examples=300, deadline=None)
@given(data=rows, columns=orders, nulls_last=st.booleans())
def test_the_same_order_as_polars(data: list[dict], columns: list[str], nulls_last: bool) -> None:
    frame = pl.DataFrame(data, schema=COLUMNS)
    want = frame.with_row_index("r").sort(columns, nulls_last=nulls_last,
                                         maintain_order=True)["r"]
    got = sort_indices(frame, columns, nulls_last, maintain_order=True)
    assert got.to_list() == want.to_list()
    # Unstable: rows tied on every column may come in any order, but the columns are sorted.
    unstable = frame[sort_indices(frame, columns, nulls_last)]
    assert unstable.select(columns).equals(frame.sort(columns, nulls_last=nulls_last)
                                           .select(columns))


@settings(max_examples=100, deadline=None)
@given(data=rows, columns=orders)
def test_sorting_in_place_sorts_the_frame_it_is_given(data: list[dict], columns: list[str]) -> None:
    frame = pl.DataFrame(data, schema=COLUMNS)
    mine = frame.clone()
    out = sort_in_place(mine, columns, maintain_order=True)
    assert out is mine
    assert out.equals(frame.sort(columns, maintain_order=True))


def test_packing_is_what_makes_it_fast_and_chunked_columns_are_gathered_whole() -> None:
    """A frame of several chunks (as read from Parquet row groups) sorts like one chunk, and
    the key columns of the benchmark's shape (entity, two times) are packed into one."""
    import numpy as np

    rng = np.random.default_rng(7)
    parts = [pl.DataFrame({"e": rng.integers(0, 50, 1000),
                           "a": rng.integers(0, 10**9, 1000),
                           "v": rng.standard_normal(1000)}) for _ in range(3)]
    frame = pl.concat(parts, rechunk=False)
    assert frame.n_chunks() == 3
    assert packed_key(frame, ["e", "a", "v"])[1] == 2  # a float is not packed
    assert packed_key(frame, ["v", "e"]) == (None, 0)
    want = frame.sort(["e", "a"], maintain_order=True)
    assert sort_in_place(frame, ["e", "a"], maintain_order=True).equals(want)


def test_small_frames_are_sorted_as_they_are(monkeypatch: pytest.MonkeyPatch) -> None:
    """Below ``PACK_FROM_ROWS`` a sorted copy, the given frame untouched; the same order."""
    monkeypatch.setattr(packedsort, "PACK_FROM_ROWS", 10)
    frame = pl.DataFrame({"e": [2, 1, 2, 1], "a": [4, 3, 1, 2]})
    mine = frame.clone()
    out = sort_in_place(mine, ["e", "a"])
    assert out is not mine and mine.equals(frame)
    assert out.equals(frame.sort(["e", "a"]))
    assert sort_indices(frame, ["e", "a"]).to_list() == [3, 1, 2, 0]


def test_128_bit_integers_are_sorted_as_they_are() -> None:
    """Values beyond 64 bits (a narrow range of them, too) are not packed: no overflow."""
    frame = pl.DataFrame({"a": pl.Series([2**100 + 5, 2**100, 2**100 + 5], dtype=pl.Int128),
                          "b": [1, 0, 0]})
    assert packed_key(frame, ["a", "b"]) == (None, 0)
    assert sort_indices(frame, ["a", "b"]).to_list() == [1, 2, 0]


def test_flags_must_match_columns() -> None:
    with pytest.raises(ValueError, match="2 columns but 1 nulls_last flags"):
        sort_indices(pl.DataFrame({"a": [1], "b": [2]}), ["a", "b"], [True])
