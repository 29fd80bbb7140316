"""A deterministic, synthetic NASCAR Cup season: the quickstart's data.

``generate_season(out_dir, seed=7, n_races=36, n_drivers=40)`` writes seven zstd Parquet files
and returns their paths as a :class:`SeasonFiles`. Everything is drawn from NumPy ``Generator``
streams seeded from ``seed``: the same arguments give identical frames (and identical files).
Each race weekend has its own stream, so the first *k* races of a season are the same whatever
``n_races`` is (for a given ``seed`` and ``n_drivers``).

The data is invented, but shaped on the real 2025 Cup Series (see ``../shared/data/SOURCES.md``):
the 2025 calendar and its tracks (superspeedway, intermediate, short track, road course), real
track lengths, scheduled laps and typical green-flag lap times (Daytona 2.5 mi ~47 s, Charlotte
1.5 mi ~30.6 s, Martinsville 0.526 mi ~20.8 s, Bristol ~15.8 s, Sonoma ~77 s), caution laps
about 2-3x slower than green laps (the pace-car speed), 4-12 cautions a race including the two
stage breaks, pit stops mostly under caution plus green-flag cycles when the fuel window closes,
tyre falloff of 0.03-0.12 s per lap of tyre age (ovals 0.03-0.08), accidents (multi-car pile-ups
at superspeedways), mechanical failures, free passes and wave-arounds, and overtime when a late
caution would end the race under yellow. Driver and team names are fictional. A full 36-race
season with 40 drivers has ~350k race laps (the real 2025 lap data: 342k for 36 races).

Every timestamp is a tz-aware ``Datetime("us", "America/New_York")``. A weekend is Friday
practice, Saturday qualifying, Sunday race; the Saturday-night races of the real calendar
(Atlanta in June, Richmond, Daytona in August, Bristol in September) shift all three sessions a
day earlier. The season crosses both DST changes: the Phoenix race on 2025-03-09 is the first
day of EDT (its Friday practice is EST), and the Phoenix finale on 2025-11-02 is the first day
back on EST. With ``n_races > 36`` the calendar repeats in later years (shifted by whole weeks).

The generator's latent truth (driver skill, team strength, form, set-up) is *not* written to any
file: a model must learn it from the observable columns.

Files and columns
-----------------
``drivers.parquet`` (one row per driver)
    - ``driver_id`` Int32: 1..n_drivers.
    - ``driver_name`` String: fictional, unique.
    - ``team`` String: fictional team name (2-4 cars a team).
    - ``car_number`` Int32: unique.
    - ``manufacturer`` String: Chevrolet / Ford / Toyota (per team).
    - ``full_time`` Boolean: False for the part-time entries (``n_drivers // 10`` drivers), who
      enter about 75% of the races; full-time drivers enter every race.

``tracks.parquet`` (one row per track, 27 tracks)
    - ``track_id`` Int32, ``track_name`` String.
    - ``track_type`` String: ``superspeedway`` | ``intermediate`` | ``short track`` |
      ``road course``.
    - ``length_miles`` Float64.
    - ``scheduled_laps`` Int32: the track's usual race distance (see the schedule's own column).

``schedule.parquet`` (one row per race weekend)
    - ``race_id`` Int32: 1..n_races in date order. ``season`` Int32 (2025, then 2026, ...).
    - ``round`` Int32: 1..36 within the season. ``track_id`` Int32.
    - ``scheduled_laps`` Int32: this race's distance (the Southern 500 is 367 laps, the fall
      Martinsville race 500, ...); the race may run longer (overtime).
    - ``practice_start``, ``practice_end``: the 50-minute practice session.
    - ``qualifying_start``, ``qualifying_end``: single-car qualifying (60 min, 75 on road
      courses); qualifying results are known at ``qualifying_end``.
    - ``green_flag``: start of the race; ``checkered_flag``: the winner crosses the line.
    All six are ``Datetime("us", "America/New_York")``;
    practice_end < qualifying_start < qualifying_end < green_flag < checkered_flag.

``practice_laps.parquet`` (one row per driver and practice lap; sorted race_id, driver_id, lap)
    - ``race_id`` Int32, ``driver_id`` Int32.
    - ``lap`` Int32: 1.. within the driver's practice session.
    - ``run`` Int32: 1.. the run (stint out of the garage); each driver makes 3-5 runs, one of
      them a long run (12-30 laps on ovals, 8-12 on road courses) that shows tyre falloff.
    - ``lap_time`` Float64 seconds (millisecond precision). The first lap of a run is the
      out-lap (~10% slower); the last lap of a run is the in-lap (~12% slower, ``pit`` True).
    - ``lap_timestamp`` Datetime: when the lap was completed; every lap ends before
      ``practice_end``.
    - ``pit`` Boolean: the lap ends on pit road (in-lap).

``qualifying.parquet`` (one row per entrant)
    - ``race_id`` Int32, ``driver_id`` Int32.
    - ``qualifying_position`` Int32: 1..n_entrants (the starting grid; equals
      ``results.start_position``).
    - ``best_lap_time`` Float64 seconds; ``best_speed_mph`` Float64 = length / time.
    - ``session_end`` Datetime: ``qualifying_end`` of the weekend, when the results are known.

``race_laps.parquet`` (one row per car and completed lap; sorted race_id, driver_id, lap)
    - ``race_id`` Int32, ``driver_id`` Int32, ``lap`` Int32: 1..laps_completed.
    - ``lap_timestamp`` Datetime: when the car crossed the line to complete the lap, exactly
      ``green_flag`` + the cumulative sum of the car's ``lap_time`` values.
    - ``race_time`` Float64 seconds: that cumulative sum, the car's elapsed race time at the end
      of the lap (``lap_timestamp`` - ``green_flag``); the leader of a lap has the smallest.
    - ``running_position`` Int32: the car's rank among all cars completing that lap, by the time
      they crossed the line (1..k, unique per (race_id, lap)); lapped cars rank behind every car
      on the lead lap. laps led = count(running_position == 1).
    - ``lap_time`` Float64 seconds (millisecond precision). Lap 1 includes the rolling start,
      the first green lap after a caution (the restart) is ~5% slow.
    - ``pit`` Boolean: the in-lap of a pit stop (the car enters pit road on this lap; the stop
      is timed in this lap). The next lap, the out-lap, is ~2% slow (pit exit, cold tyres).
      The new tyres are fitted during the in-lap: the new stint's first green lap is the lap
      after a ``pit`` lap. (The ``falloff`` plugin counts the pit lap itself as the first row
      of the new stint and leaves it out of its clean laps, which gives the same slopes.)
    - ``caution`` Boolean: the lap (of the leader) ran under yellow. Caution laps are 2-3x slower;
      most stops happen on the second lap of a caution (pit road open).
    Tyre falloff: on green laps, lap time grows linearly with the laps run on the current set
    (a caution lap counts as 0.3 of a lap of wear), at the track's rate of 0.03-0.12 s per lap.

``results.parquet`` (one row per entrant)
    - ``race_id`` Int32, ``driver_id`` Int32, ``start_position`` Int32.
    - ``finish_position`` Int32: 1..n_entrants, by laps completed then by the time the car
      crossed the line on its last lap (for cars that finished, it equals the
      ``running_position`` of their last lap).
    - ``laps_completed`` Int32 (the winner's may exceed ``scheduled_laps``: overtime).
    - ``laps_led`` Int32: count of the car's laps with running_position == 1.
    - ``status`` String: ``running`` for cars that took the checkered flag, else the reason:
      ``accident``, ``dvp`` (damaged vehicle), ``engine``, ``suspension``, ``electrical``,
      ``brakes``, ``transmission``, ``overheating``, ``rear gear``, ``fuel pump``,
      ``vibration``.
    - ``dnf`` Boolean: status != "running" (the car's laps stop after its last lap).
    - ``result_time`` Datetime: when the results are complete, i.e. the moment the last running
      car takes the checkered flag (at or up to about one lap after ``checkered_flag``; never
      before the timestamp of any race lap it summarises).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, fields
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import polars as pl

__all__ = [
    "EASTERN",
    "TRACKS",
    "SeasonFiles",
    "Track",
    "build_season",
    "generate_season",
]

EASTERN = "America/New_York"
_TZ = ZoneInfo(EASTERN)
_TS = pl.Datetime("us", EASTERN)
_UTC_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Track:
    """A real Cup track, with the generator's typical green-flag lap time and tyre falloff."""

    name: str
    track_type: str
    length_miles: float
    scheduled_laps: int
    green_lap_time: float
    """Typical green-flag race lap on fresh tyres, in seconds (2025 lap data, 10th percentile)."""
    falloff: float
    """Seconds lost per lap of tyre age on green laps."""


