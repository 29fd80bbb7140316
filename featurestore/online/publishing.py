"""Publishing views to the online store (``featurestore publish``, ``materialize --online``).

What is kept per entity (so that reads stay correct for any request time): every row whose
``available_at`` is at or after the publish moment (values that become available later: a
store published ahead of time or ahead of a replay), plus the ``history`` newest rows available
before it (default 1: the value a request made now is served). Rows are a suffix of the entity's
history in retrieval order, so for a request time ``T`` the newest kept row with
``available_at < T`` is the right answer whenever one exists; when none does and older rows
were left out, the reader falls back to the view's artifact. ``history=None`` keeps everything.

Incremental: each entity's kept rows have a digest; a publish rewrites only entities whose
digest changed, deletes entities that left the artifact, and leaves the rest untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from featurestore.errors import DefinitionError, NotFoundError
from featurestore.online.base import (
    OnlineBackend,
    PublishBatch,
    ViewMeta,
    encode_key,
    to_storage,
)
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP
from featurestore.windowspec import NAME as WINDOW

if TYPE_CHECKING:
    from featurestore.store import FeatureStore

ONLINE_STORE_ENV = "FEATURESTORE_ONLINE_STORE"
ONLINE_STORE_SETTING = "setting.online_store"
DEFAULT_FILE = "online.db"


def online_store_url(store: FeatureStore, url: str | None = None) -> str:
    """Which online store to use: ``url``, else the store's ``online_store`` argument, else
    ``$FEATURESTORE_ONLINE_STORE``, else the store setting ``setting.online_store``, else the
    embedded SQLite file ``ROOT/online.db``."""
    return (url or getattr(store, "online_store", None) or os.environ.get(ONLINE_STORE_ENV)
            or store.registry.info(ONLINE_STORE_SETTING) or "sqlite")


def open_backend(store: FeatureStore, url: str | None = None) -> OnlineBackend:
    """The online backend ``online_store_url`` names."""
    chosen = online_store_url(store, url)
    if chosen == "sqlite":
        from featurestore.online.sqlite_backend import SQLiteBackend

        return SQLiteBackend(store.root / DEFAULT_FILE)
    if chosen.startswith("sqlite:///"):
        from pathlib import Path

        from featurestore.online.sqlite_backend import SQLiteBackend

        path = Path(chosen[len("sqlite:///"):])
        path = path if path.is_absolute() else store.root / path
        if path.resolve() == (store.root / "registry.db").resolve():
            raise DefinitionError("the online store must not be the registry database")
        return SQLiteBackend(path)
    if chosen.split("://", 1)[0] in ("redis", "rediss", "unix"):
        from featurestore.online.redis_backend import RedisBackend

        store_id = store.registry.info("store_id") or \
            hashlib.sha256(str(store.root).encode()).hexdigest()[:16]
        return RedisBackend(chosen, default_prefix=f"featurestore:{store_id}")
    raise DefinitionError(f"online store {chosen!r}: expected 'sqlite', sqlite:///PATH or "
                          "redis://HOST:PORT/DB[?prefix=NAME]")


@dataclass
class PublishResult:
    view: str
    status: str  # published | up-to-date | newer-published | not-materialized | removed
    # | computed-at-request (a window view: lookups compute it at the request time)
    artifact_id: int | None = None
    view_version: int | None = None
    entities: int = 0
    changed: int = 0
    removed: int = 0
    rows: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"view": self.view, "status": self.status, "artifact_id": self.artifact_id,
                "view_version": self.view_version, "entities": self.entities,
                "changed": self.changed, "removed": self.removed, "rows": self.rows,
                "seconds": round(self.seconds, 3)}


@dataclass
class _Prepared:
    meta: ViewMeta
    frame: pl.DataFrame  # kept rows: __g, __a, __e, value columns (storage form)
    groups: list[int]  # __g of each entity, in entity order
    keys: list[str]  # encoded entity key per entity
    digests: list[str]
    complete: list[int]


def _is_live(row: dict[str, Any]) -> bool:
    return row.get("deleted_at") is None


def publish(store: FeatureStore, views: Sequence[str] | None = None, *, history: int | None = 1,
            backend: OnlineBackend | None = None, moment: datetime | None = None,
            force: bool = False) -> list[PublishResult]:
    """Publish the newest artifact of each view's newest version to the online store.

    ``views`` defaults to every registered view with an artifact; then views that are published
    but no longer registered are removed from the online store. A view whose online version is
    already this artifact is left alone (``force`` rewrites it); one whose online version comes
    from a newer artifact is never replaced by an older one.
    """
    if history is not None and history < 1:
        raise DefinitionError(f"history must be at least 1 row (or None for all), got {history}")
    own = backend is None
    backend = backend or open_backend(store)
    try:
        registered = {n: v for n, v in store.registry.latest("view").items() if _is_live(v)}
        names = list(dict.fromkeys(views)) if views else sorted(registered)
        for n in names:
            if n not in registered:
                raise NotFoundError(f"view {n!r} is not registered; registered views: "
                                    f"{', '.join(sorted(registered)) or '(none)'}")
        sources = store.registry.latest("source")
        entities = store.registry.latest("entity")
        at = moment or datetime.now(UTC)
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        results = []
        for name in names:
            view = registered[name]
            if view["transform"] == WINDOW:
                # Served anchored at the request time from the view's input rows: a published
                # latest value would be the wrong answer, so there is nothing to publish.
                results.append(PublishResult(name, "computed-at-request",
                                             view_version=view["version"]))
                backend.drop(name)
                continue
            arts = [a for a in store.registry.artifacts(kind="view", name=name)
                    if a["object_version"] == view["version"]]
            if not arts:
                if views:
                    raise NotFoundError(f"view {name!r} v{view['version']} has no materialized "
                                        f"artifact; run `featurestore materialize {name}`")
                results.append(PublishResult(name, "not-materialized",
                                             view_version=view["version"]))
                continue
            keys = entities[sources[view["source"]]["entity"]]["join_keys"]
            results.append(_publish_one(store, backend, view, arts[-1], keys, at, history, force))
        if not views:
            for name in sorted(set(backend.metas()) - set(registered)):
                backend.drop(name)
                results.append(PublishResult(name, "removed"))
        return results
    finally:
        if own:
            backend.close()


def unpublish(store: FeatureStore, views: Sequence[str], *,
              backend: OnlineBackend | None = None) -> list[str]:
    """Remove ``views`` from the online store (readers stop seeing them at once); returns the
    names that were published. Call it when a view is deleted."""
    own = backend is None
    backend = backend or open_backend(store)
    try:
        return [v for v in views if backend.drop(v)]
    finally:
        if own:
            backend.close()


def published_artifact_ids(store: FeatureStore, *, backend: OnlineBackend | None = None) -> set[int]:
    """Artifacts the online store serves from (its fallback reads them): keep them on gc."""
    own = backend is None
    backend = backend or open_backend(store)
    try:
        return {m.artifact_id for m in backend.metas().values()}
    finally:
        if own:
            backend.close()


def _publish_one(store: FeatureStore, backend: OnlineBackend, view: dict[str, Any],
                 art: dict[str, Any], keys: Sequence[str], at: datetime, history: int | None,
                 force: bool) -> PublishResult:
    t0 = time.perf_counter()
    name = view["name"]
    prepared = _prepare(store, view, art, keys, at, history)
    result = PublishResult(name, "published", art["id"], view["version"],
                           entities=len(prepared.keys), rows=prepared.frame.height)

    def make(old: ViewMeta | None, digests: dict[str, str]) -> PublishBatch | None:
        meta = prepared.meta
        if old is not None and not force:
            if old.artifact_id > meta.artifact_id:
                result.status = "newer-published"
                return None
            if (old.artifact_id == meta.artifact_id and old.history == meta.history
                    and old.layout == meta.layout):
                result.status = "up-to-date"
                return None
        same_layout = old is not None and old.layout == meta.layout
        changed = [i for i, (k, d) in enumerate(zip(prepared.keys, prepared.digests, strict=True))
                   if not same_layout or digests.get(k) != d]
        present = set(prepared.keys)
        removals = [k for k in digests if k not in present]
        payloads = _payloads(prepared, changed)
        result.changed, result.removed = len(changed), len(removals)
        return PublishBatch(meta, [(prepared.keys[i], prepared.digests[i], payloads[i])
                                   for i in changed], removals)

    backend.publish(name, make)
    result.seconds = time.perf_counter() - t0
    return result


def _prepare(store: FeatureStore, view: dict[str, Any], art: dict[str, Any], keys: Sequence[str],
             at: datetime, history: int | None) -> _Prepared:
    from featurestore.artifacts import verify_artifact
    from featurestore.layout import retrieval_nulls_last, sorted_by
    from featurestore.reference import artifact_frame

    keys = list(keys)
    # Published values are served without rereading the file: check it against its checksum.
    verify_artifact(store.root, art, checksum=True)
    scan = artifact_frame(store.root, art)  # its columns, whatever its layout
    schema = scan.collect_schema()
    # The artifact's columns, not the file's: a column view's file may be its source snapshot's.
    columns = [c for c in art["schema"] if c not in (*keys, EVENT_TIMESTAMP, AVAILABLE_AT)]
    moment_us = int(at.timestamp() * 1_000_000)
    rows = (scan.with_row_index("__r")  # artifact order settles full ties
            .filter(pl.col(AVAILABLE_AT).is_not_null())  # never available: never served
            .select(*[to_storage(pl.col(k), schema[k]) for k in keys], "__r",
                    pl.col(AVAILABLE_AT).dt.epoch("us").alias("__a"),
                    pl.col(EVENT_TIMESTAMP).dt.epoch("us").alias("__e"),
                    *[to_storage(pl.col(c), schema[c]) for c in columns]))
    if history is None:
        kept = rows.with_columns(pl.lit(1, dtype=pl.Int8).alias("__complete"))
    else:
        # Per entity, the history-th newest availability before the moment: rows at or after
        # it are the kept tail (ties there keep a row or two more, which is never wrong). Both
        # passes stream, so memory follows the kept rows, not the artifact.
        past = pl.col("__a") < moment_us
        # Collected on its own: in one plan polars would cache the shared scan in memory.
        tails = (rows.filter(past).group_by(keys)
                 .agg(pl.col("__a").top_k(history).min().alias("__from"),
                      (pl.len() <= history).cast(pl.Int8).alias("__complete"))
                 .collect(engine="streaming").lazy())
        kept = (rows.join(tails, on=keys, how="left", nulls_equal=True, maintain_order="left")
                .filter(~past | pl.col("__from").is_null() | (pl.col("__a") >= pl.col("__from")))
                .with_columns(pl.col("__complete").fill_null(1))
                .drop("__from"))
    frame = kept.collect(engine="streaming")
    # Artifact order (``featurestore.layout``), so a published artifact needs no sort.
    order, nulls_last = [*keys, "__a", "__e", "__r"], [*retrieval_nulls_last(len(keys)), False]
    if not sorted_by(frame, order, nulls_last):
        frame = frame.sort(order, nulls_last=nulls_last)
    group = pl.struct(keys).rle_id() if len(keys) > 1 else pl.col(keys[0]).rle_id()
    frame = frame.with_columns(group.alias("__g"))
    hashed = ["__a", "__e", *columns]
    groups = (frame
              .with_columns(pl.struct(hashed).hash(seed=0).alias("__h1"),
                            pl.struct(hashed).hash(seed=7).alias("__h2"))
              .group_by("__g", maintain_order=True)
              .agg(*[pl.col(k).first() for k in keys], pl.col("__h1"), pl.col("__h2"),
                   pl.col("__complete").first())
              .select("__g", *keys, "__complete",
                      pl.format("{}.{}.{}", pl.col("__h1").hash(seed=0),
                                pl.col("__h2").hash(seed=7), "__complete").alias("__digest")))
    encoded = [encode_key(row) for row in groups.select(keys).iter_rows()]
    meta = ViewMeta(
        view=view["name"], view_version=view["version"], artifact_id=art["id"],
        artifact_checksum=art["checksum"], verified=bool(art["verified"]), keys=tuple(keys),
        key_dtypes=tuple(str(schema[k]) for k in keys), columns=tuple(columns),
        dtypes=tuple(str(schema[c]) for c in columns), history=history, moment_us=moment_us,
        published_at=datetime.now(UTC).isoformat(), entities=groups.height, rows=frame.height)
    return _Prepared(meta, frame.select("__g", "__a", "__e", *columns), groups["__g"].to_list(),
                     encoded, groups["__digest"].to_list(), groups["__complete"].to_list())


def _payloads(prepared: _Prepared, changed: list[int]) -> dict[int, str]:
    """Payload JSON of the changed entities, by their position in ``prepared.keys``."""
    if not changed:
        return {}
    frame = prepared.frame
    position = {prepared.groups[i]: i for i in changed}
    if len(changed) < len(prepared.keys):
        wanted = pl.Series(list(position), dtype=frame["__g"].dtype)
        frame = frame.filter(pl.col("__g").is_in(wanted.implode()))
    out: dict[int, list[Any]] = {}
    for g, *row in frame.iter_rows():
        i = position[g]
        rows = out.get(i)
        if rows is None:
            rows = out[i] = [prepared.complete[i]]
        rows.append(row)
    return {i: json.dumps(rows, separators=(",", ":")) for i, rows in out.items()}
