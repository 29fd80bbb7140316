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
from typing import TYPE_CHECKING, Any

import polars as pl
from sqlalchemy import Connection, select

from featurestore import catalog, schema
from featurestore.artifacts import (
    WrittenArtifact,
    confine,
    file_checksum,
    reading_artifacts,
    remove_artifact_path,
    verify_artifact,
    write_parquet_atomic,
    write_parts_atomic,
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
    DefinitionError,
    NotFoundError,
    ReadOnlyStoreError,
)
from featurestore.plan import Plan, absolute_source_path, build_plan, execute_plan
from featurestore.readers import ensure_lock_files, reading
from featurestore.registry import utcnow
from featurestore.sourcedata import (
    causal_fill,
    normalize,
    resolve_files,
    scan,
    source_read_errors,
    validate_rows,
)
from featurestore.tiers import TierOrder
from featurestore.transforms import EVENT_TIMESTAMP

if TYPE_CHECKING:
    from featurestore.lifecycle import DeleteResult, GcResult
    from featurestore.materialize import MaterializeResult

REGISTRY_ENV = "FEATURESTORE_REGISTRY_URL"
DEFINITIONS_FILE = "features.toml"
Progress = Callable[[str, int, int], None]
DeclLike = Definitions | str | Path | Iterable[Entity | Source | View | Feature | FeatureSet]


def _noop_progress(_label: str, _done: int, _total: int) -> None:
    return None


