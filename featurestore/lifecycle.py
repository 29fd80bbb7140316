"""Object lifecycle: deleting registered objects, and collecting the artifact files nobody needs.

**Delete.** Deleting an object marks ``deleted_at`` on every one of its versions; nothing is
erased, so ``show NAME --history`` still shows it. A deleted object is gone from ``list``,
retrieval, ``materialize`` and plans; declaring it again adds a version after its old ones.
An object others depend on is not deleted unless ``cascade`` deletes them too:

- an entity is used by its sources (and their features);
- a source by its views and the features read from it (its own column view goes with it);
- a view by its features;
- a feature by the feature sets that pin any version of it.

One delete is one registry transaction: everything it lists is deleted, or nothing. Deleting a
feature read straight from a source also drops its column from the source's column view (a new
view version), exactly as ``apply`` would. Artifacts stay until ``gc``.

**Garbage collection.** Every forced materialize or changed input adds an artifact and none is
ever overwritten, so files pile up. ``gc`` removes every artifact file that nothing needs,
keeping:

- the newest artifact of the current version of every live source and view (what
  ``materialize`` and ``ingest`` build on);
- the artifact retrieval serves for every live feature (its newest version) and for every
  feature version a live feature set pins;
- the source snapshot each kept view artifact was computed from (provenance, and the seed of
  incremental materialization);
- with ``keep=N``, the N newest artifacts of every live source and view;
- with ``older_than``, every artifact younger than that.

A removed artifact's registry row is deleted, not marked: a row names a file that exists, so
``doctor`` and retrieval never meet a row without its file. The rows go in one transaction, then
the files are unlinked once every reader that could still hold one is done (see
``featurestore.readers``), all under the writers' lock so ``doctor`` never takes a file whose row
is gone for an orphan. A gc interrupted between the two steps leaves unregistered files that
``doctor --fix`` removes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select
from sqlalchemy import delete as sql_delete

from featurestore import schema
from featurestore.artifacts import _fsync_dir, confine, remove_artifact_path, writers_lock
from featurestore.definitions import canonical_json
from featurestore.errors import (
    ArtifactError,
    DefinitionError,
    DependentsError,
    FeatureStoreError,
    NotFoundError,
)
from featurestore.plan import KIND_ORDER, column_view_row
from featurestore.planmodel import KIND_ALIASES
from featurestore.readers import gc_mutex, grace_period
from featurestore.registry import Registry, decode_artifact, decode_row, deleted_error, utcnow
from featurestore.tiers import parse_duration

if TYPE_CHECKING:
    from featurestore.store import FeatureStore

# Spellings accepted for a kind on the command line and in the API.
_LABEL = {"entity": "entity", "source": "source", "view": "view", "feature": "feature",
          "feature_set": "feature set"}
# Dependents are deleted before what they depend on (and listed in that order).
_DELETE_ORDER = ("feature_set", "feature", "view", "source", "entity")


def kind_of(kind: str) -> str:
    """The registry kind for a user's spelling (``feature-set`` -> ``feature_set``)."""
    try:
        return KIND_ALIASES[kind]
    except KeyError:
        raise DefinitionError(f"cannot delete a {kind!r}; choose one of entity, source, view, "
                              "feature, feature-set") from None


# --------------------------------------------------------------------------- delete


@dataclass
class DeletedObject:
    """One object a delete removes, and why it goes."""

    kind: str
    name: str
    version: int  # its newest version
    reason: str  # "requested", or what it depends on

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "version": self.version,
                "reason": self.reason}

    def __str__(self) -> str:
        return f"{_LABEL[self.kind]} {self.name!r} v{self.version}"


@dataclass
class DeleteResult:
    """What ``FeatureStore.delete`` deleted (or, with ``dry_run``, would delete)."""

    deleted: list[DeletedObject]
    # Column views that lose the columns of deleted features: name, version, columns.
    column_views: list[dict[str, Any]] = field(default_factory=list)
    deleted_at: datetime | None = None
    dry_run: bool = False
    _view_rows: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "deleted_at": self.deleted_at,
                "deleted": [d.as_dict() for d in self.deleted],
                "column_views": self.column_views}


# Who refers to an object of each kind: (their kind, the field naming it, how to say so).
_REFERENCES = {
    "entity": (("source", "entity", "belongs to {}"), ("feature", "entity", "belongs to {}")),
    "source": (("view", "source", "reads {}"), ("feature", "source", "reads {}")),
    "view": (("feature", "view", "is computed by {}"),),
}


