"""Causality verification: a transform's values must not change when later input rows are removed.

The materializer runs a transform once on the whole input, checks its contract
(``featurestore.contract``) and then calls ``verify_causality`` before anything is registered.

What is checked
---------------
A value at a row available at time a must be the value the transform computes when every input
row available after any t >= a is removed. A *cut* truncates at t and compares every remaining
row with the full run. Which cuts, in which order, is planned by ``featurestore.cutplan`` from the
data alone: exhaustive (every distinct ``available_at`` of every entity, or of every group) when
its cost fits the budget, else a deterministic prefix of a priority order that starts with every
entity's first cut and then takes turns between rows next to nulls, rows before rare events, an
entity's last rows, rows before gaps, their neighbours and every other cut.

Entity scope: many cuts in one rerun
------------------------------------
An entity-scope transform computes an entity's values from that entity's rows only. So truncating
the whole input at t and looking at entity e is the same as running e's rows available at or
before t on their own, and every (entity, cut) pair can be checked independently. The planner
packs many pairs into one rerun: each pair's rows are copied under a pseudo-entity, an extra key
column ``CUT_ID`` appended to ``ctx.keys``. A transform that keeps entities apart by every column
of ``ctx.keys`` (as the contract requires) computes each pseudo-entity as if it were alone, so a
rerun costs the sum of the truncated prefixes, not one pass over the input per cut. Soundness
rests on that premise, and the premise is checked, not assumed:

- each pseudo-entity sits next to rows its entity never sees in the full run (other entities'
  copies, cut elsewhere), so a transform that reads other entities' rows almost always shows a
  difference there;
- *isolation* reruns compute subsets of the entities without the others, untruncated, with the
  original keys, and compare them with the full run, which exposes reads across entities that
  packing cannot (a count of all entities, say): a few entities within 5 % of the budget, or,
  when the check is exhaustive and the budget left allows, the entities split in two by each
  bit of their number, so that
  any two of up to 64 entities are computed apart at least once;
- a difference is confirmed by rerunning that one entity, truncated, with the original keys; its
  cause is named: later rows of the entity (a leak), or other entities' rows (the transform
  "mixes entities", which the entity scope forbids). A difference that does not reproduce alone,
  or a rerun output without the added key column, means the transform does not keep entities
  apart by every column of ``ctx.keys``: the same cuts are then checked with the original keys,
  one cut per entity per rerun (``packing="rounds"``), which needs no premise beyond the entity
  scope itself.

Group scope
-----------
A group-scope transform reads the rows that share its row's values of the group columns
``transform.group_columns(params)``, and no other rows; the cut then removes every entity's rows
available after t. Truncating the whole input at t and looking at group g is the same as running
g's rows available at or before t on their own, so several groups, each truncated at its own cut,
share a rerun (a group appears once per rerun: the transform decides how groups are formed, so
they cannot be relabelled). The premise is checked the same way: isolation reruns compute subsets
of the groups without the others, and a difference is confirmed on its group alone. A transform that reads a later
row of another entity of its group (a field median over the whole lap or race rather than over the
rows available so far) is refused.

Errors name the plugin, transform, view, feature and one example row with its full-run and
truncated values; the ``LeakageError`` carries them as attributes. A failing rerun is a
``PluginError``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import polars as pl

from featurestore.contract import (
    collect,
    describe,
    fmt,
    id_columns,
    row_text,
    run_transform,
    schema_differences,
)
from featurestore.cutplan import (
    CUT,
    CUT_ID,
    DEFAULT_SAMPLES,
    RERUN,
    ROWS,
    START,
    CutPlan,
    default_budget,
    plan_cuts,
)
from featurestore.errors import DefinitionError, LeakageError, PluginError
from featurestore.framediff import first_difference
from featurestore.layout import sorted_by
from featurestore.transforms import SCOPES, Params, Transform, TransformContext
from featurestore.verifyreport import VerificationReport


def verify_causality(
    transform: Transform,
    params: Params,
    frame: pl.DataFrame | pl.LazyFrame,
    ctx: TransformContext,
    *,
    output: pl.DataFrame | None = None,
    budget: float | None = None,
    samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    plan: CutPlan | None = None,
    view: str = "",
    plugin: str = "",
    rtol: float = 1e-9,
    atol: float = 1e-12,
) -> VerificationReport:
    """Check that ``transform``'s values do not change when later input rows are removed.

    ``output`` is the full run's collected output (computed here when omitted). The cuts are
    planned by ``featurestore.cutplan.plan_cuts`` (or given as ``plan``, made for this input and
    this transform's scope): every entity's (or group's) first cut, at least ``samples`` more,
    and more up to ``budget`` rows recomputed (``None``: ``max(1,000,000, 10 % of the input)``;
    ``math.inf``: exhaustive). The same input, params and arguments always check the same cuts,
    and a larger ``samples`` or ``budget`` never checks fewer. Values are compared with nulls
    equal to nulls, NaN equal to NaN and floats within ``rtol`` (relative) / ``atol``.

    Returns a ``VerificationReport`` (``verified`` False when nothing could be compared). Raises
    ``LeakageError`` naming the plugin, transform, feature and an example row; its attributes are
    ``transform``, ``plugin``, ``view``, ``scope``, ``feature``, ``row``, ``full_value``,
    ``truncated_value`` and ``cut`` (None when the value changed with no truncation, only other
    entities' or groups' rows removed). Raises ``PluginError`` when a rerun fails or breaks the
    contract, ``DefinitionError`` for bad ``samples`` / ``budget`` or missing group columns.
    """
    started = time.perf_counter()
    what = describe(transform, plugin, view)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise DefinitionError(f"samples must be an integer >= 0, got {samples!r}")
    if budget is not None and not (isinstance(budget, int | float) and budget >= 0):
        raise DefinitionError(f"budget must be a number of rows >= 0, got {budget!r}")
    scope = transform.scope
    if scope not in SCOPES:
        raise PluginError(f"{what} declares scope {scope!r}; expected one of {', '.join(SCOPES)}")
    inp = collect(frame)
    groups = checked_group_columns(transform, params, inp.schema, what) if scope == "group" else []
    if output is None:
        output = run_transform(transform, params, inp, ctx, what, during="on the full input",
                               collect_output=True)
    ids = id_columns(ctx)
    features = [c for c in output.columns if c not in ids]
    if plan is None:
        plan = plan_cuts(inp, ctx, scope=scope, group_columns=groups,
                         budget=default_budget(inp.height) if budget is None else budget,
                         samples=samples, seed=seed)
    elif plan.input_rows != inp.height:
        raise ValueError(f"the plan is for {plan.input_rows} rows, the input has {inp.height}")
    elif plan.scope != scope or (scope == "group" and list(plan.unit_columns) != groups):
        raise ValueError(f"the plan is for {plan.scope} scope {plan.unit_columns}, the transform "
                         f"has {scope} scope {groups or list(ctx.keys)}")
    check = _Check(transform, params, inp, output, ctx, plan, features, what, plugin, view,
                   groups, rtol, atol)
    notes = list(plan.notes)
    if inp.height == 0 or not features:
        notes.append("nothing to verify: no rows or no feature columns")
    else:
        try:
            for k in range(plan.reruns):
                check.rerun(k)
        except _Unpacked as exc:
            # The same cuts again, each rerun holding at most one cut per entity; what the packed
            # reruns compared does not count.
            units = list(plan.unit_columns)
            rank = pl.int_range(pl.len(), dtype=pl.Int64)
            plan = replace(plan, packing="rounds", pairs=plan.pairs.with_columns(
                (rank.over(units) if units else rank).alias(RERUN)))
            check.plan, check.compared = plan, 0
            notes.append(f"the transform does not keep rows apart by every column of ctx.keys "
                         f"({exc}), so each rerun checked one cut per entity")
            for k in range(plan.reruns):
                check.rerun(k)
        check.isolation()
    pairs = plan.pairs if features and inp.height else plan.pairs.head(0)
    cut_values = pairs.get_column(CUT)
    return VerificationReport(
        transform=transform.name, plugin=plugin, view=view, features=tuple(features),
        scope=scope, group_columns=tuple(groups), mode=_mode(plan, pairs, check, inp, features),
        cuts=pairs.height, cut_times=cut_values.n_unique() if pairs.height else 0,
        first_cut=cut_values.min() if pairs.height else None,  # type: ignore[arg-type]
        last_cut=cut_values.max() if pairs.height else None,  # type: ignore[arg-type]
        units_checked=pairs.select(plan.unit_columns).n_unique() if pairs.height else 0,
        units_total=plan.units_total, units_cuttable=plan.units_cuttable,
        entities_total=plan.entities_total, candidates=plan.candidates,
        exhaustive_rows=plan.exhaustive_rows, rows_compared=check.compared,
        rows_recomputed=check.recomputed, input_rows=inp.height, reruns=check.reruns,
        budget=plan.budget, samples=plan.samples,
        categories={k: (c if pairs.height else 0, n) for k, (c, n) in plan.categories.items()},
        isolation_units=check.isolation_units, isolation_rows=check.isolation_rows,
        seconds=time.perf_counter() - started, notes=tuple(notes))


# --------------------------------------------------------------------------- helpers


def _mode(plan: CutPlan, pairs: pl.DataFrame, check: _Check, inp: pl.DataFrame,
          features: Sequence[str]) -> str:
    """How the verdict was reached (``VerificationReport.mode``)."""
    if pairs.height:
        return plan.mode
    if not inp.height or not features or plan.units_cuttable:
        return "none"
    # No entity (or group) has two availability times: within one, every row may read every
    # other. Only reading across them could leak, which is what the isolation reruns compare.
    if inp.get_column(check.ctx.available_column).n_unique() == 1:
        return "trivial"
    return "isolation" if check.isolation_rows else "none"


def checked_group_columns(transform: Transform, params: Params,
                          schema: Mapping[str, pl.DataType], what: str) -> list[str]:
    """The group transform's declared group columns, each a column of ``schema``; a
    ``DefinitionError`` or ``PluginError`` naming ``what`` otherwise."""
    try:
        columns = list(transform.group_columns(params))
    except ValueError as exc:
        raise DefinitionError(f"{what} rejected its params: {exc}") from exc
    except Exception as exc:
        raise PluginError(f"{what}: group_columns raised {type(exc).__name__}: {exc}") from exc
    if not all(isinstance(c, str) for c in columns):
        raise PluginError(f"{what}: group_columns returned {columns!r}, expected column names")
    missing = [c for c in columns if c not in schema]
    if missing:
        raise DefinitionError(f"{what} groups rows by {', '.join(missing)}, which the input "
                              f"lacks; input columns: {', '.join(schema)}")
    return columns


def _positions(pairs: pl.DataFrame) -> pl.Series:
    """The positions in the plan's order of the rows the cuts keep, cut after cut."""
    return pairs.select(pl.int_ranges(START, pl.col(START) + pl.col(ROWS), dtype=pl.Int64)
                        .explode().drop_nulls()).to_series()


def _repeat(pairs: pl.DataFrame, column: str) -> pl.Series:
    """``column`` of each cut, once for each row the cut keeps."""
    return pairs.select(pl.col(column).repeat_by(ROWS).explode().drop_nulls()).to_series()


def _matching(values: Mapping[str, Any], schema: Mapping[str, pl.DataType]) -> pl.Expr:
    return pl.all_horizontal([pl.col(c).eq_missing(pl.lit(v, dtype=schema[c]))
                              for c, v in values.items()] or [pl.lit(True)])


class _Unpacked(Exception):
    """The transform does not keep pseudo-entities apart: verify with the original keys."""


class _Check:
    """The state of one verification: runs the reruns, counts, and raises on a difference."""

    def __init__(self, transform: Transform, params: Params, inp: pl.DataFrame,
                 output: pl.DataFrame, ctx: TransformContext, plan: CutPlan,
                 features: list[str], what: str, plugin: str, view: str, groups: list[str],
                 rtol: float, atol: float) -> None:
        self.transform, self.params, self.inp, self.output = transform, params, inp, output
        self.ctx, self.plan, self.features, self.what = ctx, plan, features, what
        self.plugin, self.view, self.groups, self.rtol, self.atol = plugin, view, groups, rtol, atol
        self.ids = id_columns(ctx)
        self.acol = ctx.available_column
        self.compared = self.recomputed = self.reruns = 0
        self.isolation_units = self.isolation_rows = 0
        self.entity = plan.scope == "entity"
        # Rows that share keys and times (re-ingested data) need pairing by value when compared.
        self.dups = plan.duplicates
        self._aligned: pl.DataFrame | None = None

    def aligned(self) -> pl.DataFrame:
        """The full run's output in the plan's order: position i holds the output of the input
        row ``plan.order[i]`` (or of a row sharing its keys and times)."""
        if self._aligned is None:
            if self.output.height != self.inp.height:
                raise PluginError(f"{self.what} returned {self.output.height} row(s) for "
                                  f"{self.inp.height} input row(s)")
            cols = list(self.plan.id_columns)
            out = self.output.select(*self.ids, *self.features)
            if not sorted_by(out, cols):
                out = out.sort(cols, nulls_last=True, maintain_order=True)
            self._aligned = out if self.plan.aligner is None else out[self.plan.aligner]
        return self._aligned

    def _compare(self, full: pl.DataFrame, truncated: pl.DataFrame,
                 on: list[str]) -> dict[str, Any] | None:
        return first_difference(full, truncated, on, self.features, rtol=self.rtol,
                                atol=self.atol, order_by=self.acol, duplicates=self.dups)

    def _gather(self, pairs: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The input rows the cuts keep and the full run's output for them, in plan order."""
        positions = _positions(pairs)
        rows = self.inp[self.plan.order.gather(positions)]
        full = self.aligned()[positions].select(*self.ids, *self.features)
        return rows, full

    def rerun(self, k: int) -> None:
        """Check the cuts of rerun ``k`` of the plan; raise on a difference.

        Raises ``_Unpacked`` when the transform does not keep pseudo-entities apart.
        """
        pairs = self.plan.rerun(k)
        rows, full = self._gather(pairs)
        truncated = "on the input truncated for causality verification"
        if self.plan.packing == "pseudo":
            tag = _repeat(pairs, CUT_ID)
            keys = list(self.ctx.keys)
            ctx = TransformContext((*keys, CUT_ID), self.ctx.time_column, self.acol)
            out = self._rerun(rows.with_columns(tag), ctx, truncated)
            on = [*keys, CUT_ID, self.ctx.time_column, self.acol]
            diff = self._compare(full.with_columns(tag), out, on)
        else:
            full = full.with_columns(_repeat(pairs, CUT))
            out = self._rerun(rows, self.ctx, truncated)
            tagged = out.join(full.select(*self.ids, CUT).unique(), on=self.ids, how="left",
                              nulls_equal=True)
            diff = self._compare(full, tagged, [*self.ids, CUT])
        self.compared += full.height
        if diff is not None:
            self._explain(diff, pairs)

    def _rerun(self, frame: pl.DataFrame, ctx: TransformContext, during: str) -> pl.DataFrame:
        self.reruns += 1
        self.recomputed += frame.height
        out = run_transform(self.transform, self.params, frame, ctx, self.what, during=during,
                            collect_output=True)
        expected = dict(self.output.schema)
        if CUT_ID in ctx.keys:
            expected[CUT_ID] = frame.schema[CUT_ID]
            if CUT_ID not in out.columns:
                raise _Unpacked(f"it does not return the key column {CUT_ID!r} added to ctx.keys")
        if dict(out.schema) != expected:
            raise PluginError(f"{self.what}: the output schema depends on the input rows: "
                              + "; ".join(schema_differences(expected, dict(out.schema))))
        if out.height != frame.height:
            raise PluginError(f"{self.what} returned {out.height} row(s) for {frame.height} input "
                              f"row(s) on an input truncated for causality verification")
        return out

    def isolation(self) -> None:
        """Compute subsets of the units without the others; a difference means the transform
        reads outside its entity (or group)."""
        subsets = self.plan.isolation
        for k in range(int(subsets.get_column(RERUN).max() or 0) + 1 if subsets.height else 0):
            alone = subsets.filter(pl.col(RERUN) == k)
            if alone.height == 0:
                continue
            rows, full = self._gather(alone)
            out = self._rerun(rows, self.ctx, "on part of its input (isolation check)")
            self.isolation_units = subsets.select(self.plan.unit_columns).n_unique()
            self.isolation_rows += rows.height
            diff = self._compare(full, out, self.ids)
            if diff is not None:
                self._raise(diff, cut=None, cause=self._mixing())

    def _mixing(self) -> str:
        if self.entity:
            return ("it changes when other entities' rows are removed: the transform mixes "
                    "entities (or is not deterministic), which an entity-scope transform must "
                    "not do, and which lets other entities' later rows leak in")
        return (f"it changes when other groups' rows are removed: the transform reads rows "
                f"outside its group ({', '.join(self.groups) or 'every row'}) (or is not "
                f"deterministic), which a group-scope transform must not do")

    # --------------------------------------------------------------------- explaining a leak

    def _explain(self, diff: dict[str, Any], pairs: pl.DataFrame) -> None:
        """Confirm a difference on its unit alone, name its cause, raise ``LeakageError``."""
        row = {k: diff["row"][k] for k in self.ids}
        units = list(self.plan.unit_columns)
        if self.plan.packing == "pseudo":
            pair = pairs.filter(pl.col(CUT_ID) == diff["row"][CUT_ID]).row(0, named=True)
        else:
            found = self.inp.filter(_matching(row, self.inp.schema)).select(units).head(1)
            values = found.row(0, named=True) if found.height else {}
            pair = pairs.filter(_matching(values, self.inp.schema)).row(0, named=True)
        cut = pair[CUT]
        unit = {c: pair[c] for c in units}
        cause = "it depends on input rows available after the cut (future data)"
        if diff["feature"] is not None:
            try:
                confirmed = self._alone(unit, cut)
                if confirmed is None and self.plan.packing == "pseudo":
                    raise _Unpacked("its values change when several copies of an entity, told "
                                    f"apart by {CUT_ID!r} in ctx.keys, are computed together")
                if confirmed is None:
                    cause = self._mixing()
                else:
                    diff, row = confirmed, {k: confirmed["row"][k] for k in self.ids}
                    if self._alone(unit, None) is not None:
                        cause = self._mixing()
            except _Unpacked:
                raise
            except Exception as exc:  # the explanation is a courtesy; the leak stands
                cause += f" (rerunning it alone failed: {type(exc).__name__})"
        self._raise({**diff, "row": row}, cut=cut, cause=cause,
                    unit=None if self.entity else unit)

    def _alone(self, unit: Mapping[str, Any], cut: datetime | None) -> dict[str, Any] | None:
        """The first difference when ``unit`` is computed alone, truncated at ``cut`` (None: not
        truncated), with the original keys."""
        units = self.plan.units
        if unit:
            units = units.filter(_matching(unit, self.inp.schema))
        if cut is not None:
            # The unit's rows up to the cut: as many as its rows available at or before it.
            kept = self.aligned()[_positions(units)].get_column(self.acol) <= cut
            units = units.with_columns(pl.lit(int(kept.sum()), pl.Int64).alias(ROWS))
        rows, full = self._gather(units)
        out = run_transform(self.transform, self.params, rows, self.ctx, self.what,
                            during="on one entity or group alone", collect_output=True)
        return self._compare(full, out, self.ids)

    def _raise(self, diff: dict[str, Any], *, cut: datetime | None, cause: str,
               unit: Mapping[str, Any] | None = None) -> None:
        row = {k: diff["row"][k] for k in self.ids}
        where = row_text(row, self.ids)
        if unit:
            where += f"; group {row_text(unit, list(unit))}"
        removed = (f"the input rows available after {fmt(cut)} are removed" if cut is not None
                   else ("the other entities' rows are removed" if self.entity
                         else "the other groups' rows are removed"))
        feature = diff["feature"]
        if feature is None:
            side = "full run" if diff["left"] else "truncated run"
            message = (f"causality check failed for {self.what}: the output row ({where}) exists "
                       f"only in the {side} when {removed}, so its {self.acol} depends on "
                       "other rows")
            full_value = truncated_value = None
        else:
            full_value, truncated_value = diff["left"], diff["right"]
            message = (f"causality check failed for {self.what}: feature {feature!r} at ({where})"
                       f" is {fmt(full_value)} on the full input but {fmt(truncated_value)} when "
                       f"{removed}; {cause}")
        err = LeakageError(message)
        for name, value in (("transform", self.transform.name), ("plugin", self.plugin),
                            ("view", self.view), ("scope", self.plan.scope),
                            ("feature", feature), ("row", row), ("full_value", full_value),
                            ("truncated_value", truncated_value), ("cut", cut)):
            setattr(err, name, value)
        raise err


__all__ = ["VerificationReport", "verify_causality"]
