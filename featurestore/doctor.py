"""``featurestore doctor``: every artifact against the registry, the registry against itself.

What it reports:

* problems: an artifact file missing, of the wrong size, failing its checksum (always rehashed
  here, never taken from the cache) or schema; registry rows that refer to nothing; version
  gaps; a registry schema that is not the newest;
* orphans: temporary files of interrupted writes (``.fs-tmp-*``), and files named like
  artifacts (``data/<kind>s/<name>/v<version>-<stamp>-<id>.parquet``) that no registry row
  names (a write killed between its rename and its commit). Nothing else under ``data/`` is
  ever an orphan: a source file kept there is the user's;
* unverified views: views whose newest artifact was materialized without causality
  verification (retrieval refuses them unless explicitly allowed).

What ``fix`` does, and only that: it deletes the temporary files, which are provably its own
(nothing else is named so, and no live writer holds one: doctor takes the writers' lock
exclusively), and *moves* unregistered artifact-named files to ``ROOT/quarantine/`` under
their relative path, never deleting them: a file no row names may belong to a registry doctor
was not given. Registered data is never touched. The store was opened through its identity
(``featurestore.identity``), so the registry is the store's own; on top of that, ``fix``
refuses outright when the registry names no artifact at all but ``data/`` holds artifact
files, the signature of a wrong or lost registry.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from featurestore import schema
from featurestore.artifacts import (
    confine,
    remove_artifact_path,
    temp_files,
    verify_artifact,
    writers_lock,
)
from featurestore.checksums import hashing_once
from featurestore.errors import ArtifactError, NotFoundError, StoreMismatchError
from featurestore.migrations import LATEST, current_version
from featurestore.plan import absolute_source_path

if TYPE_CHECKING:
    from featurestore.store import FeatureStore

# How FeatureStore._artifact_relpath names files.
ARTIFACT_NAME = re.compile(r"^v\d+-\d{8}T\d{6}-[0-9a-f]{8}\.parquet$")
QUARANTINE = "quarantine"


def run_doctor(store: FeatureStore, *, fix: bool = False, checksums: bool = True) -> dict[str, Any]:
    """Check the store; with ``fix`` clean up orphans as the module docstring says.

    Returns ``{"ok", "problems", "orphans", "removed", "quarantined", "unverified",
    "artifacts_checked"}``: ``removed`` the temporary files deleted, ``quarantined`` one
    ``{"path", "to"}`` per file moved. ``ok`` is true when there is no problem and no orphan is
    left; unverified views are listed, not counted against it.
    """
    if fix:
        store._require_writable("fix the store")
    rows = store.registry.artifacts()
    problems: list[str] = []
    with hashing_once():  # a file two rows share (a column view's) is hashed once
        for row in rows:
            try:
                verify_artifact(store.root, row, checksum=checksums, trust_cache=False)
            except ArtifactError as exc:
                problems.append(str(exc))
    problems += _reference_problems(store)
    problems += _registry_consistency(store, rows)
    unverified = _unverified_views(store)
    # No write is between file and row while doctor holds this.
    with writers_lock(store.root, exclusive=True, create=fix):
        # Re-read the rows: an artifact registered since the check above is not an orphan.
        now = store.registry.artifacts()
        temps, unregistered = _orphans(store, now)
        removed: list[str] = []
        quarantined: list[dict[str, str]] = []
        if fix:
            if unregistered and not now:
                raise StoreMismatchError(
                    f"doctor --fix refused: registry {store.registry.location} names no artifact "
                    f"but {store.root / 'data'} holds {len(unregistered)} artifact files; this "
                    "registry looks wrong or lost. Nothing was changed")
            for p in temps:
                remove_artifact_path(p)
                removed.append(str(p))
            for p in unregistered:
                quarantined.append({"path": str(p), "to": str(_quarantine(store.root, p))})
    orphans = [str(p) for p in [*temps, *unregistered]]
    return {"ok": not problems and (not orphans or fix), "problems": problems,
            "orphans": orphans, "removed": removed, "quarantined": quarantined,
            "unverified": unverified, "artifacts_checked": len(rows)}


def _orphans(store: FeatureStore, rows: Sequence[dict[str, Any]]) -> tuple[list[Path], list[Path]]:
    """(temporary files, unregistered artifact-named files) under ``data/``."""
    registered = set()
    for r in rows:
        with contextlib.suppress(ArtifactError):  # a bad path: reported as a problem already
            registered.add(confine(store.root, r["path"]))
    sources = {Path(absolute_source_path(s["path"], store.root)).resolve()
               for s in store.registry.latest("source").values()}
    temps = temp_files(store.root)
    data_dir = store.root / "data"
    unregistered = []
    if data_dir.exists():
        unregistered = [p for p in sorted(data_dir.rglob("*.parquet"))
                        if ARTIFACT_NAME.match(p.name) and p.resolve() not in registered
                        and p.resolve() not in sources and p not in temps]
    return temps, unregistered


def _quarantine(root: Path, path: Path) -> Path:
    """Move ``path`` to ``root/quarantine/<its path under root>`` (never over another file)."""
    target = root / QUARANTINE / path.relative_to(root)
    target.parent.mkdir(parents=True, exist_ok=True)
    candidate, n = target, 0
    while candidate.exists():
        n += 1
        candidate = target.with_name(f"{target.name}.{n}")
    try:
        os.rename(path, candidate)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        shutil.move(str(path), str(candidate))  # data/ on another file system: copy, then remove
    return candidate


def _reference_problems(store: FeatureStore) -> list[str]:
    problems: list[str] = []
    latest = {k: store.registry.latest(k) for k in schema.VERSIONED}
    tier_names = set(store.tiers.names)
    for name, src in latest["source"].items():
        if src["entity"] not in latest["entity"]:
            problems.append(f"source {name!r} refers to missing entity {src['entity']!r}")
        if src["tier"] not in tier_names:
            problems.append(f"source {name!r} has unknown tier {src['tier']!r}")
    for name, view in latest["view"].items():
        if view["source"] not in latest["source"]:
            problems.append(f"view {name!r} refers to missing source {view['source']!r}")
    for name, feat in latest["feature"].items():
        if feat["view"] not in latest["view"]:
            problems.append(f"feature {name!r} refers to missing view {feat['view']!r}")
        if feat["tier"] not in tier_names:
            problems.append(f"feature {name!r} has unknown tier {feat['tier']!r}")
    for name, fs in latest["feature_set"].items():
        for ref in fs["features"]:
            try:
                store.registry.get("feature", ref["name"], ref["version"])
            except NotFoundError:
                problems.append(f"feature set {name!r} pins missing feature "
                                f"{ref['name']}@{ref['version']}")
    return problems


def _registry_consistency(store: FeatureStore, artifacts: Sequence[dict[str, Any]]) -> list[str]:
    """The registry's own invariants: schema version, version numbering, artifact owners."""
    problems = []
    with store.registry.read() as conn:
        version = current_version(conn)
        if version != LATEST:
            problems.append(f"registry schema version is {version}, expected {LATEST}")
        versions: dict[tuple[str, str], list[int]] = {}
        for kind, table in schema.VERSIONED.items():
            for name, v in conn.execute(select(table.c.name, table.c.version)):
                versions.setdefault((kind, name), []).append(v)
    for (kind, name), found in sorted(versions.items()):
        if sorted(found) != list(range(1, len(found) + 1)):
            problems.append(f"{kind} {name!r} has versions {sorted(found)}, expected 1..n")
    for row in artifacts:
        if row["kind"] in schema.VERSIONED and \
                row["object_version"] not in versions.get((row["kind"], row["name"]), []):
            problems.append(f"artifact {row['id']} ({row['path']}) belongs to {row['kind']} "
                            f"{row['name']!r} v{row['object_version']}, which is not registered")
    return problems


def _unverified_views(store: FeatureStore) -> list[dict[str, Any]]:
    """Views whose newest artifact was written without causality verification."""
    out = []
    for name in sorted(store.registry.latest("view")):
        art = store.registry.latest_artifact("view", name)
        if art is not None and not art["verified"]:
            out.append({"view": name, "artifact_id": art["id"], "path": art["path"],
                        "verification": art["verification"]})
    return out
