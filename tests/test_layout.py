"""The artifact layout: rows in (keys, available_at, event_timestamp) order, ties in input order."""

from __future__ import annotations

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore.materialize import in_order, sort_for_retrieval

rows = st.lists(st.tuples(st.one_of(st.none(), st.integers(0, 3)), st.integers(0, 4),
                          st.integers(0, 4), st.integers(0, 1000)), max_size=30)


@settings(max_examples=200, deadline=None)
@given(rows=rows, presort=st.booleans())
def test_in_order_agrees_with_sorting(rows, presort) -> None:  # type: ignore[no-untyped-def]
    frame = pl.DataFrame(rows, schema={"k": pl.Int64, "available_at": pl.Int64,
                                       "event_timestamp": pl.Int64, "payload": pl.Int64},
                         orient="row")
    if presort:
        frame = frame.sort("k", "available_at", "event_timestamp", maintain_order=True)
    order = ["k", "available_at", "event_timestamp"]
    expected = frame.sort(order, maintain_order=True)
    assert in_order(frame, order) == frame.equals(expected)
    assert sort_for_retrieval(frame, ["k"]).equals(expected)
