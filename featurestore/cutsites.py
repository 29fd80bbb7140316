"""Where cuts go: an input's rows in causal order, its blocks, and each block's category.

A *block* is an entity's rows that share one ``available_at``; cutting at a block keeps it and
everything of the entity before it. ``entity_blocks`` sorts the rows per entity (by
``available_at``, then event time; an ingested snapshot already is) and describes every block in
a few passes over the sorted rows: its position, the rows up to it, and its category (see
``featurestore.cutplan`` for the categories and how they are used). ``group_blocks`` does the
same for the groups of a group-scope transform. Nothing here depends on a transform.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import polars as pl

from featurestore.layout import sorted_by
from featurestore.transforms import TransformContext

CATEGORIES: tuple[str, ...] = (
    "first", "null", "change", "end", "gap", "null-neighbour", "change-neighbour",
    "end-neighbour", "gap-neighbour", "second", "other",
)
"""Cut categories, in the order a cut takes the first that applies."""

GAP_FACTOR = 2.0
"""A gap is more than this many times the entity's typical spacing."""
CHANGE_SHARE = 0.2
"""A column whose value changes between consecutive rows at most this often holds events."""
HASH_SEED = 0x5EED

CATEGORY = "__fs_category"
START = "__fs_start"
ENT, BLK, POS, M, N, ROW = "__fs_ent", "__fs_blk", "__fs_pos", "__fs_m", "__fs_n", "__fs_row"
RARITY, UNIT, ENDROW, FIRST, ROWS = (
    "__fs_rarity", "__fs_unit", "__fs_endrow", "__fs_first", "__fs_rows")
LAST = 15
"""The category code of an entity's last block: no cut (cutting there removes nothing)."""
_NULL, _CHG, _GAP, _IDX, _DUP, _USUAL = (
    "__fs_null", "__fs_chg", "__fs_gap", "__fs_idx", "__fs_same", "__fs_usual")


