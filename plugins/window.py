"""The ``window`` transform: aggregations over windows anchored at the cutoff.

Declared like any view (params: ``featurestore.windowspec``), served differently: at retrieval
the value for a query row with cutoff ``T`` aggregates the entity's rows with
``T - w <= available_at < T`` (``featurestore.windowengine``), computed from the view's input
snapshot, whatever the time of the newest row. Online lookups anchor at the request time.

What materialization writes (and causality verification checks) is the same computation anchored
at each row's own ``available_at``, inclusive: the value a query made the instant the row became
available would see. It is causal by construction (a row reads only rows available at or before
it) and lets the artifact be inspected, but it is not what retrieval serves for a later cutoff.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from featurestore.hookspecs import hookimpl
from featurestore.transforms import Params, Transform, TransformContext, entity_order
from featurestore.windowspec import declared, input_columns, parse_params, value_exprs

NAME = "window"


def output_columns(params: Params, input_schema: Any) -> dict[str, pl.DataType]:
    return declared(params, input_schema)


def _row_anchored(frame: pl.LazyFrame, params: Params, ctx: TransformContext) -> pl.LazyFrame:
    specs = parse_params(params)
    schema = frame.collect_schema()
    outs = declared(params, schema)
    base = [*ctx.keys, ctx.time_column, ctx.available_column]
    read = list(dict.fromkeys(c for s in specs for c in (
        s.column, s.where.column if s.where else s.column) if c not in base))
    # Full ties (same keys and times) ordered by the values: the output cannot depend on the
    # input's row order.
    rows = (frame.select(*base, *read)
            .sort([*entity_order(ctx), *read], nulls_last=False, maintain_order=True)
            .with_columns(value_exprs(specs, schema)).collect())
    query = rows.select(*ctx.keys, pl.col(ctx.available_column).alias("__fs_window_cutoff"))
    outputs = [o for s in specs for o in s.outputs]
    from featurestore.windowengine import window_aggregate  # numpy: only when one runs

    values = window_aggregate(rows, query, outputs, keys=ctx.keys, cutoff="__fs_window_cutoff",
                              available_at=ctx.available_column,
                              event_timestamp=ctx.time_column, inclusive=True)
    return rows.select(base).with_columns(
        [v.cast(outs[v.name]) for v in values]).lazy()


WINDOW = Transform(
    name=NAME,
    fn=_row_anchored,
    output_columns=output_columns,
    description="Count/sum/mean/std/min/max/first/last over windows anchored at the cutoff",
    lookback=lambda params: None,
    input_columns=input_columns,
)


@hookimpl
def register_transforms(register: Any) -> None:
    register(WINDOW)
