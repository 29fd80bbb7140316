"""The quickstart: a synthetic NASCAR Cup season through the whole store, end to end.

``run_quickstart(out_dir, ...)`` generates the season, declares entities, sources and features
at all four tiers, applies, ingests, materializes (with causality verification), builds a
pre-race and an in-race training frame, audits them, shows the tier guard refusing a leak, and
draws two pictures. Running it twice into the same folder re-applies as a no-op and skips
unchanged inputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from featurestore.errors import LeakageError
from featurestore.materialize import materialize
from featurestore.quickstart.season import generate_season
from featurestore.store import FeatureStore

PRE_RACE_FEATURES = [
    "prev_finish", "avg_finish_last_5", "avg_laps_led_last_5", "dnf_rate_last_10",
    "track_length_miles", "track_prev_caution_share",
    "best_practice_lap", "practice_falloff_slope",
    "qualifying_position", "qualifying_speed_mph", "gap_to_pole",
]
IN_RACE_FEATURES = [
    "avg_position_last_10l", "avg_position_last_20l", "avg_position_last_50l",
    "best_position_last_10l", "best_position_last_20l", "best_position_last_50l",
    "laps_led_last_10l", "laps_led_last_20l", "laps_led_last_50l",
    "lap_time_mean_last_10l", "lap_time_std_last_10l", "lap_time_min_last_10l",
    "lap_time_max_last_10l", "lap_time_mean_last_50l",
    "tyre_age", "lap_time_delta_best", "deg_slope", "slow_lap",
    "gap_to_leader", "lap_time_rank_on_lap", "lap_time_delta_field_median",
]
# The view of each in-race feature not in lap_form.
_IN_RACE_VIEW = {
    **dict.fromkeys(("tyre_age", "lap_time_delta_best", "deg_slope", "slow_lap"), "tyre_falloff"),
    "gap_to_leader": "field_gap",
    **dict.fromkeys(("lap_time_rank_on_lap", "lap_time_delta_field_median"), "field_pace"),
}


DEFINITIONS = """\
# The quickstart's feature definitions: entities, sources at each tier, and features.
# Apply with `featurestore -s {root} apply`; re-applying changes nothing.

[[entities]]
name = "driver"
join_keys = ["driver_id"]
description = "A Cup Series driver"

[[entities]]
name = "track"
join_keys = ["track_id"]
description = "A race track"

# ---------------------------------------------------------------- historical: past races
[[sources]]
name = "results"
path = "season/results.parquet"
entity = "driver"
event_time = "result_time"
tier = "historical"
description = "Race results, known when the last car takes the checkered flag"

[[views]]
name = "driver_form"
source = "results"
transform = "rolling"
tier = "historical"
description = "Form over the driver's previous races (each row includes its own race)"
[views.params]
features = [
  {{ column = "finish_position", include_current = true, outputs = {{ prev_finish = {{ agg = "max", window = 1 }}, avg_finish_last_5 = {{ agg = "mean", window = 5 }} }} }},
  {{ column = "laps_led", include_current = true, outputs = {{ avg_laps_led_last_5 = {{ agg = "mean", window = 5 }} }} }},
  {{ column = "dnf", include_current = true, outputs = {{ dnf_rate_last_10 = {{ agg = "mean", window = 10 }} }} }},
]

[[features]]
name = "prev_finish"
view = "driver_form"
description = "Finishing position in the driver's previous race"
tags = ["form"]

[[features]]
name = "avg_finish_last_5"
view = "driver_form"
description = "Mean finishing position over the last 5 races"
tags = ["form"]

[[features]]
name = "avg_laps_led_last_5"
view = "driver_form"
description = "Mean laps led over the last 5 races"
tags = ["form"]

[[features]]
name = "dnf_rate_last_10"
view = "driver_form"
description = "Share of the last 10 races not finished"
tags = ["form", "reliability"]

[[sources]]
name = "track_races"
path = "season/track_races.parquet"
entity = "track"
event_time = "checkered_flag"
tier = "historical"
description = "One row per race at a track: length and how much of it ran under caution"

[[views]]
name = "track_history"
source = "track_races"
transform = "rolling"
tier = "historical"
[views.params]
column = "caution_share"
include_current = true
outputs = {{ track_prev_caution_share = {{ agg = "mean", window = 1 }} }}

[[features]]
name = "track_prev_caution_share"
view = "track_history"
description = "Share of laps under caution in the previous race at this track"
tags = ["track"]

