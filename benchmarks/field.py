"""Field benchmark: the ``field`` transform's views on the quickstart season, through a store.

    python benchmarks/field.py [--races 36] [--drivers 40] [--workdir DIR]

Generates the quickstart's season (36 races x 40 drivers: ~352k race laps), derives its lap
chart, and materializes, with causality verification, three views of the ``field`` transform:

  field_gap         live timing, gap to the leader (running minimum; the quickstart's view);
  field_pace        lap chart, rank and delta to the field median (the quickstart's view);
  field_live_rank   live timing, rank, percentile and delta to the median: every car's lap has
                    its own availability, the costly case for rank (about n^2/2 entries a lap).

Prints, per view, rows, transform seconds, verification seconds and the verification summary,
then ``RESULT field <view>_transform_s=<x> ...`` and the load average while it ran (the machine
is shared: compare figures taken at similar load).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

LIVE = {"group_by": ["race_id"], "at": ["lap"]}
VIEWS = {
    "field_gap": ("race_laps", {**LIVE, "outputs": {
        "gap_to_leader": {"kind": "gap_to_leader", "column": "race_time"}}}),
    "field_pace": ("lap_chart", {**LIVE, "outputs": {
        "lap_time_rank_on_lap": {"kind": "rank", "column": "lap_time"},
        "lap_time_delta_field_median": {"kind": "delta_median", "column": "lap_time"}}}),
    "field_live_rank": ("race_laps", {**LIVE, "outputs": {
        "live_rank": {"kind": "rank", "column": "lap_time"},
        "live_pct": {"kind": "percentile", "column": "lap_time"},
        "live_delta_median": {"kind": "delta_median", "column": "lap_time"}}}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--races", type=int, default=36)
    parser.add_argument("--drivers", type=int, default=40)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="fs-field-bench-"))

    from featurestore import Entity, FeatureStore, Source, View
    from featurestore.materialize import materialize
    from featurestore.quickstart.pipeline import _prepare_sources
    from featurestore.quickstart.season import generate_season

    season = work / "season"
    files = generate_season(season, n_races=args.races, n_drivers=args.drivers).as_dict()
    _prepare_sources(season, files)
    store = FeatureStore(work / "store")
    store.apply([
        Entity("driver", ("driver_id",)),
        Source("race_laps", str(season / "race_laps.parquet"), "driver", "lap_timestamp",
               tier="race"),
        Source("lap_chart", str(season / "race_lap_chart.parquet"), "driver", "lap_timestamp",
               tier="race", available_time="lap_complete_at"),
        *[View(name, source, transform="field", params=params, tier="race")
          for name, (source, params) in VIEWS.items()],
    ])
    store.ingest()
    load_before = os.getloadavg()[0]
    figures = {}
    for name in VIEWS:
        started = time.perf_counter()
        (result,) = materialize(store, [name], force=True)
        wall = time.perf_counter() - started
        row = result.as_dict()
        figures[name] = row
        print(f"{name:16} {row['rows']:>8,} rows  transform {row['seconds_transform']:6.2f} s  "
              f"verify {row['seconds_verify']:6.2f} s  (wall {wall:.2f} s)")
        print(f"{'':16} {row['verification']}")
    store.close()
    load = (load_before + os.getloadavg()[0]) / 2
    parts = " ".join(f"{n}_transform_s={r['seconds_transform']} {n}_verify_s={r['seconds_verify']}"
                     for n, r in figures.items())
    print(f"RESULT field {parts} loadavg={load:.1f}")
    (work / "field_bench.json").write_text(json.dumps(figures, indent=2, default=str))


if __name__ == "__main__":
    main()
