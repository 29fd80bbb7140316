"""Registry tables at the newest schema version (SQLAlchemy Core).

Every declared object is a row keyed by ``(name, version)``; versions only ever get added, so
the history of a feature is its rows in version order. Lists and params are JSON text columns;
everything a user filters by (name, tier, entity, source, dtype, kind) is a plain column.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

schema_version = Table(
    "schema_version", metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", DateTime, nullable=False),
)

tiers = Table(
    "tiers", metadata,
    Column("name", String(128), primary_key=True),
    Column("position", Integer, nullable=False, unique=True),
    Column("lag_seconds", Float, nullable=False, default=0.0),
    # JSON list of column names holding this tier's information: no source of an earlier tier
    # may carry them (TOML: [[tiers]] forbidden_before = [...]).
    Column("forbidden_columns", Text, nullable=False, default="[]"),
)

# Facts about the store itself, as key/value rows: ``store_id`` (also recorded in the store
# root, so a store opened against the wrong registry is detected) and store-level settings.
store_info = Table(
    "store_info", metadata,
    Column("key", String(128), primary_key=True),
    Column("value", Text, nullable=False),
)


def _versioned(name: str, *columns: Column) -> Table:
    return Table(
        name, metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("name", String(128), nullable=False, index=True),
        Column("version", Integer, nullable=False),
        *columns,
        Column("created_at", DateTime, nullable=False),
        # Set on every version of an object by `featurestore delete`; history is kept.
        Column("deleted_at", DateTime),
        UniqueConstraint("name", "version", name=f"uq_{name}_name_version"),
    )


entities = _versioned(
    "entities",
    Column("join_keys", Text, nullable=False),
    Column("description", Text, nullable=False, default=""),
)

sources = _versioned(
    "sources",
    Column("path", Text, nullable=False),
    Column("entity", String(128), nullable=False, index=True),
    Column("event_time", String(256), nullable=False),
    Column("tier", String(128), ForeignKey("tiers.name"), nullable=False),
    Column("timezone", String(64), nullable=False),
    Column("available_time", String(256)),
    # The source's own lag in seconds, overriding its tier's; null: the tier's lag.
    Column("available_lag_seconds", Float),
    Column("fills", Text, nullable=False, default="[]"),
    Column("on_duplicate", String(16), nullable=False, default="error"),
    Column("schema", Text, nullable=False),
    Column("description", Text, nullable=False, default=""),
    Column("owner", String(256), nullable=False, default=""),
)

views = _versioned(
    "views",
    Column("source", String(128), nullable=False, index=True),
    Column("transform", String(128)),
    Column("params", Text, nullable=False, default="{}"),
    Column("tier", String(128)),
    Column("description", Text, nullable=False, default=""),
    Column("owner", String(256), nullable=False, default=""),
)

features = _versioned(
    "features",
    Column("entity", String(128), nullable=False, index=True),
    Column("source", String(128), nullable=False, index=True),
    Column("view", String(128), nullable=False, index=True),
    Column("column_name", String(256), nullable=False),
    Column("dtype", String(64), nullable=False),
    Column("tier", String(128), ForeignKey("tiers.name"), nullable=False, index=True),
    Column("transform", String(128)),
    Column("params", Text, nullable=False, default="{}"),
    Column("description", Text, nullable=False, default=""),
    Column("tags", Text, nullable=False, default="[]"),
    Column("owner", String(256), nullable=False, default=""),
)

feature_sets = _versioned(
    "feature_sets",
    Column("features", Text, nullable=False),
    Column("description", Text, nullable=False, default=""),
)

artifacts = Table(
    "artifacts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("name", String(128), nullable=False, index=True),
    Column("object_version", Integer, nullable=False),
    Column("path", Text, nullable=False, unique=True),
    Column("compression", String(16), nullable=False),
    Column("schema", Text, nullable=False),
    Column("row_count", Integer, nullable=False),
    Column("min_event_time", DateTime),
    Column("max_event_time", DateTime),
    Column("checksum", String(80), nullable=False),
    Column("size_bytes", Integer, nullable=False, default=0),
    Column("transform", String(128)),
    Column("plugin", String(256)),
    Column("plugin_version", String(64)),
    Column("params", Text, nullable=False, default="{}"),
    Column("input_fingerprint", String(80), nullable=False),
    Column("verified", Boolean, nullable=False, default=False),
    Column("verification", Text, nullable=False, default=""),
    Column("created_at", DateTime, nullable=False),
    Column("input_artifact_id", Integer),
    # JSON: exactly what causality verification checked (mode, cuts, entities, rows compared).
    Column("verification_report", Text, nullable=False, default="{}"),
    # JSON: a bucketed artifact's part files (file, size, checksum, rows); [] for one file.
    Column("parts", Text, nullable=False, default="[]"),
)

VERSIONED = {
    "entity": entities,
    "source": sources,
    "view": views,
    "feature": features,
    "feature_set": feature_sets,
}
