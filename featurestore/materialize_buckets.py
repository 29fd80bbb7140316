"""Transform views of bucketed snapshots, one bucket in memory at a time.

A bucketed snapshot (``featurestore.buckets``) holds every entity in exactly one part, sorted
like a whole snapshot. So:

- An **entity-scope** transform runs part by part: each call gets one part's rows (whole
  entities, in snapshot order). An output row depends only on its entity's rows, so the rows
  are those of one run over the whole snapshot. The view's part i holds the snapshot part i's
  entities, sorted for retrieval.
- A **group-scope** transform reads every entity of its group, and those sit in any part. The
  snapshot is re-split once, streaming, by a hash of the transform's group columns
  (``transform.group_columns(params)``) into as many *group buckets* (temporary files under
  ``data/``); each group bucket (whole groups, sorted by keys and event time, as a one-file
  snapshot is) is transformed on its own; its output is split by entity hash into temporary
  files per view part, which are then read, sorted and written one part at a time. A transform
  without group columns has one group: it runs once, on everything.

Every call's output is checked against the transform contract and verified for causality on that
call's input (``verify_causality``). Each entity's (or group's) first cut lies in its bucket, so
every one is still checked; the budget and the samples are shared out among buckets by their
share of the snapshot's rows (samples rounded up, so never fewer than asked in all). The reports
are combined into the artifact's (``verifyreport.combine_reports``); the view is recorded as
verified only when every bucket with rows proved something.

Incremental (entity scope only): when the view's latest artifact was computed part by part from
an earlier snapshot with as many parts, a part whose snapshot part is unchanged (same checksum)
is carried over as it is (``artifacts.ReusedPart``: a hard link, so no bytes are copied and
removing the older artifact later leaves the file in place); a part whose snapshot part only
grew is computed like the one-file incremental path (``featurestore.incremental``), within that
part, unless more than half of its rows would be recomputed anyway (a transform with an unbounded
look-back, every entity grown); any other part is recomputed. Group-scope views are always recomputed in full: new rows of
one entity can change its group's old rows.

Memory: one bucket's input and output, and verification reruns bounded by the bucket's budget.
Disk (group scope): the temporary files, about twice the snapshot, removed on the way out.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from featurestore.artifacts import ReusedPart, artifact_files, artifact_parts, verify_artifact
from featurestore.buckets import BUCKET, ROW, bucket_expr, read_bucket, split, workdir_for
from featurestore.cutplan import default_budget
from featurestore.errors import ArtifactError, NotFoundError
from featurestore.incremental import growth, new_output_rows, recompute_input
from featurestore.layout import sort_for_retrieval
from featurestore.materialize import MaterializeResult, run_checked, validate_hooks
from featurestore.packedsort import sort_in_place
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP, Transform, TransformContext
from featurestore.verifyreport import VerificationReport, combine_reports, combined_verified

if TYPE_CHECKING:
    from featurestore.store import FeatureStore

__all__ = ["materialize_bucketed"]


def materialize_bucketed(store: FeatureStore, name: str, view: dict[str, Any],
                         src_row: dict[str, Any], keys: Sequence[str], transform: Transform,
                         plugin: str | None, plugin_version: str | None,
                         latest: dict[str, Any] | None, fingerprint: str, *, verify: bool,
                         samples: int, budget: float | None, force: bool) -> MaterializeResult:
    """Materialize the transform view ``name`` over the bucketed snapshot ``src_row`` as a
    bucketed artifact (see the module docstring) and record it; the same guarantees as
    ``materialize_polars``: nothing is recorded unless every bucket passed its checks, and a
    failure leaves the previous artifact and the registry as they were."""
    files = artifact_files(store.root, src_row)
    total = int(src_row["row_count"] or 0)
    job = _Job(name=name, transform=transform, transform_name=view["transform"],
               params=view["params"], plugin=plugin or "",
               ctx=TransformContext(keys=tuple(keys)), keys=list(keys), verify=verify,
               samples=samples,
               budget=float(default_budget(total) if budget is None else budget),
               total_rows=total)
    seed = None if force else _seed(store, latest, view, src_row, transform, plugin_version,
                                    verify)
    with _parts(store, job, files, seed) as parts:
        row = store._record_artifact(
            "view", name, view["version"], parts, fingerprint=fingerprint,
            transform=view["transform"], plugin=plugin, plugin_version=plugin_version,
            params=view["params"], verified=False, verification="",
            input_artifact_id=src_row["id"],
            verdict=lambda: job.verdict(len(files), seed))
    status = "incremental" if row["verification"].startswith("incremental") else "materialized"
    return MaterializeResult(name, status, row, job.seconds_transform, job.seconds_verify)


@dataclass
class _Seed:
    """An earlier run to build on: the view's latest artifact and the snapshot it came from,
    both with as many parts as the new snapshot, both checked against their records."""

    view: dict[str, Any]
    changed: list[bool]  # per part: the snapshot part differs from the earlier one
    old_snapshot: list[Path]
    old_view: list[Path]

    def carried(self, i: int) -> ReusedPart:
        part = artifact_parts(self.view)[i]
        return ReusedPart(self.old_view[i], part["checksum"], part["size"], part["rows"])


def _seed(store: FeatureStore, latest: dict[str, Any] | None, view: dict[str, Any],
          src_row: dict[str, Any], transform: Transform, plugin_version: str | None,
          verify: bool) -> _Seed | None:
    """The earlier run an incremental materialization can build on, or None (recompute all)."""
    if transform.scope != "entity" or latest is None or not latest.get("parts"):
        return None
    if (latest.get("input_artifact_id") is None or latest["input_artifact_id"] == src_row["id"]
            or latest["object_version"] != view["version"]
            or latest["plugin_version"] != plugin_version
            or latest["params"] != view["params"]
            or latest["compression"] != store.compression
            or (verify and not latest["verified"])):
        return None
    try:
        old_src = store.artifact(latest["input_artifact_id"])
        old, new, out = artifact_parts(old_src), artifact_parts(src_row), artifact_parts(latest)
        if not (len(old) == len(new) == len(out)):
            return None  # re-bucketed (the source outgrew its bucket count): recompute
        # Checksums remembered per user: cheap unless the files changed since they were read.
        verify_artifact(store.root, old_src)
        verify_artifact(store.root, latest)
    except (ArtifactError, NotFoundError):
        return None  # the seed is gone or damaged: recompute in full
    return _Seed(latest, [a["checksum"] != b["checksum"] for a, b in zip(old, new, strict=True)],
                 artifact_files(store.root, old_src), artifact_files(store.root, latest))


@dataclass
class _Job:
    """One view's run over the buckets: runs and checks each call, collects the reports."""

    name: str
    transform: Transform
    transform_name: str  # as the view names it (plugins' hooks are called with it)
    params: Any
    plugin: str
    ctx: TransformContext
    keys: list[str]
    verify: bool
    samples: int
    budget: float
    total_rows: int
    reports: list[VerificationReport] = field(default_factory=list)
    seconds_transform: float = 0.0
    seconds_verify: float = 0.0
    carried: int = 0
    grown: int = 0
    new_rows: int = 0
    recomputed_rows: int = 0

    @property
    def base(self) -> list[str]:
        return [*self.keys, EVENT_TIMESTAMP, AVAILABLE_AT]

    def compute(self, frame: pl.DataFrame, bucket_rows: int) -> pl.DataFrame:
        """The transform's checked and verified output for ``frame`` (rows of one bucket,
        which holds ``bucket_rows`` of the snapshot's rows: its share of the budget)."""
        t0 = time.perf_counter()
        out = run_checked(self.transform, self.params, frame, self.ctx, self.name,
                          self.plugin or None)
        t1 = time.perf_counter()
        validate_hooks(self.name, self.transform_name, self.params, out)
        if self.verify:
            from featurestore.verification import verify_causality

            share = bucket_rows / self.total_rows if self.total_rows else 1.0
            self.reports.append(verify_causality(
                self.transform, self.params, frame, self.ctx, output=out,
                samples=math.ceil(self.samples * share),
                budget=self.budget if math.isinf(self.budget) else self.budget * share,
                view=self.name, plugin=self.plugin))
        self.seconds_transform += t1 - t0
        self.seconds_verify += time.perf_counter() - t1
        return out.select(*self.base, *[c for c in out.columns if c not in self.base])

    def verdict(self, n_parts: int, seed: _Seed | None) -> tuple[bool, str, str]:
        """``(verified, verification, verification_report)`` once every part is written."""
        scope = ""
        if self.carried or self.grown:
            scope = (f"incremental: {self.carried} of {n_parts} parts carried over unchanged, "
                     f"{self.grown} grown ({self.new_rows} new rows, {self.recomputed_rows} "
                     f"recomputed), {n_parts - self.carried - self.grown} recomputed in full; ")
        if not self.verify:
            warnings.warn(f"view {self.name!r}: causality verification skipped (--no-verify); "
                          "recorded on the artifact", stacklevel=4)
            return (False, f"{scope}NOT VERIFIED: causality verification skipped by the user",
                    json.dumps({"verified": False, "mode": "skipped"}))
        if not self.reports and seed is not None:  # every part carried over: verified before
            return (bool(seed.view["verified"]),
                    f"{scope}verified with artifact {seed.view['id']}",
                    json.dumps({"verified": bool(seed.view["verified"]), "mode": "carried",
                                "artifact": seed.view["id"], "parts": n_parts}))
        note = (f"verified part by part: {len(self.reports)} of {n_parts} parts' rows, budget "
                "and samples shared by rows")
        if self.carried:
            note += f"; {self.carried} parts carried over from artifact {seed.view['id'] if seed else '?'}"
        report = combine_reports(self.reports, budget=self.budget, samples=self.samples,
                                 note=note)
        failed = combined_verified(self.reports)
        verified = report.verified and failed is None
        text = f"{scope}{report if failed is None else failed}"
        if not verified:
            warnings.warn(f"view {self.name!r}: {text}; recorded on the artifact", stacklevel=4)
        return verified, text, json.dumps(report.as_dict() | {"verified": verified,
                                                               "parts": n_parts})


