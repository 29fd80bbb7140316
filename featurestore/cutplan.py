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
  entity's median spacing (a session end, a driver dropping out);
- ``null-neighbour``, ``change-neighbour``, ``end-neighbour``, ``gap-neighbour``: the blocks next
  to those (before and after a null, holding the change, the next two before the end or a gap);
- ``second``: the unit's second block;
- ``other``: every remaining distinct ``available_at``.

In group scope a candidate (group, t) takes the category of the entity blocks whose rows it keeps
last (the rows of the group available at t), and the group's own first and last cuts are
``first`` and ``end``.

The priority order is fixed by the data: every ``first`` cut, then round robin over the other
categories (the first cut of each category, then the second of each, ...), each category in the
order of a hash of its unit's key values and t (fixed seed). Rare categories are therefore
exhausted early and no category starves another. Verification checks a *prefix* of that order:
every ``first`` cut, then at least ``samples`` more cuts, then as many as fit in ``budget`` rows
recomputed in total. A larger ``samples`` or ``budget`` takes a longer prefix of the same order, so
it never checks less; when the whole order fits, the check is exhaustive.

Entity cuts are packed into few reruns (each (entity, cut) pair becomes its own pseudo-entity, see
``featurestore.verification``): the reruns take consecutive slices of the prefix, the first small
(``FIRST_RERUN_ROWS``) and each next four times larger, so a leak found early costs little. A
group can appear only once per rerun, so group cuts are packed in rounds: rerun k holds the k-th
checked cut of every group, and each rerun costs ``RERUN_ROWS`` rows of the budget on top of its
rows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

from featurestore.errors import DataError
from featurestore.transforms import TransformContext

CATEGORIES: tuple[str, ...] = (
    "first", "null", "change", "end", "gap", "null-neighbour", "change-neighbour",
    "end-neighbour", "gap-neighbour", "second", "other",
)
"""Cut categories, in the order a cut takes the first that applies."""

DEFAULT_SAMPLES = 64
"""Cuts checked after every unit's first cut whatever the budget (``--samples``)."""
DEFAULT_MIN_BUDGET = 1_000_000
DEFAULT_BUDGET_FRACTION = 0.1
"""Default budget: ``max(DEFAULT_MIN_BUDGET, DEFAULT_BUDGET_FRACTION * input rows)`` rows."""
GAP_FACTOR = 2.0
CHANGE_SHARE = 0.2
FIRST_RERUN_ROWS = 16_384
RERUN_ROWS = 10_000
"""What one more group rerun costs, in rows of the budget (its fixed overhead)."""
ISOLATION_SHARE = 0.05
"""Share of the budget (at most half the input) spent on the isolation rerun."""
HASH_SEED = 0x5EED

CUT = "__fs_cut"
CUT_ID = "__fs_cut_id"
CATEGORY = "__fs_category"
START = "__fs_start"
PRIORITY = "__fs_priority"
ROWS = "__fs_rows"
RERUN = "__fs_rerun"
_ENT, _BLK, _POS, _M, _N, _ROW = (
    "__fs_ent", "__fs_blk", "__fs_pos", "__fs_m", "__fs_n", "__fs_row")
_NULL, _CHG, _GAP, _HASH, _IDX, _ENT_ID, _RARITY = (
    "__fs_null", "__fs_chg", "__fs_gap", "__fs_hash", "__fs_idx", "__fs_ent_id", "__fs_rarity")