def entity_blocks(frame: pl.DataFrame, ctx: TransformContext, extra: Sequence[str]
                  ) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame, bool]:
    """Rows sorted in causal order per entity, one row per block, and one row per entity.

    ``rows`` holds the keys, ``available_at``, the ``extra`` columns, ``ROW`` (the row's number
    in ``frame``) and ``BLK`` (its block's number). ``blocks`` and the entities are described
    by ``_describe``. The flag says whether rows share keys and both times.

    A null or a change is as rare as its column's share of nulls or changes; a block takes the
    rarest of its rows, so that the rarest events come first within their category.
    """
    keys, acol, tcol = list(ctx.keys), ctx.available_column, ctx.time_column
    ids = {*keys, acol, tcol, ROW}
    values = [c for c in frame.columns if c not in ids]
    changing = [c for c in values if _low_cardinality(frame.schema[c])]
    tail = [tcol] if tcol in frame.columns and tcol != acol else []
    n = max(frame.height, 1)
    null_shares = frame.select(pl.col(c).null_count() for c in values).row(0) if values else ()
    nullable = [pl.when(pl.col(c).is_null()).then(pl.lit(k / n))
                for c, k in zip(values, null_shares, strict=True) if k]
    null = pl.min_horizontal(nullable) if nullable else pl.lit(None, pl.Float64)
    narrow = frame.lazy().with_row_index(ROW).filter(pl.col(acol).is_not_null()).select(
        *keys, acol, *extra, *[pl.col(c).alias(f"__fs_v{i}") for i, c in enumerate(changing)],
        *tail, ROW, null.alias(_NULL),
    ).collect()
    order = [*keys, acol, *tail]
    if not sorted_by(narrow, order):  # an ingested snapshot usually is: no sort then
        narrow = narrow.sort(order, nulls_last=True, maintain_order=True)
    lf = narrow.lazy()
    first = pl.int_range(pl.len()) == 0
    new_entity = first | pl.any_horizontal(
        [pl.col(k).ne_missing(pl.col(k).shift(1)) for k in keys]) if keys else first
    lf = lf.with_columns(new_entity.alias(ENT)).with_columns(
        (pl.col(ENT) | pl.col(acol).ne_missing(pl.col(acol).shift(1))).alias(BLK))
    chg: pl.Expr = pl.lit(None, pl.Float64)
    if changing:
        moves = [pl.col(f"__fs_v{i}").ne_missing(pl.col(f"__fs_v{i}").shift(1)) & ~pl.col(ENT)
                 for i in range(len(changing))]
        shares = lf.select([m.mean().alias(str(i)) for i, m in enumerate(moves)]).collect().row(0)
        rare = [pl.when(m).then(pl.lit(s)) for m, s in zip(moves, shares, strict=True)
                if s and s <= CHANGE_SHARE]
        if rare:
            chg = pl.min_horizontal(rare)
    # Sorted by keys and both times: rows sharing all of them are neighbours.
    same = pl.all_horizontal([pl.col(c).eq_missing(pl.col(c).shift(1))
                              for c in [*keys, acol, *tail]]) & ~first
    rows = lf.select(*keys, acol, *extra, ROW, ENT, _NULL, chg.alias(_CHG), same.alias(_DUP),
                     pl.col(BLK).alias("__fs_start"),
                     (pl.col(BLK).cast(pl.Int64).cum_sum() - 1).alias(BLK)).collect()
    # One row per block: its first row, and the row position after its last. Its rarest null
    # and change from the few rows that have one (no group-by over every row).
    if bool(rows.get_column("__fs_start").all()):  # one row per block: the usual case
        blocks = rows.select(*keys, acol, ENT, _NULL, _CHG,
                             pl.int_range(1, pl.len() + 1, dtype=pl.Int64).alias(ENDROW))
    else:
        starts = rows.select(pl.int_range(pl.len(), dtype=pl.Int64).alias(_IDX), "__fs_start",
                             *keys, acol, ENT, BLK).filter(pl.col("__fs_start"))
        rare_rows = rows.filter(pl.col(_NULL).is_not_null() | pl.col(_CHG).is_not_null())
        rarest = rare_rows.group_by(BLK).agg(pl.col(_NULL).min(), pl.col(_CHG).min())
        blocks = starts.select(
            *keys, acol, ENT, BLK,
            pl.col(_IDX).shift(-1, fill_value=rows.height).alias(ENDROW),
        ).join(rarest, on=BLK, how="left", maintain_order="left").drop(BLK)
    blocks, units = _describe(blocks, keys, acol)
    duplicates = bool(rows.get_column(_DUP).any())
    return rows.select(*keys, acol, *extra, ROW, BLK), blocks, units, duplicates


