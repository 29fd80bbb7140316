"""Materialize on Spark: every view of the store computed on the cluster, written as the same
artifact with the same registry row as the Polars engine writes.

- A source's column view is a projection of the snapshot, read and sorted by Spark.
- A transform view runs per entity (a ``group``-scope transform: per group) on the executors:
  ``groupBy(keys).applyInArrow`` hands each entity's rows, in event order, to the transform's
  own Polars code; its output is checked against the transform contract and verified for
  causality there, on that entity's rows, by the same ``featurestore.verification`` code the
  Polars engine uses (so a third-party transform with only a Polars implementation runs on Spark
  unchanged). An entity-scope transform cannot read another entity's rows on Spark at all: each
  call sees one entity. The per-entity reports are combined into the artifact's report.
- ``rolling``, ``field`` and ``falloff`` are computed by Spark window expressions instead
  (``native``, ``native_field``, ``native_falloff``; a ``rolling`` period Spark cannot take
  exactly falls back to the per-entity path); their values are then verified per entity against the Polars
  code's reruns (``verify_output``), which catches a leak and a native value that differs.
- The result is sorted in retrieval order by Spark and written by ``io.write_artifact``.

Views are always recomputed in full on Spark (no incremental seed), and the snapshot is the one
the spark engine ingests.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

from featurestore.cutplan import DEFAULT_SAMPLES
from featurestore.errors import DataError, LeakageError, NotFoundError, PluginError
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP, TransformContext

if TYPE_CHECKING:
    from featurestore.materialize import MaterializeResult
    from featurestore.store import FeatureStore

_REPORT = "__fs_report"


def materialize(store: FeatureStore, views: Sequence[str] | None = None, *, verify: bool = True,
                samples: int = DEFAULT_SAMPLES, budget: float | None = None,
                force: bool = False, progress: Any = None,
                strict: bool = False) -> list[MaterializeResult]:
    """``featurestore.materialize.materialize`` on Spark (see the module doc)."""
    from featurestore.engines.spark import ENGINE
    from featurestore.layout import retrieval_order
    from featurestore.lifecycle import refuse_deleted, runnable_views
    from featurestore.materialize import (
        MaterializeResult,
        up_to_date,
        view_fingerprint,
        view_transform,
    )
    from featurestore.readers import reading

    registered = store.registry.latest("view")
    names = list(views) if views else sorted(
        n for n, v in registered.items() if v["transform"] is not None or v["params"]["columns"])
    for n in names:
        if n not in registered:
            refuse_deleted(store, "view", n)
            raise NotFoundError(f"view {n!r} is not registered; registered views: "
                                f"{', '.join(sorted(registered)) or '(none)'}")
    names = runnable_views(store, registered, names, explicit=bool(views), strict=strict)
    results = []
    with reading(store.root):
        for i, name in enumerate(names):
            if progress:
                progress(f"materialize {name}", i, len(names))
            view = registered[name]
            [ingested] = store.ingest([view["source"]], engine=ENGINE.name)
            src_row = ingested["artifact"]
            from featurestore.artifacts import artifact_files, verify_artifact

            verify_artifact(store.root, src_row)
            snapshot = artifact_files(store.root, src_row)  # one file, or a bucketed one's parts
            keys = list(store.registry.get("entity", store.registry.get(
                "source", view["source"])["entity"])["join_keys"])
            transform, plugin_name, plugin_version = view_transform(view)
            fingerprint = view_fingerprint(src_row, view, plugin_version, verify)
            latest = store.registry.latest_artifact("view", name)
            if up_to_date(store, latest, fingerprint, force=force):
                results.append(MaterializeResult(name, "up-to-date", latest))
                continue
            t0 = time.perf_counter()
            schema = dict(pl.read_parquet_schema(snapshot[0]))
            base = [*keys, EVENT_TIMESTAMP, AVAILABLE_AT]
            if transform is None:
                missing = [c for c in view["params"]["columns"] if c not in schema]
                if missing:
                    raise DataError(f"view {name!r}: source {view['source']!r} no longer has "
                                    f"column(s) {', '.join(missing)}; re-apply the definitions")
                out = _read(snapshot).select(*base, *view["params"]["columns"])
                verified, verification = True, "columns read as is"
                report_json = json.dumps({"verified": True, "mode": "columns"})
                t1 = t2 = time.perf_counter()
            else:
                native = None
                if plugin_name == "featurestore_plugins.rolling":
                    from featurestore.engines.spark.native import native_rolling

                    native = native_rolling(_read(snapshot), view["params"], keys, schema)
                elif plugin_name == "featurestore_plugins.field":
                    from featurestore.engines.spark.native_field import native_field

                    native = native_field(_read(snapshot), view["params"], keys, schema)
                elif plugin_name == "featurestore_plugins.falloff":
                    from featurestore.engines.spark.native_falloff import native_falloff

                    native = native_falloff(_read(snapshot), view["params"], keys, schema)
                if native is not None:
                    out = native.cache()
                    reports = verify_output(
                        _read(snapshot), out, transform, view["params"], keys, schema, view=name,
                        plugin=plugin_name or "", verify=verify, samples=samples, budget=budget)
                else:
                    out, reports = run_transform(
                        _read(snapshot), transform, view["params"], keys, schema, view=name,
                        plugin=plugin_name or "", verify=verify, samples=samples, budget=budget)
                t1 = t2 = time.perf_counter()  # verification ran with the transform
                verified, verification, report_json = _combine(name, reports, verify,
                                                               native=native is not None)
            out = out.orderBy(*retrieval_order(keys))
            row = store._record_artifact(
                "view", name, view["version"], out, fingerprint=fingerprint,
                transform=view["transform"], plugin=plugin_name, plugin_version=plugin_version,
                params=view["params"], verified=verified, verification=verification,
                input_artifact_id=src_row["id"], verification_report=report_json,
                engine=ENGINE)
            results.append(MaterializeResult(name, "materialized", row, t1 - t0, t2 - t1))
    if progress:
        progress("materialize", len(names), len(names))
    return results


def _read(files: list[Any]) -> Any:
    from featurestore.engines.spark.session import spark_session

    return spark_session().read.parquet(*[str(f) for f in files])


def _spark_schema(schema: dict[str, pl.DataType]) -> Any:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(pl.DataFrame(schema=schema).to_arrow().schema)


def run_transform(frame: Any, transform: Any, params: Any, keys: Sequence[str],
                  input_schema: dict[str, pl.DataType], *, view: str, plugin: str,
                  verify: bool, samples: int = DEFAULT_SAMPLES,
                  budget: float | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Run ``transform`` over the Spark DataFrame ``frame`` per entity (or group) with its
    Polars code, checking the contract and (``verify``) causality on each; return the output
    (a Spark DataFrame in store layout) and one verification report per entity or group."""
    from featurestore.contract import check_contract
    from featurestore.engines.spark.session import arrow_caster, raise_worker_error

    keys = list(keys)
    ctx = TransformContext(keys=tuple(keys))
    try:
        declared = transform.output_columns(params, input_schema)
    except ValueError as exc:
        raise PluginError(f"transform {transform.name!r} (plugin {plugin!r}, view {view!r}): "
                          f"{exc}") from exc
    base = [*keys, EVENT_TIMESTAMP, AVAILABLE_AT]
    out_schema = {**{c: input_schema[c] for c in base}, **dict(declared), _REPORT: pl.String()}
    names = list(out_schema)
    by = list(transform.group_columns(params)) if transform.scope == "group" else keys
    input_names = list(input_schema)
    spark_schema = _spark_schema(out_schema)
    to_spark_types = arrow_caster(spark_schema)

    def run(table: Any) -> Any:
        part = pl.from_arrow(table)
        assert isinstance(part, pl.DataFrame)
        part = part.select(input_names).cast(input_schema)  # type: ignore[arg-type]
        part = part.sort([*keys, EVENT_TIMESTAMP, AVAILABLE_AT], maintain_order=True)
        try:
            result = transform(part.lazy(), params, ctx)
        except Exception as exc:
            raise PluginError(f"transform {transform.name!r} (plugin {plugin!r}, view "
                              f"{view!r}) failed: {type(exc).__name__}: {exc}") from exc
        output = check_contract(transform, params, part, result, ctx, plugin=plugin, view=view,
                                input_schema=input_schema)
        report: dict[str, Any] = {"verified": False, "mode": "skipped"}
        if verify and part.height:
            from featurestore.verification import verify_causality

            try:
                report = verify_causality(transform, params, part, ctx, samples=samples,
                                          budget=budget, view=view, plugin=plugin,
                                          output=output).as_dict()
            except LeakageError as exc:
                report = {"verified": False, "mode": "leak", "error": str(exc)}
        text = [json.dumps(report, default=str)] + [None] * (output.height - 1)
        output = output.with_columns(pl.Series(_REPORT, text[:output.height], pl.String))
        return to_spark_types(output.select(names).to_arrow())

    out = frame.groupBy(*by).applyInArrow(run, spark_schema).cache()
    try:
        reports = [json.loads(r[0]) for r in out.where(out[_REPORT].isNotNull())
                   .select(_REPORT).collect()]
    except Exception as exc:
        raise_worker_error(exc)  # a contract or plugin error, raised in a worker
        raise
    return out.drop(_REPORT), reports


