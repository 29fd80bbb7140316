"""A source's column view served from its source snapshot's files, without a copy.

A column view (no transform) holds some of the snapshot's columns, every row, in retrieval
order (``featurestore.layout``). A snapshot no transform view reads is written in retrieval
order (``StoreData.snapshot_order``); one a transform reads is sorted by keys and event time,
which is retrieval order too whenever ``available_at`` never goes back in event order within an
entity (a fixed lag, for one). Either way, a snapshot found in retrieval order (one O(n) pass
over its key and time columns) is the view's artifact: its file, or parts, hard-linked under the
view's own name (``artifacts.link_artifact_atomic``), with no second sort, write or hash. The
view's registry row lists its columns only; every reader selects them
(``artifacts.serves_some_columns``).

A snapshot by reference (``featurestore.reference``) is an index: its column views are indexes
of the same source files, linked the same way.

Otherwise (a transform reads the snapshot and availability goes back, or the file system has
no hard links) the view's columns are written as their own artifact, sorted, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from featurestore.artifacts import artifact_files, reading_artifacts
from featurestore.layout import retrieval_nulls_last, retrieval_order, sort_for_retrieval, sorted_by
from featurestore.reference import SOURCE_ROW, reference_of

Rows = pl.DataFrame | Iterator[pl.DataFrame]


@dataclass(frozen=True)
class SnapshotColumns:
    """A column view's artifact as the snapshot ``snapshot`` (its registry row) holds it.

    ``schema`` is what the view serves (column -> dtype, in the view's column order); ``rows``
    gives the same rows as frames, for where the snapshot's files cannot be linked.
    """

    snapshot: dict[str, Any]
    schema: dict[str, str]
    rows: Callable[[], Rows]


def column_view_rows(root: Path, src_row: dict[str, Any], keys: Sequence[str],
                     columns: Sequence[str], fresh: pl.DataFrame | None) -> SnapshotColumns | Rows:
    """A column view's artifact content: ``SnapshotColumns`` when the snapshot is in retrieval
    order, else its rows to write (one frame, or one sorted frame per bucket).

    ``fresh`` is the snapshot's rows when they are still in memory (just ingested, one file).
    """
    served = list(columns)
    files = artifact_files(root, src_row)
    ref = reference_of(src_row)
    # An index: the view's rows are its rows (the values stay in the source files).
    columns = served if ref is None else [c for c in served if c not in ref["columns"]] + [SOURCE_ROW]

    def rows() -> Rows:
        if src_row.get("parts"):  # bucketed: part by part, one bucket in memory at a time
            return (sort_for_retrieval(pl.read_parquet(f, columns=columns), keys) for f in files)
        # Ingested just now: its rows are in memory, so the file is not read back.
        return fresh.select(columns) if fresh is not None else pl.read_parquet(files[0],
                                                                               columns=columns)

    # Written in retrieval order by this store's ingest (``params.layout``; its checksum is
    # checked before any read), else found so by reading its key and time columns.
    if (src_row["params"].get("layout") != "retrieval"
            and not in_retrieval_order(files, keys, fresh)):
        return rows()
    schema = {c: src_row["schema"][c] for c in served}
    return SnapshotColumns(src_row, schema, rows)


def in_retrieval_order(files: Sequence[Path], keys: Sequence[str],
                       fresh: pl.DataFrame | None = None) -> bool:
    """Whether the snapshot in ``files`` (each part on its own) is in retrieval order: one
    O(n) pass over its key and time columns, on ``fresh`` (its rows in memory) when given."""
    order, nulls_last = retrieval_order(keys), retrieval_nulls_last(len(keys))
    if fresh is not None:
        return sorted_by(fresh.select(order), order, nulls_last)
    with reading_artifacts(files):
        return all(sorted_by(pl.read_parquet(f, columns=order), order, nulls_last)
                   for f in files)
