"""``featurestore doctor``: every artifact against the registry, the registry against itself.

Exit code 0 only when all is well; 5 for any problem or orphan. ``--fix`` removes orphans (what
interrupted writes leave) and never touches registered data or files that are not the store's.
Run through the real CLI, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from sqlalchemy import insert

from featurestore import Entity, Feature, FeatureStore, Source, schema
from featurestore.artifacts import LOCK_FILE, TMP_PREFIX, writers_lock
from featurestore.materialize import materialize
from tests.storekit import basic_defs, write_results


def doctor(store: FeatureStore, *args: str) -> tuple[int, dict[str, Any]]:
    env = {**os.environ, "FEATURESTORE_DEBUG": ""}
    env.pop("FEATURESTORE_REGISTRY_URL", None)
    proc = subprocess.run([sys.executable, "-m", "featurestore", "--store", str(store.root),
                           "--registry", store.registry.url, "doctor", "--json", *args],
                          env=env, capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout)


def checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "data").rglob("*.parquet"))}


@pytest.fixture
def store(tmp_path: Path, registry_url: str) -> Any:
    s = FeatureStore(tmp_path / "store", registry_url=registry_url)
    s.apply(basic_defs(write_results(tmp_path / "r.parquet")))
    materialize(s)  # a source snapshot and a view artifact
    yield s
    s.close()


def view_artifact(store: FeatureStore) -> dict[str, Any]:
    row = store.registry.latest_artifact("view", "results")
    assert row is not None
    return row


def problems_of(store: FeatureStore, report: dict[str, Any], art: dict[str, Any]) -> str:
    """The one problem naming ``art``, after checking that there is one per registry row whose
    file is ``art``'s (a column view shares its snapshot's file: damage shows on both)."""
    inode = os.stat(store.root / art["path"]).st_ino
    sharing = [r for r in store.registry.artifacts()
               if os.stat(store.root / r["path"]).st_ino == inode]
    assert len(report["problems"]) == len(sharing)
    [problem] = [p for p in report["problems"] if f"artifact {art['id']} (" in p]
    return problem


def test_healthy_store_is_ok(store: FeatureStore) -> None:
    code, report = doctor(store)
    assert code == 0 and report["ok"] and report["problems"] == [] and report["orphans"] == []
    assert report["artifacts_checked"] == 2


def test_tampered_bytes_are_found_by_checksum(store: FeatureStore) -> None:
    art = view_artifact(store)
    path = store.root / art["path"]
    data = bytearray(path.read_bytes())
    data[8] ^= 0xFF  # one flipped byte in the first data page: same size, same footer
    path.write_bytes(bytes(data))
    code, report = doctor(store)
    assert code == 5 and not report["ok"]
    problem = problems_of(store, report, art)
    assert art["path"] in problem and all("checksum" in p for p in report["problems"])
    # --no-checksums only checks size and schema: a same-size change needs the rehash.
    assert doctor(store, "--no-checksums")[0] == 0
    # --fix never "repairs" registered data: the problem stays, the file is left as found.
    before = checksums(store.root)
    assert doctor(store, "--fix")[0] == 5
    assert checksums(store.root) == before


def test_unchecked_damaged_footer_is_a_problem_not_a_crash(store: FeatureStore) -> None:
    """--no-checksums lets unverified bytes through to the footer read: pyarrow reads it first,
    so a damaged footer is a reported problem, never an aborted process."""
    art = view_artifact(store)
    path = store.root / art["path"]
    data = bytearray(path.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")  # the footer's length, before the magic
    data[-8 - footer:-8] = b"\xff" * footer  # the whole footer is garbage; the size is the same
    path.write_bytes(bytes(data))
    code, report = doctor(store, "--no-checksums")
    assert code == 5
    problems_of(store, report, art)
    assert all("not a readable Parquet file" in p for p in report["problems"])


def test_unchecked_row_count_is_compared_with_the_registry(store: FeatureStore) -> None:
    from featurestore.artifacts import verify_artifact
    from featurestore.errors import ArtifactError

    art = view_artifact(store)
    assert verify_artifact(store.root, art, checksum=False) == store.root / art["path"]
    lying = {**art, "row_count": art["row_count"] + 1}
    with pytest.raises(ArtifactError, match=f"holds {art['row_count']} rows, the registry "
                                            f"recorded {art['row_count'] + 1}"):
        verify_artifact(store.root, lying, checksum=False)
    verify_artifact(store.root, lying)  # a verified checksum vouches for the rows already


def test_rewritten_artifact_with_another_schema(store: FeatureStore) -> None:
    art = view_artifact(store)
    path = store.root / art["path"]
    pl.read_parquet(path).with_columns(pl.col("finish").cast(pl.Float64)).write_parquet(path)
    code, report = doctor(store, "--no-checksums")
    assert code == 5
    assert any("finish: registry Int64 vs file Float64" in p for p in report["problems"])


def test_deleted_artifact(store: FeatureStore) -> None:
    art = view_artifact(store)
    (store.root / art["path"]).unlink()
    code, report = doctor(store)
    assert code == 5 and any("file is missing" in p and art["path"] in p
                             for p in report["problems"])
    assert doctor(store, "--fix")[0] == 5  # nothing to fix it with: still reported
    assert store.registry.latest_artifact("view", "results") == art  # the row is kept


def test_orphans_are_reported_then_temp_removed_unregistered_quarantined(store: FeatureStore) -> None:
    before = checksums(store.root)
    folder = store.root / "data" / "views" / "results"
    temp = folder / f"{TMP_PREFIX}0123abcd.parquet"
    temp.write_bytes(b"half a parquet file")
    unregistered = folder / "v1-20250101T000000-deadbeef.parquet"  # renamed, never committed
    shutil.copy(store.root / view_artifact(store)["path"], unregistered)
    content = unregistered.read_bytes()
    code, report = doctor(store)
    assert code == 5 and report["problems"] == []
    assert sorted(report["orphans"]) == sorted([str(temp), str(unregistered)])
    code, fixed = doctor(store, "--fix")
    assert code == 0 and fixed["ok"]
    # Only the temporary file is provably doctor's own: deleted. The other is moved, not lost.
    assert fixed["removed"] == [str(temp)]
    moved = store.root / "quarantine" / unregistered.relative_to(store.root)
    assert fixed["quarantined"] == [{"path": str(unregistered), "to": str(moved)}]
    assert not temp.exists() and not unregistered.exists() and moved.read_bytes() == content
    assert checksums(store.root) == before  # every registered file untouched
    assert doctor(store)[0] == 0


def test_a_users_own_parquet_under_data_is_never_an_orphan(tmp_path: Path, registry_url: str) -> None:
    # The README's layout: sources kept in the store's data/ folder next to its artifacts.
    root = tmp_path / "store"
    (root / "data").mkdir(parents=True)
    write_results(root / "data" / "results.parquet")
    notes = root / "data" / "scratch" / "notes.parquet"
    notes.parent.mkdir()
    pl.DataFrame({"a": [1]}).write_parquet(notes)
    store = FeatureStore(root, registry_url=registry_url)
    store.apply(basic_defs(root / "data" / "results.parquet"))
    materialize(store)
    code, report = doctor(store, "--fix")
    assert code == 0 and report["orphans"] == [] and report["removed"] == []
    assert (root / "data" / "results.parquet").exists() and notes.exists()
    store.close()


def test_registry_inconsistencies_are_reported(store: FeatureStore) -> None:
    now = dt.datetime(2025, 1, 1)
    feature = store.registry.get("feature", "finish")
    row = {k: v for k, v in feature.items() if k != "id"}
    row.update(params=json.dumps(row["params"]), tags=json.dumps(row["tags"]), created_at=now)

    def corrupt(conn: Any) -> None:
        # A version gap (v3 after v1), a feature of a view nobody registered, an artifact of an
        # unregistered object version.
        conn.execute(insert(schema.features).values(**{**row, "version": 3}))
        conn.execute(insert(schema.features).values(**{**row, "name": "ghost", "version": 1,
                                                      "view": "no_view"}))
        art = view_artifact(store)
        conn.execute(insert(schema.artifacts).values(**{
            **{k: v for k, v in art.items() if k != "id"}, "path": art["path"] + ".copy.parquet",
            "object_version": 9, "schema": json.dumps(art["schema"]),
            "params": json.dumps(art["params"]), "parts": json.dumps(art["parts"])}))

    store.registry.write(corrupt)
    code, report = doctor(store, "--no-checksums")
    assert code == 5
    text = "\n".join(report["problems"])
    assert "feature 'finish' has versions [1, 3], expected 1..n" in text
    assert "feature 'ghost' refers to missing view 'no_view'" in text
    assert "belongs to view 'results' v9, which is not registered" in text
    assert "file is missing" in text  # the copied row's file does not exist


def wait_until_blocked(lock: Path, timeout: float = 60.0) -> bool:
    """True once some process waits for ``lock`` (Linux /proc/locks shows it as ``->``)."""
    locks = Path("/proc/locks")
    if not locks.exists():  # pragma: no cover - not Linux: give doctor time to get there
        time.sleep(5)
        return True
    needle = f":{os.stat(lock).st_ino} "
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any("->" in line and needle in line for line in locks.read_text().splitlines()):
            return True
        time.sleep(0.02)
    return False


def test_doctor_fix_never_takes_a_live_write_for_an_orphan(store: FeatureStore) -> None:
    """A writer between its rename and its commit holds the writers' lock: doctor waits."""
    env = {**os.environ, "FEATURESTORE_DEBUG": ""}
    env.pop("FEATURESTORE_REGISTRY_URL", None)
    df = pl.DataFrame({"driver_id": [1], "event_timestamp": [dt.datetime(2025, 1, 1, tzinfo=dt.UTC)],
                       "available_at": [dt.datetime(2025, 1, 1, tzinfo=dt.UTC)], "finish": [1],
                       "laps_led": [2]})
    with writers_lock(store.root):
        # Exactly what _record_artifact does, stopped after the rename, before the commit.
        from featurestore.artifacts import write_parquet_atomic

        rel = store._artifact_relpath("view", "results", 1)
        written = write_parquet_atomic(store.root, rel, df, time_column="event_timestamp")
        proc = subprocess.Popen([sys.executable, "-m", "featurestore", "--store", str(store.root),
                                 "--registry", store.registry.url, "doctor", "--fix", "--json"],
                                env=env, stdout=subprocess.PIPE, text=True)
        assert wait_until_blocked(store.root / "data" / LOCK_FILE), \
            "doctor --fix did not wait for the writer"
        assert proc.poll() is None
        store.registry.write(lambda conn: store._insert_artifact(
            conn, "view", "results", 1, written, "sha256:test", None, None, None, {}, True, "t"))
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert json.loads(out)["removed"] == []
    assert written.full_path.exists()


def test_doctor_checks_a_source_kept_as_a_directory(tmp_path: Path, registry_url: str) -> None:
    # A directory source: many files, none of them the store's to remove.
    folder = tmp_path / "laps"
    folder.mkdir()
    for i in range(3):
        pl.DataFrame({"driver_id": [i], "t": [dt.datetime(2025, 1, 1 + i)], "x": [1.0]}
                     ).write_parquet(folder / f"part-{i}.parquet")
    store = FeatureStore(tmp_path / "store", registry_url=registry_url)
    store.apply([Entity("driver", ("driver_id",)), Source("laps", str(folder), "driver", "t"),
                 Feature("x", source="laps")])
    materialize(store)
    code, report = doctor(store)
    assert code == 0 and report["artifacts_checked"] == 2
    store.close()
