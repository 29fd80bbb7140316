"""What a window output is: its aggregation, value column and width, and the dtype it gives.

Kept apart from ``featurestore.windowengine`` so that reading or checking a window view's
definition does not import the engine (and numpy) that computes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import polars as pl

__all__ = ["AGGS", "WindowOutput", "output_dtype"]

AGGS = ("count", "sum", "mean", "std", "min", "max", "first", "last")


@dataclass(frozen=True)
class WindowOutput:
    """One output column: ``agg`` of ``value`` (a column of the rows frame) over ``window``.

    ``window`` is a width (``timedelta``) or None for the expanding window (all rows before T).
    """

    name: str
    value: str
    agg: str
    window: timedelta | None

    def __post_init__(self) -> None:
        if self.agg not in AGGS:
            raise ValueError(f"window output {self.name!r}: unknown aggregation {self.agg!r}; "
                             f"expected one of {', '.join(AGGS)}")
        if self.window is not None and self.window <= timedelta(0):
            raise ValueError(f"window output {self.name!r}: window must be positive, "
                             f"got {self.window}")


def output_dtype(agg: str, value_dtype: pl.DataType) -> pl.DataType:
    """The dtype of ``agg`` over a value column of ``value_dtype`` (Boolean counts as Int32)."""
    if value_dtype == pl.Boolean:
        value_dtype = pl.Int32()
    if agg in ("mean", "std"):
        return pl.Float64()
    if agg == "count":
        return pl.Int64()
    if agg == "sum":
        return pl.Float64() if value_dtype.is_float() else pl.Int64()
    return value_dtype
