"""A conformance kit for transform plugins, for use with pytest.

A plugin author checks a transform in one line::

    from featurestore.testing import assert_transform_conforms, sample_laps

    def test_my_transform_conforms():
        assert_transform_conforms(MY_TRANSFORM, {"column": "lap_time_s"}, sample_laps())

``assert_transform_conforms`` runs every check below and raises ``ConformanceError`` (an
``AssertionError``, so pytest shows it as a plain failure) naming the check that failed. Passing
means the transform meets the contract of ``featurestore.transforms`` on that data: the same checks
the materializer runs (``featurestore.contract``, ``featurestore.verification``), plus
determinism, input-order independence, isolation (per entity, or per group for a group-scope
transform), empty input and, when the transform declares one, its look-back. The kit is stricter
than the materializer: it verifies causality exhaustively (every cut of every entity or group,
whatever the cost) and insists on a ``LazyFrame``.

``sample_laps`` makes small motorsport-like data with the awkward cases real data has: rows in
no particular order, missing values, drivers who skip races, a driver with a single lap, rows that
share one ``available_at`` (a whole session published at once) next to rows available lap by lap.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl

from featurestore.contract import (
    check_contract,
    declared_output_schema,
    describe,
    run_transform,
)
from featurestore.cutplan import DEFAULT_SAMPLES
from featurestore.errors import FeatureStoreError
from featurestore.framediff import first_difference
from featurestore.transforms import (
    AVAILABLE_AT,
    EVENT_TIMESTAMP,
    Params,
    Transform,
    TransformContext,
    entity_order,
)
from featurestore.verification import verify_causality

CHECKS = (
    "params",
    "contract",
    "lazy",
    "determinism",
    "unsorted",
    "empty",
    "isolation",
    "causality",
    "lookback",
)
"""The checks ``assert_transform_conforms`` runs, in order."""


class ConformanceError(AssertionError):
    """A transform failed a conformance check; ``check`` names which (one of ``CHECKS``)."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"[{check}] {message}")
        self.check = check