[[sources]]
name = "tracks"
path = "season/tracks_static.parquet"
entity = "track"
event_time = "valid_from"
tier = "historical"
description = "Static track facts, valid since long before the season"

[[features]]
name = "track_length_miles"
source = "tracks"
column = "length_miles"
description = "Track length in miles"
tags = ["track"]

# ---------------------------------------------------------------- practice
[[sources]]
name = "practice_laps"
path = "season/practice_green_laps.parquet"
entity = "driver"
event_time = "lap_timestamp"
tier = "practice"
description = "Practice laps without the pit in-laps that end each run"

[[views]]
name = "practice_pace"
source = "practice_laps"
transform = "rolling"
tier = "practice"
[views.params]
column = "lap_time"
include_current = true
outputs = {{ best_practice_lap = {{ agg = "min", window = "6h" }} }}

[[features]]
name = "best_practice_lap"
view = "practice_pace"
description = "Fastest practice lap of the weekend so far (seconds)"
tags = ["practice"]

[[views]]
name = "practice_falloff"
source = "practice_laps"
transform = "falloff"
tier = "practice"
[views.params]
lap_time_column = "lap_time"
lap_column = "lap"
group_by = ["race_id", "run"]
slope_window = 30
slope_min_laps = 3
outputs = {{ deg_slope = "practice_falloff_slope" }}

[[features]]
name = "practice_falloff_slope"
view = "practice_falloff"
description = "Long-run tyre falloff in practice (seconds per lap)"
tags = ["practice", "tyres"]

# ---------------------------------------------------------------- qualifying
[[sources]]
name = "qualifying"
path = "season/qualifying_session.parquet"
entity = "driver"
event_time = "session_end"
tier = "qualifying"

[[features]]
name = "qualifying_position"
source = "qualifying"
dtype = "Int32"
tags = ["qualifying"]

[[features]]
name = "qualifying_speed_mph"
source = "qualifying"
column = "best_speed_mph"
tags = ["qualifying"]

[[features]]
name = "gap_to_pole"
source = "qualifying"
description = "Seconds slower than the pole lap"
tags = ["qualifying"]

# ---------------------------------------------------------------- race: in-race telemetry
[[sources]]
name = "race_laps"
path = "season/race_laps.parquet"
entity = "driver"
event_time = "lap_timestamp"
tier = "race"

[[views]]
name = "lap_form"
source = "race_laps"
transform = "rolling"
tier = "race"
[views.params]
tie_break = ["lap"]
features = [
  {{ column = "running_position", include_current = true, outputs = {{ avg_position_last_10l = {{ agg = "mean", window = 10 }}, avg_position_last_20l = {{ agg = "mean", window = 20 }}, avg_position_last_50l = {{ agg = "mean", window = 50 }}, best_position_last_10l = {{ agg = "min", window = 10 }}, best_position_last_20l = {{ agg = "min", window = 20 }}, best_position_last_50l = {{ agg = "min", window = 50 }} }} }},
  {{ column = "running_position", indicator = {{ eq = 1 }}, include_current = true, outputs = {{ laps_led_last_10l = {{ agg = "sum", window = 10 }}, laps_led_last_20l = {{ agg = "sum", window = 20 }}, laps_led_last_50l = {{ agg = "sum", window = 50 }} }} }},
  {{ column = "lap_time", include_current = true, outputs = {{ lap_time_mean_last_10l = {{ agg = "mean", window = 10 }}, lap_time_std_last_10l = {{ agg = "std", window = 10 }}, lap_time_min_last_10l = {{ agg = "min", window = 10 }}, lap_time_max_last_10l = {{ agg = "max", window = 10 }}, lap_time_mean_last_50l = {{ agg = "mean", window = 50 }} }} }},
]

[[views]]
name = "tyre_falloff"
source = "race_laps"
transform = "falloff"
tier = "race"
[views.params]
lap_time_column = "lap_time"
lap_column = "lap"
group_by = ["race_id"]
pit_column = "pit"
caution_column = "caution"
outputs = ["stint", "tyre_age", "delta_best", "deg_slope", "slow_lap"]

