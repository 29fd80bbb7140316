"""Point-in-time retrieval through the registry: training frames and online lookups.

This module resolves feature references, enforces the tier contract before any data is read,
finds each feature's materialized artifact and hands sorted artifacts to the join engine in
``featurestore.retrieval``.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import polars as pl

from featurestore.artifacts import artifact_files, reading_artifacts, verify_artifact
from featurestore.definitions import dtype_name
from featurestore.dtypes import dtype_from_str
from featurestore.errors import (
    DataError,
    DataWarning,
    DefinitionError,
    LeakageError,
    NotFoundError,
)
from featurestore.reference import artifact_frame, reference
from featurestore.retrieval import ViewFrame, audit, availability_column
from featurestore.retrieval_buckets import point_in_time_join_lazy_parts
from featurestore.tiers import TierOrder, parse_duration
from featurestore.windowserve import is_window, window_request, window_values

if TYPE_CHECKING:
    from featurestore.registry import Registry

FeatureRefs = str | Sequence[str]


class ServingStore(Protocol):
    """What serving reads from a store (``FeatureStore`` is one). A protocol, so this module
    never imports ``featurestore.store``, which imports it."""

    @property
    def root(self) -> Path: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def tiers(self) -> TierOrder: ...

    def resolve_features(self, features: str | Sequence[str]) -> list[dict[str, Any]]: ...


def _artifact_for(store: ServingStore, feature: dict[str, Any],
                  cache: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]
                  ) -> dict[str, Any]:
    """The newest artifact of the view version that computes this feature version.

    ``cache`` holds each view's versions and artifacts for the duration of one request.
    """
    view_name = feature["view"]
    if view_name not in cache:
        try:
            versions = store.registry.history("view", view_name)
        except NotFoundError:
            raise NotFoundError(f"feature {feature['name']!r}: its view {view_name!r} is not "
                                "registered") from None
        cache[view_name] = (versions, store.registry.artifacts(kind="view", name=view_name))
    versions, artifacts = cache[view_name]
    # A deleted version's artifacts are never served, even after the view is registered again.
    matching = {v["version"] for v in versions if v.get("deleted_at") is None
                and v["source"] == feature["source"] and v["transform"] == feature["transform"]
                and (v["transform"] is None or v["params"] == feature["params"])}
    column = feature["column_name"]
    # The view version alone is not enough: a source whose column changed dtype gives a new
    # feature version under the same column view, so the artifact's dtype must match too.
    candidates = [a for a in artifacts
                  if a["object_version"] in matching and column in a["schema"]
                  and dtype_name(dtype_from_str(
                      a["schema"][column], what=f"artifact {a['id']} column {column!r}"))
                  == feature["dtype"]]
    if not candidates:
        current = versions[-1]
        if current["version"] not in matching:
            # Materialize builds only the view's current version: saying "run it" would not help.
            raise NotFoundError(
                f"feature {feature['name']!r} v{feature['version']} reads an earlier definition "
                f"of view {view_name!r} (now v{current['version']}) that was never materialized; "
                f"apply the feature's definition again so it follows the view")
        raise NotFoundError(
            f"feature {feature['name']!r} (view {view_name!r}) has no materialized artifact; "
            f"run `featurestore materialize {view_name}`")
    return candidates[-1]


def output_names(features: Sequence[dict[str, Any]]) -> list[str]:
    """The output column of each resolved feature row, in order.

    A feature's name, or ``name@version`` for every version of a feature the request holds
    more than one version of (``finish@1``, ``finish@2``): each output column is one
    (feature, version), never two values under one name.
    """
    counts = Counter(f["name"] for f in features)
    return [f"{f['name']}@{f['version']}" if counts[f["name"]] > 1 else f["name"] for f in features]


def served_artifacts(store: ServingStore, features: list[dict[str, Any]]
                     ) -> list[tuple[dict[str, Any], dict[str, str], str]]:
    """``(artifact, {output column: artifact column}, entity)`` per artifact a request reads."""
    groups: dict[int, tuple[dict[str, Any], dict[str, str], str]] = {}
    cache: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for feat, out in zip(features, output_names(features), strict=True):
        art = _artifact_for(store, feat, cache)
        groups.setdefault(art["id"], (art, {}, feat["entity"]))[1][out] = feat["column_name"]
    return list(groups.values())


def unverified_views(artifacts: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The artifacts among ``artifacts`` recorded without causality verification."""
    return [a for a in artifacts if not a["verified"]]


