"""A store knows its registry: ``featurestore.json`` in the root, ``store_id`` in the registry.

A store is never read, written or "fixed" against a registry that is not its own, a read verb
never creates a store, and a store made before identities existed is adopted on its first write.
Registry-touching tests run on SQLite and PostgreSQL (``registry_url``), through the real CLI.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, make_url

from featurestore import FeatureStore, FeatureStoreError, NotFoundError
from featurestore.errors import NoStoreError, StoreMismatchError, UsageError
from featurestore.identity import IDENTITY_FILE, STORE_ID, STORE_ROOT
from featurestore.registry import Registry
from tests.safetykit import build_store, cli_env, fs, json_out, ok, one_error_line, write_project

N_ARTIFACTS = 3  # the source snapshot, the column view `results`, the rolling view `form`
N_FEATURES = 5


def data_files(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "data").rglob("*.parquet"))}


def tables(url: str) -> list[str]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return inspect(conn).get_table_names()
    finally:
        engine.dispose()


def forget_identity(root: Path, url: str) -> None:
    """Make the store look as one made before identities: no file, no store_info rows."""
    (root / IDENTITY_FILE).unlink()
    registry = Registry(url)
    registry.write(lambda conn: (Registry.set_info(conn, STORE_ID, None),
                                 Registry.set_info(conn, STORE_ROOT, None)))
    registry.close()


def test_a_new_store_records_its_identity_in_root_and_registry(tmp_path: Path,
                                                              registry_url: str) -> None:
    root = tmp_path / "store"
    with FeatureStore(root, registry_url=registry_url) as store:
        store_id = store.store_id
    assert store_id is not None and re.fullmatch(r"[0-9a-f]{32}", store_id)
    ident = json.loads((root / IDENTITY_FILE).read_text())
    assert ident["format"] == "featurestore-store" and ident["version"] == 1
    assert ident["store_id"] == store_id and ident["created_at"]
    assert make_url(ident["registry_url"]) == make_url(registry_url)
    registry = Registry(registry_url, read_only=True, migrate=False)
    assert registry.info(STORE_ID) == store_id and registry.info(STORE_ROOT) == str(root)
    registry.close()
    # Opened again without naming the registry: the one the root records.
    with FeatureStore(root) as again:
        assert again.store_id == store_id and again.registry.url == ident["registry_url"]


def test_the_default_registry_is_recorded_as_the_roots_own(tmp_path: Path) -> None:
    with FeatureStore(tmp_path / "store") as store:
        store_id = store.store_id
    assert json.loads((tmp_path / "store" / IDENTITY_FILE).read_text())["registry_url"] is None
    shutil.move(tmp_path / "store", tmp_path / "moved")  # the folder moves with its registry
    with FeatureStore.open(tmp_path / "moved") as moved:
        assert moved.store_id == store_id
        assert moved.registry.sqlite_file == tmp_path / "moved" / "registry.db"


def test_without_registry_the_cli_uses_the_recorded_one(tmp_path: Path, registry_url: str) -> None:
    """On main a PostgreSQL store opened without --registry silently got a new empty SQLite."""
    root = tmp_path / "store"
    build_store(root, registry_url)
    listed = json_out(ok(fs("--store", str(root), "list", "features", "--json")))
    assert {f["name"] for f in listed} == {"finish", "finish_mean_last_3", "finish_max_last_10",
                                           "finish_max_last_3", "finish_mean_last_10"}
    assert not (root / "registry.db").exists()  # the SQLite default was never opened


def test_doctor_fix_without_registry_keeps_every_artifact(tmp_path: Path,
                                                         registry_url: str) -> None:
    """On main this deleted all 7 artifacts of a PostgreSQL store and said "ok"."""
    root = tmp_path / "store"
    build_store(root, registry_url)
    before = data_files(root)
    report = json_out(ok(fs("--store", str(root), "doctor", "--fix", "--json")))
    assert report["ok"] and report["artifacts_checked"] == N_ARTIFACTS
    assert report["removed"] == [] and report["quarantined"] == []
    assert data_files(root) == before and len(before) == N_ARTIFACTS


def test_another_stores_registry_is_refused_naming_both(tmp_path: Path, registry_url: str) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    build_store(a, registry_url)
    FeatureStore(b).close()  # b: the SQLite default in its own root
    id_a = json.loads((a / IDENTITY_FILE).read_text())["store_id"]
    id_b = json.loads((b / IDENTITY_FILE).read_text())["store_id"]
    before = data_files(a)
    b_url = f"sqlite:///{b / 'registry.db'}"
    proc = fs("--store", str(a), "--registry", b_url, "doctor", "--fix")
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr)
    assert id_a in line and id_b in line and str(b / "registry.db") in line
    for create, read_only in ((True, None), (False, True), (False, False)):
        with pytest.raises(StoreMismatchError, match=f"{id_a}.*{id_b}"):
            FeatureStore(a, registry_url=b_url, create=create, read_only=read_only)
        with pytest.raises(StoreMismatchError, match=f"{id_b}.*{id_a}"):
            FeatureStore(b, registry_url=registry_url, create=create, read_only=read_only)
    assert data_files(a) == before


def test_an_empty_or_unknowing_registry_is_refused(tmp_path: Path, registry_url: str) -> None:
    root = tmp_path / "store"
    build_store(root, registry_url)
    before = data_files(root)
    empty = tmp_path / "empty.db"
    empty.touch()  # an empty database: a registry that knows no store
    proc = fs("--store", str(root), "--registry", f"sqlite:///{empty}", "doctor", "--fix")
    assert proc.returncode == 2 and "records no store id" in one_error_line(proc.stderr)
    for create, read_only in ((True, None), (False, True)):
        with pytest.raises(StoreMismatchError, match="records no store id"):
            FeatureStore(root, registry_url=f"sqlite:///{empty}", create=create,
                         read_only=read_only)
    assert empty.stat().st_size == 0  # not migrated, not written
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreMismatchError, match="does not exist"):
        FeatureStore(root, registry_url=f"sqlite:///{missing}")
    assert not missing.exists()
    # The store's own registry, once restored from a backup without its id, is refused too.
    registry = Registry(registry_url)
    registry.write(lambda conn: Registry.set_info(conn, STORE_ID, None))
    registry.close()
    proc = fs("--store", str(root), "doctor", "--fix")
    assert proc.returncode == 2 and "records no store id" in proc.stderr
    assert data_files(root) == before


def test_a_lost_registry_db_is_never_replaced_by_an_empty_one(tmp_path: Path) -> None:
    """On main, doctor --fix after registry.db was deleted removed all data."""
    root = tmp_path / "store"
    build_store(root)
    before = data_files(root)
    (root / "registry.db").unlink()
    for verb in (["doctor", "--fix"], ["list"], ["materialize"]):
        proc = fs("--store", str(root), *verb)
        assert proc.returncode == 7, (verb, proc.stderr)
        assert "has lost its registry" in one_error_line(proc.stderr)
    with pytest.raises(NotFoundError, match="has lost its registry"):
        FeatureStore(root)
    with pytest.raises(NotFoundError, match="has lost its registry"):  # named explicitly: same
        FeatureStore(root, registry_url=f"sqlite:///{root / 'registry.db'}")
    assert not (root / "registry.db").exists()
    assert data_files(root) == before


def test_read_verbs_never_create_a_store(tmp_path: Path) -> None:
    typo = tmp_path / "typo"
    entities = tmp_path / "q.csv"
    entities.write_text("driver_id,event_timestamp\n1,2025-01-01T00:00:00\n")
    for verb in (["list"], ["show", "finish"], ["artifacts"], ["doctor"],
                 ["online", "--tier", "race", "--key", "driver_id=1", "--features", "finish"],
                 ["retrieve", "--entities", str(entities), "--features", "finish", "--tier",
                  "race", "-o", str(tmp_path / "out.parquet")]):
        proc = fs("-s", str(typo), *verb)
        assert proc.returncode == 7, (verb, proc.stderr)
        assert f"no store at {typo}" in one_error_line(proc.stderr)
    assert not typo.exists()
    # An existing folder that is not a store: still nothing created in it.
    typo.mkdir()
    assert fs("-s", str(typo), "list").returncode == 7
    assert list(typo.iterdir()) == []
    with pytest.raises(NoStoreError):
        FeatureStore.open(typo)
    with pytest.raises(NoStoreError):
        FeatureStore(typo, create=False)
    assert list(typo.iterdir()) == []


def test_read_verbs_never_create_a_registry(tmp_path: Path, registry_url: str) -> None:
    typo = tmp_path / "typo"
    typo.mkdir()
    for verb in (["list"], ["doctor"]):
        proc = fs("-s", str(typo), "--registry", registry_url, *verb)
        assert proc.returncode == 7 and "no store at" in one_error_line(proc.stderr)
    db = make_url(registry_url).database
    if registry_url.startswith("sqlite"):
        assert db is not None and not Path(db).exists()
    else:
        assert tables(registry_url) == []
    assert list(typo.iterdir()) == []


def test_write_verbs_and_python_default_create_as_before(tmp_path: Path) -> None:
    root = tmp_path / "new" / "store"
    write_project(tmp_path / "proj")
    ok(fs("--store", str(root), "apply", str(tmp_path / "proj" / "features.toml")))
    assert (root / IDENTITY_FILE).exists() and (root / "registry.db").exists()
    info = json_out(ok(fs("init", str(tmp_path / "other"), "--json")))
    assert re.fullmatch(r"[0-9a-f]{32}", info["store_id"])
    with FeatureStore(tmp_path / "py") as store:  # README: "opens or creates"
        assert store.store_id and (tmp_path / "py" / IDENTITY_FILE).exists()


def test_a_registry_url_that_is_not_a_url_is_a_usage_error(tmp_path: Path) -> None:
    root = tmp_path / "store"
    for args, env in ((["--registry", "notaurl", "list"], cli_env()),
                      (["apply"], cli_env(FEATURESTORE_REGISTRY_URL="notaurl")),
                      (["--registry", "nosuchdb://host/x", "init"], cli_env())):
        proc = fs("--store", str(root), *args, env=env)
        assert proc.returncode == 2, proc.stderr
        assert "registry URL" in one_error_line(proc.stderr)
    assert not root.exists()
    with pytest.raises(UsageError, match="not a SQLAlchemy URL"):
        FeatureStore(root, registry_url="notaurl")
    assert not root.exists()


def test_a_store_made_before_identities_is_adopted_on_its_first_write(
        tmp_path: Path, registry_url: str) -> None:
    root = tmp_path / "store"
    build_store(root, registry_url)
    forget_identity(root, registry_url)
    # Reads work and adopt nothing.
    listed = json_out(ok(fs("--store", str(root), "--registry", registry_url, "list", "--json")))
    assert len(listed) == N_FEATURES
    assert not (root / IDENTITY_FILE).exists()
    registry = Registry(registry_url)
    assert registry.info(STORE_ID) is None
    # The first write verb adopts it: an id in both places.
    ok(fs("--store", str(root), "--registry", registry_url, "materialize"))
    ident = json.loads((root / IDENTITY_FILE).read_text())
    assert registry.info(STORE_ID) == ident["store_id"]
    registry.close()
    with FeatureStore.open(root) as adopted:  # the recorded registry from now on
        assert adopted.store_id == ident["store_id"] and len(adopted.list("feature")) == N_FEATURES


def test_a_default_store_made_before_identities_is_adopted_too(tmp_path: Path) -> None:
    root = tmp_path / "store"
    build_store(root)
    forget_identity(root, f"sqlite:///{root / 'registry.db'}")
    ok(fs("--store", str(root), "list"))
    assert not (root / IDENTITY_FILE).exists()
    report = json_out(ok(fs("--store", str(root), "doctor", "--fix", "--json")))
    assert report["ok"] and report["artifacts_checked"] == N_ARTIFACTS
    assert (root / IDENTITY_FILE).exists()


def test_an_old_registry_is_not_adopted_by_a_root_without_its_data(
        tmp_path: Path, registry_url: str) -> None:
    root = tmp_path / "store"
    build_store(root, registry_url)
    forget_identity(root, registry_url)
    elsewhere = tmp_path / "elsewhere"
    proc = fs("--store", str(elsewhere), "--registry", registry_url, "apply",
              str(root / "features.toml"))
    assert proc.returncode == 2 and "none of them is under" in one_error_line(proc.stderr)
    assert not elsewhere.exists()
    registry = Registry(registry_url)
    assert registry.info(STORE_ID) is None
    registry.close()


def test_a_registry_that_belongs_to_another_root_is_refused(tmp_path: Path,
                                                           registry_url: str) -> None:
    root = tmp_path / "store"
    build_store(root, registry_url)
    other = tmp_path / "other"
    other.mkdir()
    proc = fs("--store", str(other), "--registry", registry_url, "list")
    assert proc.returncode == 2
    assert f"root {root}" in one_error_line(proc.stderr) and IDENTITY_FILE in proc.stderr
    assert list(other.iterdir()) == []


def test_the_password_is_never_recorded(tmp_path: Path, pg_url: str) -> None:
    url = make_url(pg_url).set(password="s3cret-pw")  # trust auth: never asked for
    secret_url = url.render_as_string(hide_password=False)
    root = tmp_path / "store"
    with FeatureStore(root, registry_url=secret_url) as store:
        store_id = store.store_id
        assert "s3cret" not in repr(store)
    assert "s3cret" not in (root / IDENTITY_FILE).read_text()
    registry = Registry(pg_url)
    with registry.read() as conn:
        from sqlalchemy import select

        from featurestore import schema

        values = [v for (v,) in conn.execute(select(schema.store_info.c.value))]
    registry.close()
    assert not any("s3cret" in v for v in values)
    with FeatureStore.open(root) as again:  # the recorded URL, no password: trust lets it in
        assert again.store_id == store_id


def test_a_damaged_identity_file_is_named(tmp_path: Path) -> None:
    root = tmp_path / "store"
    FeatureStore(root).close()
    (root / IDENTITY_FILE).write_text("{not json")
    proc = fs("--store", str(root), "list")
    assert proc.returncode == 2
    assert str(root / IDENTITY_FILE) in one_error_line(proc.stderr)


def test_concurrent_creators_agree_on_one_identity(tmp_path: Path, registry_url: str) -> None:
    root = tmp_path / "store"
    write_project(tmp_path / "proj")
    procs = [subprocess.Popen([sys.executable, "-m", "featurestore", "--store", str(root),
                               "--registry", registry_url, "apply",
                               str(tmp_path / "proj" / "features.toml")],
                              env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    ident = json.loads((root / IDENTITY_FILE).read_text())
    registry = Registry(registry_url)
    assert registry.info(STORE_ID) == ident["store_id"]
    registry.close()
    assert not [p for p in root.iterdir() if p.name.startswith(".fs-tmp-identity")]


def test_store_errors_have_documented_exit_codes() -> None:
    assert StoreMismatchError("x").exit_code == 2 and UsageError("x").exit_code == 2
    assert NoStoreError("x").exit_code == 7
    assert issubclass(StoreMismatchError, FeatureStoreError)