# ---------------------------------------------------------------- race: the field on each lap
# Field-relative features compare a car with the other cars on the same lap (the `field` plugin,
# group scope), using only laps already available when the car's own lap is. race_laps is live
# timing: a car's lap is available as it crosses the line, when the cars ahead on the road have
# crossed and the ones behind have not. That is all the gap to the leader needs (the leader of a
# lap crosses first).
[[views]]
name = "field_gap"
source = "race_laps"
transform = "field"
tier = "race"
description = "Gap to the leader on the same lap, from live timing"
[views.params]
group_by = ["race_id"]
at = ["lap"]
outputs = {{ gap_to_leader = {{ kind = "gap_to_leader", column = "race_time" }} }}

# Comparing lap times with the whole field needs the whole lap: the lap chart publishes a lap once
# every car that completes it has (lap_complete_at), so each car is compared with all of them.
[[sources]]
name = "lap_chart"
path = "season/race_lap_chart.parquet"
entity = "driver"
event_time = "lap_timestamp"
available_time = "lap_complete_at"
tier = "race"
description = "Race laps, each published when every car that completes that lap has"

[[views]]
name = "field_pace"
source = "lap_chart"
transform = "field"
tier = "race"
description = "Lap time against the whole field on the same lap"
[views.params]
group_by = ["race_id"]
at = ["lap"]
outputs = {{ lap_time_rank_on_lap = {{ kind = "rank", column = "lap_time" }}, lap_time_delta_field_median = {{ kind = "delta_median", column = "lap_time" }} }}
"""

_FEATURE_BLOCK = """
[[features]]
name = "{name}"
view = "{view}"
tier = "race"
tags = ["in-race"]
"""


def definitions_text(root: Path) -> str:
    text = DEFINITIONS.format(root=root)
    for name in IN_RACE_FEATURES:
        view = _IN_RACE_VIEW.get(name, "lap_form")
        text += _FEATURE_BLOCK.format(name=name, view=view)
    text += _FEATURE_BLOCK.format(name="stint", view="tyre_falloff")
    text += """
