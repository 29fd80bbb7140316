"""Hand-written Polars baselines for the ``rolling`` and ``falloff`` transforms, and a lap generator.

``hand_rolling`` / ``hand_falloff`` compute, in plain Polars the way a competent user would write
it, exactly the columns the transforms produce with ``rolling_params()`` / ``falloff_params()``
(same names, dtypes, values up to float rounding, and row order). ``make_laps`` builds a
deterministic laps frame. Run this file to time both on 10M laps / 10k drivers::

    python benchmarks/materialize_polars.py [n_laps] [n_drivers] [repeats]
"""

from __future__ import annotations

import resource
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np
import polars as pl

LAPS_PER_RACE = 300
KEYS = ("driver_id",)
ORDER = ("event_timestamp", "available_at")


def make_laps(n_laps: int, n_drivers: int, seed: int = 0) -> pl.DataFrame:
    """A deterministic laps frame, rows in feed order (by event time, drivers interleaved).

    Columns: driver_id Int32, event_timestamp / available_at Datetime(us, UTC) (available one
    second after the lap), lap Int32 (1..300 within a race), position Int32 (1..40), lap_time
    Float64 (seconds), pit Boolean, caution Boolean, and race_id Int32. Each driver gets
    ``n_laps // n_drivers`` laps (the first ``n_laps % n_drivers`` drivers one more), run as
    consecutive weekly races of 300 laps. Caution periods are shared by all drivers of a race;
    lap times grow with tyre age and jump on caution and pit laps. No nulls.
    """
    if n_drivers < 1 or n_laps < 0:
        raise ValueError("need n_drivers >= 1 and n_laps >= 0")
    rng = np.random.default_rng(seed)
    per = np.full(n_drivers, n_laps // n_drivers, dtype=np.int64)
    per[: n_laps % n_drivers] += 1
    driver = np.repeat(np.arange(1, n_drivers + 1, dtype=np.int32), per)
    starts = np.concatenate([[0], np.cumsum(per)[:-1]]).astype(np.int64)
    pos_in_driver = np.arange(n_laps, dtype=np.int64) - np.repeat(starts, per)
    race = pos_in_driver // LAPS_PER_RACE
    lap = (pos_in_driver % LAPS_PER_RACE + 1).astype(np.int32)

    n_races = int(race.max()) + 1 if n_laps else 1
    caution_table = np.zeros((n_races, LAPS_PER_RACE + 1), dtype=bool)
    for r in range(n_races):
        for start in rng.integers(10, LAPS_PER_RACE - 10, size=4):
            caution_table[r, start : start + rng.integers(4, 7)] = True
    caution = caution_table[race, lap]
    caution_start = caution & ~caution_table[race, lap - 1]
    pit = ((rng.random(n_laps) < 0.012) & ~caution) | (caution_start & (rng.random(n_laps) < 0.7))
    pit &= lap > 1

    # tyre age since the race start or the last pit lap, for realistic lap times
    index = np.arange(n_laps, dtype=np.int64)
    stint_start = np.maximum.accumulate(np.where(pit | (lap == 1), index, 0))
    age = index - stint_start + 1
    skill = rng.normal(0.0, 0.4, n_drivers + 1)
    lap_time = (
        30.0
        + skill[driver]
        + 0.05 * age
        + rng.normal(0.0, 0.25, n_laps)
        + np.where(caution, 22.0, 0.0)
        + np.where(pit, 24.0, 0.0)
    )
    rank = np.argsort(np.argsort(skill)) % 40  # 0 = fastest of its field
    position = np.clip(np.rint(rank[driver] + 1 + rng.normal(0.0, 3.0, n_laps)), 1, 40)

    base = np.datetime64("2024-02-18T19:30:00", "us").astype(np.int64)
    event_us = (
        base
        + race * 7 * 86_400_000_000
        + lap.astype(np.int64) * 31_000_000
        + (driver.astype(np.int64) % 40) * 50_000
    )
    frame = pl.DataFrame(
        {
            "driver_id": driver,
            "event_timestamp": pl.Series(event_us, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "lap": lap,
            "position": position.astype(np.int32),
            "lap_time": lap_time,
            "pit": pit,
            "caution": caution,
            "race_id": race.astype(np.int32),
        }
    )
    frame = frame.with_columns(
        available_at=pl.col("event_timestamp") + pl.duration(seconds=1)
    ).select(
        "driver_id",
        "event_timestamp",
        "available_at",
        "lap",
        "position",
        "lap_time",
        "pit",
        "caution",
        "race_id",
    )
    return frame.sort("event_timestamp", "driver_id")


# ------------------------------------------------------------------------------------ rolling


def rolling_params(
    position_windows: Sequence[int] = (10, 20, 50),
    lap_time_window: int = 10,
    lap_time_mean_windows: Sequence[int] = (20, 50),
) -> dict:
    """Params for the ``rolling`` transform matching ``hand_rolling`` (15 columns by default)."""
    return {
        "features": [
            {
                "column": "position",
                "windows": list(position_windows),
                "include_current": False,
                "aggs": ["mean", "min"],
                "name": {
                    "mean": "avg_position_last_{window}l",
                    "min": "best_position_last_{window}l",
                },
            },
            {
                "column": "position",
                "indicator": {"eq": 1},
                "windows": list(position_windows),
                "include_current": False,
                "aggs": ["sum"],
                "name": "laps_led_last_{window}l",
            },
            {
                "column": "lap_time",
                "windows": [lap_time_window],
                "include_current": False,
                "aggs": ["mean", "std", "min", "max"],
                "name": "lap_time_{agg}_last_{window}l",
            },
            {
                "column": "lap_time",
                "windows": list(lap_time_mean_windows),
                "include_current": False,
                "aggs": ["mean"],
                "name": "lap_time_{agg}_last_{window}l",
            },
        ]
    }


# One order serving both hand-written views: (keys, times) identify a lap in the generated data,
# so the tie-breaking columns after them never reorder anything (results are checked equal).
SORT_ONCE = [*KEYS, *ORDER, "lap", "race_id", "position", "lap_time", "pit", "caution"]


def hand_rolling(
    lf: pl.LazyFrame,
    keys: Sequence[str] = KEYS,
    position_windows: Sequence[int] = (10, 20, 50),
    lap_time_window: int = 10,
    lap_time_mean_windows: Sequence[int] = (20, 50),
    presorted: bool = False,
) -> pl.LazyFrame:
    """Windows over the previous N laps of each driver (the current lap excluded).

    ``presorted``: ``lf`` is already sorted by ``SORT_ONCE`` (skip the sort)."""
    keys = list(keys)
    position = pl.col("position").shift(1)
    led = (pl.col("position") == 1).cast(pl.Int64).shift(1)
    lap_time = pl.col("lap_time").shift(1)
    columns = []
    for w in position_windows:
        columns += [
            position.rolling_mean(w, min_samples=1).over(keys).alias(f"avg_position_last_{w}l"),
            position.rolling_min(w, min_samples=1).over(keys).alias(f"best_position_last_{w}l"),
        ]
    for w in position_windows:
        columns.append(led.rolling_sum(w, min_samples=1).over(keys).alias(f"laps_led_last_{w}l"))
    w = lap_time_window
    columns += [
        lap_time.rolling_mean(w, min_samples=1).over(keys).alias(f"lap_time_mean_last_{w}l"),
        lap_time.rolling_std(w, min_samples=2).over(keys).alias(f"lap_time_std_last_{w}l"),
        lap_time.rolling_min(w, min_samples=1).over(keys).alias(f"lap_time_min_last_{w}l"),
        lap_time.rolling_max(w, min_samples=1).over(keys).alias(f"lap_time_max_last_{w}l"),
    ]
    for w in lap_time_mean_windows:
        columns.append(
            lap_time.rolling_mean(w, min_samples=1).over(keys).alias(f"lap_time_mean_last_{w}l")
        )
    # ties in (keys, times) are broken by the values read, so input order never matters
    order = [*keys, *ORDER, "position", "lap_time"]
    if not presorted:
        lf = lf.sort(order, maintain_order=True)
    return lf.select(*keys, *ORDER, *columns)


# ------------------------------------------------------------------------------------ falloff


def falloff_params(
    first_n: int = 3,
    slope_window: int = 10,
    slope_min_laps: int = 3,
    slow_k: float = 1.05,
    slow_window: int = 5,
) -> dict:
    """Params for the ``falloff`` transform matching ``hand_falloff``."""
    return {
        "lap_time_column": "lap_time",
        "lap_column": "lap",
        "group_by": ["race_id"],
        "pit_column": "pit",
        "caution_column": "caution",
        "first_n": first_n,
        "slope_window": slope_window,
        "slope_min_laps": slope_min_laps,
        "slow_k": slow_k,
        "slow_window": slow_window,
        "slow_min_laps": 1,
    }


def hand_falloff(
    lf: pl.LazyFrame,
    keys: Sequence[str] = KEYS,
    first_n: int = 3,
    slope_window: int = 10,
    slope_min_laps: int = 3,
    slow_k: float = 1.05,
    slow_window: int = 5,
    presorted: bool = False,
) -> pl.LazyFrame:
    """Stints split at pit laps (per driver and race); stats over the stint's clean laps.

    Clean-lap statistics are computed on the clean laps alone and attached to every lap with an
    as-of join on the last clean lap at or before it. Assumes no null laps or lap times.
    """
    keys = list(keys)
    part = [*keys, "race_id"]
    stint = [*part, "stint"]
    pit = pl.col("pit").fill_null(False)
    if not presorted:
        lf = lf.sort(
            [*keys, *ORDER, "lap", "race_id", "lap_time", "pit", "caution"], maintain_order=True
        )
    laps = (
        lf.with_row_index("_row")
        .with_columns(
            stint=(
                (pit & ~pit.shift(1).over(part))
                .fill_null(False)
                .cast(pl.Int32)
                .cum_sum()
                .over(part)
                + 1
            ),
            clean=~pit & ~pl.col("caution").fill_null(False),
        )
        .with_columns(tyre_age=pl.col("lap") - pl.col("lap").first().over(stint) + 1)
    )
    age, lap_time = pl.col("tyre_age").cast(pl.Float64), pl.col("lap_time")
    nth = pl.int_range(1, pl.len() + 1).over(stint)
    clean = laps.filter("clean").select(
        "_row",
        *stint,
        best=lap_time.cum_min().over(stint),
        first_mean=pl.when(nth >= first_n).then(lap_time.head(first_n).mean().over(stint)),
        slope=(
            pl.rolling_cov(age, lap_time, window_size=slope_window, min_samples=slope_min_laps)
            / age.rolling_var(slope_window, min_samples=slope_min_laps)
        ).over(stint),
        median_to_here=lap_time.rolling_median(slow_window, min_samples=1).over(stint),
        median_before=lap_time.shift(1).rolling_median(slow_window, min_samples=1).over(stint),
    )
    joined = laps.join_asof(clean, on="_row", by=stint, strategy="backward", check_sortedness=False)
    median = pl.when("clean").then("median_before").otherwise("median_to_here")
    return joined.select(
        *keys,
        *ORDER,
        "stint",
        pl.col("tyre_age").cast(pl.Int32),
        (lap_time - pl.col("best")).alias("lap_time_delta_best"),
        (lap_time - pl.col("first_mean")).alias("lap_time_delta_first_n"),
        pl.col("slope").alias("deg_slope"),
        (lap_time > slow_k * median).alias("slow_lap"),
    )


# ------------------------------------------------------------------------------------ timing


def _compare(name: str, got: pl.DataFrame, want: pl.DataFrame) -> None:
    from polars.testing import assert_frame_equal

    assert_frame_equal(
        got.select(want.columns), want, check_exact=False, rel_tol=1e-9, abs_tol=1e-9
    )
    print(f"  {name}: equal ({got.height} rows, {got.width} columns)")


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (steadier than wall time on a shared machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: Sequence[str]) -> None:
    from featurestore_plugins.falloff import FALLOFF
    from featurestore_plugins.rolling import ROLLING

    from featurestore.transforms import TransformContext

    n_laps = int(argv[0]) if argv else 10_000_000
    n_drivers = int(argv[1]) if len(argv) > 1 else 10_000
    repeats = int(argv[2]) if len(argv) > 2 else 3
    started = time.perf_counter()
    laps = make_laps(n_laps, n_drivers, seed=7)
    print(f"make_laps({n_laps:,}, {n_drivers:,}): {time.perf_counter() - started:.2f}s")
    ctx = TransformContext(keys=KEYS)
    cases = {
        "rolling": (
            lambda: hand_rolling(laps.lazy()),
            lambda: ROLLING(laps.lazy(), rolling_params(), ctx),
        ),
        "falloff": (
            lambda: hand_falloff(laps.lazy()),
            lambda: FALLOFF(laps.lazy(), falloff_params(), ctx),
        ),
    }
    for name, (hand, plugin) in cases.items():
        wall: dict[str, list[float]] = {"hand": [], "plugin": []}
        cpu: dict[str, list[float]] = {"hand": [], "plugin": []}
        for _ in range(repeats):  # alternate to share the machine's noise fairly
            for label, build in (("hand", hand), ("plugin", plugin)):
                started, cpu_started = time.perf_counter(), _cpu_seconds()
                result = build().collect()
                wall[label].append(time.perf_counter() - started)
                cpu[label].append(_cpu_seconds() - cpu_started)
                if label == "hand":
                    want = result
                else:
                    got = result
        for unit, times in (("wall", wall), ("cpu", cpu)):
            hand_t, plugin_t = statistics.median(times["hand"]), statistics.median(times["plugin"])
            print(
                f"{name} {unit}: hand {hand_t:.2f}s  plugin {plugin_t:.2f}s  "
                f"ratio {plugin_t / hand_t:.2f} (medians of {repeats}; "
                f"hand {[round(t, 2) for t in times['hand']]}, "
                f"plugin {[round(t, 2) for t in times['plugin']]})"
            )
        _compare(name, got, want)


if __name__ == "__main__":
    main(sys.argv[1:])
