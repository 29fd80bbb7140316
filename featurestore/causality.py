"""Checks on what a transform returns: the contract (``check_contract``) and causality
(``verify_causality``).

The materializer runs a transform once on the whole input, then calls ``check_contract`` on the
result (type, schema, row count, keys and times) and ``verify_causality`` on the collected output
before anything is registered. Both raise; neither writes anything.

Causality by truncation
-----------------------
A feature value at time t must not change when every input row available after t is removed.
``verify_causality`` picks cut points t among the distinct ``available_at`` values of the input,
reruns the transform on the input truncated at t and compares, for the rows available at or before
t, the truncated run's values with the full run's. Any difference is a ``LeakageError``.

Rerunning on the whole truncated input at every cut would cost about ``samples / 2`` full runs.
Instead each cut point is checked on a few sampled entities only: the rerun sees the rows of those
entities available at or before t, and the rows of every other entity not at all. This is still a
sound check for the transforms featurestore allows, because the transform contract is per entity:
an output row may depend only on rows *of its own entity* available no later than itself
(``featurestore.transforms``). For such a transform, an entity's output computed on that entity's
rows alone equals its output computed next to every other entity, so removing the other entities
cannot hide a leak and cannot invent one. Several (entity, cut point) pairs then share a single
rerun, each entity truncated at its own cut, which keeps the verification to (usually) one rerun of a
small fraction of the data (``max_fraction``, 10 % by default).

A transform that reads other entities' rows (a rank across drivers, a whole-column normalisation)
breaks the per-entity contract; sampling entities exposes that as well, and the error says that the
value changed when other entities' rows were removed. A future cross-entity transform would have to
be verified with ``entities_per_cut=None`` (every entity at every cut, at the full cost).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl

from featurestore.errors import DefinitionError, LeakageError, PluginError
from featurestore.transforms import Params, Transform, TransformContext

_CUT = "__fs_cut"
_DUP = "__fs_dup"
_LEFT = "__fs_left"
_RIGHT = "__fs_right"
_SUFFIX = "__fs_other"


@dataclass(frozen=True)
class VerificationReport:
    """What ``verify_causality`` checked; it only returns when nothing leaked."""

    transform: str
    plugin: str
    view: str
    features: tuple[str, ...]
    cuts: tuple[datetime, ...]
    """The cut points checked, earliest first."""
    entities_checked: int
    """Distinct (entity, cut point) pairs whose rows were compared."""
    rows_recomputed: int
    """Input rows the reruns processed in total (compare with ``input_rows``)."""
    rows_compared: int
    input_rows: int
    reruns: int
    seconds: float
    notes: tuple[str, ...] = field(default=())

    @property
    def cut_points(self) -> int:
        """How many cut points were checked."""
        return len(self.cuts)

    def __str__(self) -> str:
        return (f"causality of {self.transform!r} verified at {self.cut_points} cut point(s), "
                f"{self.entities_checked} entity cut(s), {self.rows_compared} row(s) compared, "
                f"{self.rows_recomputed} of {self.input_rows} input rows recomputed in "
                f"{self.reruns} rerun(s), {self.seconds:.3f}s")


# --------------------------------------------------------------------------- helpers


def _what(transform: Transform | str, plugin: str = "", view: str = "") -> str:
    name = transform if isinstance(transform, str) else transform.name
    parts = [f"transform {name!r}"]
    if plugin:
        parts.append(f"plugin {plugin!r}")
    if view:
        parts.append(f"view {view!r}")
    return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


def _eager(frame: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    return frame.collect() if isinstance(frame, pl.LazyFrame) else frame


def _id_columns(ctx: TransformContext) -> list[str]:
    return [*ctx.keys, ctx.time_column, ctx.available_column]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return "null" if value is None else str(value)


def _row_text(row: Mapping[str, Any], cols: Sequence[str]) -> str:
    return ", ".join(f"{c}={_fmt(row[c])}" for c in cols)


def _run(transform: Transform, frame: pl.DataFrame, params: Params, ctx: TransformContext,
         what: str, during: str) -> pl.DataFrame:
    try:
        result = transform(frame.lazy(), params, ctx)
        if not isinstance(result, (pl.LazyFrame, pl.DataFrame)):
            raise PluginError(f"{what} returned {_type_name(result)}, expected a polars LazyFrame")
        return _eager(result)
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"{what} failed {during}: {type(exc).__name__}: {exc}") from exc


def _type_name(obj: object) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


# --------------------------------------------------------------------------- contract


def _multiset_fingerprint(frame: pl.DataFrame, cols: Sequence[str]) -> tuple[int, int]:
    """An order-independent fingerprint of the rows of ``cols``: (row count, sum of row hashes).

    A row's hash XORs its columns' hashes, each seeded differently; the sum wraps modulo 2**64.
    Two frames with the same schema and the same multiset of rows always agree; frames that differ
    collide with a chance of about 2**-64. One cheap pass, no sort.
    """
    row_hash = pl.lit(0, dtype=pl.UInt64)
    for i, c in enumerate(cols):
        row_hash = row_hash ^ pl.col(c).hash(seed=i + 1)
    out = frame.select(pl.len().alias("n"), row_hash.sum().alias("h")).row(0)
    return int(out[0]), int(out[1] or 0)


def _count_mismatch(inp: pl.DataFrame, out: pl.DataFrame, cols: list[str]) -> dict[str, Any] | None:
    """The first combination of ``cols`` whose number of rows differs between inp and out."""
    a = inp.group_by(cols).agg(pl.len().alias(_LEFT))
    b = out.group_by(cols).agg(pl.len().alias(_RIGHT))
    joined = a.join(b, on=cols, how="full", nulls_equal=True, coalesce=True).with_columns(
        pl.col(_LEFT).fill_null(0), pl.col(_RIGHT).fill_null(0))
    bad = joined.filter(pl.col(_LEFT) != pl.col(_RIGHT)).sort(cols[::-1], nulls_last=True)
    return bad.row(0, named=True) if bad.height else None


def declared_output_schema(transform: Transform, params: Params,
                           input_schema: Mapping[str, pl.DataType], ctx: TransformContext,
                           *, what: str | None = None) -> dict[str, pl.DataType]:
    """The full schema a transform must return: keys and times as in the input, then its columns.

    Invalid params (``ValueError`` from ``output_columns``) raise ``DefinitionError``; anything
    else ``output_columns`` raises, or a declaration that overwrites a key or time column, is the
    plugin's fault and raises ``PluginError``.
    """
    what = what or _what(transform)
    try:
        declared = dict(transform.declared_schema(params, input_schema))
    except ValueError as exc:
        raise DefinitionError(f"{what} rejected its params: {exc}") from exc
    except Exception as exc:
        raise PluginError(f"{what}: output_columns raised {type(exc).__name__}: {exc}") from exc
    ids = _id_columns(ctx)
    missing_ids = [c for c in ids if c not in input_schema]
    if missing_ids:
        raise PluginError(f"{what}: the input lacks the column(s) {', '.join(missing_ids)}")
    clash = [c for c in declared if c in ids]
    if clash:
        raise PluginError(f"{what} declares output column(s) {', '.join(clash)}, which would "
                          "overwrite the keys or times")
    return {**{c: input_schema[c] for c in ids}, **declared}


def _schema_differences(expected: Mapping[str, pl.DataType],
                        actual: Mapping[str, pl.DataType]) -> list[str]:
    diffs = []
    missing = [f"{c} ({expected[c]})" for c in expected if c not in actual]
    extra = [f"{c} ({actual[c]})" for c in actual if c not in expected]
    if missing:
        diffs.append(f"missing column(s) {', '.join(missing)}")
    if extra:
        diffs.append(f"undeclared column(s) {', '.join(extra)}")
    for c, dtype in expected.items():
        if c in actual and actual[c] != dtype:
            diffs.append(f"column {c} is {actual[c]}, declared {dtype}")
    return diffs


def check_contract(transform: Transform, params: Params,
                   input_frame: pl.DataFrame | pl.LazyFrame, output_frame: Any,
                   ctx: TransformContext, *, plugin: str = "", view: str = "",
                   input_schema: Mapping[str, pl.DataType] | None = None) -> pl.DataFrame:
    """Check what ``transform`` returned for ``input_frame``; return the output collected.

    With ``input_schema`` (the full input's schema), ``input_frame`` need only hold the key and
    time columns: the materializer passes that so the input is never held in memory whole.

    Raises ``PluginError`` naming the transform when the output
    - is not a polars ``LazyFrame``/``DataFrame`` (a pandas frame, None, ...);
    - has columns or dtypes other than the declared ones (keys, ``event_timestamp`` and
      ``available_at`` as in the input, then ``output_columns(params, input_schema)``): the message
      names each missing, undeclared or retyped column with its dtype;
    - has a different number of rows;
    - dropped, changed or invented key / ``event_timestamp`` values (compared as a multiset, the
      order of rows is free), or changed ``available_at`` (an earlier one is called out: a value
      would be visible before its inputs were).
    Invalid params raise ``DefinitionError``.

    Pass a ``LazyFrame`` and use the returned ``DataFrame``: the check collects it once.
    """
    what = _what(transform, plugin, view)
    if not isinstance(output_frame, (pl.LazyFrame, pl.DataFrame)):
        raise PluginError(f"{what} returned {_type_name(output_frame)}, expected a polars "
                          "LazyFrame (or DataFrame)")
    inp = _eager(input_frame)
    expected = declared_output_schema(transform, params, input_schema or inp.schema, ctx, what=what)
    if isinstance(output_frame, pl.LazyFrame):
        try:
            lazy_schema = dict(output_frame.collect_schema())
        except Exception as exc:
            raise PluginError(f"{what} returned a LazyFrame whose schema cannot be resolved: "
                              f"{type(exc).__name__}: {exc}") from exc
        diffs = _schema_differences(expected, lazy_schema)
        if diffs:
            raise PluginError(f"{what}: output schema differs from the declared one: "
                              + "; ".join(diffs))
        try:
            out = output_frame.collect()
        except Exception as exc:
            raise PluginError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
    else:
        out = output_frame
    diffs = _schema_differences(expected, dict(out.schema))
    if diffs:
        raise PluginError(f"{what}: output schema differs from the declared one: "
                          + "; ".join(diffs))
    if out.height != inp.height:
        raise PluginError(f"{what} returned {out.height} row(s) for {inp.height} input row(s); "
                          "a transform returns exactly one row per input row")
    ids = _id_columns(ctx)
    if _multiset_fingerprint(inp, ids) == _multiset_fingerprint(out, ids):
        return out
    # Slow path, only on failure: say what changed.
    entity_time = [*ctx.keys, ctx.time_column]
    bad = _count_mismatch(inp, out, entity_time)
    if bad is not None:
        row = _row_text(bad, entity_time)
        if bad[_RIGHT] > bad[_LEFT]:
            raise PluginError(
                f"{what} invented or changed keys/event times: the row ({row}) appears "
                f"{bad[_RIGHT]} time(s) in the output but {bad[_LEFT]} time(s) in the input")
        raise PluginError(
            f"{what} dropped or changed keys/event times: the input row ({row}) appears "
            f"{bad[_LEFT]} time(s) in the input but {bad[_RIGHT]} time(s) in the output")
    avail = ctx.available_column
    a = inp.select(ids).sort(ids, nulls_last=True)
    b = out.select(ids).sort(ids, nulls_last=True)
    earlier = a.with_columns(pl.col(avail).alias(_RIGHT + "_in")).with_columns(
        b.get_column(avail).alias(_RIGHT)).filter(
        pl.col(_RIGHT) < pl.col(_RIGHT + "_in"))
    if earlier.height:
        r = earlier.row(0, named=True)
        raise PluginError(
            f"{what} moved {avail} earlier: the row ({_row_text(r, entity_time)}) has {avail}="
            f"{_fmt(r[_RIGHT])} in the output but {_fmt(r[_RIGHT + '_in'])} in the input, so its "
            "value would be visible before its inputs were available")
    bad = _count_mismatch(inp, out, ids)
    row = _row_text(bad, ids) if bad is not None else "?"
    raise PluginError(f"{what} changed {avail}: the row ({row}) appears {bad[_LEFT] if bad else '?'}"
                      f" time(s) in the input and {bad[_RIGHT] if bad else '?'} in the output; "
                      f"{avail} must be passed through unchanged")


# --------------------------------------------------------------------------- comparison


def _sortable(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() or dtype.is_temporal() or dtype in (pl.String, pl.Boolean)


def _has_duplicates(frame: pl.DataFrame, ids: Sequence[str]) -> bool:
    """Whether two rows share all ``ids``."""
    return bool(frame.select(pl.struct(list(ids)).is_duplicated().any()).item())


def _align(frame: pl.DataFrame, ids: list[str], features: list[str],
           duplicates: bool | None = None) -> pl.DataFrame:
    """Number rows that share all id columns, canonically, so two runs can be joined row by row."""
    if duplicates is None:
        duplicates = _has_duplicates(frame, ids)
    if not duplicates:
        return frame.with_columns(pl.lit(0, pl.UInt32).alias(_DUP))
    order = [*ids, *(f for f in features if _sortable(frame.schema[f]))]
    return frame.sort(order, nulls_last=True).with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt32).over(ids).alias(_DUP))


def _differs(a: pl.Expr, b: pl.Expr, dtype: pl.DataType, rtol: float, atol: float) -> pl.Expr:
    """True where two values differ: nulls equal nulls, NaN equals NaN, floats within tolerance."""
    if dtype.is_float():
        tol = max(rtol, 1e-6) if dtype == pl.Float32 else rtol
        close = (a == b) | (a.is_nan() & b.is_nan()) | (
            (a - b).abs() <= atol + tol * pl.max_horizontal(a.abs(), b.abs()))
        return pl.when(a.is_null() & b.is_null()).then(False).when(
            a.is_null() | b.is_null()).then(True).otherwise(~close)
    return a.ne_missing(b)


def first_difference(left: pl.DataFrame, right: pl.DataFrame, ids: Sequence[str],
                     features: Sequence[str], *, rtol: float = 1e-9, atol: float = 1e-12,
                     order_by: str | None = None, duplicates: bool | None = None
                     ) -> dict[str, Any] | None:
    """The first row where two outputs differ, or None.

    Rows are matched on ``ids`` (rows sharing all of them are matched in a canonical order of their
    values). Returns ``{"row": {...ids}, "feature": name or None, "left": v, "right": v}``, where
    ``feature`` is None when the row exists on one side only. The earliest row by ``order_by``
    (default: the last id column) is reported. ``duplicates=False`` promises that no two rows of
    either side share all ``ids`` (skips looking; None looks).
    """
    ids, features = list(ids), list(features)
    order_by = order_by or ids[-1]
    if duplicates is None:
        duplicates = _has_duplicates(left, ids) or _has_duplicates(right, ids)
    lf = _align(left, ids, features, duplicates).with_columns(pl.lit(True).alias(_LEFT))
    rf = _align(right, ids, features, duplicates).with_columns(pl.lit(True).alias(_RIGHT))
    on = [*ids, _DUP]
    if left.height == right.height and (
            _multiset_fingerprint(left, ids) == _multiset_fingerprint(right, ids)):
        # The same rows on both sides: pair them by sorting (cheap, outputs are mostly sorted).
        lf = lf.sort(on, nulls_last=True)
        rf = rf.sort(on, nulls_last=True)
        joined = lf.with_columns(
            rf.get_column(_RIGHT), *(rf.get_column(f).alias(f + _SUFFIX) for f in features))
    else:
        joined = lf.join(rf, on=on, how="full", nulls_equal=True, coalesce=True, suffix=_SUFFIX)
    diff_cols = [
        _differs(pl.col(f), pl.col(f + _SUFFIX), left.schema[f], rtol, atol).alias(f"__d_{i}")
        for i, f in enumerate(features)
    ]
    missing = pl.col(_LEFT).is_null() | pl.col(_RIGHT).is_null()
    flagged = joined.with_columns(*diff_cols).filter(
        missing | pl.any_horizontal([pl.col(f"__d_{i}") for i in range(len(features))])
        if features else missing)
    if not flagged.height:
        return None
    row = flagged.sort([order_by, *ids], nulls_last=True).row(0, named=True)
    ident = {c: row[c] for c in ids}
    if row[_LEFT] is None or row[_RIGHT] is None:
        return {"row": ident, "feature": None, "left": row[_LEFT] is not None,
                "right": row[_RIGHT] is not None}
    for i, f in enumerate(features):
        if row[f"__d_{i}"]:
            return {"row": ident, "feature": f, "left": row[f], "right": row[f + _SUFFIX]}
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- causality


def _choose_cuts(frame: pl.DataFrame, column: str, samples: int, seed: int,
                 rng: random.Random) -> list[datetime]:
    """Cut points by priority: the earliest ``available_at``, the one just before the last, a
    middle one, then random ones; all distinct values of the column, never the last (cutting there
    removes nothing). One pass over the column, no sort of it.
    """
    if samples <= 0:
        return []
    col = pl.col(column)
    pool_size = min(frame.height, max(8 * samples, 64))
    row = frame.select(
        col.min().alias("first"),
        col.max().alias("last"),
        col.filter(col < col.max()).max().alias("second"),
        col.drop_nulls().sample(n=pool_size, with_replacement=True, seed=seed).implode()
        .alias("pool"),
    ).row(0, named=True)
    last = row["last"]
    if row["first"] is None or row["second"] is None:
        return []
    pool = sorted({v for v in row["pool"] if v is not None and v < last})
    chosen = [row["first"], row["second"]]
    if pool:
        chosen.append(pool[len(pool) // 2])
    rng.shuffle(pool)
    for value in pool:
        if value not in chosen:
            chosen.append(value)
    unique = list(dict.fromkeys(chosen))
    return unique[:samples]


def verify_causality(
    transform: Transform,
    params: Params,
    frame: pl.DataFrame | pl.LazyFrame,
    ctx: TransformContext,
    *,
    output: pl.DataFrame | None = None,
    samples: int = 8,
    seed: int = 0,
    view: str = "",
    plugin: str = "",
    entities_per_cut: int | None = 2,
    max_fraction: float = 0.1,
    min_rows: int = 1_000,
    rtol: float = 1e-9,
    atol: float = 1e-12,
) -> VerificationReport:
    """Check that ``transform``'s values do not change when later input rows are removed.

    ``output`` is the full run's collected output (the materializer has it already; computed here
    when omitted). Up to ``samples`` cut points t are taken from the distinct ``available_at``
    values (the earliest, the one just before the last, the middle one, then random ones, drawn
    with ``seed``). For each, up to ``entities_per_cut`` entities (preferably ones with rows on both
    sides of t; ``None``: every entity) are truncated at t, the transform is rerun, and every
    output row available at or before t is compared with the full run: nulls equal nulls, NaN
    equals NaN, floats agree within ``rtol`` (relative) / ``atol``. Reruns are capped at
    ``max(max_fraction * rows, min_rows)`` input rows in total, the cut points in the order above; at
    least one cut point is always checked when there is one. What is left of that budget goes to
    more entities, each truncated at a random one of its own ``available_at`` values, in the same
    rerun: many more (entity, cut) pairs at no extra rerun, which is what finds leaks that show at
    a few rows only (a backward fill over a rare null).

    Returns a ``VerificationReport``. Raises ``LeakageError`` naming the plugin, transform, feature
    and one example row (keys, times, full-run and truncated values); the error carries the
    attributes ``transform``, ``plugin``, ``view``, ``feature``, ``row``, ``full_value``,
    ``truncated_value`` and ``cut``. Raises ``PluginError`` if a rerun fails.
    """
    started = time.perf_counter()
    what = _what(transform, plugin, view)
    inp = _eager(frame)
    keys, acol = list(ctx.keys), ctx.available_column
    ids = _id_columns(ctx)
    if output is None:
        output = _run(transform, inp, params, ctx, what, "on the full input")
    features = [c for c in output.columns if c not in ids]
    rng = random.Random(seed)

    def report(cuts: Sequence[datetime], pairs: int, recomputed: int, compared: int, reruns: int,
               notes: Sequence[str] = ()) -> VerificationReport:
        return VerificationReport(
            transform.name, plugin, view, tuple(features), tuple(sorted(set(cuts))), pairs,
            recomputed, compared, inp.height, reruns, time.perf_counter() - started, tuple(notes))

    if inp.height == 0 or not features:
        return report([], 0, 0, 0, 0, ["nothing to verify: no rows or no feature columns"])
    cuts = _choose_cuts(inp, acol, samples, seed, rng)
    if not cuts:
        return report([], 0, 0, 0, 0, [f"one distinct {acol} value: no cut point removes a row"])

    budget = max(max_fraction * inp.height, min_rows)
    rounds, used_cuts = _plan_rounds(inp, keys, acol, cuts, entities_per_cut, budget, rng)

    key_schema = {k: inp.schema[k] for k in keys}
    recomputed = compared = 0
    for r in rounds:
        cut_frame = pl.DataFrame(
            {**{k: [key[j] for key in r] for j, k in enumerate(keys)}, _CUT: list(r.values())},
            schema={**key_schema, _CUT: inp.schema[acol]})
        truncated_in = _available_by_cut(inp, cut_frame, keys, acol, keep_order=True)
        recomputed += truncated_in.height
        truncated_out = _run(transform, truncated_in.drop(_CUT), params, ctx, what,
                             "on the input truncated for causality verification")
        if truncated_out.schema != output.schema:
            diffs = _schema_differences(dict(output.schema), dict(truncated_out.schema))
            raise PluginError(f"{what}: the output schema depends on the input rows: "
                              + "; ".join(diffs))
        if truncated_out.height != truncated_in.height:
            raise PluginError(f"{what} returned {truncated_out.height} row(s) for "
                              f"{truncated_in.height} input row(s) on a truncated input")
        full_part = _available_by_cut(output, cut_frame, keys, acol)
        trunc_part = _available_by_cut(truncated_out, cut_frame, keys, acol)
        compared += full_part.height
        # The compared rows share their identities with the truncated input (the contract keeps
        # keys and times), so duplicates there are the only ones to number.
        duplicates = _has_duplicates(truncated_in, ids)
        diff = first_difference(full_part, trunc_part, [*ids, _CUT], features,
                                rtol=rtol, atol=atol, order_by=acol, duplicates=duplicates)
        if diff is not None:
            _raise_leak(transform, params, ctx, inp, output, diff, what=what,
                        plugin=plugin, view=view, rtol=rtol, atol=atol)
    pairs = sum(len(r) for r in rounds)
    return report(used_cuts, pairs, recomputed, compared, len(rounds))


def _available_by_cut(frame: pl.DataFrame, cut_frame: pl.DataFrame, keys: list[str],
                      acol: str, *, keep_order: bool = False) -> pl.DataFrame:
    """The rows of the entities in ``cut_frame`` available at or before their entity's cut.

    With one key column the frame is first narrowed with ``is_in`` (much cheaper than joining the
    whole frame); ``keep_order`` keeps the frame's row order.
    """
    if len(keys) == 1:
        frame = frame.filter(pl.col(keys[0]).is_in(cut_frame.get_column(keys[0]).implode(),
                                                   nulls_equal=True))
    joined = frame.join(cut_frame, on=keys, how="inner", nulls_equal=True,
                        maintain_order="left" if keep_order else None)
    return joined.filter(pl.col(acol) <= pl.col(_CUT))


def _plan_rounds(inp: pl.DataFrame, keys: list[str], acol: str, cuts: list[datetime],
                 entities_per_cut: int | None, budget: float, rng: random.Random
                 ) -> tuple[list[dict[tuple[Any, ...], datetime]], list[datetime]]:
    """Choose (entity, cut) pairs within ``budget`` input rows; pack them into reruns.

    Returns the reruns (entity key -> its cut; an entity appears at most once per rerun) and the
    cut points used. Entity statistics come from one group-by; the choices from small frames.
    """
    stats = inp.group_by(keys).agg(
        pl.col(acol).min().alias("__lo"), pl.col(acol).max().alias("__hi"),
        pl.len().alias("__n")).sort(keys, nulls_last=True).filter(pl.col("__lo").is_not_null())
    lo, hi = pl.col("__lo"), pl.col("__hi")

    def estimate(row: Mapping[str, Any], t: datetime) -> int:
        if row["__hi"] <= t:
            return row["__n"]
        span = (row["__hi"] - row["__lo"]).total_seconds()
        share = (t - row["__lo"]).total_seconds() / span if span > 0 else 1.0
        return max(1, math.ceil(row["__n"] * share))

    rounds: list[dict[tuple[Any, ...], datetime]] = []
    used: list[datetime] = []
    spent = 0

    def add(key: tuple[Any, ...], t: datetime) -> None:
        for r in rounds:
            if key not in r:
                r[key] = t
                return
        rounds.append({key: t})

    for t in cuts:
        kept = stats.filter(lo <= t)
        if entities_per_cut is None:
            rows = list(kept.iter_rows(named=True))
        else:
            straddle = kept.filter(hi > t)
            pool = straddle if straddle.height else kept
            picked = rng.sample(range(pool.height), min(entities_per_cut, pool.height))
            rows = [pool.row(i, named=True) for i in picked]
        costs = [estimate(row, t) for row in rows]
        if used and spent + sum(costs) > budget:
            if entities_per_cut is None:
                continue
            fits = [(row, c) for row, c in zip(rows, costs, strict=True) if spent + c <= budget][:1]
            if not fits:
                continue
            rows, costs = [fits[0][0]], [fits[0][1]]
        spent += sum(costs)
        used.append(t)
        for row in rows:
            add(tuple(row[k] for k in keys), t)

    if entities_per_cut is not None and spent < budget:
        # Spend what is left on more entities, each cut at a random time of its own history
        # (truncating there is truncating at its greatest available_at not after it), all in the
        # first rerun: more (entity, cut) pairs at no extra rerun.
        taken = rounds[0] if rounds else {}
        candidates = stats.filter(hi > lo)
        mean_n = max(1.0, float(candidates.get_column("__n").mean() or 1.0))
        want = min(candidates.height, int(4 * (budget - spent) / mean_n) + 16)
        for i in rng.sample(range(candidates.height), want):
            row = candidates.row(i, named=True)
            key = tuple(row[k] for k in keys)
            if key in taken:
                continue
            share = rng.random()
            cost = max(1, math.ceil(row["__n"] * share))
            if spent + cost > budget:
                continue
            t = row["__lo"] + (row["__hi"] - row["__lo"]) * share
            taken[key] = t
            spent += cost
            used.append(t)
        if taken and not rounds:
            rounds.append(taken)
    return rounds, used


def _raise_leak(transform: Transform, params: Params, ctx: TransformContext, inp: pl.DataFrame,
                output: pl.DataFrame, diff: dict[str, Any], *,
                what: str, plugin: str, view: str, rtol: float, atol: float) -> None:
    keys = list(ctx.keys)
    ids = _id_columns(ctx)
    row = dict(diff["row"])
    cut = row.pop(_CUT)
    feature = diff["feature"]
    where = _row_text(row, ids)
    if feature is None:
        side = "full run" if diff["left"] else "truncated run"
        message = (f"causality check failed for {what}: the output row ({where}) exists only in "
                   f"the {side} when the input rows available after {_fmt(cut)} are removed, so "
                   f"its {ctx.available_column} depends on later rows")
        full_value = truncated_value = None
    else:
        full_value, truncated_value = diff["left"], diff["right"]
        # Is it the future, or the other entities? Rerun the same entities untruncated.
        entity = {k: row[k] for k in keys}
        one = pl.DataFrame({k: [entity[k]] for k in keys}, schema={k: inp.schema[k] for k in keys})
        alone_in = inp.join(one, on=keys, how="inner", nulls_equal=True, maintain_order="left")
        cause = f"it depends on input rows available after {_fmt(cut)} (future data)"
        try:
            alone_out = _eager(transform(alone_in.lazy(), params, ctx))
            full_one = output.join(one, on=keys, how="inner", nulls_equal=True)
            if first_difference(full_one, alone_out, ids, [feature], rtol=rtol, atol=atol):
                cause = ("it changes when other entities' rows are removed: the transform mixes "
                         "entities (or is not deterministic), which the per-entity contract "
                         "forbids and which lets other entities' later rows leak in")
        except Exception as exc:
            cause += f" (rerunning its entity alone failed: {type(exc).__name__})"
        message = (f"causality check failed for {what}: feature {feature!r} at ({where}) is "
                   f"{_fmt(full_value)} on the full input but {_fmt(truncated_value)} when the "
                   f"input rows available after {_fmt(cut)} are removed; {cause}")
    err = LeakageError(message)
    err.transform = transform.name  # type: ignore[attr-defined]
    err.plugin = plugin  # type: ignore[attr-defined]
    err.view = view  # type: ignore[attr-defined]
    err.feature = feature  # type: ignore[attr-defined]
    err.row = row  # type: ignore[attr-defined]
    err.full_value = full_value  # type: ignore[attr-defined]
    err.truncated_value = truncated_value  # type: ignore[attr-defined]
    err.cut = cut  # type: ignore[attr-defined]
    raise err


__all__ = [
    "VerificationReport",
    "check_contract",
    "declared_output_schema",
    "first_difference",
    "verify_causality",
]
