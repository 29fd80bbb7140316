"""Point-in-time retrieval from bucketed artifacts, one part at a time.

A bucketed artifact (``featurestore.buckets``) is a list of part files, each holding whole
entities. The eager engine (``retrieval_packed``) reads a view's key and ``available_at``
columns whole; over a bucketed view that would be the whole artifact's keys at once. Here each
part is joined on its own: every query row is routed to the part holding its key (one join of
the query's keys against the parts' distinct keys, with the engine's own key alignment, so a
query key reaches a part exactly when the engine would match it), each part's rows go through
the engine against that part alone, and the answers are scattered back into query order. Every
entity lives in exactly one part (a key found in two is an ``ArtifactError``), so the result
is the engine's result over the whole artifact; the peak is one part's key columns (plus the
query and the answer).

Routing reads the parts' distinct keys, not a hash: nothing depends on the hash function that
split the rows staying the same between writing and reading.

The lazy engine (``retrieval_lazy``) gets the same treatment as a plan
(``point_in_time_join_lazy_parts``): one ``join_asof`` per part on the query rows whose keys are
in it, the parts' answers concatenated one part after another (``parallel=False``, so a collect
holds one part's rows at a time) and joined back to the query.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import polars as pl

from featurestore.errors import ArtifactError
from featurestore.reference import SOURCE_ROW
from featurestore.retrieval_lazy import point_in_time_join_lazy
from featurestore.retrieval_packed import point_in_time_join
from featurestore.retrieval_plan import (
    ViewFrame,
    ViewPlan,
    availability_column,
    internal_prefix,
    plan_views,
)
from featurestore.transforms import EVENT_TIMESTAMP

__all__ = ["point_in_time_join_lazy_parts", "point_in_time_join_parts"]


def point_in_time_join_parts(
    query: pl.DataFrame | pl.LazyFrame,
    views: Sequence[ViewFrame],
    parts: Sequence[Sequence[Path] | None],
    *,
    cutoff: str = EVENT_TIMESTAMP,
    inclusive: bool = False,
    ttl: timedelta | None = None,
    cutoff_timezone: str | None = None,
    with_availability: bool = False,
) -> pl.DataFrame:
    """``point_in_time_join(query, views, ...)``, with ``views[i]`` joined part by part when
    ``parts[i]`` lists its artifact's part files (more than one), each holding whole entities
    and each sorted in artifact order. Same columns, same rows, same order."""
    q = query.collect() if isinstance(query, pl.LazyFrame) else query
    options = {"cutoff": cutoff, "inclusive": inclusive, "ttl": ttl,
               "cutoff_timezone": cutoff_timezone, "with_availability": with_availability}
    views = list(views)
    if all(p is None or len(p) <= 1 for p in parts):
        return point_in_time_join(q, views, **options)  # type: ignore[arg-type]
    # Validates every view against the query first, as the one-call engine would, and gives
    # the output's columns and dtypes.
    empty = point_in_time_join(q.head(0), views, **options)  # type: ignore[arg-type]
    prefix = internal_prefix(q.columns, views)
    plans = plan_views(q.schema, views, cutoff, cutoff_timezone, with_availability, ttl, prefix)
    by_view = {plan.index: plan for plan in plans}
    out = [q]
    start = q.width
    for i, (view, files) in enumerate(zip(views, parts, strict=True)):
        n_out = len(view.features) * (2 if with_availability else 1)
        template = empty.select(empty.columns[start:start + n_out])
        start += n_out
        if i not in by_view or n_out == 0:
            continue
        if files is None or len(files) <= 1:
            joined = point_in_time_join(q, [view], **options)  # type: ignore[arg-type]
            out.append(joined.select(joined.columns[q.width:]))
        elif view.reference is not None:
            out.append(_index_by_part(q, view, by_view[i], files, prefix, options))
        else:
            out.append(_by_part(q, view, by_view[i], files, template, prefix, options))
    return pl.concat(out, how="horizontal")


def _index_by_part(q: pl.DataFrame, view: ViewFrame, plan: ViewPlan, files: Sequence[Path],
                   prefix: str, options: dict) -> pl.DataFrame:
    """A bucketed index's output columns (``featurestore.reference``): each part searched on
    its own by the engine, with the matched row's source position as the one feature asked
    for, then every matched row's values fetched in one pass over the source files (not one
    per part). The peak: one part's key and time columns, and the answers."""
    assert view.reference is not None
    src = "source_row"  # an output name: not the engine's internal prefix, not a query column
    while src in q.columns:
        src += "_"
    columns = list(dict.fromkeys(c for _, c, _ in plan.outputs))
    # A feature that is an index column itself (a time, say) comes with the search.
    own = [c for c in columns if c in view.reference.index.collect_schema()]
    search = dataclasses.replace(view, frame=view.reference.index, reference=None,
                                 features={src: SOURCE_ROW, **{f"{src}.{c}": c for c in own}})
    search_options = {**options, "with_availability": True}
    empty = point_in_time_join(q.head(0), [search], **search_options)  # type: ignore[arg-type]
    [search_plan] = plan_views(q.schema, [search], options["cutoff"],
                               options["cutoff_timezone"], True, options["ttl"], prefix)
    found = _by_part(q, search, search_plan, files, empty.select(empty.columns[q.width:]),
                     prefix, search_options)
    rest = [c for c in columns if c not in own]
    values = pl.concat([found.select(pl.col(f"{src}.{c}").alias(c) for c in own),
                        *([view.reference.values_at(found.get_column(src), rest)] if rest
                          else [])], how="horizontal")
    result = [values.get_column(c).alias(out) for out, c, _ in plan.outputs]
    if options["with_availability"]:
        av = found.get_column(availability_column(src))
        result += [av.alias(availability_column(out)) for out, _, _ in plan.outputs]
    return pl.DataFrame(result)


