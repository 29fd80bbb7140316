"""The lazy retrieval engine: the same result as a pure polars plan (``join_asof`` by key).

For callers that compose further or sink with the streaming engine; slower and hungrier than
``retrieval_packed`` (see ``featurestore.retrieval``'s module doc).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

import polars as pl

from featurestore.layout import sort_for_retrieval
from featurestore.retrieval_plan import (
    ViewFrame,
    availability_column,
    internal_prefix,
    normalize_views,
    plan_views,
    timestamp_unit,
    utc_instant,
)
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP


def point_in_time_join_lazy(
    query: pl.DataFrame | pl.LazyFrame,
    views: ViewFrame | Sequence[ViewFrame],
    *,
    cutoff: str = EVENT_TIMESTAMP,
    inclusive: bool = False,
    ttl: timedelta | None = None,
    cutoff_timezone: str | None = None,
    with_availability: bool = False,
) -> pl.LazyFrame:
    """Same result as ``point_in_time_join``, as a lazy plan (``join_asof`` by key).

    Validation (columns, dtypes, name clashes) happens now; a naive cutoff that does not exist in
    ``cutoff_timezone`` raises polars' ``ComputeError`` at collect time.
    """
    lq = query.lazy()
    qschema = lq.collect_schema()
    vs = normalize_views(views)
    prefix = internal_prefix(qschema.names(), vs)
    plans = plan_views(qschema, vs, cutoff, cutoff_timezone, with_availability, ttl, prefix)
    if not plans:
        return lq
    row, cut = f"{prefix}row", f"{prefix}cut"
    tz = cutoff_timezone or "UTC"
    lq = (
        lq.with_row_index(row)
        .with_columns(utc_instant(pl.col(cutoff), qschema[cutoff], tz).alias(cut))
        .sort(cut, nulls_last=False, maintain_order=True)
    )
    new_cols: list[str] = []
    for plan in plans:
        view = plan.view
        i = plan.index
        av, qcut = f"{prefix}av{i}", f"{prefix}cut{i}"
        keyn = [f"{p.internal}_{i}" for p in plan.pairs]
        if not plan.outputs:
            continue
        frame = view.frame if view.presorted else sort_for_retrieval(view.frame, view.keys)
        av_expr = (
            pl.col(AVAILABLE_AT).cast(pl.Datetime("us"))
            if plan.av_dtype == pl.Date
            else pl.col(AVAILABLE_AT)
        )
        f = frame.filter(pl.col(AVAILABLE_AT).is_not_null()).select(
            *[p.frame_expr().alias(n) for p, n in zip(plan.pairs, keyn, strict=True)],
            utc_instant(
                av_expr, plan.av_dtype if plan.av_dtype != pl.Date else pl.Datetime("us"), "UTC"
            )
            .dt.cast_time_unit(plan.unit)
            .alias(av),
            *[pl.col(c).alias(out) for out, c, _ in plan.outputs],
        )
        # Keep the last row of each (keys, available_at) tie group: the tie-break winner.
        # (The last row compares with a null shift: ``ne_missing`` is true on its non-null av.)
        f = f.filter(
            pl.any_horizontal(*[pl.col(n).ne_missing(pl.col(n).shift(-1)) for n in [*keyn, av]])
        )
        lq = lq.with_columns(
            *[p.query_expr().alias(n) for p, n in zip(plan.pairs, keyn, strict=True)],
            pl.col(cut).dt.cast_time_unit(plan.unit).alias(qcut),
        ).join_asof(
            f,
            left_on=qcut,
            right_on=av,
            by=keyn,
            strategy="backward",
            allow_exact_matches=inclusive,
            check_sortedness=False,
        )
        ok = pl.all_horizontal(*[pl.col(n).is_not_null() for n in keyn]) & pl.col(av).is_not_null()
        if ttl is not None:
            ok = ok & (pl.col(av) >= pl.col(qcut) - ttl)
        exprs = [
            pl.when(ok).then(pl.col(out)).otherwise(None).alias(out) for out, _, _ in plan.outputs
        ]
        new_cols += [out for out, _, _ in plan.outputs]
        if with_availability:
            av_out = pl.col(av).dt.cast_time_unit(timestamp_unit(plan.av_dtype))
            exprs += [
                pl.when(ok).then(av_out).otherwise(None).alias(availability_column(out))
                for out, _, _ in plan.outputs
            ]
            new_cols += [availability_column(out) for out, _, _ in plan.outputs]
        lq = lq.with_columns(exprs).drop([*keyn, av, qcut], strict=False)
    return lq.sort(row).select([*qschema.names(), *new_cols])
