"""Point-in-time retrieval through the registry: training frames and online lookups.

This module resolves feature references, enforces the tier contract before any data is read,
finds each feature's materialized artifact and hands sorted artifacts to the join engine in
``featurestore.retrieval``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from featurestore.artifacts import reading_artifacts, verify_artifact
from featurestore.definitions import dtype_name
from featurestore.errors import DataError, NotFoundError
from featurestore.plan import dtype_from_str
from featurestore.retrieval import ViewFrame, audit, point_in_time_join, point_in_time_join_lazy
from featurestore.tiers import parse_duration
from featurestore.transforms import AVAILABLE_AT

if TYPE_CHECKING:
    from featurestore.store import FeatureStore

FeatureRefs = str | Sequence[str]


def _artifact_for(store: FeatureStore, feature: dict[str, Any],
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
    matching = {v["version"] for v in versions
                if v["source"] == feature["source"] and v["transform"] == feature["transform"]
                and (v["transform"] is None or v["params"] == feature["params"])}
    column = feature["column_name"]
    # The view version alone is not enough: a source whose column changed dtype gives a new
    # feature version under the same column view, so the artifact's dtype must match too.
    candidates = [a for a in artifacts
                  if a["object_version"] in matching and column in a["schema"]
                  and dtype_name(dtype_from_str(a["schema"][column])) == feature["dtype"]]
    if not candidates:
        raise NotFoundError(
            f"feature {feature['name']!r} (view {view_name!r}) has no materialized artifact; "
            f"run `featurestore materialize {view_name}`")
    return candidates[-1]


def view_frames(store: FeatureStore, features: list[dict[str, Any]], *,
                verify_checksums: bool = False, paths: list[Path] | None = None) -> list[ViewFrame]:
    """One ``ViewFrame`` per artifact the requested features live in, in request order.

    Every artifact is checked against its recorded checksum first (a per-user cache makes
    repeat reads cost a ``stat``; ``verify_checksums`` rehashes regardless). ``paths``, when
    given, receives each artifact's file, for error messages.
    """
    groups: dict[int, tuple[dict[str, Any], dict[str, str], str]] = {}
    cache: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for feat in features:
        art = _artifact_for(store, feat, cache)
        groups.setdefault(art["id"], (art, {}, feat["entity"]))[1][feat["name"]] = feat["column_name"]
    frames = []
    for art, mapping, entity_name in groups.values():
        path = verify_artifact(store.root, art, trust_cache=not verify_checksums)
        if paths is not None:
            paths.append(path)
        entity = store.registry.get("entity", entity_name)
        frames.append(ViewFrame(name=art["name"], frame=pl.scan_parquet(path),
                                keys=tuple(entity["join_keys"]), features=mapping, presorted=True))
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


def get_historical_features(store: FeatureStore, entity_df: pl.DataFrame | pl.LazyFrame,
                            features: FeatureRefs, *, tier: str, inclusive: bool = False,
                            ttl: timedelta | str | None = None, cutoff: str = "event_timestamp",
                            cutoff_timezone: str | None = None, with_availability: bool = False,
                            lazy: bool = False, verify_checksums: bool = False
                            ) -> pl.DataFrame | pl.LazyFrame:
    rows = store.resolve_features(features)
    store.tiers.check_usable(tier, {r["name"]: r["tier"] for r in rows})
    paths: list[Path] = []
    frames = view_frames(store, rows, verify_checksums=verify_checksums, paths=paths)
    _check_query(entity_df, frames, cutoff)
    join = point_in_time_join_lazy if lazy else point_in_time_join
    with reading_artifacts(paths):
        return join(entity_df, frames, cutoff=cutoff, inclusive=inclusive, ttl=_ttl(ttl),
                    cutoff_timezone=cutoff_timezone, with_availability=with_availability)


def get_online_features(store: FeatureStore,
                        keys: pl.DataFrame | Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any]],
                        features: FeatureRefs, *, as_of: datetime | None = None,
                        tier: str | None = None, inclusive: bool = False) -> pl.DataFrame:
    rows = store.resolve_features(features)
    tiers = store.tiers
    store.tiers.check_usable(tier or tiers.names[-1], {r["name"]: r["tier"] for r in rows})
    query = keys if isinstance(keys, pl.DataFrame) else pl.DataFrame(keys)
    moment = as_of or datetime.now(UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    query = query.with_columns(pl.lit(moment).dt.convert_time_zone("UTC")
                               .dt.cast_time_unit("us").alias("__as_of"))
    paths: list[Path] = []
    frames = view_frames(store, rows, paths=paths)
    _check_query(query, frames, "__as_of")
    with reading_artifacts(paths):
        if query.height <= ONLINE_FAST_KEYS:
            return _online_few_keys(query.drop("__as_of"), frames, moment, inclusive)
        return _online_many_keys(query, frames, inclusive)


def _online_many_keys(query: pl.DataFrame, frames: list[ViewFrame],
                      inclusive: bool) -> pl.DataFrame:
    # Only the requested keys' rows are read: the artifacts are sorted by key, so Parquet
    # statistics let the scan skip every other row group.
    narrowed = []
    for vf in frames:
        key_filter = pl.lit(True)
        for k in vf.keys:
            key_filter = key_filter & pl.col(k).is_in(query[k].unique().implode())
        narrowed.append(ViewFrame(vf.name, vf.frame.filter(key_filter), vf.keys, vf.features,
                                  vf.query_keys, vf.presorted))
    out = point_in_time_join(query, narrowed, cutoff="__as_of", inclusive=inclusive)
    return out.drop("__as_of")


ONLINE_FAST_KEYS = 1000


def _online_few_keys(query: pl.DataFrame, frames: list[ViewFrame], moment: datetime,
                     inclusive: bool) -> pl.DataFrame:
    """The serving path for a few keys: one filtered scan per view, newest row per key.

    Same rule as the join engine, which ``tests/test_store_retrieval.py`` checks: in a view
    artifact the rows of a key are ordered by (available_at, event_timestamp, ingestion), so
    among the rows available before ``moment`` the last one in file order is the winner.
    """
    out = query
    for vf in frames:
        keys = list(vf.keys)
        schema = vf.frame.collect_schema()
        key_filter = pl.lit(True)
        for k in keys:
            wanted = query[k].drop_nulls().unique().cast(schema[k], strict=False).drop_nulls()
            # A plain list, not an imploded Series: only then does Polars prune row groups
            # by their statistics (10 ms instead of 110 ms for one key at 10M rows).
            key_filter = key_filter & pl.col(k).is_in(wanted.to_list())
        cutoff = moment.astimezone(UTC)
        available = pl.col(AVAILABLE_AT) <= cutoff if inclusive else pl.col(AVAILABLE_AT) < cutoff
        columns = list(dict.fromkeys(vf.features.values()))
        # In-memory engine: its filter keeps file order, which decides ties.
        rows = (vf.frame.filter(key_filter & available).select(*keys, *columns)
                .collect(engine="in-memory"))
        latest = rows.group_by(keys, maintain_order=True).agg(pl.col(c).last() for c in columns)
        latest = latest.select(*[pl.col(k).cast(query.schema[k], strict=False) for k in keys],
                               *[pl.col(col).alias(name) for name, col in vf.features.items()])
        out = out.join(latest, on=keys, how="left", maintain_order="left")
    return out


def audit_frame(frame: pl.DataFrame, *, cutoff: str = "event_timestamp", features: Sequence[str],
                inclusive: bool = False, cutoff_timezone: str | None = None) -> Any:
    return audit(frame, cutoff, list(features), inclusive=inclusive,
                 cutoff_timezone=cutoff_timezone)