def _describe(blocks: pl.DataFrame, keys: list[str], acol: str
              ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Categorise entity blocks (sorted by entity, then ``acol``) with cheap passes only.

    Returns the blocks with ``ENT``, ``UNIT`` (the entity's number), ``ENDROW``, ``CATEGORY``
    (``LAST`` for an entity's last block, which is no cut) and ``RARITY``; and one row per entity:
    its keys, ``FIRST`` (first block), ``M`` (blocks), ``START`` (first row), ``ROWS`` (rows).
    Positions within an entity come from the entity-start flags shifted, never from per-block
    gathers: on a large input every pass over all blocks counts.
    """
    start = pl.col(ENT)
    # The entity's last block is at most k places later (k = 1, 2, 4).
    e1 = pl.col(ENT).shift(-1, fill_value=True)
    e2 = pl.col("__fs_e1") | pl.col(ENT).shift(-2, fill_value=True)
    e4 = pl.col("__fs_e2") | pl.col(ENT).shift(-3, fill_value=True) \
        | pl.col(ENT).shift(-4, fill_value=True)
    unit = (blocks.get_column(ENT).cast(pl.Int64).cum_sum() - 1).alias(UNIT)
    gap = pl.when(~pl.col("__fs_e1")).then(pl.col(acol).shift(-1) - pl.col(acol))
    gap = gap.dt.total_microseconds() if blocks.schema[acol].is_temporal() else gap
    blocks = blocks.with_columns(unit, e1.alias("__fs_e1")).with_columns(
        gap.cast(pl.Float64).log().alias(_GAP), e2.alias("__fs_e2")).with_columns(
        pl.col(_GAP).fill_null(0.0).fill_nan(0.0).cum_sum().alias("__fs_l"), e4.alias("__fs_e4"))
    b = pl.int_range(pl.len(), dtype=pl.Int64)
    firsts = blocks.select(b.alias(FIRST), *keys, pl.col(ENDROW).shift(1, fill_value=0)
                           .alias(START), "__fs_l", _GAP).filter(blocks.get_column(ENT))
    lasts = blocks.select(b.alias("__fs_last"), ENDROW, "__fs_l").filter(
        blocks.get_column("__fs_e1"))
    count = lasts.get_column("__fs_last") - firsts.get_column(FIRST) + 1
    # The entity's typical spacing: the geometric mean of its gaps, which a few long breaks (a
    # week between races) barely move.
    log_sum = lasts.get_column("__fs_l") - firsts.get_column("__fs_l") \
        + firsts.get_column(_GAP).fill_null(0.0).fill_nan(0.0)
    usual = (log_sum / (count - 1).cast(pl.Float64)).alias(_USUAL)
    units = firsts.select(*keys, FIRST, START).with_columns(
        count.alias(M), (lasts.get_column(ENDROW) - firsts.get_column(START)).alias(ROWS))
    big = (pl.col(_GAP) > usual.gather(blocks.get_column(UNIT)) + math.log(GAP_FACTOR)
           ).fill_null(False)
    null, chg = pl.col(_NULL).is_not_null(), pl.col(_CHG).is_not_null()
    within = {1: ~pl.col("__fs_e1"), 2: ~pl.col("__fs_e2")}

    def ahead(expr: pl.Expr, k: int) -> pl.Expr:  # the same entity's block k places later
        return within[k] & expr.shift(-k, fill_value=False)

    blocks = blocks.with_columns(big.alias("__fs_big")).with_columns(categorise([
        ("first", start),
        ("null", null),
        ("change", ahead(chg, 1)),
        ("end", pl.col("__fs_e2")),
        ("gap", pl.col("__fs_big")),
        ("null-neighbour", (~start & null.shift(1, fill_value=False)) | ahead(null, 1)),
        ("change-neighbour", chg),
        ("end-neighbour", pl.col("__fs_e4")),
        ("gap-neighbour", ahead(pl.col("__fs_big"), 1) | ahead(pl.col("__fs_big"), 2)),
        ("second", start.shift(1, fill_value=False)),
    ], last=pl.col("__fs_e1")))
    code = {name: i for i, name in enumerate(CATEGORIES)}
    cat = pl.col(CATEGORY)
    rarity = (pl.when(cat == code["null"]).then(pl.col(_NULL))
              .when(cat == code["change"]).then(pl.col(_CHG).shift(-1))
              .when(cat == code["null-neighbour"]).then(pl.min_horizontal(
                  pl.col(_NULL).shift(1), pl.col(_NULL).shift(-1)))
              .when(cat == code["change-neighbour"]).then(pl.col(_CHG))
              .otherwise(0.0).fill_null(0.0).alias(RARITY))
    return blocks.select(*keys, acol, ENT, UNIT, ENDROW, CATEGORY, rarity), units


def hash_columns(columns: Sequence[str], seed: int) -> pl.Expr:
    """A 64-bit hash of the row's values in ``columns``, fixed for a given seed."""
    out = pl.lit(0, dtype=pl.UInt64)
    for i, c in enumerate(columns):
        out = out ^ pl.col(c).hash(seed=HASH_SEED + seed + 7919 * i)
    return out.hash(seed=HASH_SEED + seed)


def _low_cardinality(dtype: pl.DataType) -> bool:
    return dtype == pl.Boolean or dtype == pl.String or dtype.is_integer() or isinstance(
        dtype, pl.Categorical | pl.Enum)


def _sequence(blocks: pl.DataFrame, acol: str) -> pl.DataFrame:
    """Add ``POS``, ``M``, ``START`` (the unit's first row), ``_GAP`` (log of the time to the
    unit's next block), ``_USUAL`` (the mean of those logs over the unit) and make ``N``
    cumulative within the unit. ``blocks`` is sorted by unit, then ``acol``, with ``N`` rows
    each; ``ENT`` marks each unit's first block.

    Per-unit values are computed once per unit and gathered back (cheaper than fills over every
    block of a large input).
    """
    if blocks.height == 0:
        return blocks.with_columns(*(pl.lit(None, pl.Int64).alias(c) for c in (POS, M, START)),
                                   *(pl.lit(None, pl.Float64).alias(c) for c in (_GAP, _USUAL)))
    start = blocks.get_column(ENT)
    unit = (start.cast(pl.Int64).cum_sum() - 1).rename(_IDX)
    b = pl.int_range(pl.len(), dtype=pl.Int64)
    end = pl.col(ENT).shift(-1, fill_value=True)
    gap = pl.when(~end).then(pl.col(acol).shift(-1) - pl.col(acol))
    gap = gap.dt.total_microseconds() if blocks.schema[acol].is_temporal() else gap
    # The unit's typical spacing: the geometric mean of its gaps, which a few long breaks
    # (a week between races) barely move.
    work = blocks.select(
        b.alias("__fs_b"), pl.col(N).cum_sum().alias("__fs_ncum"),
        gap.cast(pl.Float64).log().alias(_GAP)).with_columns(
        pl.col(_GAP).fill_null(0.0).fill_nan(0.0).cum_sum().alias("__fs_lcum"))
    firsts = work.filter(start)
    lasts = work.filter(start.shift(-1, fill_value=True))
    n_before = firsts.get_column("__fs_ncum") - blocks.get_column(N).filter(start)
    count = lasts.get_column("__fs_b") - firsts.get_column("__fs_b") + 1
    log_sum = lasts.get_column("__fs_lcum") - firsts.get_column("__fs_lcum") \
        + firsts.get_column(_GAP).fill_null(0.0) - lasts.get_column(_GAP).fill_null(0.0)
    usual = log_sum / (count - 1).cast(pl.Float64)
    return blocks.with_columns(
        (work.get_column("__fs_b") - firsts.get_column("__fs_b").gather(unit)).alias(POS),
        count.gather(unit).alias(M),
        (work.get_column("__fs_ncum") - n_before.gather(unit)).alias(N),
        n_before.gather(unit).alias(START),
        work.get_column(_GAP), usual.gather(unit).alias(_USUAL),
    )


def categorise(conditions: Sequence[tuple[str, pl.Expr]], last: pl.Expr | None = None
               ) -> pl.Expr:
    """The code of the first category whose condition holds, else ``other`` (``LAST`` where
    ``last`` holds): one bit per condition, then the lowest bit set (cheaper than a chain of
    when/then on large inputs)."""
    code = {name: i for i, name in enumerate(CATEGORIES)}
    bits = pl.lit(1 << code["other"], dtype=pl.UInt16)
    for name, cond in conditions:
        bits = bits | (cond.fill_null(False).cast(pl.UInt16) * (1 << code[name]))
    if last is not None:
        bits = pl.when(last).then(pl.lit(1 << LAST, dtype=pl.UInt16)).otherwise(bits)
    return bits.bitwise_trailing_zeros().cast(pl.UInt8).alias(CATEGORY)


def group_blocks(by_group: pl.DataFrame, blocks: pl.DataFrame, group_columns: list[str],
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
    end = CATEGORIES.index("end")
    tagged = by_group.with_columns(
        # An entity's last row is an anchor here: cutting its group there removes others' rows.
        blocks.get_column(CATEGORY).replace(LAST, end).gather(by_group.get_column(BLK)),
        blocks.get_column(RARITY).gather(by_group.get_column(BLK)),
        new_group.alias(ENT),
    ).with_columns((pl.col(ENT) | pl.col(acol).ne_missing(pl.col(acol).shift(1)))
                   .cast(pl.Int64).cum_sum().alias("__fs_gblk"))
    g = tagged.group_by("__fs_gblk", maintain_order=True).agg(
        *[pl.col(c).first() for c in group_columns], pl.col(acol).first(),
        pl.col(ENT).first(), pl.len().alias(N), pl.col(CATEGORY).min(),
        pl.col(RARITY).sort_by(CATEGORY).first())
    g = _sequence(g, acol)
    own = categorise([("first", pl.col(POS) == 0), ("end", pl.col(POS) >= pl.col(M) - 2)])
    return g.with_columns(
        pl.when(own < pl.col(CATEGORY)).then(0.0).otherwise(pl.col(RARITY)).alias(RARITY),
        pl.min_horizontal(CATEGORY, own).alias(CATEGORY))
