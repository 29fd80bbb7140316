"""First-party and third-party transforms materialized on Spark against the Polars engine and the
brute-force oracles (``tests/oracles_transforms.py``, ``tests/oracles_field.py``).

The generated inputs are the ones the Polars transform tests draw; each example runs the Polars
transform (checked against its oracle) and the Spark path (per entity or group through
``applyInArrow``, contract and causality checked there), and the two outputs must hold the same
rows. Spark on two loaded cores takes a second or two per example, so examples are few.
"""

from __future__ import annotations

import polars as pl
import pytest
from featurestore_plugins.falloff import FALLOFF
from featurestore_plugins.field import FIELD
from featurestore_plugins.rolling import ROLLING
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles_field import field_oracle
from oracles_transforms import assert_outputs_match, falloff_oracle, rolling_oracle
from polars.testing import assert_frame_equal
from test_falloff import falloff_params
from test_falloff import lap_rows as falloff_rows
from test_falloff import run as run_falloff
from test_field import KEY_CHOICES as FIELD_KEYS
from test_field import field_params, field_rows
from test_field import run as run_field
from test_rolling import INDICATORS, KEY_CHOICES, WHERES, lap_rows, rolling_params
from test_rolling import run as run_rolling

from featurestore.errors import LeakageError, PluginError
from featurestore.transforms import Transform, TransformContext
from featurestore.verification import verify_causality

pytestmark = pytest.mark.slow  # the Spark engine: a JVM per worker, seconds per job

