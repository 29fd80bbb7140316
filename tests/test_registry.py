"""Registry behaviour on real SQLite and real PostgreSQL: apply, versions, atomicity, migrations."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, select, text

from featurestore import (
    DefinitionError,
    Entity,
    Feature,
    FeatureStore,
    LeakageError,
    NotFoundError,
    Source,
    Tier,
    schema,
)
from featurestore import plan as plan_module
from featurestore.migrations import LATEST, current_version, migrate
from featurestore.registry import Registry
from tests.storekit import basic_defs, open_store, write_results


def row_counts(store: FeatureStore) -> dict[str, int]:
    with store.registry.read() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in schema.metadata.sorted_tables}


def test_apply_is_idempotent(tmp_path: Path, registry_url: str) -> None:
    store = open_store(tmp_path, registry_url)
    defs = basic_defs(write_results(tmp_path / "r.parquet"))
    first = store.apply(defs)
    assert first.counts()["add"] == 6  # entity, source, its column view, 2 features, 1 set
    before = row_counts(store)
    second = store.apply(defs)
    assert second.is_noop and second.counts()["unchanged"] == 6
    assert row_counts(store) == before


def test_meaning_change_adds_version_and_keeps_history(tmp_path: Path, registry_url: str) -> None:
    store = open_store(tmp_path, registry_url)
    results = write_results(tmp_path / "r.parquet")
    store.apply(basic_defs(results))
    plan = store.apply(basic_defs(results, tier="practice"))
    versioned = {(i.kind, i.name) for i in plan.items if i.action == "version"}
    assert ("feature", "finish") in versioned and ("source", "results") in versioned
    kind, history = store.history("finish")
    assert kind == "feature"
    assert [(r["version"], r["tier"]) for r in history] == [(1, "historical"), (2, "practice")]
    assert store.registry.get("feature", "finish", 1)["tier"] == "historical"
    # The feature set pinned v1 and a re-apply re-pins to v2 (its meaning changed).
    fs = store.registry.get("feature_set", "model_a")
    assert {r["name"]: r["version"] for r in fs["features"]}["finish"] == 2
    assert store.registry.get("feature_set", "model_a", 1)["features"][0] == {"name": "finish", "version": 1}


def test_description_change_updates_in_place(tmp_path: Path, registry_url: str) -> None:
    store = open_store(tmp_path, registry_url)
    results = write_results(tmp_path / "r.parquet")
    store.apply(basic_defs(results))
    plan = store.apply(basic_defs(results, description="where the car finished"))
    [item] = [i for i in plan.items if i.name == "finish"]
    assert item.action == "update" and item.version == 1
    assert store.registry.get("feature", "finish")["description"] == "where the car finished"
    assert len(store.history("finish")[1]) == 1


def test_failed_apply_leaves_registry_unchanged(tmp_path: Path, registry_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    store = open_store(tmp_path, registry_url)
    results = write_results(tmp_path / "r.parquet")
    store.apply(basic_defs(results))
    before = row_counts(store)
    real = plan_module.execute_plan

    def fail_after_writing(conn, registry, plan):  # type: ignore[no-untyped-def]
        real(conn, registry, plan)  # every insert and update has been executed...
        raise RuntimeError("disk full")  # ...and then the process fails before commit

    monkeypatch.setattr("featurestore.store.execute_plan", fail_after_writing)
    with pytest.raises(RuntimeError):
        store.apply(basic_defs(results, tier="race", description="changed"))
    assert row_counts(store) == before
    assert store.registry.get("feature", "finish")["tier"] == "historical"
    assert store.registry.get("feature", "finish")["description"] == "finishing position"


def test_invalid_definition_late_in_file_writes_nothing(tmp_path: Path, registry_url: str) -> None:
    store = open_store(tmp_path, registry_url)
    results = write_results(tmp_path / "r.parquet")
    defs = [*basic_defs(results), Feature("ghost", source="results", column="no_such_column")]
    with pytest.raises(DefinitionError, match="no_such_column"):
        store.apply(defs)
    assert store.list("feature") == [] and store.list("entity") == []


def test_name_clash_between_kinds_names_both(tmp_path: Path, registry_url: str) -> None:
    store = open_store(tmp_path, registry_url)
    results = write_results(tmp_path / "r.parquet")
    store.apply(basic_defs(results))
    with pytest.raises(DefinitionError, match=r"feature 'driver' clashes with the registered entity 'driver'"):
        store.apply([Feature("driver", source="results", column="finish")])
    with pytest.raises(DefinitionError, match="both as a entity and as a feature"):
        store.apply([Entity("x", ("driver_id",)), Feature("x", source="results", column="finish")])


def test_unknown_references_and_tiers(tmp_path: Path, registry_url: str) -> None:
    store = open_store(tmp_path, registry_url)
    results = write_results(tmp_path / "r.parquet")
    with pytest.raises(DefinitionError, match="unknown entity 'car'"):
        store.apply([Source("results", str(results), "car", "race_date")])
    with pytest.raises(DefinitionError, match="unknown tier 'warmup'"):
        store.apply([Entity("driver", ("driver_id",)),
                     Source("results", str(results), "driver", "race_date", tier="warmup")])
    with pytest.raises(NotFoundError):
        store.registry.get("feature", "finish")


def test_forbidden_later_tier_columns_are_refused(tmp_path: Path, registry_url: str) -> None:
    store = open_store(tmp_path, registry_url)
    race = write_results(tmp_path / "race.parquet")
    store.apply([Entity("driver", ("driver_id",)),
                 Source("race", str(race), "driver", "race_date", tier="race"),
                 Feature("laps_led", source="race", tier="race")])
    practice = write_results(tmp_path / "practice.parquet")  # carries laps_led: race telemetry
    with pytest.raises(LeakageError, match=r"source 'practice' \(tier practice\).*laps_led"):
        store.apply([Source("practice", str(practice), "driver", "race_date", tier="practice")])
    assert "practice" not in {s["name"] for s in store.list("source")}


def test_custom_tiers_and_lag(tmp_path: Path, registry_url: str) -> None:
    from datetime import timedelta

    store = open_store(tmp_path, registry_url)
    tiers = [Tier("before", 0), Tier("during", 1, timedelta(minutes=5))]
    from featurestore import Definitions

    store.apply(Definitions.of([Entity("driver", ("driver_id",))], tiers=tiers))
    assert store.tiers.names == ["before", "during"]
    assert store.tiers.get("during").lag == timedelta(minutes=5)


def test_migrates_a_version_1_registry(tmp_path: Path, registry_url: str) -> None:
    engine = create_engine(registry_url)
    with engine.begin() as conn:
        assert migrate(conn, target=1) == [1]
        conn.execute(text("INSERT INTO tiers (name, position, lag_seconds) VALUES ('historical', 0, 0)"))
        conn.execute(text("INSERT INTO entities (name, version, join_keys, description, created_at) "
                          "VALUES ('driver', 1, '[\"driver_id\"]', 'from v1', '2024-01-01 00:00:00')"))
        conn.execute(text(
            "INSERT INTO artifacts (kind, name, object_version, path, compression, schema, row_count,"
            " checksum, params, input_fingerprint, verified, created_at) VALUES ('view', 'v', 1,"
            " 'data/views/v/a.parquet', 'zstd', '{}', 3, 'sha256:00', '{}', 'x', false,"
            " '2024-01-01 00:00:00')"))
    engine.dispose()
    registry = Registry(registry_url)
    with registry.read() as conn:
        assert current_version(conn) == LATEST == 6
    assert registry.get("entity", "driver")["description"] == "from v1"
    [art] = registry.artifacts()
    assert art["size_bytes"] == 0 and art["verification"] == "" and art["input_artifact_id"] is None
    assert art["verification_report"] == "{}"
    assert art["parts"] == []  # an artifact from before v5 is one file
    assert registry.get("entity", "driver")["deleted_at"] is None
    with registry.read() as conn:
        assert conn.execute(select(schema.tiers.c.forbidden_columns)).scalars().all() == ["[]"]
        assert conn.execute(select(schema.store_info)).all() == []
    assert registry.tiers().names == ["historical"]  # existing tiers are kept, not reseeded
    registry.close()


def test_reopening_does_not_migrate_twice(tmp_path: Path, registry_url: str) -> None:
    Registry(registry_url).close()
    registry = Registry(registry_url)
    with registry.read() as conn:
        versions = conn.execute(select(schema.schema_version.c.version)).scalars().all()
    assert versions == list(range(1, LATEST + 1))
    registry.close()
