"""The leakage guards, hole by hole (issue 9, section 3).

Each test names the hole it closes; every one of them failed before the fix. Registry tests run
on SQLite and PostgreSQL (``registry_url``); command-line tests run the real ``featurestore``
process.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal
from sqlalchemy import text

from featurestore import (
    DefinitionError,
    Entity,
    Feature,
    FeatureSet,
    FeatureStore,
    LeakageError,
    Source,
    View,
)
from featurestore.definitions import Definitions, Fill, parse_definitions
from featurestore.dtypes import parse_dtype_string
from featurestore.hookspecs import hookimpl
from featurestore.materialize import materialize
from featurestore.plan import view_input_columns
from featurestore.sourcedata import causal_fill
from featurestore.tiers import DEFAULT_TIERS, Tier
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP, Transform

UTC = dt.UTC
NY = "America/New_York"
T0 = dt.datetime(2025, 3, 1, 12)


def open_store(tmp_path: Path, registry_url: str | None = None) -> FeatureStore:
    return FeatureStore(tmp_path / "store", registry_url=registry_url)


def cli(*args: str, store: FeatureStore, code: int = 0) -> subprocess.CompletedProcess[str]:
    """Run the real command line against ``store`` and check its exit code."""
    env = {**os.environ, "FEATURESTORE_DEBUG": "", "COLUMNS": "200"}
    env.pop("FEATURESTORE_REGISTRY_URL", None)
    proc = subprocess.run([sys.executable, "-m", "featurestore", "--store", str(store.root),
                           "--registry", store.registry.url, *args],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == code, f"exit {proc.returncode}: {proc.stderr}{proc.stdout}"
    return proc


def write(path: Path, data: dict[str, list[Any]]) -> Path:
    pl.DataFrame(data).write_parquet(path)
    return path


def results_file(tmp_path: Path, name: str = "results.parquet", **extra: list[Any]) -> Path:
    return write(tmp_path / name, {
        "driver_id": [1, 1, 2, 2],
        "race_end": [T0, T0 + dt.timedelta(days=7), T0, T0 + dt.timedelta(days=7)],
        "finish": [3, 7, 1, 5],
        "laps_led": [10, 0, 50, 2],
        **extra,
    })


def registry_rows(store: FeatureStore) -> dict[str, Any]:
    """Everything an apply may write, for "nothing changed" checks."""
    return {k: store.registry.latest(k) for k in ("entity", "source", "view", "feature",
                                                  "feature_set")} | {"tiers": store.tiers}


# ============================================================================ 1. versions
# A feature set pinning finish@2 (race) before finish@1 (historical) passed the tier guard at
# historical: the check was keyed by name, and the later pin overwrote the earlier one.


def two_versions(tmp_path: Path, registry_url: str) -> FeatureStore:
    store = open_store(tmp_path, registry_url)
    path = results_file(tmp_path)
    base = [Entity("driver", ("driver_id",)), Source("results", str(path), "driver", "race_end")]
    store.apply([*base, Feature("finish", source="results"),
                 Feature("laps_led", source="results")])
    store.ingest()
    materialize(store)
    # A new meaning: another column, known only at the race.
    store.apply([*base, Feature("finish", source="results", column="laps_led", tier="race"),
                 Feature("laps_led", source="results"),
                 FeatureSet("both", ("finish@2", "finish@1"))])
    materialize(store)
    return store


def query() -> pl.DataFrame:
    return pl.DataFrame({"driver_id": [1, 2, 1],
                         "event_timestamp": [dt.datetime(2025, 3, 20, tzinfo=UTC)] * 3})


def test_two_versions_of_one_feature_are_each_tier_checked(tmp_path: Path, registry_url: str) -> None:
    store = two_versions(tmp_path, registry_url)
    assert [(r["name"], r["version"], r["tier"]) for r in store.resolve_features("both")] == [
        ("finish", 2, "race"), ("finish", 1, "historical")]
    for refs in ("both", ["finish@2", "finish@1"], ["finish@1", "finish"]):
        with pytest.raises(LeakageError, match=r"finish@2 \(tier race\)") as info:
            store.get_historical_features(query(), refs, tier="historical")
        assert "finish@1" not in str(info.value)
        with pytest.raises(LeakageError, match=r"finish@2 \(tier race\)"):
            store.get_online_features({"driver_id": [1]}, refs, tier="qualifying")


def test_two_versions_get_their_own_columns(tmp_path: Path, registry_url: str) -> None:
    store = two_versions(tmp_path, registry_url)
    out = store.get_historical_features(query(), "both", tier="race", with_availability=True)
    assert out.columns == ["driver_id", "event_timestamp", "finish@2", "finish@2__available_at",
                           "finish@1", "finish@1__available_at"]
    # finish@1 reads the finish column, finish@2 the laps_led column (plain lookups).
    assert out["finish@1"].to_list() == [7, 5, 7]
    assert out["finish@2"].to_list() == [0, 2, 0]
    assert store.audit(out, ["finish@2", "finish@1"]).n_violations == 0
    online = store.get_online_features({"driver_id": [2]}, ["finish@1", "finish@2"], tier="race",
                                       as_of=dt.datetime(2025, 3, 20, tzinfo=UTC))
    assert online.to_dicts() == [{"driver_id": 2, "finish@1": 5, "finish@2": 2}]
    # One version alone keeps the plain name; the same version twice is a mistake.
    assert store.get_historical_features(query(), ["finish@1"], tier="race").columns[-1] == "finish"
    with pytest.raises(DefinitionError, match="'finish' version 2 is requested twice"):
        store.get_historical_features(query(), ["finish", "finish@2"], tier="race")


def test_two_versions_from_the_online_store(tmp_path: Path, registry_url: str) -> None:
    from featurestore.online import publish

    store = two_versions(tmp_path, registry_url)
    publish(store)  # the current view version goes online; finish@1's comes from its artifact
    moment = dt.datetime(2025, 3, 20, tzinfo=UTC)
    with pytest.raises(LeakageError, match=r"finish@2 \(tier race\)"):
        store.get_online_features({"driver_id": [2]}, "both", tier="qualifying", as_of=moment)
    online = store.get_online_features({"driver_id": [2, 1]}, "both", tier="race", as_of=moment)
    expected = store.get_historical_features(
        pl.DataFrame({"driver_id": [2, 1], "event_timestamp": [moment] * 2}), "both", tier="race")
    assert online.to_dicts() == expected.drop("event_timestamp").to_dicts()
    assert online.columns == ["driver_id", "finish@2", "finish@1"]


def test_a_feature_set_pins_a_version_once(tmp_path: Path, registry_url: str) -> None:
    store = two_versions(tmp_path, registry_url)
    with pytest.raises(DefinitionError, match="feature set 'twice' pins finish@2 twice"):
        store.apply([FeatureSet("twice", ("finish", "finish@2"))])


def test_cli_retrieve_names_two_versions(tmp_path: Path) -> None:
    store = two_versions(tmp_path, f"sqlite:///{tmp_path / 'registry.db'}")
    entities = tmp_path / "entities.parquet"
    query().write_parquet(entities)
    out = tmp_path / "train.parquet"
    proc = cli("retrieve", "--entities", str(entities), "--features", "both", "--tier", "race",
               "--audit", "-o", str(out), "--json", store=store)
    summary = json.loads(proc.stdout)
    assert summary["features"] == ["finish@2", "finish@1"]
    assert summary["audit"]["checked"] == 6 and summary["audit"]["violations"] == 0
    assert pl.read_parquet(out).columns == ["driver_id", "event_timestamp", "finish@2", "finish@1"]
    leak = cli("retrieve", "--entities", str(entities), "--features", "both", "--tier",
               "historical", "-o", str(out), store=store, code=3)
    assert "finish@2 (tier race)" in leak.stderr


# ============================================================================ 2. tier order
# A feature (or view) declared at an earlier tier than its source was accepted and then served
# at that earlier tier.


def race_source(tmp_path: Path) -> list[object]:
    return [Entity("driver", ("driver_id",)),
            Source("results", str(results_file(tmp_path)), "driver", "race_end", tier="race")]


@pytest.mark.parametrize("decl", [
    pytest.param(lambda: [Feature("finish", source="results", tier="historical")],
                 id="feature-before-source"),
    pytest.param(lambda: [View("form", "results", "rolling",
                               {"column": "finish", "windows": [3], "aggs": ["mean"]},
                               tier="qualifying")], id="view-before-source"),
])
def test_earlier_than_the_source_is_refused(tmp_path: Path, registry_url: str, decl: Any) -> None:
    store = open_store(tmp_path, registry_url)
    store.apply(race_source(tmp_path))
    before = registry_rows(store)
    with pytest.raises(LeakageError) as info:
        store.apply([*race_source(tmp_path), *decl()])
    message = str(info.value)
    assert "earlier than its source 'results' (tier race)" in message
    assert ("feature 'finish' is declared at tier historical" in message
            or "view 'form' is declared at tier qualifying" in message)
    assert registry_rows(store) == before


def test_feature_earlier_than_its_view_is_refused(tmp_path: Path, registry_url: str) -> None:
    store = open_store(tmp_path, registry_url)
    path = results_file(tmp_path)
    defs = [Entity("driver", ("driver_id",)), Source("results", str(path), "driver", "race_end"),
            View("form", "results", "rolling", {"column": "finish", "windows": [3],
                                                 "aggs": ["mean"]}, tier="qualifying")]
    with pytest.raises(LeakageError, match="feature 'finish_mean_last_3' is declared at tier "
                                           r"practice, earlier than its view 'form' \(tier qualifying\)"):
        store.apply([*defs, Feature("finish_mean_last_3", view="form", tier="practice")])
    plan = store.apply([*defs, Feature("finish_mean_last_3", view="form")])
    assert store.registry.get("feature", "finish_mean_last_3")["tier"] == "qualifying"
    assert plan.counts()["add"] == 4


def test_moving_a_source_later_refuses_its_earlier_features(tmp_path: Path, registry_url: str) -> None:
    store = open_store(tmp_path, registry_url)
    path = results_file(tmp_path)
    store.apply([Entity("driver", ("driver_id",)), Source("results", str(path), "driver", "race_end"),
                 Feature("finish", source="results")])
    with pytest.raises(LeakageError, match=r"feature 'finish' is declared at tier historical, "
                                           r"earlier than its source 'results' \(tier race\)"):
        store.apply([Source("results", str(path), "driver", "race_end", tier="race")])
    store.apply([Source("results", str(path), "driver", "race_end", tier="race"),
                 Feature("finish", source="results", tier="race")])
    assert store.registry.get("feature", "finish")["version"] == 2


def test_cli_apply_exits_3_on_a_feature_before_its_source(tmp_path: Path) -> None:
    results_file(tmp_path)
    defs = tmp_path / "features.toml"
    defs.write_text('[[entities]]\nname = "driver"\njoin_keys = ["driver_id"]\n\n'
                    '[[sources]]\nname = "results"\npath = "results.parquet"\nentity = "driver"\n'
                    'event_time = "race_end"\ntier = "race"\n\n'
                    '[[features]]\nname = "finish"\nsource = "results"\ntier = "historical"\n')
    store = open_store(tmp_path)
    proc = cli("apply", str(defs), store=store, code=3)
    assert proc.stderr.startswith("Error: feature 'finish' is declared at tier historical")
    assert store.list("feature") == []


# ============================================================================ 3. forbidden columns
# The rule compared source columns with later-tier feature *names*: a race-result column read
# under another name passed, and a column coincidentally named like a feature was refused.


def laps_file(tmp_path: Path, name: str, **extra: list[Any]) -> Path:
    return write(tmp_path / name, {
        "driver_id": [1, 1, 2], "t": [T0, T0 + dt.timedelta(minutes=1), T0],
        "lap": [1, 2, 1], "lap_time": [30.1, 30.4, 30.2], **extra})


def test_a_race_column_read_under_another_name_is_refused(tmp_path: Path, registry_url: str) -> None:
    store = open_store(tmp_path, registry_url)
    race = results_file(tmp_path, "race.parquet")
    store.apply([Entity("driver", ("driver_id",)),
                 Source("race", str(race), "driver", "race_end", tier="race"),
                 Feature("race_finish", source="race", column="finish", tier="race")])
    entry = results_file(tmp_path, "entry.parquet")  # carries finish, the race's own result
    before = registry_rows(store)
    with pytest.raises(LeakageError) as info:
        store.apply([Source("entry_list", str(entry), "driver", "race_end", tier="historical")])
    message = str(info.value)
    assert message.startswith("source 'entry_list' (tier historical) carries column(s)")
    assert "column 'finish': feature 'race_finish' (tier race) reads it from source 'race'" in message
    assert registry_rows(store) == before
    # The same source at the race tier carries race information legitimately.
    store.apply([Source("entry_list", str(entry), "driver", "race_end", tier="race")])


def test_a_column_named_like_a_later_feature_is_not_refused(tmp_path: Path, registry_url: str) -> None:
    store = open_store(tmp_path, registry_url)
    laps = laps_file(tmp_path, "laps.parquet")
    store.apply([Entity("driver", ("driver_id",)),
                 Source("laps", str(laps), "driver", "t", tier="race"),
                 View("pace", "laps", "rolling", {"column": "lap_time", "windows": [2],
                                                  "aggs": ["mean"]}),
                 Feature("lap_time_mean_last_2", view="pace")])
    # A historical source whose column shares the race feature's name, not its information.
    hist = results_file(tmp_path, "hist.parquet", lap_time_mean_last_2=[1.0, 2.0, 3.0, 4.0])
    store.apply([Source("hist", str(hist), "driver", "race_end", tier="historical")])
    assert store.registry.get("source", "hist")["tier"] == "historical"


def test_a_column_a_later_view_reads_is_refused_unless_declared_here(tmp_path: Path,
                                                                     registry_url: str) -> None:
    store = open_store(tmp_path, registry_url)
    store.apply([Entity("driver", ("driver_id",)),
                 Source("race_laps", str(laps_file(tmp_path, "race.parquet", pit=[0, 1, 0])),
                        "driver", "t", tier="race"),
                 View("tyres", "race_laps", "falloff", {"lap_column": "lap", "pit_column": "pit"}),
                 Feature("tyre_age", view="tyres")])
    practice = laps_file(tmp_path, "practice.parquet", pit=[0, 0, 1])
    with pytest.raises(LeakageError) as info:
        store.apply([Source("practice_laps", str(practice), "driver", "t", tier="practice")])
    message = str(info.value)
    # falloff reads lap_time by default and pit as named; lap only orders rows.
    assert "column 'lap_time': view 'tyres' (tier race) reads it from source 'race_laps'" in message
    assert "column 'pit': view 'tyres' (tier race) reads it" in message
    assert "'lap'" not in message and "'driver_id'" not in message
    # Practice features reading practice lap times and pit flags declare them practice information.
    store.apply([Source("practice_laps", str(practice), "driver", "t", tier="practice"),
                 View("p_tyres", "practice_laps", "falloff", {"pit_column": "pit"}),
                 Feature("practice_stint", view="p_tyres", column="stint")])


def test_tier_contract_lists_forbidden_columns(tmp_path: Path, registry_url: str) -> None:
    store = open_store(tmp_path, registry_url)
    quali = laps_file(tmp_path, "quali.parquet", running_position=[3, 2, 1])
    tiers_toml = ('[[tiers]]\nname = "historical"\n[[tiers]]\nname = "practice"\n'
            '[[tiers]]\nname = "qualifying"\nlag = "5m"\n'
            '[[tiers]]\nname = "race"\nlag = "0s"\nforbidden_before = ["running_position", "gap"]\n'
            '[[entities]]\nname = "driver"\njoin_keys = ["driver_id"]\n')
    source = (f'[[sources]]\nname = "quali"\npath = "{quali}"\nentity = "driver"\n'
              'event_time = "t"\ntier = "qualifying"\n'
              '[[features]]\nname = "running_position"\nsource = "quali"\n')
    defs_file = tmp_path / "features.toml"
    defs_file.write_text(tiers_toml)
    plan = store.plan(defs_file)
    assert plan.tier_changes == [
        "tiers: historical(+0s) < practice(+0s) < qualifying(+0s) < race(+0s) -> historical(+0s) "
        "< practice(+0s) < qualifying(+5m) < race(+0s)[forbidden before: gap, running_position]"]
    store.apply(defs_file)
    assert store.tiers.get("race").forbidden_before == ("gap", "running_position")
    with store.registry.read() as conn:
        stored = dict(conn.execute(text_query("SELECT name, forbidden_columns FROM tiers")).all())
    assert json.loads(stored["race"]) == ["gap", "running_position"]
    assert json.loads(stored["historical"]) == []
    assert store.apply(defs_file).is_noop
    # Even a feature reading the column from this source does not make it qualifying information.
    defs_file.write_text(tiers_toml + source)
    before = registry_rows(store)
    with pytest.raises(LeakageError, match=r"source 'quali' \(tier qualifying\) carries column.*"
                                           r"'running_position': tier race's contract lists it "
                                           "in forbidden_before"):
        store.apply(defs_file)
    assert registry_rows(store) == before
    listed = json.loads(cli("list", "tiers", "--json", store=store).stdout)
    assert [t["forbidden_before"] for t in listed] == [[], [], [], ["gap", "running_position"]]
    assert "running_position" in cli("list", "tiers", store=store).stdout
    # At the race tier the source may carry it.
    defs_file.write_text(tiers_toml + source.replace('tier = "qualifying"', 'tier = "race"'))
    store.apply(defs_file)


def text_query(sql: str) -> Any:
    return text(sql)


def test_forbidden_before_must_list_strings() -> None:
    with pytest.raises(DefinitionError, match="'forbidden_before' must be a list of strings"):
        parse_definitions({"tiers": [{"name": "race", "forbidden_before": [1]}]})
    with pytest.raises(DefinitionError, match="empty column name"):
        parse_definitions({"tiers": [{"name": "race", "forbidden_before": [""]}]})


def test_view_input_columns_without_a_declaration_read_column_params() -> None:
    schema = {"driver_id": pl.Int64(), EVENT_TIMESTAMP: pl.Datetime("us", "UTC"),
              "speed": pl.Float64(), "lap": pl.Int64(), "flag": pl.Boolean(), "gap": pl.Float64()}
    view = {"transform": "no_such_transform",
            "params": {"value_column": "speed", "group_by": ["lap"],
                       "nested": {"columns": ["flag", "not_in_source"], "label": "gap"},
                       "column": "driver_id"}}
    assert view_input_columns(view, schema, ["driver_id"]) == {"speed", "flag"}
    rolling = {"transform": "rolling", "params": {
        "features": [{"column": "speed", "windows": [3], "aggs": ["mean"],
                      "where": {"column": "flag", "eq": True}}], "tie_break": ["lap"]}}
    assert view_input_columns(rolling, schema, ["driver_id"]) == {"speed", "flag"}


# ============================================================================ 4. causal fills
# Fills ran in event-time order only: a correction published late (an earlier event, available
# later) donated its value to a row that was known before the correction existed.


def fill_oracle(rows: list[dict[str, Any]], method: str, value: float | None) -> list[float | None]:
    """Row by row: donors are earlier in event order and available no later than the row."""
    out = []
    for i, r in enumerate(rows):
        x = r["x"]
        if x is None:
            donors = [q["x"] for q in rows[:i] if q["k"] == r["k"] and q["x"] is not None
                      and q[AVAILABLE_AT] <= r[AVAILABLE_AT]]
            if donors:
                x = donors[-1] if method == "forward" else sum(donors) / len(donors)
            else:
                x = value
        out.append(x)
    return out


fill_rows = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 30),
                               st.one_of(st.none(), st.integers(-50, 50).map(float))),
                     max_size=30)


def fill_frame(rows: list[tuple[int, int, float | None]]) -> pl.DataFrame:
    """Rows in ingestion order (keys, then event time); availability in hours, any order."""
    ordered = sorted(enumerate(rows), key=lambda r: (r[1][0], r[0]))
    return pl.DataFrame({
        "k": [r[0] for _, r in ordered],
        EVENT_TIMESTAMP: [T0 + dt.timedelta(minutes=i) for i, _ in ordered],
        AVAILABLE_AT: [T0 + dt.timedelta(hours=r[1]) for _, r in ordered],
        "x": [r[2] for _, r in ordered]}, schema_overrides={"x": pl.Float64})


@settings(max_examples=200, deadline=None)
@given(rows=fill_rows, method=st.sampled_from(["forward", "expanding_mean"]),
       value=st.one_of(st.none(), st.just(-1.0)))
def test_fills_match_a_plain_loop_and_ignore_later_availability(rows, method, value) -> None:  # type: ignore[no-untyped-def]
    frame = fill_frame(rows)
    fills = [{"column": "x", "method": method, "value": value}]
    full = causal_fill(frame, ["k"], fills)
    assert full.drop("x").equals(frame.drop("x"))
    assert full["x"].to_list() == pytest.approx(fill_oracle(frame.to_dicts(), method, value))
    by_event = dict(zip(full[EVENT_TIMESTAMP].to_list(), full["x"].to_list(), strict=True))
    for r in frame.iter_rows(named=True):
        # Remove every row available after r: r's filled value must not change.
        kept = frame.filter(pl.col(AVAILABLE_AT) <= r[AVAILABLE_AT])
        again = causal_fill(kept, ["k"], fills)
        mine = again.filter(pl.col(EVENT_TIMESTAMP) == r[EVENT_TIMESTAMP])["x"].item()
        assert mine == pytest.approx(by_event[r[EVENT_TIMESTAMP]])


def test_a_late_correction_does_not_fill_an_earlier_known_row(tmp_path: Path, registry_url: str) -> None:
    path = write(tmp_path / "results.parquet", {
        "driver_id": [1, 1, 1, 2, 2],
        "race_end": [T0, T0 + dt.timedelta(days=7), T0 + dt.timedelta(days=14), T0,
                     T0 + dt.timedelta(days=7)],
        # Race 1's result of driver 1 was published as a correction after race 2.
        "published": [T0 + dt.timedelta(days=10), T0 + dt.timedelta(days=7, hours=1),
                      T0 + dt.timedelta(days=14, hours=1), T0 + dt.timedelta(hours=1),
                      T0 + dt.timedelta(days=7, hours=1)],
        "finish": [4.0, None, None, 2.0, None],
    })
    store = open_store(tmp_path, registry_url)
    store.apply([Entity("driver", ("driver_id",)),
                 Source("results", str(path), "driver", "race_end", available_time="published",
                        fills=(Fill("finish", "forward", -1.0),)),
                 Feature("finish", source="results")])
    filled = store.read_source("results")
    # Race 2 of driver 1 was known before the correction: nothing earlier can fill it.
    assert filled["finish"].to_list() == [4.0, -1.0, 4.0, 2.0, 2.0]
    store.ingest()
    materialize(store)
    q = pl.DataFrame({"driver_id": [1, 1], "event_timestamp": [
        dt.datetime(2025, 3, 9, tzinfo=UTC), dt.datetime(2025, 3, 12, tzinfo=UTC)]})
    out = store.get_historical_features(q, ["finish"], tier="historical", with_availability=True)
    # 9 March: race 2's row (known 8 March); 12 March: the correction of race 1 (11 March).
    assert out["finish"].to_list() == [-1.0, 4.0]
    assert store.audit(out, ["finish"]).n_violations == 0


def test_fill_fast_path_when_availability_follows_events() -> None:
    # Fixed lag: availability never goes back, so the vectorized pass alone gives the answer.
    frame = pl.DataFrame({"k": [1, 1, 1, 2], EVENT_TIMESTAMP: [T0, T0, T0, T0],
                          "x": [1.0, None, 3.0, None]}).with_columns(
        (pl.col(EVENT_TIMESTAMP) + pl.duration(hours=pl.int_range(pl.len()))).alias(AVAILABLE_AT))
    out = causal_fill(frame, ["k"], [{"column": "x", "method": "expanding_mean"}])
    assert out["x"].to_list() == [1.0, 1.0, 3.0, None]


# ============================================================================ 5. online tier
# Online lookups defaulted to the last tier (every feature usable) and the CLI had no --tier.


def online_store(tmp_path: Path, registry_url: str) -> FeatureStore:
    store = open_store(tmp_path, registry_url)
    store.apply([Entity("driver", ("driver_id",)),
                 Source("results", str(results_file(tmp_path)), "driver", "race_end"),
                 Source("race", str(results_file(tmp_path, "race.parquet")), "driver",
                        "race_end", tier="race"),
                 Feature("finish", source="results"),
                 Feature("race_finish", source="race", column="finish")])
    store.ingest()
    materialize(store)
    return store


def test_online_needs_a_tier_or_a_store_default(tmp_path: Path, registry_url: str) -> None:
    store = online_store(tmp_path, registry_url)
    keys = {"driver_id": [1]}
    with pytest.raises(DefinitionError, match=r"pass tier=\.\.\. .*featurestore config default_tier"):
        store.get_online_features(keys, ["finish"])
    assert store.settings() == {"default_tier": None, "memory_limit": None,
                                "snapshot_layout": None, "compression": None}
    assert store.default_tier is None
    store.set_setting("default_tier", "historical")
    assert store.default_tier == "historical"
    assert store.get_online_features(keys, ["finish"])["finish"].to_list() == [7]
    with pytest.raises(LeakageError, match=r"race_finish \(tier race\)"):
        store.get_online_features(keys, ["finish", "race_finish"])
    out = store.get_online_features(keys, ["finish", "race_finish"], tier="race")
    assert out.to_dicts() == [{"driver_id": 1, "finish": 7, "race_finish": 7}]
    with pytest.raises(DefinitionError, match="unknown tier 'warmup'"):
        store.set_setting("default_tier", "warmup")
    with pytest.raises(DefinitionError, match="unknown setting 'colour'"):
        store.set_setting("colour", "red")
    assert store.default_tier == "historical"
    # A tier the default names cannot be declared away.
    store.set_setting("default_tier", "qualifying")
    with pytest.raises(DefinitionError, match=r"tiers qualifying are used .*default_tier"):
        store.apply(Definitions(tiers=[Tier("historical", 0), Tier("race", 1)]))
    store.set_setting("default_tier", None)
    with pytest.raises(DefinitionError, match="tier of the prediction point"):
        store.get_online_features(keys, ["finish"])


def test_cli_config_and_online_tier(tmp_path: Path) -> None:
    # One registry is enough here: the settings' storage runs on both in the test above.
    store = online_store(tmp_path, f"sqlite:///{tmp_path / 'registry.db'}")
    assert json.loads(cli("config", "--json", store=store).stdout) == {
        "default_tier": None, "memory_limit": None, "snapshot_layout": None,
        "compression": None}
    bad = cli("online", "--key", "driver_id=1", "--features", "finish", store=store, code=2)
    assert "--tier" in bad.stderr and "featurestore config default_tier" in bad.stderr
    leak = cli("online", "--key", "driver_id=1", "--features", "race_finish", "--tier",
               "qualifying", store=store, code=3)
    assert "race_finish (tier race)" in leak.stderr
    ok = cli("online", "--key", "driver_id=1", "--features", "race_finish", "--tier", "race",
             "--json", store=store)
    assert json.loads(ok.stdout) == [{"driver_id": 1, "race_finish": 7}]
    cli("config", "default-tier", "qualifying", store=store)
    assert json.loads(cli("config", "default_tier", "--json", store=store).stdout) == {
        "default_tier": "qualifying"}
    assert "qualifying" in cli("config", store=store).stdout
    cli("online", "--key", "driver_id=1", "--features", "race_finish", store=store, code=3)
    assert json.loads(cli("online", "--key", "driver_id=2", "--features", "finish", "--json",
                          store=store).stdout) == [{"driver_id": 2, "finish": 5}]
    assert "unknown tier 'warmup'" in cli("config", "default_tier", "warmup", store=store,
                                          code=2).stderr
    cli("config", "default_tier", "--unset", store=store)
    assert store.default_tier is None


# ============================================================================ 6. unverified views
# Views materialized with --no-verify were served without a word.


def form_store(tmp_path: Path, registry_url: str, *, verify: bool = True) -> FeatureStore:
    """Results, their finish column and a rolling view over it, materialized."""
    store = open_store(tmp_path, registry_url)
    store.apply([Entity("driver", ("driver_id",)),
                 Source("results", str(results_file(tmp_path)), "driver", "race_end"),
                 View("form", "results", "rolling", {"column": "finish", "windows": [2],
                                                     "aggs": ["mean"]}),
                 Feature("finish", source="results"),
                 Feature("finish_mean_last_2", view="form")])
    store.ingest()
    if verify:
        materialize(store)
    else:
        with pytest.warns(UserWarning, match="verification skipped"):
            materialize(store, verify=False)
    return store


def unverified_store(tmp_path: Path, registry_url: str) -> FeatureStore:
    return form_store(tmp_path, registry_url, verify=False)


def test_unverified_views_are_refused_unless_allowed(tmp_path: Path, registry_url: str) -> None:
    store = unverified_store(tmp_path, registry_url)
    with pytest.raises(LeakageError, match=r"view 'form' \(artifact \d+: NOT VERIFIED.*--no-verify"):
        store.get_historical_features(query(), ["finish", "finish_mean_last_2"], tier="historical")
    with pytest.raises(LeakageError, match="featurestore materialize form"):
        store.get_historical_features_lazy(query(), ["finish_mean_last_2"], tier="historical")
    with pytest.raises(LeakageError, match="view 'form'"):
        store.get_online_features({"driver_id": [1]}, ["finish_mean_last_2"], tier="race")
    # Verified views alone are served as before.
    assert store.get_historical_features(query(), ["finish"], tier="historical").height == 3
    out = store.get_historical_features(query(), ["finish_mean_last_2"], tier="historical",
                                        allow_unverified=True)
    assert out["finish_mean_last_2"].to_list() == [5.0, 3.0, 5.0]
    online = store.get_online_features({"driver_id": [2]}, ["finish_mean_last_2"], tier="race",
                                       allow_unverified=True)
    assert online["finish_mean_last_2"].to_list() == [3.0]
    materialize(store)  # verified now: served without the flag
    assert store.get_historical_features(query(), ["finish_mean_last_2"], tier="historical").height == 3


def test_cli_refuses_unverified_views_and_audit_lists_them(tmp_path: Path) -> None:
    store = unverified_store(tmp_path, f"sqlite:///{tmp_path / 'registry.db'}")
    entities = tmp_path / "entities.parquet"
    query().write_parquet(entities)
    out = tmp_path / "train.parquet"
    args = ["retrieve", "--entities", str(entities), "--features", "finish,finish_mean_last_2",
            "--tier", "historical", "-o", str(out)]
    refused = cli(*args, store=store, code=3)
    assert "view 'form'" in refused.stderr and "--allow-unverified" in refused.stderr
    assert not out.exists()
    summary = json.loads(cli(*args, "--allow-unverified", "--audit", "--json", store=store).stdout)
    assert summary["audit"] == {"checked": 6, "violations": 0, "unverified_views": ["form"]}
    human = cli(*args, "--allow-unverified", "--audit", store=store).stdout
    assert "without causality verification (--no-verify): form" in human
    cli("online", "--key", "driver_id=1", "--features", "finish_mean_last_2", "--tier", "race",
        store=store, code=3)
    cli("online", "--key", "driver_id=1", "--features", "finish_mean_last_2", "--tier", "race",
        "--allow-unverified", store=store)


# ============================================================================ 7. audit time zone
# `retrieve --audit` read naive cutoffs as UTC whatever --timezone said.


def test_cli_audit_reads_cutoffs_in_the_given_zone(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    path = write(tmp_path / "s.parquet", {"driver_id": [1, 2],
                                          "t": [dt.datetime(2025, 3, 1, 12, tzinfo=UTC)] * 2,
                                          "x": [1.5, 2.5]})
    store.apply([Entity("driver", ("driver_id",)), Source("s", str(path), "driver", "t"),
                 Feature("x", source="s")])
    store.ingest()
    materialize(store)
    # 10:00 in New York is 15:00 UTC: the 12:00 UTC values were known; read as UTC they were not.
    entities = write(tmp_path / "q.parquet", {"driver_id": [1, 2],
                                              "cutoff": [dt.datetime(2025, 3, 1, 10)] * 2})
    out = tmp_path / "train.parquet"
    summary = json.loads(cli("retrieve", "--entities", str(entities), "--features", "x",
                             "--tier", "historical", "--cutoff", "cutoff", "--timezone", NY,
                             "--audit", "--json", "-o", str(out), store=store).stdout)
    assert pl.read_parquet(out)["x"].to_list() == [1.5, 2.5]
    assert summary["audit"]["checked"] == 2 and summary["audit"]["violations"] == 0
    # The audit still catches what the zone makes too early (10:00 UTC is before 12:00 UTC).
    frame = pl.read_parquet(out).with_columns(
        x__available_at=pl.lit(dt.datetime(2025, 3, 1, 12, tzinfo=UTC)))
    assert store.audit(frame, ["x"], cutoff="cutoff", cutoff_timezone="UTC").n_violations == 2
    assert store.audit(frame, ["x"], cutoff="cutoff", cutoff_timezone=NY).n_violations == 0


# ============================================================================ 8. rolling default
# include_current = false with the strict point-in-time rule lagged twice: at a race's start,
# "mean finish over the last 5 races" covered races n-6..n-2.


def test_last_5_races_means_the_5_before_this_one(tmp_path: Path) -> None:
    drivers, races = (1, 2), 9
    finish = {(d, r): None if (d + r) % 7 == 0 else (d * 3 + r * 5) % 11 + 1
              for d in drivers for r in range(1, races + 1)}
    start = {r: dt.datetime(2025, 2, 16, 14) + dt.timedelta(days=7 * (r - 1))
             for r in range(1, races + 1)}
    path = write(tmp_path / "results.parquet", {
        "driver_id": [d for d in drivers for _ in range(races)],
        "race_end": [start[r] + dt.timedelta(hours=3) for _ in drivers for r in range(1, races + 1)],
        "finish": [finish[(d, r)] for d in drivers for r in range(1, races + 1)],
    })
    store = open_store(tmp_path)
    store.apply([Entity("driver", ("driver_id",)),
                 Source("results", str(path), "driver", "race_end", timezone=NY),
                 View("form", "results", "rolling", {"column": "finish", "windows": [5],
                                                     "aggs": ["mean"]}),
                 Feature("finish_mean_last_5", view="form")])
    store.ingest()
    materialize(store)
    q = pl.DataFrame({"driver_id": [d for d in drivers for _ in range(races)],
                      "green_flag": [start[r] for _ in drivers for r in range(1, races + 1)]})
    out = store.get_historical_features(q, ["finish_mean_last_5"], tier="historical",
                                        cutoff="green_flag", cutoff_timezone=NY)
    expected = []
    for d in drivers:
        for r in range(1, races + 1):
            known = [finish[(d, p)] for p in range(max(1, r - 5), r) if finish[(d, p)] is not None]
            expected.append(sum(known) / len(known) if known else None)
    assert out["finish_mean_last_5"].to_list() == pytest.approx(expected)


# ============================================================================ 9. dtype strings
# Registry dtype strings went to eval() with an escapable namespace.


def payload(marker: Path) -> str:
    # Escaped eval's empty builtins through a polars function's globals before the fix.
    return (f"read_csv.__globals__['__builtins__']['__import__']('pathlib')"
            f".Path({str(marker)!r}).touch()")


def crafted_store(tmp_path: Path, registry_url: str) -> FeatureStore:
    return form_store(tmp_path, registry_url)


def tamper(store: FeatureStore, sql: str, **params: Any) -> None:
    with store.registry.engine.begin() as conn:
        assert conn.execute(text(sql), params).rowcount >= 1


def test_a_crafted_artifact_dtype_never_runs(tmp_path: Path, registry_url: str) -> None:
    store = crafted_store(tmp_path, registry_url)
    marker = tmp_path / "pwned"
    art = store.registry.latest_artifact("view", "results")
    assert art is not None
    schema = {**art["schema"], "finish": payload(marker)}
    tamper(store, "UPDATE artifacts SET schema = :s WHERE id = :id", s=json.dumps(schema),
           id=art["id"])
    with pytest.raises(DefinitionError, match=rf"artifact {art['id']} column 'finish': unknown "
                                              "dtype string"):
        store.get_historical_features(query(), ["finish"], tier="historical")
    with pytest.raises(DefinitionError, match="unknown dtype string"):
        store.get_online_features({"driver_id": [1]}, ["finish"], tier="historical")
    assert not marker.exists()


@pytest.fixture
def polars_rows_setting() -> Iterator[None]:
    saved = os.environ.get("POLARS_FMT_MAX_ROWS")
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("POLARS_FMT_MAX_ROWS", None)
        else:
            os.environ["POLARS_FMT_MAX_ROWS"] = saved


@pytest.mark.usefixtures("polars_rows_setting")
def test_crafted_definition_dtypes_never_run(tmp_path: Path, registry_url: str) -> None:
    store = crafted_store(tmp_path, registry_url)
    marker = tmp_path / "pwned"
    # features.dtype holds 64 characters: enough for a call with a visible, harmless effect.
    tamper(store, "UPDATE features SET dtype = :d WHERE name = 'finish_mean_last_2'",
           d="Config.set_tbl_rows(77)")
    # A new feature of the registered (not redeclared) view reads its features' dtypes.
    with pytest.raises(DefinitionError, match="registered feature 'finish_mean_last_2': unknown "
                                              "dtype string"):
        store.apply([Feature("again", view="form", column="finish_mean_last_2")])
    src = store.registry.get("source", "results")
    tamper(store, "UPDATE sources SET schema = :s WHERE name = 'results'",
           s=json.dumps({**src["schema"], "laps_led": payload(marker)}))
    with pytest.raises(DefinitionError, match="registered source 'results' column 'laps_led'"):
        store.apply([Feature("laps_led", source="results")])
    cli("apply", "--dry-run", str(write_defs(tmp_path)), store=store, code=2)
    assert not marker.exists()
    assert os.environ.get("POLARS_FMT_MAX_ROWS") != "77"


def write_defs(tmp_path: Path) -> Path:
    path = tmp_path / "more.toml"
    path.write_text('[[features]]\nname = "laps_led"\nsource = "results"\n')
    return path


base_dtypes = st.sampled_from([
    pl.Int8(), pl.Int16(), pl.Int32(), pl.Int64(), pl.UInt8(), pl.UInt32(), pl.UInt64(),
    pl.Float32(), pl.Float64(), pl.Boolean(), pl.String(), pl.Binary(), pl.Date(), pl.Time(),
    pl.Null(), pl.Categorical(), pl.Datetime("us", "UTC"), pl.Datetime("ns"),
    pl.Datetime("ms", NY), pl.Duration("us"), pl.Duration("ns"), pl.Decimal(10, 2),
    pl.Enum(["a", "it's", 'say "hi"'])])
nested_dtypes = st.recursive(base_dtypes, lambda inner: st.one_of(
    inner.map(pl.List),
    st.tuples(inner, st.integers(1, 4)).map(lambda a: pl.Array(a[0], a[1])),
    st.dictionaries(st.text(min_size=1, max_size=6), inner, min_size=1, max_size=3).map(pl.Struct),
), max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(dtype=nested_dtypes)
def test_every_dtype_string_polars_prints_reads_back(dtype: pl.DataType) -> None:
    assert parse_dtype_string(str(dtype)) == dtype


@pytest.mark.parametrize("bad", [
    "__import__('os').system('true')", "Int64.__class__", "List(Int64) + 1", "Int64; Int32",
    "Foo", "List()", "Datetime(time_unit='xs')", "Struct({1: Int64})", "Decimal(precision='x')",
    "List(" * 40 + "Int64" + ")" * 40, "", "Array(Int64, shape=-1)", "Int64(1)",
])
def test_unknown_dtype_strings_are_named_errors(bad: str) -> None:
    with pytest.raises(DefinitionError, match=r"^artifact 7 column 'x': unknown dtype string"):
        parse_dtype_string(bad, what="artifact 7 column 'x'")


# ============================================================================ 10. incremental
# "The source only grew" was decided by event time alone: a new row with a later event time but
# an earlier availability left an old row's value stale; group transforms were not considered.


def _seen(frame: pl.LazyFrame, params: Any, ctx: Any) -> pl.LazyFrame:
    """Per entity (or per group), the count and sum of x over rows available by this row's
    availability: causal in availability, not in event order."""
    scope = [*ctx.keys] if params.get("scope") != "group" else ["race_id"]
    keys = [*ctx.keys, EVENT_TIMESTAMP, AVAILABLE_AT]
    rows = frame.select(*keys, *(["race_id"] if "race_id" not in keys else []), "x")
    joined = (rows.join(rows.select(*scope, pl.col(AVAILABLE_AT).alias("__av"),
                                    pl.col("x").alias("__x")), on=scope, how="left")
              .filter(pl.col("__av") <= pl.col(AVAILABLE_AT)))
    agg = joined.group_by(keys).agg(n_seen=pl.len().cast(pl.Int64),
                                    x_seen=pl.col("__x").sum().cast(pl.Float64))
    return rows.select(keys).join(agg, on=keys, how="left", maintain_order="left")


SEEN = Transform("seen_by_availability", _seen,
                 lambda params, schema: {"n_seen": pl.Int64(), "x_seen": pl.Float64()})
FIELD_SEEN = Transform("field_seen_by_availability", _seen,
                       lambda params, schema: {"n_seen": pl.Int64(), "x_seen": pl.Float64()},
                       scope="group", group_columns=lambda params: ["race_id"])


class SeenPlugin:
    @hookimpl
    def register_transforms(self, register: Any) -> None:
        register(SEEN)
        register(FIELD_SEEN)


@pytest.fixture
def seen_plugin() -> Iterator[None]:
    from featurestore.plugins import get_plugin_manager

    pm = get_plugin_manager()
    plugin = SeenPlugin()
    pm.register(plugin, name="test_guards_seen")
    try:
        yield
    finally:
        pm.unregister(plugin)


def seen_rows(rows: list[tuple[int, int, int, float]]) -> pl.DataFrame:
    """(driver, event minute, availability minute, x) -> a source frame."""
    return pl.DataFrame({
        "driver_id": [r[0] for r in rows], "race_id": [1] * len(rows),
        "t": [T0 + dt.timedelta(minutes=r[1]) for r in rows],
        "published": [T0 + dt.timedelta(minutes=r[2]) for r in rows],
        "x": [r[3] for r in rows]})


def seen_store(tmp_path: Path, frame: pl.DataFrame, transform: str) -> tuple[FeatureStore, Path]:
    path = tmp_path / "laps.parquet"
    frame.write_parquet(path)
    store = open_store(tmp_path)
    store.apply([Entity("driver", ("driver_id",)),
                 Source("laps", str(path), "driver", "t", available_time="published", tier="race"),
                 View("seen", "laps", transform, {"scope": "group"} if "field" in transform else {}),
                 Feature("n_seen", view="seen"), Feature("x_seen", view="seen")])
    return store, path


def view_artifact(store: FeatureStore) -> pl.DataFrame:
    row = store.registry.latest_artifact("view", "seen")
    assert row is not None
    return pl.read_parquet(store.root / row["path"])


def incremental_equals_full(store: FeatureStore, path: Path, grown: pl.DataFrame,
                            verify: bool = True) -> str:
    grown.write_parquet(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # verify=False warns; recorded on the artifact anyway
        [result] = materialize(store, ["seen"], verify=verify)
        incremental = view_artifact(store)
        materialize(store, ["seen"], force=True, verify=verify)
    assert_frame_equal(incremental, view_artifact(store))
    return result.status


@pytest.mark.usefixtures("seen_plugin")
def test_a_later_event_available_earlier_recomputes_in_full(tmp_path: Path) -> None:
    old = [(1, 0, 10, 1.0), (1, 1, 11, 2.0), (2, 0, 3, 4.0)]
    store, path = seen_store(tmp_path, seen_rows(old), "seen_by_availability")
    materialize(store)
    # Driver 1's new lap comes after its old laps in event time but was published before them.
    status = incremental_equals_full(store, path, seen_rows([*old, (1, 2, 5, 8.0)]))
    assert status == "materialized"
    # Plain growth (later in both) is still incremental.
    status = incremental_equals_full(store, path, seen_rows([*old, (1, 2, 5, 8.0), (1, 3, 20, 1.0),
                                                             (3, 0, 1, 1.0)]))
    assert status == "incremental"


@pytest.mark.usefixtures("seen_plugin")
def test_group_transforms_recompute_in_full(tmp_path: Path) -> None:
    old = [(1, 0, 10, 1.0), (1, 1, 11, 2.0)]
    store, path = seen_store(tmp_path, seen_rows(old), "field_seen_by_availability")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        materialize(store, verify=False)
    # A new car in the same race, published before driver 1's laps: the field changed.
    status = incremental_equals_full(store, path, seen_rows([*old, (2, 3, 4, 3.0)]), verify=False)
    assert status == "materialized"
    assert view_artifact(store).filter(pl.col("driver_id") == 1)["n_seen"].to_list() == [2, 3]


appends = st.lists(st.tuples(st.integers(1, 3), st.integers(1, 20), st.integers(0, 30),
                             st.integers(0, 9).map(float)), min_size=1, max_size=6)


def extend(rows: list[tuple[int, int, int, float]],
           new: list[tuple[int, int, int, float]]) -> list[tuple[int, int, int, float]]:
    """Append (driver, minutes after its last event, publication lag, x): each new row comes
    after its driver's old rows in event time, and may be published before some of them."""
    out = list(rows)
    for driver, step, lag, x in new:
        event = max((r[1] for r in out if r[0] == driver), default=0) + step
        out.append((driver, event, event + lag, x))
    return out


@pytest.mark.slow
@pytest.mark.usefixtures("seen_plugin")
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(start=appends, first=appends, second=appends)
def test_incremental_equals_full_on_random_appends(tmp_path_factory: pytest.TempPathFactory,
                                                   start: list[tuple[int, int, int, float]],
                                                   first: list[tuple[int, int, int, float]],
                                                   second: list[tuple[int, int, int, float]]) -> None:
    """Two rounds of random appends; a forced full recompute is the oracle each time."""
    rows = extend([], start)
    store, path = seen_store(tmp_path_factory.mktemp("incremental"), seen_rows(rows),
                             "seen_by_availability")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        materialize(store, verify=False)
    rows = extend(rows, first)
    incremental_equals_full(store, path, seen_rows(rows), verify=False)
    incremental_equals_full(store, path, seen_rows(extend(rows, second)), verify=False)
    store.close()


def test_default_tiers_carry_no_forbidden_columns() -> None:
    assert all(t.forbidden_before == () for t in DEFAULT_TIERS)