TRACKS: tuple[Track, ...] = (
    Track("Daytona International Speedway", "superspeedway", 2.5, 200, 46.8, 0.03),
    Track("Atlanta Motor Speedway", "superspeedway", 1.54, 260, 30.3, 0.04),
    Track("Circuit of the Americas", "road course", 2.3, 95, 100.5, 0.1),
    Track("Phoenix Raceway", "short track", 1.0, 312, 28.4, 0.08),
    Track("Las Vegas Motor Speedway", "intermediate", 1.5, 267, 30.2, 0.05),
    Track("Homestead-Miami Speedway", "intermediate", 1.5, 267, 33.9, 0.07),
    Track("Martinsville Speedway", "short track", 0.526, 400, 20.7, 0.03),
    Track("Darlington Raceway", "intermediate", 1.366, 293, 30.9, 0.07),
    Track("Bristol Motor Speedway", "short track", 0.533, 500, 15.8, 0.03),
    Track("Talladega Superspeedway", "superspeedway", 2.66, 188, 49.6, 0.03),
    Track("Texas Motor Speedway", "intermediate", 1.5, 267, 29.4, 0.06),
    Track("Kansas Speedway", "intermediate", 1.5, 267, 31.3, 0.05),
    Track("Charlotte Motor Speedway", "intermediate", 1.5, 400, 30.6, 0.045),
    Track("Nashville Superspeedway", "intermediate", 1.333, 300, 30.2, 0.04),
    Track("Michigan International Speedway", "intermediate", 2.0, 200, 38.2, 0.04),
    Track("Autódromo Hermanos Rodríguez", "road course", 2.42, 100, 95.3, 0.1),
    Track("Pocono Raceway", "intermediate", 2.5, 160, 53.8, 0.04),
    Track("Chicago Street Course", "road course", 2.2, 75, 91.6, 0.08),
    Track("Sonoma Raceway", "road course", 1.99, 110, 76.9, 0.12),
    Track("Dover Motor Speedway", "short track", 1.0, 400, 24.0, 0.04),
    Track("Indianapolis Motor Speedway", "intermediate", 2.5, 160, 51.1, 0.035),
    Track("Iowa Speedway", "short track", 0.875, 350, 24.2, 0.035),
    Track("Watkins Glen International", "road course", 2.45, 90, 74.3, 0.09),
    Track("Richmond Raceway", "short track", 0.75, 400, 23.9, 0.04),
    Track("World Wide Technology Raceway", "intermediate", 1.25, 240, 33.6, 0.045),
    Track("New Hampshire Motor Speedway", "short track", 1.058, 301, 30.6, 0.04),
    Track("Charlotte Motor Speedway Roval", "road course", 2.28, 109, 89.0, 0.1),
)

