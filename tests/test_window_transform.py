"""The ``window`` transform: params, conformance, and row-anchored values against the loop."""

from __future__ import annotations

import polars as pl
import pytest
from featurestore_plugins.window import WINDOW

from featurestore.testing import assert_transform_conforms, sample_laps
from featurestore.transforms import TransformContext
from featurestore.windowspec import parse_params, value_exprs
from tests.oracles_windows import assert_close, loop_oracle

PARAMS = {"features": [
    {"column": "lap_time_s", "windows": ["10m", "2h", "all"],
     "aggs": ["count", "sum", "mean", "std", "min", "max", "first", "last"]},
    {"column": "compound", "indicator": {"in": ["soft", "medium"], "ignore_case": True},
     "windows": ["30m"], "aggs": ["sum", "count"], "alias": "not_hard"},
    {"column": "position", "where": {"column": "pit", "eq": False}, "windows": ["1d"],
     "aggs": ["max", "last"]},
]}


def test_declared_names_and_dtypes():
    schema = sample_laps().schema
    declared = WINDOW.declared_schema(PARAMS, schema)
    assert declared["lap_time_s_count_10m"] == pl.Int64
    assert declared["lap_time_s_mean_all"] == pl.Float64
    assert declared["lap_time_s_first_2h"] == pl.Float64
    assert declared["not_hard_sum_30m"] == pl.Int64
    assert declared["position_max_1d"] == pl.Int64
    assert len(declared) == 3 * 8 + 2 + 2


@pytest.mark.parametrize(("params", "message"), [
    ({"column": "lap_time_s", "windows": [5], "aggs": ["sum"]}, "use the rolling transform"),
    ({"column": "lap_time_s", "windows": ["5x"], "aggs": ["sum"]}, r"windows\[0\]"),
    ({"column": "lap_time_s", "windows": ["5m"], "aggs": ["median"]}, r"aggs\[0\]"),
    ({"column": "lap_time_s", "windows": ["5m", "5m"], "aggs": ["sum"]}, "duplicates"),
    ({"column": "nope", "windows": ["5m"], "aggs": ["sum"]}, "no column 'nope'"),
    ({"column": "compound", "windows": ["5m"], "aggs": ["sum"]}, "has dtype String"),
    ({"column": "position", "where": {"column": "pit", "lt": "x"}, "windows": ["5m"],
      "aggs": ["sum"]}, "cannot be compared"),
    ({"column": "position", "windows": ["5m"], "aggs": ["sum"], "inclusive": True},
     "unknown param"),
    ({"column": "position", "indicator": {"gt": 1, "ignore_case": True}, "windows": ["5m"],
      "aggs": ["sum"]}, "ignore_case"),
])
def test_bad_params_name_the_param(params, message):
    with pytest.raises(ValueError, match=message):
        WINDOW.declared_schema(params, sample_laps().schema)


def test_conforms():
    frame = sample_laps(composite_key=True, duplicate_times=True)
    assert_transform_conforms(WINDOW, PARAMS, frame, keys=("driver_id", "team_id"),
                              plugin="featurestore_plugins.window")


def test_row_anchored_values_match_the_loop():
    """What materialization writes: the window anchored at each row's own availability."""
    frame = sample_laps(duplicate_times=True)
    ctx = TransformContext(keys=("driver_id",))
    got = WINDOW(frame.lazy(), PARAMS, ctx).collect()
    specs = parse_params(PARAMS)
    rows = frame.with_columns(value_exprs(specs, frame.schema))
    # Compare per row: sort both sides the same way (full ties have equal values anyway).
    order = ["driver_id", "available_at", "event_timestamp"]
    got = got.sort(order, maintain_order=True)
    query = got.select("driver_id", pl.col("available_at").alias("t"))
    outs = [o for s in specs for o in s.outputs if o.agg not in ("first", "last")]
    want = loop_oracle(rows, query, outs, keys=["driver_id"], cutoff="t", inclusive=True)
    have = got.select([o.name for o in outs]).to_dicts()
    assert_close(have, [{k: v for k, v in w.items() if not k.endswith("__available_at")}
                        for w in want])
