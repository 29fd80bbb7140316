"""Ordered, versioned registry migrations.

``MIGRATIONS[i]`` brings a registry from version ``i`` to ``i + 1``. Each one is plain DDL that
runs inside the caller's transaction, so an interrupted upgrade leaves the old version intact
(on PostgreSQL, where DDL is transactional, and on SQLite, whose DDL is too).
Never edit a released migration: add a new one.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy import Connection, MetaData, Table, UniqueConstraint, inspect, select, text

from featurestore import schema
from featurestore.errors import FeatureStoreError

# The tables of version 1, frozen: later versions added tables and columns.
_LATER_TABLES = {"feature_sets", "store_info"}
_LATER_COLUMNS = {
    "artifacts": {"size_bytes", "plugin_version", "verification", "input_artifact_id",
                  "verification_report", "parts"},
    "tiers": {"forbidden_columns"},
    **{t.name: {"deleted_at"} for t in schema.VERSIONED.values()},
}
_LATER_COLUMNS["sources"] = {"deleted_at", "available_lag_seconds"}


def _v1_tables() -> MetaData:
    frozen = MetaData()
    for table in schema.metadata.sorted_tables:
        if table.name in _LATER_TABLES:
            continue
        later = _LATER_COLUMNS.get(table.name, set())
        cols = [c._copy() for c in table.columns if c.name not in later]
        extra = []
        if table.name in {t.name for t in schema.VERSIONED.values()}:
            extra.append(UniqueConstraint("name", "version", name=f"uq_{table.name}_name_version"))
        Table(table.name, frozen, *cols, *extra)
    return frozen


def _to_v1(conn: Connection) -> None:
    _v1_tables().create_all(conn)


def _to_v2(conn: Connection) -> None:
    frozen = MetaData()
    Table("feature_sets", frozen, *[c._copy() for c in schema.feature_sets.columns
                                    if c.name != "deleted_at"],
          UniqueConstraint("name", "version", name="uq_feature_sets_name_version"))
    frozen.create_all(conn)
    conn.execute(text("ALTER TABLE artifacts ADD COLUMN size_bytes INTEGER NOT NULL DEFAULT 0"))
    conn.execute(text("ALTER TABLE artifacts ADD COLUMN plugin_version VARCHAR(64)"))
    conn.execute(text("ALTER TABLE artifacts ADD COLUMN verification TEXT NOT NULL DEFAULT ''"))


def _to_v3(conn: Connection) -> None:
    # Which source snapshot a view artifact was computed from: incremental materialization
    # compares it with the current snapshot.
    conn.execute(text("ALTER TABLE artifacts ADD COLUMN input_artifact_id INTEGER"))


def _to_v4(conn: Connection) -> None:
    # Tier contracts list forbidden columns; artifacts record what verification checked;
    # objects can be deleted (history kept); the store records its identity and settings.
    conn.execute(text("ALTER TABLE tiers ADD COLUMN forbidden_columns TEXT NOT NULL DEFAULT '[]'"))
    conn.execute(text("ALTER TABLE artifacts ADD COLUMN verification_report TEXT NOT NULL "
                      "DEFAULT '{}'"))
    for table in schema.VERSIONED.values():
        conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN deleted_at TIMESTAMP"))
    frozen = MetaData()
    Table("store_info", frozen, *[c._copy() for c in schema.store_info.columns])
    frozen.create_all(conn)


def _to_v5(conn: Connection) -> None:
    # A source may declare its own availability lag (``available_lag``), overriding its tier's.
    conn.execute(text("ALTER TABLE sources ADD COLUMN available_lag_seconds FLOAT"))


def _to_v6(conn: Connection) -> None:
    # Bucketed artifacts: a directory of part files, each with its own checksum.
    conn.execute(text("ALTER TABLE artifacts ADD COLUMN parts TEXT NOT NULL DEFAULT '[]'"))


MIGRATIONS: list[Callable[[Connection], None]] = [_to_v1, _to_v2, _to_v3, _to_v4, _to_v5,
                                                   _to_v6]
LATEST = len(MIGRATIONS)


def current_version(conn: Connection) -> int:
    """The registry's schema version (0 for an empty database)."""
    if not inspect(conn).has_table("schema_version"):
        return 0
    return conn.execute(select(schema.schema_version.c.version)
                        .order_by(schema.schema_version.c.version.desc())).scalar() or 0


def migrate(conn: Connection, target: int = LATEST) -> list[int]:
    """Apply every migration above the current version up to ``target``; return those applied."""
    version = current_version(conn)
    if version > LATEST:
        raise FeatureStoreError(
            f"registry schema version {version} is newer than this featurestore release "
            f"understands ({LATEST}); upgrade featurestore"
        )
    applied = []
    for step in range(version, target):
        MIGRATIONS[step](conn)
        conn.execute(schema.schema_version.insert().values(
            version=step + 1, applied_at=datetime.now(UTC).replace(tzinfo=None)))
        applied.append(step + 1)
    return applied
