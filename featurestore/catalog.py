"""Looking registered objects up: listing by kind, finding a name, versions, feature references.

Reads only; ``FeatureStore.list`` / ``find`` / ``history`` / ``resolve_features`` are these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from featurestore import schema
from featurestore.errors import DefinitionError, DeletedError, NotFoundError
from featurestore.registry import Registry
from featurestore.tiers import TierOrder


def list_objects(registry: Registry, tiers: TierOrder, kind: str, *, tier: str | None = None,
                 entity: str | None = None, tag: str | None = None) -> list[dict[str, Any]]:
    """``FeatureStore.list``: newest versions of every ``kind`` object, filtered."""
    if kind == "artifact":
        rows = registry.artifacts()
    elif kind == "tier":
        return [{"name": t.name, "position": t.position, "lag_seconds": t.lag.total_seconds(),
                 "forbidden_before": list(t.forbidden_before)} for t in tiers]
    else:
        if kind not in schema.VERSIONED:
            raise DefinitionError(f"cannot list {kind!r}; choose entity, source, view, feature, "
                                  "feature_set, artifact or tier")
        rows = list(registry.latest(kind).values())
    if tier:
        tiers.get(tier)
        rows = [r for r in rows if r.get("tier") == tier]
    if entity:
        rows = [r for r in rows if r.get("entity") == entity or
                (kind == "entity" and r["name"] == entity)]
    if tag:
        rows = [r for r in rows if tag in (r.get("tags") or [])]
    return rows


def find(registry: Registry, name: str) -> tuple[str, dict[str, Any]]:
    """``FeatureStore.find``: ``(kind, newest row)`` of ``name``; ``DeletedError`` when deleted."""
    deleted: DeletedError | None = None
    for kind in ("feature", "view", "source", "entity", "feature_set"):
        try:
            return kind, registry.get(kind, name)
        except DeletedError as exc:
            deleted = deleted or exc
        except NotFoundError:
            continue
    if deleted is not None:
        raise deleted
    raise NotFoundError(f"nothing named {name!r} is registered")


def history(registry: Registry, name: str) -> tuple[str, list[dict[str, Any]]]:
    """``FeatureStore.history``: every version of ``name``, oldest first, deleted ones too."""
    try:
        kind, _ = find(registry, name)
    except DeletedError:
        with registry.read() as conn:
            kind = next(k for k in ("feature", "view", "source", "entity", "feature_set")
                        if name in Registry.latest_rows(conn, k, deleted=True))
    return kind, registry.history(kind, name)


def resolve_features(registry: Registry, features: str | Sequence[str]) -> list[dict[str, Any]]:
    """``FeatureStore.resolve_features``: feature rows for names, ``name@version``,
    ``view:name`` or a feature set's name."""
    gone_set: DeletedError | None = None
    if isinstance(features, str):
        try:
            fs = registry.get("feature_set", features)
        except NotFoundError as exc:
            gone_set = exc if isinstance(exc, DeletedError) else None
            features = [features]
        else:
            return [registry.get("feature", r["name"], r["version"]) for r in fs["features"]]
    rows = []
    seen = set()
    for ref in features:
        view, _, rest = ref.rpartition(":")
        name, _, version = rest.partition("@")
        try:
            row = registry.get("feature", name, int(version) if version else None)
        except ValueError:
            raise DefinitionError(f"feature reference {ref!r}: version must be a number") from None
        except DeletedError:
            raise
        except NotFoundError:
            if gone_set is not None:
                raise gone_set from None
            if version:
                _missing_version(registry, name, int(version))
            known = sorted(registry.latest("feature"))
            hint = f"; registered features: {', '.join(known[:20])}" if known else ""
            raise NotFoundError(f"feature {name!r} is not registered{hint}") from None
        if view and row["view"] != view:
            raise NotFoundError(f"feature {name!r} belongs to view {row['view']!r}, not {view!r}")
        # Two versions of one feature may be requested together (columns name@version);
        # the same version twice is a mistake.
        if (name, row["version"]) in seen:
            raise DefinitionError(f"feature {name!r} version {row['version']} is requested twice")
        seen.add((name, row["version"]))
        rows.append(row)
    return rows


def _missing_version(registry: Registry, name: str, version: int) -> None:
    """Raise ``NotFoundError`` naming the versions ``name`` has, when it has any."""
    try:
        versions = [r["version"] for r in registry.history("feature", name)]
    except NotFoundError:
        return
    raise NotFoundError(f"feature {name!r} has no version {version}; registered versions: "
                        f"{', '.join(map(str, versions))} (newest {versions[-1]})")
