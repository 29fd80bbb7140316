"""The eager retrieval engine: packed binary search, then one streaming pass over the matches.

See ``featurestore.retrieval``'s module doc for the semantics and the two-pass design.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from datetime import timedelta

import polars as pl
from polars.exceptions import ComputeError, InvalidOperationError

from featurestore.errors import DataError
from featurestore.retrieval_plan import (
    ViewFrame,
    ViewPlan,
    availability_column,
    internal_prefix,
    normalize_views,
    plan_views,
    timestamp_unit,
    utc_instant,
)
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP

_INT128_LIMIT = 2**63


def _ttl_units(ttl: timedelta, unit: str) -> int:
    """ttl in whole ``unit`` (floored: with integer instants, ``av < T - ttl`` is
    ``av < T - floor(ttl)``)."""
    if unit == "ns":
        return (ttl // timedelta(microseconds=1)) * 1000
    if unit == "us":
        return ttl // timedelta(microseconds=1)
    return ttl // timedelta(milliseconds=1)


def _null_result(plan: ViewPlan, n: int, with_availability: bool) -> list[pl.Series]:
    schema = {out: dt for out, _, dt in plan.outputs}
    if with_availability:
        schema |= {availability_column(out): plan.av_out_dtype for out, _, _ in plan.outputs}
    return pl.DataFrame(schema=schema).clear(n).get_columns()


def point_in_time_join(
    query: pl.DataFrame | pl.LazyFrame,
    views: ViewFrame | Sequence[ViewFrame],
    *,
    cutoff: str = EVENT_TIMESTAMP,
    inclusive: bool = False,
    ttl: timedelta | None = None,
    cutoff_timezone: str | None = None,
    with_availability: bool = False,
) -> pl.DataFrame:
    """Join each view's features to ``query`` as of each row's ``cutoff`` (see module doc).

    Returns the query's columns unchanged followed, view by view, by the feature columns (and
    their ``<feature>__available_at`` columns when ``with_availability``).
    """
    q = query.collect() if isinstance(query, pl.LazyFrame) else query
    vs = normalize_views(views)
    prefix = internal_prefix(q.columns, vs)
    plans = plan_views(q.schema, vs, cutoff, cutoff_timezone, with_availability, ttl, prefix)
    if not plans:
        return q
    tz = cutoff_timezone or "UTC"
    try:
        cut_utc = q.select(utc_instant(pl.col(cutoff), q.schema[cutoff], tz)).to_series()
    except (ComputeError, InvalidOperationError) as exc:
        raise DataError(
            f"query cutoff column {cutoff!r}: cannot read naive times in zone {tz!r}: {exc}"
        ) from exc
    out = [q]
    for plan in plans:
        cols = _join_view(q, cut_utc, plan, inclusive, ttl, with_availability, prefix)
        out.append(pl.DataFrame(cols))
    return pl.concat(out, how="horizontal")


def _join_view(
    q: pl.DataFrame,
    cut_utc: pl.Series,
    plan: ViewPlan,
    inclusive: bool,
    ttl: timedelta | None,
    with_availability: bool,
    prefix: str,
) -> list[pl.Series]:
    view = plan.view
    n_query = q.height
    if not plan.outputs or n_query == 0:
        return _null_result(plan, n_query, with_availability)
    fkeys = [p.frame_col for p in plan.pairs]
    ridx = f"{prefix}i"
    avp = f"{prefix}av"
    av_expr = (
        pl.col(AVAILABLE_AT).cast(pl.Datetime("us"))
        if plan.av_dtype == pl.Date
        else pl.col(AVAILABLE_AT)
    )
    av_phys = av_expr.dt.cast_time_unit(plan.unit).to_physical().alias(avp)

    gcol = f"{prefix}g"
    run = (pl.struct(fkeys) if len(fkeys) > 1 else pl.col(fkeys[0])).rle_id().alias(gcol)
    source: pl.LazyFrame | pl.DataFrame = view.frame
    packed = None
    # A snapshot by reference is searched in its index; values are fetched from the source.
    keyframe = view.frame if view.reference is None else view.reference.index
    if view.presorted:
        k = keyframe.select(*fkeys, av_phys).with_columns(run).collect()
        n_rows = k.height
        if k[avp].null_count():
            k = k.with_row_index(ridx).filter(pl.col(avp).is_not_null()).with_columns(run)
        grp = _key_runs(k, fkeys, gcol)
        k = k.drop(fkeys)  # before packing: the keys and the packed column are never both held
        packed = None if grp is None else _pack(k, avp, gcol)
        if packed is not None and not _ties_in_order(keyframe, k, packed[0], ridx):
            packed = None
        if packed is None:
            warnings.warn(
                f"view {view.name!r}: frame flagged presorted is not sorted by "
                f"(keys, {AVAILABLE_AT}, {EVENT_TIMESTAMP}); sorting it",
                stacklevel=3,
            )
    if packed is None:
        # Not presorted: materialize once, sort only the narrow columns (stable: ingestion order
        # decides full ties), and gather features from the in-memory frame.
        df = view.frame.collect()
        source = df
        n_rows = df.height
        et = [pl.col(EVENT_TIMESTAMP)] if EVENT_TIMESTAMP in df.columns else []
        k = (
            df.select(*fkeys, av_phys, *et)
            .with_row_index(ridx)
            .filter(pl.col(avp).is_not_null())
            .sort(
                [*fkeys, avp, *([EVENT_TIMESTAMP] if et else [])],
                nulls_last=False,
                maintain_order=True,
            )
            .with_columns(run)
        )
        grp = _key_runs(k, fkeys, gcol)
        k = k.drop(fkeys)
        packed = _pack(k, avp, gcol)
        assert grp is not None and packed is not None  # sorted just above
    packed_a, lo, span = packed
    # Free the key columns, and the times unless ttl or the availability output reads them.
    keep_av = ttl is not None or with_availability
    k = k.select(*([avp] if keep_av else []), *([ridx] if ridx in k.columns else []))

    # Query side: run number of each key (hash join against the distinct keys), packed cutoff.
    internals = [p.internal for p in plan.pairs]
    gtab = grp.select(*[p.frame_expr().alias(p.internal) for p in plan.pairs], pl.col(gcol))
    qk = q.select([p.query_expr().alias(p.internal) for p in plan.pairs])
    g = qk.join(gtab, on=internals, how="left", maintain_order="left", nulls_equal=False)[gcol]
    t = cut_utc.dt.cast_time_unit(plan.unit).to_physical()
    dt = packed_a.dtype
    packed_q = pl.select(
        (
            pl.lit(g).cast(dt) * pl.lit(span, dtype=dt)
            + (pl.lit(t).clip(lo - 1, lo + span - 2).cast(dt) - pl.lit(lo - 1, dtype=dt))
        ).alias("q")
    ).to_series()
    # Sort only the query (nulls: no key run or no cutoff, last and dropped), then search.
    order = packed_q.arg_sort(nulls_last=True).slice(0, n_query - packed_q.null_count())
    m = _last_before(packed_a, packed_q.gather(order), inclusive)
    m_safe = m.clip(0, None)
    # A hit in an earlier key run packs below this run's base: not a match.
    ok = pl.select(
        (pl.lit(m) >= 0)
        & (
            pl.lit(packed_a.gather(m_safe))
            > pl.lit(g.gather(order)).cast(dt) * pl.lit(span, dtype=dt)
        )
    ).to_series()
    if ttl is not None:
        stale_before = t.gather(order) - min(_ttl_units(ttl, plan.unit), 2**62)
        ok = ok & (k[avp].gather(m_safe) >= stale_before)
    rows = k[ridx].gather(m_safe) if ridx in k.columns else m_safe
    # The searched columns are not needed to fetch: freed first, they leave room for the values.
    av = k[avp] if with_availability else None
    del k, packed, packed_a, packed_q, grp, g, t
    return _fetch(
        plan, source, n_rows, n_query, order, ok, rows, av, m_safe, with_availability, prefix
    )


def _last_before(packed: pl.Series, needles: pl.Series, inclusive: bool) -> pl.Series:
    """For each of the ascending ``needles``, the position of the last value of the ascending
    ``packed`` below it (at or below it when ``inclusive``), -1 where there is none (Int64)."""
    if packed.dtype == pl.Int64:
        # Both sides sorted: an as-of merge walks them once, where a binary search per needle
        # jumps around the larger side (about three times slower at 1M needles in 10M).
        at = pl.int_range(packed.len(), dtype=pl.UInt32 if packed.len() < 2**32 else pl.Int64,
                          eager=True)
        hits = pl.DataFrame({"v": needles}).join_asof(
            pl.DataFrame({"v": packed, "m": at}), on="v", strategy="backward",
            allow_exact_matches=inclusive, check_sortedness=False)
        return hits.get_column("m").cast(pl.Int64).fill_null(-1)
    pos = packed.search_sorted(needles, side="right" if inclusive else "left")
    return pos.cast(pl.Int64) - 1


def _key_runs(k: pl.DataFrame, fkeys: list[str], gcol: str) -> pl.DataFrame | None:
    """The distinct keys of a key-sorted frame with their run number ``gcol`` (``rle_id``), or
    None when a key is in two runs (the frame is not sorted by keys)."""
    if k.height == 0:
        return k.select(*fkeys, gcol)
    runs = k[gcol]
    n_runs = int(runs[-1]) + 1
    starts = runs.search_sorted(pl.int_range(n_runs, dtype=pl.UInt32, eager=True), side="left")
    grp = k.select(*fkeys, gcol).gather(starts)
    if n_runs > 1 and grp.select(pl.struct(fkeys).is_duplicated().any()).item():
        return None
    return grp


def _pack(k: pl.DataFrame, avp: str, gcol: str) -> tuple[pl.Series, int, int] | None:
    """Pack (key run, available_at) of a frame sorted by its key runs into one sorted integer
    column.

    ``k`` holds the physical ``available_at`` (no nulls) and the key run number ``gcol``.
    Returns (packed, lowest instant, span) or None when time goes back within a run.
    """
    if k.height == 0:
        return pl.Series("A", [], dtype=pl.Int64), 0, 3
    n_runs = int(k[gcol][-1]) + 1
    lo, hi = k.select(pl.col(avp).min(), pl.col(avp).max().alias("hi")).row(0)
    span = hi - lo + 3  # offsets 1..hi-lo+1 for rows; 0 and hi-lo+2 for cutoffs outside
    dt = pl.Int64 if n_runs * span < _INT128_LIMIT else pl.Int128
    packed = k.select(
        (
            pl.col(gcol).cast(dt) * pl.lit(span, dtype=dt)
            + (pl.col(avp).cast(dt) - pl.lit(lo - 1, dtype=dt))
        ).alias("A")
    ).to_series().rechunk()  # one chunk per row group otherwise: searches would be slower
    if not packed.is_sorted():
        return None
    return packed, lo, span


def _ties_in_order(frame: pl.LazyFrame, k: pl.DataFrame, packed: pl.Series, ridx: str) -> bool:
    """Within each (keys, available_at) tie, is ``event_timestamp`` non-decreasing (nulls first)?

    Only read when there are ties at all (a strictly increasing packed column has none).
    """
    same = (packed == packed.shift(1)).fill_null(False)
    if EVENT_TIMESTAMP not in frame.collect_schema() or not same.any():
        return True
    et = frame.select(pl.col(EVENT_TIMESTAMP).to_physical()).collect().to_series()
    if ridx in k.columns:  # rows with a null available_at were dropped from k
        et = et.gather(k[ridx])
    prev = et.shift(1)
    back = (et.is_null() & prev.is_not_null()) | (et < prev).fill_null(False)
    return not (same & back).any()


def _fetch(
    plan: ViewPlan,
    source: pl.LazyFrame | pl.DataFrame,
    n_rows: int,
    n_query: int,
    order: pl.Series,
    ok: pl.Series,
    rows: pl.Series,
    av: pl.Series | None,
    m: pl.Series,
    with_availability: bool,
    prefix: str,
) -> list[pl.Series]:
    """Gather the matched rows' features (one pass over ``source``) into query order.

    ``order[j]`` is the query row of the j-th searched value, ``rows[j]`` its matched row in
    ``source`` (valid where ``ok[j]``), ``m[j]`` its position in the searched frame.
    """
    view = plan.view
    valid_order = order.filter(ok)
    valid_rows = rows.filter(ok).cast(pl.UInt32)
    if valid_rows.len() == 0:
        return _null_result(plan, n_query, with_availability)
    # Position of each matched row in the fetched subset (ascending unique rows), in query order.
    if valid_rows.is_sorted():  # always, for a presorted frame: no hashing or search needed
        first = valid_rows.ne_missing(valid_rows.shift(1))
        uniq = valid_rows.filter(first)
        sub_pos = first.cast(pl.UInt32).cum_sum() - 1
    else:
        uniq = valid_rows.unique().sort()
        sub_pos = uniq.search_sorted(valid_rows, side="left")
    pos = pl.repeat(None, n_query, dtype=pl.UInt32, eager=True).scatter(valid_order, sub_pos)
    distinct_cols = list(dict.fromkeys(c for _, c, _ in plan.outputs))
    remap = None
    if isinstance(source, pl.DataFrame):
        sub = source.select(distinct_cols).gather(uniq)
    elif view.reference is not None:  # in source order: its rows are remapped below
        sub, remap = view.reference.fetch(uniq, distinct_cols)
    else:
        ridx = f"{prefix}row"
        mask = pl.repeat(False, n_rows, dtype=pl.Boolean, eager=True).scatter(uniq, True)
        sub = (
            source.select(distinct_cols)
            .with_row_index(ridx)
            .filter(pl.lit(mask).gather(pl.col(ridx)))
            .drop(ridx)
            .collect(engine="streaming")
        )
        if sub.height != uniq.len():
            raise DataError(
                f"view {view.name!r}: frame returned different rows on a second read; a "
                "presorted frame must be deterministic (e.g. a Parquet scan)"
            )
    # All columns in one select, so they are gathered in parallel (peak memory: the fetched
    # rows plus the result): rechunk (the scan gives one chunk per row group: slow gathers),
    # gather with non-null indices, then null the unmatched rows, which is faster than a gather
    # with null indices.
    idx = pos.fill_null(0)
    if remap is not None:
        idx = remap.gather(idx)
    picked = [pl.col(c).gather(pl.lit(idx)) for c in distinct_cols]
    if pos.null_count():
        matched = pos.is_not_null()
        picked = [pl.when(pl.lit(matched)).then(e).alias(c)
                  for e, c in zip(picked, distinct_cols, strict=True)]
    got = sub.rechunk().select(picked)
    del sub
    result = [got.get_column(c).alias(out) for out, c, _ in plan.outputs]
    if av is not None:
        av_q = pl.repeat(None, n_query, dtype=pl.Int64, eager=True).scatter(
            valid_order, av.gather(m.filter(ok))
        )
        av_dt = av_q.cast(pl.Datetime(plan.unit, "UTC")).dt.cast_time_unit(
            timestamp_unit(plan.av_dtype)
        )
        result += [av_dt.alias(availability_column(out)) for out, _, _ in plan.outputs]
    return result
