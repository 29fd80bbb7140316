"""Incremental materialization equals a full recompute; anything but growth recomputes in full."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from featurestore import Entity, Feature, FeatureStore, Source, View
from featurestore.incremental import growth, new_output_rows, recompute_input
from featurestore.materialize import materialize, sort_for_retrieval
from featurestore.plugins import get_transform
from featurestore.transforms import TransformContext

T0 = dt.datetime(2025, 3, 1, 12)


def laps(drivers: list[int], n: int, start: int = 0) -> pl.DataFrame:
    rows = []
    for d in drivers:
        for i in range(start, start + n):
            rows.append({"driver_id": d, "race_id": 1 + i // 7, "lap": i + 1,
                         "t": T0 + dt.timedelta(minutes=i, seconds=d),
                         "lap_time": None if (i + d) % 13 == 0 else 30.0 + ((i * 7 + d * 3) % 11) / 10,
                         "position": 1 + (i + d) % 5, "pit": i % 9 == 0, "caution": i % 17 == 3})
    return pl.DataFrame(rows)


VIEWS = [
    View("rows", "laps", "rolling", {"column": "position", "windows": [3, 10], "aggs": ["mean", "min", "sum"]}),
    View("timed", "laps", "rolling", {"column": "lap_time", "windows": ["5m"], "aggs": ["mean", "max"],
                                      "include_current": True}),
    View("tyres", "laps", "falloff", {"lap_column": "lap", "group_by": ["race_id"], "pit_column": "pit",
                                      "caution_column": "caution"}),
]


def make_store(tmp_path: Path, frame: pl.DataFrame) -> tuple[FeatureStore, Path]:
    path = tmp_path / "laps.parquet"
    frame.write_parquet(path)
    store = FeatureStore(tmp_path / "store")
    store.apply([Entity("driver", ("driver_id",)), Source("laps", str(path), "driver", "t", tier="race"),
                 *VIEWS,
                 Feature("position_mean_last_3", view="rows"), Feature("lap_time_max_last_5m", view="timed"),
                 Feature("deg_slope", view="tyres")])
    return store, path


def artifact_frame(store: FeatureStore, view: str) -> pl.DataFrame:
    row = store.registry.latest_artifact("view", view)
    assert row is not None
    return pl.read_parquet(store.root / row["path"])


def test_grown_source_is_materialized_incrementally_and_equals_full(tmp_path: Path) -> None:
    store, path = make_store(tmp_path, laps([1, 2, 3], 40))
    assert {r.status for r in materialize(store)} == {"materialized"}
    pl.concat([laps([1, 2, 3], 40), laps([1, 3], 15, start=40), laps([4], 12)]).write_parquet(path)
    results = materialize(store)
    assert {r.view: r.status for r in results} == {"rows": "incremental", "timed": "incremental",
                                                   "tyres": "incremental"}
    rows = next(r for r in results if r.view == "rows").artifact
    assert "incremental: 42 new of 162 rows" in rows["verification"]
    incremental = {v.name: artifact_frame(store, v.name) for v in VIEWS}
    full = materialize(store, force=True)
    assert {r.status for r in full} == {"materialized"}
    for v in VIEWS:
        assert_frame_equal(artifact_frame(store, v.name), incremental[v.name], rel_tol=1e-12, abs_tol=1e-12)


@pytest.mark.parametrize("change", ["edit", "delete", "backfill"])
def test_anything_but_growth_recomputes_in_full(tmp_path: Path, change: str) -> None:
    base = laps([1, 2], 30)
    store, path = make_store(tmp_path, base)
    materialize(store)
    if change == "edit":
        changed = base.with_columns(pl.when(pl.col("lap") == 5).then(9).otherwise(pl.col("position")).alias("position"))
    elif change == "delete":
        changed = base.filter(pl.col("lap") != 5)
    else:  # a row earlier than the entity's last old row arrives late
        changed = pl.concat([base, laps([1], 1, start=0).with_columns(pl.col("t") - dt.timedelta(seconds=30))])
    changed.write_parquet(path)
    assert {r.status for r in materialize(store)} == {"materialized"}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_old=st.integers(0, 25), n_new=st.integers(1, 25), drivers=st.integers(1, 4),
       window=st.integers(1, 12), include_current=st.booleans())
def test_incremental_rolling_property(n_old: int, n_new: int, drivers: int, window: int,
                                      include_current: bool) -> None:
    ids = list(range(1, drivers + 1))
    full_input = laps(ids, n_old + n_new)
    old_input = full_input.filter(pl.col("lap") <= n_old)

    def snapshot(df: pl.DataFrame) -> pl.DataFrame:
        utc = pl.col("t").dt.replace_time_zone("UTC")
        return (df.with_columns(event_timestamp=utc, available_at=utc).drop("t")
                .sort("driver_id", "event_timestamp"))

    old, new = snapshot(old_input), snapshot(full_input)
    transform = get_transform("rolling").transform
    params = {"column": "position", "windows": [window], "aggs": ["mean", "sum", "std"],
              "include_current": include_current}
    ctx = TransformContext(keys=("driver_id",))
    run = lambda df: transform(df.lazy(), params, ctx).collect()
    grown = growth(old, new, ["driver_id"])
    assert grown is not None and grown.new_rows == new.height - old.height
    subset = recompute_input(new, ["driver_id"], grown, transform.lookback(params))
    fresh = new_output_rows(run(subset), ["driver_id"], grown)
    combined = sort_for_retrieval(pl.concat([run(old), fresh]), ["driver_id"])
    # Equal up to float rounding: a rolling sum that starts at another row rounds differently.
    assert_frame_equal(combined, sort_for_retrieval(run(new), ["driver_id"]), rel_tol=1e-12, abs_tol=1e-12)


def test_growth_needs_new_rows_available_after_the_old_ones() -> None:
    def snapshot(rows: list[tuple[int, int, int]]) -> pl.DataFrame:  # (driver, event min, available min)
        return pl.DataFrame({
            "driver_id": [r[0] for r in rows],
            "event_timestamp": [T0 + dt.timedelta(minutes=r[1]) for r in rows],
            "available_at": [T0 + dt.timedelta(minutes=r[2]) for r in rows],
            "x": [float(i) for i in range(len(rows))],
        }).with_columns(pl.col("event_timestamp", "available_at").dt.replace_time_zone("UTC"))

    old = [(1, 0, 10), (1, 1, 11), (2, 0, 3)]
    grown = growth(snapshot(old), snapshot([*old, (1, 2, 12), (2, 5, 6), (3, 0, 0)]), ["driver_id"])
    assert grown is not None and grown.new_rows == 3
    # Later in event time but available no later than an old row of the driver: not growth.
    for late in [(1, 2, 11), (1, 2, 5)]:
        rows = sorted([*old, late])
        assert growth(snapshot(old), snapshot(rows), ["driver_id"]) is None