def verify_output(frame: Any, output: Any, transform: Any, params: Any, keys: Sequence[str],
                  input_schema: dict[str, pl.DataType], *, view: str, plugin: str, verify: bool,
                  samples: int = DEFAULT_SAMPLES,
                  budget: float | None = None) -> list[dict[str, Any]]:
    """Per entity, verify ``output`` (computed natively, in store layout) as the full run of
    ``transform`` over ``frame``: the Polars code's reruns on truncated inputs must agree with
    it. One report per entity (or group)."""
    import pyarrow as pa

    from featurestore.engines.spark.session import raise_worker_error

    keys = list(keys)
    if not verify:
        return [{"verified": False, "mode": "skipped"}]
    base = [*keys, EVENT_TIMESTAMP, AVAILABLE_AT]
    ctx = TransformContext(keys=tuple(keys))
    input_names = list(input_schema)
    out_names = [c for c in output.columns if c not in base]
    out_types = {c: t for c, t in transform.output_columns(params, input_schema).items()}
    # A snapshot's (keys, event time) are unique, so the base columns identify a row.
    joined = frame.join(output.select(*base, *[output[c].alias(f"__fs_out_{c}")
                                               for c in out_names]), on=base, how="inner")
    by = list(transform.group_columns(params)) if transform.scope == "group" else keys
    report_type = _spark_schema({_REPORT: pl.String()})

    def check(table: Any) -> Any:
        from featurestore.verification import verify_causality

        part = pl.from_arrow(table)
        assert isinstance(part, pl.DataFrame)
        inp = part.select(input_names).cast(input_schema)  # type: ignore[arg-type]
        out = part.select(*base, *[pl.col(f"__fs_out_{c}").alias(c) for c in out_names]
                          ).cast({**{c: input_schema[c] for c in base}, **out_types})
        try:
            report = verify_causality(transform, params, inp, ctx, samples=samples,
                                      budget=budget, view=view, plugin=plugin,
                                      output=out).as_dict()
        except LeakageError as exc:
            report = {"verified": False, "mode": "leak", "error": str(exc)}
        return pa.table({_REPORT: pa.array([json.dumps(report, default=str)], pa.string())})

    try:
        rows = joined.groupBy(*by).applyInArrow(check, report_type).collect()
    except Exception as exc:
        raise_worker_error(exc)
        raise
    return [json.loads(r[0]) for r in rows]