[[feature_sets]]
name = "prerace_model"
features = [{}]
description = "What the pre-race finish model uses"
""".format(", ".join(f'"{n}"' for n in PRE_RACE_FEATURES))
    return text


@dataclass
class QuickstartResult:
    """What the quickstart built, for printing and for tests."""

    root: Path
    timings: dict[str, float] = field(default_factory=dict)
    apply_counts: dict[str, int] = field(default_factory=dict)
    ingest: list[dict[str, Any]] = field(default_factory=list)
    materialize: list[dict[str, Any]] = field(default_factory=list)
    prerace_path: Path | None = None
    inrace_path: Path | None = None
    prerace_shape: tuple[int, int] = (0, 0)
    inrace_shape: tuple[int, int] = (0, 0)
    audit_checked: int = 0
    audit_violations: int = 0
    leakage_error: str = ""
    pictures: list[Path] = field(default_factory=list)
    null_share: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root), "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "apply": self.apply_counts, "ingest": self.ingest, "materialize": self.materialize,
            "prerace": {"path": str(self.prerace_path), "rows": self.prerace_shape[0],
                        "columns": self.prerace_shape[1]},
            "inrace": {"path": str(self.inrace_path), "rows": self.inrace_shape[0],
                       "columns": self.inrace_shape[1]},
            "audit": {"checked": self.audit_checked, "violations": self.audit_violations},
            "leakage_error": self.leakage_error, "pictures": [str(p) for p in self.pictures],
            "null_share": self.null_share,
        }


def _prepare_sources(season: Path, files: dict[str, Path]) -> None:
    """Derive the source files the generator does not write directly."""
    quali = pl.read_parquet(files["qualifying"])
    quali.with_columns(
        gap_to_pole=(pl.col("best_lap_time") - pl.col("best_lap_time").min().over("race_id")).round(3)
    ).write_parquet(season / "qualifying_session.parquet")
    # Green laps only, so the pit flag (all false) is dropped: a practice source carrying a
    # column the race-tier views read would be refused as holding race information.
    (pl.read_parquet(files["practice_laps"]).filter(~pl.col("pit")).drop("pit")
     .write_parquet(season / "practice_green_laps.parquet"))
    laps = pl.read_parquet(files["race_laps"])
    schedule = pl.read_parquet(files["schedule"])
    tracks = pl.read_parquet(files["tracks"])
    tracks.with_columns(valid_from=pl.datetime(2000, 1, 1, time_zone="UTC")).write_parquet(
        season / "tracks_static.parquet")
    # A lap is complete once the last car that completes it has; laps are published in order.
    complete = (laps.group_by("race_id", "lap").agg(lap_complete_at=pl.col("lap_timestamp").max())
                .sort("race_id", "lap")
                .with_columns(pl.col("lap_complete_at").cum_max().over("race_id")))
    (laps.join(complete, on=["race_id", "lap"])
     .sort("race_id", "driver_id", "lap").write_parquet(season / "race_lap_chart.parquet"))
    caution = laps.group_by("race_id").agg(caution_share=pl.col("caution").mean())
    (schedule.join(caution, on="race_id")
     .select("track_id", "race_id", "checkered_flag", "caution_share")
     .sort("race_id").write_parquet(season / "track_races.parquet"))


def _entity_frames(files: dict[str, Path]) -> tuple[pl.DataFrame, pl.DataFrame]:
    results = pl.read_parquet(files["results"])
    schedule = pl.read_parquet(files["schedule"])
    prerace = (results.join(schedule.select("race_id", "track_id", "green_flag"), on="race_id")
               .select("race_id", "driver_id", "track_id",
                       pl.col("green_flag").alias("event_timestamp"),
                       pl.col("finish_position").alias("label_finish"))
               .sort("race_id", "driver_id"))
    laps = pl.read_parquet(files["race_laps"])
    # In-race cutoff: the moment the leader completes lap 100.
    lap100 = (laps.filter(pl.col("lap") == 100).group_by("race_id")
              .agg(pl.col("lap_timestamp").min().alias("event_timestamp")))
    running = laps.filter(pl.col("lap") == 99).select("race_id", "driver_id").unique()
    inrace = (running.join(lap100, on="race_id")
              .join(results.select("race_id", "driver_id", "finish_position"), on=["race_id", "driver_id"])
              .join(schedule.select("race_id", "track_id"), on="race_id")
              .select("race_id", "driver_id", "track_id", "event_timestamp",
                      pl.col("finish_position").alias("label_finish"))
              .sort("race_id", "driver_id"))
    return prerace, inrace


Step = Callable[[str], None]


def run_quickstart(out_dir: str | Path, *, seed: int = 7, n_races: int = 36, n_drivers: int = 40,
                   plot: bool = True, progress: Callable[[str, int, int], None] | None = None,
                   say: Step | None = None) -> QuickstartResult:
    """Build the quickstart store in ``out_dir`` and return what happened (see module doc)."""
    say = say or (lambda _msg: None)
    root = Path(out_dir).resolve()
    result = QuickstartResult(root)
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        result.timings[name] = now - clock
        clock = now

    season = root / "season"
    files = generate_season(season, seed=seed, n_races=n_races, n_drivers=n_drivers).as_dict()
    _prepare_sources(season, files)
    laps_n = pl.scan_parquet(files["race_laps"]).select(pl.len()).collect().item()
    say(f"Generated a {n_races}-race season with {n_drivers} drivers: {laps_n:,} race laps "
        f"-> {season}")
    lap("generate")

    store = FeatureStore(root)
    defs_path = root / "features.toml"
    defs_path.write_text(definitions_text(root), encoding="utf-8")
    plan = store.apply(defs_path)
    result.apply_counts = plan.counts()
    lap("apply")
    result.ingest = [{"source": r["name"], "status": r["status"], "rows": r["artifact"]["row_count"]}
                     for r in store.ingest(progress=progress or (lambda *_: None))]
    lap("ingest")
    mats = materialize(store, progress=progress)
    result.materialize = [m.as_dict() for m in mats]
    lap("materialize")

    prerace_q, inrace_q = _entity_frames(files)
    prerace = store.get_historical_features(prerace_q, "prerace_model", tier="qualifying",
                                            with_availability=True)
    inrace = store.get_historical_features(inrace_q, PRE_RACE_FEATURES + IN_RACE_FEATURES,
                                           tier="race", with_availability=True)
    lap("retrieve")
    checked = violations = 0
    for frame, names in ((prerace, PRE_RACE_FEATURES), (inrace, PRE_RACE_FEATURES + IN_RACE_FEATURES)):
        report = store.audit(frame, names)
        checked += report.n_checked
        violations += report.n_violations
    result.audit_checked, result.audit_violations = checked, violations
    lap("audit")
    frames_dir = root / "frames"
    frames_dir.mkdir(exist_ok=True)
    result.prerace_path = frames_dir / "prerace_training.parquet"
    result.inrace_path = frames_dir / "inrace_lap100_training.parquet"
    prerace_out = prerace.drop([c for c in prerace.columns if c.endswith("__available_at")])
    inrace_out = inrace.drop([c for c in inrace.columns if c.endswith("__available_at")])
    prerace_q.write_parquet(frames_dir / "prerace_entities.parquet")  # to retrieve again by hand
    prerace_out.write_parquet(result.prerace_path)
    inrace_out.write_parquet(result.inrace_path)
    result.prerace_shape, result.inrace_shape = prerace_out.shape, inrace_out.shape
    result.null_share = {n: round(prerace_out[n].null_count() / max(prerace_out.height, 1), 3)
                         for n in PRE_RACE_FEATURES}

    try:
        store.get_historical_features(prerace_q, ["qualifying_position", "lap_time_mean_last_10l"],
                                      tier="qualifying")
    except LeakageError as exc:
        result.leakage_error = str(exc)
    else:  # pragma: no cover - the guard failing is a bug the test suite catches
        raise AssertionError("the tier guard let a race-tier feature into a qualifying frame")

    if plot:
        result.pictures = _pictures(store, root, files, inrace_q)
        lap("plots")
    store.close()
    return result


def _pictures(store: FeatureStore, root: Path, files: dict[str, Path],
              inrace_q: pl.DataFrame) -> list[Path]:
    from featurestore.quickstart.plots import plot_availability_timeline, plot_stints

    out = root / "pictures"
    out.mkdir(exist_ok=True)
    laps = pl.read_parquet(files["race_laps"])
    schedule = pl.read_parquet(files["schedule"])
    results = pl.read_parquet(files["results"])
    race_id = int(schedule.filter(pl.col("scheduled_laps") >= 300)["race_id"].first() or 1)
    winner = int(results.filter((pl.col("race_id") == race_id) & (pl.col("finish_position") == 1))["driver_id"][0])
    art = store.registry.latest_artifact("view", "tyre_falloff")
    assert art is not None
    fits = (pl.scan_parquet(store.root / art["path"]).filter(pl.col("driver_id") == winner)
            .collect()
            .join(laps.filter((pl.col("race_id") == race_id) & (pl.col("driver_id") == winner))
                  .with_columns(pl.col("lap_timestamp").dt.convert_time_zone("UTC")
                                .alias("event_timestamp")),
                  on=["driver_id", "event_timestamp"]))
    # One least-squares line per falloff stint, over its clean laps (no pit, no caution).
    clean = ~pl.col("pit") & ~pl.col("caution")
    x, y = pl.col("tyre_age").cast(pl.Float64), pl.col("lap_time")
    lines = (fits.filter(clean).group_by("stint")
             .agg(slope=((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum(),
                  x_mean=x.mean(), y_mean=y.mean()))
    fits = fits.join(lines, on="stint", how="left").with_columns(
        fitted_lap_time=pl.col("y_mean") + pl.col("slope") * (x - pl.col("x_mean")))
    stints = plot_stints(laps, fits, winner, race_id, out / f"stints_race{race_id}_driver{winner}.png",
                         fit_column="fitted_lap_time")

    row = schedule.filter(pl.col("race_id") == race_id).row(0, named=True)
    cutoff = inrace_q.filter(pl.col("race_id") == race_id)["event_timestamp"][0]
    prev = results.filter(pl.col("race_id") == race_id - 1)["result_time"]
    entries: list[tuple[str, Any, list[str]]] = []
    if prev.len():
        entries.append(("historical", prev.max(), ["prev_finish", "avg_finish_last_5",
                                                   "dnf_rate_last_10", "track_prev_caution_share"]))
    entries += [
        ("practice", row["practice_end"], ["best_practice_lap", "practice_falloff_slope"]),
        ("qualifying", row["qualifying_end"], ["qualifying_position", "qualifying_speed_mph",
                                               "gap_to_pole"]),
    ]
    race_laps = laps.filter((pl.col("race_id") == race_id) & (pl.col("driver_id") == winner))
    for lap_no in (50, 100, 150):
        ts = race_laps.filter(pl.col("lap") == lap_no)["lap_timestamp"]
        if ts.len():
            entries.append(("race", ts[0], [f"lap {lap_no}: rolling + falloff"]))
    timeline = plot_availability_timeline(row, entries, out / f"availability_race{race_id}.png",
                                          cutoff=cutoff)
    return [stints, timeline]