@contextmanager
def _parts(store: FeatureStore, job: _Job, files: Sequence[Path],
           seed: _Seed | None) -> Iterator[Iterator[pl.DataFrame | ReusedPart]]:
    """The view's parts, computed as they are consumed; temporary files are gone on exit."""
    if job.transform.scope != "group":
        yield _entity_parts(job, files, seed)
        return
    workdir = workdir_for(store.root)
    try:
        yield _group_parts(job, files, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _entity_parts(job: _Job, files: Sequence[Path],
                  seed: _Seed | None) -> Iterator[pl.DataFrame | ReusedPart]:
    for i, path in enumerate(files):
        if seed is not None and not seed.changed[i]:
            job.carried += 1
            yield seed.carried(i)
            continue
        new = pl.read_parquet(path)
        out = _grown_part(job, seed.old_snapshot[i], seed.old_view[i], new) if seed else None
        if out is None:
            out = job.compute(new, new.height)
        del new
        part = sort_for_retrieval(out, job.keys, in_place=True)
        del out
        yield part
        del part  # before the next bucket is read: one in memory, not two


def _grown_part(job: _Job, old_snapshot: Path, old_view: Path,
                new: pl.DataFrame) -> pl.DataFrame | None:
    """A part whose snapshot part only grew: the earlier output plus the new rows' (computed
    from their look-back rows only); None when the part did not just grow, or when more than
    half of its rows would be recomputed anyway (cheaper in full)."""
    grown = growth(pl.read_parquet(old_snapshot), new, job.keys)
    if grown is None:
        return None
    subset = recompute_input(new, job.keys, grown, job.transform.lookback(job.params))
    if subset.height * 2 > new.height:
        return None  # most rows to recompute anyway (a long look-back): the part in full
    previous = pl.read_parquet(old_view)
    job.grown += 1
    if grown.new_rows == 0:  # same rows (written differently): the earlier output stands
        return previous
    fresh = new_output_rows(job.compute(subset, new.height), job.keys, grown)
    job.new_rows += fresh.height
    job.recomputed_rows += subset.height
    return pl.concat([previous, fresh])


def _group_parts(job: _Job, files: Sequence[Path],
                 workdir: Path) -> Iterator[pl.DataFrame]:
    """Group scope: transform each group bucket, spill its output by entity bucket, then
    yield the view's parts one by one (see the module docstring)."""
    from featurestore.verification import checked_group_columns

    n = len(files)
    scan = pl.scan_parquet(files)
    schema = scan.collect_schema()
    groups = checked_group_columns(job.transform, job.params, schema,
                                   f"transform {job.transform.name!r} (view {job.name!r})")
    m = n if groups else 1  # no group columns: one group, everything at once
    by_group = split(scan, groups, m, workdir / "groups") if groups else [list(files)]
    empty = scan.with_row_index(ROW).clear().collect()
    out_dir = workdir / "out"
    out_dir.mkdir(parents=True)
    template: pl.DataFrame | None = None
    order = [*job.keys, EVENT_TIMESTAMP]  # a one-file snapshot's order (unique per snapshot)
    for j, group_files in enumerate(by_group):
        if groups:
            frame = sort_in_place(read_bucket(group_files, empty).drop(ROW), order)
        else:
            frame = sort_in_place(pl.read_parquet(group_files), order)
        out = job.compute(frame, frame.height)
        del frame
        template = out.clear() if template is None else template
        for (i,), piece in out.with_columns(bucket_expr(job.keys, n).alias(BUCKET)).partition_by(
                BUCKET, as_dict=True, include_key=False).items():
            # Temporary, read back once: fast compression, no statistics.
            piece.write_parquet(out_dir / f"{i}-{j:06d}.parquet", compression="lz4",
                                statistics=False)
        del out
    assert template is not None  # at least one group bucket ran
    for i in range(n):
        yield sort_for_retrieval(read_bucket(sorted(out_dir.glob(f"{i}-*.parquet")), template),
                                 job.keys, in_place=True)