def _combine(view: str, reports: list[dict[str, Any]], verify: bool, *,
             native: bool = False) -> tuple[bool, str, str]:
    """(verified, verification text, report JSON) of a view from its per-entity reports."""
    leaks = [r for r in reports if r.get("mode") == "leak"]
    if leaks:
        raise LeakageError(leaks[0]["error"])
    if not verify:
        warnings.warn(f"view {view!r}: causality verification skipped (--no-verify); recorded on "
                      "the artifact", stacklevel=3)
        return (False, "NOT VERIFIED: causality verification skipped by the user",
                json.dumps({"verified": False, "mode": "skipped"}))
    proven = [r for r in reports if r.get("verified")]
    cuts = sum(int(r.get("cuts") or 0) for r in reports)
    rows = sum(int(r.get("rows_compared") or 0) for r in reports)
    verified = bool(reports) and bool(proven)
    how = "computed by Spark window functions" if native else "computed per partition"
    text = (f"{how}; causality verified on spark per partition: {len(proven)} of "
            f"{len(reports)} partitions proven, {cuts:,} cuts, {rows:,} rows compared"
            if verified else
            "NOT VERIFIED: causality of the transform could not be checked on any partition")
    if not verified:
        warnings.warn(f"view {view!r}: {text}; recorded on the artifact", stacklevel=3)
    return verified, text, json.dumps({"verified": verified, "mode": "spark-partitions",
                                       "computed": "native" if native else "per-partition",
                                       "partitions": len(reports), "proven": len(proven),
                                       "cuts": cuts, "rows_compared": rows})
