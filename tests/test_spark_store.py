"""The spark engine on real stores: ingest, materialize and retrieval against the Polars engine.

A store is one registry and one artifact layout whichever engine wrote it: the quickstart season
is ingested, materialized and retrieved by both engines and compared cell by cell, and what one
engine wrote the other reads. Ingest's checks (time zones, nulls, duplicates, causal fills) are
compared with the Polars path on small sources.
"""

from __future__ import annotations

import warnings
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from storekit import basic_defs, open_store, write_results

from featurestore import Entity, Feature, Fill, Source
from featurestore.errors import DataError, LeakageError
from featurestore.materialize import materialize

pytestmark = pytest.mark.slow  # the Spark engine: a JVM per worker, seconds per job


def artifact_frame(store, row) -> pl.DataFrame:
    """The artifact's rows: only its columns (a Polars column view's file is its snapshot's),
    a snapshot's in one fixed order (the Polars engine writes a snapshot that no transform
    reads in retrieval order, the Spark engine in event order)."""
    frame = pl.read_parquet(store.root / row["path"], columns=list(row["schema"]))
    return frame.sort(frame.columns) if row["kind"] == "source" else frame


def by_kind(store) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for a in store.registry.artifacts():
        out.setdefault((a["kind"], a["name"]), []).append(a)
    return out


@pytest.mark.slow
def test_quickstart_season_on_both_engines_cell_by_cell(spark, tmp_path):
    from featurestore import FeatureStore
    from featurestore.quickstart.pipeline import (
        IN_RACE_FEATURES,
        PRE_RACE_FEATURES,
        _entity_frames,
        run_quickstart,
    )

    result = run_quickstart(tmp_path / "qs", n_races=2, n_drivers=5, plot=False)
    assert result.audit_violations == 0
    store = FeatureStore(tmp_path / "qs")
    polars_built = by_kind(store)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        store.ingest(force=True, engine="spark")
        materialize(store, force=True, engine="spark")
    both = by_kind(store)
    assert set(both) == set(polars_built)
    for key, rows in both.items():
        first, second = rows[0], rows[-1]  # Polars built the first, Spark the second
        assert first["id"] != second["id"], key
        assert second["schema"] == first["schema"], key
        assert second["row_count"] == first["row_count"], key
        # Exact in every cell but floats, which Spark and Polars sum in a different order
        # (a running sum against a per-frame one): equal to the last few ulps.
        assert_frame_equal(artifact_frame(store, second), artifact_frame(store, first),
                           check_exact=False, rel_tol=1e-12, abs_tol=1e-12)
        assert second["verified"] == first["verified"], key
    for view in ("driver_form", "lap_form", "tyre_falloff"):  # every first-party transform
        text = both[("view", view)][-1]["verification"]
        assert text.startswith("computed by Spark window functions; causality verified"), text
    season = tmp_path / "qs" / "season"
    prerace_q, inrace_q = _entity_frames({n: season / f"{n}.parquet"
                                          for n in ("results", "schedule", "race_laps")})
    for query, features, tier in ((prerace_q, "prerace_model", "qualifying"),
                                  (inrace_q, PRE_RACE_FEATURES + IN_RACE_FEATURES, "race")):
        on_polars = store.get_historical_features(query, features, tier=tier,
                                                  with_availability=True)
        on_spark = store.get_historical_features(query, features, tier=tier,
                                                 with_availability=True, engine="spark")
        assert on_spark.height == query.height
        assert on_spark.schema == on_polars.schema
        assert on_spark.equals(on_polars)
        assert store.audit(on_spark, [c for c in on_spark.columns
                                      if f"{c}__available_at" in on_spark.columns]).ok
    with pytest.raises(LeakageError):
        store.get_historical_features(prerace_q, ["qualifying_position",
                                                  "lap_time_mean_last_10l"],
                                      tier="qualifying", engine="spark")


