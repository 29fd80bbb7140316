"""The registry: where definitions, versions and artifacts are recorded (SQLAlchemy 2 Core).

SQLite ``registry.db`` in the store root by default (WAL, busy timeout, foreign keys on), any
SQLAlchemy URL otherwise. Writes run in one transaction each and are retried with backoff when
the database is busy or a concurrent writer took the same version number, so "database is
locked" never reaches a user unless the lock outlives every retry.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    URL,
    Connection,
    Engine,
    create_engine,
    event,
    func,
    make_url,
    select,
    text,
    update,
)
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
)

from featurestore import migrations, schema
from featurestore.errors import (
    DeletedError,
    FeatureStoreError,
    NotFoundError,
    ReadOnlyStoreError,
    UsageError,
)
from featurestore.tiers import DEFAULT_TIERS, Tier, TierOrder

T = TypeVar("T")
BUSY_TIMEOUT_MS = 30_000
MAX_ATTEMPTS = 12


def utcnow() -> datetime:
    """Naive UTC wall-clock time: what registry DateTime columns hold."""
    return datetime.now(UTC).replace(tzinfo=None)


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, IntegrityError):
        return True  # a concurrent writer took the same (name, version): re-plan and retry
    if isinstance(exc, OperationalError | DBAPIError):
        if getattr(getattr(exc, "orig", None), "sqlstate", None) in ("40001", "40P01", "55P03"):
            return True  # PostgreSQL serialization failure, deadlock or lock timeout: rerun
        msg = str(exc.orig if getattr(exc, "orig", None) is not None else exc).lower()
        return any(s in msg for s in ("database is locked", "database is busy", "could not serialize",
                                      "deadlock detected", "serialization failure"))
    return False


# Taken first in every PostgreSQL write transaction (see Registry.write); lock_timeout bounds
# the wait like SQLite's busy timeout, and a timeout is retried.
_PG_WRITE_LOCK = text("SELECT set_config('lock_timeout', :timeout, true), "
                      "pg_advisory_xact_lock(hashtext('featurestore:' || "
                      "coalesce(current_schema(), '')))")


def parse_url(url: str) -> URL:
    """The parsed registry URL; ``UsageError`` (exit 2) when it is not a usable SQLAlchemy URL."""
    example = "e.g. sqlite:///path/to/registry.db or postgresql+psycopg://user@host/db"
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError, TypeError):
        raise UsageError(f"registry URL {url!r} is not a SQLAlchemy URL ({example})") from None
    try:
        parsed.get_dialect()
    except NoSuchModuleError:
        raise UsageError(f"registry URL {parsed.render_as_string(hide_password=True)!r}: unknown "
                         f"database kind {parsed.drivername!r} ({example})") from None
    return parsed


def sqlite_file(url: str | URL) -> Path | None:
    """The database file of a SQLite URL (absolute), or None (another database, or in memory)."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.get_backend_name() != "sqlite":
        return None
    db = parsed.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db).resolve()