_DUP = "__fs_same"


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
    aligner: pl.Series
    """For each position of ``order``: the position of the same row among all rows sorted by
    ``id_columns`` (keys, event time, ``available_at``). Sorting a transform's output that way and
    gathering ``aligner`` lines it up with ``order`` (rows sharing all three are interchangeable:
    they share a unit and a cut)."""
    id_columns: tuple[str, ...]
    pairs: pl.DataFrame
    """The checked cuts: unit columns, ``CUT``, ``CUT_ID`` (0, 1, ...), ``CATEGORY``,
    ``PRIORITY`` (0, 1, ...: the position in the priority order), ``START``, ``ROWS`` (its cost)
    and ``RERUN`` (which rerun checks it). They are run category by category, each in priority
    order, so that rare leaks show in the first, small reruns."""
    units: pl.DataFrame
    """Every unit with its rows: unit columns, ``START``, ``ROWS``."""
    isolation: pl.DataFrame
    """Units computed alone, untruncated, in the isolation rerun (rows of ``units``; may be
    empty)."""
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
    numbered = frame.with_row_index(_ROW).filter(pl.col(acol).is_not_null())
    rows, blocks, duplicates = _entity_blocks(numbered, ctx,
                                              [c for c in group_columns if c not in keys])
    entities_total = int(blocks.get_column(_ENT).sum())
    if scope == "entity":
        units, order_columns = keys, (*keys, acol, *tail)
        order = rows.get_column(_ROW)
        table = blocks
    else:
        units = group_columns
        order_columns = (*group_columns, acol, *[k for k in keys if k not in group_columns],
                         *tail)
        by_group = rows.sort([*group_columns, acol], nulls_last=True, maintain_order=True)
        order = by_group.get_column(_ROW)
        table = _group_blocks(by_group, blocks, group_columns, acol)
        del by_group
    del rows
    candidates = table.filter(pl.col(_POS) < pl.col(_M) - 1).select(
        *units, pl.col(acol).alias(CUT), START, pl.col(_N).alias(ROWS), CATEGORY, _RARITY)
    starts = table.filter(pl.col(_ENT))
    units_total, units_cuttable = starts.height, int((starts.get_column(_M) > 1).sum())
    whole = table.filter(pl.col(_POS) == pl.col(_M) - 1).select(*units, START, pl.col(_N)
                                                                .alias(ROWS))
    del table, blocks
    id_cols = list(dict.fromkeys([*keys, tcol, acol]))
    by_ids = frame.select(id_cols).with_row_index(_ROW).sort(
        id_cols, nulls_last=True, maintain_order=True).get_column(_ROW)
    aligner = by_ids.arg_sort().gather(order)
    if scope == "group" and duplicates and frame.select(
            *id_cols, *group_columns).unique().height != frame.select(id_cols).n_unique():
        raise DataError(f"rows that share {', '.join(id_cols)} belong to different groups "
                        f"({', '.join(group_columns)}), so their values cannot be told apart")
    hashed = candidates.with_columns(
        pl.struct([*units, CUT]).hash(seed=HASH_SEED + seed).alias(_HASH))
    chosen = _choose(hashed, units, packing, budget, samples, numbered.height)
    counts = dict(candidates.group_by(CATEGORY).len().iter_rows())
    taken = dict(chosen.group_by(CATEGORY).len().iter_rows())
    categories = {name: (int(taken.get(i, 0)), int(counts[i]))
                  for i, name in enumerate(CATEGORIES) if counts.get(i)}
    pairs = chosen.select(
        *units, CUT, pl.int_range(pl.len(), dtype=pl.UInt32).alias(CUT_ID),
        pl.col(CATEGORY).replace_strict(list(range(len(CATEGORIES))), list(CATEGORIES),
                                        return_dtype=pl.String),
        PRIORITY, pl.col(START).cast(pl.Int64), pl.col(ROWS).cast(pl.Int64), pl.col(RERUN).cast(pl.Int64))
    notes = []
    if units_total and not units_cuttable:
        notes.append(f"every {'entity' if scope == 'entity' else 'group'}'s rows share one "
                     f"{acol} value: no cut removes a row")
    return CutPlan(
        scope=scope, packing=packing, unit_columns=tuple(units), order=order,
        order_columns=order_columns, aligner=aligner, id_columns=tuple(id_cols), pairs=pairs,
        units=whole,
        isolation=_isolation_units(whole, units, budget, seed), input_rows=frame.height,
        duplicates=duplicates,
        units_total=units_total, units_cuttable=units_cuttable, entities_total=entities_total,
        candidates=candidates.height,
        exhaustive_rows=int(candidates.get_column(ROWS).sum() or 0),
        budget=budget, samples=samples, categories=categories, notes=tuple(notes))


# --------------------------------------------------------------------------- blocks