# The 2025 Cup calendar: (track index, month, day, green-flag hour, minute, scheduled laps),
# Eastern time. Laps differ from the track's usual distance for the Martinsville fall race
# (500), the Southern 500 (367) and the August Daytona race (160).
_CALENDAR_2025: tuple[tuple[int, int, int, int, int, int], ...] = (
    (0, 2, 16, 14, 30, 200), (1, 2, 23, 15, 0, 260), (2, 3, 2, 15, 30, 95),
    (3, 3, 9, 15, 30, 312), (4, 3, 16, 16, 0, 267), (5, 3, 23, 15, 30, 267),
    (6, 3, 30, 15, 30, 400), (7, 4, 6, 15, 30, 293), (8, 4, 13, 15, 30, 500),
    (9, 4, 27, 15, 0, 188), (10, 5, 4, 15, 30, 267), (11, 5, 11, 14, 0, 267),
    (12, 5, 25, 18, 0, 400), (13, 6, 1, 19, 0, 300), (14, 6, 8, 14, 0, 200),
    (15, 6, 15, 15, 30, 100), (16, 6, 22, 14, 0, 160), (1, 6, 28, 19, 0, 260),
    (17, 7, 6, 17, 30, 75), (18, 7, 13, 15, 30, 110), (19, 7, 20, 14, 0, 400),
    (20, 7, 27, 14, 0, 160), (21, 8, 3, 19, 0, 350), (22, 8, 10, 14, 0, 90),
    (23, 8, 16, 19, 0, 400), (0, 8, 23, 19, 30, 160), (7, 8, 31, 18, 0, 367),
    (24, 9, 7, 15, 0, 240), (8, 9, 13, 19, 30, 500), (25, 9, 21, 14, 0, 301),
    (11, 9, 28, 15, 0, 267), (26, 10, 5, 15, 0, 109), (4, 10, 12, 17, 30, 267),
    (9, 10, 19, 14, 0, 188), (6, 10, 26, 14, 0, 500), (3, 11, 2, 15, 0, 312),
)


@dataclass(frozen=True)
class _TypeParams:
    pace_mph: float  # pace-car speed under caution (short tracks: scaled by length)
    quali_factor: float  # single-car qualifying lap / green race lap
    fuel_miles: float  # green-flag fuel window
    tyre_laps: int  # stint cap from tyres
    pit_loss: float  # seconds lost by a green-flag stop
    incident_rate: float  # expected incident cautions (crashes, spins) per race
    debris_rate: float  # expected cautions without a crash
    wreck_mean: float  # mean cars involved in an incident
    big_one: float  # probability an incident is a multi-car pile-up
    pack: float  # drafting: per-lap pull of the lead-lap field toward a tight pack
    noise: float  # lap-to-lap noise, fraction of the lap time
    spread: float  # multiplier on car/driver performance differences
    out_prob: float  # probability an involved car is out (accident)


_TYPE_PARAMS: dict[str, _TypeParams] = {
    "superspeedway": _TypeParams(70.0, 1.045, 100.0, 10_000, 36.0, 4.0, 1.2, 2.0, 0.25,
                                 0.35, 0.003, 0.45, 0.35),
    "intermediate": _TypeParams(57.0, 0.975, 85.0, 10_000, 34.0, 4.0, 2.0, 1.7, 0.0,
                                0.0, 0.005, 1.0, 0.35),
    "short track": _TypeParams(0.0, 0.962, 90.0, 110, 22.0, 4.5, 2.0, 1.7, 0.0,
                               0.0, 0.005, 1.0, 0.30),
    "road course": _TypeParams(43.0, 0.975, 75.0, 10_000, 40.0, 2.5, 1.2, 1.5, 0.0,
                               0.0, 0.005, 1.2, 0.35),
}

_MECHANICAL = ("engine", "suspension", "electrical", "brakes", "transmission", "overheating",
               "rear gear", "fuel pump", "vibration")
_MECHANICAL_P = np.array([0.30, 0.12, 0.12, 0.10, 0.08, 0.08, 0.07, 0.06, 0.07])
_MECHANICAL_RATE = 0.035  # per car and race

_FIRST = ("Austin", "Brad", "Casey", "Dale", "Elliott", "Frankie", "Garrett", "Hailie", "Ivan",
          "Jesse", "Kyle", "Landon", "Mason", "Nolan", "Owen", "Parker", "Quinn", "Riley",
          "Shane", "Tanner", "Ulysses", "Vance", "Wade", "Xavier", "Yancy", "Zane", "Bubba",
          "Cody", "Derek", "Emery", "Flynn", "Grady", "Hank", "Jett", "Kenzie", "Luke",
          "Mack", "Noah", "Rhett", "Toni")
_LAST = ("Ashby", "Barlow", "Calloway", "Dunleavy", "Easley", "Fairbanks", "Gentry", "Holloway",
         "Ingram", "Jessup", "Kincaid", "Lockhart", "Merriweather", "Norwood", "Oakes",
         "Pettigrew", "Quarles", "Ridgeway", "Stallings", "Thornbury", "Underhill", "Vickers",
         "Whitlock", "Yarborough", "Ashcroft", "Blevins", "Crowder", "Dorsey", "Eubanks",
         "Flanagan", "Grissom", "Hargrove", "Kilgore", "Ledford", "McAllister", "Pruitt",
         "Rutledge", "Satterfield", "Tolliver", "Winslow")
