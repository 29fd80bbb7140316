"""Window views end to end: TOML and Python declarations, retrieval, feature sets, the CLI and
online lookups, all against the loop oracle over the source's own rows."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from featurestore import Entity, Feature, FeatureStore, Source, View
from featurestore.errors import DefinitionError
from featurestore.windowengine import WindowOutput
from tests.oracles_windows import assert_close, loop_oracle

DEFS = """
[[entities]]
name = "driver"
join_keys = ["driver_id"]

[[sources]]
name = "results"
path = "results.parquet"
entity = "driver"
event_time = "race_date"
timezone = "Europe/London"

[[views]]
name = "recent"
source = "results"
transform = "window"
[views.params]
features = [
  { column = "points", windows = ["90d", "all"], aggs = ["count", "sum", "mean", "last"] },
  { column = "status", indicator = { in = ["finished", "+1 lap"], ignore_case = true }, alias = "finished", windows = ["365d"], aggs = ["sum", "count"] },
]
{features}
[[features]]
name = "points"
source = "results"

[[feature_sets]]
name = "model"
features = ["points_count_90d", "points", "finished_sum_365d"]
"""
WINDOW_FEATURES = ["points_count_90d", "points_sum_90d", "points_mean_90d", "points_last_90d",
                   "points_count_all", "points_sum_all", "points_mean_all", "points_last_all",
                   "finished_sum_365d", "finished_count_365d"]
OUTPUTS = [WindowOutput(f"points_{a}_{w}", "points", a, d)
           for w, d in (("90d", timedelta(days=90)), ("all", None))
           for a in ("count", "sum", "mean", "last")] + [
    WindowOutput(f"finished_{a}_365d", "finished", a, timedelta(days=365)) for a in ("sum", "count")]
T0 = datetime(2023, 1, 1)


def _results(path: Path) -> None:
    rng = random.Random(4)
    rows = []
    for driver in range(1, 6):
        day = rng.randrange(40)
        for _ in range(rng.randrange(3, 12)):
            day += rng.choice([7, 14, 14, 30, 240])  # one long break leaves 90d windows empty
            rows.append({"driver_id": driver, "race_date": T0 + timedelta(days=day, hours=14),
                         "points": None if rng.random() < 0.1 else float(rng.randrange(26)),
                         "status": rng.choice(["Finished", "finished", "DNF", "+1 Lap", None])})
    pl.DataFrame(rows).write_parquet(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> FeatureStore:
    root = tmp_path_factory.mktemp("windows")
    _results(root / "results.parquet")
    features = "".join(f'\n[[features]]\nname = "{n}"\nview = "recent"\n' for n in WINDOW_FEATURES)
    (root / "features.toml").write_text(DEFS.replace("{features}", features))
    fs = FeatureStore(root / "store")
    fs.apply(root / "features.toml")
    fs.materialize()
    return fs


def _query(store: FeatureStore) -> pl.DataFrame:
    rng = random.Random(8)
    source = store.read_source("results")
    times = source["available_at"].to_list()
    cutoffs = [t + timedelta(seconds=rng.choice([0, 0, 1, -1, 86400 * 100])) for t in times]
    cutoffs += [datetime(2022, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC), None]
    keys = [rng.choice([1, 2, 3, 4, 5, 99]) for _ in cutoffs]
    q = pl.DataFrame({"driver_id": keys, "event_timestamp": cutoffs},
                     schema={"driver_id": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC")})
    return pl.concat([q, q.head(7)])  # duplicate query rows


def _oracle(store: FeatureStore, query: pl.DataFrame, **kw: object) -> list[dict[str, object]]:
    src = store.read_source("results").with_columns(
        finished=pl.col("status").str.to_lowercase().is_in(["finished", "+1 lap"]).cast(pl.Int32))
    return loop_oracle(src, query, OUTPUTS, keys=["driver_id"], cutoff="event_timestamp", **kw)


@pytest.mark.parametrize("inclusive", [False, True])
def test_retrieval_matches_the_oracle(store: FeatureStore, inclusive: bool) -> None:
    query = _query(store)
    with pytest.warns(Warning, match="null key or cutoff"):
        got = store.get_historical_features(query, WINDOW_FEATURES, tier="historical",
                                            inclusive=inclusive, with_availability=True)
    assert got.columns[:2] == query.columns and got.height == query.height
    assert_close(got.drop(query.columns).to_dicts(), _oracle(store, query, inclusive=inclusive))
    report = store.audit(got, WINDOW_FEATURES, inclusive=inclusive)
    assert report.ok and report.n_checked > 0


def test_a_long_break_empties_the_window(store: FeatureStore) -> None:
    """The issue's driver who last raced months ago: 0 races in the last 90 days, not a stale 3."""
    src = store.read_source("results")
    last = src.group_by("driver_id").agg(pl.col("available_at").max())
    query = last.select("driver_id", (pl.col("available_at") + timedelta(days=200))
                        .alias("event_timestamp"))
    got = store.get_historical_features(query, ["points_count_90d", "points_count_all"],
                                        tier="historical")
    assert got["points_count_90d"].to_list() == [0] * query.height
    assert got["points_count_all"].min() > 0


