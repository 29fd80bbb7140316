"""``doctor --fix`` loses nothing: it deletes only its own temporary files, moves files no row
names to ``quarantine/``, and refuses a registry that cannot be this store's. It also lists
views served from an unverified artifact. Through the real CLI, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from featurestore import FeatureStore
from featurestore.artifacts import LOCK_FILE, TMP_PREFIX
from featurestore.doctor import run_doctor
from featurestore.materialize import materialize
from tests.safetykit import build_store, fs, json_out, ok, one_error_line, write_project
from tests.test_store_identity import data_files


def test_fix_refuses_when_the_registry_names_no_artifact_but_data_holds_some(
        tmp_path: Path, registry_url: str) -> None:
    donor = tmp_path / "donor"
    build_store(donor)
    root = tmp_path / "store"
    write_project(root)
    with FeatureStore(root, registry_url=registry_url) as store:
        store.apply()  # definitions, no artifact
    shutil.copytree(donor / "data", root / "data")  # e.g. data restored without its registry
    (root / "data" / "views" / "form" / f"{TMP_PREFIX}x.parquet").write_bytes(b"half")
    before = data_files(root)
    report = fs("--store", str(root), "doctor", "--json")
    assert report.returncode == 5 and len(json_out(report)["orphans"]) == 4
    proc = fs("--store", str(root), "doctor", "--fix")
    assert proc.returncode == 2
    assert "names no artifact" in one_error_line(proc.stderr)
    assert data_files(root) == before
    assert (root / "data" / "views" / "form" / f"{TMP_PREFIX}x.parquet").exists()
    assert not (root / "quarantine").exists()


def test_unverified_views_are_listed(tmp_path: Path, registry_url: str) -> None:
    root = tmp_path / "store"
    write_project(root)
    with FeatureStore(root, registry_url=registry_url) as store:
        store.apply()
        materialize(store, ["results"])
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            materialize(store, ["form"], verify=False)
        report = run_doctor(store)
        art = store.registry.latest_artifact("view", "form")
    assert report["ok"]  # listed, not a problem: retrieval is what refuses them
    [entry] = report["unverified"]
    assert entry["view"] == "form" and entry["artifact_id"] == art["id"]
    assert "NOT VERIFIED" in entry["verification"]
    text = ok(fs("--store", str(root), "doctor")).stdout
    assert f"unverified: view form (artifact {art['id']})" in text
    with FeatureStore(root) as store:
        materialize(store, ["form"])  # verified now: no longer listed
        assert run_doctor(store)["unverified"] == []


def test_doctor_without_fix_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "store"
    build_store(root)
    temp = root / "data" / "views" / "form" / f"{TMP_PREFIX}y.parquet"
    temp.write_bytes(b"half")
    (root / "data" / LOCK_FILE).unlink()  # made by the writers; a reader must not make it
    names = sorted(p.name for p in root.rglob("*"))
    assert fs("--store", str(root), "doctor").returncode == 5
    assert sorted(p.name for p in root.rglob("*")) == names