_TEAMS = ("Blue Ridge Motorsports", "Piedmont Racing", "Cape Fear Racing", "Tidewater Motorsports",
          "Red Clay Racing", "Catawba Valley Racing", "Lowcountry Motorsports",
          "Iron Horse Racing", "Crescent Racing", "Sandhills Motorsports", "Pine Barrens Racing",
          "Chattahoochee Racing", "Outer Banks Motorsports", "Smoky Mountain Racing",
          "Magnolia Motorsports", "Lake Norman Racing")
_MAKES = ("Chevrolet", "Ford", "Toyota")

_FILES = ("drivers", "tracks", "schedule", "practice_laps", "qualifying", "race_laps", "results")


@dataclass(frozen=True)
class SeasonFiles:
    """Paths of the Parquet files written by :func:`generate_season`."""

    out_dir: Path
    drivers: Path
    tracks: Path
    schedule: Path
    practice_laps: Path
    qualifying: Path
    race_laps: Path
    results: Path

    def as_dict(self) -> dict[str, Path]:
        """``{table name: path}`` for the seven files (``out_dir`` excluded)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "out_dir"}

    def read(self) -> dict[str, pl.DataFrame]:
        """Read all seven files eagerly."""
        return {name: pl.read_parquet(path) for name, path in self.as_dict().items()}


# --------------------------------------------------------------------------------------------
# public entry points
# --------------------------------------------------------------------------------------------


def generate_season(
    out_dir: Path, *, seed: int = 7, n_races: int = 36, n_drivers: int = 40
) -> SeasonFiles:
    """Generate a season and write it to ``out_dir`` (created if missing) as zstd Parquet.

    Files are ``<table>.parquet`` for the seven tables described in the module docstring;
    existing files of those names are overwritten. Deterministic in its arguments.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    frames = build_season(seed=seed, n_races=n_races, n_drivers=n_drivers)
    paths: dict[str, Path] = {}
    for name in _FILES:
        path = out / f"{name}.parquet"
        tmp = out / f".{name}.parquet.tmp"
        frames[name].write_parquet(tmp, compression="zstd", statistics=True)
        tmp.replace(path)
        paths[name] = path
    return SeasonFiles(out_dir=out, **paths)


def build_season(
    *, seed: int = 7, n_races: int = 36, n_drivers: int = 40
) -> dict[str, pl.DataFrame]:
    """Generate a season in memory: ``{table name: DataFrame}`` (see the module docstring)."""
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if n_races < 1:
        raise ValueError(f"n_races must be at least 1, got {n_races}")
    if not 4 <= n_drivers <= len(_FIRST) * len(_LAST):
        raise ValueError(f"n_drivers must be between 4 and {len(_FIRST) * len(_LAST)}")

    drivers, latent = _make_drivers(int(seed), n_drivers)
    tracks = _tracks_frame()
    acc: dict[str, list[np.ndarray]] = {}
    sched_rows: list[dict[str, object]] = []
    form = np.zeros(n_drivers)
    for r in range(n_races):
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 2, r]))
        form = 0.8 * form + 0.6 * rng.standard_normal(n_drivers)
        weekend = _simulate_weekend(rng, r, latent, form)
        sched_rows.append(weekend.pop("schedule"))  # type: ignore[arg-type]
        for key, arr in weekend.items():
            acc.setdefault(key, []).append(arr)  # type: ignore[arg-type]

    def cat(key: str) -> np.ndarray:
        return np.concatenate(acc[key])

    schedule = pl.DataFrame(
        sched_rows,
        schema={
            "race_id": pl.Int32, "season": pl.Int32, "round": pl.Int32, "track_id": pl.Int32,
            "scheduled_laps": pl.Int32,
            "practice_start": _TS, "practice_end": _TS, "qualifying_start": _TS,
            "qualifying_end": _TS, "green_flag": _TS, "checkered_flag": _TS,
        },
        orient="row",
    )
    practice = pl.DataFrame({
        "race_id": pl.Series(cat("p_race"), dtype=pl.Int32),
        "driver_id": pl.Series(cat("p_driver"), dtype=pl.Int32),
        "lap": pl.Series(cat("p_lap"), dtype=pl.Int32),
        "run": pl.Series(cat("p_run"), dtype=pl.Int32),
        "lap_time": pl.Series(cat("p_ms") / 1000.0, dtype=pl.Float64),
        "lap_timestamp": _ts_series(cat("p_ts")),
        "pit": pl.Series(cat("p_pit"), dtype=pl.Boolean),
    })
    qualifying = pl.DataFrame({
        "race_id": pl.Series(cat("q_race"), dtype=pl.Int32),
        "driver_id": pl.Series(cat("q_driver"), dtype=pl.Int32),
        "qualifying_position": pl.Series(cat("q_pos"), dtype=pl.Int32),
        "best_lap_time": pl.Series(cat("q_ms") / 1000.0, dtype=pl.Float64),
        "best_speed_mph": pl.Series(cat("q_mph"), dtype=pl.Float64),
        "session_end": _ts_series(cat("q_end")),
    }).sort("race_id", "qualifying_position")
    race_laps = pl.DataFrame({
        "race_id": pl.Series(cat("l_race"), dtype=pl.Int32),
        "driver_id": pl.Series(cat("l_driver"), dtype=pl.Int32),
        "lap": pl.Series(cat("l_lap"), dtype=pl.Int32),
        "lap_timestamp": _ts_series(cat("l_ts")),
        "race_time": pl.Series(cat("l_race_ms") / 1000.0, dtype=pl.Float64),
        "running_position": pl.Series(cat("l_pos"), dtype=pl.Int32),
        "lap_time": pl.Series(cat("l_ms") / 1000.0, dtype=pl.Float64),
        "pit": pl.Series(cat("l_pit"), dtype=pl.Boolean),
        "caution": pl.Series(cat("l_caution"), dtype=pl.Boolean),
    })
    status = cat("r_status")
    results = pl.DataFrame({
        "race_id": pl.Series(cat("r_race"), dtype=pl.Int32),
        "driver_id": pl.Series(cat("r_driver"), dtype=pl.Int32),
        "start_position": pl.Series(cat("r_start"), dtype=pl.Int32),
        "finish_position": pl.Series(cat("r_finish"), dtype=pl.Int32),
        "laps_completed": pl.Series(cat("r_laps"), dtype=pl.Int32),
        "laps_led": pl.Series(cat("r_led"), dtype=pl.Int32),
        "status": pl.Series(status.tolist(), dtype=pl.String),
        "dnf": pl.Series(status != "running", dtype=pl.Boolean),
        "result_time": _ts_series(cat("r_time")),
    }).sort("race_id", "finish_position")
    return {
        "drivers": drivers,
        "tracks": tracks,
        "schedule": schedule,
        "practice_laps": practice,
        "qualifying": qualifying,
        "race_laps": race_laps,
        "results": results,
    }


