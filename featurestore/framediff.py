"""Comparing two outputs of a transform row by row: ``first_difference`` and its helpers.

Rows are matched on identity columns (keys and times); rows that share every identity column are
paired in a canonical order of their values, so duplicates (re-ingested rows) compare fairly.
Floats agree within a tolerance, nulls equal nulls and NaN equals NaN. Used by causality
verification and the conformance kit; nothing here knows about transforms.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl

DUP = "__fs_dup"
LEFT = "__fs_left"
RIGHT = "__fs_right"
SUFFIX = "__fs_other"


def multiset_fingerprint(frame: pl.DataFrame, cols: Sequence[str]) -> tuple[int, int]:
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



def _sortable(dtype: pl.DataType) -> bool:
    return dtype.is_numeric() or dtype.is_temporal() or dtype in (pl.String, pl.Boolean)


def has_duplicates(frame: pl.DataFrame, ids: Sequence[str]) -> bool:
    """Whether two rows share all ``ids``."""
    return bool(frame.select(pl.struct(list(ids)).is_duplicated().any()).item())


def _align(frame: pl.DataFrame, ids: list[str], features: list[str],
           duplicates: bool | None = None) -> pl.DataFrame:
    """Number rows that share all id columns, canonically, so two runs can be joined row by row."""
    if duplicates is None:
        duplicates = has_duplicates(frame, ids)
    if not duplicates:
        return frame.with_columns(pl.lit(0, pl.UInt32).alias(DUP))
    order = [*ids, *(f for f in features if _sortable(frame.schema[f]))]
    return frame.sort(order, nulls_last=True).with_columns(
        pl.int_range(pl.len(), dtype=pl.UInt32).over(ids).alias(DUP))


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
        duplicates = has_duplicates(left, ids) or has_duplicates(right, ids)
    lf = _align(left, ids, features, duplicates).with_columns(pl.lit(True).alias(LEFT))
    rf = _align(right, ids, features, duplicates).with_columns(pl.lit(True).alias(RIGHT))
    on = [*ids, DUP]
    if left.height == right.height and (
            multiset_fingerprint(left, ids) == multiset_fingerprint(right, ids)):
        # The same rows on both sides: pair them by sorting (cheap, outputs are mostly sorted).
        lf = lf.sort(on, nulls_last=True)
        rf = rf.sort(on, nulls_last=True)
        joined = lf.with_columns(
            rf.get_column(RIGHT), *(rf.get_column(f).alias(f + SUFFIX) for f in features))
    else:
        joined = lf.join(rf, on=on, how="full", nulls_equal=True, coalesce=True, suffix=SUFFIX)
    diff_cols = [
        _differs(pl.col(f), pl.col(f + SUFFIX), left.schema[f], rtol, atol).alias(f"__d_{i}")
        for i, f in enumerate(features)
    ]
    missing = pl.col(LEFT).is_null() | pl.col(RIGHT).is_null()
    flagged = joined.with_columns(*diff_cols).filter(
        missing | pl.any_horizontal([pl.col(f"__d_{i}") for i in range(len(features))])
        if features else missing)
    if not flagged.height:
        return None
    row = flagged.sort([order_by, *ids], nulls_last=True).row(0, named=True)
    ident = {c: row[c] for c in ids}
    if row[LEFT] is None or row[RIGHT] is None:
        return {"row": ident, "feature": None, "left": row[LEFT] is not None,
                "right": row[RIGHT] is not None}
    for i, f in enumerate(features):
        if row[f"__d_{i}"]:
            return {"row": ident, "feature": f, "left": row[f], "right": row[f + SUFFIX]}
    raise AssertionError("unreachable")  # pragma: no cover




__all__ = ["first_difference", "has_duplicates", "multiset_fingerprint"]