def query() -> pl.DataFrame:
    return pl.DataFrame({"driver_id": [2, 1, 1, 3],
                         "event_timestamp": [datetime(2025, 3, 1), datetime(2025, 2, 20),
                                             datetime(2025, 2, 16, 19), datetime(2025, 3, 1)]},
                        schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")})


def test_spark_writes_polars_reads_and_the_other_way_round(spark, tmp_path, registry_url):
    store = open_store(tmp_path, registry_url)
    store.apply(basic_defs(write_results(tmp_path / "results.parquet")))
    [spark_ingest] = store.ingest(engine="spark")
    by_spark = materialize(store, engine="spark")
    assert {r.status for r in by_spark} == {"materialized"}
    # Same inputs, same fingerprints: the Polars engine finds everything up to date.
    assert store.ingest()[0]["status"] == "up-to-date"
    assert {r.status for r in materialize(store)} == {"up-to-date"}
    features = ["finish", "laps_led"]
    read_by_polars = store.get_historical_features(query(), features, tier="historical")
    read_by_spark = store.get_historical_features(query(), features, tier="historical",
                                                  engine="spark")
    assert read_by_spark.equals(read_by_polars)
    assert read_by_polars["finish"].to_list() == [5, 3, None, None]
    # Now Polars writes and Spark reads.
    store.ingest(force=True)
    materialize(store, force=True)
    assert store.get_historical_features(query(), features, tier="historical",
                                         engine="spark").equals(read_by_polars)
    polars_snapshot = store.registry.latest_artifact("source", "results")
    assert artifact_frame(store, polars_snapshot).equals(
        artifact_frame(store, spark_ingest["artifact"]))


def _source(tmp_path: Path, frame: pl.DataFrame, **kw) -> tuple:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "src.parquet"
    frame.write_parquet(path)
    s = open_store(tmp_path)
    s.apply([Entity("driver", ("driver_id",)),
             Source("s", str(path), "driver", "t", **kw),
             *[Feature(c, source="s") for c in frame.columns
               if c not in ("driver_id", "t", "published")]])
    return s, path


def both_engines(store) -> pl.DataFrame:
    """The source read by both engines: must be the same frame; returns it."""
    from featurestore.engines.spark.ingest import read_source
    from featurestore.engines.spark.session import to_polars

    on_spark = to_polars(read_source(store, "s"))
    on_polars = store.read_source("s")
    # Spark writes event order; Polars a source no transform reads in retrieval order.
    by_event = ["driver_id", "event_timestamp"]
    assert on_spark.equals(on_spark.sort(by_event))
    assert on_spark.equals(on_polars.sort(by_event)), (on_spark, on_polars)
    return on_polars


def test_ingest_fills_late_corrections_and_keep_last_like_polars(spark, tmp_path):
    t = [datetime(2025, 1, d, 12) for d in (1, 2, 3, 4, 5)]
    frame = pl.DataFrame({
        "driver_id": [1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2],
        "t": [*t, *t, t[4]],
        # driver 2's second row is a late correction: published after the third row's
        "published": [*t, t[0], datetime(2025, 1, 9), t[2], t[3], t[4], t[4]],
        "x": [None, 1.0, None, 4.0, None, 2.0, 5.0, None, None, 7.0, 8.0],
        "n": [3, None, None, 5, None, None, 1, None, 2, None, None],
    })
    s, _ = _source(tmp_path, frame, timezone="America/New_York", available_time="published",
                   on_duplicate="keep_last",
                   fills=(Fill("x", "expanding_mean"), Fill("n", "forward", 0)))
    got = both_engines(s)
    assert got.height == 10  # driver 2's duplicate event time kept once (the last)


def test_ingest_refusals_name_the_file_and_column(spark, tmp_path):
    from featurestore.engines.spark.ingest import read_source

    gap = pl.DataFrame({"driver_id": [1, 2], "t": [datetime(2025, 3, 9, 1), datetime(2025, 3, 9, 2, 30)],
                        "x": [1, 2]})
    s, path = _source(tmp_path / "gap", gap, timezone="America/New_York")
    with pytest.raises(DataError, match=rf"{path}: cannot convert times of source 's'.*'t'"):
        read_source(s, "s")
    overlap = gap.with_columns(pl.Series("t", [datetime(2025, 11, 2, 0, 30),
                                               datetime(2025, 11, 2, 1, 30)]))
    s, path = _source(tmp_path / "overlap", overlap, timezone="America/New_York")
    with pytest.raises(DataError, match="ambiguous"):
        read_source(s, "s")
    dup = pl.DataFrame({"driver_id": [1, 1], "t": [datetime(2025, 1, 1)] * 2, "x": [1, 2]})
    s, path = _source(tmp_path / "dup", dup)
    with pytest.raises(DataError, match=r"2 rows share their key and event time \(e.g. "
                                        r"driver_id=1, t=2025-01-01T00:00:00\+00:00\)"):
        read_source(s, "s")
    nulls = pl.DataFrame({"driver_id": [1, None, None], "t": [datetime(2025, 1, 1)] * 3,
                          "x": [1, 2, 3]})
    s, path = _source(tmp_path / "nulls", nulls)
    with pytest.raises(DataError, match=r"key column 'driver_id' has 2 null value\(s\) "
                                        r"\(first at row 1\)"):
        read_source(s, "s")
    with pytest.raises(DataError, match=r"key column 'driver_id' has 2 null value\(s\) "
                                        r"\(first at row 1\)"):
        s.read_source("s")


def test_one_session_on_the_master_from_the_environment(spark):
    import os

    from featurestore.engines.spark.session import MASTER_ENV, spark_session

    assert spark.sparkContext.master == os.environ[MASTER_ENV] == "local[2]"
    assert spark_session() is spark  # reused, never a second JVM
    assert spark.conf.get("spark.sql.session.timeZone") == "UTC"


def test_bucketed_store_read_by_spark(spark, tmp_path, monkeypatch):
    """A store whose artifacts are directories of parts (``featurestore.buckets``): Spark
    materializes from the parts of the snapshot and retrieves from the parts of a view."""
    from featurestore.buckets import BUCKETS_ENV

    monkeypatch.setenv(BUCKETS_ENV, "3")
    store = open_store(tmp_path)
    store.apply(basic_defs(write_results(tmp_path / "results.parquet",
                                         extra={"driver_id": [1, 2, 3, 4]})))
    materialize(store)
    [art] = [a for a in store.registry.artifacts() if a["kind"] == "view"]
    assert len(art["parts"]) == 3
    q = query().with_columns(pl.Series("driver_id", [2, 1, 3, 4]))
    on_polars = store.get_historical_features(q, ["finish", "laps_led"], tier="historical",
                                              with_availability=True)
    on_spark = store.get_historical_features(q, ["finish", "laps_led"], tier="historical",
                                             with_availability=True, engine="spark")
    assert on_spark.equals(on_polars)
    [rebuilt] = materialize(store, force=True, engine="spark")
    assert artifact_frame(store, rebuilt.artifact).equals(
        pl.concat([pl.read_parquet(store.root / art["path"] / p["file"]) for p in art["parts"]])
        .sort("driver_id", "available_at", "event_timestamp"))


def test_a_field_view_materialized_natively_by_spark_equals_polars(spark, tmp_path):
    """A group-scope ``field`` view goes through the Spark materializer as window expressions
    (recorded on the artifact), proven per group, and holds what the Polars engine writes."""
    from featurestore import View

    store = open_store(tmp_path)
    results = write_results(tmp_path / "results.parquet", extra={"race_id": [1, 2, 1, 2]})
    outputs = {"finish_rank": {"kind": "rank", "column": "finish"},
               "finish_vs_mean": {"kind": "delta_mean", "column": "finish"},
               "finish_count": {"kind": "count", "column": "finish"}}
    store.apply([*basic_defs(results),
                 View("race_field", "results", "field", {"group_by": ["race_id"],
                                                         "outputs": outputs}),
                 *[Feature(name, view="race_field") for name in outputs]])
    [by_spark] = materialize(store, ["race_field"], engine="spark")
    assert by_spark.artifact["verification"].startswith(
        "computed by Spark window functions; causality verified"), by_spark.artifact
    [by_polars] = materialize(store, ["race_field"], force=True)
    spark_frame = artifact_frame(store, by_spark.artifact)
    assert spark_frame.equals(artifact_frame(store, by_polars.artifact))
    assert spark_frame.height == 4 and spark_frame["finish_rank"].null_count() == 1
