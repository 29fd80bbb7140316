"""A zoo of look-ahead transforms and of safe look-alikes, with lap data that hides them.

Used by ``tests/test_leak_zoo.py`` (every leak caught, no control flagged) and
``benchmarks/leak_zoo.py`` (the catch table). ``laps(seed, rate)`` builds at least 100k rows: 4
fields of 50 drivers racing races of up to 50 laps, as many races as it takes (drivers retire
more often at a higher rate). Three situations occur at ``rate`` per row, placed
at random: a null lap time, a pit stop (the ``pit`` flag; the tyre ``compound`` changes there) and
a driver retiring after a lap (the rest of that race is missing). Every dataset holds at least two
of each situation in a race published lap by lap, two of them a null on a lap 1 (so that every
leak below is present whatever the seed). One race in five is published at once when the session
ends (every lap shares one ``available_at``). Rows are sorted by driver and time, as an ingested
snapshot is.

Each leak reads the future in one way; many only at the rare rows above, which is what makes them
hard to catch. Each control uses the same columns, nulls, gaps and drop-outs, causally.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import polars as pl

from featurestore.cutplan import CutPlan, plan_cuts
from featurestore.errors import LeakageError
from featurestore.transforms import Transform, TransformContext, entity_order
from featurestore.verification import verify_causality

CTX = TransformContext(("driver_id",))
FIELDS, DRIVERS, LAPS = 4, 50, 50
ROWS = 100_000
RATES = (0.001, 0.01, 0.1)
LAP = pl.col("lap_time")
T = pl.col("event_timestamp")
HOUR_US = 3_600_000_000


def laps(seed: int, rate: float) -> pl.DataFrame:
    """At least ``ROWS`` lap rows; deterministic for (seed, rate)."""
    rng = np.random.default_rng([seed, int(rate * 1e6)])
    expected_laps = (1 - (1 - rate) ** LAPS) / rate  # a race's laps when retiring at `rate`
    races = math.ceil(ROWS / (FIELDS * DRIVERS * expected_laps) * 1.05)
    n_pairs = FIELDS * DRIVERS * races
    field = np.repeat(np.arange(FIELDS), DRIVERS * races)
    driver = field * DRIVERS + np.tile(np.repeat(np.arange(DRIVERS), races), FIELDS) + 1
    race = np.tile(np.arange(races), FIELDS * DRIVERS)
    race_id = 1000 + field * 1000 + race
    at_once = rng.random((FIELDS, races)) < 0.2
    at_once[:, 0] = False  # the first race of every field is published lap by lap
    once = at_once[field, race]
    # A driver retires after lap k with probability `rate` per lap: his race has k laps.
    retire = rng.geometric(rate, n_pairs)
    live = np.flatnonzero(~once)
    forced = rng.choice(live, 2, replace=False)
    retire[forced] = np.minimum(retire[forced], rng.integers(5, LAPS - 5, 2))
    count = np.minimum(retire, LAPS)
    rows = np.repeat(np.arange(n_pairs), count)
    lap = np.arange(rows.size) - np.repeat(np.cumsum(count) - count, count) + 1
    n = rows.size
    start_us = (datetime(2024, 2, 18, 19, tzinfo=UTC).timestamp() * 1e6
                + race[rows] * 7 * 24 * HOUR_US + field[rows] * HOUR_US)
    pace = 90.0 + rng.normal(0, 0.8, FIELDS * DRIVERS + 1)
    lap_time = pace[driver[rows]] + rng.normal(0, 0.5, n)
    event_us = (start_us + lap * 90_000_000 + (driver[rows] % DRIVERS) * 700_000
                + rng.integers(0, 500_000, n)).astype(np.int64)
    end_us = (start_us + (LAPS + 2) * 90_000_000 + 600_000_000).astype(np.int64)
    avail_us = np.where(once[rows], end_us, event_us + 2_000_000)
    null = rng.random(n) < rate
    pit = (rng.random(n) < rate) & (lap > 1)
    live_rows = np.flatnonzero(~once[rows] & (lap > 2) & (lap < count[rows] - 2))
    null[rng.choice(live_rows, 2, replace=False)] = True
    pit[rng.choice(live_rows, 2, replace=False)] = True
    first_laps = np.flatnonzero(~once[rows] & (lap == 1) & (count[rows] > 3))
    null[rng.choice(first_laps, 2, replace=False)] = True
    stint = np.cumsum(pit | (lap == 1))
    compounds = np.array(["SOFT", "MEDIUM", "HARD"])
    frame = pl.DataFrame({
        "driver_id": driver[rows].astype(np.int64),
        "event_timestamp": pl.Series(event_us).cast(pl.Datetime("us", "UTC")),
        "available_at": pl.Series(avail_us).cast(pl.Datetime("us", "UTC")),
        "race_id": race_id[rows].astype(np.int64),
        "lap": lap.astype(np.int32),
        "lap_time": np.where(null, np.nan, lap_time),
        "pit": pit,
        "compound": compounds[stint % 3],
    }).with_columns(pl.col("lap_time").fill_nan(None))
    # In the order of an ingested snapshot (what the materializer verifies).
    return frame.sort("driver_id", "event_timestamp", "available_at")


@dataclass(frozen=True)
class Case:
    transform: Transform
    kind: str
    """What it does, in a few words (the catch table's row label)."""


def _entity(name: str, build: Callable[[list[str]], pl.Expr], dtype: pl.DataType = pl.Float64
            ) -> Transform:
    """An entity-scope transform computing ``build(keys)`` in causal order."""

    def fn(frame: pl.LazyFrame, params: object, ctx: TransformContext) -> pl.LazyFrame:
        keys = list(ctx.keys)
        return frame.sort([*entity_order(ctx), "lap_time"], nulls_last=True).select(
            *keys, ctx.time_column, ctx.available_column, build(keys).cast(dtype).alias("f"))

    return Transform(name, fn, lambda params, schema: {"f": dtype})


def _group(name: str, groups: list[str], build: Callable[[list[str]], pl.Expr],
           dtype: pl.DataType = pl.Float64) -> Transform:
    """A group-scope transform over ``groups`` computing ``build(groups)``, which must not
    depend on the order of the rows (a median, a rank)."""

    def fn(frame: pl.LazyFrame, params: object, ctx: TransformContext) -> pl.LazyFrame:
        return frame.select(
            *ctx.keys, ctx.time_column, ctx.available_column, build(groups).cast(dtype).alias("f"))

    return Transform(name, fn, lambda params, schema: {"f": dtype}, scope="group",
                     group_columns=lambda params: groups)


def _field_median_so_far(frame: pl.LazyFrame, params: object,
                         ctx: TransformContext) -> pl.LazyFrame:
    """Same-lap field median over the rows of the lap available no later than the row."""
    group = ["race_id", "lap"]
    size = int(frame.group_by(group).len().select(pl.col("len").max()).collect().item() or 1)
    running = LAP.rolling_median(window_size=size, min_samples=1).over(group)
    return (frame.sort([*group, ctx.available_column, "lap_time", *ctx.keys], nulls_last=True)
            .with_columns(running.alias("f"))
            # Rows available at the same moment see each other: the value after the last of them.
            .with_columns(pl.col("f").last().over([*group, ctx.available_column]))
            .select(*ctx.keys, ctx.time_column, ctx.available_column, "f"))


SECONDS = 1e-6
LEAKS: dict[str, Case] = {c.transform.name: c for c in [
    Case(_entity("bfill_null", lambda k: LAP.backward_fill().over(k)),
         "backward fill of a null"),
    Case(_entity("interpolate_null", lambda k: LAP.interpolate().over(k)),
         "interpolation across a null"),
    Case(_entity("ffill_bfill_race", lambda k: LAP.forward_fill().backward_fill()
                 .over([*k, "race_id"])), "forward then backward fill in a race"),
    Case(_entity("retires_after_lap", lambda k: (
        (T.shift(-1) - T > pl.duration(hours=1)).fill_null(False) & (pl.col("lap") < LAPS)).over(k),
        pl.Boolean), "drop-out flag: no more laps in this race"),
    Case(_entity("retires_next_lap", lambda k: (
        (T.shift(-1) - T < pl.duration(hours=1)).fill_null(False)
        & (T.shift(-2) - T.shift(-1) > pl.duration(hours=1)).fill_null(False)
        & (pl.col("lap") + 1 < LAPS)).over(k), pl.Boolean),
         "drop-out warning: the lap before the last"),
    Case(_entity("pits_next_lap", lambda k: pl.col("pit").shift(-1).fill_null(False).over(k),
                 pl.Boolean), "shift(-1) of a rare event"),
    Case(_entity("pits_left_in_race", lambda k: (
        pl.col("pit").cast(pl.Int32).sum() - pl.col("pit").cast(pl.Int32).cum_sum())
        .over([*k, "race_id"]), pl.Int32), "rare events still to come in the race"),
    Case(_entity("next_lap_time", lambda k: LAP.shift(-1).over(k)), "shift(-1)"),
    Case(_entity("centred_window", lambda k: LAP.rolling_mean(5, center=True, min_samples=1)
                 .over(k)), "centred window"),
    Case(_entity("time_to_next_row", lambda k: (T.shift(-1) - T).dt.total_microseconds().over(k)
                 * SECONDS), "time to the next row"),
    Case(_entity("entity_normalised", lambda k: LAP - LAP.mean().over(k)),
         "entity-wide normalisation"),
    Case(_entity("race_best_lap", lambda k: LAP.min().over([*k, "race_id"])),
         "best lap of the whole race"),
    Case(_group("field_median_whole_lap", ["race_id", "lap"],
                lambda g: LAP - LAP.median().over(g)), "group: median of the whole lap's field"),
    Case(_group("field_median_whole_race", ["race_id"], lambda g: LAP.median().over(g)),
         "group: median of the whole race"),
    Case(_group("field_rank_whole_lap", ["race_id", "lap"], lambda g: LAP.rank().over(g)),
         "group: rank in the whole lap's field"),
    Case(_group("field_median_race_as_lap", ["race_id", "lap"],
                lambda g: LAP.median().over("race_id")),
         "group: whole-race median, declared per lap"),
]}

TESTED = (
    "bfill_null", "interpolate_null", "ffill_bfill_race", "retires_after_lap", "retires_next_lap",
    "pits_next_lap", "next_lap_time", "centred_window", "time_to_next_row", "entity_normalised",
    "field_median_whole_lap", "field_rank_whole_lap", "field_median_race_as_lap",
)
"""The leaks the test suite runs on every seed (one plan per scope and dataset); the benchmark
runs them all."""

CONTROLS: dict[str, Case] = {c.transform.name: c for c in [
    Case(_entity("expanding_mean_before", lambda k: (
        (LAP.cum_sum().over(k) - LAP.fill_null(0))
        / (LAP.cum_count().over(k) - LAP.is_not_null().cast(pl.Int64)))),
        "mean of the earlier laps"),
    Case(_entity("ffill_null", lambda k: LAP.forward_fill().over(k)), "forward fill of a null"),
    Case(_entity("previous_lap_time", lambda k: LAP.shift(1).over(k)), "shift(1)"),
    Case(_entity("trailing_window", lambda k: LAP.rolling_mean(5, min_samples=1).over(k)),
         "trailing window"),
    Case(_entity("nulls_so_far", lambda k: LAP.is_null().cum_sum().over(k), pl.Int64),
         "nulls so far"),
    Case(_entity("time_since_previous", lambda k: (T - T.shift(1)).dt.total_microseconds()
                 .over(k) * SECONDS), "time since the previous row"),
    Case(_entity("back_after_gap", lambda k: (T - T.shift(1) > pl.duration(hours=1))
                 .fill_null(True).over(k), pl.Boolean), "first lap after a gap"),
    Case(_entity("laps_run_in_race", lambda k: pl.col("lap").cum_count().over([*k, "race_id"]),
                 pl.Int64), "laps run so far in the race (drop-outs)"),
    Case(_entity("pitted_last_lap", lambda k: pl.col("pit").shift(1).fill_null(False).over(k),
                 pl.Boolean), "shift(1) of a rare event"),
    Case(_entity("race_best_so_far", lambda k: LAP.cum_min().over([*k, "race_id"])),
         "best lap so far in the race"),
    Case(_entity("ewm_pace", lambda k: LAP.ewm_mean(alpha=0.3, ignore_nulls=True).over(k)),
         "exponentially weighted mean"),
    Case(Transform("field_median_so_far", _field_median_so_far,
                   lambda params, schema: {"f": pl.Float64}, scope="group",
                   group_columns=lambda params: ["race_id", "lap"]),
         "group: same-lap field median so far"),
    Case(_group("road_position", ["race_id", "lap"],
                lambda g: pl.col("available_at").rank("max").over(g), pl.UInt32),
         "group: cars across the line so far"),
]}


@dataclass
class Outcome:
    """One verification of the zoo: which case, on which data, what happened."""

    name: str
    leak: bool
    seed: int
    rate: float
    caught: bool
    message: str
    seconds: float
    mode: str = ""


def run(seeds: Sequence[int], rates: Sequence[float] = RATES, *,
        leaks: Sequence[str] | None = None, controls: Sequence[str] | None = None,
        control_seeds: Sequence[int] | None = None, control_budget: float | None = None
        ) -> Iterator[Outcome]:
    """Verify each leak (and control) on each (seed, rate) dataset, made once and shared.

    Controls run on ``control_seeds`` (default: every seed) with ``control_budget`` rows (default:
    the verifier's default budget). The plan for each scope is made once per dataset, as
    ``verify_causality`` would make it.
    """
    leaks = list(LEAKS) if leaks is None else list(leaks)
    controls = list(CONTROLS) if controls is None else list(controls)
    control_seeds = list(seeds) if control_seeds is None else list(control_seeds)
    for seed in seeds:
        for rate in rates:
            frame = laps(seed, rate)
            plans: dict[tuple[object, ...], CutPlan] = {}
            cases = [(n, True) for n in leaks]
            if seed in control_seeds:
                cases += [(n, False) for n in controls]
            for name, leak in cases:
                transform = (LEAKS if leak else CONTROLS)[name].transform
                groups = list(transform.group_columns({})) if transform.scope == "group" else []
                budget = None if leak else control_budget
                key = (transform.scope, tuple(groups), budget)
                started = time.perf_counter()
                if key not in plans:
                    plans[key] = plan_cuts(frame, CTX, scope=transform.scope,
                                           group_columns=groups, budget=budget)
                try:
                    report = verify_causality(transform, {}, frame, CTX, plan=plans[key])
                    caught, message, mode = False, str(report), report.mode
                except LeakageError as exc:
                    caught, message, mode = True, str(exc), ""
                yield Outcome(name, leak, seed, rate, caught, message,
                              time.perf_counter() - started, mode)
