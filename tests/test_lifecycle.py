"""Object lifecycle: delete, apply --prune, gc with concurrent readers, uninstalled plugins.

Every registry behaviour runs on SQLite and PostgreSQL (``registry_url``). The dependency rules
of delete are checked against the planner itself: what a cascade delete leaves must plan as a
no-op with ``prune``, and no deleted object may be declared again without what it depended on.
gc is checked by retrieving every live feature and every pinned version before and after it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
from datetime import UTC
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from sqlalchemy import select

import featurestore.plugins as fp
from featurestore import (
    DefinitionError,
    Entity,
    Feature,
    FeatureSet,
    FeatureStore,
    NotFoundError,
    PluginError,
    Source,
    View,
    hookimpl,
    schema,
)
from featurestore.errors import DeletedError, DependentsError
from featurestore.lifecycle import MissingTransformWarning, decide_gc
from featurestore.lifecycle import gc as lifecycle_gc
from featurestore.materialize import materialize
from featurestore.readers import current_epoch, reading
from featurestore.transforms import Transform

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- builders


def write_data(d: Path, *, drivers: int = 2, races: int = 3) -> dict[str, Path]:
    """Results and qualifying of drivers, and team points; one race a week from 2025-02-16."""
    d.mkdir(parents=True, exist_ok=True)
    dates = [dt.datetime(2025, 2, 16, 14) + dt.timedelta(days=7 * r) for r in range(races)]
    ids = [i + 1 for i in range(drivers) for _ in range(races)]
    when = [dates[r] for _ in range(drivers) for r in range(races)]
    pl.DataFrame({"driver_id": ids, "race_date": when,
                  "finish": [(i * 7 + r) % 40 + 1 for i in range(drivers) for r in range(races)],
                  "laps_led": [(i * 13 + r * 5) % 60 for i in range(drivers) for r in range(races)],
                  }).write_parquet(d / "r.parquet")
    pl.DataFrame({"driver_id": ids, "session": [w - dt.timedelta(days=1) for w in when],
                  "grid": [(i * 3 + r) % 40 + 1 for i in range(drivers) for r in range(races)],
                  }).write_parquet(d / "q.parquet")
    pl.DataFrame({"team_id": [1, 1, 2, 2], "race_date": dates[:2] * 2,
                  "points": [10.0, 20.0, 5.0, 15.0]}).write_parquet(d / "t.parquet")
    return {"results": d / "r.parquet", "quali": d / "q.parquet", "team": d / "t.parquet"}


def graph(paths: dict[str, Path]) -> list[object]:
    """Two entities, three sources, two transform views, six features, two feature sets."""
    return [
        Entity("driver", ("driver_id",)),
        Entity("team", ("team_id",)),
        Source("results", str(paths["results"]), "driver", "race_date", tier="race"),
        Source("quali", str(paths["quali"]), "driver", "session", tier="qualifying"),
        Source("team_results", str(paths["team"]), "team", "race_date", tier="race"),
        View("roll", "results", "rolling", {"column": "laps_led", "windows": [2], "aggs": ["mean"]}),
        View("team_roll", "team_results", "rolling",
             {"column": "points", "windows": [2], "aggs": ["sum"]}),
        Feature("finish", source="results"),
        Feature("laps_led", source="results"),
        Feature("grid", source="quali"),
        Feature("laps_led_mean_last_2", view="roll"),
        Feature("points", source="team_results"),
        Feature("points_sum_last_2", view="team_roll"),
        FeatureSet("prerace", ("grid", "finish")),
        FeatureSet("form", ("laps_led_mean_last_2", "laps_led")),
    ]


KIND_OF = {Entity: "entity", Source: "source", View: "view", Feature: "feature",
           FeatureSet: "feature_set"}


def kind_name(obj: object) -> tuple[str, str]:
    return KIND_OF[type(obj)], obj.name  # type: ignore[attr-defined]


def query(drivers: int = 2) -> pl.DataFrame:
    """Every driver (and team of the same number) before the third race and after the last."""
    return pl.DataFrame({
        "driver_id": [i + 1 for i in range(drivers)] * 2,
        "team_id": [i + 1 for i in range(drivers)] * 2,
        "event_timestamp": [dt.datetime(2025, 3, 1, tzinfo=UTC)] * drivers
        + [dt.datetime(2025, 3, 20, tzinfo=UTC)] * drivers})


def all_rows(store: FeatureStore) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every versioned table and of artifacts: to prove nothing changed."""
    with store.registry.read() as conn:
        return {t.name: sorted(tuple(r) for r in conn.execute(select(t)))
                for t in [*schema.VERSIONED.values(), schema.artifacts]}


@pytest.fixture
def store(tmp_path: Path, registry_url: str) -> FeatureStore:
    s = FeatureStore(tmp_path / "store", registry_url=registry_url)
    yield s
    s.close()


# --------------------------------------------------------------------------- delete


