"""The artifact layout: rows in (keys, available_at, event_timestamp) order, ties in input order.

One rule (``featurestore.layout``) for the store's writer, both retrieval engines and online
publishing: null keys last, a null ``available_at`` (never available) last within its key, a
null ``event_timestamp`` (the earliest) first within an ``available_at`` tie.
"""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.layout import retrieval_nulls_last, sort_for_retrieval, sorted_by
from featurestore.retrieval import ViewFrame, point_in_time_join

small = st.one_of(st.none(), st.integers(0, 3))
rows = st.lists(st.tuples(small, small, small, small, st.integers(0, 1000)), max_size=30)
SCHEMA = {"k1": pl.Int64, "k2": pl.Int64, "available_at": pl.Int64, "event_timestamp": pl.Int64,
          "payload": pl.Int64}
ORDER = ["k1", "k2", "available_at", "event_timestamp"]


def oracle_sort(rows: list[tuple]) -> list[tuple]:
    """The rule written as a plain Python sort key (``sorted`` is stable: ties keep input order)."""
    def last(v):  # nulls after every value
        return (v is None, v if v is not None else 0)

    def first(v):  # nulls before every value
        return (v is not None, v if v is not None else 0)

    return sorted(rows, key=lambda r: (last(r[0]), last(r[1]), last(r[2]), first(r[3])))


def frame_of(rows: list[tuple]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA, orient="row")


@settings(max_examples=200, deadline=None, derandomize=True)
@given(rows=rows, presort=st.booleans())
def test_sort_for_retrieval_matches_the_python_rule(rows, presort) -> None:  # type: ignore[no-untyped-def]
    if presort:
        rows = oracle_sort(rows)
    frame = frame_of(rows)
    expected = frame_of(oracle_sort(rows))
    assert sort_for_retrieval(frame, ["k1", "k2"]).equals(expected)
    assert sort_for_retrieval(frame.lazy(), ["k1", "k2"]).collect().equals(expected)
    assert sorted_by(frame, ORDER, retrieval_nulls_last(2)) == frame.equals(expected)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(rows=rows, nulls_last=st.lists(st.booleans(), min_size=4, max_size=4))
def test_sorted_by_agrees_with_polars_sort(rows, nulls_last) -> None:  # type: ignore[no-untyped-def]
    frame = frame_of(rows)
    for f in (frame, frame.sort(ORDER, nulls_last=nulls_last, maintain_order=True)):
        expected = f.sort(ORDER, nulls_last=nulls_last, maintain_order=True)
        assert sorted_by(f, ORDER, nulls_last) == f.equals(expected)


def test_sorted_by_rejects_a_flag_count_mismatch() -> None:
    with pytest.raises(ValueError, match="2 columns but 3 nulls_last flags"):
        sorted_by(frame_of([(1, 1, 1, 1, 1)] * 2), ["k1", "k2"], [True, True, False])


def test_engines_accept_the_layout_as_presorted_with_nulls_everywhere() -> None:
    """A frame in this order passes the packed engine's presorted check (no warning, no resort)
    and gives the same values as the unsorted frame: the null rule agrees with the engine's."""
    t0 = datetime(2024, 1, 1, tzinfo=UTC)

    def at(h):
        return None if h is None else t0 + timedelta(hours=h)

    raw = [(None, at(1), at(2), 0), (1, None, at(1), 1), (1, at(1), None, 2), (1, at(0), at(1), 3),
           (1, at(1), at(1), 4), (2, at(5), None, 5), (None, None, None, 6), (2, None, at(3), 7)]
    view = pl.DataFrame(raw, schema={"k": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC"),
                                     "available_at": pl.Datetime("us", "UTC"), "x": pl.Int64},
                        orient="row")
    query = pl.DataFrame({"k": [1, 1, 2, 2, None], "event_timestamp": [at(1), at(9), at(4), at(9),
                                                                       at(9)]})
    laid = sort_for_retrieval(view, ["k"])
    assert laid["k"].to_list()[-2:] == [None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = point_in_time_join(query, ViewFrame("v", laid, ("k",), {"x": "x"}, presorted=True))
    want = point_in_time_join(query, ViewFrame("v", view, ("k",), {"x": "x"}))
    assert got.equals(want)
    # By hand: k=1 at 1h has nothing strictly before; at 9h three rows tie on available_at 1h
    # and the latest event time (x=4) wins over x=3 and the null event time (x=1); k=2 has only
    # x=7 available (x=5 never is); a null key matches nothing.
    assert got["x"].to_list() == [None, 4, 7, 7, None]