# --------------------------------------------------------------------------------------------
# drivers, tracks, calendar
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Latent:
    """The generator's hidden truth about the field (never written out)."""

    driver_id: np.ndarray
    skill: np.ndarray  # standard normal, higher is faster
    team_strength: np.ndarray  # per driver (its team's), standard normal
    affinity: np.ndarray  # (n_drivers, 4) per track type, standard normal
    full_time: np.ndarray  # bool


_TYPE_INDEX = {"superspeedway": 0, "intermediate": 1, "short track": 2, "road course": 3}


def _make_drivers(seed: int, n: int) -> tuple[pl.DataFrame, _Latent]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    n_teams = max(1, math.ceil(n / 2.8))
    team_names = [
        _TEAMS[k] if k < len(_TEAMS) else f"{_TEAMS[k % len(_TEAMS)]} {k // len(_TEAMS) + 1}"
        for k in range(n_teams)
    ]
    team_strength = rng.standard_normal(n_teams)
    team_of = rng.permutation(np.arange(n) % n_teams)
    combos = rng.choice(len(_FIRST) * len(_LAST), size=n, replace=False)
    names = [f"{_FIRST[c // len(_LAST)]} {_LAST[c % len(_LAST)]}" for c in combos]
    numbers = rng.choice(np.arange(1, 100 if n < 99 else 1000), size=n, replace=False)
    skill = rng.standard_normal(n)
    affinity = rng.standard_normal((n, 4))
    full_time = np.ones(n, dtype=bool)
    n_part = n // 10
    if n_part:
        # part-timers: the last ids, a little slower on average
        full_time[n - n_part:] = False
        skill[n - n_part:] -= 0.8
    ids = np.arange(1, n + 1, dtype=np.int32)
    drivers = pl.DataFrame({
        "driver_id": pl.Series(ids, dtype=pl.Int32),
        "driver_name": names,
        "team": [team_names[t] for t in team_of],
        "car_number": pl.Series(numbers, dtype=pl.Int32),
        "manufacturer": [_MAKES[t % len(_MAKES)] for t in team_of],
        "full_time": pl.Series(full_time, dtype=pl.Boolean),
    })
    latent = _Latent(ids, skill, team_strength[team_of], affinity, full_time)
    return drivers, latent


def _tracks_frame() -> pl.DataFrame:
    return pl.DataFrame({
        "track_id": pl.Series(np.arange(1, len(TRACKS) + 1), dtype=pl.Int32),
        "track_name": [t.name for t in TRACKS],
        "track_type": [t.track_type for t in TRACKS],
        "length_miles": pl.Series([t.length_miles for t in TRACKS], dtype=pl.Float64),
        "scheduled_laps": pl.Series([t.scheduled_laps for t in TRACKS], dtype=pl.Int32),
    })


def _epoch_us(value: dt.datetime) -> int:
    delta = value - _UTC_EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _ts_series(us: np.ndarray) -> pl.Series:
    return (
        pl.Series(us.astype(np.int64), dtype=pl.Int64)
        .cast(pl.Datetime("us", "UTC"))
        .dt.convert_time_zone(EASTERN)
    )


# --------------------------------------------------------------------------------------------
# one weekend
# --------------------------------------------------------------------------------------------