def check_verified(artifacts: Sequence[dict[str, Any]], allow_unverified: bool) -> None:
    """Refuse artifacts recorded ``verified=False`` (``--no-verify``) unless explicitly allowed."""
    bad = unverified_views(artifacts)
    if bad and not allow_unverified:
        detail = "; ".join(f"view {a['name']!r} (artifact {a['id']}: {a['verification']})"
                           for a in bad)
        names = " ".join(dict.fromkeys(a["name"] for a in bad))
        raise LeakageError(
            f"refusing to serve views materialized without causality verification "
            f"(--no-verify): {detail}; re-run `featurestore materialize {names}` without "
            "--no-verify, or pass allow_unverified=True (--allow-unverified) to accept them")


def view_frames(store: ServingStore, features: list[dict[str, Any]], *,
                verify_checksums: bool = False, allow_unverified: bool = False,
                paths: list[Path] | None = None,
                groups: list[tuple[dict[str, Any], dict[str, str], str]] | None = None,
                parts: list[list[Path]] | None = None) -> list[ViewFrame]:
    """One ``ViewFrame`` per artifact the requested features live in, in request order.

    Raises ``LeakageError`` for an artifact materialized without causality verification unless
    ``allow_unverified``. Every artifact is checked against its recorded checksum first (a
    per-user cache makes repeat reads cost a ``stat``; ``verify_checksums`` rehashes
    regardless). ``paths``, when given, receives each artifact's file, for error messages;
    ``parts`` each artifact's list of files (one, or a bucketed artifact's parts).
    ``groups`` (from ``served_artifacts``) replaces resolving ``features`` again.
    """
    if groups is None:
        groups = served_artifacts(store, features)
    check_verified([art for art, _, _ in groups], allow_unverified)
    frames = []
    for art, mapping, entity_name in groups:
        path = verify_artifact(store.root, art, trust_cache=not verify_checksums)
        if paths is not None:
            paths.append(path)
        entity = store.registry.get("entity", entity_name)
        files = artifact_files(store.root, art)
        if parts is not None:
            parts.append(files)
        # Only the columns the artifact serves: a column view's file may be its source
        # snapshot's, with more (``featurestore.snapshotview``).
        frames.append(ViewFrame(name=art["name"], frame=artifact_frame(store.root, art),
                                keys=tuple(entity["join_keys"]), features=mapping, presorted=True,
                                reference=reference(store.root, art)))
    return frames


def _ttl(ttl: timedelta | str | int | float | None) -> timedelta | None:
    return None if ttl is None else parse_duration(ttl, what="ttl")


def _check_query(query: pl.DataFrame | pl.LazyFrame, frames: list[ViewFrame], cutoff: str) -> None:
    schema = query.collect_schema() if isinstance(query, pl.LazyFrame) else query.schema
    if cutoff not in schema:
        raise DataError(f"entity frame: cutoff column {cutoff!r} is missing; found "
                        f"{', '.join(schema.names())} (choose it with cutoff=...)")
    for vf in frames:
        missing = [k for k in vf.keys if k not in schema]
        if missing:
            raise DataError(f"entity frame: key column(s) {', '.join(missing)} of view "
                            f"{vf.name!r} are missing; found {', '.join(schema.names())}")


def feature_tiers(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int], str]:
    """What the tier guard checks: the tier of every requested (feature, version)."""
    return {(r["name"], r["version"]): r["tier"] for r in rows}


def _check_nulls(query: pl.DataFrame, frames: list[ViewFrame], cutoff: str, strict: bool) -> None:
    """Rows with a null key or cutoff can match nothing: say how many (refuse them if strict)."""
    keys = list(dict.fromkeys(k for vf in frames for k in vf.matched_query_keys))
    counts = query.select(*[pl.col(k).null_count() for k in keys],
                          pl.col(cutoff).null_count().alias("__cutoff"),
                          pl.any_horizontal(*[pl.col(k).is_null() for k in keys],
                                            pl.col(cutoff).is_null()).sum().alias("__rows")).row(0)
    if not counts[-1]:
        return
    parts = [f"{n} null {k!r}" for k, n in zip(keys, counts, strict=False) if n]
    if counts[-2]:
        parts.append(f"{counts[-2]} null cutoff {cutoff!r}")
    what = (f"entity frame: {counts[-1]} of {query.height} row(s) have a null key or cutoff "
            f"({', '.join(parts)})")
    if strict:
        raise DataError(f"{what}; refused (strict)")
    warnings.warn(f"{what}; they match nothing and get null features (strict refuses them)",
                  DataWarning, stacklevel=4)


