"""Incremental materialization: recompute only what new input rows can change.

When a source snapshot has only grown since a view was last materialized (every old row is
still there, unchanged, and every new row of an entity comes after all its old rows both in
event time and in availability), a view's old output rows stay valid: a causal, per-entity
transform cannot change a row because rows arrived that come after it in event order and were
available only after it. A new row with a later event time but an ``available_at`` at or before
an old row's may be read by that old row (the contract is causal in availability), so such a
snapshot is recomputed in full, as is anything else that is not plain growth. Group-scope
transforms (which read other entities' rows) are always recomputed in full. Only the new rows need computing, and they need the ``lookback``
rows before them (or, when a transform's lookback is unbounded, the entity's whole history).
The result equals a full recompute; ``tests/test_incremental.py`` checks exactly that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP

_POS = "__fs_pos"
_OLD_N = "__fs_old_n"
_OLD_MAX = "__fs_old_max"
_OLD_MAX_AV = "__fs_old_max_av"


@dataclass(frozen=True)
class Growth:
    """How a snapshot grew: the old per-entity row counts and last event times."""

    old: pl.DataFrame  # keys, __fs_old_n, __fs_old_max
    new_rows: int


def growth(old: pl.DataFrame, new: pl.DataFrame, keys: Sequence[str]) -> Growth | None:
    """``Growth`` if ``new`` is ``old`` plus rows later than each entity's old rows, else None.

    "Later" twice: a new row's event time is after every old row of its entity, and so is its
    ``available_at`` (strictly: an old row may read rows available at its own instant). Both
    frames are source snapshots: sorted by keys then event time, unique per (keys, time).
    """
    if old.schema != new.schema or new.height < old.height:
        return None
    keys = list(keys)
    stats = old.group_by(keys).agg(pl.len().alias(_OLD_N),
                                   pl.col(EVENT_TIMESTAMP).max().alias(_OLD_MAX),
                                   pl.col(AVAILABLE_AT).max().alias(_OLD_MAX_AV))
    joined = new.join(stats, on=keys, how="inner", nulls_equal=True)
    kept = joined.filter(pl.col(EVENT_TIMESTAMP) <= pl.col(_OLD_MAX)).select(old.columns)
    if kept.height != old.height or not kept.equals(old):
        return None
    added = joined.filter(pl.col(EVENT_TIMESTAMP) > pl.col(_OLD_MAX))
    if added.select((pl.col(AVAILABLE_AT) <= pl.col(_OLD_MAX_AV)).any()).item():
        return None  # a new row available no later than an old one may change that old row
    return Growth(stats.drop(_OLD_MAX_AV), new.height - old.height)


def recompute_input(new: pl.DataFrame, keys: Sequence[str], grown: Growth,
                    lookback: int | None) -> pl.DataFrame:
    """The rows a transform needs to compute the new rows: affected entities only, and of
    those only the last ``lookback`` old rows (all of them when ``lookback`` is None)."""
    keys = list(keys)
    frame = (new.with_columns(pl.int_range(pl.len()).over(keys).alias(_POS))
             .join(grown.old, on=keys, how="left", nulls_equal=True)
             .with_columns(pl.col(_OLD_N).fill_null(0).cast(pl.Int64), pl.col(_POS).cast(pl.Int64)))
    affected = frame.group_by(keys).agg((pl.len() > pl.col(_OLD_N).first()).alias("__grew"))
    frame = frame.join(affected.filter("__grew").select(keys), on=keys, how="semi", nulls_equal=True)
    if lookback is not None:
        frame = frame.filter(pl.col(_POS) >= pl.col(_OLD_N) - lookback)
    return frame.drop(_POS, _OLD_N, _OLD_MAX)


def new_output_rows(output: pl.DataFrame, keys: Sequence[str], grown: Growth) -> pl.DataFrame:
    """The rows of a transform's output that belong to new input rows."""
    keys = list(keys)
    return (output.join(grown.old.select(*keys, _OLD_MAX), on=keys, how="left", nulls_equal=True)
            .filter(pl.col(_OLD_MAX).is_null() | (pl.col(EVENT_TIMESTAMP) > pl.col(_OLD_MAX)))
            .drop(_OLD_MAX))