def _joined_by_part(views: Sequence[ViewFrame], parts: Sequence[Sequence[Path] | None]
                    ) -> list[Sequence[Path] | None]:
    """``parts``, with None for the indexes (``featurestore.reference``): the lazy plan joins
    an index whole (its values come from a join with the source files)."""
    return [None if view.reference is not None else files
            for view, files in zip(views, parts, strict=True)]


def _by_part(q: pl.DataFrame, view: ViewFrame, plan: ViewPlan, files: Sequence[Path],
             template: pl.DataFrame, prefix: str, options: dict) -> pl.DataFrame:
    """One bucketed view's output columns for every query row, in query order."""
    qrow = f"{prefix}qrow"
    part = f"{prefix}part"
    internals = [p.internal for p in plan.pairs]
    columns = view.frame.collect_schema().names()
    scans = [pl.scan_parquet(f).select(columns) for f in files]  # only the view's columns
    # Route every query row at once: which part holds each distinct key (one part's keys in
    # memory at a time while they are read), then one join of the query's keys against them.
    owners = pl.concat([
        scan.select([p.frame_expr().alias(p.internal) for p in plan.pairs]).unique().collect()
        .with_columns(pl.lit(i, dtype=pl.UInt32).alias(part))
        for i, scan in enumerate(scans)])
    if owners.select(pl.struct(internals).is_duplicated().any()).item():
        raise ArtifactError(f"view {view.name!r}: a key is in two parts of its artifact; each "
                            "part must hold whole entities (run `featurestore doctor`, then "
                            "materialize the view again)")
    where = (q.select([p.query_expr().alias(p.internal) for p in plan.pairs])
             .join(owners, on=internals, how="left", maintain_order="left", nulls_equal=False)
             .get_column(part))
    del owners
    pieces = []
    for i, scan in enumerate(scans):
        rows = where.eq(i).arg_true()  # ascending query rows
        if rows.len() == 0:
            continue
        joined = point_in_time_join(q[rows], [dataclasses.replace(view, frame=scan)], **options)
        pieces.append(joined.select(joined.columns[q.width:]).with_columns(rows.alias(qrow)))
    if not pieces:
        return template.clear(q.height)
    got = pl.concat(pieces)
    # Back in query order without a join: each query row's position among the answers, null
    # for a row whose key no part holds.
    at = pl.repeat(None, q.height, dtype=pl.UInt32, eager=True).scatter(
        got.get_column(qrow), pl.int_range(got.height, dtype=pl.UInt32, eager=True))
    return got.drop(qrow).select(pl.all().gather(pl.lit(at)))


