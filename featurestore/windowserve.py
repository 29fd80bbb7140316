"""Serving features of ``window`` views: aggregations anchored at each query row's cutoff.

A window view's artifact records the source snapshot it was computed from
(``input_artifact_id``). Retrieval reads that snapshot (checksum-verified, only the columns the
requested features need), prepares the value columns as the view's params say, and hands them
to ``featurestore.windowengine``: for a cutoff ``T`` the rows with
``T - w <= available_at < T`` (``<= T`` when inclusive), whatever the time of the newest row.
With ``ttl``, rows available before ``T - ttl`` are stale and left out of every window.
``with_availability`` gives each value the ``available_at`` of the newest row that contributed
to it (null for an empty window), which ``audit`` checks against the cutoff like any other value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from featurestore.artifacts import reading_artifacts, verify_artifact
from featurestore.errors import ArtifactError, NotFoundError
from featurestore.reference import reference_of
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP
from featurestore.windowdefs import WindowOutput
from featurestore.windowspec import NAME, parse_params, value_exprs

if TYPE_CHECKING:
    from featurestore.store import FeatureStore

__all__ = ["WindowRequest", "is_window", "window_request", "window_values"]


def is_window(artifact_or_feature: Mapping[str, Any]) -> bool:
    """Whether a view artifact (or a feature row) is served anchored at the cutoff."""
    return artifact_or_feature.get("transform") == NAME


@dataclass(frozen=True)
class WindowRequest:
    """What to read and compute for one window view: its snapshot and the requested outputs."""

    view: str
    path: Path
    keys: tuple[str, ...]
    columns: tuple[str, ...]  # snapshot columns to read
    prepare: tuple[pl.Expr, ...]
    outputs: tuple[WindowOutput, ...]  # named by output column


def window_request(store: FeatureStore, art: Mapping[str, Any], mapping: Mapping[str, str],
                   keys: Sequence[str], *, verify_checksums: bool = False) -> WindowRequest:
    """Resolve a window view's artifact to its verified input snapshot and the outputs wanted
    (``mapping``: output column -> the view's column)."""
    snapshot_id = art.get("input_artifact_id")
    try:
        if snapshot_id is None:
            raise NotFoundError("no input snapshot recorded")
        snapshot = store.artifact(snapshot_id)
        if reference_of(snapshot) is not None:  # never so: a transform's source is copied
            raise ArtifactError(f"snapshot {snapshot_id} is an index (snapshot_layout "
                                "reference), which windows do not read")
        path = verify_artifact(store.root, snapshot, trust_cache=not verify_checksums)
    except (NotFoundError, ArtifactError) as exc:
        raise ArtifactError(
            f"window view {art['name']!r} (artifact {art['id']}) is served from the source "
            f"snapshot it was materialized from, which cannot be read ({exc}); run "
            f"`featurestore materialize {art['name']} --force`") from None
    schema = dict(pl.read_parquet_schema(path))
    specs = parse_params(art["params"])
    by_column = {o.name: (spec, o) for spec in specs for o in spec.outputs}
    outputs, used = [], []
    for out_name, column in mapping.items():
        spec, o = by_column[column]
        outputs.append(WindowOutput(out_name, o.value, o.agg, o.window))
        if spec not in used:
            used.append(spec)
    read = [*keys, EVENT_TIMESTAMP, AVAILABLE_AT]
    for spec in used:
        for col in (spec.column, spec.where.column if spec.where else None):
            if col is not None and col not in read:
                read.append(col)
    return WindowRequest(art["name"], path, tuple(keys), tuple(read),
                         tuple(value_exprs(tuple(used), schema)), tuple(outputs))


def window_values(request: WindowRequest, query: pl.DataFrame, *, cutoff: str,
                  inclusive: bool = False, ttl: timedelta | None = None,
                  cutoff_timezone: str | None = None, with_availability: bool = False,
                  key_filter: bool = False) -> list[pl.Series]:
    """The requested outputs for every query row, in query order (see the module docstring).

    ``key_filter`` reads only the snapshot rows of the query's keys (for small online
    requests: Parquet statistics skip the other row groups).
    """
    scan = pl.scan_parquet(request.path).select(request.columns)
    if key_filter:
        for k in request.keys:
            wanted = query[k].drop_nulls().unique()
            scan = scan.filter(pl.col(k).is_in(wanted.cast(scan.collect_schema()[k],
                                                            strict=False).drop_nulls().to_list()))
    from featurestore.windowengine import window_aggregate  # numpy: only when windows are asked

    rows = scan.with_columns(request.prepare).collect()
    return window_aggregate(rows, query, request.outputs, keys=request.keys, cutoff=cutoff,
                            inclusive=inclusive, ttl=ttl, cutoff_timezone=cutoff_timezone or "UTC",
                            with_availability=with_availability)


def serve_online(store: FeatureStore, art: Mapping[str, Any], features: Sequence[tuple[str, Any]],
                 keys: Sequence[str], columns: Mapping[str, list[Any]], t_us: int, *,
                 inclusive: bool, ttl_us: int | None, result: Any) -> None:
    """Fill an online lookup's ``result`` for a window view, anchored at the request time.

    Status per value: PRESENT (a count of 0 included), NULL_VALUE (the window has rows but the
    value is null, e.g. the std of one value), NOT_FOUND (nothing in the window).
    """
    from featurestore.online.base import NOT_FOUND, NULL_VALUE, PRESENT, to_storage
    from featurestore.plan import dtype_from_str

    cut = "__fs_window_cutoff"
    request = window_request(store, art, {name: row["column_name"] for name, row in features},
                             keys)
    query = pl.DataFrame([pl.Series(k, columns[k], strict=False) for k in keys]).with_columns(
        pl.lit(t_us).cast(pl.Datetime("us", "UTC")).alias(cut))
    ttl = None if ttl_us is None else timedelta(microseconds=ttl_us)
    with reading_artifacts([request.path]):
        got = pl.DataFrame(window_values(request, query, cutoff=cut, inclusive=inclusive,
                                         ttl=ttl, with_availability=True, key_filter=True))
    n = query.height
    for name, row in features:
        dtype = dtype_from_str(art["schema"][row["column_name"]])
        values = got.select(to_storage(pl.col(name), dtype)).to_series().to_list()
        avail = got.select(pl.col(f"{name}__available_at").dt.epoch("us")).to_series().to_list()
        result.values[name] = values
        result.statuses[name] = [PRESENT if v is not None else NULL_VALUE if a is not None
                                 else NOT_FOUND for v, a in zip(values, avail, strict=True)]
        result.available_at[name] = avail
        result.event_timestamp[name] = [None] * n
        result.dtypes[name] = dtype
        result.views[name] = request.view
