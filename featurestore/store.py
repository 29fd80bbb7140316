"""``FeatureStore``: the Python API. Every CLI verb is a thin wrapper over a method here."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy import Connection

from featurestore import schema
from featurestore.artifacts import (
    WrittenArtifact,
    engine_read_fault,
    file_checksum,
    reading_artifacts,
    verify_artifact,
    write_parquet_atomic,
    writers_lock,
)
from featurestore.definitions import (
    COMPRESSIONS,
    Definitions,
    Entity,
    Feature,
    FeatureSet,
    Source,
    View,
    canonical_json,
    load_definitions,
)
from featurestore.errors import (
    ArtifactError,
    DataError,
    DefinitionError,
    NotFoundError,
    ReadOnlyStoreError,
)
from featurestore.plan import Plan, absolute_source_path, build_plan, execute_plan
from featurestore.registry import utcnow
from featurestore.sourcedata import causal_fill, normalize, resolve_files, scan, validate_rows
from featurestore.tiers import TierOrder
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP

REGISTRY_ENV = "FEATURESTORE_REGISTRY_URL"
DEFINITIONS_FILE = "features.toml"
Progress = Callable[[str, int, int], None]
DeclLike = Definitions | str | Path | Iterable[Entity | Source | View | Feature | FeatureSet]


def _noop_progress(_label: str, _done: int, _total: int) -> None:
    return None


class FeatureStore:
    """A feature store rooted at a directory: ``featurestore.json``, a registry, Parquet under ``data/``.

    ``FeatureStore(root)`` opens the store, creating the directory and registry when missing
    (``create=False``, or ``FeatureStore.open(root)``, only opens: no store there is
    ``NoStoreError``). The registry is the one the root's ``featurestore.json`` records (SQLite
    ``root/registry.db`` by default) unless ``registry_url`` or the ``FEATURESTORE_REGISTRY_URL``
    environment variable names another SQLAlchemy URL; either way it must be this store's own
    registry (same store id), else ``StoreMismatchError``. ``read_only=True`` opens without
    writing anything (no migration either); the default, None, opens read-only exactly when
    this user cannot write the registry. Writes to a read-only store raise
    ``ReadOnlyStoreError`` naming the path.
    """

    def __init__(self, root: str | Path = ".", *, registry_url: str | None = None,
                 compression: str = "zstd", create: bool = True,
                 read_only: bool | None = None) -> None:
        from featurestore.identity import open_store

        self.root = Path(root).resolve()
        if compression not in COMPRESSIONS:
            raise DefinitionError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")
        self.compression = compression
        opened = open_store(self.root, registry_url or os.environ.get(REGISTRY_ENV) or None,
                            create=create and not read_only, read_only=read_only)
        self.registry = opened.registry
        self.store_id = opened.store_id
        self.read_only = opened.read_only

    @classmethod
    def open(cls, root: str | Path = ".", *, registry_url: str | None = None,
             read_only: bool | None = None, compression: str = "zstd") -> FeatureStore:
        """Open an existing store; never creates one (``NoStoreError`` when there is none)."""
        return cls(root, registry_url=registry_url, compression=compression, create=False,
                   read_only=read_only)

    def _require_writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(f"cannot {what}: store {self.root} is open read-only "
                                     f"(registry {self.registry.location})")

    def close(self) -> None:
        self.registry.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeatureStore({str(self.root)!r}, registry={self.registry.safe_url!r})"

    # ------------------------------------------------------------------ definitions
    def _definitions(self, defs: DeclLike | None) -> Definitions:
        if defs is None:
            defs = self.root / DEFINITIONS_FILE
        if isinstance(defs, Definitions):
            return defs
        if isinstance(defs, str | Path):
            return load_definitions(defs)
        return Definitions.of(defs)

    def plan(self, definitions: DeclLike | None = None) -> Plan:
        """What ``apply`` would do, without writing anything."""
        defs = self._definitions(definitions)
        with self.registry.read() as conn:
            return build_plan(conn, self.registry, defs, self.root)

    def apply(self, definitions: DeclLike | None = None, *, dry_run: bool = False) -> Plan:
        """Register ``definitions`` in one transaction: everything or, on any error, nothing.

        Re-applying identical definitions changes nothing. A change of meaning (tier, dtype,
        params, source, keys) adds a new version; descriptions, tags and owners update in place.
        """
        defs = self._definitions(definitions)
        if dry_run:
            return self.plan(defs)
        self._require_writable("apply definitions")

        def txn(conn: Connection) -> Plan:
            plan = build_plan(conn, self.registry, defs, self.root)
            execute_plan(conn, self.registry, plan)
            return plan

        return self.registry.write(txn)

    # ------------------------------------------------------------------ reading the registry
    @property
    def tiers(self) -> TierOrder:
        return self.registry.tiers()

    def list(self, kind: str, *, tier: str | None = None, entity: str | None = None,
             tag: str | None = None) -> list[dict[str, Any]]:
        """Newest versions of every ``kind`` object (entity, source, view, feature, feature_set)."""
        if kind == "artifact":
            rows = self.registry.artifacts()
        elif kind == "tier":
            return [{"name": t.name, "position": t.position, "lag_seconds": t.lag.total_seconds()}
                    for t in self.tiers]
        else:
            if kind not in schema.VERSIONED:
                raise DefinitionError(f"cannot list {kind!r}; choose entity, source, view, feature, "
                                      "feature_set, artifact or tier")
            rows = list(self.registry.latest(kind).values())
        if tier:
            self.tiers.get(tier)
            rows = [r for r in rows if r.get("tier") == tier]
        if entity:
            rows = [r for r in rows if r.get("entity") == entity or
                    (kind == "entity" and r["name"] == entity)]
        if tag:
            rows = [r for r in rows if tag in (r.get("tags") or [])]
        return rows

    def find(self, name: str) -> tuple[str, dict[str, Any]]:
        """Look a name up across kinds; return ``(kind, newest row)``."""
        for kind in ("feature", "view", "source", "entity", "feature_set"):
            try:
                return kind, self.registry.get(kind, name)
            except NotFoundError:
                continue
        raise NotFoundError(f"nothing named {name!r} is registered")

    def history(self, name: str) -> tuple[str, list[dict[str, Any]]]:
        kind, _ = self.find(name)
        return kind, self.registry.history(kind, name)

    # ------------------------------------------------------------------ ingestion
    def _source_fingerprint(self, src: dict[str, Any]) -> str:
        digest = hashlib.sha256(canonical_json({k: src[k] for k in (
            "name", "version", "path", "entity", "event_time", "timezone", "available_time",
            "fills", "on_duplicate", "tier")}).encode())
        digest.update(canonical_json([t.lag.total_seconds() for t in self.tiers]).encode())
        for f in resolve_files(absolute_source_path(src["path"], self.root)):
            # Content, not mtime: a rewritten but identical file is not new input.
            digest.update(f"{f}:{file_checksum(Path(f))}".encode())
        return "sha256:" + digest.hexdigest()

    def read_source(self, name: str) -> pl.DataFrame:
        """A source's rows in store layout (keys, event_timestamp, available_at, columns), validated."""
        src = self.registry.get("source", name)
        keys = self.registry.get("entity", src["entity"])["join_keys"]
        lag = self.tiers.get(src["tier"]).lag
        path = absolute_source_path(src["path"], self.root)
        lf = normalize(scan(path), path=path, keys=keys, event_time=src["event_time"],
                       timezone=src["timezone"], lag=lag, available_time=src["available_time"],
                       expected_schema=src["schema"])
        try:
            df = lf.collect(engine="streaming")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # a Rust panic on damaged bytes is a BaseException
            fault = engine_read_fault(exc)
            if fault is not None:
                raise DataError(f"{path}: cannot read as Parquet ({fault})") from None
            if not isinstance(exc, pl.exceptions.ComputeError):
                raise
            raise DataError(f"{path}: cannot convert times of source {name!r}: "
                            f"{str(exc).splitlines()[0]}") from None
        df = validate_rows(df, path=path, keys=keys, event_time=src["event_time"],
                           on_duplicate=src["on_duplicate"])
        df = df.sort([*keys, EVENT_TIMESTAMP, AVAILABLE_AT], maintain_order=True)
        return causal_fill(df, keys, src["fills"])

    def ingest(self, sources: Sequence[str] | None = None, *, force: bool = False,
               progress: Progress = _noop_progress) -> list[dict[str, Any]]:
        """Validate and snapshot sources into artifacts; unchanged inputs are skipped.

        Returns one dict per source: ``name``, ``status`` (``ingested`` / ``up-to-date``) and
        the artifact row.
        """
        registered = self.registry.latest("source")
        names = list(sources) if sources else sorted(registered)
        for n in names:
            if n not in registered:
                raise NotFoundError(f"source {n!r} is not registered")
        results = []
        for i, name in enumerate(names):
            progress(f"ingest {name}", i, len(names))
            src = registered[name]
            fingerprint = self._source_fingerprint(src)
            latest = self.registry.latest_artifact("source", name)
            if (not force and latest and latest["input_fingerprint"] == fingerprint
                    and latest["object_version"] == src["version"]
                    and self.intact(latest, rebuilding="re-snapshotting the source")):
                results.append({"name": name, "status": "up-to-date", "artifact": latest})
                continue
            df = self.read_source(name)
            row = self._record_artifact("source", name, src["version"], df,
                                        fingerprint=fingerprint, transform=None, plugin=None,
                                        plugin_version=None, params={"fills": src["fills"]},
                                        verified=True, verification="source snapshot")
            results.append({"name": name, "status": "ingested", "artifact": row})
        progress("ingest", len(names), len(names))
        return results

    def _artifact_relpath(self, kind: str, name: str, version: int) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        return f"data/{kind}s/{name}/v{version}-{stamp}-{uuid.uuid4().hex[:8]}.parquet"

    def _record_artifact(self, kind: str, name: str, version: int, df: pl.DataFrame, *,
                         fingerprint: str, transform: str | None, plugin: str | None,
                         plugin_version: str | None, params: Mapping[str, Any],
                         verified: bool, verification: str,
                         input_artifact_id: int | None = None) -> dict[str, Any]:
        self._require_writable(f"write an artifact of {kind} {name!r}")
        relpath = self._artifact_relpath(kind, name, version)
        with writers_lock(self.root):  # doctor --fix may not take the file for an orphan meanwhile
            written = write_parquet_atomic(self.root, relpath, df, compression=self.compression,
                                           time_column=EVENT_TIMESTAMP)
            try:
                return self.registry.write(lambda conn: self._insert_artifact(
                    conn, kind, name, version, written, fingerprint, transform, plugin,
                    plugin_version, params, verified, verification, input_artifact_id))
            except BaseException:
                written.full_path.unlink(missing_ok=True)  # never registered: leave no orphan
                raise

    @staticmethod
    def _insert_artifact(conn: Connection, kind: str, name: str, version: int,
                         w: WrittenArtifact, fingerprint: str, transform: str | None,
                         plugin: str | None, plugin_version: str | None,
                         params: Mapping[str, Any], verified: bool,
                         verification: str, input_artifact_id: int | None = None) -> dict[str, Any]:
        values = {
            "kind": kind, "name": name, "object_version": version, "path": w.path,
            "compression": w.compression, "schema": json.dumps(w.schema),
            "row_count": w.row_count, "min_event_time": w.min_event_time,
            "max_event_time": w.max_event_time, "checksum": w.checksum,
            "size_bytes": w.size_bytes, "transform": transform, "plugin": plugin,
            "plugin_version": plugin_version, "params": canonical_json(params),
            "input_fingerprint": fingerprint, "verified": verified,
            "verification": verification, "created_at": utcnow(),
            "input_artifact_id": input_artifact_id}
        new_id = conn.execute(schema.artifacts.insert().values(**values)).inserted_primary_key[0]
        return {"id": new_id, **values, "schema": w.schema, "params": dict(params)}

    # ------------------------------------------------------------------ artifacts
    def artifact(self, artifact_id: int) -> dict[str, Any]:
        for row in self.registry.artifacts():
            if row["id"] == artifact_id:
                return row
        raise NotFoundError(f"artifact {artifact_id} is not registered")

    def load_artifact(self, artifact_id: int, *, lazy: bool = False,
                      verify_checksum: bool = True) -> pl.DataFrame | pl.LazyFrame:
        """Read an artifact after checking its checksum (remembered per user, so cheap after
        the first read) and schema against the registry."""
        row = self.artifact(artifact_id)
        path = verify_artifact(self.root, row, checksum=verify_checksum)
        if lazy:
            return pl.scan_parquet(path)
        with reading_artifacts([path]):
            return pl.read_parquet(path)

    def intact(self, row: dict[str, Any], *, rebuilding: str | None = None) -> bool:
        """Whether an artifact's file is there and matches its registry row.

        With ``rebuilding`` (what the caller does instead) a damaged or missing file is warned
        about, so ``ingest`` and ``materialize`` never call a lost artifact up to date.
        """
        try:
            verify_artifact(self.root, row)
        except ArtifactError as exc:
            if rebuilding:
                warnings.warn(f"{exc}: {rebuilding}", stacklevel=3)
            return False
        return True

    def source_snapshot(self, name: str) -> tuple[dict[str, Any], Path]:
        """The newest ingested snapshot of a source (ingesting first when inputs changed):
        its artifact row and the checked path of its Parquet file."""
        [result] = self.ingest([name])
        row = result["artifact"]
        return row, verify_artifact(self.root, row)

    # ------------------------------------------------------------------ integrity
    def doctor(self, *, fix: bool = False, checksums: bool = True) -> dict[str, Any]:
        """Check every artifact and the registry; see ``featurestore.doctor.run_doctor``."""
        from featurestore.doctor import run_doctor

        return run_doctor(self, fix=fix, checksums=checksums)

    # ------------------------------------------------------------------ retrieval helpers
    def resolve_features(self, features: str | Sequence[str]) -> list[dict[str, Any]]:
        """Feature rows for names, ``name@version``, ``view:name`` or a feature set's name."""
        if isinstance(features, str):
            try:
                fs = self.registry.get("feature_set", features)
            except NotFoundError:
                features = [features]
            else:
                return [self.registry.get("feature", r["name"], r["version"]) for r in fs["features"]]
        rows = []
        seen = set()
        for ref in features:
            view, _, rest = ref.rpartition(":")
            name, _, version = rest.partition("@")
            if name in seen:
                raise DefinitionError(f"feature {name!r} is requested twice")
            seen.add(name)
            try:
                row = self.registry.get("feature", name, int(version) if version else None)
            except ValueError:
                raise DefinitionError(f"feature reference {ref!r}: version must be a number") from None
            except NotFoundError:
                known = sorted(self.registry.latest("feature"))
                hint = f"; registered features: {', '.join(known[:20])}" if known else ""
                raise NotFoundError(f"feature {name!r} is not registered{hint}") from None
            if view and row["view"] != view:
                raise NotFoundError(f"feature {name!r} belongs to view {row['view']!r}, not {view!r}")
            rows.append(row)
        return rows

    # ------------------------------------------------------------------ retrieval
    def get_historical_features(self, entity_df: pl.DataFrame | pl.LazyFrame,
                                features: str | Sequence[str], *, tier: str,
                                inclusive: bool = False, ttl: timedelta | str | None = None,
                                cutoff: str = "event_timestamp", cutoff_timezone: str | None = None,
                                with_availability: bool = False,
                                verify_checksums: bool = False) -> pl.DataFrame:
        """A point-in-time correct training frame: one row per ``entity_df`` row, in order.

        ``features`` are names, ``name@version``, ``view:name``, or one feature set's name.
        ``tier`` is the prediction point's tier: asking for a later-tier feature raises
        ``LeakageError`` before any data is read. Each value comes from the newest row of the
        same keys with ``available_at < cutoff`` (``<=`` if ``inclusive``); ties go to the later
        event time, then the later ingestion; with ``ttl`` older values are null. Naive cutoffs
        are read in ``cutoff_timezone`` (UTC by default). ``with_availability`` adds each
        feature's ``available_at`` so ``audit`` can prove the frame clean.
        """
        from featurestore.serving import get_historical_features

        return get_historical_features(  # type: ignore[return-value]
            self, entity_df, features, tier=tier, inclusive=inclusive, ttl=ttl, cutoff=cutoff,
            cutoff_timezone=cutoff_timezone, with_availability=with_availability,
            verify_checksums=verify_checksums)

    def get_historical_features_lazy(self, entity_df: pl.DataFrame | pl.LazyFrame,
                                     features: str | Sequence[str], *, tier: str,
                                     inclusive: bool = False, ttl: timedelta | str | None = None,
                                     cutoff: str = "event_timestamp",
                                     cutoff_timezone: str | None = None,
                                     with_availability: bool = False) -> pl.LazyFrame:
        """``get_historical_features`` as a ``LazyFrame`` for streaming pipelines (same rules)."""
        from featurestore.serving import get_historical_features

        return get_historical_features(  # type: ignore[return-value]
            self, entity_df, features, tier=tier, inclusive=inclusive, ttl=ttl, cutoff=cutoff,
            cutoff_timezone=cutoff_timezone, with_availability=with_availability, lazy=True)

    def get_online_features(self, keys: pl.DataFrame | Mapping[str, Sequence[Any]]
                            | Sequence[Mapping[str, Any]], features: str | Sequence[str], *,
                            as_of: datetime | None = None, tier: str | None = None) -> pl.DataFrame:
        """Latest values for a few keys: the point-in-time rule with one cutoff (now by default).

        ``tier`` defaults to the last tier (every feature usable); pass the serving moment's
        tier to have the tier contract enforced.
        """
        from featurestore.serving import get_online_features

        return get_online_features(self, keys, features, as_of=as_of, tier=tier)

    def audit(self, frame: pl.DataFrame, features: Sequence[str], *,
              cutoff: str = "event_timestamp", inclusive: bool = False,
              cutoff_timezone: str | None = None) -> Any:
        """Prove row by row that every value in a ``with_availability`` frame preceded its cutoff.

        Returns an ``AuditReport`` (``n_checked``, ``n_violations``, ``examples``). Naive cutoffs
        are read in ``cutoff_timezone`` (UTC by default), as in retrieval.
        """
        from featurestore.serving import audit_frame

        return audit_frame(frame, cutoff=cutoff, features=features, inclusive=inclusive,
                           cutoff_timezone=cutoff_timezone)