def _direct_dependents(live: dict[str, dict[str, dict[str, Any]]], kind: str,
                       name: str) -> Iterable[tuple[str, str, str]]:
    """(kind, name, reason) of the live objects that refer to ``kind name`` directly."""
    label = f"{_LABEL[kind]} {name!r}"
    for other, column, reason in _REFERENCES.get(kind, ()):
        for n, row in live[other].items():
            if row[column] == name:
                yield other, n, reason.format(label)
    if kind == "feature":
        for s, row in live["feature_set"].items():
            pins = [p for p in row["features"] if p["name"] == name]
            if pins:
                yield "feature_set", s, f"pins feature {name!r} v{pins[0]['version']}"


def plan_delete(conn: Connection, kind: str, name: str, *, cascade: bool) -> DeleteResult:
    """What deleting ``kind name`` takes with it, read through ``conn``; raises when refused."""
    kind = kind_of(kind)
    live = {k: Registry.latest_rows(conn, k) for k in KIND_ORDER}
    if name not in live[kind]:
        gone = Registry.latest_rows(conn, kind, deleted=True).get(name)
        if gone is not None:
            raise deleted_error(f"{kind} {name!r}", gone["deleted_at"])
        known = ", ".join(sorted(live[kind])[:20]) or "(none)"
        raise NotFoundError(f"{kind} {name!r} is not registered; registered: {known}")
    target = DeletedObject(kind, name, live[kind][name]["version"], "requested")
    found = {(kind, name): target}
    # A source's own column view (named after it, no transform) is part of the source.
    own = live["view"].get(name) if kind == "source" else None
    if own is not None and own["transform"] is None and own["source"] == name:
        found[("view", name)] = DeletedObject("view", name, own["version"],
                                              f"is the column view of source {name!r}")
    parts = set(found)
    queue = list(found)
    while queue:
        k, n = queue.pop(0)
        for dk, dn, why in _direct_dependents(live, k, n):
            if (dk, dn) not in found:
                found[(dk, dn)] = DeletedObject(dk, dn, live[dk][dn]["version"], why)
                queue.append((dk, dn))
    dependents = _ordered(d for key, d in found.items() if key not in parts)
    if dependents and not cascade:
        listed = "; ".join(f"{d} {d.reason}" for d in dependents)
        raise DependentsError(f"cannot delete {target}: {len(dependents)} registered object(s) "
                              f"depend on it: {listed}; delete them first, or pass --cascade "
                              "(cascade=True) to delete them too", list(dependents))
    deleted = _ordered(found.values())
    # Column features that go: their source's column view (if it stays) loses their columns.
    gone_keys = {(d.kind, d.name) for d in deleted}
    remaining = [r for f, r in live["feature"].items() if ("feature", f) not in gone_keys]
    result = DeleteResult(deleted)
    for d in deleted:
        feat = live["feature"].get(d.name) if d.kind == "feature" else None
        if feat is None or feat["transform"] is not None or ("view", feat["view"]) in gone_keys:
            continue
        view = live["view"].get(feat["view"])
        if view is None or view["transform"] is not None or view["name"] in result._view_rows:
            continue
        row = column_view_row(view["name"], remaining)
        if canonical_json(row["params"]) != canonical_json(view["params"]):
            result._view_rows[view["name"]] = {**row, "version": view["version"] + 1}
            result.column_views.append({"name": view["name"], "version": view["version"] + 1,
                                        "previous_version": view["version"],
                                        "columns": row["params"]["columns"]})
    return result


def refuse_deleted(store: FeatureStore, kind: str, name: str) -> None:
    """Raise ``DeletedError`` (saying when) if ``kind name`` is a deleted object."""
    with store.registry.read() as conn:
        gone = Registry.latest_rows(conn, kind, deleted=True).get(name)
    if gone is not None:
        raise deleted_error(f"{kind} {name!r}", gone["deleted_at"])


def _ordered(objs: Iterable[DeletedObject]) -> list[DeletedObject]:
    rank = {k: i for i, k in enumerate(_DELETE_ORDER)}
    return sorted(objs, key=lambda d: (rank[d.kind], d.name))