def sample_laps(
    n_drivers: int = 6,
    n_races: int = 6,
    laps_per_race: int = 8,
    *,
    seed: int = 0,
    shuffle: bool = True,
    null_fraction: float = 0.05,
    composite_key: bool = False,
    duplicate_times: bool = False,
) -> pl.DataFrame:
    """Lap data shaped like a featurestore source after ingestion.

    Columns: ``driver_id`` (Int64; with ``composite_key`` also ``team_id``, Int64, and the entity
    is the pair), ``event_timestamp`` and ``available_at`` (Datetime("us", "UTC")), ``race_id``
    (Int64), ``lap`` (Int32), ``lap_time_s`` (Float64, about ``null_fraction`` nulls),
    ``position`` (Int64), ``compound`` (String) and ``pit`` (Boolean).

    Odd-numbered races are published lap by lap (``available_at`` is the lap's time plus 2
    minutes); even-numbered races as a whole when the session ends (every lap shares one
    ``available_at``). Each driver skips one race at random when there are more than two; the last
    driver has a single lap. ``duplicate_times`` adds, for a few laps, a second row with the same
    keys and times but another lap time (re-ingested data). Rows are shuffled unless ``shuffle`` is
    False (then sorted by entity and time). Deterministic for a given ``seed``.
    """
    rng = random.Random(seed)
    start = datetime(2024, 3, 2, 15, 0, tzinfo=UTC)
    compounds = ("SOFT", "MEDIUM", "HARD")
    rows: list[dict[str, Any]] = []
    for d in range(1, n_drivers + 1):
        team = (d + 1) // 2
        skipped = rng.randrange(n_races) if n_races > 2 else -1
        pace = 88.0 + rng.random() * 4
        laps_total = 1 if (d == n_drivers and n_drivers > 1) else laps_per_race
        for r in range(n_races):
            if laps_total == 1 and r > 0:
                break
            if r == skipped and laps_total > 1:
                continue
            race_start = start + timedelta(days=14 * r)
            race_end = race_start + timedelta(seconds=95 * laps_per_race + 600)
            t = race_start
            for lap in range(1, laps_total + 1):
                lap_time = pace + rng.gauss(0, 1.5) + (0.3 if lap == 1 else 0.0)
                t = t + timedelta(seconds=lap_time)
                value = None if rng.random() < null_fraction else round(lap_time, 3)
                available = t + timedelta(minutes=2) if r % 2 else race_end
                row = {
                    "driver_id": d,
                    "team_id": team,
                    EVENT_TIMESTAMP: t,
                    AVAILABLE_AT: available,
                    "race_id": 1000 + r,
                    "lap": lap,
                    "lap_time_s": value,
                    "position": rng.randint(1, max(2, n_drivers)),
                    "compound": compounds[(lap * 3 // max(1, laps_total)) % 3],
                    "pit": lap % 5 == 0,
                }
                rows.append(row)
                if duplicate_times and rng.random() < 0.1:
                    rows.append({**row, "lap_time_s": round(lap_time + 0.5, 3)})
    schema = {
        "driver_id": pl.Int64,
        "team_id": pl.Int64,
        EVENT_TIMESTAMP: pl.Datetime("us", "UTC"),
        AVAILABLE_AT: pl.Datetime("us", "UTC"),
        "race_id": pl.Int64,
        "lap": pl.Int32,
        "lap_time_s": pl.Float64,
        "position": pl.Int64,
        "compound": pl.String,
        "pit": pl.Boolean,
    }
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    if not composite_key:
        frame = frame.drop("team_id")
    if shuffle:
        return frame.sample(fraction=1.0, shuffle=True, seed=seed)
    keys = ["driver_id", "team_id"] if composite_key else ["driver_id"]
    return frame.sort([*keys, EVENT_TIMESTAMP, AVAILABLE_AT])


def _run(transform: Transform, frame: pl.DataFrame, params: Params, ctx: TransformContext,
         check: str) -> Any:
    try:
        return run_transform(transform, params, frame, ctx, describe(transform))
    except FeatureStoreError as exc:
        raise ConformanceError(check, str(exc)) from exc


def _contract(transform: Transform, params: Params, frame: pl.DataFrame, ctx: TransformContext,
              check: str) -> pl.DataFrame:
    result = _run(transform, frame, params, ctx, check)
    try:
        return check_contract(transform, params, frame, result, ctx)
    except FeatureStoreError as exc:
        raise ConformanceError(check, str(exc)) from exc


def _same(check: str, what: str, expected: pl.DataFrame, actual: pl.DataFrame, ids: list[str],
          features: list[str], rtol: float, atol: float) -> None:
    diff = first_difference(expected, actual, ids, features, rtol=rtol, atol=atol)
    if diff is None:
        return
    row = ", ".join(f"{k}={v}" for k, v in diff["row"].items())
    if diff["feature"] is None:
        raise ConformanceError(check, f"{what}: the row ({row}) is missing from one of the runs")
    raise ConformanceError(check, f"{what}: feature {diff['feature']!r} at ({row}) is "
                                  f"{diff['left']!r} in one run and {diff['right']!r} in the other")


def assert_transform_conforms(
    transform: Transform,
    params: Params,
    frame: pl.DataFrame | None = None,
    *,
    keys: Sequence[str] = ("driver_id",),
    time_column: str = EVENT_TIMESTAMP,
    available_column: str = AVAILABLE_AT,
    seed: int = 0,
    budget: float = math.inf,
    samples: int = DEFAULT_SAMPLES,
    plugin: str = "",
    rtol: float = 1e-9,
    atol: float = 1e-12,
) -> pl.DataFrame:
    """Run every conformance check on ``transform`` with ``params``; return its output.

    ``frame`` defaults to ``sample_laps()``; ``keys`` are its entity columns. The checks, each a
    guarantee when it passes:

    - ``params``: ``output_columns(params, input_schema)`` accepts the params and declares no
      column that would overwrite a key or time column.
    - ``contract``: the output is a polars frame with exactly the declared schema (keys and times
      as in the input plus the declared columns and dtypes), one row per input row, and the same
      keys, ``event_timestamp`` and ``available_at`` values (what the materializer checks).
    - ``lazy``: the transform returns a ``LazyFrame`` (it composes with the streaming engine).
    - ``determinism``: two runs on the same input give the same output.
    - ``unsorted``: the output does not depend on the order of the input rows (shuffled and
      reversed input give the sorted input's values), so the transform sorts what it needs.
    - ``empty``: an input with no rows gives an output with no rows and the declared schema.
    - ``isolation``: each entity's values are the same when it is computed alone, so the transform
      only reads its own entity's rows; for a group-scope transform, each group's (the rows that
      share the values of ``transform.group_columns(params)``) when it is computed alone. Up to 8
      entities or groups, chosen with ``seed``. This is what lets causality verification check
      many entities or groups in one rerun.
    - ``causality``: ``verify_causality`` exhaustively: every entity (entity scope) or group
      (group scope, whose cut removes every entity's later rows) cut at each of its distinct
      ``available_at`` values; no value changes when the rows available after the cut are
      removed. An exhaustive check costs about (rows x rows per entity or group) / 2 rows
      recomputed: keep ``frame`` small (``sample_laps`` is), or pass a finite ``budget`` (rows)
      and ``samples`` to check a prefix of the verifier's priority order instead.
    - ``lookback``: when ``transform.lookback(params)`` is a number k, dropping an entity's
      earliest rows does not change the values of rows that have at least k earlier rows left, so
      incremental materialization may recompute only the new rows plus k.

    Floats are compared within ``rtol`` / ``atol`` (NaN equals NaN, null equals null), except in
    ``determinism``, which allows only 1e-12 (relative and absolute): Polars' parallel
    aggregations may add floats in a different order from one run to the next.
    """
    frame = sample_laps(seed=seed) if frame is None else frame
    ctx = TransformContext(tuple(keys), time_column, available_column)
    ids = [*ctx.keys, time_column, available_column]
    name = transform.name

    try:
        declared = declared_output_schema(transform, params, frame.schema, ctx)
    except FeatureStoreError as exc:
        raise ConformanceError("params", str(exc)) from exc
    features = [c for c in declared if c not in ids]

    ordered = frame.sort(entity_order(ctx), nulls_last=True, maintain_order=True)
    out = _contract(transform, params, ordered, ctx, "contract")

    if not isinstance(_run(transform, ordered, params, ctx, "lazy"), pl.LazyFrame):
        raise ConformanceError("lazy", f"transform {name!r} returned an eager DataFrame; return "
                                       "a LazyFrame")

    again = _contract(transform, params, ordered, ctx, "determinism")
    _same("determinism", "two runs on the same input differ", out, again, ids, features,
          1e-12, 1e-12)

    rng = random.Random(seed)
    shuffled = ordered.sample(fraction=1.0, shuffle=True, seed=rng.randrange(2**31))
    for label, variant in (("shuffled", shuffled), ("reversed", ordered.reverse())):
        other = _contract(transform, params, variant, ctx, "unsorted")
        _same("unsorted", f"the output changes when the input rows are {label}", out, other, ids,
              features, rtol, atol)

    _contract(transform, params, ordered.head(0), ctx, "empty")

    _check_isolation(transform, params, ordered, out, ctx, rng, features, rtol, atol)

    try:
        verify_causality(transform, params, ordered, ctx, output=out, budget=budget,
                         samples=samples, seed=seed, plugin=plugin, rtol=rtol, atol=atol)
    except FeatureStoreError as exc:
        raise ConformanceError("causality", str(exc)) from exc

    k = transform.lookback(params)
    if k is not None:
        _check_lookback(transform, params, ordered, out, ctx, int(k), rng, features, rtol, atol)
    return out


def _check_isolation(transform: Transform, params: Params, ordered: pl.DataFrame,
                     out: pl.DataFrame, ctx: TransformContext, rng: random.Random,
                     features: list[str], rtol: float, atol: float) -> None:
    """Up to 8 entities (or groups) computed alone give their full-run values."""
    ids = [*ctx.keys, ctx.time_column, ctx.available_column]
    if transform.scope == "group":
        try:
            units = list(transform.group_columns(params))
        except Exception as exc:
            raise ConformanceError("isolation", f"group_columns raised {type(exc).__name__}: "
                                                f"{exc}") from exc
        missing = [c for c in units if c not in ordered.columns]
        if missing:
            raise ConformanceError("isolation", f"group column(s) {', '.join(missing)} not in "
                                                "the input")
        kind, reads = "group", "rows outside its group"
        # The output need not carry the group columns: take them from the input, by row identity.
        full = out.join(ordered.select(*ids, *[c for c in units if c not in ids]).unique(),
                        on=ids, how="left", nulls_equal=True)
    else:
        units, kind, reads, full = list(ctx.keys), "entity", "other entities' rows", out
    if not units:
        return
    values = ordered.select(units).unique(maintain_order=True).rows()
    picked = values if len(values) <= 8 else rng.sample(values, 8)
    for value in picked:
        mask = pl.all_horizontal([pl.col(k).eq_missing(pl.lit(v, dtype=ordered.schema[k]))
                                  for k, v in zip(units, value, strict=True)])
        alone = _contract(transform, params, ordered.filter(mask), ctx, "isolation")
        _same("isolation", f"{kind} {dict(zip(units, value, strict=True))} computed alone "
              f"differs from the full run (the transform reads {reads})",
              full.filter(mask).select(out.columns), alone, ids, features, rtol, atol)


def _check_lookback(transform: Transform, params: Params, ordered: pl.DataFrame,
                    out: pl.DataFrame, ctx: TransformContext, k: int, rng: random.Random,
                    features: list[str], rtol: float, atol: float) -> None:
    """Drop each entity's rows before a random event time; rows with k earlier rows left agree."""
    keys, tcol = list(ctx.keys), ctx.time_column
    ids = [*keys, tcol, ctx.available_column]
    times = ordered.group_by(keys, maintain_order=True).agg(pl.col(tcol).unique().sort())
    cuts = []
    for row in times.iter_rows(named=True):
        distinct = row[tcol]
        cuts.append(distinct[rng.randrange(1, len(distinct))] if len(distinct) > 1 else None)
    cut_frame = times.select(keys).with_columns(
        pl.Series("__fs_from", cuts, dtype=ordered.schema[tcol]))
    tagged = ordered.join(cut_frame, on=keys, how="left", nulls_equal=True, maintain_order="left")
    trimmed = tagged.filter(pl.col("__fs_from").is_null() | (pl.col(tcol) >= pl.col("__fs_from")))
    dropped = tagged.height - trimmed.height
    if dropped == 0:
        return
    partial = _contract(transform, params, trimmed.drop("__fs_from"), ctx, "lookback")
    # A row keeps its full-run value when at least k rows of its entity precede it after trimming.
    position = pl.int_range(pl.len()).over(keys)
    enough = (
        partial.sort(entity_order(ctx), nulls_last=True, maintain_order=True)
        .with_columns(position.alias("__fs_pos"))
        .filter(pl.col("__fs_pos") >= k)
        .drop("__fs_pos")
    )
    full = out.join(enough.select(ids), on=ids, how="semi", nulls_equal=True)
    _same("lookback", f"lookback({dict(params)}) is {k} but values change when earlier rows "
          "are dropped", full, enough, ids, features, rtol, atol)


__all__ = ["CHECKS", "ConformanceError", "assert_transform_conforms", "sample_laps"]