def _entity_blocks(frame: pl.DataFrame, ctx: TransformContext, extra: Sequence[str]
                   ) -> tuple[pl.DataFrame, pl.DataFrame, bool]:
    """Rows sorted in causal order per entity, and one row per block with its category.

    ``rows`` holds the keys, ``available_at``, the ``extra`` columns and ``_BLK`` (the row's
    block index). ``blocks`` holds the keys, ``available_at``, ``_ENT`` (the entity's first
    block), ``_N`` (rows up to and including the block), ``_POS`` / ``_M`` (the block's position
    among the entity's blocks, and their number), ``START`` (the entity's first row in the
    sorted rows), ``CATEGORY`` and ``_RARITY``. The flag says whether rows share keys and both
    times.

    A null or a change is as rare as its column's share of nulls or changes; a block takes the
    rarest of its rows, so that the rarest events come first within their category.
    """
    keys, acol, tcol = list(ctx.keys), ctx.available_column, ctx.time_column
    ids = {*keys, acol, tcol, _ROW}
    values = [c for c in frame.columns if c not in ids]
    changing = [c for c in values if _low_cardinality(frame.schema[c])]
    tail = [tcol] if tcol in frame.columns and tcol != acol else []
    n = max(frame.height, 1)
    null_shares = frame.select(pl.col(c).null_count() for c in values).row(0) if values else ()
    nullable = [pl.when(pl.col(c).is_null()).then(pl.lit(k / n))
                for c, k in zip(values, null_shares, strict=True) if k]
    null = pl.min_horizontal(nullable) if nullable else pl.lit(None, pl.Float64)
    lf = frame.lazy().select(
        *keys, acol, *extra, *[pl.col(c).alias(f"__fs_v{i}") for i, c in enumerate(changing)],
        *tail, _ROW, null.alias(_NULL),
    ).sort([*keys, acol, *tail], nulls_last=True, maintain_order=True).collect().lazy()
    first = pl.int_range(pl.len()) == 0
    new_entity = first | pl.any_horizontal(
        [pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys]) if keys else first
    lf = lf.with_columns(new_entity.alias(_ENT)).with_columns(
        (pl.col(_ENT) | pl.col(acol).ne_missing(pl.col(acol).shift(1))).alias(_BLK))
    chg: pl.Expr = pl.lit(None, pl.Float64)
    if changing:
        moves = [pl.col(f"__fs_v{i}").ne_missing(pl.col(f"__fs_v{i}").shift(1)) & ~pl.col(_ENT)
                 for i in range(len(changing))]
        shares = lf.select([m.mean().alias(str(i)) for i, m in enumerate(moves)]).collect().row(0)
        rare = [pl.when(m).then(pl.lit(s)) for m, s in zip(moves, shares, strict=True)
                if s and s <= CHANGE_SHARE]
        if rare:
            chg = pl.min_horizontal(rare)
    # Sorted by keys and both times: rows sharing all of them are neighbours.
    same = pl.all_horizontal([pl.col(c).eq_missing(pl.col(c).shift(1))
                              for c in [*keys, acol, *tail]]) & ~first
    rows = lf.select(*keys, acol, *extra, _ROW, _ENT, _NULL, chg.alias(_CHG), same.alias(_DUP),
                     (pl.col(_BLK).cast(pl.Int64).cum_sum() - 1).alias(_BLK)).collect()
    blocks = rows.group_by(_BLK, maintain_order=True).agg(
        *[pl.col(k).first() for k in keys], pl.col(acol).first(), pl.col(_ENT).first(),
        pl.len().alias(_N), pl.col(_NULL).min(), pl.col(_CHG).min())
    blocks = _sequence(blocks, acol).with_columns(_entity_category()).with_columns(
        _entity_rarity()).select(*keys, acol, _ENT, START, _N, _POS, _M, CATEGORY, _RARITY)
    duplicates = bool(rows.get_column(_DUP).any())
    return rows.select(*keys, acol, *extra, _ROW, _BLK), blocks, duplicates


def _low_cardinality(dtype: pl.DataType) -> bool:
    return dtype == pl.Boolean or dtype == pl.String or dtype.is_integer() or isinstance(
        dtype, pl.Categorical | pl.Enum)


