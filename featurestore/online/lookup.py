"""Reading features for serving: the online store first, the view's artifact when needed.

``OnlineReader.lookup`` keeps the retrieval contract with one cutoff ``T`` (the request time,
now by default) for every key:

* tier guard first: the prediction tier is required (or the store default
  ``setting.default_tier``), and a feature of a later tier raises ``LeakageError`` naming it,
  before any data is read; a view whose artifact was not causality-verified is refused with
  ``LeakageError`` unless ``allow_unverified``;
* each value comes from the entity's newest row with ``available_at < T`` (``<= T`` with
  ``inclusive``), ties already resolved by the stored order; with ``ttl`` a value whose
  ``available_at < T - ttl`` is null with status ``OUTSIDE_MAX_AGE``;
* from the online store when the published version of the view holds the requested feature
  versions and the entity's kept rows reach back to ``T``; otherwise (view never published, a
  different version published, or ``T`` before the kept rows) from the same artifact through
  the join engine, so the answer is the same either way.

Registry lookups (feature resolution, tiers, the default tier, artifacts) are cached per
request shape and refreshed after ``registry_ttl`` seconds or when a new version of the view
is published, never repeated per call.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from featurestore.definitions import canonical_json, dtype_name
from featurestore.dtypes import dtype_from_str
from featurestore.errors import DataError, LeakageError, NotFoundError
from featurestore.online.base import (
    NOT_FOUND,
    NULL_VALUE,
    OUTSIDE_MAX_AGE,
    PRESENT,
    OnlineBackend,
    ViewMeta,
    encode_key,
    key_normalizer,
    to_storage,
)
from featurestore.online.result import EntityRows, OnlineResult, entity_columns, moment_us
from featurestore.serving import feature_tiers, missing_tier_error, output_names
from featurestore.tiers import TierOrder, parse_duration
from featurestore.transforms import EVENT_TIMESTAMP
from featurestore.windowserve import is_window, serve_online

if TYPE_CHECKING:
    from featurestore.store import FeatureStore

DEFAULT_TIER_SETTING = "setting.default_tier"
REGISTRY_TTL_S = 1.0
_EVENT = "__fs_event_timestamp"
_CUTOFF = "__fs_cutoff"


class NeedsArtifact(Exception):
    """Raised by ``lookup(..., allow_artifact=False)`` when the online store cannot answer."""


@dataclass
class _Layout:
    """How one published meta serves one view plan (cached per meta text)."""

    meta: ViewMeta
    served: bool  # the published version holds every requested feature version
    index: list[int]  # per feature: position in a payload row
    dtypes: list[pl.DataType]


@dataclass
class _ViewPlan:
    name: str
    keys: tuple[str, ...]
    versions: frozenset[int]
    features: list[tuple[str, dict[str, Any]]]  # (output name, feature row)
    key_dtypes: tuple[pl.DataType, ...] | None = None  # of the last published meta seen
    key_dtype_names: tuple[str, ...] | None = None
    normalizers: list[Any] = field(default_factory=list)
    layouts: dict[str, _Layout] = field(default_factory=dict)
    artifacts: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class _Plan:
    created: float
    names: list[str]
    tiers_of: dict[tuple[str, int], str]  # (feature, version) -> tier
    views: list[_ViewPlan]
    tiers: TierOrder
    default_tier: str | None
    checked: dict[str, LeakageError | None] = field(default_factory=dict)


class OnlineReader:
    """Serves ``FeatureStore.get_online_features`` and the HTTP server. Thread-safe."""

    def __init__(self, store: FeatureStore, backend: OnlineBackend, *,
                 registry_ttl: float = REGISTRY_TTL_S) -> None:
        self.store = store
        self.backend = backend
        self.registry_ttl = registry_ttl
        self._plans: dict[Any, _Plan] = {}
        self._lock = threading.Lock()

    def close(self) -> None:
        self.backend.close()

    # ------------------------------------------------------------------ registry (cached)
    def _plan(self, features: str | Sequence[str]) -> _Plan:
        key = features if isinstance(features, str) else tuple(features)
        plan = self._plans.get(key)
        if plan is not None and time.monotonic() - plan.created < self.registry_ttl:
            return plan
        with self._lock:
            plan = self._build_plan(features)
            if len(self._plans) > 1024:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def invalidate(self) -> None:
        """Forget every cached registry lookup (the next call reads the registry again)."""
        self._plans.clear()

    def _build_plan(self, features: str | Sequence[str]) -> _Plan:
        store = self.store
        rows = store.resolve_features(features)
        for row in rows:  # a deleted feature is never served, whatever the registry returns
            if row.get("deleted_at") is not None:
                raise NotFoundError(f"feature {row['name']!r} was deleted")
        entities = store.registry.latest("entity")
        # Keyed by what picks the view versions, not by the view's name: two versions of one
        # feature (a feature set may pin both) can live in different versions of its view.
        views: dict[tuple[str, str, str | None, str], _ViewPlan] = {}
        for row, out_name in zip(rows, output_names(rows), strict=True):
            which = (row["view"], row["source"], row["transform"], canonical_json(row["params"]))
            vp = views.get(which)
            if vp is None:
                try:
                    history = store.registry.history("view", row["view"])
                except NotFoundError:
                    raise NotFoundError(f"feature {row['name']!r}: its view {row['view']!r} is "
                                        "not registered") from None
                entity = entities.get(row["entity"]) or store.registry.get("entity", row["entity"])
                versions = frozenset(
                    v["version"] for v in history
                    if v["source"] == row["source"] and v["transform"] == row["transform"]
                    and (v["transform"] is None or v["params"] == row["params"])
                    and v.get("deleted_at") is None)
                vp = views[which] = _ViewPlan(row["view"], tuple(entity["join_keys"]),
                                              versions, [])
            vp.features.append((out_name, row))
        tiers = store.registry.tiers()
        default = store.registry.info(DEFAULT_TIER_SETTING)
        plan = _Plan(time.monotonic(), [n for vp in views.values() for n, _ in vp.features],
                     feature_tiers(rows), list(views.values()), tiers, default)
        snapshot = self.backend.read([(vp.name, []) for vp in plan.views])
        for vp in plan.views:
            text = snapshot[vp.name][0]
            if text is not None:
                self._adopt_keys(vp, self._layout(vp, text).meta)
        return plan

    def _tier(self, plan: _Plan, tier: str | None) -> str:
        chosen = tier or plan.default_tier
        if not chosen:
            raise missing_tier_error(plan.tiers)
        if chosen not in plan.checked:
            try:
                plan.tiers.check_usable(chosen, plan.tiers_of)
                plan.checked[chosen] = None
            except LeakageError as exc:
                late = plan.tiers.later_than(chosen)
                exc.features = sorted({f for (f, _v), t in plan.tiers_of.items()  # type: ignore[attr-defined]
                                       if t in late})
                plan.checked[chosen] = exc
        error = plan.checked[chosen]
        if error is not None:
            raise error
        return chosen

    def _layout(self, vp: _ViewPlan, text: str) -> _Layout:
        layout = vp.layouts.get(text)
        if layout is not None:
            return layout
        meta = ViewMeta.from_json(text)
        dtypes = [dtype_from_str(d) for d in meta.dtypes]
        where = {c: i for i, c in enumerate(meta.columns)}
        index, out_dtypes, served = [], [], meta.view_version in vp.versions
        for _name, row in vp.features:
            i = where.get(row["column_name"])
            if i is None or dtype_name(dtypes[i]) != row["dtype"]:
                served = False
                index.append(-1)
                out_dtypes.append(pl.Null())
            else:
                index.append(i + 2)
                out_dtypes.append(dtypes[i])
        layout = _Layout(meta, served, index, out_dtypes)
        if len(vp.layouts) > 16:
            vp.layouts.clear()
        vp.layouts[text] = layout
        return layout

    @staticmethod
    def _adopt_keys(vp: _ViewPlan, meta: ViewMeta) -> bool:
        """Use ``meta``'s key dtypes to encode request keys; True when they changed."""
        if meta.key_dtypes == vp.key_dtype_names and meta.keys == vp.keys:
            return False
        dtypes = tuple(dtype_from_str(d) for d in meta.key_dtypes)
        vp.key_dtypes, vp.key_dtype_names = dtypes, meta.key_dtypes
        vp.normalizers = [key_normalizer(k, d, vp.name)
                          for k, d in zip(meta.keys, dtypes, strict=True)]
        return True

    # ------------------------------------------------------------------ lookups
    def lookup(self, entities: EntityRows, features: str | Sequence[str], *,
               tier: str | None = None, as_of: datetime | None = None,
               ttl: timedelta | str | int | float | None = None, inclusive: bool = False,
               allow_unverified: bool = False, allow_artifact: bool = True) -> OnlineResult:
        """Feature values for every entity row at one request time; see the module docstring.

        With ``allow_artifact=False`` a lookup the online store cannot fully answer raises
        ``NeedsArtifact`` before reading any artifact (the server then retries it off its
        event loop).
        """
        plan = self._plan(features)
        chosen_tier = self._tier(plan, tier)
        columns, n = entity_columns(entities)
        t = moment_us(as_of)
        ttl_us = None if ttl is None else parse_duration(ttl, what="ttl") // timedelta(microseconds=1)
        for vp in plan.views:
            missing = [k for k in vp.keys if k not in columns]
            if missing:
                raise DataError(f"entity rows: key column(s) {', '.join(missing)} of view "
                                f"{vp.name!r} are missing; found {', '.join(columns) or 'none'}")
        encoded = {vp.name: self._encode(vp, columns, n) for vp in plan.views}
        snapshot = self.backend.read(
            [(vp.name, [k for k in dict.fromkeys(encoded[vp.name]) if k is not None])
             for vp in plan.views])
        if any(self._adopt_keys(vp, self._layout(vp, text).meta)
               for vp in plan.views if (text := snapshot[vp.name][0]) is not None):
            # A new version with other key dtypes was published since: encode again, reread.
            encoded = {vp.name: self._encode(vp, columns, n) for vp in plan.views}
            snapshot = self.backend.read(
                [(vp.name, [k for k in dict.fromkeys(encoded[vp.name]) if k is not None])
                 for vp in plan.views])
        result = OnlineResult(n, plan.names, {}, {}, {}, {}, {}, {}, {}, chosen_tier, t)
        for vp in plan.views:
            text, payloads = snapshot[vp.name]
            layout = self._layout(vp, text) if text is not None else None
            if is_window(vp.features[0][1]):  # anchored at t: never a published latest value
                if not allow_artifact:
                    raise NeedsArtifact(vp.name)
                art = self._artifact(vp, None)
                self._check_verified(vp, bool(art["verified"]), allow_unverified)
                serve_online(self.store, art, vp.features, vp.keys, columns, t,
                             inclusive=inclusive, ttl_us=ttl_us, result=result)
                result.served_from[vp.name] = "artifact"
            elif layout is not None and layout.served:
                self._check_verified(vp, layout.meta.verified, allow_unverified)
                pending = self._from_payloads(vp, layout, encoded[vp.name], payloads, t,
                                              inclusive, ttl_us, result)
                if pending and not allow_artifact:
                    raise NeedsArtifact(vp.name)
                if pending:
                    self._from_artifact(vp, layout, pending, columns, t, inclusive, ttl_us,
                                        allow_unverified, result)
                result.served_from[vp.name] = "online+artifact" if pending else "online"
            else:
                if not allow_artifact:
                    raise NeedsArtifact(vp.name)
                self._from_artifact(vp, layout, list(range(n)), columns, t, inclusive, ttl_us,
                                    allow_unverified, result)
                result.served_from[vp.name] = "artifact"
        return result

    def _encode(self, vp: _ViewPlan, columns: dict[str, list[Any]], n: int) -> list[str | None]:
        if vp.key_dtypes is None:
            return [None] * n  # never published: nothing to look up online
        values = [norm(columns[k]) for norm, k in zip(vp.normalizers, vp.keys, strict=True)]
        if len(values) == 1:
            return [None if v is None else encode_key((v,)) for v in values[0]]
        return [None if any(v is None for v in row) else encode_key(row) for row in zip(*values, strict=True)]

    @staticmethod
    def _check_verified(vp: _ViewPlan, verified: bool, allow_unverified: bool) -> None:
        if not verified and not allow_unverified:
            names = [n for n, _ in vp.features]
            exc = LeakageError(
                f"view {vp.name!r} was materialized without causality verification; refusing "
                f"to serve {', '.join(names)} (re-materialize it with verification, or allow "
                "unverified views explicitly)")
            exc.features = names  # type: ignore[attr-defined]
            raise exc

    @staticmethod
    def _from_payloads(vp: _ViewPlan, layout: _Layout, encoded: list[str | None],
                       payloads: dict[str, str], t: int, inclusive: bool, ttl_us: int | None,
                       result: OnlineResult) -> list[int]:
        """Fill the view's features from stored payloads; returns rows needing the artifact."""
        names = [name for name, _ in vp.features]
        n = len(encoded)
        values: list[list[Any]] = [[None] * n for _ in names]
        statuses: list[list[str]] = [[NOT_FOUND] * n for _ in names]
        avail: list[int | None] = [None] * n
        event: list[int | None] = [None] * n
        pending: list[int] = []
        decoded: dict[str, Any] = {}
        stale_before = None if ttl_us is None else t - ttl_us
        for i, key in enumerate(encoded):
            if key is None:
                continue
            rows = decoded.get(key)
            if rows is None:
                text = payloads.get(key)
                if text is None:
                    continue  # the entity has no row in the published artifact
                rows = decoded[key] = json.loads(text)
            chosen = None
            for j in range(len(rows) - 1, 0, -1):
                a = rows[j][0]
                if a < t or (inclusive and a == t):
                    chosen = rows[j]
                    break
            if chosen is None:
                if not rows[0]:
                    pending.append(i)  # older rows live only in the artifact
                continue
            avail[i], event[i] = chosen[0], chosen[1]
            stale = stale_before is not None and chosen[0] < stale_before
            for f, idx in enumerate(layout.index):
                if stale:
                    statuses[f][i] = OUTSIDE_MAX_AGE
                else:
                    v = chosen[idx]
                    values[f][i] = v
                    statuses[f][i] = PRESENT if v is not None else NULL_VALUE
        for f, name in enumerate(names):
            result.values[name] = values[f]
            result.statuses[name] = statuses[f]
            result.available_at[name] = list(avail)
            result.event_timestamp[name] = list(event)
            result.dtypes[name] = layout.dtypes[f]
            result.views[name] = vp.name
        return pending

    # ------------------------------------------------------------------ the artifact path
    def _artifact(self, vp: _ViewPlan, layout: _Layout | None) -> dict[str, Any]:
        """The published artifact (so both paths answer from the same data), else the newest
        artifact of a version computing the requested features."""
        from featurestore.artifacts import verify_artifact
        from featurestore.errors import ArtifactError

        wanted = layout.meta.artifact_id if layout is not None and layout.served else None
        art = vp.artifacts.get(wanted) if wanted is not None else vp.artifacts.get(-1)
        if art is None:
            arts = self.store.registry.artifacts(kind="view", name=vp.name)
            by_id = {a["id"]: a for a in arts}
            art = by_id.get(wanted) if wanted is not None else None
            if art is not None:
                try:
                    verify_artifact(self.store.root, art, checksum=False)
                except ArtifactError:
                    art = None  # removed since it was published: the newest one answers
            if art is None:
                art = self._newest_artifact(vp, arts)
            vp.artifacts[wanted if wanted is not None else -1] = art
        return art

    @staticmethod
    def _newest_artifact(vp: _ViewPlan, arts: list[dict[str, Any]]) -> dict[str, Any]:
        for art in reversed(arts):
            if art["object_version"] in vp.versions and all(
                    row["column_name"] in art["schema"]
                    and dtype_name(dtype_from_str(art["schema"][row["column_name"]])) == row["dtype"]
                    for _, row in vp.features):
                return art
        name = vp.features[0][0]
        raise NotFoundError(f"feature {name!r} (view {vp.name!r}) has no materialized artifact; "
                            f"run `featurestore materialize {vp.name}`")

    def _from_artifact(self, vp: _ViewPlan, layout: _Layout | None, rows: list[int],
                       columns: dict[str, list[Any]], t: int, inclusive: bool,
                       ttl_us: int | None, allow_unverified: bool, result: OnlineResult) -> None:
        from featurestore.artifacts import reading_artifacts, verify_artifact
        from featurestore.reference import artifact_frame, reference
        from featurestore.retrieval import ViewFrame, point_in_time_join

        art = self._artifact(vp, layout)
        self._check_verified(vp, bool(art["verified"]), allow_unverified)
        # Checksum first (remembered per user, so a stat after the first read): no byte of a
        # damaged file may reach the Parquet reader, which can abort the process on garbage.
        path = verify_artifact(self.store.root, art)
        schema = {k: dtype_from_str(v) for k, v in art["schema"].items()}
        names = [name for name, _ in vp.features]
        n = result.n
        if names[0] not in result.values:
            for name, row in vp.features:
                result.values[name] = [None] * n
                result.statuses[name] = [NOT_FOUND] * n
                result.available_at[name] = [None] * n
                result.event_timestamp[name] = [None] * n
                result.dtypes[name] = schema[row["column_name"]]
                result.views[name] = vp.name
        if not rows:
            return
        query: dict[str, pl.Series] = {}
        for k in vp.keys:
            values = [columns[k][i] for i in rows]
            query[k] = pl.Series(k, values, strict=False)
        frame = pl.DataFrame(query).with_columns(
            pl.lit(t).cast(pl.Datetime("us", "UTC")).alias(_CUTOFF))
        scan = artifact_frame(self.store.root, art)
        key_filter = pl.lit(True)
        for k in vp.keys:
            wanted = frame[k].drop_nulls().unique().cast(schema[k], strict=False).drop_nulls()
            key_filter = key_filter & pl.col(k).is_in(wanted.to_list())  # prunes row groups
        mapping = {name: row["column_name"] for name, row in vp.features}
        mapping[_EVENT] = EVENT_TIMESTAMP
        ref = reference(self.store.root, art)
        if ref is not None:  # search the index; fetch only the matched rows' values
            ref = dataclasses.replace(ref, index=ref.index.filter(key_filter))
        with reading_artifacts([path]):
            joined = point_in_time_join(
                frame, [ViewFrame(vp.name, scan.filter(key_filter), vp.keys, mapping,
                                  presorted=True, reference=ref)],
                cutoff=_CUTOFF, inclusive=inclusive, with_availability=True)
        avail = joined.select(pl.col(f"{_EVENT}__available_at").dt.epoch("us")).to_series().to_list()
        event = joined.select(pl.col(_EVENT).dt.epoch("us")).to_series().to_list()
        stale_before = None if ttl_us is None else t - ttl_us
        for name, row in vp.features:
            stored = joined.select(to_storage(pl.col(name), schema[row["column_name"]])).to_series()
            vals, stats = result.values[name], result.statuses[name]
            for j, (i, v) in enumerate(zip(rows, stored.to_list(), strict=True)):
                a = avail[j]
                result.available_at[name][i], result.event_timestamp[name][i] = a, event[j]
                if a is None:
                    stats[i], vals[i] = NOT_FOUND, None
                elif stale_before is not None and a < stale_before:
                    stats[i], vals[i] = OUTSIDE_MAX_AGE, None
                else:
                    stats[i], vals[i] = (PRESENT if v is not None else NULL_VALUE), v
