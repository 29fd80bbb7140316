"""The quickstart's pipeline on real NASCAR data that you supply as files.

    python examples/nascar_real/run.py --results cup_results_2014_2024.parquet \\
        --laps lapraptor_cup2025_laps.parquet -o nascar-store

Expected shapes (see ../shared/data/SOURCES.md): a race-results file with ``race_season,
race_id, race_date`` (naive US Eastern), ``driver_id, finishing_position, laps_led,
starting_position, finishing_status`` and a lap-by-lap file with ``race_date`` (a date),
``race_num, driver_id, lap_number, running_position, lap_time, statuses``. The files are read
where they are; only derived sources are written under the output folder.

Real data is messier than the generated season, and the preparation below says how it is
handled: DNQ rows (finish 0) are dropped; results become available four hours after the
scheduled start (the race is over by then), the starting grid one hour before it; lap files
carry only a date, so each driver's lap timestamps are reconstructed as noon US Eastern on race
day plus the driver's cumulative lap times.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import polars as pl

from featurestore import FeatureStore
from featurestore.materialize import materialize

PRERACE = ["prev_finish", "avg_finish_last_5", "avg_laps_led_last_5", "starting_position"]
INRACE = ["avg_position_last_10l", "laps_led_last_20l", "lap_time_mean_last_10l", "tyre_age",
          "deg_slope"]

DEFINITIONS = """
[[entities]]
name = "driver"
join_keys = ["driver_id"]

[[sources]]
name = "results"
path = "prepared/results.parquet"
entity = "driver"
event_time = "race_date"
available_time = "result_time"
timezone = "America/New_York"
tier = "historical"

[[views]]
name = "form"
source = "results"
transform = "rolling"
[views.params]
features = [
  { column = "finishing_position", include_current = true, outputs = { prev_finish = { agg = "max", window = 1 }, avg_finish_last_5 = { agg = "mean", window = 5 } } },
  { column = "laps_led", include_current = true, outputs = { avg_laps_led_last_5 = { agg = "mean", window = 5 } } },
]

[[features]]
name = "prev_finish"
view = "form"

[[features]]
name = "avg_finish_last_5"
view = "form"

[[features]]
name = "avg_laps_led_last_5"
view = "form"

[[sources]]
name = "grid"
path = "prepared/grid.parquet"
entity = "driver"
event_time = "grid_known"
timezone = "America/New_York"
tier = "qualifying"

[[features]]
name = "starting_position"
source = "grid"

[[sources]]
name = "laps"
path = "prepared/laps.parquet"
entity = "driver"
event_time = "lap_timestamp"
tier = "race"

[[views]]
name = "lap_form"
source = "laps"
transform = "rolling"
tier = "race"
[views.params]
tie_break = ["lap_number"]
features = [
  { column = "running_position", include_current = true, outputs = { avg_position_last_10l = { agg = "mean", window = 10 } } },
  { column = "running_position", indicator = { eq = 1 }, include_current = true, outputs = { laps_led_last_20l = { agg = "sum", window = 20 } } },
  { column = "lap_time", include_current = true, outputs = { lap_time_mean_last_10l = { agg = "mean", window = 10 } } },
]

[[features]]
name = "avg_position_last_10l"
view = "lap_form"

[[features]]
name = "laps_led_last_20l"
view = "lap_form"

[[features]]
name = "lap_time_mean_last_10l"
view = "lap_form"

[[views]]
name = "tyres"
source = "laps"
transform = "falloff"
tier = "race"
[views.params]
lap_time_column = "lap_time"
lap_column = "lap_number"
group_by = ["race_num"]
pit_column = "pit"
caution_column = "caution"
outputs = ["tyre_age", "deg_slope"]

[[features]]
name = "tyre_age"
view = "tyres"

[[features]]
name = "deg_slope"
view = "tyres"
"""


def prepare(results_path: Path, laps_path: Path, out: Path) -> dict[str, pl.DataFrame]:
    """Write the derived sources under ``out/prepared`` and return the query frames."""
    prepared = out / "prepared"
    prepared.mkdir(parents=True, exist_ok=True)
    results = (pl.read_parquet(results_path).filter(pl.col("finishing_position") > 0)
               .unique(["race_id", "driver_id"], keep="first", maintain_order=True))
    (results.select("driver_id", "race_id", "race_season", "race_date", "finishing_position",
                    "laps_led", result_time=pl.col("race_date") + pl.duration(hours=4))
     .write_parquet(prepared / "results.parquet"))
    (results.select("driver_id", "race_id", "starting_position",
                    grid_known=pl.col("race_date") - pl.duration(hours=1))
     .write_parquet(prepared / "grid.parquet"))
    laps = (pl.read_parquet(laps_path)
            .sort("race_num", "driver_id", "lap_number")
            .with_columns(
                lap_timestamp=(pl.col("race_date").cast(pl.Datetime("us")) + pl.duration(hours=12))
                .dt.replace_time_zone("America/New_York")
                + pl.duration(milliseconds=(pl.col("lap_time").cum_sum() * 1000).cast(pl.Int64))
                .over("race_num", "driver_id"),
                pit=pl.col("statuses").str.contains("pitting in"),
                caution=pl.col("statuses").str.contains("caution"))
            .select("driver_id", "race_num", "race_date", "lap_number", "lap_timestamp",
                    "running_position", "lap_time", "pit", "caution", "finish_position"))
    laps.write_parquet(prepared / "laps.parquet")
    prerace = results.select("race_id", "driver_id", "race_season",
                             pl.col("race_date").alias("event_timestamp"),
                             pl.col("finishing_position").alias("label_finish"))
    lap100 = (laps.filter(pl.col("lap_number") == 100).group_by("race_num")
              .agg(pl.col("lap_timestamp").min().alias("event_timestamp")))
    inrace = (laps.filter(pl.col("lap_number") == 99).select("race_num", "driver_id", "finish_position")
              .join(lap100, on="race_num").sort("race_num", "driver_id"))
    return {"prerace": prerace, "inrace": inrace}


def run(results_path: Path, laps_path: Path, out: Path) -> dict[str, Any]:
    """Build the store, the two frames and their audit; return a summary."""
    queries = prepare(results_path, laps_path, out)
    (out / "features.toml").write_text(DEFINITIONS, encoding="utf-8")
    with FeatureStore(out) as store:
        store.apply(out / "features.toml")
        materialize(store)
        prerace = store.get_historical_features(queries["prerace"], PRERACE, tier="qualifying",
                                                cutoff_timezone="America/New_York",
                                                with_availability=True)
        inrace = store.get_historical_features(queries["inrace"], PRERACE[:3] + INRACE, tier="race",
                                               with_availability=True)
        audits = [store.audit(prerace, PRERACE, cutoff_timezone="America/New_York"), store.audit(inrace, PRERACE[:3] + INRACE)]
    frames = out / "frames"
    frames.mkdir(exist_ok=True)
    prerace.write_parquet(frames / "prerace.parquet")
    inrace.write_parquet(frames / "inrace.parquet")
    return {"prerace_rows": prerace.height, "inrace_rows": inrace.height,
            "checked": sum(a.n_checked for a in audits),
            "violations": sum(a.n_violations for a in audits),
            "prerace_path": str(frames / "prerace.parquet"), "inrace_path": str(frames / "inrace.parquet")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--laps", type=Path, required=True)
    parser.add_argument("-o", "--output", type=Path, default=Path("nascar-store"))
    args = parser.parse_args(argv)
    print(json.dumps(run(args.results, args.laps, args.output), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