def point_in_time_join_lazy_parts(
    query: pl.DataFrame | pl.LazyFrame,
    views: Sequence[ViewFrame],
    parts: Sequence[Sequence[Path] | None],
    *,
    cutoff: str = EVENT_TIMESTAMP,
    inclusive: bool = False,
    ttl: timedelta | None = None,
    cutoff_timezone: str | None = None,
    with_availability: bool = False,
) -> pl.LazyFrame:
    """``point_in_time_join_lazy(query, views, ...)``, with ``views[i]`` joined part by part
    when ``parts[i]`` lists more than one part file (each holding whole entities, each in
    artifact order). Same columns, same rows, same order; validation happens now."""
    options = {"cutoff": cutoff, "inclusive": inclusive, "ttl": ttl,
               "cutoff_timezone": cutoff_timezone, "with_availability": with_availability}
    views = list(views)
    parts = _joined_by_part(views, parts)
    # Validates every view against the query, and gives the output's columns.
    whole = point_in_time_join_lazy(query, views, **options)  # type: ignore[arg-type]
    if all(p is None or len(p) <= 1 for p in parts):
        return whole
    lq = query.lazy()
    qschema = lq.collect_schema()
    names = whole.collect_schema().names()
    prefix = internal_prefix(qschema.names(), views)
    plans = {plan.index: plan for plan in plan_views(qschema, views, cutoff, cutoff_timezone,
                                                     with_availability, ttl, prefix)}
    row = f"{prefix}lazy_row"
    numbered = lq.with_row_index(row)
    result = numbered
    start = len(qschema)
    for i, (view, files) in enumerate(zip(views, parts, strict=True)):
        n_out = len(view.features) * (2 if with_availability else 1)
        outputs = names[start:start + n_out]
        start += n_out
        if i not in plans or n_out == 0:
            continue
        if files is None or len(files) <= 1:
            joined = point_in_time_join_lazy(numbered, [view], **options)  # type: ignore[arg-type]
        else:
            joined = _lazy_by_part(numbered, view, plans[i], files, options)
        result = result.join(joined.select(row, *outputs), on=row, how="left",
                             maintain_order="left")
    return result.sort(row).select(names)


def _lazy_by_part(numbered: pl.LazyFrame, view: ViewFrame, plan: ViewPlan,
                  files: Sequence[Path], options: dict) -> pl.LazyFrame:
    """One bucketed view joined to the query rows whose keys each part holds, part after part
    (query rows in no part are left out: the caller's left join gives them nulls)."""
    internals = [p.internal for p in plan.pairs]
    keyed = numbered.with_columns([p.query_expr().alias(p.internal) for p in plan.pairs])
    pieces = []
    for f in files:
        scan = pl.scan_parquet(f)
        present = scan.select([p.frame_expr().alias(p.internal) for p in plan.pairs]).unique()
        rows = keyed.join(present, on=internals, how="semi", nulls_equal=False).drop(internals)
        pieces.append(point_in_time_join_lazy(rows, [dataclasses.replace(view, frame=scan)],
                                              **options))  # type: ignore[arg-type]
    # One part after another: a collect holds one part's rows (and the answers so far).
    return pl.concat(pieces, parallel=False)
