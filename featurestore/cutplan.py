"""Which cuts causality verification checks, in which order, and which rerun checks each.

A *cut* is a pair (unit, t): the unit is an entity (scope ``entity``) or a group (scope ``group``:
the rows that share the values of the transform's group columns), t one of the unit's distinct
``available_at`` values other than its last (cutting at the last removes none of its rows). The
*cost* of a cut is the number of the unit's rows available at or before t: what rerunning the
transform on the truncated unit processes.

Every candidate gets a *category*, the first of ``CATEGORIES`` that describes it. Entities are
walked in causal order (``available_at``, then event time); a *block* is an entity's rows that
share one ``available_at``:

- ``first``: the unit's first block (and, in group scope, the block holding an entity's first row);
- ``null``: a block holding a null in any input column other than keys and times;
- ``change``: the block just before a change of a low-cardinality column (Boolean, string,
  categorical or integer columns whose value changes between consecutive rows of an entity at most
  ``CHANGE_SHARE`` of the time: a pit stop flag, a status), where a rare event is about to happen;
- ``end``: an entity's last blocks (its data ends next);
- ``gap``: the block before a gap in ``available_at`` larger than ``GAP_FACTOR`` times the
  entity's typical spacing, the geometric mean of its gaps (a session end, a driver dropping
  out);
- ``null-neighbour``, ``change-neighbour``, ``end-neighbour``, ``gap-neighbour``: the blocks next
  to those (before and after a null, holding the change, the next two before the end or a gap);
- ``second``: the unit's second block;
- ``other``: every remaining distinct ``available_at``.

In group scope a candidate (group, t) takes the category of the entity blocks whose rows it keeps
last (the rows of the group available at t), and the group's own first and last cuts are
``first`` and ``end``.

The priority order is fixed by the data: every ``first`` cut, then round robin over the other
categories (the first cut of each category, then the second of each, ...). Within a category the
rarest anchors come first (a null in a column that is seldom null, a change of a column that
seldom changes), then the order of a hash of the unit's key values and t (fixed seed). Rare
categories are therefore exhausted early and no category starves another. Verification checks a *prefix* of that order:
every ``first`` cut, then at least ``samples`` more cuts, then as many as fit in ``budget`` rows
recomputed in total. A larger ``samples`` or ``budget`` takes a longer prefix of the same order, so
it never checks less; when the whole order fits, the check is exhaustive.

Which rerun checks a cut does not change what is checked. The checked cuts run category by
category (first cuts, then rows next to nulls, ...), so that rare leaks show early. Entity cuts are
packed into few reruns (each (entity, cut) pair becomes its own pseudo-entity, see
``featurestore.verification``): consecutive slices of the checked cuts, the first small
(``FIRST_RERUN_ROWS``) and each next four times larger, so a leak found early costs little. A
group can appear only once per rerun, so group cuts are packed in rounds (``packing="rounds"``,
also the fallback for an entity-scope transform that does not keep pseudo-entities apart): rerun
k holds the k-th checked cut of every unit, and each rerun costs ``RERUN_ROWS`` rows of the budget
on top of its rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import polars as pl

from featurestore.cutsites import (
    CATEGORIES,
    CATEGORY,
    ENDROW,
    ENT,
    LAST,
    POS,
    RARITY,
    ROW,
    ROWS,
    START,
    UNIT,
    M,
    N,
    entity_blocks,
    group_blocks,
    hash_columns,
)
from featurestore.errors import DataError
from featurestore.layout import sorted_by
from featurestore.transforms import TransformContext
from featurestore.verifyreport import (
    DEFAULT_BUDGET_FRACTION,
    DEFAULT_MIN_BUDGET,
    DEFAULT_SAMPLES,
)

FIRST_RERUN_ROWS = 16_384
RERUN_ROWS = 10_000
"""What one more group rerun costs, in rows of the budget (its fixed overhead)."""
ISOLATION_SHARE = 0.05
"""Share of the budget (at most half the input) spent on the isolation rerun."""
ISOLATION_BITS = 6
"""Exhaustive checks split the units in two this many ways for the isolation reruns."""

CUT = "__fs_cut"
CUT_ID = "__fs_cut_id"
PRIORITY = "__fs_priority"
RERUN = "__fs_rerun"
_HASH, _IDX = "__fs_hash", "__fs_idx"


def default_budget(input_rows: int) -> int:
    """The budget used when none is given, in rows recomputed."""
    return max(DEFAULT_MIN_BUDGET, math.ceil(DEFAULT_BUDGET_FRACTION * input_rows))


@dataclass(frozen=True)
class CutPlan:
    """The cuts one verification checks; built by ``plan_cuts`` from the input alone.

    The input's rows, in ``order``, are sorted by ``order_columns``: unit, then
    ``available_at``. A unit's rows available at or before a cut are then the contiguous
    positions ``START`` to ``START + ROWS`` of that order, which is how reruns are assembled
    (gathers, no joins).
    """

    scope: str
    packing: str
    """``pseudo`` (entity cuts as pseudo-entities, reruns of growing size) or ``rounds``
    (rerun k holds each unit's k-th cut)."""
    unit_columns: tuple[str, ...]
    """The columns naming a unit: the keys (entity scope) or the group columns (group scope)."""
    order: pl.Series
    """Row numbers of the planned frame (rows with a null ``available_at`` left out), sorted."""
    order_columns: tuple[str, ...]
    aligner: pl.Series | None
    """For each position of ``order``: the position of the same row among all rows sorted by
    ``id_columns`` (keys, event time, ``available_at``); None when that is the position itself.
    Sorting a transform's output that way and gathering ``aligner`` lines it up with ``order``
    (rows sharing all three are interchangeable: they share a unit and a cut)."""
    id_columns: tuple[str, ...]
    pairs: pl.DataFrame
    """The checked cuts: unit columns, ``CUT``, ``CUT_ID`` (0, 1, ...), ``CATEGORY``,
    ``PRIORITY`` (0, 1, ...: the position in the priority order), ``START``, ``ROWS`` (its cost)
    and ``RERUN`` (which rerun checks it). They are run category by category, each in priority
    order, so that rare leaks show in the first, small reruns."""
    units: pl.DataFrame
    """Every unit with its rows: unit columns, ``START``, ``ROWS``."""
    isolation: pl.DataFrame
    """Units computed without the others, untruncated, in the isolation reruns: rows of
    ``units`` with ``RERUN`` (which rerun); may be empty."""
    input_rows: int
    duplicates: bool
    """Whether rows share keys and both times (re-ingested data): then rows are paired by value
    when compared."""
    units_total: int
    units_cuttable: int
    """Units with at least two distinct ``available_at`` values (the others have no cut)."""
    entities_total: int
    candidates: int
    exhaustive_rows: int
    """Rows an exhaustive check recomputes: the sum of every candidate's cost."""
    budget: float
    samples: int
    categories: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per category: (cuts checked, candidates)."""
    notes: tuple[str, ...] = ()

    @property
    def mode(self) -> str:
        """``exhaustive`` (every candidate), ``targeted`` (a prefix) or ``none`` (no candidate)."""
        if self.pairs.height == 0:
            return "none"
        return "exhaustive" if self.pairs.height == self.candidates else "targeted"

    @property
    def reruns(self) -> int:
        return int(self.pairs.get_column(RERUN).max()) + 1 if self.pairs.height else 0

    def rerun(self, k: int) -> pl.DataFrame:
        """The cuts checked by rerun ``k``, in the order of their rows."""
        return self.pairs.filter(pl.col(RERUN) == k).sort(START, CUT_ID)


def plan_cuts(frame: pl.DataFrame, ctx: TransformContext, *, scope: str = "entity",
              group_columns: Sequence[str] = (), budget: float | None = None,
              samples: int = DEFAULT_SAMPLES, seed: int = 0, packing: str | None = None
              ) -> CutPlan:
    """Plan a verification of ``frame`` (see the module docstring); deterministic.

    ``budget`` (rows recomputed; ``None``: ``default_budget``, ``math.inf``: exhaustive) and
    ``samples`` (>= 0) choose the prefix of the priority order; ``seed`` varies the hash order.
    ``packing`` is ``pseudo`` (the default for entity scope) or ``rounds`` (always for group
    scope; for entity scope, the fallback for a transform that ignores an added key column).
    """
    packing = packing or ("pseudo" if scope == "entity" else "rounds")
    if packing not in ("pseudo", "rounds") or (scope == "group" and packing == "pseudo"):
        raise ValueError(f"packing {packing!r} is not available for {scope} scope")
    if samples < 0:
        raise ValueError(f"samples must be >= 0, got {samples}")
    budget = float(default_budget(frame.height) if budget is None else budget)
    if not budget >= 0:
        raise ValueError(f"budget must be >= 0 rows, got {budget}")
    keys, acol, tcol = list(ctx.keys), ctx.available_column, ctx.time_column
    group_columns = list(group_columns)
    tail = [tcol] if tcol in frame.columns and tcol != acol else []
    rows, blocks, entities, duplicates = entity_blocks(
        frame, ctx, [c for c in group_columns if c not in keys])
    entities_total = entities.height
    if scope == "entity":
        units, order_columns = keys, (*keys, acol, *tail)
        order = rows.get_column(ROW)
        # Costs and starts are computed for the cuts that may be checked only (see _choose).
        table = blocks.select(*keys, pl.col(acol).alias(CUT), CATEGORY, RARITY, UNIT, ENDROW)
        whole = entities.select(*keys, START, ROWS)
        cuttable = entities.get_column(M) > 1
        whole_cuts = entities.get_column(M) - 1
        n_candidates = int((entities.get_column(M) - 1).sum() or 0)
        exhaustive_rows = int(blocks.filter(pl.col(CATEGORY) != LAST).get_column(ENDROW).sum()
                              or 0) - int(((entities.get_column(M) - 1)
                                           * entities.get_column(START)).sum() or 0)

        def costs(kept: pl.DataFrame) -> pl.DataFrame:
            first_row = entities.get_column(START).gather(kept.get_column(UNIT))
            return kept.with_columns(first_row.alias(START),
                                     (pl.col(ENDROW) - first_row).alias(ROWS))
    else:
        units = group_columns
        order_columns = (*group_columns, acol, *[k for k in keys if k not in group_columns],
                         *tail)
        by_group = rows.sort([*group_columns, acol], nulls_last=True, maintain_order=True)
        order = by_group.get_column(ROW)
        grouped = group_blocks(by_group, blocks, group_columns, acol)
        del by_group
        last = pl.col(POS) == pl.col(M) - 1
        table = grouped.select(*units, pl.col(acol).alias(CUT), pl.when(last).then(LAST)
                               .otherwise(pl.col(CATEGORY)).alias(CATEGORY), RARITY, START,
                               pl.col(N).alias(ROWS))
        whole = grouped.filter(last).select(*units, START, pl.col(N).alias(ROWS))
        cuttable = grouped.filter(pl.col(ENT)).get_column(M) > 1
        whole_cuts = grouped.filter(pl.col(ENT)).get_column(M) - 1
        candidates = table.filter(pl.col(CATEGORY) != LAST)
        n_candidates = candidates.height
        exhaustive_rows = int(candidates.get_column(ROWS).sum() or 0)
        del grouped, candidates

        def costs(kept: pl.DataFrame) -> pl.DataFrame:
            return kept
    rows_planned = rows.height
    del rows, blocks
    units_total, units_cuttable = cuttable.len(), int(cuttable.sum())
    id_cols = list(dict.fromkeys([*keys, tcol, acol]))
    identity = pl.int_range(frame.height, dtype=order.dtype, eager=True)
    if sorted_by(frame.select(id_cols), id_cols):  # an ingested snapshot is
        aligner = None if order.equals(identity) else order
    else:
        by_ids = frame.select(id_cols).with_row_index(ROW).sort(
            id_cols, nulls_last=True, maintain_order=True).get_column(ROW)
        aligner = by_ids.arg_sort().gather(order)
    if scope == "group" and duplicates and frame.select(
            *id_cols, *group_columns).unique().height != frame.select(id_cols).n_unique():
        raise DataError(f"rows that share {', '.join(id_cols)} belong to different groups "
                        f"({', '.join(group_columns)}), so their values cannot be told apart")
    # What checking every candidate costs: its rows, plus one rerun per round when a unit can be
    # in a rerun once (a unit with m cuts needs m reruns).
    rounds = int(whole_cuts.max() or 0) if packing == "rounds" else 0
    total_cost = exhaustive_rows + RERUN_ROWS * rounds
    hashed = table.with_columns(hash_columns([*units, CUT], seed).alias(_HASH))
    chosen = _choose(hashed, units, packing, budget, samples, rows_planned, total_cost, costs)
    counts = dict(table.get_column(CATEGORY).value_counts().iter_rows())
    taken = dict(chosen.group_by(CATEGORY).len().iter_rows())
    categories = {name: (int(taken.get(i, 0)), int(counts[i]))
                  for i, name in enumerate(CATEGORIES) if counts.get(i)}
    pairs = chosen.select(
        *units, CUT, pl.int_range(pl.len(), dtype=pl.UInt32).alias(CUT_ID),
        pl.col(CATEGORY).replace_strict(list(range(len(CATEGORIES))), list(CATEGORIES),
                                        return_dtype=pl.String),
        PRIORITY, *(pl.col(c).cast(pl.Int64) for c in (START, ROWS, RERUN)))
    notes = []
    if units_total and not units_cuttable:
        notes.append(f"every {'entity' if scope == 'entity' else 'group'}'s rows share one "
                     f"{acol} value: no cut removes a row")
    return CutPlan(
        scope=scope, packing=packing, unit_columns=tuple(units), order=order,
        order_columns=order_columns, aligner=aligner, id_columns=tuple(id_cols), pairs=pairs,
        units=whole,
        isolation=_isolation_units(whole, units, budget, seed, room=budget - total_cost),
        input_rows=frame.height,
        duplicates=duplicates,
        units_total=units_total, units_cuttable=units_cuttable, entities_total=entities_total,
        candidates=n_candidates, exhaustive_rows=exhaustive_rows,
        budget=budget, samples=samples, categories=categories, notes=tuple(notes))


# --------------------------------------------------------------------------- choosing


def _choose(hashed: pl.DataFrame, units: list[str], packing: str, budget: float, samples: int,
            input_rows: int, total: int,
            costs: Callable[[pl.DataFrame], pl.DataFrame]) -> pl.DataFrame:
    """The checked prefix of the priority order, with ``PRIORITY`` and ``RERUN`` assigned.

    Sorting every candidate is the costly part on large inputs, and a prefix rarely goes deep
    into a large category: so only the ``k`` first of each category are sorted (a threshold on
    the key that orders the category), and ``k`` grows until the prefix stays clear of every
    cut-off; the result is the prefix of the full order either way.
    """
    first, other = 0, len(CATEGORIES) - 1
    # One 64-bit key within a category: how rare (18 bits: the share of nulls or changes of the
    # column), then the hash.
    hashed = hashed.with_columns(
        ((pl.col(RARITY).clip(0.0, 1.0) * ((1 << 18) - 1)).cast(pl.UInt64) * (1 << 40)
         + pl.col(_HASH) // (1 << 24)).alias(_HASH))
    n_of = {c: n for c, n in hashed.get_column(CATEGORY).value_counts().iter_rows()
            if c != LAST}
    mandatory = int(n_of.get(first, 0))
    k = max(4096, 4 * (mandatory + samples))
    cat = pl.col(CATEGORY)
    while True:
        big = [c for c, n in n_of.items() if c != first and n > k]
        if budget >= total or not big:
            kept, limits = hashed.filter(cat != LAST), {}
        else:
            # "other" is ordered by hash alone, so a threshold on it keeps about k; the others
            # get the exact k-th key.
            limits = {c: pl.lit((1 << 40) * k // n_of[c], dtype=pl.UInt64) for c in big
                      if c == other}
            exact = [c for c in big if c != other]
            if exact:
                kth = hashed.filter(cat.is_in(exact)).group_by(CATEGORY).agg(
                    pl.col(_HASH).bottom_k(k).max())
                limits |= {c: pl.lit(v + 1, dtype=pl.UInt64) for c, v in kth.iter_rows()}
            keep = ~cat.is_in(big) & (cat != LAST)
            for c, limit in limits.items():
                keep = keep | ((cat == c) & (pl.col(_HASH) < limit))
            kept = hashed.filter(keep)
        chosen = _prefix(costs(kept), units, packing, budget, samples, mandatory)
        taken = dict(chosen.get_column(CATEGORY).value_counts().iter_rows())
        held = dict(kept.get_column(CATEGORY).value_counts().iter_rows())
        if all(taken.get(c, 0) < held.get(c, 0) for c in limits):
            break
        k *= 4
    # The checked prefix, run category by category (first cuts, then rows next to nulls, ...)
    # so that rare leaks show in the first, small reruns.
    chosen = chosen.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias(PRIORITY)).sort(
        CATEGORY, PRIORITY)
    if packing == "pseudo":
        chosen = chosen.with_columns(_stages(chosen.get_column(ROWS).cum_sum(), input_rows))
    else:
        chosen = chosen.with_columns(
            (pl.int_range(pl.len(), dtype=pl.Int64).over(units) if units else
             pl.int_range(pl.len(), dtype=pl.Int64)).alias(RERUN))
    return chosen.select(*units, CUT, CATEGORY, PRIORITY, START, ROWS, RERUN)


def _prefix(kept: pl.DataFrame, units: list[str], packing: str, budget: float, samples: int,
            mandatory: int) -> pl.DataFrame:
    """The prefix of ``kept`` in priority order.

    Priority: every ``first`` cut, then round robin over the categories (rank 0 of each, rank 1
    of each, ...), a category's ranks following ``_HASH`` (rarity, then hash).
    """
    first = 0
    i = pl.int_range(pl.len(), dtype=pl.Int64)
    new = pl.col(CATEGORY).ne_missing(pl.col(CATEGORY).shift(1))
    rank = i - pl.when(new).then(i).forward_fill()
    ordered = kept.sort(CATEGORY, _HASH).with_columns(rank.alias(_IDX)).sort(
        (pl.col(CATEGORY) != first).cast(pl.Int64) * (1 << 40)
        + pl.col(_IDX) * len(CATEGORIES) + pl.col(CATEGORY).cast(pl.Int64))
    rows = pl.col(ROWS).cum_sum()
    if packing == "pseudo":
        cost = rows
    else:
        # A unit appears once per rerun, so the reruns needed are its number of cuts.
        taken = pl.int_range(pl.len(), dtype=pl.Int64).over(units) if units else \
            pl.int_range(pl.len(), dtype=pl.Int64)
        cost = rows + RERUN_ROWS * (taken.cum_max() + 1)
    fits = int(ordered.select(cost <= budget).to_series().sum())
    return ordered.head(max(mandatory + samples, fits))


def _stages(cost: pl.Series, input_rows: int) -> pl.Series:
    """Rerun index of each entity cut: consecutive slices of growing size (first small)."""
    limit = max(input_rows, DEFAULT_MIN_BUDGET)
    bounds, size, total = [], FIRST_RERUN_ROWS, 0
    last = int(cost.max() or 0)
    while total < last:
        total += min(size, limit)
        bounds.append(total)
        size *= 4
    stage = pl.Series(bounds or [0], dtype=pl.Int64).search_sorted(cost, side="left")
    return stage.rank("dense").cast(pl.Int64).alias(RERUN) - 1


def _isolation_units(whole: pl.DataFrame, units: list[str], budget: float, seed: int,
                     room: float) -> pl.DataFrame:
    """Subsets of the units to compute without the others (``RERUN``: which subset).

    When ``room`` (the budget left by an exhaustive check) allows: the units numbered in hash
    order and split by each bit of their number, both sides (at most ``2 * ISOLATION_BITS``
    reruns of about half the input each), so that any two units are computed apart at least once
    when there are at most 2 ** ISOLATION_BITS of them. Otherwise one subset, units in hash order
    up to ``ISOLATION_SHARE`` of the budget. Never all units in one subset; nothing when there
    is one unit.
    """
    if not units or whole.height < 2:
        return whole.head(0).with_columns(pl.lit(0, pl.Int64).alias(RERUN))
    ordered = whole.with_columns(hash_columns(units, seed + 1).alias(_HASH)).sort(_HASH)
    bits = min(ISOLATION_BITS, max(1, (ordered.height - 1).bit_length()))
    if room >= bits * int(ordered.get_column(ROWS).sum() or 0):
        number = pl.int_range(pl.len(), dtype=pl.Int64)
        sides = [ordered.filter(((number // (1 << b)) % 2) == side).with_columns(
                 pl.lit(2 * b + side, pl.Int64).alias(RERUN))
                 for b in range(bits) for side in (0, 1)]
        return pl.concat([p for p in sides if 0 < p.height < ordered.height]).select(
            *units, START, ROWS, RERUN)
    cap = min(ISOLATION_SHARE * budget, ordered.get_column(ROWS).sum() / 2)
    take = int((ordered.get_column(ROWS).cum_sum() <= cap).sum())
    return ordered.head(min(max(take, 1), ordered.height - 1)).select(
        *units, START, ROWS, pl.lit(0, pl.Int64).alias(RERUN))