def test_cascade_delete_of_every_object_against_the_planner(tmp_path: Path,
                                                            store: FeatureStore) -> None:
    """For each declared object: delete refuses exactly when something depends on it; a cascade
    leaves a registry the remaining definitions describe exactly (a no-op prune plan: nothing
    dangling, column views right) and takes nothing that could stand without the target."""
    defs = graph(write_data(tmp_path / "data"))
    for target in defs:
        store.apply(defs)  # (re-)registers whatever the previous round deleted
        kind, name = kind_name(target)
        before = all_rows(store)
        try:
            alone = store.delete(kind, name)
        except DependentsError as exc:
            refused = exc
            assert all_rows(store) == before  # a refusal writes nothing
            result = store.delete(kind, name, cascade=True)
        else:
            refused, result = None, alone
        gone = {(d.kind, d.name) for d in result.deleted}
        declared_gone = [o for o in defs if kind_name(o) in gone]
        others = [o for o in declared_gone if o is not target]
        assert (refused is not None) == bool(others), (target, gone)
        if refused is not None:
            for o in others:
                assert repr(o.name) in str(refused)  # type: ignore[attr-defined]
        remaining = [o for o in defs if kind_name(o) not in gone]
        plan = store.plan(remaining, prune=True)
        assert plan.is_noop, [i.as_dict() for i in plan.changed]
        for o in others:
            with pytest.raises(DefinitionError, match=r"unknown \w+ '.*' \(deleted at"):
                store.plan([*remaining, o], prune=True)
        for k, n in gone:
            assert n not in {r["name"] for r in store.list(k)}
            with pytest.raises(DeletedError, match=f"{k} '{n}' was deleted at"):
                store.registry.get(k, n)


def test_deleted_object_keeps_its_history_and_comes_back_as_a_new_version(
        tmp_path: Path, store: FeatureStore) -> None:
    paths = write_data(tmp_path / "data")
    defs = graph(paths)
    store.apply(defs)
    changed = [Feature("laps_led_mean_last_2", view="roll", tier="race", description="v1")
               if kind_name(o) == ("feature", "laps_led_mean_last_2") else o for o in defs]
    roll2 = View("roll", "results", "rolling", {"column": "laps_led", "windows": [3], "aggs": ["mean"]})
    v2 = [roll2 if kind_name(o) == ("view", "roll") else o for o in changed]
    v2 = [Feature("laps_led_mean_last_3", view="roll") if kind_name(o) == ("feature",
          "laps_led_mean_last_2") else o for o in v2]
    v2 = [FeatureSet("form", ("laps_led_mean_last_3",)) if kind_name(o) == ("feature_set", "form")
          else o for o in v2]
    store.apply(v2, prune=True)  # roll v2; the old feature is pruned
    materialize(store, samples=2)
    assert store.registry.get("view", "roll")["version"] == 2
    result = store.delete("view", "roll", cascade=True)
    assert [(d.kind, d.name, d.version) for d in result.deleted] == [
        ("feature_set", "form", 2), ("feature", "laps_led_mean_last_3", 1), ("view", "roll", 2)]
    kind, versions = store.history("roll")
    assert kind == "view" and [v["version"] for v in versions] == [1, 2]
    assert all(v["deleted_at"] == result.deleted_at for v in versions)
    with pytest.raises(DeletedError, match=r"feature 'laps_led_mean_last_3' was deleted at "
                                           rf"{result.deleted_at:%Y-%m-%d %H:%M:%S}"):
        store.get_historical_features(query(), ["laps_led_mean_last_3"], tier="race")
    with pytest.raises(DeletedError, match="feature_set 'form' was deleted"):
        store.get_historical_features(query(), "form", tier="race")
    with pytest.raises(DeletedError, match="view 'roll' was deleted"):
        materialize(store, ["roll"])
    with pytest.raises(DeletedError, match="view 'roll' was deleted"):
        store.find("roll")
    assert {r.view for r in materialize(store)} == {"results", "quali", "team_results", "team_roll"}
    assert "roll" not in {i.name for i in store.plan(v2).items if i.kind == "view"
                          and i.action != "add"}
    # Its artifacts stay until gc.
    assert any(a["name"] == "roll" for a in store.list("artifact"))
    plan = store.apply(v2)
    again = {(i.kind, i.name): i for i in plan.changed}
    assert again[("view", "roll")].action == "add" and again[("view", "roll")].version == 3
    assert again[("feature", "laps_led_mean_last_3")].version == 2
    assert again[("feature_set", "form")].version == 3
    # The deleted version's artifact is not served, even though its definition is the same.
    with pytest.raises(NotFoundError, match="has no materialized artifact"):
        store.get_historical_features(query(), ["laps_led_mean_last_3"], tier="race")
    materialize(store, ["roll"], samples=2)
    out = store.get_historical_features(query(), "form", tier="race")
    assert out["laps_led_mean_last_3"].null_count() < out.height
    assert [v["deleted_at"] is None for v in store.history("roll")[1]] == [False, False, True]
    assert store.plan(v2).is_noop
    # A deleted version stays deleted: no feature set may pin it (or a version never made).
    with pytest.raises(DefinitionError, match=r"pins feature 'laps_led_mean_last_3' version 1, "
                                              r"which was deleted at"):
        store.plan([*v2, FeatureSet("old", ("laps_led_mean_last_3@1",))])
    with pytest.raises(DefinitionError, match="version 7, which is not registered"):
        store.plan([*v2, FeatureSet("old", ("laps_led_mean_last_3@7",))])


