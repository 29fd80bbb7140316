"""What an online lookup takes and gives back: entity rows in, an ``OnlineResult`` out.

``OnlineResult`` holds values in storage form with per-value status and availability;
``OnlineResult.frame`` shapes them as the join engine would (same columns, same dtypes).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from featurestore.errors import DataError
from featurestore.online.base import NULL_VALUE, PRESENT, storage_dtype

EntityRows = pl.DataFrame | Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]]


@dataclass
class OnlineResult:
    """Column-wise result of one lookup: values in storage form plus per-value metadata."""

    n: int
    names: list[str]
    dtypes: dict[str, pl.DataType]
    views: dict[str, str]  # feature -> view
    values: dict[str, list[Any]]
    statuses: dict[str, list[str]]
    available_at: dict[str, list[int | None]]  # microseconds since the epoch, UTC
    event_timestamp: dict[str, list[int | None]]
    served_from: dict[str, str]  # view -> "online" | "artifact" | "online+artifact"
    tier: str
    as_of_us: int

    def frame(self, query: pl.DataFrame, *, with_status: bool = False,
              with_availability: bool = False) -> pl.DataFrame:
        """``query`` with one column per feature (plus status / available_at columns)."""
        key = (tuple(self.names), tuple(self.dtypes[n] for n in self.names),
               tuple(self.views[n] for n in self.names), with_status, with_availability)
        shape = _SHAPES.get(key)
        if shape is None:
            shape = _SHAPES[key] = _frame_shape(self, with_status, with_availability)
            if len(_SHAPES) > 512:
                _SHAPES.clear()
        columns, schema, casts = shape
        clash = [c for c in schema if c in query.columns]
        if clash:
            raise DataError(f"entity rows: column(s) {', '.join(clash)} clash with requested "
                            "features")
        data = []
        for kind, name in columns:
            if kind == "value":
                data.append(self.values[name])
            elif kind == "status":
                data.append(self.statuses[name])
            else:
                data.append([a if s in _SERVED else None for a, s in
                             zip(self.available_at[name], self.statuses[name], strict=True)])
        # Row-wise construction is one call into polars: far cheaper for the few rows served.
        features = pl.DataFrame(list(zip(*data, strict=True)) if self.n else None,
                                schema=schema, orient="row")
        if casts:
            features = features.with_columns(casts)
        return pl.concat([query, features], how="horizontal")


_SERVED = frozenset((PRESENT, NULL_VALUE))
_SHAPES: dict[Any, tuple[list[tuple[str, str]], dict[str, pl.DataType], list[pl.Expr]]] = {}


def _frame_shape(result: OnlineResult, with_status: bool, with_availability: bool
                 ) -> tuple[list[tuple[str, str]], dict[str, pl.DataType], list[pl.Expr]]:
    """Columns, storage schema and casts of ``OnlineResult.frame`` (cached per result shape)."""
    columns: list[tuple[str, str]] = []
    schema: dict[str, pl.DataType] = {}
    casts = []
    by_view: dict[str, list[str]] = {}
    for name in result.names:
        by_view.setdefault(result.views[name], []).append(name)
    # As the join engine orders them: per view its features, then their availability.
    for group in by_view.values():
        for name in group:
            stored, dtype = storage_dtype(result.dtypes[name]), result.dtypes[name]
            columns.append(("value", name))
            schema[name] = stored
            if stored != dtype:
                casts.append(pl.col(name).cast(dtype))
        for name in group if with_availability else ():
            columns.append(("available_at", name))
            schema[f"{name}__available_at"] = pl.Int64()
            casts.append(pl.col(f"{name}__available_at").cast(pl.Datetime("us", "UTC")))
        for name in group if with_status else ():
            columns.append(("status", name))
            schema[f"{name}__status"] = pl.String()
    return columns, schema, casts


def entity_columns(entities: EntityRows) -> tuple[dict[str, list[Any]], int]:
    if isinstance(entities, pl.DataFrame):
        return {c: entities[c].to_list() for c in entities.columns}, entities.height
    if isinstance(entities, Mapping):
        cols = {str(k): list(v) for k, v in entities.items()}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) > 1:
            raise DataError(f"entity rows: key columns have different lengths "
                            f"({', '.join(f'{k}={len(v)}' for k, v in cols.items())})")
        return cols, lengths.pop() if lengths else 0
    rows = list(entities)
    names = list(dict.fromkeys(k for r in rows for k in r))
    return {k: [r.get(k) for r in rows] for k in names}, len(rows)


def moment_us(as_of: datetime | None) -> int:
    if as_of is None:
        return time.time_ns() // 1000
    moment = as_of
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)  # a naive request time is UTC
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return delta // timedelta(microseconds=1)
