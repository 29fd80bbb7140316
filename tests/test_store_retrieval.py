"""Retrieval through the store: tier guard first, feature sets, versions, views, CLI."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore import (
    Entity,
    Feature,
    FeatureSet,
    FeatureStore,
    LeakageError,
    NotFoundError,
    Source,
)
from featurestore.errors import DataWarning
from featurestore.materialize import materialize
from tests.storekit import open_store

UTC = dt.UTC


def _write(tmp_path: Path) -> tuple[Path, Path]:
    results = tmp_path / "results.parquet"
    pl.DataFrame({
        "driver_id": [1, 1, 2],
        "race_end": [dt.datetime(2025, 3, 1, 20), dt.datetime(2025, 3, 8, 20), dt.datetime(2025, 3, 1, 20)],
        "finish": [4, 9, 1],
    }).write_parquet(results)
    quali = tmp_path / "quali.parquet"
    pl.DataFrame({
        "driver_id": [1, 2],
        "session_end": [dt.datetime(2025, 3, 7, 18), dt.datetime(2025, 3, 7, 18)],
        "grid": [12, 3],
    }).write_parquet(quali)
    return results, quali


def _defs(results: Path, quali: Path, grid_dtype: str = "Int64") -> list[object]:
    return [
        Entity("driver", ("driver_id",)),
        Source("results", str(results), "driver", "race_end", tier="historical"),
        Source("quali", str(quali), "driver", "session_end", tier="qualifying"),
        Feature("finish", source="results"),
        Feature("grid", source="quali", dtype=grid_dtype),
        FeatureSet("prerace", ("finish", "grid")),
    ]


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    s = open_store(tmp_path)
    s.apply(_defs(*_write(tmp_path)))
    materialize(s)
    return s


def query() -> pl.DataFrame:
    return pl.DataFrame({
        "driver_id": [1, 2, 1, 3],
        "event_timestamp": [dt.datetime(2025, 3, 8, 19, tzinfo=UTC)] * 2
        + [dt.datetime(2025, 3, 1, 20, tzinfo=UTC), dt.datetime(2025, 3, 8, 19, tzinfo=UTC)],
        "label": [9, 2, 4, 0],
    })


def test_training_frame_uses_only_earlier_values(store: FeatureStore) -> None:
    out = store.get_historical_features(query(), "prerace", tier="qualifying")
    assert out.columns == ["driver_id", "event_timestamp", "label", "finish", "grid"]
    # Row 3: cutoff equals driver 1's first race end: strict rule, no value yet.
    assert out["finish"].to_list() == [4, 1, None, None]
    assert out["grid"].to_list() == [12, 3, None, None]
    inclusive = store.get_historical_features(query(), ["finish"], tier="historical", inclusive=True)
    assert inclusive["finish"].to_list() == [4, 1, 4, None]


def test_tier_guard_fires_before_any_data_is_read(store: FeatureStore) -> None:
    for row in store.list("artifact"):
        (store.root / row["path"]).unlink()
    with pytest.raises(LeakageError, match=r"grid \(tier qualifying\)"):
        store.get_historical_features(query(), ["finish", "grid"], tier="practice")


def test_unknown_feature_is_named(store: FeatureStore) -> None:
    with pytest.raises(NotFoundError, match="feature 'avg_finish' is not registered"):
        store.get_historical_features(query(), ["finish", "avg_finish"], tier="race")


def test_unmaterialized_feature_says_what_to_run(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    s.apply(_defs(*_write(tmp_path)))
    with pytest.raises(NotFoundError, match="featurestore materialize results"):
        s.get_historical_features(query(), ["finish"], tier="race")


def test_pinned_versions_stay_readable(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    results, quali = _write(tmp_path)
    s.apply(_defs(results, quali))
    materialize(s)
    before = s.get_historical_features(query(), "prerace", tier="race")
    # grid becomes a Float64 feature: a new version; the set pinned v1 until re-applied.
    pl.read_parquet(quali).with_columns(pl.col("grid").cast(pl.Float64) + 0.5).write_parquet(quali)
    defs = _defs(results, quali, grid_dtype="Float64")
    s.apply([d for d in defs if not isinstance(d, FeatureSet)])
    materialize(s)
    assert s.get_historical_features(query(), "prerace", tier="race").equals(before)
    latest = s.get_historical_features(query(), ["grid"], tier="race")
    assert latest["grid"].to_list() == [12.5, 3.5, None, None]
    old = s.get_historical_features(query(), ["grid@1"], tier="race")
    assert old["grid"].to_list() == [12, 3, None, None]


def test_online_latest_values(store: FeatureStore) -> None:
    out = store.get_online_features({"driver_id": [2, 1, 7]}, ["finish", "grid"],
                                    as_of=dt.datetime(2026, 1, 1, tzinfo=UTC), tier="race")
    assert out.to_dicts() == [{"driver_id": 2, "finish": 1, "grid": 3},
                              {"driver_id": 1, "finish": 9, "grid": 12},
                              {"driver_id": 7, "finish": None, "grid": None}]
    early = store.get_online_features([{"driver_id": 1}], ["finish"],
                                      as_of=dt.datetime(2025, 3, 5, tzinfo=UTC), tier="race")
    assert early["finish"].to_list() == [4]


def test_audit_counts_every_value(store: FeatureStore) -> None:
    out = store.get_historical_features(query(), ["finish", "grid"], tier="race",
                                        with_availability=True)
    report = store.audit(out, ["finish", "grid"])
    assert report.n_violations == 0 and report.n_checked == 4  # non-null values


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(st.one_of(st.none(), st.integers(0, 3)), min_size=0, max_size=8),
       days=st.lists(st.one_of(st.none(), st.integers(0, 12)), min_size=8, max_size=8),
       hour=st.sampled_from([0, 18, 20, 21]), inclusive=st.booleans(),
       ttl=st.sampled_from([None, "2d", "7d"]), with_availability=st.booleans(),
       features=st.sampled_from(["prerace", ["finish"], ["grid", "finish"]]))
def test_lazy_retrieval_through_the_store_equals_the_eager_one(
        store: FeatureStore, keys: list[int | None], days: list[int | None], hour: int,
        inclusive: bool, ttl: str | None, with_availability: bool, features: object) -> None:
    """``get_historical_features_lazy`` (the join_asof plan over the store's artifacts) gives
    the eager engine's frame, null keys and cutoffs, ties, TTL and availability included."""
    start = dt.datetime(2025, 2, 27, hour)
    cutoffs = [None if d is None else start + dt.timedelta(days=d) for d in days[:len(keys)]]
    q = pl.DataFrame({"driver_id": keys, "event_timestamp": cutoffs, "row": range(len(keys))},
                     schema={"driver_id": pl.Int64, "event_timestamp": pl.Datetime("us"),
                             "row": pl.Int64})
    kw = {"tier": "qualifying", "inclusive": inclusive, "ttl": ttl,
          "with_availability": with_availability, "cutoff_timezone": "Europe/Paris"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # null keys and cutoffs are counted
        lazy = store.get_historical_features_lazy(q, features, **kw)
        assert isinstance(lazy, pl.LazyFrame)
        got = lazy.collect()
        want = store.get_historical_features(q, features, **kw)
    assert got.equals(want)
    if with_availability:
        assert store.audit(got, ["finish"] if features == ["finish"] else ["finish", "grid"],
                           cutoff_timezone="Europe/Paris").ok


def test_lazy_retrieval_checks_the_tier_before_reading(store: FeatureStore) -> None:
    for row in store.list("artifact"):
        (store.root / row["path"]).unlink()
    with pytest.raises(LeakageError, match=r"grid \(tier qualifying\)"):
        store.get_historical_features_lazy(query(), ["finish", "grid"], tier="practice")


def test_cli_retrieve_writes_the_frame(store: FeatureStore, tmp_path: Path) -> None:
    entities = tmp_path / "entities.parquet"
    query().write_parquet(entities)
    out = tmp_path / "train.parquet"
    env = {**os.environ, "FEATURESTORE_ROOT": str(store.root)}
    env.pop("FEATURESTORE_REGISTRY_URL", None)
    proc = subprocess.run([sys.executable, "-m", "featurestore", "retrieve", "--entities", str(entities),
                           "--features", "finish,grid", "--tier", "qualifying", "--audit",
                           "--output", str(out), "--json"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["audit"] == {"checked": 4, "violations": 0, "unverified_views": []}
    assert pl.read_parquet(out).equals(store.get_historical_features(query(), ["finish", "grid"],
                                                                     tier="qualifying"))
    leak = subprocess.run([sys.executable, "-m", "featurestore", "retrieve", "--entities", str(entities),
                           "--features", "grid", "--tier", "practice", "--output", str(out)],
                          env=env, capture_output=True, text=True)
    assert leak.returncode == 3 and "LeakageError" not in leak.stderr and "grid" in leak.stderr


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keys=st.lists(st.one_of(st.none(), st.integers(0, 4)), min_size=1, max_size=8),
       day=st.integers(0, 12), hour=st.sampled_from([0, 18, 20, 21]))
def test_online_few_keys_equals_the_join_engine(store: FeatureStore, keys: list[int | None],
                                                day: int, hour: int) -> None:
    moment = dt.datetime(2025, 2, 27, hour, tzinfo=UTC) + dt.timedelta(days=day)
    online = store.get_online_features({"driver_id": keys}, ["finish", "grid"], as_of=moment,
                                       tier="race")
    query = pl.DataFrame({"driver_id": keys, "event_timestamp": [moment] * len(keys)},
                         schema={"driver_id": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC")})
    engine = store.get_historical_features(query, ["finish", "grid"], tier="race")
    assert online.equals(engine.drop("event_timestamp"))


def test_online_ties_go_to_the_later_event(tmp_path: Path) -> None:
    path = tmp_path / "ties.parquet"
    published = dt.datetime(2025, 3, 2, 9)
    pl.DataFrame({"driver_id": [1, 1, 1, 2], "t": [dt.datetime(2025, 3, 1, h) for h in (15, 12, 9, 9)],
                  "published": [published, published, published, published + dt.timedelta(days=9)],
                  "x": [3.0, 2.0, 1.0, 7.0]}).write_parquet(path)
    s = open_store(tmp_path)
    s.apply([Entity("driver", ("driver_id",)),
             Source("s", str(path), "driver", "t", available_time="published"),
             Feature("x", source="s")])
    materialize(s)
    moment = dt.datetime(2025, 3, 5, tzinfo=UTC)
    online = s.get_online_features({"driver_id": [1, 2]}, ["x"], as_of=moment, tier="race")
    assert online["x"].to_list() == [3.0, None]
    query = pl.DataFrame({"driver_id": [1, 2], "event_timestamp": [moment, moment]})
    assert s.get_historical_features(query, ["x"], tier="race")["x"].to_list() == [3.0, None]