def test_deleting_a_column_feature_versions_the_column_view(tmp_path: Path,
                                                           store: FeatureStore) -> None:
    defs = graph(write_data(tmp_path / "data"))
    store.apply(defs)
    materialize(store, samples=2)
    before = store.get_historical_features(query(), ["laps_led"], tier="race")
    result = store.delete("feature", "finish", cascade=True)
    assert [(d.kind, d.name) for d in result.deleted] == [("feature_set", "prerace"),
                                                          ("feature", "finish")]
    assert [(v["name"], v["version"], v["columns"]) for v in result.column_views] == [
        ("results", 2, ["laps_led"])]
    view = store.registry.get("view", "results")
    assert (view["version"], view["params"]) == (2, {"columns": ["laps_led"]})
    # The old artifact still serves the remaining column (same source and transform).
    assert store.get_historical_features(query(), ["laps_led"], tier="race").equals(before)
    rest = [o for o in defs if kind_name(o) not in {("feature", "finish"), ("feature_set", "prerace")}]
    assert store.plan(rest).is_noop


def test_delete_a_source_takes_its_column_view_and_refuses_for_its_features(
        tmp_path: Path, store: FeatureStore) -> None:
    defs = graph(write_data(tmp_path / "data"))
    store.apply(defs)
    with pytest.raises(DependentsError) as info:
        store.delete("source", "quali")
    assert str(info.value) == (
        "cannot delete source 'quali' v1: 2 registered object(s) depend on it: feature set "
        "'prerace' v1 pins feature 'grid' v1; feature 'grid' v1 reads source 'quali'; delete "
        "them first, or pass --cascade (cascade=True) to delete them too")
    assert info.value.exit_code == 2
    assert [str(d) for d in info.value.dependents] == ["feature set 'prerace' v1", "feature 'grid' v1"]
    store.delete("feature-set", "prerace")
    store.delete("feature", "grid")
    result = store.delete("source", "quali")  # its column view goes with it, no cascade needed
    assert [(d.kind, d.name, d.reason) for d in result.deleted] == [
        ("view", "quali", "is the column view of source 'quali'"), ("source", "quali", "requested")]
    assert "quali" not in {v["name"] for v in store.list("view")}


