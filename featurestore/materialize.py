"""Running a view's transform over its source snapshot and registering the artifact.

Order of work for one view: read the source snapshot, run the transform, check the transform
contract, verify causality, sort for retrieval, write the artifact atomically, record it.
Nothing is registered unless every check passed (``verify=False`` is recorded, and warned about).
A bucketed snapshot's transform views do the same bucket by bucket (``materialize_buckets``).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from featurestore.cutplan import DEFAULT_SAMPLES
from featurestore.definitions import canonical_json
from featurestore.errors import ArtifactError, DataError, NotFoundError, PluginError
from featurestore.incremental import growth, new_output_rows, recompute_input
from featurestore.layout import sort_for_retrieval
from featurestore.readers import reads_artifacts
from featurestore.reference import reference_of
from featurestore.snapshotview import column_view_rows
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP, Transform, TransformContext

if TYPE_CHECKING:
    from featurestore.store import FeatureStore, Progress


@dataclass
class MaterializeResult:
    view: str
    status: str  # "materialized" | "up-to-date"
    artifact: dict[str, Any]
    seconds_transform: float = 0.0
    seconds_verify: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        a = self.artifact
        return {"view": self.view, "status": self.status, "artifact_id": a["id"],
                "path": a["path"], "rows": a["row_count"], "verified": a["verified"],
                "verification": a["verification"],
                "verification_report": json.loads(a.get("verification_report") or "{}"),
                "seconds_transform": round(self.seconds_transform, 3),
                "seconds_verify": round(self.seconds_verify, 3)}


def materialize(store: FeatureStore, views: Sequence[str] | None = None, *, verify: bool = True,
                samples: int = DEFAULT_SAMPLES, budget: float | None = None, force: bool = False,
                progress: Progress | None = None, strict: bool = False,
                engine: str | None = None) -> list[MaterializeResult]:
    """Materialize ``views`` (all registered views by default) on ``engine``
    (``featurestore.engines``; default ``FEATURESTORE_ENGINE``, else ``polars``).

    Every engine keeps the contract of ``materialize_polars`` below and writes the same
    artifacts and registry rows.
    """
    from featurestore.engines import get_engine

    return get_engine(engine).materialize(  # type: ignore[no-any-return]
        store, views, verify=verify, samples=samples, budget=budget, force=force,
        progress=progress, strict=strict)


@reads_artifacts  # gc never removes a snapshot or seed this run is reading
def materialize_polars(store: FeatureStore, views: Sequence[str] | None = None, *,
                       verify: bool = True, samples: int = DEFAULT_SAMPLES,
                       budget: float | None = None, force: bool = False,
                       progress: Progress | None = None,
                       strict: bool = False) -> list[MaterializeResult]:
    """Materialize ``views`` (all registered views by default) with Polars; see the module
    docstring.

    ``samples`` and ``budget`` size causality verification (``featurestore.verification``):
    every entity's (or group's) first cut, at least ``samples`` more cuts, more up to ``budget``
    rows recomputed (None: the default budget). A view whose verification compared nothing is
    recorded with ``verified`` False.

    Views whose transform no installed plugin registers are skipped with a
    ``MissingTransformWarning`` when ``views`` is not given; with ``strict``, or when such a
    view is named, that is a ``PluginError``.
    """
    import time

    from featurestore.lifecycle import refuse_deleted, runnable_views

    registered = store.registry.latest("view")
    # A source's column view with no columns left has nothing to materialize.
    names = list(views) if views else sorted(
        n for n, v in registered.items() if v["transform"] is not None or v["params"]["columns"])
    for n in names:
        if n not in registered:
            refuse_deleted(store, "view", n)
            raise NotFoundError(f"view {n!r} is not registered; registered views: "
                                f"{', '.join(sorted(registered)) or '(none)'}")
    names = runnable_views(store, registered, names, explicit=bool(views), strict=strict)
    results = []
    plans: dict[tuple[Any, ...], Any] = {}  # cut plans by input snapshot: views share them
    for i, name in enumerate(names):
        if progress:
            progress(f"materialize {name}", i, len(names))
        view = registered[name]
        src_row, snapshot_path, fresh_rows = store.fresh_snapshot(view["source"])
        src_ref = reference_of(src_row)  # an index: its schema lists the source's columns
        snapshot_schema = (dict(src_row["schema"]) if src_ref is not None
                           else dict(fresh_rows.schema) if fresh_rows is not None
                           else dict(pl.read_parquet_schema(snapshot_path)))
        keys = store.registry.get("entity", store.registry.get("source", view["source"])["entity"])["join_keys"]
        transform, plugin_name, plugin_version = view_transform(view)
        fingerprint = view_fingerprint(src_row, view, plugin_version, verify)
        latest = store.registry.latest_artifact("view", name)
        if up_to_date(store, latest, fingerprint, force=force):
            results.append(MaterializeResult(name, "up-to-date", latest))
            continue
        t0 = time.perf_counter()
        base = [*keys, EVENT_TIMESTAMP, AVAILABLE_AT]
        verification = "columns read as is"
        params = view["params"]
        verified, report_json = True, json.dumps({"verified": True, "mode": "columns"})
        if transform is None:
            missing = [c for c in view["params"]["columns"] if c not in snapshot_schema]
            if missing:
                raise DataError(f"view {name!r}: source {view['source']!r} no longer has "
                                f"column(s) {', '.join(missing)}; re-apply the definitions")
            # The snapshot's own files when already in retrieval order, else a sorted copy.
            out: Any = column_view_rows(store.root, src_row, keys,
                                        [*base, *view["params"]["columns"]], fresh_rows)
            t1 = t2 = time.perf_counter()
            if src_ref is not None:  # the view is an index too, of the same source files
                params = {**view["params"], "reference": src_ref}
        elif src_row.get("parts"):
            # Bucketed: bucket by bucket, written as a bucketed view (materialize_buckets).
            from featurestore.materialize_buckets import materialize_bucketed

            results.append(materialize_bucketed(
                store, name, view, src_row, keys, transform, plugin_name, plugin_version,
                latest, fingerprint, verify=verify, samples=samples, budget=budget, force=force))
            continue
        else:
            if src_ref is not None:  # ingest snapshots a source a transform reads as a copy
                raise ArtifactError(f"view {name!r}: snapshot {src_row['id']} of source "
                                    f"{view['source']!r} is an index (snapshot_layout "
                                    "reference), which transforms do not read; run "
                                    "`featurestore ingest --force` and materialize again")
            fresh_rows = None  # the transform scans the file: only the columns it reads load
            ctx = TransformContext(keys=tuple(keys))
            params = view["params"]
            previous = None if force else _incremental_base(store, latest, view, src_row,
                                                              plugin_version, verify)
            grown = snapshot = None
            if previous is not None:
                snapshot = pl.read_parquet(snapshot_path)
                grown = growth(previous[0], snapshot, keys)
            if grown is not None and snapshot is not None:
                subset = recompute_input(snapshot, keys, grown, transform.lookback(params))
                computed = run_checked(transform, params, subset, ctx, name, plugin_name)
                fresh = new_output_rows(computed, keys, grown)
                scope = f"incremental: {fresh.height} new of {snapshot.height} rows, " \
                        f"{subset.height} recomputed; "
                verify_input, verify_output = subset, computed
            else:
                # Scanned, not read: the transform's projection decides which columns load.
                computed = run_checked(
                    transform, params, pl.scan_parquet(snapshot_path), ctx, name, plugin_name,
                    input_schema=snapshot_schema,
                    ids=pl.read_parquet(snapshot_path, columns=base))
                fresh, scope = computed, ""
                verify_input, verify_output = None, computed
            t1 = time.perf_counter()
            validate_hooks(name, view["transform"], params, verify_output)
            if verify:
                from featurestore.verification import verify_causality

                plan = None
                if verify_input is None:  # the whole snapshot: its plan serves every view of it
                    verify_input = pl.read_parquet(snapshot_path)
                    plan = _shared_plan(plans, verify_input, ctx, transform, params, src_row,
                                        samples, budget)
                report = verify_causality(transform, params, verify_input, ctx, samples=samples,
                                          budget=budget, view=name, plugin=plugin_name or "",
                                          output=verify_output, plan=plan)
                verification = f"{scope}{report}"
                verified, report_json = report.verified, json.dumps(report.as_dict())
                if not report.verified:
                    warnings.warn(f"view {name!r}: {report}; recorded on the artifact",
                                  stacklevel=2)
            else:
                warnings.warn(f"view {name!r}: causality verification skipped (--no-verify); "
                              "recorded on the artifact", stacklevel=2)
                verification = f"{scope}NOT VERIFIED: causality verification skipped by the user"
                verified, report_json = False, json.dumps({"verified": False, "mode": "skipped"})
            t2 = time.perf_counter()
            fresh = fresh.select(*base, *[c for c in fresh.columns if c not in base])
            out = pl.concat([previous[1], fresh]) if grown is not None and previous else fresh
        if isinstance(out, pl.DataFrame):
            out = sort_for_retrieval(out, keys)
        row = store._record_artifact(
            "view", name, view["version"], out, fingerprint=fingerprint,
            transform=view["transform"], plugin=plugin_name, plugin_version=plugin_version,
            params=params, verified=verified, verification=verification,
            input_artifact_id=src_row["id"], verification_report=report_json)
        status = "incremental" if verification.startswith("incremental") else "materialized"
        results.append(MaterializeResult(name, status, row, t1 - t0, t2 - t1))
        # Drop this view's frames now: otherwise they stay alive while the next view computes.
        out = fresh = computed = verify_input = verify_output = snapshot = subset = None
        fresh_rows = None
    if progress:
        progress("materialize", len(names), len(names))
    return results


def view_transform(view: dict[str, Any]) -> tuple[Any, str | None, str | None]:
    """The view's transform and the (plugin, version) that registers it; Nones for a view
    that reads columns as is."""
    if view["transform"] is None:
        return None, None, None
    from featurestore.plugins import get_transform

    registered = get_transform(view["transform"])
    return registered.transform, registered.plugin, registered.version


def up_to_date(store: FeatureStore, latest: dict[str, Any] | None, fingerprint: str, *,
               force: bool = False) -> bool:
    """Whether the view's newest artifact ``latest`` was built from these inputs and its file
    is intact, so materializing again would change nothing (a damaged file is warned about)."""
    return bool(not force and latest and latest["input_fingerprint"] == fingerprint
                and store.intact(latest, rebuilding="rebuilding the view"))


def view_fingerprint(src_row: dict[str, Any], view: dict[str, Any], plugin_version: str | None,
                     verify: bool) -> str:
    """What a view artifact was computed from; the same on every engine (their results are)."""
    return "sha256:" + hashlib.sha256(canonical_json({
        "source_checksum": src_row["checksum"], "view_version": view["version"],
        "transform": view["transform"], "plugin_version": plugin_version,
        "params": view["params"], "verify": verify}).encode()).hexdigest()


def run_checked(transform: Transform, params: Any, frame: pl.DataFrame | pl.LazyFrame,
                ctx: TransformContext, view: str, plugin: str | None, *,
                input_schema: dict[str, pl.DataType] | None = None,
                ids: pl.DataFrame | None = None) -> pl.DataFrame:
    """Run a transform and check its contract; a plugin's crash is reported with its name.

    ``ids`` (the input's key and time columns) with ``input_schema`` lets the check run
    without the whole input in memory when ``frame`` is a lazy scan.
    """
    from featurestore.contract import check_contract, describe, run_transform

    result = run_transform(transform, params, frame, ctx, describe(transform, plugin or "", view))
    # check_contract collects the output once and returns it: the transform runs only once.
    return check_contract(transform, params, frame if ids is None else ids, result, ctx,
                          plugin=plugin or "", view=view, input_schema=input_schema)


def _shared_plan(plans: dict[tuple[Any, ...], Any], frame: pl.DataFrame, ctx: TransformContext,
                 transform: Transform, params: Any, src_row: dict[str, Any], samples: int,
                 budget: float | None) -> Any:
    """The cut plan for a source snapshot, made once per materialization and scope: it depends
    on the rows only, so views of the same source share it. None when it cannot be made here
    (verification then reports the problem itself)."""
    from featurestore.cutplan import plan_cuts

    try:
        groups = tuple(transform.group_columns(params)) if transform.scope == "group" else ()
        key = (src_row["id"], ctx, transform.scope, groups, samples, budget)
        if key not in plans:
            plans.clear()  # one snapshot's plan at a time: plans hold row numbers
            plans[key] = plan_cuts(frame, ctx, scope=transform.scope, group_columns=groups,
                                   budget=budget, samples=samples)
        return plans[key]
    except Exception:
        return None


def validate_hooks(view: str, transform: str, params: Any, frame: pl.DataFrame) -> None:
    """Plugins' ``validate_materialized`` verdicts on ``frame``: a ``PluginError`` listing
    their problems, if any."""
    from featurestore.plugins import call_validate_materialized

    problems = call_validate_materialized(view, transform, params, frame)
    if problems:
        raise PluginError(f"view {view!r}: materialized frame rejected: {'; '.join(problems)}")


def _incremental_base(store: FeatureStore, latest: dict[str, Any] | None, view: dict[str, Any],
                      src_row: dict[str, Any], plugin_version: str | None,
                      verify: bool) -> tuple[pl.DataFrame, pl.DataFrame] | None:
    """The previous source snapshot and view output, when they can seed an incremental run."""
    from featurestore.artifacts import verify_artifact
    from featurestore.plugins import get_transform

    if get_transform(view["transform"]).transform.scope != "entity":
        return None  # other entities' new rows can change a group's old rows: recompute all
    if latest and latest.get("parts"):
        return None  # the view was bucketed (its source shrank since): recompute in full
    if (latest is None or latest.get("input_artifact_id") is None
            or latest["object_version"] != view["version"]
            or latest["plugin_version"] != plugin_version
            or latest["params"] != view["params"]
            or (verify and not latest["verified"])
            or latest["input_artifact_id"] == src_row["id"]):
        return None
    try:
        old_src = store.artifact(latest["input_artifact_id"])
        if old_src.get("parts") or reference_of(old_src) is not None:
            return None
        old_snapshot = pl.read_parquet(verify_artifact(store.root, old_src))
        old_out = pl.read_parquet(verify_artifact(store.root, latest))
    except (ArtifactError, NotFoundError):
        return None  # the seed is gone or damaged: recompute in full
    return old_snapshot, old_out
