"""Point-in-time (PIT) retrieval: join feature views to a query frame without leakage.

This module is a pure engine: it knows nothing about the registry. A caller hands it a query
frame and one ``ViewFrame`` per feature view, and gets back the query with feature columns added.

Semantics (``docs/semantics.md``, "The point-in-time rule"), for each query row (keys ``K``, cutoff ``T``)
and each view, independently:

* the value comes from the view row of the same ``K`` with the greatest ``available_at < T``
  (``<= T`` with ``inclusive=True``); ties on ``available_at`` go to the later
  ``event_timestamp`` (a null ``event_timestamp`` counts as the earliest), then to the later
  ingestion, i.e. the later position in the frame's original row order;
* with ``ttl``, a value whose ``available_at < T - ttl`` is stale: null;
* the chosen row's value is the value: a null value in it stays null (no fall-back to an
  earlier row); view rows with a null ``available_at`` are never available;
* one output row per query row, in the query's order, every query column kept unchanged
  (duplicates too), nulls where nothing qualifies; query rows with a null key or a null cutoff
  match nothing;
* composite keys are compared column by column; key dtypes that differ only in width (``Int32``
  vs ``Int64``, ``Float32`` vs ``Float64``, ``String`` vs ``Categorical``, datetime units) are
  aligned without loss; other combinations raise ``DataError`` naming the view and the column;
* cutoffs are compared as UTC instants. A naive (or ``Date``) cutoff column is read in
  ``cutoff_timezone`` (default UTC); on a DST fall-back the ambiguous wall time is read as the
  *earliest* instant (the conservative choice: it can only remove values), a wall time that does
  not exist (spring-forward gap) raises ``DataError``. A zoned cutoff column is used as is, in
  whatever zone; ``cutoff_timezone`` only applies to naive columns. View ``available_at`` columns
  are UTC (naive ones are read as UTC).

``with_availability=True`` adds, right after each view's feature columns, one
``<feature>__available_at`` column per feature (``Datetime(unit, "UTC")``): the ``available_at`` of
the row the value came from, null when no row qualified. ``audit`` uses these columns to prove
the point-in-time rule on a result.

Engine (``point_in_time_join``). Artifacts are written by the store in ``sort_for_retrieval``
order: sorted by ``(keys, available_at, event_timestamp)`` with ingestion order kept for full
ties. On such a frame, every key is one contiguous run, so the pair (run number, available_at)
is globally sorted and packs into one integer (``Int64``, or ``Int128`` when the time range times
the number of keys would overflow). Retrieval then takes two passes over the artifact:

1. read only the key and ``available_at`` columns; number the key runs (``rle_id``); map each
   query key to its run with a hash join against the (small) table of distinct keys; pack the
   query's (run, cutoff) the same way, sort only the query and binary-search the packed artifact
   column (``side="left"`` finds the last row ``< T``, ``side="right"`` the last ``<= T``: the
   last row of a tie group, which the sort order made the winner of the tie-break);
2. stream the artifact's feature columns once, keeping only the matched rows (a row-index mask),
   and gather them into query order.

Peak memory is the key columns plus the matched rows, never the whole artifact. A frame not
flagged ``presorted`` (or flagged but found unsorted: checked for free on the packed column) is
collected once and its key columns sorted, then the same search runs. A presorted frame is read
twice (plus its ``event_timestamp`` column when it has ``available_at`` ties) and must yield the
same rows in the same order each time (true for Parquet scans and in-memory frames).

``point_in_time_join_lazy`` builds an equivalent pure lazy plan instead (``join_asof`` by key on
the retrieval-sorted frame, after keeping the last row of each ``(keys, available_at)`` tie
group, so polars' own tie rule never matters), for callers that want to compose further or sink
the result with the streaming engine. It trusts ``presorted`` (a lazy plan cannot check it);
it is slower and needs more memory than the eager engine (M scale: ~1.5x time, ~2x memory).
"""

from featurestore.layout import sort_for_retrieval
from featurestore.retrieval_audit import AuditReport, audit
from featurestore.retrieval_lazy import point_in_time_join_lazy
from featurestore.retrieval_packed import point_in_time_join
from featurestore.retrieval_plan import (
    AVAILABILITY_SUFFIX,
    ViewFrame,
    availability_column,
)

__all__ = [
    "AVAILABILITY_SUFFIX",
    "AuditReport",
    "ViewFrame",
    "audit",
    "availability_column",
    "point_in_time_join",
    "point_in_time_join_lazy",
    "sort_for_retrieval",
]