def delete(store: FeatureStore, kind: str, name: str, *, cascade: bool = False,
           dry_run: bool = False, expect: set[tuple[str, str]] | None = None) -> DeleteResult:
    """Delete an object (and, with ``cascade``, its dependents) in one transaction.

    ``expect``: the ``(kind, name)`` pairs a user confirmed; if the registry changed since and
    the delete would take other objects, nothing is deleted.
    """
    if dry_run:
        with store.registry.read() as conn:
            result = plan_delete(conn, kind, name, cascade=cascade)
        result.dry_run = True
        return result

    def txn(conn: Connection) -> DeleteResult:
        result = plan_delete(conn, kind, name, cascade=cascade)
        if expect is not None and {(d.kind, d.name) for d in result.deleted} != expect:
            raise FeatureStoreError("the registry changed since the objects to delete were "
                                    "listed; nothing was deleted, run the command again")
        now = utcnow()
        for d in result.deleted:
            Registry.mark_deleted(conn, d.kind, d.name, now)
        for view_name, row in result._view_rows.items():
            conn.execute(schema.views.insert().values(
                name=view_name, created_at=now, **{**row, "params": canonical_json(row["params"])}))
        result.deleted_at = now
        return result

    return store.registry.write(txn)


# --------------------------------------------------------------------------- gc


@dataclass
class GcResult:
    """What ``gc`` removed (or, with ``dry_run``, would remove) and what it kept, and why."""

    removed: list[dict[str, Any]]
    kept: list[dict[str, Any]]
    dry_run: bool
    missing: list[str] = field(default_factory=list)  # removed rows whose file was already gone

    @property
    def bytes_freed(self) -> int:
        return sum(r.get("size_bytes") or 0 for r in self.removed)

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "removed": self.removed, "kept": self.kept,
                "bytes_freed": self.bytes_freed, "missing": self.missing}


_SUMMARY = ("id", "kind", "name", "object_version", "path", "size_bytes", "created_at")


def _summary(row: dict[str, Any], reasons: list[str] | None = None) -> dict[str, Any]:
    out = {k: row.get(k) for k in _SUMMARY}
    if reasons is not None:
        out["reasons"] = reasons
    return out


def decide_gc(conn: Connection, store: FeatureStore, *, keep: int = 0,
              older_than: timedelta | None = None, now: datetime | None = None) -> GcResult:
    """Which artifacts gc removes and which it keeps (with reasons), read through ``conn``."""
    from featurestore.serving import _artifact_for

    now = now or utcnow()
    artifacts = [decode_artifact(dict(r)) for r in
                 conn.execute(select(schema.artifacts).order_by(schema.artifacts.c.id)).mappings()]
    live = {k: Registry.latest_rows(conn, k) for k in KIND_ORDER}
    per_object: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for a in artifacts:
        per_object.setdefault((a["kind"], a["name"]), []).append(a)
    reasons: dict[int, list[str]] = {}

    def hold(artifact: dict[str, Any] | None, why: str) -> None:
        if artifact is not None:
            reasons.setdefault(artifact["id"], []).append(why)

    for kind in ("source", "view"):
        for name, obj in live[kind].items():
            own = [a for a in per_object.get((kind, name), [])
                   if a["object_version"] == obj["version"]]
            hold(own[-1] if own else None, f"newest of current {kind} v{obj['version']}")
            if keep:
                for a in per_object.get((kind, name), [])[-keep:]:
                    hold(a, f"one of the {keep} newest (--keep)")
    # What retrieval serves, decided by retrieval's own rule over every view's versions.
    cache: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for row in conn.execute(select(schema.views).order_by(schema.views.c.version)).mappings():
        cache.setdefault(row["name"], ([], per_object.get(("view", row["name"]), [])))[0].append(
            decode_row("view", dict(row)))
    served: list[tuple[dict[str, Any], str]] = [
        (f, f"serves feature {n!r} v{f['version']}") for n, f in live["feature"].items()]
    for set_name, fs in live["feature_set"].items():
        for pin in fs["features"]:
            with contextlib.suppress(NotFoundError):
                feat = store.registry.get("feature", pin["name"], pin["version"], conn=conn)
                served.append((feat, f"pinned by feature set {set_name!r} "
                                     f"({pin['name']} v{pin['version']})"))
    for feat, why in served:
        if feat["view"] not in cache:
            continue  # no version of its view: nothing to serve it from
        with contextlib.suppress(NotFoundError):
            hold(_artifact_for(store, feat, cache), why)
    if older_than is not None:
        for a in artifacts:
            if a["created_at"] > now - older_than:
                hold(a, "younger than --older-than")
    by_id = {a["id"]: a for a in artifacts}
    for a in artifacts:
        if a["id"] in reasons and a.get("input_artifact_id") in by_id:
            hold(by_id[a["input_artifact_id"]], f"input of kept artifact {a['id']}")
    removed = [_summary(a) for a in artifacts if a["id"] not in reasons]
    kept = [_summary(a, reasons[a["id"]]) for a in artifacts if a["id"] in reasons]
    return GcResult(removed, kept, dry_run=True)


