"""A missing or damaged artifact is rebuilt, never called up to date.

On main, retrieval said "file is missing" while ``materialize`` said "up-to-date" and left it so.
Now ``materialize`` (and ``ingest`` for a source snapshot) checks the newest artifact before
skipping: missing or damaged, it is rebuilt from its inputs, and retrieval works again with the
same values. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import warnings
from pathlib import Path

import polars as pl
import pytest

from featurestore import ArtifactError, FeatureStore
from featurestore.materialize import materialize
from tests.safetykit import build_store, fs, json_out, ok

FEATURES = ["finish", "finish_mean_last_3", "finish_max_last_10"]
QUERY = pl.DataFrame({"driver_id": [1, 2, 3, 30],
                      "event_timestamp": [dt.datetime(2024, 6, 1, tzinfo=dt.UTC)] * 4})


def frame(store: FeatureStore) -> pl.DataFrame:
    return store.get_historical_features(QUERY, FEATURES, tier="historical")


def test_materialize_rebuilds_a_deleted_view_artifact(tmp_path: Path, registry_url: str) -> None:
    root = tmp_path / "store"
    build_store(root, registry_url)
    with FeatureStore.open(root) as store:
        before = frame(store)
        lost = store.registry.latest_artifact("view", "form")
        assert lost is not None
        (root / lost["path"]).unlink()
        with pytest.raises(ArtifactError, match="file is missing"):
            frame(store)
    results = {r["view"]: r for r in json_out(ok(fs("--store", str(root), "materialize",
                                                    "--json")))}
    assert results["form"]["status"] == "materialized"
    assert results["form"]["artifact_id"] != lost["id"]
    assert results["results"]["status"] == "up-to-date"  # its file is fine: left alone
    with FeatureStore.open(root) as store:
        assert frame(store).equals(before)
        assert (root / store.registry.latest_artifact("view", "form")["path"]).exists()


def test_materialize_rebuilds_a_damaged_view_artifact(tmp_path: Path, registry_url: str) -> None:
    root = tmp_path / "store"
    build_store(root, registry_url)
    with FeatureStore.open(root) as store:
        before = frame(store)
        damaged = store.registry.latest_artifact("view", "form")
        path = root / damaged["path"]
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    with FeatureStore(root) as store:
        with pytest.warns(UserWarning, match=r"checksum .* differs.*rebuilding the view"):
            [result] = materialize(store, ["form"])
        assert result.status == "materialized" and result.artifact["id"] != damaged["id"]
        assert frame(store).equals(before)
        [again] = materialize(store, ["form"])
        assert again.status == "up-to-date"


def test_ingest_resnapshots_a_source_whose_snapshot_is_gone(tmp_path: Path,
                                                           registry_url: str) -> None:
    root = tmp_path / "store"
    build_store(root, registry_url)
    with FeatureStore.open(root) as store:
        before = frame(store)
        snapshot = store.registry.latest_artifact("source", "results")
        (root / snapshot["path"]).unlink()
    [result] = json_out(ok(fs("--store", str(root), "ingest", "--json")))
    assert result["status"] == "ingested" and result["artifact_id"] != snapshot["id"]
    assert (root / result["path"]).exists()
    with FeatureStore(root) as store, warnings.catch_warnings():
        warnings.simplefilter("error")  # the new snapshot is intact: no rebuild, no warning
        assert [r["status"] for r in store.ingest()] == ["up-to-date"]
        assert frame(store).equals(before)


def test_materialize_resnapshots_a_lost_source_snapshot_itself(tmp_path: Path) -> None:
    root = tmp_path / "store"
    build_store(root)
    with FeatureStore(root) as store:
        snapshot = store.registry.latest_artifact("source", "results")
        (root / snapshot["path"]).unlink()
        with pytest.warns(UserWarning, match="file is missing: re-snapshotting the source"):
            results = materialize(store, force=True)
        assert {r.view for r in results} == {"form", "results"}
        fresh = store.registry.latest_artifact("source", "results")
        assert fresh["id"] != snapshot["id"] and (root / fresh["path"]).exists()
