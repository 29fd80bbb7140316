"""``FeatureStore``: the Python API. Every CLI verb is a thin wrapper over a method here."""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
from sqlalchemy import Connection

from featurestore import catalog
from featurestore.definitions import (
    Definitions,
    Entity,
    Feature,
    FeatureSet,
    Source,
    View,
    load_definitions,
)
from featurestore.errors import (
    ReadOnlyStoreError,
)
from featurestore.plan import Plan, build_plan, execute_plan
from featurestore.readers import reading
from featurestore.store_data import Progress, StoreData
from featurestore.tiers import TierOrder

if TYPE_CHECKING:
    from featurestore.lifecycle import DeleteResult, GcResult
    from featurestore.materialize import MaterializeResult

REGISTRY_ENV = "FEATURESTORE_REGISTRY_URL"
DEFINITIONS_FILE = "features.toml"
DeclLike = Definitions | str | Path | Iterable[Entity | Source | View | Feature | FeatureSet]


def _issue(plan: Plan) -> None:
    """Warn about what a plan accepted but doubts (once: a retried transaction re-plans)."""
    from featurestore.errors import DataWarning

    for message in plan.warnings:
        warnings.warn(message, DataWarning, stacklevel=3)


class FeatureStore(StoreData):
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
                 compression: str | None = None, create: bool = True,
                 read_only: bool | None = None, online_store: str | None = None) -> None:
        from featurestore.identity import open_store

        self.root = Path(root).resolve()
        if compression is not None:
            from featurestore.settings import check_compression

            compression = check_compression(compression, what="compression")
        self._compression = compression
        opened = open_store(self.root, registry_url or os.environ.get(REGISTRY_ENV) or None,
                            create=create and not read_only, read_only=read_only)
        self.registry = opened.registry
        self.store_id = opened.store_id
        self.read_only = opened.read_only
        self.online_store = online_store

    @classmethod
    def open(cls, root: str | Path = ".", *, registry_url: str | None = None,
             read_only: bool | None = None, compression: str | None = None,
             online_store: str | None = None) -> FeatureStore:
        """Open an existing store; never creates one (``NoStoreError`` when there is none)."""
        return cls(root, registry_url=registry_url, compression=compression, create=False,
                   read_only=read_only, online_store=online_store)

    @property
    def compression(self) -> str:
        """The Parquet codec of the artifacts this store writes next: the ``compression``
        argument, else ``FEATURESTORE_COMPRESSION``, else the store's ``compression`` setting,
        else ``lz4``. Artifacts keep the codec they were written with."""
        if self._compression is not None:
            return self._compression
        from featurestore.settings import artifact_compression

        return artifact_compression(self.settings())

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

    # ------------------------------------------------------------------ materialization
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