def get_historical_features(store: ServingStore, entity_df: pl.DataFrame | pl.LazyFrame,
                            features: FeatureRefs, *, tier: str, inclusive: bool = False,
                            ttl: timedelta | str | None = None, cutoff: str = "event_timestamp",
                            cutoff_timezone: str | None = None, with_availability: bool = False,
                            lazy: bool = False, verify_checksums: bool = False,
                            allow_unverified: bool = False, strict: bool = False,
                            engine: str | None = None) -> pl.DataFrame | pl.LazyFrame:
    from featurestore.engines import engine_name, get_engine

    runner = get_engine(engine)  # an unknown engine fails before any work
    if lazy and engine_name(engine) != "polars":
        raise DefinitionError(f"a lazy frame is a Polars plan: engine {engine_name(engine)!r} "
                              "cannot build one; use get_historical_features")
    rows = store.resolve_features(features)
    store.tiers.check_usable(tier, feature_tiers(rows))
    groups = served_artifacts(store, rows)
    check_verified([art for art, _, _ in groups], allow_unverified)
    paths: list[Path] = []
    parts: list[list[Path]] = []
    frames = view_frames(store, rows, verify_checksums=verify_checksums, paths=paths,
                         groups=[g for g in groups if not is_window(g[0])],
                         allow_unverified=allow_unverified, parts=parts)
    # Windows anchored at the cutoff are computed from the view's input snapshot.
    windows = [window_request(store, art, mapping,
                              store.registry.get("entity", entity)["join_keys"],
                              verify_checksums=verify_checksums)
               for art, mapping, entity in groups if is_window(art)]
    paths += [w.path for w in windows]
    checked = frames + [ViewFrame(w.view, pl.LazyFrame(), w.keys, {}) for w in windows]
    _check_query(entity_df, checked, cutoff)
    if not lazy or windows:
        # The eager engine collects the query anyway; a lazy plan is not run twice for a count.
        if isinstance(entity_df, pl.LazyFrame):
            entity_df = entity_df.collect()
        _check_nulls(entity_df, checked, cutoff, strict)
    options = {"cutoff": cutoff, "inclusive": inclusive, "ttl": _ttl(ttl),
               "cutoff_timezone": cutoff_timezone, "with_availability": with_availability}
    with reading_artifacts(paths):
        if lazy and not windows:  # a lazy plan joins a bucketed view's parts one by one
            result = point_in_time_join_lazy_parts(entity_df, frames, parts,
                                                   **options)  # type: ignore[arg-type]
        else:  # the engine; Polars joins bucketed views part by part
            result = runner.point_in_time_join(entity_df, frames, parts, **options)
        if not windows:
            return result  # type: ignore[no-any-return]
        assert isinstance(entity_df, pl.DataFrame) and isinstance(result, pl.DataFrame)
        added = [s for w in windows for s in window_values(
            w, entity_df, cutoff=cutoff, inclusive=inclusive, ttl=_ttl(ttl),
            cutoff_timezone=cutoff_timezone, with_availability=with_availability)]
    result = result.with_columns(added)
    order = list(entity_df.columns)
    for _, mapping, _ in groups:  # each view's features, then their availability
        order += list(mapping)
        order += [availability_column(o) for o in mapping] if with_availability else []
    result = result.select(order)
    return result.lazy() if lazy else result


def missing_tier_error(tiers: TierOrder) -> DefinitionError:
    """What an online request without a tier, in a store without a default tier, is told."""
    return DefinitionError(
        "online features need the tier of the prediction point: pass tier=... (--tier on the "
        "command line), or set a store default with `featurestore config default_tier TIER` "
        f"(FeatureStore.set_setting('default_tier', TIER)); tiers in order: "
        f"{', '.join(tiers.names)}")


def audit_frame(frame: pl.DataFrame, *, cutoff: str = "event_timestamp", features: Sequence[str],
                inclusive: bool = False, cutoff_timezone: str | None = None) -> Any:
    return audit(frame, cutoff, list(features), inclusive=inclusive,
                 cutoff_timezone=cutoff_timezone)