def _sequence(blocks: pl.DataFrame, acol: str) -> pl.DataFrame:
    """Add ``_POS``, ``_M``, ``_GAP`` (to the unit's next block), ``_ENT_ID``, ``START`` (the
    unit's first row) and make ``_N`` cumulative within the unit. ``blocks`` is sorted by unit,
    then ``acol``, with ``_N`` rows each; ``_ENT`` marks each unit's first block."""
    b = pl.int_range(pl.len(), dtype=pl.Int64)
    start = pl.col(_ENT)
    end = start.shift(-1, fill_value=True)
    n_cum = pl.col(_N).cum_sum()
    return blocks.with_columns(
        (b - pl.when(start).then(b).forward_fill()).alias(_POS),
        (pl.when(end).then(b).backward_fill() - pl.when(start).then(b).forward_fill() + 1
         ).alias(_M),
        (n_cum - pl.when(start).then(n_cum - pl.col(_N)).forward_fill()).alias(_N),
        pl.when(start).then(n_cum - pl.col(_N)).forward_fill().alias(START),
        pl.when(~end).then(pl.col(acol).shift(-1) - pl.col(acol)).alias(_GAP),
        start.cum_sum().alias(_ENT_ID),
    )


def _entity_category() -> pl.Expr:
    """The category code of an entity block (see the module docstring)."""
    pos, m = pl.col(_POS), pl.col(_M)

    def ahead(expr: pl.Expr, k: int) -> pl.Expr:  # the same entity's block k places later
        return pl.when(pos + k < m).then(expr.shift(-k)).otherwise(False)

    def behind(expr: pl.Expr) -> pl.Expr:
        return pl.when(pos > 0).then(expr.shift(1)).otherwise(False)

    usual = pl.col(_GAP).median().over(_ENT_ID)
    big = (pl.col(_GAP) > usual * GAP_FACTOR).fill_null(False)
    null, chg = pl.col(_NULL).is_not_null(), pl.col(_CHG).is_not_null()
    return _categorise([
        ("first", pos == 0),
        ("null", null),
        ("change", ahead(chg, 1)),
        ("end", pos >= m - 2),
        ("gap", big),
        ("null-neighbour", behind(null) | ahead(null, 1)),
        ("change-neighbour", chg),
        ("end-neighbour", pos >= m - 4),
        ("gap-neighbour", ahead(big, 1) | ahead(big, 2)),
        ("second", pos == 1),
    ])


def _entity_rarity() -> pl.Expr:
    """How rare the anchor of a null or change cut is (0 for the other categories)."""
    pos, m, cat = pl.col(_POS), pl.col(_M), pl.col(CATEGORY)
    code = {name: i for i, name in enumerate(CATEGORIES)}
    nxt = pl.when(pos + 1 < m)
    prv = pl.when(pos > 0)
    return (pl.when(cat == code["null"]).then(pl.col(_NULL))
            .when(cat == code["change"]).then(nxt.then(pl.col(_CHG).shift(-1)))
            .when(cat == code["null-neighbour"]).then(pl.min_horizontal(
                prv.then(pl.col(_NULL).shift(1)), nxt.then(pl.col(_NULL).shift(-1))))
            .when(cat == code["change-neighbour"]).then(pl.col(_CHG))
            .otherwise(0.0).fill_null(0.0).alias(_RARITY))


def _categorise(conditions: Sequence[tuple[str, pl.Expr]]) -> pl.Expr:
    """The code of the first category whose condition holds, else ``other``."""
    code = {name: i for i, name in enumerate(CATEGORIES)}
    expr = pl.lit(code["other"], dtype=pl.UInt8)
    for name, cond in reversed(conditions):
        expr = pl.when(cond).then(pl.lit(code[name], dtype=pl.UInt8)).otherwise(expr)
    return expr.alias(CATEGORY)