def test_delete_is_one_transaction(tmp_path: Path, store: FeatureStore,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from featurestore.registry import Registry

    store.apply(graph(write_data(tmp_path / "data")))
    before = all_rows(store)
    real = Registry.mark_deleted
    calls = []

    def failing(conn: Any, kind: str, name: str, when: Any) -> int:
        calls.append(name)
        if len(calls) == 3:
            raise RuntimeError("disk full")
        return real(conn, kind, name, when)

    monkeypatch.setattr(Registry, "mark_deleted", staticmethod(failing))
    with pytest.raises(RuntimeError, match="disk full"):
        store.delete("entity", "driver", cascade=True)
    assert len(calls) == 3
    assert all_rows(store) == before


def test_delete_errors(tmp_path: Path, store: FeatureStore) -> None:
    store.apply(graph(write_data(tmp_path / "data")))
    with pytest.raises(NotFoundError, match=r"feature 'nope' is not registered; registered: finish"):
        store.delete("feature", "nope")
    with pytest.raises(DefinitionError, match="cannot delete a 'tier'"):
        store.delete("tier", "race")
    dry = store.delete("entity", "team", cascade=True, dry_run=True)
    assert dry.dry_run and dry.deleted_at is None
    assert {d.name for d in dry.deleted} == {"team", "team_results", "team_roll", "points",
                                             "points_sum_last_2"}
    assert "team" in {e["name"] for e in store.list("entity")}
    store.delete("entity", "team", cascade=True)
    with pytest.raises(DeletedError, match="entity 'team' was deleted at"):
        store.delete("entity", "team")
    with pytest.raises(DeletedError, match="source 'team_results' was deleted at"):
        store.ingest(["team_results"])


# --------------------------------------------------------------------------- apply --prune


def test_prune_is_planned_first_and_applied_in_the_same_transaction(
        tmp_path: Path, store: FeatureStore) -> None:
    defs = graph(write_data(tmp_path / "data"))
    store.apply(defs)
    keep = [o for o in defs if kind_name(o)[1] not in ("team", "team_results", "team_roll",
                                                         "points", "points_sum_last_2", "form")]
    assert store.plan(keep).is_noop  # without prune undeclared objects stay
    before = all_rows(store)
    plan = store.apply(keep, prune=True, dry_run=True)
    assert all_rows(store) == before
    deletes = [(i.kind, i.name) for i in plan.items if i.action == "delete"]
    assert deletes == [("entity", "team"), ("source", "team_results"), ("view", "team_results"),
                       ("view", "team_roll"), ("feature", "points"),
                       ("feature", "points_sum_last_2"), ("feature_set", "form")]
    assert plan.counts()["delete"] == 7 and plan.counts()["unchanged"] == 11
    # An error anywhere in the apply deletes nothing either.
    with pytest.raises(DefinitionError, match="unknown view 'nope'"):
        store.apply([*keep, Feature("bad", view="nope")], prune=True)
    assert all_rows(store) == before
    store.apply(keep, prune=True)
    assert {v["name"] for v in store.list("view")} == {"results", "quali", "roll"}
    assert store.plan(keep, prune=True).is_noop
    history = store.history("team_roll")[1]
    assert history[-1]["deleted_at"] is not None


def test_prune_refuses_to_leave_a_declared_object_dangling(tmp_path: Path,
                                                          store: FeatureStore) -> None:
    defs = graph(write_data(tmp_path / "data"))
    store.apply(defs)
    before = all_rows(store)
    without_source = [o for o in defs if kind_name(o) != ("source", "quali")]
    with pytest.raises(DefinitionError, match=r"feature 'grid' refers to unknown source 'quali' "
                                              r"\(registered but not declared, so --prune deletes it\)"):
        store.apply(without_source, prune=True)
    assert all_rows(store) == before


def test_prune_lets_a_name_change_kind(tmp_path: Path, store: FeatureStore) -> None:
    paths = write_data(tmp_path / "data")
    store.apply(graph(paths))
    renamed = [Entity("driver", ("driver_id",)),
               Source("results", str(paths["results"]), "driver", "race_date", tier="race"),
               Feature("grid", source="results", column="finish")]  # 'grid' now reads results
    with pytest.raises(DefinitionError):
        store.apply([*renamed, Entity("prerace", ("driver_id",))])  # clashes without prune
    plan = store.apply([*renamed, Entity("prerace", ("driver_id",))], prune=True)
    assert ("feature_set", "prerace", "delete") in {(i.kind, i.name, i.action) for i in plan.items}
    assert store.find("prerace")[0] == "entity"


# --------------------------------------------------------------------------- gc


def frames(store: FeatureStore) -> dict[str, pl.DataFrame]:
    """Every live feature (newest version) and every feature set, retrieved."""
    out = {f["name"]: store.get_historical_features(query(), [f["name"]], tier="race")
           for f in store.list("feature")}
    for fs in store.list("feature_set"):
        out[fs["name"]] = store.get_historical_features(query(), fs["name"], tier="race")
    return out


def test_gc_keeps_what_retrieval_and_materialize_need(tmp_path: Path, store: FeatureStore) -> None:
    paths = write_data(tmp_path / "data")
    defs = graph(paths)
    store.apply(defs)
    materialize(store, samples=2)
    materialize(store, ["roll"], samples=2, force=True)
    # roll v2 (other params); 'form' keeps pinning the v1 feature, served by roll v1's artifact.
    v2 = [View("roll", "results", "rolling", {"column": "laps_led", "windows": [2],
                                                 "aggs": ["mean", "max"]}) if kind_name(o) == ("view", "roll")
          else o for o in defs]
    v2 += [Feature("laps_led_max_last_2", view="roll")]
    v2 = [FeatureSet("form", ("laps_led_mean_last_2@1", "laps_led")) if kind_name(o) ==
          ("feature_set", "form") else o for o in v2]
    store.apply(v2)
    materialize(store, ["roll"], samples=2)
    materialize(store, ["roll"], samples=2, force=True)
    store.delete("view", "team_roll", cascade=True)
    before = frames(store)
    arts = {a["id"]: a for a in store.list("artifact")}
    roll = sorted(i for i, a in arts.items() if a["name"] == "roll")
    assert len(roll) == 4  # v1 twice, v2 twice
    unchanged = all_rows(store)
    dry = store.gc(dry_run=True)
    assert all_rows(store) == unchanged
    removed = {r["id"] for r in dry.removed}
    team_roll = {i for i, a in arts.items() if a["name"] == "team_roll"}
    assert removed == {roll[0], roll[2]} | team_roll
    kept = {k["id"]: k["reasons"] for k in dry.kept}
    assert kept[roll[1]] == ["pinned by feature set 'form' (laps_led_mean_last_2 v1)"]
    assert "newest of current view v2" in kept[roll[3]]
    assert all(Path(store.root, arts[i]["path"]).exists() for i in removed)
    result = store.gc()
    assert {r["id"] for r in result.removed} == removed and result.missing == []
    assert result.bytes_freed == sum(arts[i]["size_bytes"] for i in removed)
    assert not any(Path(store.root, arts[i]["path"]).exists() for i in removed)
    assert {a["id"] for a in store.list("artifact")} == set(arts) - removed
    after = frames(store)
    assert after.keys() == before.keys()
    for name in before:
        assert after[name].equals(before[name]), name
    report = store.doctor()
    assert report["ok"], report
    assert store.gc().removed == []  # nothing more to do
    assert [r.status for r in materialize(store, samples=2)] == ["up-to-date"] * 4


def test_gc_keep_and_older_than(tmp_path: Path, store: FeatureStore) -> None:
    store.apply(graph(write_data(tmp_path / "data")))
    for _ in range(4):
        materialize(store, ["roll"], samples=2, force=True)
    roll = [a["id"] for a in store.list("artifact") if a["name"] == "roll"]
    assert store.gc(older_than="1h", dry_run=True).removed == []
    assert {r["id"] for r in store.gc(keep=2, dry_run=True).removed} == set(roll[:2])
    assert {r["id"] for r in store.gc(keep=0, dry_run=True).removed} == set(roll[:3])
    # A file already gone is reported by the dry run exactly as the real run will report it.
    lost = store.artifact(roll[0])["path"]
    Path(store.root, lost).unlink()
    assert store.gc(keep=0, dry_run=True).missing == [lost]
    assert store.list("artifact")  # the dry run changed nothing
    # "Younger than D" at a chosen moment: an hour after the second artifact was made.
    second = store.artifact(roll[1])["created_at"]
    with store.registry.read() as conn:
        later = decide_gc(conn, store, older_than=dt.timedelta(hours=1),
                          now=second + dt.timedelta(hours=1, microseconds=1))
    assert {r["id"] for r in later.removed} == set(roll[:2])
    assert "younger than --older-than" in {r for k in later.kept for r in k["reasons"]}
    with pytest.raises(DefinitionError, match="--older-than"):
        store.gc(older_than="soon")
    store.gc(keep=2)
    assert [a["id"] for a in store.list("artifact") if a["name"] == "roll"] == roll[2:]


def test_gc_keeps_the_input_of_an_incremental_view(tmp_path: Path, store: FeatureStore) -> None:
    paths = write_data(tmp_path / "data", drivers=3, races=4)
    store.apply(graph(paths))
    materialize(store, samples=2)
    first_snapshot = store.registry.latest_artifact("source", "results")
    # The source grows: a new race for everyone, after all earlier rows.
    old = pl.read_parquet(paths["results"])
    extra = old.filter(pl.col("race_date") == old["race_date"].max()).with_columns(
        pl.col("race_date") + dt.timedelta(days=7), pl.col("finish") + 1)
    pl.concat([old, extra]).write_parquet(paths["results"])
    store.ingest(["results"])
    kept = {k["id"]: k["reasons"] for k in store.gc(dry_run=True).kept}
    assert any(r.startswith("input of kept artifact") for r in kept[first_snapshot["id"]])
    store.gc()
    assert store.artifact(first_snapshot["id"])["checksum"] == first_snapshot["checksum"]
    [result] = materialize(store, ["roll"], samples=2)
    assert result.status == "incremental"
    full = materialize(store, ["roll"], samples=2, force=True)[0]
    assert store.load_artifact(result.artifact["id"]).equals(store.load_artifact(full.artifact["id"]))


def test_gc_removes_artifacts_of_deleted_objects_rows_and_files(tmp_path: Path,
                                                                store: FeatureStore) -> None:
    store.apply(graph(write_data(tmp_path / "data")))
    materialize(store, samples=2)
    store.delete("entity", "team", cascade=True)
    team = [a for a in store.list("artifact") if a["name"] in ("team_results", "team_roll")]
    assert len(team) == 3 and all((store.root / a["path"]).exists() for a in team)
    result = store.gc()
    assert {r["id"] for r in result.removed} == {a["id"] for a in team}
    assert not any((store.root / a["path"]).exists() for a in team)
    assert not any(a["name"].startswith("team") for a in store.list("artifact"))
    assert store.doctor()["ok"]


def start_gc(store: FeatureStore, waiting: threading.Event) -> tuple[threading.Thread, list[Any]]:
    """gc in a thread; ``waiting`` is set when it has to wait for a reader."""
    results: list[Any] = []
    collector = threading.Thread(target=lambda: results.append(
        lifecycle_gc(store, on_wait=waiting.set)))
    collector.start()
    return collector, results


def test_gc_waits_for_a_reader_that_started_before_it(tmp_path: Path, store: FeatureStore) -> None:
    """The protocol, step by step: gc deletes the rows, then waits for the reader that may
    hold one; a reader arriving meanwhile is not blocked; the file goes when the old reader is
    done."""
    store.apply(graph(write_data(tmp_path / "data")))
    materialize(store, samples=2)
    old = store.registry.latest_artifact("view", "roll")
    materialize(store, ["roll"], samples=2, force=True)
    old_path = store.root / old["path"]
    entered, release, waiting = threading.Event(), threading.Event(), threading.Event()

    def old_reader() -> None:
        with reading(store.root):
            entered.set()
            release.wait(60)

    reader = threading.Thread(target=old_reader)
    reader.start()
    assert entered.wait(60)
    epoch = current_epoch(store.root)
    collector, results = start_gc(store, waiting)
    try:
        assert waiting.wait(60)
        assert current_epoch(store.root) == 1 - epoch
        assert old_path.exists()  # the row is gone, the file waits for the old reader
        assert old["id"] not in {a["id"] for a in store.list("artifact")}
        # A new reader is not blocked by the waiting gc.
        out = store.get_historical_features(query(), ["laps_led_mean_last_2"], tier="race")
        assert out.height == 4
    finally:
        release.set()
        reader.join(60)
        collector.join(60)
    assert not old_path.exists()
    assert [r["id"] for r in results[0].removed] == [old["id"]]


READER = textwrap.dedent("""\
    import json, sys, time
    from pathlib import Path
    import polars as pl
    from featurestore import FeatureStore
    root, url, stop = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    expected = pl.read_parquet(Path(root) / "expected.parquet")
    query = expected.select(pl.exclude("laps_led_mean_last_2", "finish"))
    store = FeatureStore(root, registry_url=url)
    done, errors = 0, []
    print("ready", flush=True)
    while not stop.exists() or done == 0:
        try:
            out = store.get_historical_features(query, ["laps_led_mean_last_2", "finish"],
                                                tier="race")
            if not out.equals(expected):
                errors.append("different frame")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        done += 1
    print(json.dumps({"done": done, "errors": errors[:5], "n_errors": len(errors)}))
""")


@pytest.mark.slow
def test_gc_under_a_reader_process_retrieving_in_a_loop(tmp_path: Path, registry_url: str) -> None:
    """A second process retrieves in a loop while this one re-materializes a view and collects
    the artifact it just superseded, round after round: the reader never fails and always gets
    the same frame. (With the reader's lock disabled, 30 rounds failed the reader every time
    it was tried: FileNotFoundError or "file is missing" between resolving a row and opening
    its file.)"""
    paths = write_data(tmp_path / "data", drivers=100, races=20)
    store = FeatureStore(tmp_path / "store", registry_url=registry_url)
    store.apply(graph(paths))
    materialize(store, samples=2)
    q = pl.concat([query(100)] * 10)
    expected = store.get_historical_features(q, ["laps_led_mean_last_2", "finish"], tier="race")
    expected.write_parquet(store.root / "expected.parquet")
    stop = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, "-c", READER, str(store.root), registry_url, str(stop)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        removed = 0
        for _ in range(30):
            materialize(store, ["results"], force=True)
            removed += len(store.gc().removed)
        stop.touch()
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["n_errors"] == 0, (report, err)
    assert report["done"] >= 1
    assert removed == 30  # each round superseded one artifact
    assert store.doctor()["ok"]
    store.close()


def test_a_reader_without_write_access_still_holds_off_gc(tmp_path: Path) -> None:
    """flock on a lock file opened read-only: a reader that cannot write to the store (here
    the user nobody) still makes gc wait."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the reader as another user")
    base = Path(tempfile.mkdtemp(prefix="fs-ro-", dir="/tmp"))
    try:
        base.chmod(0o755)
        store = FeatureStore(base / "store")
        store.apply(graph(write_data(base / "data")))
        materialize(store, ["roll"], samples=2)
        old = store.registry.latest_artifact("view", "roll")
        materialize(store, ["roll"], samples=2, force=True)
        with reading(store.root):
            pass  # creates the lock file (as root: the reader cannot)
        script = ("import sys; from pathlib import Path; from featurestore.readers import reading\n"
                  "with reading(Path(sys.argv[1])):\n"
                  "    print('locked', flush=True); sys.stdin.readline()\n")
        proc = subprocess.Popen([sys.executable, "-c", script, str(store.root)], user=65534,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "HOME": "/tmp"})
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        waiting = threading.Event()
        collector, results = start_gc(store, waiting)
        try:
            assert waiting.wait(60)
            assert (store.root / old["path"]).exists()
        finally:
            proc.communicate("\n", timeout=60)
            collector.join(60)
        assert [r["id"] for r in results[0].removed] == [old["id"]]
        assert not (store.root / old["path"]).exists()
        store.close()
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


# --------------------------------------------------------------------------- missing plugins


def _one(frame: pl.LazyFrame, params: Any, ctx: Any) -> pl.LazyFrame:
    return frame.select(*ctx.keys, ctx.time_column, ctx.available_column,
                        (pl.col("laps_led") * 0 + 1).cast(pl.Float64).alias("one"))


class ThrowawayPlugin:
    @hookimpl
    def register_transforms(self, register: Any) -> None:
        register(Transform("tmp_one", _one, lambda params, schema: {"one": pl.Float64},
                           lookback=lambda params: 0))


@pytest.fixture
def throwaway_plugin() -> Any:
    plugin = ThrowawayPlugin()
    fp.pm.register(plugin, name="tmp-lifecycle")
    yield plugin
    if fp.pm.is_registered(plugin):
        fp.pm.unregister(plugin)


def cli_main(*args: str) -> int:
    from featurestore.cli import main

    return main(list(args))


def test_uninstalled_plugin_skips_its_views(tmp_path: Path, registry_url: str,
                                            throwaway_plugin: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    store = FeatureStore(tmp_path / "store", registry_url=registry_url)
    defs = [*graph(write_data(tmp_path / "data")), View("ones", "results", "tmp_one"),
            View("ones_too", "results", "tmp_one"), Feature("one", view="ones")]
    store.apply(defs)
    materialize(store, samples=2)
    fp.pm.unregister(throwaway_plugin)
    with pytest.warns(MissingTransformWarning) as caught:
        results = materialize(store, samples=2, force=True)
    assert [str(w.message) for w in caught if w.category is MissingTransformWarning] == [
        "skipped view(s) 'ones', 'ones_too': transform 'tmp_one' is missing: plugin "
        "'tmp-lifecycle', recorded on its last artifact, is uninstalled, broken or not selected "
        "by FEATURESTORE_PLUGINS; reinstall the plugin, or delete the view(s); --strict makes "
        "this an error"]
    assert {r.view for r in results} == {"results", "quali", "team_results", "roll", "team_roll"}
    with pytest.raises(PluginError, match=r"cannot materialize view\(s\) 'ones', 'ones_too'"):
        materialize(store, strict=True)
    with pytest.raises(PluginError, match=r"view\(s\) 'ones_too': transform 'tmp_one' is missing"):
        materialize(store, ["roll", "ones_too"])
    url = ["--store", str(store.root), "--registry", registry_url]
    capsys.readouterr()
    assert cli_main(*url, "materialize", "--json") == 0
    out = capsys.readouterr()
    assert len(json.loads(out.out)) == 5
    assert "Warning: skipped view(s) 'ones', 'ones_too'" in out.err
    assert cli_main(*url, "materialize", "--strict") == 6
    assert cli_main(*url, "materialize", "ones") == 6
    assert "Error: cannot materialize view(s) 'ones'" in capsys.readouterr().err
    assert cli_main(*url, "show", "one") == 0
    assert "MISSING PLUGIN transform 'tmp_one' is missing: plugin 'tmp-lifecycle'" in \
        capsys.readouterr().out
    assert cli_main(*url, "show", "ones_too", "--json") == 0
    assert "plugin 'tmp-lifecycle'" in json.loads(capsys.readouterr().out)["missing_transform"]
    # Deleting the views is the way out; their artifacts stay until gc.
    store.delete("view", "ones", cascade=True)
    store.delete("view", "ones_too")
    materialize(store, strict=True)
    fp.pm.register(throwaway_plugin, name="tmp-lifecycle")
    assert cli_main(*url, "show", "roll") == 0
    assert "MISSING" not in capsys.readouterr().out
    store.close()


def run_cli(root: Path, *args: str, env: dict[str, str] | None = None,
            stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "FEATURESTORE_DEBUG": "", **(env or {})}
    full.pop("FEATURESTORE_REGISTRY_URL", None)
    return subprocess.run([sys.executable, "-m", "featurestore", "--store", str(root), *args],
                          env=full, capture_output=True, text=True, timeout=120, input=stdin)


def test_plugin_selected_away(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    """FEATURESTORE_PLUGINS without the built-in rolling plugin: its views are skipped."""
    store = FeatureStore(tmp_path / "store")
    store.apply(graph(write_data(tmp_path / "data")))
    materialize(store, samples=2)
    away = {"FEATURESTORE_PLUGINS": "falloff"}
    proc = run_cli(store.root, "materialize", "--strict", env=away)  # the real process
    assert proc.returncode == 6
    assert proc.stderr.startswith("Error: cannot materialize view(s) 'roll', 'team_roll': "
                                  "transform 'rolling' is missing: plugin "
                                  "'featurestore_plugins.rolling' ")
    monkeypatch.setenv("FEATURESTORE_PLUGINS", "falloff")
    fp.reset_plugins()
    try:
        with pytest.warns(MissingTransformWarning, match=r"skipped view\(s\) 'roll', 'team_roll'"):
            assert [r.status for r in materialize(store, force=True)] == ["materialized"] * 3
        assert cli_main("--store", str(store.root), "show", "laps_led_mean_last_2") == 0
        assert "MISSING PLUGIN transform 'rolling' is missing" in capsys.readouterr().out
    finally:
        monkeypatch.delenv("FEATURESTORE_PLUGINS")
        fp.reset_plugins()
    assert [r.status for r in materialize(store, strict=True)] == ["up-to-date"] * 5
    store.close()


# --------------------------------------------------------------------------- the real CLI


def test_cli_delete_prune_gc(tmp_path: Path, registry_url: str,
                             capsys: pytest.CaptureFixture[str],
                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The verbs through the CLI entry point (one real process per registry: the prompt)."""
    store = FeatureStore(tmp_path / "store", registry_url=registry_url)
    defs = graph(write_data(tmp_path / "data"))
    store.apply(defs)
    materialize(store, samples=2)
    materialize(store, ["roll"], samples=2, force=True)
    root = store.root
    cli = ["--store", str(root), "--registry", registry_url]

    def call(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        import io

        capsys.readouterr()
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = cli_main(*cli, *args)
        out = capsys.readouterr()
        return code, out.out, out.err

    code, out, err = call("delete", "feature", "grid")
    assert code == 2
    assert err == ("Error: cannot delete feature 'grid' v1: 1 registered object(s) depend on it: "
                   "feature set 'prerace' v1 pins feature 'grid' v1; delete them first, or pass "
                   "--cascade (cascade=True) to delete them too\n")
    code, out, _ = call("delete", "feature", "grid", "--cascade", "--dry-run", "--json")
    assert code == 0
    assert [(d["kind"], d["name"]) for d in json.loads(out)["deleted"]] == [
        ("feature_set", "prerace"), ("feature", "grid")]
    code, out, err = call("delete", "feature", "grid", "--cascade", stdin="n\n")
    assert code == 0 and "Nothing deleted." in err
    assert call("delete", "feature", "grid", "--cascade", stdin="")[0] == 130  # no answer: abort
    assert call("delete", "nothing", "grid")[0] == 2
    assert store.registry.get("feature", "grid")["deleted_at"] is None
    proc = run_cli(root, "--registry", registry_url, "delete", "feature", "grid", "--cascade",
                   stdin="y\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Deleting 2 object(s):\n  feature set 'prerace' v1: pins")
    assert "view 'quali' v1 -> v2: its columns become (none)" in proc.stdout
    assert "Proceed? [Y/n]" in proc.stderr
    code, out, _ = call("show", "grid", "--history")
    assert code == 0 and ", deleted 20" in out.splitlines()[0]
    code, _, err = call("show", "grid")
    assert code == 7 and "feature 'grid' was deleted at" in err
    code, out, _ = call("list", "features", "--json")
    assert "grid" not in {f["name"] for f in json.loads(out)}
    toml = _toml(tmp_path, defs, drop={"team", "team_results", "team_roll", "points",
                                        "points_sum_last_2"})
    code, out, _ = call("apply", "--dry-run", "--prune", "--json", str(toml))
    assert code == 0
    plan = json.loads(out)
    assert plan["applied"] is False and plan["counts"]["delete"] == 6
    code, out, _ = call("apply", "--dry-run", "--prune", str(toml))
    assert "- view team_roll: delete (v1)\n      not in the definitions" in out
    assert out.splitlines()[-1].endswith(", 6 deleted.")
    code, out, _ = call("gc", "--dry-run", "--json")
    assert code == 0
    report = json.loads(out)
    # roll's superseded artifact, and quali's column view artifact: no live feature reads it.
    assert report["dry_run"] and sorted(r["name"] for r in report["removed"]) == ["quali", "roll"]
    code, out, _ = call("gc")
    assert code == 0 and out.splitlines()[-1].startswith("Removed 2 artifact(s), ")
    assert call("gc", "--keep", "-1")[0] == 2
    assert call("gc", "--older-than", "soon")[0] == 2
    store.close()


def _toml(tmp_path: Path, defs: list[object], drop: set[str]) -> Path:
    """The graph as a TOML definitions file, without the objects named in ``drop``."""
    lines = []
    for o in defs:
        kind, name = kind_name(o)
        if name in drop:
            continue
        table = {"entity": "entities", "source": "sources", "view": "views",
                 "feature": "features", "feature_set": "feature_sets"}[kind]
        fields = {k: v for k, v in vars(o).items() if v not in (None, "", (), {})}
        if kind == "feature_set":
            fields["features"] = list(fields["features"])
        lines.append(f"[[{table}]]")
        for k, v in fields.items():
            lines.append(f"{k} = {_toml_value(v)}")
        lines.append("")
    path = tmp_path / "defs.toml"
    path.write_text("\n".join(lines))
    return path


def _toml_value(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    return json.dumps(v)


def test_readme_lists_the_new_verbs() -> None:
    readme = (ROOT / "README.md").read_text()
    for verb in ("`delete KIND NAME", "`gc [", "--prune", "--strict"):
        assert verb in readme
