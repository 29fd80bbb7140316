"""Prove the point-in-time rule on a retrieval result that carries availability columns."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import polars as pl

from featurestore.errors import DataError
from featurestore.retrieval_plan import (
    AVAILABILITY_SUFFIX,
    availability_column,
    internal_prefix,
    utc_instant,
)
from featurestore.transforms import EVENT_TIMESTAMP


@dataclass(frozen=True)
class AuditReport:
    """Outcome of ``audit``: how many values were checked and which broke the rule."""

    n_checked: int
    n_violations: int
    examples: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return self.n_violations == 0

    def __str__(self) -> str:
        head = f"audit: {self.n_checked} values checked, {self.n_violations} violations"
        return head + "".join(f"\n  {e}" for e in self.examples)


def audit(
    frame: pl.DataFrame | pl.LazyFrame,
    cutoff: str = EVENT_TIMESTAMP,
    features: Iterable[str] | None = None,
    inclusive: bool = False,
    *,
    cutoff_timezone: str | None = None,
    max_examples: int = 10,
) -> AuditReport:
    """Prove the point-in-time rule on a ``with_availability=True`` result.

    For every feature (default: every column with a ``__available_at`` partner) and row, a
    present value or availability is *checked*; it is a *violation* unless its availability is
    known and ``< cutoff`` (``<=`` when ``inclusive``). A value without availability, or a value
    on a row whose cutoff is null, is a violation: it cannot be proven safe.
    """
    df = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
    if cutoff not in df.columns:
        raise DataError(f"audit: frame has no cutoff column {cutoff!r}")
    if features is None:
        features = [
            c[: -len(AVAILABILITY_SUFFIX)]
            for c in df.columns
            if c.endswith(AVAILABILITY_SUFFIX) and c[: -len(AVAILABILITY_SUFFIX)] in df.columns
        ]
    features = list(features)
    for f in features:
        for col in (f, availability_column(f)):
            if col not in df.columns:
                raise DataError(f"audit: frame has no column {col!r}")
    tz = cutoff_timezone or "UTC"
    cut = utc_instant(pl.col(cutoff), df.schema[cutoff], tz)
    n_checked = 0
    n_bad = 0
    examples: list[dict[str, Any]] = []
    rowi = internal_prefix(df.columns) + "row"
    for f in features:
        a = availability_column(f)
        avail = utc_instant(pl.col(a), df.schema[a], "UTC")
        present = pl.col(f).is_not_null() | pl.col(a).is_not_null()
        safe = (avail <= cut) if inclusive else (avail < cut)
        bad = present & ~safe.fill_null(False)
        stats = df.select(present.sum().alias("n"), bad.sum().alias("b")).row(0)
        n_checked += int(stats[0])
        n_bad += int(stats[1])
        if stats[1] and len(examples) < max_examples:
            rows = (
                df.with_row_index(rowi)
                .filter(bad)
                .head(max_examples - len(examples))
                .select(rowi, pl.col(cutoff), pl.col(a), pl.col(f))
            )
            for r in rows.iter_rows():
                examples.append(
                    {"row": r[0], "feature": f, "cutoff": r[1], "available_at": r[2], "value": r[3]}
                )
    return AuditReport(n_checked, n_bad, tuple(examples))
