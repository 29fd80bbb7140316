"""A brute-force plain-Python oracle for the ``field`` transform.

A readable loop over rows, written from the documented semantics (the plugins/field.py
docstring), not from the Polars code: for every row, collect its comparison set by scanning the
rows of its (group, moment) bucket, then compute each output from that list. ``rows`` is a list
of dicts (one per input row, in input order); the result is a list of ``{output column: value}``
dicts in the same order.
"""

from __future__ import annotations

import statistics
from typing import Any

try:
    from oracles_transforms import AV, TS, _clean
except ImportError:  # tests/ imported as a package
    from tests.oracles_transforms import AV, TS, _clean


def field_order(params: dict) -> list[str]:
    """The columns after (keys, event_timestamp, available_at) that order the output rows."""
    bucket = [*params["group_by"], *params.get("at", [])]
    columns = [c for c in bucket if c not in (TS, AV)]
    for spec in params["outputs"].values():
        if spec["column"] not in columns:
            columns.append(spec["column"])
    return [TS, AV, *columns]


def comparison_set(bucket_rows: list[dict], row: dict, bucket: list[str]) -> list[dict] | None:
    """The rows the documented rule lets ``row`` read, from the rows of its bucket (same values
    in every group and moment column); None when ``row`` belongs to no group."""
    if any(row[c] is None for c in bucket):
        return None
    return [other for other in bucket_rows if other[AV] <= row[AV]]


def _better(a: Any, b: Any, descending: bool) -> bool:
    return a > b if descending else a < b


def _output(kind: str, own: Any, values: list, descending: bool, min_count: int) -> Any:
    n = len(values)
    if kind == "count":
        return n
    if own is None or n < min_count:
        return None
    if kind == "rank":
        return 1 + sum(1 for v in values if _better(v, own, descending))
    if kind == "percentile":
        if n < 2:
            return None
        return sum(1 for v in values if _better(own, v, descending)) / (n - 1)
    if kind == "delta_median":
        return own - statistics.median(values)
    if kind == "delta_mean":
        return own - sum(values) / n
    if kind == "delta_best":
        return own - (max(values) if descending else min(values))
    if kind == "gap_to_leader":
        return own - min(values)
    raise AssertionError(f"unknown kind {kind!r}")


def field_oracle(rows: list[dict], keys: list[str], params: dict) -> list[dict]:
    """The documented outputs of every row, in input order (``keys`` play no part: a group
    transform compares rows across entities)."""
    del keys
    bucket = [*params["group_by"], *params.get("at", [])]
    min_count = params.get("min_count", 1)
    # Rows by their bucket values, only to avoid scanning every row for every row.
    buckets: dict[tuple, list[dict]] = {}
    for row in rows:
        buckets.setdefault(tuple(row[c] for c in bucket), []).append(row)
    results = []
    for row in rows:
        peers = comparison_set(buckets[tuple(row[c] for c in bucket)], row, bucket)
        out: dict[str, Any] = {}
        for name, spec in params["outputs"].items():
            if peers is None:
                out[name] = None
                continue
            values = [_clean(p[spec["column"]]) for p in peers]
            values = [v for v in values if v is not None]
            own = _clean(row[spec["column"]])
            out[name] = _output(spec["kind"], own, values, spec.get("descending", False),
                                min_count)
        results.append(out)
    return results
