"""Row order: the artifact layout retrieval relies on, and a cheap check that rows are sorted.

A view artifact is sorted by ``(keys, available_at, event_timestamp)``, stably, so rows equal on
all three keep their ingestion order (the later row wins a full tie). Nulls go where the
point-in-time rule puts them: a null ``available_at`` is never available, so it sorts after
every instant within its key; a null ``event_timestamp`` counts as the earliest, so it sorts
first within an ``available_at`` tie (it loses the tie); null keys match nothing and go last.
The engines (``retrieval_packed``, ``retrieval_lazy``) and online publishing read this order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import polars as pl

from featurestore.packedsort import sort_in_place
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP

__all__ = ["retrieval_nulls_last", "retrieval_order", "sort_for_retrieval", "sorted_by"]

Frame = TypeVar("Frame", pl.DataFrame, pl.LazyFrame)


def retrieval_order(keys: Sequence[str]) -> list[str]:
    """The columns of the artifact order: ``[*keys, available_at, event_timestamp]``."""
    return [*keys, AVAILABLE_AT, EVENT_TIMESTAMP]


def retrieval_nulls_last(n_keys: int) -> list[bool]:
    """Per column of ``retrieval_order``, whether its nulls sort last (see the module doc)."""
    return [True] * n_keys + [True, False]


def sort_for_retrieval(frame: Frame, keys: Sequence[str], *, in_place: bool = False) -> Frame:
    """``frame`` in artifact order; a ``DataFrame`` stays eager and a ``LazyFrame`` lazy.

    With ``in_place`` a ``DataFrame`` that needs sorting is sorted in place, column by column,
    and returned (``featurestore.packedsort.sort_in_place``): for a caller done with its old
    order, so that the rows are in memory once. Without, ``frame`` is left as it was.

    Stable: rows tied on every sort column keep their order. A ``DataFrame`` already in order is
    returned as is after one comparison pass (transforms usually emit rows in key and event
    order, which is artifact order when availability follows event time: no sort, no copy).
    """
    order, nulls_last = retrieval_order(keys), retrieval_nulls_last(len(keys))
    if isinstance(frame, pl.DataFrame):
        if sorted_by(frame, order, nulls_last):
            return frame
        # In place, or on a shallow copy (the caller's frame keeps its order).
        return sort_in_place(frame if in_place else frame.clone(), order, nulls_last,
                             maintain_order=True)
    # The row number as the last sort column: an unstable sort (several times faster than
    # polars' stable one on wide frames) with the stable sort's result.
    row = "__fs_sort_row"
    columns = frame.collect_schema().names() if isinstance(frame, pl.LazyFrame) else frame.columns
    while row in columns:
        row = "_" + row
    return (frame.with_row_index(row)
            .sort([*order, row], nulls_last=[*nulls_last, False]).drop(row))


def sorted_by(
    frame: pl.DataFrame, columns: Sequence[str], nulls_last: bool | Sequence[bool] = True
) -> bool:
    """Whether rows are sorted ascending by ``columns``, lexicographically, with each column's
    nulls last or first as ``nulls_last`` says (one flag for all, or one per column).

    Equal to ``frame.equals(frame.sort(columns, nulls_last=nulls_last))`` without sorting.
    """
    if frame.height < 2:
        return True
    flags = [nulls_last] * len(columns) if isinstance(nulls_last, bool) else list(nulls_last)
    if len(flags) != len(columns):
        raise ValueError(f"{len(columns)} columns but {len(flags)} nulls_last flags")
    before, tied = pl.lit(False), pl.lit(True)
    for c, last in zip(columns, flags, strict=True):
        prev, cur = pl.col(c).shift(1), pl.col(c)
        null_before = (
            (prev.is_not_null() & cur.is_null()) if last else (prev.is_null() & cur.is_not_null())
        )
        before = before | (tied & (null_before | (prev < cur).fill_null(False)))
        tied = tied & prev.eq_missing(cur)
    ok = (before | tied).slice(1)
    # Streaming keeps the shifted copies chunk-sized instead of column-sized.
    return bool(frame.lazy().select(ok.all()).collect(engine="streaming").item())