def _simulate_weekend(
    rng: np.random.Generator, r: int, latent: _Latent, form: np.ndarray
) -> dict[str, object]:
    season_k, round_idx = divmod(r, len(_CALENDAR_2025))
    track_idx, month, day, hour, minute, sched_laps = _CALENDAR_2025[round_idx]
    trk = TRACKS[track_idx]
    tp = _TYPE_PARAMS[trk.track_type]
    race_id = r + 1

    # calendar (whole weeks later for seasons after 2025, keeping the weekday)
    race_day = dt.date(2025, month, day) + dt.timedelta(weeks=52 * season_k)
    green = dt.datetime.combine(race_day, dt.time(hour, minute), tzinfo=_TZ)
    p_day = race_day - dt.timedelta(days=2)
    q_day = race_day - dt.timedelta(days=1)
    p_start = dt.datetime.combine(p_day, dt.time(15, 0), tzinfo=_TZ) + dt.timedelta(
        minutes=15 * int(rng.integers(0, 13)))
    p_end = p_start + dt.timedelta(minutes=50)
    q_start = dt.datetime.combine(q_day, dt.time(10, 30), tzinfo=_TZ) + dt.timedelta(
        minutes=15 * int(rng.integers(0, 21)))
    q_end = q_start + dt.timedelta(minutes=75 if trk.track_type == "road course" else 60)

    # entry list and this weekend's performance (fraction of the lap time; higher = faster)
    enter = latent.full_time | (rng.random(latent.full_time.size) < 0.75)
    idx = np.flatnonzero(enter)
    n = idx.size
    setup = rng.standard_normal(latent.full_time.size)
    perf_all = (
        0.0030 * latent.skill + 0.0015 * latent.team_strength + 0.0010 * form
        + 0.0015 * latent.affinity[:, _TYPE_INDEX[trk.track_type]] + 0.0012 * setup
    ) * tp.spread
    perf = perf_all[idx]
    ids = latent.driver_id[idx]
    base = trk.green_lap_time

    # --- practice (Friday)
    p = _practice(rng, trk, tp, perf, ids, race_id, _epoch_us(p_start), _epoch_us(p_end))

    # --- qualifying (Saturday): single-car laps, a few botched
    q_lap = base * tp.quali_factor * (1 + 0.002 * rng.standard_normal() - perf
                                      + 0.0012 * rng.standard_normal(n))
    q_lap += base * 0.008 * (rng.random(n) < 0.03)
    q_ms = np.rint(q_lap * 1000).astype(np.int64)
    order = np.lexsort((ids, q_ms))
    q_pos = np.empty(n, dtype=np.int64)
    q_pos[order] = np.arange(1, n + 1)
    q_mph = np.round(trk.length_miles / (q_ms / 1000.0) * 3600.0, 3)

    # --- race (Sunday)
    day_offset = 0.003 * rng.standard_normal()
    pace = base * (1 + day_offset - perf)
    sim = _simulate_race(rng, trk, tp, pace, q_pos - 1, sched_laps)
    green_us = _epoch_us(green)
    checkered_us = green_us + sim.checkered_ms * 1000

    schedule = {
        "race_id": race_id, "season": 2025 + season_k, "round": round_idx + 1,
        "track_id": track_idx + 1, "scheduled_laps": sched_laps,
        "practice_start": p_start, "practice_end": p_end,
        "qualifying_start": q_start, "qualifying_end": q_end, "green_flag": green,
        "checkered_flag": (_UTC_EPOCH + dt.timedelta(microseconds=int(checkered_us)))
        .astimezone(_TZ),
    }

    car, lap = np.nonzero(sim.exists)
    return {
        "schedule": schedule,
        **p,
        "q_race": np.full(n, race_id), "q_driver": ids, "q_pos": q_pos, "q_ms": q_ms,
        "q_mph": q_mph, "q_end": np.full(n, _epoch_us(q_end), dtype=np.int64),
        "l_race": np.full(car.size, race_id), "l_driver": ids[car], "l_lap": lap + 1,
        "l_ts": green_us + sim.t_ms[car, lap] * 1000, "l_race_ms": sim.t_ms[car, lap],
        "l_pos": sim.pos[car, lap],
        "l_ms": sim.lt_ms[car, lap], "l_pit": sim.pit[car, lap],
        "l_caution": sim.caution[lap],
        "r_race": np.full(n, race_id), "r_driver": ids, "r_start": q_pos,
        "r_finish": sim.finish, "r_laps": sim.laps, "r_led": sim.led,
        "r_status": sim.status,
        "r_time": np.full(n, green_us + sim.result_ms * 1000, dtype=np.int64),
    }


def _practice(
    rng: np.random.Generator, trk: Track, tp: _TypeParams, perf: np.ndarray, ids: np.ndarray,
    race_id: int, start_us: int, end_us: int,
) -> dict[str, np.ndarray]:
    base = trk.green_lap_time
    road = trk.track_type == "road course"
    session_ms = (end_us - start_us) // 1000
    day = 0.003 * rng.standard_normal()
    out: dict[str, list[np.ndarray]] = {k: [] for k in
                                        ("p_race", "p_driver", "p_lap", "p_run", "p_ms",
                                         "p_ts", "p_pit")}
    for i in range(ids.size):
        n_runs = int(rng.integers(3, 6))
        long_run = int(rng.integers(0, n_runs))
        lengths = rng.integers(2, 5, n_runs) if road else rng.integers(3, 9, n_runs)
        lengths[long_run] = rng.integers(8, 13) if road else rng.integers(12, 31)
        gaps_s = rng.uniform(120, 480, n_runs)
        gaps_s[0] = rng.uniform(0, 300)
        total = int(lengths.sum())
        age = np.concatenate([np.arange(k) for k in lengths])
        run = np.repeat(np.arange(1, n_runs + 1), lengths)
        first = np.zeros(total, dtype=bool)
        last = np.zeros(total, dtype=bool)
        ends = np.cumsum(lengths)
        first[ends - lengths] = True
        last[ends - 1] = True
        lt = (base * (1 + day - perf[i]) + trk.falloff * age
              + base * tp.noise * rng.standard_normal(total))
        lt += base * 0.10 * first + base * 0.12 * last
        lt_ms = np.rint(lt * 1000).astype(np.int64)
        gap_ms = np.zeros(total, dtype=np.int64)
        gap_ms[ends - lengths] = np.rint(gaps_s * 1000).astype(np.int64)
        t_ms = np.cumsum(lt_ms + gap_ms)
        keep = t_ms < session_ms
        k = int(keep.sum())
        if k == 0:
            continue
        pit = last  # a run cut short by the end of the session has no in-lap
        out["p_race"].append(np.full(k, race_id))
        out["p_driver"].append(np.full(k, ids[i]))
        out["p_lap"].append(np.arange(1, k + 1))
        out["p_run"].append(run[:k])
        out["p_ms"].append(lt_ms[:k])
        out["p_ts"].append(start_us + t_ms[:k] * 1000)
        out["p_pit"].append(pit[:k])
    return {key: np.concatenate(v) if v else np.zeros(0, dtype=np.int64)
            for key, v in out.items()}


