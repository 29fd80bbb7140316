"""The ``falloff`` transform: tyre degradation per stint (laps between pit stops).

Params (JSON object; every key optional):

- ``lap_time_column`` (str, default ``"lap_time"``): numeric lap time in seconds. NaN = null.
- ``lap_column`` (str, optional): integer lap number. Breaks ties after
  ``(event_timestamp, available_at)`` and makes ``tyre_age`` count laps rather than rows.
- ``group_by`` (list of str, default ``[]``): extra columns (e.g. ``race_id``) that partition
  stints in addition to the entity keys. A *partition* below is one (keys, group_by) value.
- ``pit_column`` (str, optional): Boolean (or integer, nonzero = true) pit-lap flag; null = false.
- ``jump_seconds`` (number > 0, optional): a lap is also a pit lap when it is not a caution lap
  and its lap time exceeds the lap time of the immediately preceding row of its partition by
  more than ``jump_seconds`` (no jump when either lap time is null).
- ``caution_column`` (str, optional): Boolean (or integer) caution flag; null = false.
- ``first_n`` (int >= 1, default 3) and ``first_n_partial`` (bool, default false): see
  ``delta_first_n``.
- ``slope_window`` (int >= 2, default 10), ``slope_min_laps`` (int in [2, slope_window],
  default ``min(3, slope_window)``): see ``deg_slope``.
- ``slow_k`` (number > 0, default 1.05), ``slow_window`` (int >= 1, default 5),
  ``slow_min_laps`` (int in [1, slow_window], default 1): see ``slow_lap``.
- ``outputs`` (list of kinds, or object kind -> column name; default all kinds with default
  names) and ``prefix`` (str, default ``""``, prepended to default names only).

Definitions, per partition, rows ordered by ``(event_timestamp, available_at, lap)``, then by the
``group_by`` columns, the lap time (NaN as null), the pit and the caution column (nulls first).
Rows still tied are identical in everything the transform reads, so the output never depends on
the input's row order:

- *Pit lap*: flagged by ``pit_column`` or detected by ``jump_seconds``.
- *Stint*: a pit lap whose preceding row is not a pit lap starts a new stint (a run of
  consecutive pit laps is one stop); the partition's first row starts stint 1. The pit lap is
  the first lap of the new stint. With neither ``pit_column`` nor ``jump_seconds`` a partition
  is one stint.
- *Clean lap*: not a pit lap, not a caution lap, lap time not null (and lap not null when
  ``lap_column`` is given).

Outputs (kind: default column name, dtype):

- ``stint``: ``stint``, Int32 — 1-based stint number within the partition.
- ``tyre_age``: ``tyre_age``, Int32 — 1-based: 1 on the stint's first row. With ``lap_column``
  it is ``lap - (first non-null lap of the stint) + 1`` (missing laps still age the tyres; null
  where lap is null); otherwise the row's 1-based position in the stint.
- ``delta_best``: ``lap_time_delta_best``, Float64 — lap time minus the best (minimum) clean lap
  time of the stint at or before this row (a clean row counts itself); null without one.
- ``delta_first_n``: ``lap_time_delta_first_n``, Float64 — lap time minus the mean of the stint's
  first ``first_n`` clean laps, null until ``first_n`` clean laps exist at or before this row;
  with ``first_n_partial`` the mean of the clean laps so far (at least one) is used until then.
- ``deg_slope``: ``deg_slope``, Float64 — least-squares slope (seconds per lap) of lap time on
  ``tyre_age`` over the last ``slope_window`` clean laps of the stint at or before this row;
  null with fewer than ``slope_min_laps`` such laps or when their tyre ages are all equal.
- ``slow_lap``: ``slow_lap``, Boolean — lap time > ``slow_k`` × median of the last
  ``slow_window`` clean laps of the stint strictly before this row; null with fewer than
  ``slow_min_laps`` such laps or a null lap time.

Output: the key columns, ``event_timestamp``, ``available_at`` and the declared columns, one row
per input row, *sorted* by the keys and then the order above.
Every value depends only on rows of the same partition at or before the row in that order.
``lookback`` is ``None`` (stints are unbounded).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import polars as pl

from featurestore.hookspecs import hookimpl
from featurestore.paramspec import Param, ParamSpec
from featurestore.transforms import (
    AVAILABLE_AT,
    EVENT_TIMESTAMP,
    Params,
    Transform,
    TransformContext,
)

NAME = "falloff"
KINDS: dict[str, tuple[str, pl.DataType]] = {
    "stint": ("stint", pl.Int32()),
    "tyre_age": ("tyre_age", pl.Int32()),
    "delta_best": ("lap_time_delta_best", pl.Float64()),
    "delta_first_n": ("lap_time_delta_first_n", pl.Float64()),
    "deg_slope": ("deg_slope", pl.Float64()),
    "slow_lap": ("slow_lap", pl.Boolean()),
}

@dataclass(frozen=True)
class FalloffParams:
    lap_time_column: str
    lap_column: str | None
    group_by: tuple[str, ...]
    pit_column: str | None
    jump_seconds: float | None
    caution_column: str | None
    first_n: int
    first_n_partial: bool
    slope_window: int
    slope_min_laps: int
    slow_k: float
    slow_window: int
    slow_min_laps: int
    outputs: dict[str, str]  # kind -> column name, in KINDS order


def _fail(message: str) -> ValueError:
    return ValueError(f"{NAME}: {message}")


SPEC = ParamSpec("Params", (
    Param("lap_time_column", "column", "Numeric lap time in seconds (NaN counts as null).",
          default="lap_time"),
    Param("lap_column", "column", "Integer lap number: breaks ties after (event_timestamp, "
          "available_at) and makes tyre_age count laps rather than rows."),
    Param("group_by", "columns", "Extra columns (e.g. race_id) that partition stints besides "
          "the entity keys.", default=[]),
    Param("pit_column", "column", "Boolean (or integer, nonzero = true) pit-lap flag; null is "
          "false."),
    Param("jump_seconds", "number", "A lap that is not a caution lap is also a pit lap when "
          "its time exceeds the previous row's by more than this.", low=0, exclusive_low=True),
    Param("caution_column", "column", "Boolean (or integer) caution flag; null is false."),
    Param("first_n", "int", "Clean laps averaged for delta_first_n.", default=3, low=1),
    Param("first_n_partial", "bool", "Use the mean of the clean laps so far until first_n "
          "exist (else null).", default=False),
    Param("slope_window", "int", "Clean laps in the deg_slope regression.", default=10, low=2),
    Param("slope_min_laps", "int", "Fewer clean laps than this gives a null deg_slope.",
          default=lambda v: min(3, v["slope_window"]), low=2, high="slope_window",
          default_doc="min(3, slope_window)"),
    Param("slow_k", "number", "slow_lap: lap time above slow_k times the median of the last "
          "slow_window clean laps.", default=1.05, low=0, exclusive_low=True),
    Param("slow_window", "int", "Clean laps in the slow_lap median.", default=5, low=1),
    Param("slow_min_laps", "int", "Fewer clean laps than this gives a null slow_lap.",
          default=1, low=1, high="slow_window"),
    Param("outputs", "any", f"A list of kinds among {', '.join(KINDS)}, or an object kind -> "
          "column name.", default_doc="every kind, default names"),
    Param("prefix", "str", "Prepended to default output names only.", default=""),
), doc="Tyre degradation per stint (laps between pit stops).",
    example={"lap_time_column": "lap_time", "lap_column": "lap", "group_by": ["race_id"],
             "pit_column": "pit", "outputs": ["stint", "tyre_age", "deg_slope"]})


def parse_params(params: Params) -> FalloffParams:
    """Validate params without a schema; ``ValueError`` names the bad param."""
    if not isinstance(params, Mapping):
        raise _fail("params must be a JSON object")
    v = SPEC.parse(params, _fail)
    prefix = v["prefix"]
    raw_outputs = v["outputs"] if v["outputs"] is not None else list(KINDS)
    if isinstance(raw_outputs, list):
        if not raw_outputs or not all(isinstance(k, str) for k in raw_outputs):
            raise _fail(f"param 'outputs' must be a non-empty list of kinds {list(KINDS)}")
        if len(set(raw_outputs)) != len(raw_outputs):
            raise _fail("param 'outputs' has duplicates")
        chosen = {k: f"{prefix}{KINDS[k][0]}" if k in KINDS else "" for k in raw_outputs}
    elif isinstance(raw_outputs, Mapping) and raw_outputs:
        chosen = dict(raw_outputs)
        for kind, name in chosen.items():
            if not isinstance(name, str) or not name:
                raise _fail(f"param 'outputs.{kind}' must be a non-empty column name")
    else:
        raise _fail("param 'outputs' must be a non-empty list of kinds or an object kind -> name")
    bad = [k for k in chosen if k not in KINDS]
    if bad:
        raise _fail(f"param 'outputs' has unknown kind(s) {bad}; kinds are {list(KINDS)}")
    names = list(chosen.values())
    if len(set(names)) != len(names):
        raise _fail(f"param 'outputs' gives duplicate column names {names}")
    for name in names:
        if name in (EVENT_TIMESTAMP, AVAILABLE_AT):
            raise _fail(f"param 'outputs': column {name!r} clashes with a reserved column")

    return FalloffParams(
        **{k: v[k] for k in FalloffParams.__dataclass_fields__ if k not in ("outputs", "group_by")},
        group_by=tuple(v["group_by"]),
        outputs={k: chosen[k] for k in KINDS if k in chosen},
    )


def _declare(p: FalloffParams, schema: Mapping[str, pl.DataType]) -> dict[str, pl.DataType]:
    def need(key: str, col: str | None, ok: Any, what: str) -> None:
        if col is None:
            return
        if col not in schema:
            raise _fail(f"param '{key}': no column {col!r} in input")
        if not ok(schema[col]):
            raise _fail(f"param '{key}': column {col!r} has dtype {schema[col]}, need {what}")

    def numeric(dtype: pl.DataType) -> bool:
        return dtype.is_numeric() and not isinstance(dtype, pl.Decimal)

    def flag(dtype: pl.DataType) -> bool:
        return dtype == pl.Boolean or dtype.is_integer()

    need("lap_time_column", p.lap_time_column, numeric, "a numeric dtype (seconds)")
    need("lap_column", p.lap_column, lambda d: d.is_integer(), "an integer dtype")
    need("pit_column", p.pit_column, flag, "Boolean or integer")
    need("caution_column", p.caution_column, flag, "Boolean or integer")
    for col in p.group_by:
        need("group_by", col, lambda d: True, "")
    return {name: KINDS[kind][1] for kind, name in p.outputs.items()}


def output_columns(
    params: Params, input_schema: Mapping[str, pl.DataType]
) -> dict[str, pl.DataType]:
    """The declared output columns and dtypes; ``ValueError`` for bad params or missing columns."""
    return _declare(parse_params(params), input_schema)


def lookback(params: Params) -> int | None:
    """Stints have no bounded length, so a row may depend on its whole partition history."""
    parse_params(params)
    return None


def _flag(col: str | None) -> pl.Expr:
    if col is None:
        return pl.lit(False)
    return (pl.col(col).cast(pl.Boolean)).fill_null(False)


def _falloff(frame: pl.LazyFrame, params: Params, ctx: TransformContext) -> pl.LazyFrame:
    p = parse_params(params)
    schema = frame.collect_schema()
    declared = _declare(p, schema)
    keys = list(ctx.keys)
    base = [*keys, ctx.time_column, ctx.available_column]
    for name in declared:
        if name in base:
            raise _fail(f"output column {name!r} clashes with a key or time column")
    part = [*keys, *[c for c in p.group_by if c not in keys]]

    def over(expr: pl.Expr, by: list[str]) -> pl.Expr:
        return expr.over(by) if by else expr

    lap_time = pl.col(p.lap_time_column).cast(pl.Float64).fill_nan(None)
    caution = _flag(p.caution_column)
    pit = _flag(p.pit_column)
    if p.jump_seconds is not None:
        jump = (lap_time - over(lap_time.shift(1), part)) > p.jump_seconds
        pit = pit | (~caution & jump).fill_null(False)
    order = list(base)
    for col in (p.lap_column, *p.group_by, p.lap_time_column, p.pit_column, p.caution_column):
        if col is not None and col not in order:
            order.append(col)
    by = [
        pl.col(c).fill_nan(None) if c not in base and schema[c].is_float() else pl.col(c)
        for c in order
    ]
    lf = frame.sort(by, maintain_order=True).with_columns(
        _fo_lt=lap_time, _fo_pit=pit, _fo_caution=caution
    )
    new_stint = (pl.col("_fo_pit") & ~over(pl.col("_fo_pit").shift(1), part)).fill_null(False)
    lf = lf.with_columns(_fo_stint=over(new_stint.cast(pl.Int32).cum_sum(), part) + 1)
    stint = [*part, "_fo_stint"]

    if p.lap_column is not None:
        lap = pl.col(p.lap_column).cast(pl.Int64)
        age = lap - lap.drop_nulls().first().over(stint) + 1
    else:
        age = pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over(stint)
    clean = ~pl.col("_fo_pit") & ~pl.col("_fo_caution") & pl.col("_fo_lt").is_not_null()
    if p.lap_column is not None:
        clean = clean & pl.col(p.lap_column).is_not_null()
    lf = (
        lf.with_columns(_fo_age=age, _fo_clean=clean)
        .with_columns(
            # clean laps of the stint at or before the row, and strictly before it
            _fo_k=pl.col("_fo_clean").cast(pl.Int64).cum_sum().over(stint),
            _fo_clean_lt=pl.when(pl.col("_fo_clean")).then(pl.col("_fo_lt")),
        )
        .with_columns(_fo_kb=pl.col("_fo_k") - pl.col("_fo_clean").cast(pl.Int64))
    )

    lt, k, clean_lt = pl.col("_fo_lt"), pl.col("_fo_k"), pl.col("_fo_clean_lt")
    exprs: dict[str, pl.Expr] = {
        "stint": pl.col("_fo_stint"),
        "tyre_age": pl.col("_fo_age"),
        "delta_best": lt - clean_lt.cum_min().forward_fill().over(stint),
    }

    n = p.first_n
    first_sum = pl.when(pl.col("_fo_clean") & (k <= n)).then(lt).fill_null(0.0).cum_sum()
    first_count = pl.min_horizontal(k, pl.lit(n, dtype=pl.Int64))
    first_mean = pl.when(first_count >= (1 if p.first_n_partial else n)).then(
        first_sum.over(stint) / first_count
    )
    exprs["delta_first_n"] = lt - first_mean

    # Least squares over the last `slope_window` clean laps, from window sums keyed by the clean
    # index k: window (k - W, k] holds exactly those laps (non-clean rows add nulls).
    window = f"{p.slope_window}i"
    x = pl.when(pl.col("_fo_clean")).then(pl.col("_fo_age")).cast(pl.Float64)
    x = x - x.drop_nulls().first().over(stint)  # centred for precision; slope is unchanged
    y = clean_lt - clean_lt.drop_nulls().first().over(stint)

    def wsum(expr: pl.Expr) -> pl.Expr:
        return expr.rolling_sum_by("_fo_k", window).over(stint)

    count = pl.min_horizontal(k, pl.lit(p.slope_window, dtype=pl.Int64)).cast(pl.Float64)
    sx, sy, sxx, sxy = wsum(x), wsum(y), wsum(x * x), wsum(x * y)
    denominator = count * sxx - sx * sx
    exprs["deg_slope"] = pl.when((count >= p.slope_min_laps) & (denominator > 0)).then(
        (count * sxy - sx * sy) / denominator
    )

    # Median of the last `slow_window` clean laps strictly before the row: keyed by kb (clean
    # laps strictly before), window [kb - W, kb) picks clean laps with index in (kb - W, kb].
    median = clean_lt.rolling_median_by("_fo_kb", f"{p.slow_window}i", closed="left").over(stint)
    prior = pl.min_horizontal(pl.col("_fo_kb"), pl.lit(p.slow_window, dtype=pl.Int64))
    exprs["slow_lap"] = pl.when(prior >= p.slow_min_laps).then(lt > p.slow_k * median)

    outputs = [exprs[kind].cast(declared[name]).alias(name) for kind, name in p.outputs.items()]
    return lf.select(*base, *outputs)


def input_columns(params: Params) -> list[str]:
    """The columns whose values become features: lap time, pit and caution flags (the lap
    number and ``group_by`` columns only order and partition rows)."""
    p = parse_params(params)
    return [c for c in (p.lap_time_column, p.pit_column, p.caution_column) if c is not None]


FALLOFF = Transform(
    name=NAME,
    fn=_falloff,
    output_columns=output_columns,
    description="Tyre degradation per stint: tyre age, deltas to best/first laps, slope, slow laps",
    lookback=lookback,
    input_columns=input_columns,
)


@hookimpl
def register_transforms(register: Any) -> None:
    register(FALLOFF)