def gc(store: FeatureStore, *, keep: int = 0, older_than: timedelta | str | None = None,
       dry_run: bool = False, on_wait: Callable[[], None] | None = None) -> GcResult:
    """Remove the artifacts nothing needs (see the module docstring); rows first, then files.

    Waits for the readers that may hold a removed file (``on_wait`` is called if it has to).
    Never call it while this thread is inside ``readers.reading`` of the same store.
    """
    if keep < 0:
        raise DefinitionError(f"--keep must be 0 or more, got {keep}")
    age = None if older_than is None else parse_duration(older_than, what="--older-than")
    if dry_run:
        with store.registry.read() as conn:
            result = decide_gc(conn, store, keep=keep, older_than=age)
        # Say now what a real run would find already gone, as the real run reports it.
        for row in result.removed:
            try:
                gone = not confine(store.root, row["path"]).exists()
            except ArtifactError:
                gone = True
            if gone:
                result.missing.append(row["path"])
        return result

    def txn(conn: Connection) -> GcResult:
        result = decide_gc(conn, store, keep=keep, older_than=age)
        ids = [r["id"] for r in result.removed]
        for start in range(0, len(ids), 500):
            conn.execute(sql_delete(schema.artifacts)
                         .where(schema.artifacts.c.id.in_(ids[start:start + 500])))
        return result

    with gc_mutex(store.root), writers_lock(store.root):
        result = store.registry.write(txn)
        result.dry_run = False
        if result.removed:
            with grace_period(store.root, on_wait=on_wait):
                dirs = set()
                for row in result.removed:
                    try:
                        path = confine(store.root, row["path"])
                    except ArtifactError:
                        result.missing.append(row["path"])  # never a file of ours to remove
                        continue
                    if not path.exists():
                        result.missing.append(row["path"])
                    remove_artifact_path(path)
                    dirs.add(path.parent)
                for d in dirs:
                    _fsync_dir(d)
    return result


# --------------------------------------------------------------------------- missing plugins


class MissingTransformWarning(UserWarning):
    """``materialize`` skipped views whose transform no installed plugin registers."""


def missing_transform(store: FeatureStore, view: dict[str, Any]) -> str | None:
    """Why a view's transform cannot run now, naming the plugin recorded on the view's last
    artifact; None when it can run (or the view reads columns as is)."""
    from featurestore.plugins import ENV_VAR, get_transforms

    if view["transform"] is None or view["transform"] in get_transforms():
        return None
    last = store.registry.latest_artifact("view", view["name"])
    if last is not None and last.get("plugin"):
        version = f" {last['plugin_version']}" if last.get("plugin_version") else ""
        by = f"plugin {last['plugin']!r}{version}, recorded on its last artifact,"
    else:
        by = "the plugin that registered it (the view was never materialized)"
    return (f"transform {view['transform']!r} is missing: {by} is uninstalled, broken or not "
            f"selected by {ENV_VAR}")


def runnable_views(store: FeatureStore, views: dict[str, dict[str, Any]], names: list[str], *,
                   explicit: bool, strict: bool) -> list[str]:
    """``names`` without the views whose transform is missing, warned about by plugin.

    A view named explicitly, or any with ``strict``, is a ``PluginError`` instead.
    """
    from featurestore.errors import PluginError

    missing = {n: why for n in names if (why := missing_transform(store, views[n])) is not None}
    if not missing:
        return names
    groups: dict[str, list[str]] = {}
    for n, why in missing.items():
        groups.setdefault(why, []).append(n)
    text = "; ".join(f"view(s) {', '.join(map(repr, vs))}: {why}" for why, vs in groups.items())
    if explicit or strict:
        raise PluginError(f"cannot materialize {text}; reinstall the plugin, or delete the "
                          "view (`featurestore delete view NAME`)")
    import warnings

    warnings.warn(f"skipped {text}; reinstall the plugin, or delete the view(s); --strict "
                  "makes this an error", MissingTransformWarning, stacklevel=3)
    return [n for n in names if n not in missing]


def missing_plugin_note(store: FeatureStore, kind: str, row: dict[str, Any]) -> str | None:
    """For ``show``: why a live view or feature cannot be (re)computed now, else None."""
    if row.get("deleted_at") is not None or kind not in ("view", "feature"):
        return None
    if kind == "feature":
        if row["transform"] is None:
            return None
        try:
            row = store.registry.get("view", row["view"])
        except NotFoundError:
            return None
    return missing_transform(store, row)