# --------------------------------------------------------------------------------------------
# the race
# --------------------------------------------------------------------------------------------


@dataclass
class _RaceSim:
    exists: np.ndarray  # (n, laps) bool: the car completed this lap
    t_ms: np.ndarray  # (n, laps) cumulative ms from the green flag at the end of the lap
    lt_ms: np.ndarray  # (n, laps)
    pit: np.ndarray  # (n, laps) bool
    pos: np.ndarray  # (n, laps)
    caution: np.ndarray  # (laps,) bool
    laps: np.ndarray  # (n,)
    finish: np.ndarray  # (n,)
    led: np.ndarray  # (n,)
    status: np.ndarray  # (n,) str
    checkered_ms: int
    result_ms: int


def _plan_cautions(
    rng: np.random.Generator, trk: Track, tp: _TypeParams, caution_lt: float, n_sched: int
) -> tuple[int, list[tuple[int, int, bool]]]:
    """Cautions as (first lap, length in laps, is_incident); returns (total laps, cautions)."""

    def n_laps(minutes: float) -> int:
        return max(2, round(minutes * 60.0 / caution_lt))

    if trk.track_type == "road course":
        stage_ends = (round(n_sched * 0.22), round(n_sched * 0.47))
    else:
        stage_ends = (round(n_sched * 0.30), round(n_sched * 0.60))
    cands: list[tuple[int, int, bool]] = [
        (s + 1, n_laps(rng.uniform(7.0, 10.0)), False) for s in stage_ends
    ]
    for rate, incident in ((tp.incident_rate, True), (tp.debris_rate, False)):
        for start in rng.integers(3, n_sched + 1, rng.poisson(rate)):
            cands.append((int(start), n_laps(rng.uniform(4.5, 8.5)), incident))
    cands.sort()
    total = n_sched
    kept: list[tuple[int, int, bool]] = []
    prev_end = -10
    for start, length, incident in cands:
        if start < prev_end + 4 or start > total:
            continue
        kept.append((start, length, incident))
        prev_end = start + length - 1
        if prev_end >= total - 2:  # overtime: two green laps after the restart
            total = prev_end + 2
            break
    return total, kept


