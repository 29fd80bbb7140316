"""The spark engine's point-in-time join against the Polars engine and the Python oracle.

Each case is the one ``tests/test_retrieval.py`` checks on the Polars engine: the views are
written to Parquet (the Spark engine reads artifact files, as in a store) and both engines must
return the same frame, dtype for dtype, value for value. Spark on two loaded cores takes about a
second per case, so the generated cases are fewer than on Polars.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from oracles_retrieval import python_oracle
from test_retrieval import ET, frame, scenarios, utc

from featurestore.errors import DataError
from featurestore.retrieval import ViewFrame, point_in_time_join

pytestmark = pytest.mark.slow  # the Spark engine: a JVM per worker, seconds per job

SPARK_SETTINGS = settings(max_examples=12, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.function_scoped_fixture])


def on_parquet(views, directory):
    """The views as artifact files: (views reading those files, their paths)."""
    directory.mkdir(parents=True, exist_ok=True)
    out, paths = [], []
    for i, v in enumerate(views):
        path = directory / f"view{i}-{len(list(directory.iterdir()))}.parquet"
        v.frame.collect().write_parquet(path)
        out.append(ViewFrame(v.name, pl.scan_parquet(path), v.keys, v.features, v.query_keys,
                             presorted=False))
        paths.append(path)
    return out, paths


def check_spark(query, views, tmp_path, *, oracle: bool = True, **kw) -> pl.DataFrame:
    """Spark == Polars engine (== the Python oracle, which cannot hold nanoseconds)."""
    from featurestore.engines.spark.retrieval import point_in_time_join as spark_join

    on_disk, paths = on_parquet(views, tmp_path / "views")
    expected = point_in_time_join(query, views, **kw)
    got = spark_join(query, on_disk, paths, **kw)
    assert got.schema == expected.schema
    assert got.equals(expected)
    if oracle:
        assert got.to_dicts() == python_oracle(query, views, **kw)
    return got


def test_hand_checked_strict_inclusive_ttl_and_ties(spark, tmp_path):
    f = frame([
        (1, utc(2024, 1, 1), utc(2024, 1, 2), 10),
        (1, utc(2024, 1, 2), utc(2024, 1, 2), 11),   # same available_at, later event: wins
        (1, None, utc(2024, 1, 3), 12),              # null event time loses an av tie...
        (1, utc(2024, 1, 1, 12), utc(2024, 1, 3), 13),  # ...to this one
        (2, utc(2024, 1, 1), utc(2024, 1, 5), None),   # a null value stays null
        (2, utc(2024, 1, 1), None, 99),                # never available
    ])
    v = ViewFrame("v", f.lazy(), ("driver_id",), {"x": "value"})
    q = pl.DataFrame({"driver_id": [1, 1, 1, 2, 2, None, 3],
                      ET: [utc(2024, 1, 2), utc(2024, 1, 2, 1), utc(2024, 1, 4), utc(2024, 1, 6),
                           utc(2024, 1, 5), utc(2024, 1, 4), utc(2024, 1, 4)]})
    assert check_spark(q, [v], tmp_path)["x"].to_list() == [None, 11, 13, None, None, None, None]
    assert check_spark(q, [v], tmp_path, inclusive=True)["x"].to_list()[:2] == [11, 11]
    check_spark(q, [v], tmp_path, ttl=timedelta(hours=12), with_availability=True)


def test_sub_microsecond_cutoffs_and_naive_zones(spark, tmp_path):
    f = frame([(1, utc(2024, 3, 10, 6), utc(2024, 3, 10, 7), 1)])
    v = ViewFrame("v", f.lazy(), ("driver_id",), {"x": "value"})
    t = pl.Series([datetime(2024, 3, 10, 7)] * 3, dtype=pl.Datetime("ns", "UTC"))
    t = t + pl.Series([-1, 0, 1], dtype=pl.Duration("ns"))
    q = pl.DataFrame({"driver_id": [1, 1, 1], ET: t})
    for inclusive in (False, True):
        for ttl in (None, timedelta(0)):
            got = check_spark(q, [v], tmp_path, oracle=False, inclusive=inclusive, ttl=ttl,
                              with_availability=True)
            if ttl is None:
                assert got["x"].to_list() == ([None, 1, 1] if inclusive else [None, None, 1])
    naive = pl.DataFrame({"driver_id": [1, 1, 1],
                          ET: [datetime(2024, 3, 10, 1, 59), datetime(2024, 3, 10, 3),
                               datetime(2024, 3, 10, 3, 1)]})
    check_spark(naive, [v], tmp_path, cutoff_timezone="America/New_York", inclusive=True)
    gap = naive.with_columns(pl.lit(datetime(2024, 3, 10, 2, 30)).alias(ET))
    from featurestore.engines.spark.retrieval import point_in_time_join as spark_join

    on_disk, paths = on_parquet([v], tmp_path / "gap")
    with pytest.raises(DataError, match="cannot read naive times"):
        spark_join(gap, on_disk, paths, cutoff_timezone="America/New_York")


def test_dtypes_come_back_as_the_artifact_has_them(spark, tmp_path):
    f = frame([(1, utc(2024, 1, 1), utc(2024, 1, 1), 1)]).with_columns(
        u=pl.lit(7, pl.UInt32), cat=pl.lit("a", pl.Categorical), d=pl.lit(datetime(2024, 1, 1)).dt.date(),
        ns=pl.lit(datetime(2024, 1, 1, 0, 0, 0, 5)).cast(pl.Datetime("ns", "UTC")),
        dur=pl.duration(seconds=3), lst=pl.lit([1, 2]))
    feats = {c: c for c in ("u", "cat", "d", "ns", "dur", "lst")}
    v = ViewFrame("v", f.lazy(), ("driver_id",), feats)
    q = pl.DataFrame({"driver_id": pl.Series([1, 2], dtype=pl.UInt16), ET: [utc(2024, 1, 2)] * 2})
    check_spark(q, [v], tmp_path, with_availability=True)


@SPARK_SETTINGS
@given(scenarios())
def test_spark_matches_polars_and_the_oracle_on_generated_cases(spark, tmp_path_factory, case):
    q, views, kw = case
    check_spark(q, views, tmp_path_factory.mktemp("case"), **kw)
