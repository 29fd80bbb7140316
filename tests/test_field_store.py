"""The ``field`` transform through a real store: apply, ingest, materialize with causality
verification, retrieve point in time; and a group transform that peeks at later rows of other
entities refused by verification.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

import featurestore.plugins as fp
from featurestore import Entity, Feature, FeatureStore, Source, View, hookimpl
from featurestore.errors import LeakageError
from featurestore.materialize import materialize
from featurestore.transforms import Transform

try:
    from oracles_field import field_oracle
except ImportError:  # tests/ imported as a package
    from tests.oracles_field import field_oracle

GREEN = datetime(2025, 3, 9, 19, 30, tzinfo=UTC)
PARAMS = {
    "group_by": ["race_id"], "at": ["lap"],
    "outputs": {
        "lap_time_rank_on_lap": {"kind": "rank", "column": "lap_time"},
        "lap_time_delta_field_median": {"kind": "delta_median", "column": "lap_time"},
        "gap_to_leader": {"kind": "gap_to_leader", "column": "race_time"},
    },
}


def write_laps(path: Path, *, drivers: int = 8, races: int = 3, laps: int = 12) -> Path:
    """Races of ``drivers`` cars: odd races published lap by lap (each car's lap when it
    crosses the line), even races all at once after the flag; some cars retire early, a few
    lap times are missing."""
    rng = random.Random(11)
    rows = []
    for race in range(1, races + 1):
        start = GREEN + timedelta(days=7 * race)
        finish = start + timedelta(seconds=40 * laps + 120)
        for driver in range(1, drivers + 1):
            pace = 30 + rng.random()
            last = laps if driver != drivers else laps // 2  # the last car retires
            race_time = 0.0
            for lap in range(1, last + 1):
                lap_time = round(pace + rng.gauss(0, 0.4), 3)
                race_time = round(race_time + lap_time, 3)
                crossed = start + timedelta(seconds=race_time)
                rows.append({
                    "driver_id": driver, "race_id": race, "lap": lap, "lap_timestamp": crossed,
                    "published_at": crossed if race % 2 else finish,
                    "lap_time": None if rng.random() < 0.05 else lap_time,
                    "race_time": race_time,
                })
    pl.DataFrame(rows).write_parquet(path)
    return path


def definitions(laps: Path, transform: str = "field", params: dict | None = None) -> list:
    params = PARAMS if params is None else params
    return [
        Entity("driver", ("driver_id",)),
        Source("laps", str(laps), "driver", "lap_timestamp", tier="race",
               available_time="published_at"),
        View("field_view", "laps", transform=transform, params=params, tier="race"),
        *[Feature(name, view="field_view") for name in params["outputs"]],
    ]


@pytest.fixture
def store(tmp_path: Path):
    s = FeatureStore(tmp_path / "store")
    yield s
    s.close()


def test_field_view_is_verified_and_retrieved_point_in_time(store, tmp_path: Path) -> None:
    laps = write_laps(tmp_path / "laps.parquet")
    store.apply(definitions(laps))
    store.ingest()
    (result,) = materialize(store, ["field_view"])
    assert result.artifact["verified"]
    assert "causality verified" in result.artifact["verification"]

    # Query every driver at a few moments of each race; each value must be the oracle's value
    # of the driver's newest lap available strictly before the cutoff.
    rows = pl.read_parquet(laps).with_columns(
        event_timestamp=pl.col("lap_timestamp"), available_at=pl.col("published_at")).to_dicts()
    oracle = field_oracle(rows, ["driver_id"], PARAMS)
    rng = random.Random(3)
    cutoffs = sorted({r["lap_timestamp"] + timedelta(seconds=rng.choice([-1, 0, 1]))
                      for r in rng.sample(rows, 40)})
    query = pl.DataFrame([{"driver_id": d, "event_timestamp": t}
                          for t in cutoffs for d in range(1, 9)])
    names = list(PARAMS["outputs"])
    got = store.get_historical_features(query, names, tier="race").to_dicts()
    for q, g in zip(query.to_dicts(), got, strict=True):
        candidates = [(r["published_at"], r["lap_timestamp"], i) for i, r in enumerate(rows)
                      if r["driver_id"] == q["driver_id"]
                      and r["published_at"] < q["event_timestamp"]]
        expected = oracle[max(candidates)[2]] if candidates else dict.fromkeys(names)
        for name in names:
            want, have = expected[name], g[name]
            assert (want is None and have is None) or have == pytest.approx(want), (q, name)
    assert sum(g["gap_to_leader"] is not None for g in got) > len(got) / 2


def _whole_race_median(frame, params, ctx):
    """Lap time minus the median of *every* lap of the race, later ones included: a leak."""
    delta = pl.col("lap_time") - pl.col("lap_time").median().over("race_id")
    return frame.select(*ctx.keys, ctx.time_column, ctx.available_column,
                        delta.alias("lap_time_delta_race_median"))


class LeakyPlugin:
    @hookimpl
    def register_transforms(self, register):
        register(Transform(
            "whole_race_median", _whole_race_median,
            lambda params, schema: {"lap_time_delta_race_median": pl.Float64()},
            scope="group", group_columns=lambda params: ["race_id"]))


def test_group_transform_reading_later_rows_is_refused(store, tmp_path: Path) -> None:
    laps = write_laps(tmp_path / "laps.parquet")
    params = {"outputs": {"lap_time_delta_race_median": {}}}
    plugin = LeakyPlugin()
    fp.pm.register(plugin, name="leaky_field")
    try:
        store.apply(definitions(laps, "whole_race_median", params))
        store.ingest()
        with pytest.raises(LeakageError, match="whole_race_median"):
            materialize(store, ["field_view"])
        assert store.registry.latest_artifact("view", "field_view") is None
    finally:
        fp.pm.unregister(plugin)