def _simulate_race(
    rng: np.random.Generator, trk: Track, tp: _TypeParams, pace: np.ndarray, grid: np.ndarray,
    n_sched: int,
) -> _RaceSim:
    n = pace.size
    base = trk.green_lap_time
    pace_mph = tp.pace_mph or 36.0 + 28.0 * max(0.0, trk.length_miles - 0.5)
    caution_lt = trk.length_miles / pace_mph * 3600.0
    fuel_laps = int(min(tp.fuel_miles / trk.length_miles, tp.tyre_laps))
    total, cautions = _plan_cautions(rng, trk, tp, caution_lt, n_sched)

    yellow = np.zeros(total + 1, dtype=bool)  # index = lap number
    first_yellow = np.zeros(total + 1, dtype=bool)
    pit_window_lap = np.zeros(total + 1, dtype=bool)
    restart = np.zeros(total + 2, dtype=bool)
    incident_at: dict[int, int] = {}
    for start, length, incident in cautions:
        yellow[start:start + length] = True
        first_yellow[start] = True
        pit_window_lap[start + 1] = True
        restart[start + length] = True
        if incident:
            incident_at[start] = length

    last_lap = np.full(n, total)
    status = np.full(n, "running", dtype=object)
    mech = rng.random(n) < _MECHANICAL_RATE
    if mech.any():
        k = int(mech.sum())
        last_lap[mech] = rng.integers(5, total, k)
        status[mech] = rng.choice(_MECHANICAL, size=k, p=_MECHANICAL_P / _MECHANICAL_P.sum())
    # someone must take the checkered flag: the pole sitter never retires
    protected = int(np.argmin(grid))
    last_lap[protected] = total
    status[protected] = "running"

    noise = base * tp.noise * rng.standard_normal((total, n))
    ar_eps = base * tp.noise * 0.5 * rng.standard_normal((total, n))
    exists = np.zeros((n, total), dtype=bool)
    t_out = np.zeros((n, total), dtype=np.int64)
    lt_out = np.zeros((n, total), dtype=np.int64)
    pit_out = np.zeros((n, total), dtype=bool)

    t_ms = np.zeros(n, dtype=np.int64)
    wear = np.zeros(n)
    stint = np.zeros(n, dtype=np.int64)
    window = fuel_laps - rng.integers(0, max(2, fuel_laps // 10), n)
    out_pending = np.zeros(n, dtype=bool)
    damage = np.zeros(n)
    must_pit = np.zeros(n, dtype=bool)
    ar = np.zeros(n)
    ld = np.zeros(n, dtype=np.int64)
    row = grid // 2
    min_lt = 0.9 * base
    # one car's place in a line of cars: ~12 m at green-flag speed
    slot = 12.0 / (trk.length_miles * 1609.344 / base)

    for lap in range(1, total + 1):
        j = lap - 1
        if lap in incident_at:
            _wreck(rng, tp, lap, incident_at[lap], total, t_ms, last_lap, status, damage,
                   must_pit, base, protected)
        run = last_lap >= lap
        t = t_ms / 1000.0
        pit_in = np.zeros(n, dtype=bool)
        if yellow[lap]:
            t0 = t[run].min()
            g = t - t0
            if first_yellow[lap]:
                ld = np.where(run, np.floor(g / base).astype(np.int64), 0)
                lapped = np.flatnonzero(run & (ld >= 1))
                if lapped.size:  # free pass: the first car a lap down gets its lap back
                    ld[lapped[np.argmin(g[lapped])]] -= 1
                lead_lt, c = base * 1.3, 0.25
            else:
                lead_lt, c = caution_lt * (1 + 0.01 * rng.standard_normal()), 0.7
            if pit_window_lap[lap]:
                remaining = total - lap
                p_pit = 0.9 if remaining > 0.5 * fuel_laps else 0.6
                wants = (stint >= max(5, fuel_laps // 5)) & (rng.random(n) < p_pit)
                wants |= stint > fuel_laps - remaining  # cannot make it to the end otherwise
                pit_in = run & (wants | must_pit)
                wave = run & ~pit_in & (ld >= 1) & (rng.random(n) < 0.8)
                ld = ld - wave
            g_eff = g + pit_in * (0.8 * tp.pit_loss)
            order = np.flatnonzero(run)
            order = order[np.lexsort((g_eff[order], ld[order]))]
            rank = np.zeros(n)
            rank[order] = np.arange(order.size)
            target = ld * base + rank * slot
            g_new = g_eff + (target - g_eff) * c
            new_t = t0 + lead_lt + g_new
            wear += 0.3
            out_pending[:] = False
        else:
            ar = 0.7 * ar + ar_eps[j]
            lt = pace + trk.falloff * wear + noise[j] + ar + damage
            if lap == 1:
                lt += base * 0.08 + 2 * slot * row
            if restart[lap]:
                lt += base * 0.05 + np.abs(noise[j])
            pit_in = run & (stint >= window) & ((total - lap) > (fuel_laps - stint))
            # the stop is timed in the in-lap; the out-lap only pays for pit exit and cold tyres
            lt += out_pending * (0.02 * base) + pit_in * (tp.pit_loss - 0.02 * base)
            new_t = t + lt
            if tp.pack > 0:
                t0 = new_t[run].min()
                g = new_t - t0
                pack = np.flatnonzero(run & (g < 0.5 * base))
                pack = pack[np.argsort(g[pack], kind="stable")]
                target = np.arange(pack.size) * slot
                new_t[pack] = t0 + g[pack] + (target - g[pack]) * tp.pack
            wear += 1.0
            out_pending = pit_in.copy()
        stint += 1
        lt_ms = np.maximum(np.rint((new_t - t) * 1000.0).astype(np.int64), int(min_lt * 1000))
        t_ms = np.where(run, t_ms + lt_ms, t_ms)
        exists[:, j] = run
        t_out[:, j] = t_ms
        lt_out[:, j] = lt_ms
        pit_out[:, j] = pit_in
        if pit_in.any():
            wear[pit_in] = 0.0
            stint[pit_in] = 0
            must_pit[pit_in] = False
            window[pit_in] = fuel_laps - rng.integers(0, max(2, fuel_laps // 10),
                                                      int(pit_in.sum()))

    # the checkered flag: the leader completes the last lap; every other running car finishes
    # the lap it is on (its first crossing at or after the checkered flag)
    t_chk = int(t_out[exists[:, total - 1], total - 1].min())
    laps = np.zeros(n, dtype=np.int64)
    for i in range(n):
        m = int(last_lap[i])
        after = np.flatnonzero(t_out[i, :m] >= t_chk)
        if after.size:
            laps[i] = after[0] + 1
            status[i] = "running"
        else:
            laps[i] = m
    lap_no = np.arange(1, total + 1)
    exists &= lap_no[None, :] <= laps[:, None]

    big = np.iinfo(np.int64).max
    masked = np.where(exists, t_out, big)
    order = np.argsort(masked, axis=0, kind="stable")
    pos = np.empty_like(order)
    np.put_along_axis(pos, order, np.arange(1, n + 1)[:, None].repeat(total, axis=1), axis=0)
    led = ((pos == 1) & exists).sum(axis=1)
    last_t = np.array([t_out[i, laps[i] - 1] if laps[i] > 0 else 0 for i in range(n)])
    fin_order = np.lexsort((np.arange(n), last_t, -laps))
    finish = np.empty(n, dtype=np.int64)
    finish[fin_order] = np.arange(1, n + 1)
    return _RaceSim(
        exists=exists, t_ms=t_out, lt_ms=lt_out, pit=pit_out & exists, pos=pos,
        caution=yellow[1:], laps=laps, finish=finish, led=led, status=status.astype(str),
        checkered_ms=t_chk, result_ms=int(last_t.max()),
    )


def _wreck(
    rng: np.random.Generator, tp: _TypeParams, lap: int, length: int, total: int,
    t_ms: np.ndarray, last_lap: np.ndarray, status: np.ndarray, damage: np.ndarray,
    must_pit: np.ndarray, base: float, protected: int,
) -> None:
    """An incident on ``lap``: cars near a random running position crash."""
    running = np.flatnonzero(last_lap >= lap)
    if running.size < 6:
        return
    order = running[np.argsort(t_ms[running], kind="stable")]
    if rng.random() < tp.big_one:
        size = int(rng.integers(5, 14))
    else:
        size = 1 + int(rng.poisson(tp.wreck_mean - 1.0))
    size = min(size, order.size - 5)
    if size <= 0:
        return
    at = int(rng.integers(0, order.size))
    lo = max(0, min(at - size // 2, order.size - size))
    for car in order[lo:lo + size]:
        u = rng.random()
        if car == protected:
            u = 1.0
        if u < tp.out_prob:
            last_lap[car] = lap - 1
            status[car] = "accident"
        elif u < tp.out_prob + 0.1:
            last_lap[car] = min(total - 1, lap + int(rng.integers(0, max(1, length - 1))))
            status[car] = "dvp"
        else:
            damage[car] += 0.003 * base * rng.random()
            must_pit[car] = True
