"""The embedded online store: one SQLite file (``ROOT/online.db`` by default, never registry.db).

Layout::

    online_meta(view PRIMARY KEY, meta)                 -- ViewMeta JSON of the published version
    online_rows(view, entity_key, digest, payload)      -- PRIMARY KEY (view, entity_key)

A publish is one ``BEGIN IMMEDIATE`` transaction: it reads the view's digests, writes the
changed entities, deletes the removed ones and replaces the meta, then commits. In WAL mode a
reader's statement sees the database as of one commit, and ``read`` asks for metas and payloads
in a single statement, so it sees either the whole old version or the whole new one.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

from featurestore.errors import FeatureStoreError
from featurestore.online.base import MakeBatch, OnlineBackend, ViewMeta

BUSY_TIMEOUT_S = 30.0
_forks = [0]  # bumped in a forked child: connections opened before the fork are not reused
os.register_at_fork(after_in_child=lambda: _forks.__setitem__(0, _forks[0] + 1))
_MAX_PARAMS = 30_000  # under SQLite's 32,766 host parameters per statement
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS online_meta (view TEXT PRIMARY KEY, meta TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS online_rows (view TEXT NOT NULL, entity_key TEXT NOT NULL, "
    "digest TEXT NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (view, entity_key)) WITHOUT ROWID",
)


class SQLiteBackend(OnlineBackend):
    kind = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._local = threading.local()

    # ------------------------------------------------------------------ connections
    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if not create and not self.path.exists():
            return None  # nothing published yet; a reader never creates the file
        self.path.parent.mkdir(parents=True, exist_ok=True)
        mode = "rwc" if create else "rw"
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode={mode}", uri=True,
                                   timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            if create:
                conn.execute("PRAGMA journal_mode=WAL")
                for ddl in _SCHEMA:
                    conn.execute(ddl)
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise FeatureStoreError(f"online store {self.path}: cannot open ({exc})") from None
        return conn

    def _reader(self) -> sqlite3.Connection | None:
        """This thread's connection (reopened after a fork; absent while no file exists)."""
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is None or local.fork != _forks[0]:
            conn = self._connect(create=False)
            if conn is None:
                return None
            local.conn, local.fork = conn, _forks[0]
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # ------------------------------------------------------------------ reads
    def read(self, wanted: Sequence[tuple[str, Sequence[str]]]
             ) -> dict[str, tuple[str | None, dict[str, str]]]:
        out: dict[str, tuple[str | None, dict[str, str]]] = {v: (None, {}) for v, _ in wanted}
        conn = self._reader()
        if conn is None:
            return out
        views = list(out)
        parts = [f"SELECT view, NULL, meta FROM online_meta WHERE view IN "
                 f"({','.join('?' * len(views))})"]
        params: list[str] = list(views)
        for view, keys in wanted:
            if keys:
                parts.append(f"SELECT view, entity_key, payload FROM online_rows WHERE view = ? "
                             f"AND entity_key IN ({','.join('?' * len(keys))})")
                params += [view, *keys]
        try:
            if len(params) <= _MAX_PARAMS:
                # One statement is one snapshot: metas and payloads of the same commit.
                rows = conn.execute(" UNION ALL ".join(parts), params).fetchall()
            else:
                rows = self._read_chunked(conn, views, wanted)
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return out  # the file exists but no publish has created the tables yet
            raise FeatureStoreError(f"online store {self.path}: read failed ({exc})") from None
        payloads: dict[str, dict[str, str]] = {v: {} for v in views}
        metas: dict[str, str] = {}
        for view, key, value in rows:
            if key is None:
                metas[view] = value
            else:
                payloads[view][key] = value
        return {v: (metas.get(v), payloads[v]) for v in views}

    @staticmethod
    def _read_chunked(conn: sqlite3.Connection, views: list[str],
                      wanted: Sequence[tuple[str, Sequence[str]]]) -> list[tuple[str, str | None, str]]:
        conn.execute("BEGIN")  # many statements, one snapshot
        try:
            rows = conn.execute(f"SELECT view, NULL, meta FROM online_meta WHERE view IN "
                                f"({','.join('?' * len(views))})", views).fetchall()
            for view, keys in wanted:
                for i in range(0, len(keys), _MAX_PARAMS):
                    chunk = list(keys[i:i + _MAX_PARAMS])
                    rows += conn.execute(
                        f"SELECT view, entity_key, payload FROM online_rows WHERE view = ? AND "
                        f"entity_key IN ({','.join('?' * len(chunk))})", [view, *chunk]).fetchall()
        finally:
            conn.execute("COMMIT")
        return rows

    def metas(self) -> dict[str, ViewMeta]:
        conn = self._reader()
        if conn is None:
            return {}
        try:
            rows = conn.execute("SELECT view, meta FROM online_meta ORDER BY view").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return {}
            raise
        return {view: ViewMeta.from_json(text) for view, text in rows}

    def ping(self) -> None:
        conn = self._reader()
        if conn is not None:
            try:
                conn.execute("SELECT 1").fetchone()
            except sqlite3.Error as exc:
                raise FeatureStoreError(f"online store {self.path}: {exc}") from None

    # ------------------------------------------------------------------ writes
    def publish(self, view: str, make: MakeBatch) -> ViewMeta | None:
        conn = self._connect(create=True)
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")  # publishers of this file take turns
            try:
                row = conn.execute("SELECT meta FROM online_meta WHERE view = ?", (view,)).fetchone()
                old = ViewMeta.from_json(row[0]) if row else None
                digests = dict(conn.execute(
                    "SELECT entity_key, digest FROM online_rows WHERE view = ?", (view,)))
                batch = make(old, digests)
                if batch is None:
                    conn.execute("ROLLBACK")
                    return None
                from dataclasses import replace

                meta = replace(batch.meta, gen=(old.gen if old else 0) + 1)
                conn.executemany("INSERT OR REPLACE INTO online_rows VALUES (?, ?, ?, ?)",
                                 ((view, k, d, p) for k, d, p in batch.upserts))
                conn.executemany("DELETE FROM online_rows WHERE view = ? AND entity_key = ?",
                                 ((view, k) for k in batch.removals))
                conn.execute("INSERT OR REPLACE INTO online_meta VALUES (?, ?)",
                             (view, meta.to_json()))
                conn.execute("COMMIT")
                return meta
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise FeatureStoreError(f"online store {self.path}: publish of view {view!r} "
                                    f"failed ({exc}); the previous version stays served") from None
        finally:
            conn.close()

    def drop(self, view: str) -> bool:
        if not self.path.exists():
            return False
        conn = self._connect(create=True)
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            found = conn.execute("DELETE FROM online_meta WHERE view = ?", (view,)).rowcount > 0
            conn.execute("DELETE FROM online_rows WHERE view = ?", (view,))
            conn.execute("COMMIT")
            return found
        finally:
            conn.close()