def _issue(plan: Plan) -> None:
    """Warn about what a plan accepted but doubts (once: a retried transaction re-plans)."""
    import warnings

    from featurestore.errors import DataWarning

    for message in plan.warnings:
        warnings.warn(message, DataWarning, stacklevel=3)


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
    ``ReadOnlyStoreError`` naming the path. ``online_store`` names the online store (see
    ``featurestore.online.online_store_url``).
    """

    def __init__(self, root: str | Path = ".", *, registry_url: str | None = None,
                 compression: str = "zstd", create: bool = True,
                 read_only: bool | None = None, online_store: str | None = None) -> None:
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
        self.online_store = online_store

    @classmethod
    def open(cls, root: str | Path = ".", *, registry_url: str | None = None,
             read_only: bool | None = None, compression: str = "zstd",
             online_store: str | None = None) -> FeatureStore:
        """Open an existing store; never creates one (``NoStoreError`` when there is none)."""
        return cls(root, registry_url=registry_url, compression=compression, create=False,
                   read_only=read_only, online_store=online_store)

    def _require_writable(self, what: str) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(f"cannot {what}: store {self.root} is open read-only "
                                     f"(registry {self.registry.location})")

    def close(self) -> None:
        reader = self.__dict__.pop("_online_reader", None)
        if reader is not None:
            reader.close()
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

    def plan(self, definitions: DeclLike | None = None, *, prune: bool = False) -> Plan:
        """What ``apply`` would do, without writing anything."""
        defs = self._definitions(definitions)
        with self.registry.read() as conn:
            return build_plan(conn, self.registry, defs, self.root, prune=prune)

    def apply(self, definitions: DeclLike | None = None, *, dry_run: bool = False,
              prune: bool = False) -> Plan:
        """Register ``definitions`` in one transaction: everything or, on any error, nothing.

        Re-applying identical definitions changes nothing. A change of meaning (tier, dtype,
        params, source, keys) adds a new version; descriptions, tags and owners update in place.
        With ``prune``, registered objects the definitions do not declare are deleted in the
        same transaction (plan items with action ``delete``); declared objects may not refer
        to them.
        """
        defs = self._definitions(definitions)
        if dry_run:
            plan = self.plan(defs, prune=prune)
            _issue(plan)
            return plan
        self._require_writable("apply definitions")

        def txn(conn: Connection) -> Plan:
            plan = build_plan(conn, self.registry, defs, self.root, prune=prune)
            execute_plan(conn, self.registry, plan)
            return plan

        plan = self.registry.write(txn)
        _issue(plan)
        return plan

    # ------------------------------------------------------------------ reading the registry
    @property
    def tiers(self) -> TierOrder:
        return self.registry.tiers()

    # ------------------------------------------------------------------ settings
    def settings(self) -> dict[str, str | None]:
        """Every store-level setting (``featurestore config``) with its value, None when unset."""
        from featurestore.settings import read_settings

        return read_settings(self.registry)

    def set_setting(self, key: str, value: str | None) -> None:
        """Set a store-level setting (None removes it); the value is checked first."""
        from featurestore.settings import write_setting

        write_setting(self.registry, key, value)
        reader = getattr(self, "_online_reader", None)
        if reader is not None:  # its cached lookups hold the old setting
            reader.invalidate()

    @property
    def default_tier(self) -> str | None:
        """The prediction tier online lookups use when none is given (setting ``default_tier``)."""
        return self.settings()["default_tier"]

    def list(self, kind: str, *, tier: str | None = None, entity: str | None = None,
             tag: str | None = None) -> list[dict[str, Any]]:
        """Newest versions of every ``kind`` object (entity, source, view, feature, feature_set)."""
        return catalog.list_objects(self.registry, self.tiers, kind, tier=tier, entity=entity, tag=tag)

    def find(self, name: str) -> tuple[str, dict[str, Any]]:
        """Look a name up across kinds; return ``(kind, newest row)``.

        A deleted object raises ``DeletedError`` (a ``NotFoundError``) saying when.
        """
        return catalog.find(self.registry, name)

    def history(self, name: str) -> tuple[str, list[dict[str, Any]]]:
        """Every version of the object called ``name``, oldest first; a deleted object's too
        (its rows carry ``deleted_at``)."""
        return catalog.history(self.registry, name)

    # ------------------------------------------------------------------ lifecycle
    def delete(self, kind: str, name: str, *, cascade: bool = False,
               dry_run: bool = False) -> DeleteResult:
        """Delete an object in one transaction; returns what it deleted (``DeleteResult``).

        ``kind`` is entity, source, view, feature or feature_set. Every version is marked
        deleted (history is kept); objects that depend on it make this a ``DependentsError``
        naming them unless ``cascade`` deletes them too. Artifacts stay until ``gc``.
        """
        from featurestore.lifecycle import delete

        return delete(self, kind, name, cascade=cascade, dry_run=dry_run)

    def gc(self, *, keep: int = 0, older_than: timedelta | str | None = None,
           dry_run: bool = False) -> GcResult:
        """Remove artifact files no live or pinned version needs; returns a ``GcResult``.

        See ``featurestore.lifecycle`` for what is kept and ``featurestore.readers`` for why a
        concurrent reader never loses a file it is reading.
        """
        from featurestore.lifecycle import gc

        return gc(self, keep=keep, older_than=older_than, dry_run=dry_run)

    # ------------------------------------------------------------------ ingestion
    def _source_fingerprint(self, src: dict[str, Any]) -> str:
        digest = hashlib.sha256(canonical_json({k: src[k] for k in (
            "name", "version", "path", "entity", "event_time", "timezone", "available_time",
            "fills", "on_duplicate", "tier")} | ({  # only when declared: old fingerprints hold
                "available_lag_seconds": src["available_lag_seconds"]}
                if src.get("available_lag_seconds") is not None else {})).encode())
        digest.update(canonical_json([t.lag.total_seconds() for t in self.tiers]).encode())
        for f in resolve_files(absolute_source_path(src["path"], self.root)):
            # Content, not mtime: a rewritten but identical file is not new input.
            digest.update(f"{f}:{file_checksum(Path(f))}".encode())
        return "sha256:" + digest.hexdigest()

    def materialize(self, views: Sequence[str] | None = None, *, verify: bool = True,
                    samples: int | None = None, budget: float | None = None,
                    force: bool = False, progress: Progress | None = None,
                    strict: bool = False) -> list[MaterializeResult]:
        """Compute views (all by default) into verified artifacts; see
        ``featurestore.materialize.materialize`` (the same function, kept for callers)."""
        from featurestore.cutplan import DEFAULT_SAMPLES
        from featurestore.materialize import materialize

        return materialize(self, views, verify=verify,
                           samples=DEFAULT_SAMPLES if samples is None else samples,
                           budget=budget, force=force, progress=progress, strict=strict)

    def source_lag(self, src: Mapping[str, Any]) -> timedelta:
        """A registered source's availability lag: its own ``available_lag``, else its tier's."""
        own = src.get("available_lag_seconds")
        return timedelta(seconds=own) if own is not None else self.tiers.get(src["tier"]).lag

    def source_frame(self, name: str) -> tuple[pl.LazyFrame, dict[str, Any], list[str], str]:
        """A source's rows in store layout, lazily, unvalidated: (frame, source row, keys, path)."""
        src = self.registry.get("source", name)
        keys = self.registry.get("entity", src["entity"])["join_keys"]
        lag = self.source_lag(src)
        path = absolute_source_path(src["path"], self.root)
        lf = normalize(scan(path), path=path, keys=keys, event_time=src["event_time"],
                       timezone=src["timezone"], lag=lag, available_time=src["available_time"],
                       expected_schema=src["schema"])
        return lf, src, keys, path

    def read_source(self, name: str) -> pl.DataFrame:
        """A source's rows in store layout (keys, event_timestamp, available_at, columns), validated."""
        lf, src, keys, path = self.source_frame(name)
        with source_read_errors(path, name):
            df = lf.collect(engine="streaming")
        df = validate_rows(df, path=path, keys=keys, event_time=src["event_time"],
                           on_duplicate=src["on_duplicate"])  # and sorts by keys, event time
        return causal_fill(df, keys, src["fills"])

    def ingest(self, sources: Sequence[str] | None = None, *, force: bool = False,
               progress: Progress = _noop_progress,
               engine: str | None = None) -> list[dict[str, Any]]:
        """Validate and snapshot sources into artifacts; unchanged inputs are skipped.

        Returns one dict per source: ``name``, ``status`` (``ingested`` / ``up-to-date``) and
        the artifact row. ``engine`` names the engine that reads and writes the data
        (``featurestore.engines``; default ``FEATURESTORE_ENGINE``, else ``polars``).
        """
        from featurestore.engines import get_engine

        runner = get_engine(engine)
        registered = self.registry.latest("source")
        names = list(sources) if sources else sorted(registered)
        for n in names:
            if n not in registered:
                from featurestore.lifecycle import refuse_deleted

                refuse_deleted(self, "source", n)
                raise NotFoundError(f"source {n!r} is not registered")
        results = []
        for i, name in enumerate(names):
            progress(f"ingest {name}", i, len(names))
            results.append(self._ingest_one(name, registered[name], force=force,
                                            engine=runner)[0])
        progress("ingest", len(names), len(names))
        return results

    def _ingest_one(self, name: str, src: dict[str, Any], *, force: bool = False,
                    engine: Any = None) -> tuple[dict[str, Any], pl.DataFrame | None]:
        """One source's ``ingest`` result, with the snapshot's rows when they were just
        written (None when the snapshot was up to date and so not read, or was written by an
        engine other than Polars)."""
        fingerprint = self._source_fingerprint(src)
        latest = self.registry.latest_artifact("source", name)
        if (not force and latest and latest["input_fingerprint"] == fingerprint
                and latest["object_version"] == src["version"]
                and self.intact(latest, rebuilding="re-snapshotting the source")):
            return {"name": name, "status": "up-to-date", "artifact": latest}, None
        if engine is not None and engine.name != "polars":  # the engine reads and writes
            row = self._record_artifact("source", name, src["version"],
                                        engine.read_source(self, name),
                                        fingerprint=fingerprint, transform=None, plugin=None,
                                        plugin_version=None, params={"fills": src["fills"]},
                                        verified=True, verification="source snapshot",
                                        engine=engine)
            return {"name": name, "status": "ingested", "artifact": row}, None
        from featurestore.buckets import bucketed_source, source_buckets

        n = source_buckets(self, src)
        with bucketed_source(self, name, n) as parts:
            df = self.read_source(name) if parts is None else None
            row = self._record_artifact("source", name, src["version"],
                                        df if parts is None else parts,
                                        fingerprint=fingerprint, transform=None, plugin=None,
                                        plugin_version=None, params={"fills": src["fills"]},
                                        verified=True, verification="source snapshot")
        return {"name": name, "status": "ingested", "artifact": row}, df

    def _artifact_relpath(self, kind: str, name: str, version: int) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        return f"data/{kind}s/{name}/v{version}-{stamp}-{uuid.uuid4().hex[:8]}.parquet"

    def _record_artifact(self, kind: str, name: str, version: int, df: Any, *,
                         fingerprint: str, transform: str | None, plugin: str | None,
                         plugin_version: str | None, params: Mapping[str, Any],
                         verified: bool, verification: str,
                         input_artifact_id: int | None = None,
                         verification_report: str = "{}", engine: Any = None) -> dict[str, Any]:
        """Write ``df`` (a frame of ``engine``, Polars by default) as a new artifact and record
        it; on any failure neither the file nor the row is left behind."""
        self._require_writable(f"write an artifact of {kind} {name!r}")
        relpath = self._artifact_relpath(kind, name, version)
        ensure_lock_files(self.root)  # readers lock them; see featurestore.readers
        with writers_lock(self.root):  # doctor --fix may not take the file for an orphan meanwhile
            try:
                # A frame is one file; an iterable of frames is a bucketed artifact, one part
                # each, written as they come (one bucket in memory at a time). Another engine
                # writes its own frame.
                written = (engine.write_artifact(self.root, relpath, df,
                                                 compression=self.compression,
                                                 time_column=EVENT_TIMESTAMP)
                           if engine is not None else
                           write_parquet_atomic(self.root, relpath, df,
                                                compression=self.compression,
                                                time_column=EVENT_TIMESTAMP)
                           if isinstance(df, pl.DataFrame) else
                           write_parts_atomic(self.root, relpath, df,
                                              compression=self.compression,
                                              time_column=EVENT_TIMESTAMP))
                return self.registry.write(lambda conn: self._insert_artifact(
                    conn, kind, name, version, written, fingerprint, transform, plugin,
                    plugin_version, params, verified, verification, input_artifact_id,
                    verification_report))
            except BaseException:
                # Ctrl-C lands anywhere, even after the rename or after the commit: remove the
                # new file unless the registry recorded it, so no orphan and no lost artifact.
                self._discard_unregistered(relpath)
                raise

    def _discard_unregistered(self, relpath: str) -> None:
        try:
            with self.registry.read() as conn:
                recorded = conn.execute(select(schema.artifacts.c.id).where(
                    schema.artifacts.c.path == relpath)).first() is not None
        except Exception:
            return  # cannot tell: keep the file (doctor lists it if it is an orphan)
        if not recorded:
            remove_artifact_path(self.root / relpath)

    @staticmethod
    def _insert_artifact(conn: Connection, kind: str, name: str, version: int,
                         w: WrittenArtifact, fingerprint: str, transform: str | None,
                         plugin: str | None, plugin_version: str | None,
                         params: Mapping[str, Any], verified: bool,
                         verification: str, input_artifact_id: int | None = None,
                         verification_report: str = "{}") -> dict[str, Any]:
        values = {
            "kind": kind, "name": name, "object_version": version, "path": w.path,
            "compression": w.compression, "schema": json.dumps(w.schema),
            "row_count": w.row_count, "min_event_time": w.min_event_time,
            "max_event_time": w.max_event_time, "checksum": w.checksum,
            "size_bytes": w.size_bytes, "transform": transform, "plugin": plugin,
            "plugin_version": plugin_version, "params": canonical_json(params),
            "input_fingerprint": fingerprint, "verified": verified,
            "verification": verification, "created_at": utcnow(),
            "input_artifact_id": input_artifact_id, "verification_report": verification_report,
            "parts": json.dumps(list(w.parts))}
        new_id = conn.execute(schema.artifacts.insert().values(**values)).inserted_primary_key[0]
        return {"id": new_id, **values, "schema": w.schema, "params": dict(params),
                "parts": list(w.parts)}

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
        if lazy:  # read after this returns: no reader's lock can cover it
            return pl.scan_parquet(verify_artifact(self.root, self.artifact(artifact_id),
                                                   checksum=verify_checksum))
        with reading(self.root):
            row = self.artifact(artifact_id)
            path = verify_artifact(self.root, row, checksum=verify_checksum)
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
        row, path, _ = self.fresh_snapshot(name)
        return row, path

    def fresh_snapshot(self, name: str) -> tuple[dict[str, Any], Path, pl.DataFrame | None]:
        """``source_snapshot`` plus the snapshot's rows when this call wrote it as one file
        (else None).

        A snapshot written just now is not hashed again: its checksum was taken from the bytes
        as they were written; and a one-file snapshot's rows are still in memory, so a caller
        that needs them reads nothing back.
        """
        if name not in self.registry.latest("source"):
            [result] = self.ingest([name])  # raises the usual not-registered / deleted error
            return result["artifact"], verify_artifact(self.root, result["artifact"]), None
        result, frame = self._ingest_one(name, self.registry.latest("source")[name])
        row = result["artifact"]
        if result["status"] != "ingested":
            return row, verify_artifact(self.root, row), None
        return row, confine(self.root, row["path"]), frame

    # ------------------------------------------------------------------ integrity
    def doctor(self, *, fix: bool = False, checksums: bool = True) -> dict[str, Any]:
        """Check every artifact and the registry; see ``featurestore.doctor.run_doctor``."""
        from featurestore.doctor import run_doctor

        return run_doctor(self, fix=fix, checksums=checksums)

    # ------------------------------------------------------------------ retrieval helpers
    def resolve_features(self, features: str | Sequence[str]) -> list[dict[str, Any]]:
        """Feature rows for names, ``name@version``, ``view:name`` or a feature set's name.

        Several versions of one feature may be requested; ``serving.output_names`` gives each
        its own output column (``name@version``).
        """
        return catalog.resolve_features(self.registry, features)

    # ------------------------------------------------------------------ retrieval
    def get_historical_features(self, entity_df: pl.DataFrame | pl.LazyFrame,
                                features: str | Sequence[str], *, tier: str,
                                inclusive: bool = False, ttl: timedelta | str | None = None,
                                cutoff: str = "event_timestamp", cutoff_timezone: str | None = None,
                                with_availability: bool = False,
                                verify_checksums: bool = False,
                                allow_unverified: bool = False,
                                strict: bool = False, engine: str | None = None) -> pl.DataFrame:
        """A point-in-time correct training frame: one row per ``entity_df`` row, in order.

        ``features`` are names, ``name@version``, ``view:name``, or one feature set's name.
        ``tier`` is the prediction point's tier: asking for a later-tier feature raises
        ``LeakageError`` before any data is read. Each value comes from the newest row of the
        same keys with ``available_at < cutoff`` (``<=`` if ``inclusive``); ties go to the later
        event time, then the later ingestion; with ``ttl`` older values are null. Naive cutoffs
        are read in ``cutoff_timezone`` (UTC by default). ``with_availability`` adds each
        feature's ``available_at`` so ``audit`` can prove the frame clean. Output columns are
        the feature names, or ``name@version`` when two versions of one feature are requested.
        Features of ``window`` views aggregate, per query row, the rows available in
        ``[cutoff - w, cutoff)`` (see docs/semantics.md, "Windows anchored at the cutoff").
        A view materialized without causality verification (``--no-verify``) raises
        ``LeakageError`` unless ``allow_unverified``. Rows with a null key or a null cutoff match
        nothing: they are counted in a ``DataWarning``, or refused with a ``DataError`` when
        ``strict``. ``engine`` runs the join (``featurestore.engines``; default
        ``FEATURESTORE_ENGINE``, else ``polars``); the result is the same on every engine.
        """
        from featurestore.serving import get_historical_features

        with reading(self.root):  # gc waits: no file this frame is read from goes meanwhile
            return get_historical_features(  # type: ignore[return-value]
                self, entity_df, features, tier=tier, inclusive=inclusive, ttl=ttl,
                cutoff=cutoff, cutoff_timezone=cutoff_timezone,
                with_availability=with_availability, verify_checksums=verify_checksums,
                allow_unverified=allow_unverified, strict=strict, engine=engine)

    def get_historical_features_lazy(self, entity_df: pl.DataFrame | pl.LazyFrame,
                                     features: str | Sequence[str], *, tier: str,
                                     inclusive: bool = False, ttl: timedelta | str | None = None,
                                     cutoff: str = "event_timestamp",
                                     cutoff_timezone: str | None = None,
                                     with_availability: bool = False,
                                     allow_unverified: bool = False) -> pl.LazyFrame:
        """``get_historical_features`` as a ``LazyFrame`` for streaming pipelines (same rules).

        The files are read when the frame is collected, after this returns: if ``gc`` may run
        meanwhile, build and collect it inside ``featurestore.readers.reading(store.root)``.
        Features of ``window`` views are computed now (their engine is eager), so a request
        holding any collects the query here and returns the finished frame as a ``LazyFrame``.
        """
        from featurestore.serving import get_historical_features

        return get_historical_features(  # type: ignore[return-value]
            self, entity_df, features, tier=tier, inclusive=inclusive, ttl=ttl, cutoff=cutoff,
            cutoff_timezone=cutoff_timezone, with_availability=with_availability, lazy=True,
            allow_unverified=allow_unverified)

    def get_online_features(self, keys: pl.DataFrame | Mapping[str, Sequence[Any]]
                            | Sequence[Mapping[str, Any]], features: str | Sequence[str], *,
                            tier: str | None = None, as_of: datetime | None = None,
                            ttl: timedelta | str | None = None, inclusive: bool = False,
                            allow_unverified: bool = False, with_status: bool = False,
                            with_availability: bool = False) -> pl.DataFrame:
        """Feature values for entity keys at one moment (now by default), for serving.

        The same rules as ``get_historical_features`` with one cutoff for every row: ``tier``
        is required unless the store setting ``setting.default_tier`` is set; later-tier
        features and views not causality-verified (unless ``allow_unverified``) raise
        ``LeakageError`` before any data is read. Values come from the online store when the
        view was published there (``featurestore publish``), else from its artifact; the
        answer is the same either way. ``with_status`` adds ``<feature>__status`` (PRESENT,
        NULL_VALUE, NOT_FOUND, OUTSIDE_MAX_AGE), ``with_availability`` ``<feature>__available_at``.
        """
        from featurestore.online import reader_for

        query = keys if isinstance(keys, pl.DataFrame) else pl.DataFrame(keys)
        with reading(self.root):  # an answer from an artifact: gc waits until it is read
            result = reader_for(self).lookup(query, features, tier=tier, as_of=as_of, ttl=ttl,
                                             inclusive=inclusive,
                                             allow_unverified=allow_unverified)
        return result.frame(query, with_status=with_status, with_availability=with_availability)

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
