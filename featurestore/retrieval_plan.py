"""Retrieval inputs: the ``ViewFrame`` a caller hands in, the artifact layout, and the checks.

Everything here is shared by the packed engine (``retrieval_packed``), the lazy engine
(``retrieval_lazy``) and the audit (``retrieval_audit``): validating a query against its views
(columns, dtypes, name clashes), aligning key dtypes that differ only in width, and reading
cutoffs as UTC instants. The semantics are in ``featurestore.retrieval``'s module doc.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import polars as pl

from featurestore.errors import DataError
from featurestore.reference import Reference
from featurestore.transforms import AVAILABLE_AT

AVAILABILITY_SUFFIX = "__available_at"
_UNIT_RANK = {"ms": 0, "us": 1, "ns": 2}


def availability_column(feature: str) -> str:
    """Name of the column ``with_availability=True`` adds for output feature ``feature``."""
    return f"{feature}{AVAILABILITY_SUFFIX}"


@dataclass(frozen=True)
class ViewFrame:
    """One feature view as the engine sees it.

    ``frame`` holds the key columns, ``event_timestamp`` and ``available_at`` (UTC datetimes) and
    the feature columns. ``features`` maps output column name -> column in ``frame``.
    ``query_keys`` names the query columns matched to ``keys`` (default: the same names).
    ``presorted`` says ``frame`` is in ``sort_for_retrieval`` order (what the store writes). The
    engine checks that order as it goes (keys contiguous, ``available_at`` non-decreasing within
    a key, ``event_timestamp`` non-decreasing within an ``available_at`` tie: nearly free) and,
    if it does not hold, warns and sorts instead. Ingestion order within full ties is the
    frame's row order, so it cannot be checked: it is what the frame says.
    """

    name: str
    frame: pl.LazyFrame
    keys: tuple[str, ...]
    features: Mapping[str, str]
    query_keys: tuple[str, ...] | None = None
    presorted: bool = False
    # The store's snapshot-by-reference artifacts (``featurestore.reference``): ``frame`` joins
    # index and values; the eager engine searches the index and fetches the matched values.
    reference: Reference | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", tuple(self.keys))
        if self.query_keys is not None:
            object.__setattr__(self, "query_keys", tuple(self.query_keys))
        if isinstance(self.frame, pl.DataFrame):
            object.__setattr__(self, "frame", self.frame.lazy())

    @property
    def matched_query_keys(self) -> tuple[str, ...]:
        return self.keys if self.query_keys is None else self.query_keys  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# validation and dtype alignment shared by both engines


def _dtype_family(dtype: pl.DataType) -> str:
    if dtype.is_integer():
        return "int"
    if dtype.is_float():
        return "float"
    if dtype in (pl.String, pl.Categorical) or isinstance(dtype, (pl.Categorical, pl.Enum)):
        return "string"
    if isinstance(dtype, pl.Datetime):
        return "datetime"
    if isinstance(dtype, pl.Duration):
        return "duration"
    if dtype == pl.Null:
        return "null"
    return "other"


def _finer_unit(a: str, b: str) -> str:
    return a if _UNIT_RANK[a] >= _UNIT_RANK[b] else b


@dataclass(frozen=True)
class _KeyPair:
    query_col: str
    frame_col: str
    internal: str
    query_dtype: pl.DataType
    frame_dtype: pl.DataType
    common: pl.DataType
    query_strict: bool  # False: values that do not fit become null (and so match nothing)

    def query_expr(self) -> pl.Expr:
        return _cast_to(pl.col(self.query_col), self.query_dtype, self.common, self.query_strict)

    def frame_expr(self) -> pl.Expr:
        return _cast_to(pl.col(self.frame_col), self.frame_dtype, self.common, True)


def _cast_to(expr: pl.Expr, src: pl.DataType, dst: pl.DataType, strict: bool) -> pl.Expr:
    if src == dst:
        return expr
    if isinstance(src, pl.Datetime) and isinstance(dst, pl.Datetime):
        if src.time_zone is not None and dst.time_zone is not None:
            expr = expr.dt.convert_time_zone(dst.time_zone)
        return expr.dt.cast_time_unit(dst.time_unit)
    return expr.cast(dst, strict=strict)


def _align_key(view: str, qcol: str, qd: pl.DataType, fcol: str, fd: pl.DataType) -> tuple:
    """Return (common dtype, query cast strict?) or raise DataError."""
    if qd == fd:
        return fd, True
    fq, ff = _dtype_family(qd), _dtype_family(fd)
    if fq == "null":
        return fd, True
    if ff == "null":
        return qd, True
    if fq == ff == "int":
        # Cast the query side to the frame's type; a value that does not fit cannot be in the
        # frame, so it becomes null and matches nothing.
        return fd, False
    if fq == ff == "float":
        return pl.Float64(), True
    if fq == ff == "string":
        return pl.String(), True
    if fq == ff == "datetime":
        if (qd.time_zone is None) != (fd.time_zone is None):  # type: ignore[union-attr]
            raise DataError(
                f"view {view!r}: key column {fcol!r} is {fd} but query column {qcol!r} is {qd}; "
                "cannot compare a naive and a zoned datetime key"
            )
        unit = _finer_unit(qd.time_unit, fd.time_unit)  # type: ignore[union-attr]
        tz = None if fd.time_zone is None else "UTC"  # type: ignore[union-attr]
        return pl.Datetime(unit, tz), True
    if fq == ff == "duration":
        return pl.Duration(_finer_unit(qd.time_unit, fd.time_unit)), True  # type: ignore[union-attr]
    raise DataError(
        f"view {view!r}: key column {fcol!r} has dtype {fd} but query column {qcol!r} has dtype "
        f"{qd}; these cannot be compared"
    )


def timestamp_unit(dtype: pl.DataType) -> str:
    return dtype.time_unit if isinstance(dtype, pl.Datetime) else "us"  # Date -> us


def utc_instant(expr: pl.Expr, dtype: pl.DataType, naive_zone: str) -> pl.Expr:
    """Datetime/Date expression -> Datetime(unit, "UTC") of the same instants."""
    if dtype == pl.Date:
        expr = expr.cast(pl.Datetime("us"))
        dtype = pl.Datetime("us")
    if dtype.time_zone is None:  # type: ignore[union-attr]
        if naive_zone == "UTC":
            return expr.dt.replace_time_zone("UTC")
        return expr.dt.replace_time_zone(
            naive_zone, ambiguous="earliest", non_existent="raise"
        ).dt.convert_time_zone("UTC")
    return expr.dt.convert_time_zone("UTC")


@dataclass(frozen=True)
class ViewPlan:
    view: ViewFrame
    index: int
    pairs: tuple[_KeyPair, ...]
    av_dtype: pl.DataType
    unit: str  # common time unit of cutoff and available_at for this view
    outputs: tuple[tuple[str, str, pl.DataType], ...]  # (output name, frame column, dtype)

    @property
    def av_out_dtype(self) -> pl.DataType:
        return pl.Datetime(timestamp_unit(self.av_dtype), "UTC")


def internal_prefix(columns: Iterable[str], views: Sequence[ViewFrame] = ()) -> str:
    """A column-name prefix no query or view column starts with (for temporary columns)."""
    prefix = "__fs_"
    cols = list(columns)
    for v in views:
        cols += v.frame.collect_schema().names()
    while any(c.startswith(prefix) for c in cols):
        prefix = "_" + prefix
    return prefix


def normalize_views(views: ViewFrame | Sequence[ViewFrame]) -> list[ViewFrame]:
    if isinstance(views, ViewFrame):
        return [views]
    out = list(views)
    for v in out:
        if not isinstance(v, ViewFrame):
            raise TypeError(f"expected ViewFrame, got {type(v).__name__}")
    return out


def plan_views(
    query_schema: Mapping[str, pl.DataType],
    views: list[ViewFrame],
    cutoff: str,
    cutoff_timezone: str | None,
    with_availability: bool,
    ttl: timedelta | None,
    prefix: str,
) -> list[ViewPlan]:
    if cutoff not in query_schema:
        raise DataError(f"query has no cutoff column {cutoff!r}")
    cdt = query_schema[cutoff]
    if not (isinstance(cdt, pl.Datetime) or cdt == pl.Date):
        raise DataError(
            f"query cutoff column {cutoff!r} has dtype {cdt}; expected Datetime or Date"
        )
    if cutoff_timezone is not None:
        try:
            zoneinfo.ZoneInfo(cutoff_timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise DataError(f"unknown cutoff_timezone {cutoff_timezone!r}") from exc
    if ttl is not None:
        if not isinstance(ttl, timedelta):
            raise TypeError(f"ttl must be a datetime.timedelta, got {type(ttl).__name__}")
        if ttl < timedelta(0):
            raise DataError(f"ttl must not be negative, got {ttl}")
    cunit = timestamp_unit(cdt)
    taken: dict[str, str] = {c: "the query" for c in query_schema}
    plans: list[ViewPlan] = []
    for i, view in enumerate(views):
        schema = view.frame.collect_schema()
        qkeys = view.matched_query_keys
        if not view.keys:
            raise DataError(f"view {view.name!r}: no key columns")
        if len(qkeys) != len(view.keys):
            raise DataError(
                f"view {view.name!r}: {len(view.keys)} key columns {list(view.keys)} but "
                f"{len(qkeys)} query key columns {list(qkeys)}"
            )
        for col in (*view.keys, AVAILABLE_AT, *view.features.values()):
            if col not in schema:
                raise DataError(f"view {view.name!r}: frame has no column {col!r}")
        avd = schema[AVAILABLE_AT]
        if not (isinstance(avd, pl.Datetime) or avd == pl.Date):
            raise DataError(
                f"view {view.name!r}: column {AVAILABLE_AT!r} has dtype {avd}; expected Datetime"
            )
        pairs = []
        for j, (qk, fk) in enumerate(zip(qkeys, view.keys, strict=True)):
            if qk not in query_schema:
                raise DataError(f"view {view.name!r}: query has no key column {qk!r}")
            common, strict = _align_key(view.name, qk, query_schema[qk], fk, schema[fk])
            pairs.append(
                _KeyPair(qk, fk, f"{prefix}k{j}", query_schema[qk], schema[fk], common, strict)
            )
        outputs = []
        for out, col in view.features.items():
            names = [out, availability_column(out)] if with_availability else [out]
            for name in names:
                if name in taken:
                    raise DataError(
                        f"view {view.name!r}: output column {name!r} clashes with a column of "
                        f"{taken[name]}"
                    )
                if name.startswith(prefix):
                    raise DataError(f"view {view.name!r}: output column {name!r} is reserved")
                taken[name] = f"view {view.name!r}"
            outputs.append((out, col, schema[col]))
        unit = _finer_unit(cunit, timestamp_unit(avd))
        plans.append(ViewPlan(view, i, tuple(pairs), avd, unit, tuple(outputs)))
    return plans