def test_ttl_leaves_stale_rows_out(store: FeatureStore) -> None:
    query = _query(store).drop_nulls()
    got = store.get_historical_features(query, WINDOW_FEATURES, tier="historical", ttl="20d")
    assert_close(got.drop(query.columns).to_dicts(),
                 [{k: v for k, v in r.items() if not k.endswith("__available_at")}
                  for r in _oracle(store, query, ttl=timedelta(days=20))])


def test_mixed_with_plain_features_keeps_request_order(store: FeatureStore) -> None:
    query = _query(store).drop_nulls()
    got = store.get_historical_features(query, "model", tier="historical", with_availability=True)
    # grouped by view as plain retrieval groups them: each view's features, then availability
    assert got.columns == [*query.columns, "points_count_90d", "finished_sum_365d",
                           "points_count_90d__available_at", "finished_sum_365d__available_at",
                           "points", "points__available_at"]
    plain = store.get_historical_features(query, ["points"], tier="historical")
    assert got["points"].equals(plain["points"])
    naive = query.with_columns(pl.col("event_timestamp").dt.convert_time_zone("Europe/London")
                               .dt.replace_time_zone(None))
    again = store.get_historical_features(naive, "model", tier="historical",
                                          cutoff_timezone="Europe/London")
    assert again.drop(query.columns).equals(got.select(again.drop(query.columns).columns))
    lazy = store.get_historical_features_lazy(query.lazy(), "model", tier="historical")
    assert lazy.collect().equals(got.select(lazy.collect_schema().names()))


def test_online_lookup_is_anchored_at_the_request_time(store: FeatureStore) -> None:
    src = store.read_source("results")
    for as_of in (datetime(2023, 6, 1, tzinfo=UTC), datetime(2024, 6, 1, tzinfo=UTC)):
        keys = [1, 2, 3, 99]
        got = store.get_online_features({"driver_id": keys}, WINDOW_FEATURES, tier="historical",
                                        as_of=as_of, with_status=True)
        query = pl.DataFrame({"driver_id": keys, "event_timestamp": [as_of] * len(keys)})
        want = loop_oracle(src.with_columns(finished=pl.col("status").str.to_lowercase()
                                            .is_in(["finished", "+1 lap"]).cast(pl.Int32)),
                           query, OUTPUTS, keys=["driver_id"], cutoff="event_timestamp")
        assert_close(got.select(WINDOW_FEATURES).to_dicts(),
                     [{k: v for k, v in r.items() if not k.endswith("__available_at")}
                      for r in want])
        assert got["points_count_90d__status"][3] == "PRESENT"  # count 0 of an unknown driver
        assert got["points_mean_90d__status"][3] == "NOT_FOUND"


def test_publish_leaves_window_views_to_request_time(store: FeatureStore) -> None:
    from featurestore.online.publishing import publish

    results = {r.view: r.status for r in publish(store)}
    assert results["recent"] == "computed-at-request" and results["results"] == "published"
    as_of = datetime(2030, 1, 1, tzinfo=UTC)  # long after the last race: every 90d window empty
    got = store.get_online_features({"driver_id": [1, 2]}, ["points_count_90d", "points"],
                                    tier="historical", as_of=as_of)
    assert got["points_count_90d"].to_list() == [0, 0]
    training = store.get_historical_features(
        pl.DataFrame({"driver_id": [1, 2], "event_timestamp": [as_of] * 2}),
        ["points_count_90d", "points"], tier="historical")
    assert got.select("points_count_90d", "points").equals(
        training.select("points_count_90d", "points"))


def test_cli_retrieve_serves_window_features(store: FeatureStore, tmp_path: Path) -> None:
    query = _query(store).drop_nulls()
    query.write_parquet(tmp_path / "q.parquet")
    env = {**os.environ, "FEATURESTORE_DEBUG": ""}
    env.pop("FEATURESTORE_REGISTRY_URL", None)
    proc = subprocess.run([sys.executable, "-m", "featurestore", "--store", str(store.root),
                           "retrieve", "--entities", str(tmp_path / "q.parquet"), "--features",
                           "model", "--tier", "historical", "--audit",
                           "-o", str(tmp_path / "out.parquet")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "0 available after their cutoff" in proc.stdout
    got = pl.read_parquet(tmp_path / "out.parquet")
    assert got.equals(store.get_historical_features(query, "model", tier="historical"))


def test_python_declaration_and_bad_params_fail_at_apply(tmp_path: Path) -> None:
    _results(tmp_path / "results.parquet")
    fs = FeatureStore(tmp_path / "store")
    base = [Entity("driver", ("driver_id",)),
            Source("results", str(tmp_path / "results.parquet"), "driver", "race_date",
                   timezone="UTC")]
    view = View("w", "results", "window", {"column": "points", "windows": ["30d", "all"],
                                           "aggs": ["max", "std"]})
    fs.apply([*base, view, Feature("points_max_30d", view="w"),
              Feature("points_std_all", view="w")])
    fs.materialize()
    q = pl.DataFrame({"driver_id": [1], "event_timestamp": [datetime(2024, 1, 1, tzinfo=UTC)]})
    assert fs.get_historical_features(q, ["points_max_30d", "points_std_all"],
                                      tier="historical").height == 1
    bad = View("w", "results", "window", {"column": "points", "windows": ["30 days"],
                                          "aggs": ["max"]})
    with pytest.raises(DefinitionError, match=r"view 'w'.*windows\[0\]"):
        fs.apply([*base, bad, Feature("points_max_30d", view="w")])
