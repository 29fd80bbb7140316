"""The transform contract check: what a transform returned, before anything else looks at it.

``check_contract`` runs on every materialization (and in the conformance kit): the output is a
polars frame with exactly the declared schema, one row per input row, and the same keys, event
times and ``available_at`` values as the input. ``declared_output_schema`` says what that schema
is. Both raise and never write anything. The small helpers at the top (naming a transform in a
message, formatting a row) are shared with causality verification.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from featurestore.errors import DefinitionError, FeatureStoreError, PluginError
from featurestore.framediff import LEFT, RIGHT, multiset_fingerprint
from featurestore.transforms import Params, Transform, TransformContext


def describe(transform: Transform | str, plugin: str = "", view: str = "") -> str:
    """``transform 'x' (plugin 'p', view 'v')``: how messages name a transform."""
    name = transform if isinstance(transform, str) else transform.name
    parts = [f"transform {name!r}"]
    if plugin:
        parts.append(f"plugin {plugin!r}")
    if view:
        parts.append(f"view {view!r}")
    return parts[0] + (f" ({', '.join(parts[1:])})" if len(parts) > 1 else "")


def collect(frame: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame:
    return frame.collect() if isinstance(frame, pl.LazyFrame) else frame


def id_columns(ctx: TransformContext) -> list[str]:
    return [*ctx.keys, ctx.time_column, ctx.available_column]


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return "null" if value is None else str(value)


def row_text(row: Mapping[str, Any], cols: Sequence[str]) -> str:
    return ", ".join(f"{c}={fmt(row[c])}" for c in cols)


def type_name(obj: object) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def run_transform(transform: Transform, params: Params, frame: pl.DataFrame | pl.LazyFrame,
                  ctx: TransformContext, what: str, *, during: str = "",
                  collect_output: bool = False) -> Any:
    """Call ``transform`` on ``frame.lazy()``; what it raises becomes a ``PluginError`` naming
    ``what`` (and ``during``, e.g. "on the full input"), except a ``FeatureStoreError``, which
    already names its cause and passes unchanged.

    With ``collect_output`` the result must be a polars frame and is collected inside the same
    guard (a lazy plan's errors surface at collect time); otherwise it is returned as given, for
    ``check_contract`` to judge.
    """
    try:
        result = transform(frame.lazy(), params, ctx)
        if collect_output:
            if not isinstance(result, pl.LazyFrame | pl.DataFrame):
                raise PluginError(f"{what} returned {type_name(result)}, expected a polars "
                                  "LazyFrame")
            result = collect(result)
        return result
    except FeatureStoreError:
        raise
    except Exception as exc:
        when = f" {during}" if during else ""
        raise PluginError(f"{what} failed{when}: {type(exc).__name__}: {exc}") from exc


def _count_mismatch(inp: pl.DataFrame, out: pl.DataFrame, cols: list[str]) -> dict[str, Any] | None:
    """The first combination of ``cols`` whose number of rows differs between inp and out."""
    a = inp.group_by(cols).agg(pl.len().alias(LEFT))
    b = out.group_by(cols).agg(pl.len().alias(RIGHT))
    joined = a.join(b, on=cols, how="full", nulls_equal=True, coalesce=True).with_columns(
        pl.col(LEFT).fill_null(0), pl.col(RIGHT).fill_null(0))
    bad = joined.filter(pl.col(LEFT) != pl.col(RIGHT)).sort(cols[::-1], nulls_last=True)
    return bad.row(0, named=True) if bad.height else None


def declared_output_schema(transform: Transform, params: Params,
                           input_schema: Mapping[str, pl.DataType], ctx: TransformContext,
                           *, what: str | None = None) -> dict[str, pl.DataType]:
    """The full schema a transform must return: keys and times as in the input, then its columns.

    Invalid params (``ValueError`` from ``output_columns``) raise ``DefinitionError``; anything
    else ``output_columns`` raises, or a declaration that overwrites a key or time column, is the
    plugin's fault and raises ``PluginError``.
    """
    what = what or describe(transform)
    try:
        declared = dict(transform.declared_schema(params, input_schema, ctx))
    except ValueError as exc:
        raise DefinitionError(f"{what} rejected its params: {exc}") from exc
    except Exception as exc:
        raise PluginError(f"{what}: output_columns raised {type(exc).__name__}: {exc}") from exc
    ids = id_columns(ctx)
    missing_ids = [c for c in ids if c not in input_schema]
    if missing_ids:
        raise PluginError(f"{what}: the input lacks the column(s) {', '.join(missing_ids)}")
    clash = [c for c in declared if c in ids]
    if clash:
        raise PluginError(f"{what} declares output column(s) {', '.join(clash)}, which would "
                          "overwrite the keys or times")
    return {**{c: input_schema[c] for c in ids}, **declared}


def schema_differences(expected: Mapping[str, pl.DataType],
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
    what = describe(transform, plugin, view)
    if not isinstance(output_frame, (pl.LazyFrame, pl.DataFrame)):
        raise PluginError(f"{what} returned {type_name(output_frame)}, expected a polars "
                          "LazyFrame (or DataFrame)")
    inp = collect(input_frame)
    expected = declared_output_schema(transform, params, input_schema or inp.schema, ctx, what=what)
    if isinstance(output_frame, pl.LazyFrame):
        try:
            lazy_schema = dict(output_frame.collect_schema())
        except Exception as exc:
            raise PluginError(f"{what} returned a LazyFrame whose schema cannot be resolved: "
                              f"{type(exc).__name__}: {exc}") from exc
        diffs = schema_differences(expected, lazy_schema)
        if diffs:
            raise PluginError(f"{what}: output schema differs from the declared one: "
                              + "; ".join(diffs))
        try:
            out = output_frame.collect()
        except Exception as exc:
            raise PluginError(f"{what} failed: {type(exc).__name__}: {exc}") from exc
    else:
        out = output_frame
    diffs = schema_differences(expected, dict(out.schema))
    if diffs:
        raise PluginError(f"{what}: output schema differs from the declared one: "
                          + "; ".join(diffs))
    if out.height != inp.height:
        raise PluginError(f"{what} returned {out.height} row(s) for {inp.height} input row(s); "
                          "a transform returns exactly one row per input row")
    ids = id_columns(ctx)
    if multiset_fingerprint(inp, ids) == multiset_fingerprint(out, ids):
        return out
    # Slow path, only on failure: say what changed.
    entity_time = [*ctx.keys, ctx.time_column]
    bad = _count_mismatch(inp, out, entity_time)
    if bad is not None:
        row = row_text(bad, entity_time)
        if bad[RIGHT] > bad[LEFT]:
            raise PluginError(
                f"{what} invented or changed keys/event times: the row ({row}) appears "
                f"{bad[RIGHT]} time(s) in the output but {bad[LEFT]} time(s) in the input")
        raise PluginError(
            f"{what} dropped or changed keys/event times: the input row ({row}) appears "
            f"{bad[LEFT]} time(s) in the input but {bad[RIGHT]} time(s) in the output")
    avail = ctx.available_column
    a = inp.select(ids).sort(ids, nulls_last=True)
    b = out.select(ids).sort(ids, nulls_last=True)
    earlier = a.with_columns(pl.col(avail).alias(RIGHT + "_in")).with_columns(
        b.get_column(avail).alias(RIGHT)).filter(
        pl.col(RIGHT) < pl.col(RIGHT + "_in"))
    if earlier.height:
        r = earlier.row(0, named=True)
        raise PluginError(
            f"{what} moved {avail} earlier: the row ({row_text(r, entity_time)}) has {avail}="
            f"{fmt(r[RIGHT])} in the output but {fmt(r[RIGHT + '_in'])} in the input, so its "
            "value would be visible before its inputs were available")
    bad = _count_mismatch(inp, out, ids)
    row = row_text(bad, ids) if bad is not None else "?"
    raise PluginError(f"{what} changed {avail}: the row ({row}) appears {bad[LEFT] if bad else '?'}"
                      f" time(s) in the input and {bad[RIGHT] if bad else '?'} in the output; "
                      f"{avail} must be passed through unchanged")


__all__ = ["check_contract", "declared_output_schema"]