def _group_blocks(by_group: pl.DataFrame, blocks: pl.DataFrame, group_columns: list[str],
                  acol: str) -> pl.DataFrame:
    """One row per (group, ``available_at``), as ``_sequence`` describes, with its category.

    ``by_group`` holds the rows sorted by group, then ``acol``. A cut keeps the group's rows
    available at or before t; it takes the best category of the entity blocks those rows at t
    belong to, or the group's own ``first`` / ``end``.
    """
    first = pl.int_range(pl.len()) == 0
    new_group = first | pl.any_horizontal(
        [pl.col(c).ne_missing(pl.col(c).shift(1)) for c in group_columns]) if group_columns \
        else first
    tagged = by_group.with_columns(
        blocks.get_column(CATEGORY).gather(by_group.get_column(_BLK)),
        blocks.get_column(_RARITY).gather(by_group.get_column(_BLK)),
        new_group.alias(_ENT),
    ).with_columns((pl.col(_ENT) | pl.col(acol).ne_missing(pl.col(acol).shift(1)))
                   .cast(pl.Int64).cum_sum().alias("__fs_gblk"))
    g = tagged.group_by("__fs_gblk", maintain_order=True).agg(
        *[pl.col(c).first() for c in group_columns], pl.col(acol).first(),
        pl.col(_ENT).first(), pl.len().alias(_N), pl.col(CATEGORY).min(),
        pl.col(_RARITY).sort_by(CATEGORY).first())
    g = _sequence(g, acol)
    own = _categorise([("first", pl.col(_POS) == 0), ("end", pl.col(_POS) >= pl.col(_M) - 2)])
    return g.with_columns(
        pl.when(own < pl.col(CATEGORY)).then(0.0).otherwise(pl.col(_RARITY)).alias(_RARITY),
        pl.min_horizontal(CATEGORY, own).alias(CATEGORY))


# --------------------------------------------------------------------------- choosing


def _choose(hashed: pl.DataFrame, units: list[str], packing: str, budget: float, samples: int,
            input_rows: int) -> pl.DataFrame:
    """The checked prefix of the priority order, with ``RERUN`` assigned."""
    first = 0
    # Rank within the category (rarest first, then by hash), then round robin: one sort key.
    i = pl.int_range(pl.len(), dtype=pl.Int64)
    new = pl.col(CATEGORY).ne_missing(pl.col(CATEGORY).shift(1))
    rank = i - pl.when(new).then(i).forward_fill()
    key = ((pl.col(CATEGORY) != first).cast(pl.Int64) * (1 << 40) + rank * len(CATEGORIES)
           + pl.col(CATEGORY).cast(pl.Int64))
    # One 64-bit sort key: category, then how rare (a dense rank: few distinct values), then hash.
    within = (pl.col(CATEGORY).cast(pl.UInt64) * (1 << 58)
              + pl.col(_RARITY).rank("dense").cast(pl.UInt64).clip(0, (1 << 18) - 1) * (1 << 40)
              + pl.col(_HASH) // (1 << 24))
    ordered = hashed.sort(within).sort(key)
    mandatory = int((ordered.get_column(CATEGORY) == first).sum())
    rows = pl.col(ROWS).cum_sum()
    if packing == "pseudo":
        cost = rows
    else:
        # A unit appears once per rerun, so the reruns needed are its number of cuts.
        taken = pl.int_range(pl.len(), dtype=pl.Int64).over(units) if units else \
            pl.int_range(pl.len(), dtype=pl.Int64)
        cost = rows + RERUN_ROWS * (taken.cum_max() + 1)
    fits = int((ordered.select(cost <= budget).to_series()).sum())
    # The checked prefix, run category by category (first cuts, then rows next to nulls, ...)
    # so that rare leaks show in the first, small reruns.
    chosen = ordered.head(max(mandatory + samples, fits)).with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias(PRIORITY)).sort(CATEGORY, PRIORITY)
    if packing == "pseudo":
        chosen = chosen.with_columns(_stages(chosen.get_column(ROWS).cum_sum(), input_rows))
    else:
        chosen = chosen.with_columns(
            (pl.int_range(pl.len(), dtype=pl.Int64).over(units) if units else
             pl.int_range(pl.len(), dtype=pl.Int64)).alias(RERUN))
    return chosen.select(*units, CUT, CATEGORY, PRIORITY, START, ROWS, RERUN)


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


def _isolation_units(whole: pl.DataFrame, units: list[str], budget: float,
                     seed: int) -> pl.DataFrame:
    """A few units (hash order) to compute alone; never all of them, none when there is one.

    ``whole`` has one row per unit with its ``START`` and ``ROWS`` (all its rows).
    """
    if not units or whole.height < 2:
        return whole.head(0)
    ordered = whole.with_columns(
        pl.struct(units).hash(seed=HASH_SEED + seed + 1).alias(_HASH)).sort(_HASH)
    cap = min(ISOLATION_SHARE * budget, ordered.get_column(ROWS).sum() / 2)
    take = int((ordered.get_column(ROWS).cum_sum() <= cap).sum())
    return ordered.head(min(max(take, 1), ordered.height - 1)).select(*units, START, ROWS)