def _sqlite_read_only_creator(path: Path) -> Callable[[], sqlite3.Connection]:
    """Connections that never write, and never create the database file.

    A user who may write the file reads through an ordinary connection with ``query_only``
    (``mode=rw``: never creates), which also lets the last connection checkpoint and remove the
    WAL files as usual. Otherwise ``mode=ro``, which still sees what a concurrent writer commits;
    but a WAL database opens that way only when its ``-shm`` file exists or can be created, and
    in a folder the user cannot write, after the last writer closed, it cannot: then
    ``immutable=1`` (no locking, WAL ignored) is the only way in, safe only when the WAL holds
    nothing, so otherwise refuse rather than serve a stale registry.
    """
    uri = "file:" + urllib.parse.quote(str(path))
    timeout = BUSY_TIMEOUT_MS / 1000

    def open_uri(query: str) -> sqlite3.Connection:
        return sqlite3.connect(f"{uri}?{query}", uri=True, timeout=timeout,
                               check_same_thread=False)

    def connect() -> sqlite3.Connection:
        writable = os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)
        try:
            conn = open_uri("mode=rw" if writable else "mode=ro")
        except sqlite3.OperationalError:
            if writable:
                raise
        else:
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.OperationalError:
                conn.close()
                if writable:
                    raise
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise ReadOnlyStoreError(
                f"registry {path} cannot be read by this user: its write-ahead log {wal} holds "
                "changes and the folder is read-only; ask its owner to run any featurestore "
                "command there (that checkpoints the log), or give read access to the -shm file")
        return open_uri("mode=ro&immutable=1")

    return connect


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """An engine with the connection settings the registry relies on.

    ``read_only``: connections refuse writes (SQLite opened ``mode=ro``, PostgreSQL sessions
    ``READ ONLY``), so a reader can never change or create anything.
    """
    if url.startswith("sqlite"):
        db = sqlite_file(url)
        if read_only and db is not None:
            engine = create_engine("sqlite://", creator=_sqlite_read_only_creator(db))
        else:
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control from the sqlite3 module so BEGIN IMMEDIATE is ours.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            if read_only:
                cur.execute("PRAGMA query_only=1")
            else:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # Writers lock at BEGIN so two writers never deadlock upgrading read locks.
            write = conn.get_execution_options().get("featurestore_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    if url.startswith("postgresql"):
        # Reads get snapshot isolation: under the default READ COMMITTED every statement of a
        # read transaction would see a newer state, so a reader could find a feature set whose
        # features it had just read as absent (half an apply). Writes: see Registry.write.
        engine = create_engine(url, pool_pre_ping=True, isolation_level="REPEATABLE READ")
    else:
        engine = create_engine(url, pool_pre_ping=True)
    if read_only:
        @event.listens_for(engine, "connect")
        def _read_only_session(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
            cur.close()
            dbapi_conn.commit()
    return engine


def _read_only_failure(exc: BaseException) -> str | None:
    """The database's words when a write failed because this user may not write; else None."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) in ("25006", "42501"):  # read-only transaction, privilege
        return str(orig).strip().splitlines()[0]
    msg = str(orig if orig is not None else exc).strip()
    low = msg.lower()
    if any(s in low for s in ("readonly database", "read-only", "read only", "query_only")):
        return msg.splitlines()[0]
    return None


class Registry:
    """Typed access to the registry tables. Open it with a SQLAlchemy URL."""

    def __init__(self, url: str, *, read_only: bool = False, migrate: bool = True) -> None:
        """Open the registry at ``url``.

        ``migrate`` (default) brings its schema to the newest version, creating it in an empty
        database. ``read_only`` opens connections that cannot write (and never migrates).
        """
        self.url = url
        self.read_only = read_only
        parsed = parse_url(url)
        self.safe_url = parsed.render_as_string(hide_password=True)
        self.sqlite_file = sqlite_file(parsed)
        try:
            self.engine = make_engine(url, read_only=read_only)
            if migrate and not read_only:
                self.migrate()
        except FeatureStoreError:
            raise
        except Exception as exc:
            first = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [""])[0]
            raise FeatureStoreError(f"cannot open registry {self.safe_url}: {first}") from None

    @property
    def location(self) -> str:
        """The registry's file (SQLite) or its URL without the password: what messages name."""
        return str(self.sqlite_file) if self.sqlite_file is not None else self.safe_url

    def schema_version(self) -> int:
        """The registry's schema version; 0 for an empty database."""
        with self.read() as conn:
            return migrations.current_version(conn)

    def migrate(self) -> None:
        """Bring the schema to the newest version (one transaction); no write when it is."""
        if self.schema_version() != migrations.LATEST:
            self.write(self._migrate)

    def _migrate(self, conn: Connection) -> None:
        migrations.migrate(conn)
        if not conn.execute(select(schema.tiers.c.name).limit(1)).first():
            self._write_tiers(conn, DEFAULT_TIERS)

    @staticmethod
    def _write_tiers(conn: Connection, tiers: tuple[Tier, ...] | list[Tier]) -> None:
        conn.execute(schema.tiers.delete())
        conn.execute(schema.tiers.insert(), [
            {"name": t.name, "position": t.position, "lag_seconds": t.lag.total_seconds(),
             "forbidden_columns": json.dumps(list(t.forbidden_before))}
            for t in tiers])

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction: a consistent snapshot of the registry."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def write(self, fn: Callable[[Connection], T], *, on_retry: Callable[[int], None] | None = None) -> T:
        """Run ``fn(conn)`` in one write transaction, all or nothing, retrying when busy.

        Writers take turns, as readers never wait: SQLite's ``BEGIN IMMEDIATE`` takes the write
        lock up front; on PostgreSQL the transaction first takes an advisory lock (one per
        schema) and then runs at READ COMMITTED, so every statement after the lock sees the
        writes committed before it and nothing can change under the plan it builds. Without the
        lock, concurrent applies of one feature collide on its next version number and retry
        each other into the ground. A lock that outlives every retry, or any other transient
        failure that does, ends as a ``FeatureStoreError`` saying so.
        """
        postgres = self.engine.dialect.name == "postgresql"
        options: dict[str, Any] = {"featurestore_write": True}
        if postgres:
            options["isolation_level"] = "READ COMMITTED"
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                with self.engine.connect() as base:
                    conn = base.execution_options(**options)
                    with conn.begin():
                        if postgres:
                            conn.execute(_PG_WRITE_LOCK, {"timeout": f"{BUSY_TIMEOUT_MS}ms"})
                        return fn(conn)
            except (OperationalError, IntegrityError, DBAPIError) as exc:
                refused = _read_only_failure(exc)
                if refused is not None:
                    raise ReadOnlyStoreError(
                        f"registry {self.location} is read-only for this user ({refused}); "
                        "nothing was written") from None
                if not _is_retryable(exc):
                    raise
                if attempt == MAX_ATTEMPTS:
                    first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
                    raise FeatureStoreError(
                        f"registry {self.safe_url} stayed busy through {MAX_ATTEMPTS} attempts "
                        f"({first[0] if first else type(exc).__name__}); nothing was written, "
                        "try again") from exc
                if on_retry:
                    on_retry(attempt)
                self.retries += 1
                time.sleep(min(2.0, 0.01 * 2 ** attempt) * (0.5 + random.random()))
        raise AssertionError("unreachable")

    retries = 0

    # ------------------------------------------------------------------ store facts and settings
    def info(self, key: str, conn: Connection | None = None) -> str | None:
        """A value of the ``store_info`` table (the store id, a setting), or None when unset."""
        query = select(schema.store_info.c.value).where(schema.store_info.c.key == key)
        if conn is not None:
            return conn.execute(query).scalar()
        with self.read() as c:
            return c.execute(query).scalar()

    @staticmethod
    def set_info(conn: Connection, key: str, value: str | None) -> None:
        """Set (or, with None, remove) a ``store_info`` value inside the caller's transaction."""
        conn.execute(schema.store_info.delete().where(schema.store_info.c.key == key))
        if value is not None:
            conn.execute(schema.store_info.insert().values(key=key, value=value))

    # ------------------------------------------------------------------ reads
    def tiers(self, conn: Connection | None = None) -> TierOrder:
        def q(c: Connection) -> TierOrder:
            rows = c.execute(select(schema.tiers).order_by(schema.tiers.c.position)).mappings()
            return TierOrder(Tier(r["name"], r["position"], timedelta(seconds=r["lag_seconds"]),
                                  _forbidden_columns(r["name"], r["forbidden_columns"]))
                             for r in rows)
        if conn is not None:
            return q(conn)
        with self.read() as c:
            return q(c)

    @staticmethod
    def latest_rows(conn: Connection, kind: str, *, deleted: bool = False) -> dict[str, dict[str, Any]]:
        """The newest version of every live object of ``kind``, by name.

        An object whose newest version carries ``deleted_at`` is deleted and left out; with
        ``deleted=True`` only the deleted ones are returned instead (their newest version).
        """
        table = schema.VERSIONED[kind]
        newest = (select(table.c.name, func.max(table.c.version).label("newest"))
                  .group_by(table.c.name).subquery())
        query = (select(table)
                 .join(newest, (table.c.name == newest.c.name)
                       & (table.c.version == newest.c.newest))
                 .where(table.c.deleted_at.is_not(None) if deleted else table.c.deleted_at.is_(None))
                 .order_by(table.c.name))
        result = conn.execute(query)
        columns = list(result.keys())  # zip with plain tuples: far cheaper than row mappings
        out: dict[str, dict[str, Any]] = {}
        for values in result:
            row = dict(zip(columns, values, strict=True))
            out[row["name"]] = decode_row(kind, row)
        return out

    @staticmethod
    def mark_deleted(conn: Connection, kind: str, name: str, when: datetime) -> int:
        """Mark every version of an object deleted at ``when``, inside the caller's transaction.

        Versions already deleted keep their first ``deleted_at``; returns how many were marked.
        """
        table = schema.VERSIONED[kind]
        result = conn.execute(update(table)
                              .where(table.c.name == name, table.c.deleted_at.is_(None))
                              .values(deleted_at=when))
        return result.rowcount

    def latest(self, kind: str) -> dict[str, dict[str, Any]]:
        with self.read() as conn:
            return self.latest_rows(conn, kind)

    def get(self, kind: str, name: str, version: int | None = None,
            conn: Connection | None = None) -> dict[str, Any]:
        """One object (the newest version unless ``version``); ``NotFoundError`` names it."""
        table = schema.VERSIONED[kind]
        query = select(table).where(table.c.name == name)
        query = (query.where(table.c.version == version) if version is not None
                 else query.order_by(table.c.version.desc()).limit(1))
        if conn is None:
            with self.read() as c:
                row = c.execute(query).mappings().first()
        else:
            row = conn.execute(query).mappings().first()
        what = f"{kind} {name!r}" + (f" version {version}" if version is not None else "")
        if row is None:
            raise NotFoundError(f"{what} is not registered")
        if row["deleted_at"] is not None:
            raise deleted_error(what, row["deleted_at"])
        return decode_row(kind, dict(row))

    def history(self, kind: str, name: str) -> list[dict[str, Any]]:
        """Every version of an object, oldest first, deleted ones included (``deleted_at`` set)."""
        table = schema.VERSIONED[kind]
        with self.read() as conn:
            rows = conn.execute(select(table).where(table.c.name == name)
                                .order_by(table.c.version)).mappings().all()
        if not rows:
            raise NotFoundError(f"{kind} {name!r} is not registered")
        return [decode_row(kind, dict(r)) for r in rows]

    def artifacts(self, *, kind: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        t = schema.artifacts
        query = select(t).order_by(t.c.id)
        if kind:
            query = query.where(t.c.kind == kind)
        if name:
            query = query.where(t.c.name == name)
        with self.read() as conn:
            return [decode_artifact(dict(r)) for r in conn.execute(query).mappings()]

    def latest_artifact(self, kind: str, name: str, conn: Connection | None = None) -> dict[str, Any] | None:
        t = schema.artifacts
        query = (select(t).where(t.c.kind == kind, t.c.name == name)
                 .order_by(t.c.id.desc()).limit(1))
        if conn is None:
            with self.read() as c:
                row = c.execute(query).mappings().first()
        else:
            row = conn.execute(query).mappings().first()
        return decode_artifact(dict(row)) if row else None


def deleted_error(what: str, when: datetime) -> DeletedError:
    """The error for a deleted object, saying when it was deleted and how to bring it back."""
    return DeletedError(f"{what} was deleted at {when:%Y-%m-%d %H:%M:%S} UTC; re-apply its "
                        "definition to register it again (`show NAME --history` lists its versions)")


_JSON_FIELDS = {
    "entity": ("join_keys",),
    "source": ("fills", "schema"),
    "view": ("params",),
    "feature": ("params", "tags"),
    "feature_set": ("features",),
}


def _forbidden_columns(tier: str, text: str | None) -> tuple[str, ...]:
    """A tier row's ``forbidden_columns``: a JSON list of column names, checked."""
    try:
        value = json.loads(text or "[]")
    except ValueError:
        value = None
    if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
        raise FeatureStoreError(f"registry: tier {tier!r} has forbidden_columns {text!r}, "
                                "expected a JSON list of column names")
    return tuple(value)


def decode_row(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    for key in _JSON_FIELDS[kind]:
        row[key] = json.loads(row[key]) if row.get(key) is not None else None
    return row


def decode_artifact(row: dict[str, Any]) -> dict[str, Any]:
    row["schema"] = json.loads(row["schema"])
    row["params"] = json.loads(row["params"]) if row.get("params") else {}
    row["parts"] = json.loads(row.get("parts") or "[]")
    return row