FEW = settings(max_examples=5, deadline=None,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def on_spark(frame: pl.DataFrame, transform: Transform, params: dict, keys: list[str]):
    from featurestore.engines.spark.materialize import run_transform
    from featurestore.engines.spark.session import to_polars, to_spark

    out, reports = run_transform(to_spark(frame), transform, params, keys, dict(frame.schema),
                                 view="v", plugin="test", verify=True)
    return to_polars(out), reports


def same_rows(spark_out: pl.DataFrame, polars_out: pl.DataFrame) -> None:
    assert spark_out.schema == polars_out.schema
    assert_frame_equal(spark_out.sort(spark_out.columns, nulls_last=True),
                       polars_out.sort(polars_out.columns, nulls_last=True),
                       rel_tol=1e-12, abs_tol=1e-12)



@FEW
@given(rows=lap_rows(), keys=st.sampled_from(KEY_CHOICES), params=rolling_params(expanding=True))
def test_rolling_on_spark_equals_polars_and_the_oracle(spark, rows, keys, params):
    """Every spec has an "all" window besides the drawn ones (few examples: make each count)."""
    from test_rolling import to_frame

    declared, out, got = run_rolling(rows, keys, params)
    assert_outputs_match(got, rolling_oracle(rows, keys, params), list(declared))
    spark_out, reports = on_spark(to_frame(rows), ROLLING, params, keys)
    same_rows(spark_out, out)
    # Generated availability may run against event order, where a row window does read later
    # rows: Spark's per-entity verification must find exactly when Polars' finds it.
    try:
        verify_causality(ROLLING, params, to_frame(rows), TransformContext(keys=tuple(keys)))
    except LeakageError:
        assert any(r["mode"] == "leak" for r in reports)
    else:
        assert all(r["mode"] != "leak" for r in reports)


@FEW
@given(rows=falloff_rows(), keys=st.sampled_from(KEY_CHOICES), params=falloff_params())
def test_falloff_on_spark_equals_polars_and_the_oracle(spark, rows, keys, params):
    from test_falloff import to_frame

    declared, out, got = run_falloff(rows, keys, params)
    assert_outputs_match(got, falloff_oracle(rows, keys, params), list(declared))
    spark_out, _ = on_spark(to_frame(rows), FALLOFF, params, keys)
    same_rows(spark_out, out)


@FEW
@given(rows=field_rows(), keys=st.sampled_from(FIELD_KEYS), params=field_params())
def test_field_group_transform_on_spark_equals_polars_and_the_oracle(spark, rows, keys, params):
    from test_field import to_frame

    declared, out, got = run_field(rows, keys, params)
    assert_outputs_match(got, field_oracle(rows, keys, params), list(declared))
    spark_out, _ = on_spark(to_frame(rows), FIELD, params, keys)
    same_rows(spark_out, out)


def _peek_next(frame, params, ctx):
    """A third-party transform with only a Polars implementation that reads the next row."""
    return frame.sort(ctx.time_column).select(
        *ctx.keys, ctx.time_column, ctx.available_column,
        nxt=pl.col("value").shift(-1).over(list(ctx.keys)).cast(pl.Float64))


def _running_mean(frame, params, ctx):
    return frame.sort(ctx.time_column).select(
        *ctx.keys, ctx.time_column, ctx.available_column,
        mean=pl.col("value").cum_sum().over(list(ctx.keys)).cast(pl.Float64)
        / pl.col("value").cum_count().over(list(ctx.keys)).cast(pl.Float64))


PEEK = Transform("peek_next", _peek_next, lambda params, schema: {"nxt": pl.Float64})
MEAN = Transform("running_mean", _running_mean, lambda params, schema: {"mean": pl.Float64})


def third_party_input() -> pl.DataFrame:
    from datetime import UTC, datetime, timedelta

    t0 = datetime(2024, 5, 1, tzinfo=UTC)
    rows = [(d, t0 + timedelta(hours=h), t0 + timedelta(hours=h + d % 2), float(h * d))
            for d in (1, 2, 3) for h in range(6)]
    return pl.DataFrame(rows, schema={"driver_id": pl.Int64, "event_timestamp":
                                      pl.Datetime("us", "UTC"), "available_at":
                                      pl.Datetime("us", "UTC"), "value": pl.Float64},
                        orient="row")


@pytest.fixture
def by_value(spark):
    """Ship this module's transforms to the Python workers by value: an installed plugin is
    importable there, a test module is not."""
    import sys

    from pyspark import cloudpickle

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


def test_third_party_polars_transform_runs_per_entity_on_spark(by_value):
    from featurestore.engines.spark.materialize import _combine

    frame = third_party_input()
    spark_out, reports = on_spark(frame, MEAN, {}, ["driver_id"])
    polars_out = MEAN(frame.lazy(), {}, TransformContext(keys=("driver_id",))).collect()
    same_rows(spark_out, polars_out)
    verified, text, _ = _combine("v", reports, True)
    assert verified and "3 of 3 partitions proven" in text


def test_a_contract_breach_in_a_worker_is_a_plugin_error(by_value):
    undeclared = Transform("undeclared", lambda frame, params, ctx: frame,
                           lambda params, schema: {"x": pl.Float64})
    with pytest.raises(PluginError, match=r"'undeclared'.*undeclared column"):
        on_spark(third_party_input(), undeclared, {}, ["driver_id"])


def test_a_leaky_third_party_transform_is_caught_on_spark(by_value):
    from featurestore.engines.spark.materialize import _combine

    _, reports = on_spark(third_party_input(), PEEK, {}, ["driver_id"])
    with pytest.raises(LeakageError, match="peek_next"):
        _combine("v", reports, True)


@st.composite
def native_params(draw):
    """Rolling params (every one the native Spark path computes): row and time windows,
    every aggregation, indicators and where conditions."""
    specs = []
    for i in range(draw(st.integers(1, 2))):
        specs.append({
            "column": draw(st.sampled_from(["lap_time", "position", "pit"])),
            "windows": draw(st.lists(st.sampled_from([2, 3, 5, "all", "2m", "5m", "1h30s"]),
                                     min_size=1, max_size=2, unique=True)),
            "aggs": draw(st.lists(st.sampled_from(["count", "sum", "min", "max", "mean", "std"]),
                                  min_size=1, max_size=3, unique=True)),
            "include_current": draw(st.booleans()),
            "min_periods": draw(st.integers(1, 2)),
            "alias": f"s{i}",
        })
        if specs[-1]["column"] == "position" and draw(st.booleans()):
            specs[-1]["indicator"] = draw(st.sampled_from(INDICATORS))
        if draw(st.integers(0, 2)) == 0:
            where = draw(st.sampled_from(WHERES))
            if "column" in where or specs[-1]["column"] != "pit":
                specs[-1]["where"] = where
    return {"features": specs, "tie_break": draw(st.sampled_from([[], ["lap"]]))}


@FEW
@given(rows=lap_rows(), keys=st.sampled_from(KEY_CHOICES), params=native_params())
def test_native_rolling_on_spark_equals_polars_and_the_oracle(spark, rows, keys, params):
    from test_rolling import to_frame

    from featurestore.engines.spark.native import native_rolling
    from featurestore.engines.spark.session import to_polars, to_spark

    frame = to_frame(rows)
    declared, out, got = run_rolling(rows, keys, params)
    assert_outputs_match(got, rolling_oracle(rows, keys, params), list(declared))
    native = native_rolling(to_spark(frame), params, keys, dict(frame.schema))
    assert native is not None
    spark_out = to_polars(native)
    assert spark_out.schema == out.schema
    # Aligned on the rows' identity (keys and times are unique here only up to ties, whose
    # outputs are equal by the transform's ordering rule): compare sorted frames.
    assert_frame_equal(spark_out.sort(spark_out.columns, nulls_last=True),
                       out.sort(out.columns, nulls_last=True), rel_tol=1e-9, abs_tol=1e-9)


def test_native_values_are_verified_against_the_polars_reruns(spark):
    """``verify_output`` takes native values as the full run: correct ones are proven, a value
    that differs from what the Polars code computes on the truncated input is caught."""
    from pyspark.sql import functions as F

    from featurestore.engines.spark.materialize import _combine, verify_output
    from featurestore.engines.spark.native import native_rolling
    from featurestore.engines.spark.session import to_spark

    frame = third_party_input()
    params = {"column": "value", "windows": [2], "aggs": ["sum"], "include_current": True}
    sdf = to_spark(frame)
    native = native_rolling(sdf, params, ["driver_id"], dict(frame.schema))
    kw = {"view": "v", "plugin": "featurestore_plugins.rolling", "verify": True}
    good = verify_output(sdf, native, ROLLING, params, ["driver_id"], dict(frame.schema), **kw)
    assert _combine("v", good, True, native=True)[0]
    wrong = native.withColumn("value_sum_last_2", F.col("value_sum_last_2") + F.when(
        (F.col("driver_id") == 2) & (F.hour("event_timestamp") == 3), F.lit(1.0)).otherwise(0.0))
    bad = verify_output(sdf, wrong, ROLLING, params, ["driver_id"], dict(frame.schema), **kw)
    with pytest.raises(LeakageError, match="value_sum_last_2"):
        _combine("v", bad, True, native=True)


@FEW
@given(rows=field_rows(), keys=st.sampled_from(FIELD_KEYS), params=field_params())
def test_native_field_on_spark_equals_polars_and_the_oracle(spark, rows, keys, params):
    """Every ``field`` param runs as Spark window expressions, value for value the Polars
    transform's (itself checked against the brute-force oracle): nulls, NaN, ties, late rows."""
    from test_field import to_frame

    from featurestore.engines.spark.native_field import native_field
    from featurestore.engines.spark.session import to_polars, to_spark

    frame = to_frame(rows)
    declared, out, got = run_field(rows, keys, params)
    assert_outputs_match(got, field_oracle(rows, keys, params), list(declared))
    native = native_field(to_spark(frame), params, keys, dict(frame.schema))
    assert native is not None
    same_rows(to_polars(native).cast(dict(out.schema)), out)


def test_native_field_values_are_verified_per_group(spark):
    """``verify_output`` proves native field values per group, and catches one that differs."""
    from pyspark.sql import functions as F

    from featurestore.engines.spark.materialize import _combine, verify_output
    from featurestore.engines.spark.native_field import native_field
    from featurestore.engines.spark.session import to_spark

    frame = third_party_input().with_columns(lap=pl.col("event_timestamp").dt.hour(),
                                             race=pl.lit(1))
    params = {"group_by": ["race"], "at": ["lap"],
              "outputs": {"value_rank": {"kind": "rank", "column": "value"},
                          "value_delta_median": {"kind": "delta_median", "column": "value"}}}
    sdf = to_spark(frame)
    native = native_field(sdf, params, ["driver_id"], dict(frame.schema))
    kw = {"view": "v", "plugin": "featurestore_plugins.field", "verify": True}
    good = verify_output(sdf, native, FIELD, params, ["driver_id"], dict(frame.schema), **kw)
    assert _combine("v", good, True, native=True)[0]
    wrong = native.withColumn("value_delta_median", F.col("value_delta_median") + F.when(
        (F.col("driver_id") == 2) & (F.hour("event_timestamp") == 3), F.lit(1.0)).otherwise(0.0))
    bad = verify_output(sdf, wrong, FIELD, params, ["driver_id"], dict(frame.schema), **kw)
    with pytest.raises(LeakageError, match="value_delta_median"):
        _combine("v", bad, True, native=True)


@FEW
@given(rows=falloff_rows(), keys=st.sampled_from(KEY_CHOICES), params=falloff_params())
def test_native_falloff_on_spark_equals_polars_and_the_oracle(spark, rows, keys, params):
    """Every ``falloff`` param runs as Spark window expressions, value for value the Polars
    transform's (itself checked against the brute-force oracle): stints, jumps, cautions, nulls."""
    from test_falloff import to_frame

    from featurestore.engines.spark.native_falloff import native_falloff
    from featurestore.engines.spark.session import to_polars, to_spark

    frame = to_frame(rows)
    declared, out, got = run_falloff(rows, keys, params)
    assert_outputs_match(got, falloff_oracle(rows, keys, params), list(declared))
    spark_out = to_polars(native_falloff(to_spark(frame), params, keys, dict(frame.schema)))
    same_rows(spark_out.cast(dict(out.schema)), out)


def test_periods_spark_cannot_take_exactly_fall_back_to_the_polars_path():
    """A period in nanoseconds, or in days with a zoned event time (a calendar day in Polars),
    is not a fixed RANGE offset: the native path declines (None) and the view runs per entity."""
    from featurestore.engines.spark.native import _period_us

    utc = {"event_timestamp": pl.Datetime("us", "UTC")}
    paris = {"event_timestamp": pl.Datetime("us", "Europe/Paris")}
    assert _period_us("1h30s", utc) == (3600 + 30) * 1_000_000
    assert _period_us("1d", utc) == 86_400_000_000
    assert _period_us("1h", paris) == 3_600_000_000
    assert _period_us("1d", paris) is None
    assert _period_us("1500ns", utc) is None
    assert _period_us("1h", {"event_timestamp": pl.Datetime("ns", "UTC")}) is None
    assert _period_us("1h", {"event_timestamp": pl.Date()}) is None
