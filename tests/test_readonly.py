"""A store this user can only read (a shared team store) serves every read verb, writes nothing,
and refuses writes with one clear error naming the path.

The tests run as root here, and root ignores file permissions, so the CLI runs as a user that
cannot write the store, by the first of these that works:

* ``plain``: the tests do not run as root; the store is made read-only with ``chmod``;
* ``setpriv``: the CLI runs as ``nobody`` (uid 65534) on a ``chmod``-ed store in a folder that
  user can reach (pytest's own temporary folder is private to root);
* ``unshare``: the CLI runs in a user and mount namespace in which the store is a read-only
  bind mount (root in there gets ``EROFS``, as anyone would on a read-only file system).

Only when none works (no setpriv, no unprivileged namespaces) are these tests skipped, saying so.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pytest
from sqlalchemy import create_engine

from featurestore import migrations
from tests.safetykit import build_store, cli_env, fs, one_error_line, write_entities, write_project

FEATURES = "finish_mean_last_3,finish_max_last_10"
NOBODY = 65534


def _works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


@functools.cache
def mechanism() -> str | None:
    """The first way that works here; ``FEATURESTORE_TEST_READONLY=setpriv|unshare`` picks."""
    if os.geteuid() != 0:
        return "plain"
    wanted = os.environ.get("FEATURESTORE_TEST_READONLY", "setpriv,unshare").split(",")
    probe = [sys.executable, "-c", "import featurestore.cli"]
    if "setpriv" in wanted and shutil.which("setpriv") and _works(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                                           "--clear-groups", *probe]):
        return "setpriv"
    if "unshare" in wanted and shutil.which("unshare") and _works(["unshare", "-rm", "sh", "-c",
                                           "d=$(mktemp -d) && mount --bind $d $d && "
                                           "mount -o remount,bind,ro $d"]):
        return "unshare"
    return None


@dataclass
class Reader:
    """Runs the CLI as someone who cannot write ``read_only`` paths."""

    kind: str
    home: Path
    read_only: list[Path]

    def protect(self) -> None:
        if self.kind == "unshare":
            return  # mounted read-only per command
        for top in self.read_only:
            for p in [top, *top.rglob("*")] if top.is_dir() else [top]:
                p.chmod(stat.S_IMODE(p.stat().st_mode) & ~0o222)

    def release(self) -> None:
        for top in self.read_only:
            for p in [top, *top.rglob("*")] if top.is_dir() else [top]:
                p.chmod(stat.S_IMODE(p.stat().st_mode) | 0o200)

    def run(self, *args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
        env = cli_env(HOME=str(home or self.home))
        env.pop("FEATURESTORE_CACHE_DIR", None)  # the reader's own ~/.cache
        cli = [sys.executable, "-m", "featurestore", *args]
        if self.kind == "setpriv":
            cli = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cli]
        elif self.kind == "unshare":
            mounts = " && ".join(f'mount --bind "{p}" "{p}" && mount -o remount,bind,ro "{p}"'
                                 for p in self.read_only)
            cli = ["unshare", "-rm", "sh", "-c", f'{mounts} && exec "$0" "$@"', *cli]
        return subprocess.run(cli, env=env, capture_output=True, text=True, timeout=180)


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Path]:
    """A folder every user can reach (pytest's tmp_path is private to its user)."""
    kind = mechanism()
    if kind is None:
        pytest.skip("cannot run the CLI as a user without write access here: not root-free, "
                    "no working setpriv, no unprivileged user+mount namespaces (unshare -rm)")
    if kind != "setpriv":
        yield tmp_path
        return
    base = Path(tempfile.mkdtemp(prefix="fs-readonly-", dir="/tmp"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        for p in [base, *base.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                p.chmod(0o755)
        shutil.rmtree(base, ignore_errors=True)


def make_reader(shared: Path, *read_only: Path) -> Reader:
    home = shared / "home"
    home.mkdir(exist_ok=True)
    out = shared / "out"
    out.mkdir(exist_ok=True)
    for p in (home, out):
        p.chmod(0o777)
    return Reader(mechanism() or "", home, list(read_only))


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) and its content hash."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def read_verbs(root: Path, entities: Path, out: Path) -> dict[str, list[str]]:
    s = ["--store", str(root)]
    return {
        "list": [*s, "list", "features", "--json"],
        "show": [*s, "show", "finish_mean_last_3", "--json"],
        "retrieve": [*s, "retrieve", "--entities", str(entities), "--features", FEATURES,
                     "--tier", "historical", "-o", str(out), "--json"],
        "online": [*s, "online", "--tier", "race", "--key", "driver_id=3", "--key", "driver_id=4", "--features",
                   FEATURES, "--as-of", "2024-09-01T00:00:00+00:00", "--json"],
        "doctor": [*s, "doctor", "--json"],
    }


def comparable(stdout: str) -> object:
    out = json.loads(stdout)
    return {k: v for k, v in out.items() if k != "output"} if isinstance(out, dict) else out


@pytest.fixture(params=["sqlite", "postgres"])
def store_registry(request: pytest.FixtureRequest) -> str | None:
    """The store's registry: SQLite ``registry.db`` inside the read-only root, or PostgreSQL."""
    return None if request.param == "sqlite" else request.getfixturevalue("pg_url")


def test_a_read_only_store_serves_every_read_verb_and_writes_nothing(
        shared: Path, store_registry: str | None) -> None:
    root = shared / "store"
    build_store(root, store_registry)
    entities = write_entities(shared / "entities.parquet")
    entities.chmod(0o644)
    reader = make_reader(shared, root)
    expected = {}
    for verb, argv in read_verbs(root, entities, shared / "out" / "mine.parquet").items():
        proc = fs(*argv)
        assert proc.returncode == 0, proc.stderr
        expected[verb] = comparable(proc.stdout)
    mine = pl.read_parquet(shared / "out" / "mine.parquet")
    before = snapshot(root)
    reader.protect()
    try:
        theirs = shared / "out" / "theirs.parquet"
        for verb, argv in read_verbs(root, entities, theirs).items():
            proc = reader.run(*argv)
            assert proc.returncode == 0, f"{reader.kind} {verb}: {proc.stderr}"
            assert comparable(proc.stdout) == expected[verb], verb
        assert pl.read_parquet(theirs).equals(mine)
        # A checksum cache this user cannot even look into (HOME of another user): no cache.
        proc = reader.run(*read_verbs(root, entities, theirs)["online"], home=Path("/root"))
        assert proc.returncode == 0 and comparable(proc.stdout) == expected["online"], proc.stderr
        where = str(root / "registry.db") if store_registry is None else str(root)
        for verb in (["apply"], ["materialize", "--force"], ["ingest", "--force"],
                     ["doctor", "--fix"]):
            proc = reader.run("--store", str(root), *verb)
            assert proc.returncode == 1, f"{verb}: {proc.stderr}"
            line = one_error_line(proc.stderr)
            assert where in line and "read-only" in line, line
    finally:
        reader.release()
    assert snapshot(root) == before  # not a byte written, no -wal/-shm, no lock file left


def test_a_read_only_registry_file_during_apply_is_named(shared: Path) -> None:
    """Only registry.db is read-only (the folder is not): on main, "internal error"."""
    root = shared / "store"
    build_store(root)
    reader = make_reader(shared, root / "registry.db")
    if reader.kind == "setpriv":
        for p in [root, *root.rglob("*")]:  # nobody may write the folder, not the registry
            if p.is_dir():
                p.chmod(0o777)
    reader.protect()
    try:
        proc = reader.run("--store", str(root), "apply")
        assert proc.returncode == 1
        line = one_error_line(proc.stderr)
        assert str(root / "registry.db") in line and "read-only" in line
    finally:
        reader.release()


def test_a_wal_with_changes_in_a_read_only_folder_is_refused_not_ignored(shared: Path) -> None:
    """Reading the database file alone would serve a registry missing its newest commits."""
    root = shared / "store"
    build_store(root)
    db = root / "registry.db"
    keeper = sqlite3.connect(db)
    keeper.execute("PRAGMA wal_autocheckpoint=0")
    keeper.execute("INSERT INTO store_info (key, value) VALUES ('note', 'in the WAL only')")
    keeper.commit()
    frozen = shared / "frozen"
    frozen.mkdir()
    for name in ("registry.db", "registry.db-wal", "featurestore.json"):  # not the -shm
        shutil.copy(root / name, frozen / name)
    keeper.close()
    assert (frozen / "registry.db-wal").stat().st_size > 0
    reader = make_reader(shared, frozen)
    reader.protect()
    try:
        proc = reader.run("--store", str(frozen), "list")
        assert proc.returncode == 1
        assert "write-ahead log" in one_error_line(proc.stderr)
    finally:
        reader.release()


def test_reading_never_migrates(tmp_path: Path) -> None:
    """A registry at an older schema is a clear error for a read verb; a write verb upgrades."""
    root = tmp_path / "store"
    write_project(root)
    engine = create_engine(f"sqlite:///{root / 'registry.db'}")
    with engine.begin() as conn:
        migrations.migrate(conn, target=3)  # a store made by an older release
    engine.dispose()
    before = snapshot(root)
    proc = fs("--store", str(root), "list")
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert "schema version 3" in line and "write verb" in line
    assert snapshot(root) == before
    assert fs("--store", str(root), "apply").returncode == 0  # migrates, and adopts the store
    assert fs("--store", str(root), "list").returncode == 0
