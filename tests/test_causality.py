"""Causality verification, the transform contract check, and the conformance kit."""

from __future__ import annotations

import math
import random
import types
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore.causality import check_contract, first_difference, plan_cuts, verify_causality
from featurestore.errors import DefinitionError, LeakageError, PluginError
from featurestore.testing import CHECKS, ConformanceError, assert_transform_conforms, sample_laps
from featurestore.transforms import Transform, TransformContext, entity_order

CTX = TransformContext(("driver_id",))
X = pl.col("lap_time_s")


def make(name, build, dtype=pl.Float64, *, sort=True, lookback=None, column="f"):
    """A transform computing ``build(keys)`` per row, after sorting in causal order."""

    def fn(frame, params, ctx):
        keys = list(ctx.keys)
        if sort:
            frame = frame.sort([*entity_order(ctx), "lap_time_s"], nulls_last=True)
        return frame.select(*keys, ctx.time_column, ctx.available_column,
                            build(keys).cast(dtype).alias(column))

    return Transform(name, fn, lambda params, schema: {column: dtype},
                     lookback=lambda params: lookback)


# Causal: the mean of the entity's earlier values (the current row excluded).
CAUSAL = make("expanding_mean", lambda k: (X.cum_sum().over(k) - X.fill_null(0))
              / (X.cum_count().over(k) - X.is_not_null().cast(pl.Int64)))
LEAKY = {
    "next_value": make("next_value", lambda k: X.shift(-1).over(k)),
    "centred_window": make("centred_window",
                           lambda k: X.rolling_mean(3, center=True, min_samples=1).over(k)),
    "whole_column_normalisation": make("whole_column_normalisation", lambda k: X - X.mean()),
    "backward_fill": make("backward_fill", lambda k: X.backward_fill().over(k)),
}


def laps(**kwargs):
    return sample_laps(**{"n_drivers": 8, "null_fraction": 0.3, **kwargs})


# --------------------------------------------------------------------------- leaks are caught


@pytest.mark.parametrize("name", LEAKY)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_leaky_transform_is_caught(name, seed):
    transform = LEAKY[name]
    frame = laps(seed=seed)
    with pytest.raises(LeakageError) as info:
        verify_causality(transform, {}, frame, CTX, seed=seed, view="lap_view",
                         plugin="leaky-plugin")
    err = info.value
    message = str(err)
    assert f"transform {name!r} (plugin 'leaky-plugin', view 'lap_view')" in message
    assert "feature 'f'" in message
    assert "driver_id=" in message and "event_timestamp=" in message
    assert "on the full input but" in message and "are removed" in message
    assert (err.transform, err.plugin, err.view, err.feature) == (name, "leaky-plugin",
                                                                  "lap_view", "f")
    assert set(err.row) == {"driver_id", "event_timestamp", "available_at"}
    assert err.row["available_at"] <= err.cut
    assert err.full_value != err.truncated_value


def test_leak_example_row_is_a_real_row_with_its_values():
    frame = laps()
    transform = LEAKY["next_value"]
    full = transform(frame.lazy(), {}, CTX).collect()
    with pytest.raises(LeakageError) as info:
        verify_causality(transform, {}, frame, CTX, output=full)
    err = info.value
    row = full.filter(pl.col("driver_id") == err.row["driver_id"],
                      pl.col("event_timestamp") == err.row["event_timestamp"])
    assert row["f"].to_list() == [err.full_value]
    assert err.truncated_value is None  # the next lap is gone, so shift(-1) gives null


def test_entity_mixing_is_named_as_such():
    with pytest.raises(LeakageError, match="mixes entities"):
        verify_causality(LEAKY["whole_column_normalisation"], {}, laps(), CTX)


def test_leak_through_a_changed_available_at_is_caught():
    # available_at becomes the entity's last one: the row "exists" at a different time.
    def fn(frame, params, ctx):
        return frame.select(*ctx.keys, ctx.time_column,
                            pl.col(ctx.available_column).max().over(ctx.keys),
                            pl.lit(1.0).alias("f"))

    transform = Transform("latest", fn, lambda p, s: {"f": pl.Float64})
    with pytest.raises(LeakageError, match=r"exists only in the (full|truncated) run"):
        verify_causality(transform, {}, laps(), CTX)


def test_leak_on_large_frame_is_caught_within_budget():
    frame = big_frame(n_entities=2000, per_entity=50)
    with pytest.raises(LeakageError):
        verify_causality(LEAKY["next_value"], {}, frame, CTX)


# --------------------------------------------------------------------------- causal passes


@pytest.mark.parametrize("kwargs", [
    {}, {"duplicate_times": True}, {"composite_key": True}, {"null_fraction": 0.0},
    {"n_drivers": 1}, {"n_races": 2, "laps_per_race": 2},
])
def test_causal_transform_passes(kwargs):
    frame = laps(**kwargs)
    ctx = TransformContext(("driver_id", "team_id")) if kwargs.get("composite_key") else CTX
    report = verify_causality(CAUSAL, {}, frame, ctx, view="v", plugin="p")
    assert report.transform == "expanding_mean" and report.features == ("f",)
    assert report.cuts >= 1 and report.cut_times >= 1 and report.mode == "exhaustive"
    assert report.cuts == report.candidates == sum(c for c, _ in report.categories.values())
    assert report.reruns >= 1 and report.rows_compared > 0 and report.verified
    assert report.units_checked == report.units_cuttable
    assert "causality verified (exhaustive, entity scope)" in str(report)


def test_including_the_current_row_is_causal():
    transform = make("cumulative_sum", lambda k: X.fill_null(0).cum_sum().over(k))
    verify_causality(transform, {}, laps(), CTX)


def test_nan_and_null_values_compare_equal():
    transform = make("nan_and_null", lambda k: pl.when(X.is_null()).then(float("nan"))
                     .when(X > 90).then(None).otherwise(X.cum_max().over(k)))
    verify_causality(transform, {}, laps(), CTX, samples=16)


def test_null_key_is_an_entity_like_any_other():
    frame = laps().with_columns(
        pl.when(pl.col("driver_id") == 2).then(None).otherwise(pl.col("driver_id"))
        .alias("driver_id"))
    report = verify_causality(CAUSAL, {}, frame, CTX)
    # Driver 8 has a single lap (nothing to cut); the null-keyed driver is cut like the others.
    assert report.units_checked == report.units_cuttable == 7 and report.units_total == 8
    assert plan_cuts(frame, CTX).pairs.get_column("driver_id").null_count() > 0
    with pytest.raises(LeakageError) as info:
        verify_causality(LEAKY["next_value"], {}, frame, CTX)
    assert "driver_id=" in str(info.value)


def test_nothing_to_cut():
    # Every row shares one available_at: every row may read every other, so nothing can leak
    # (even a "next value" is known as soon as the row is); that is a proof, not a sample.
    one_time = laps().with_columns(pl.lit(datetime(2024, 1, 1, tzinfo=UTC))
                                   .cast(pl.Datetime("us", "UTC")).alias("available_at"))
    report = verify_causality(LEAKY["next_value"], {}, one_time, CTX)
    assert report.cuts == 0 and report.rows_compared == 0 and report.mode == "trivial"
    assert report.verified and "no cut removes a row" in report.notes[0]
    assert str(report).startswith("causality verified (trivial")
    # One available_at per entity, a different one for each: only reading other entities'
    # rows could leak, and the isolation reruns check exactly that.
    per_entity = laps().with_columns(
        (pl.lit(datetime(2024, 1, 1, tzinfo=UTC)).cast(pl.Datetime("us", "UTC"))
         + pl.duration(days=pl.col("driver_id").fill_null(0))).alias("available_at"))
    report = verify_causality(LEAKY["next_value"], {}, per_entity, CTX)
    assert report.mode == "isolation" and report.verified and report.isolation_rows > 0
    assert str(report).startswith("causality verified (isolation")
    with pytest.raises(LeakageError, match="other entities' rows are removed"):
        verify_causality(LEAKY["whole_column_normalisation"], {}, per_entity, CTX)
    report = verify_causality(CAUSAL, {}, laps().head(0), CTX)
    assert report.cuts == 0 and report.reruns == 0 and not report.verified
    assert report.mode == "none" and str(report).startswith("NOT VERIFIED")
    assert any("no rows" in note for note in report.notes)


def test_rerun_failure_is_a_plugin_error():
    frame = laps()

    def fn(frame_, params, ctx):
        n = frame_.select(pl.len()).collect().item()
        if n != frame.height:
            raise RuntimeError(f"needs {frame.height} rows")
        return frame_.select(*ctx.keys, ctx.time_column, ctx.available_column,
                             pl.lit(1.0).alias("f"))

    transform = Transform("picky", fn, lambda p, s: {"f": pl.Float64})
    with pytest.raises(PluginError, match="'picky' failed on the input truncated for causality "
                                          f"verification: RuntimeError: needs {frame.height} rows"):
        verify_causality(transform, {}, frame, CTX)


def test_one_wrapper_names_a_crashing_transform_everywhere(tmp_path):
    """Verification, the conformance kit and the contract helper report a crash the same way,
    and a featurestore error the transform raises on purpose passes through unchanged."""
    from featurestore.contract import run_transform
    from featurestore.errors import DataError

    def crash(frame_, params, ctx):
        raise ValueError("boom")

    def refuses(frame_, params, ctx):
        raise DataError("column 'x' is empty")

    crashing = Transform("crashing", crash, lambda p, s: {"f": pl.Float64})
    refusing = Transform("refusing", refuses, lambda p, s: {"f": pl.Float64})
    frame = laps()
    with pytest.raises(PluginError, match=r"^transform 'crashing' failed on the full input: "
                                          r"ValueError: boom$"):
        verify_causality(crashing, {}, frame, CTX)
    with pytest.raises(ConformanceError, match=r"^\[contract\] transform 'crashing' failed: "
                                               "ValueError: boom$"):
        assert_transform_conforms(crashing, {}, frame)
    with pytest.raises(DataError, match=r"^column 'x' is empty$"):
        verify_causality(refusing, {}, frame, CTX)
    with pytest.raises(DataError, match=r"^column 'x' is empty$"):
        run_transform(refusing, {}, frame, CTX, "transform 'refusing'")
    with pytest.raises(PluginError, match=r"returned builtins\.int, expected a polars LazyFrame"):
        run_transform(Transform("num", lambda f, p, c: 1, lambda p, s: {}), {}, frame, CTX,
                      "transform 'num'", collect_output=True)


def big_frame(n_entities: int, per_entity: int, seed: int = 1) -> pl.DataFrame:
    start = datetime(2020, 1, 1, tzinfo=UTC)
    return pl.DataFrame({"driver_id": pl.int_range(n_entities * per_entity, eager=True)
                         // per_entity}).with_columns(
        event_timestamp=pl.lit(start) + pl.duration(
            hours=pl.int_range(pl.len()) % per_entity + pl.col("driver_id") % 7),
        lap_time_s=(pl.int_range(pl.len()).cast(pl.Float64) * 0.7).sin() + 90,
    ).with_columns(available_at=pl.col("event_timestamp") + pl.duration(minutes=2)).sample(
        fraction=1.0, shuffle=True, seed=seed)


def test_verification_stays_within_its_budget_and_cuts_every_entity():
    frame = big_frame(n_entities=2000, per_entity=50)
    output = CAUSAL(frame.lazy(), {}, CTX).collect()
    budget = 200_000
    report = verify_causality(CAUSAL, {}, frame, CTX, output=output, budget=budget)
    assert report.mode == "targeted" and report.exhaustive_rows > budget
    assert report.units_checked == report.units_total == 2000  # every entity cut
    assert report.categories["first"] == (2000, 2000)
    # The cuts' own rows fit the budget (beyond the mandatory first cuts and the samples); the
    # isolation rerun adds at most 5 % of it.
    assert report.rows_recomputed - report.isolation_rows <= budget
    assert report.isolation_rows <= 0.05 * budget
    assert report.cuts > 2000 + report.samples  # many (entity, cut) pairs ...
    assert report.reruns <= 6  # ... in a few reruns


# --------------------------------------------------------------------------- exactness


def naive_mixing(transform, frame, ctx) -> bool:
    """Brute force: does some entity computed alone differ from the full run?"""
    full = transform(frame.lazy(), {}, ctx).collect()
    for (key,), part in frame.group_by(ctx.keys):
        alone = transform(part.lazy(), {}, ctx).collect()
        if first_difference(full.filter(pl.col("driver_id") == key), alone,
                            [*ctx.keys, ctx.time_column, ctx.available_column], ["f"]):
            return True
    return False


def naive_leak(transform, frame, ctx) -> bool:
    """Brute force: every distinct available_at, the whole input truncated, every row compared."""
    full = transform(frame.lazy(), {}, ctx).collect()
    ids = [*ctx.keys, ctx.time_column, ctx.available_column]
    for t in frame["available_at"].unique().sort().to_list()[:-1]:
        out = transform(frame.filter(pl.col("available_at") <= t).lazy(), {}, ctx).collect()
        a = {r[:-1]: r[-1] for r in full.filter(pl.col("available_at") <= t)
             .select(*ids, "f").rows()}
        b = {r[:-1]: r[-1] for r in out.filter(pl.col("available_at") <= t)
             .select(*ids, "f").rows()}
        for key, value in a.items():
            other = b.get(key)
            if value is None or other is None:
                if (value is None) != (other is None):
                    return True
            elif not (value == other or (math.isnan(value) and math.isnan(other))
                      or abs(value - other) <= 1e-12 + 1e-9 * max(abs(value), abs(other))):
                return True
    return False


@st.composite
def entity_frames(draw):
    n = draw(st.integers(1, 40))
    start = datetime(2024, 1, 1, tzinfo=UTC)
    rows = []
    used = set()
    for _ in range(n):
        driver = draw(st.integers(1, 4))
        minute = draw(st.integers(0, 30))
        if (driver, minute) in used:
            continue
        used.add((driver, minute))
        lag = draw(st.sampled_from([0, 5, 60]))
        value = draw(st.none() | st.floats(80, 100, allow_nan=False))
        t = start + timedelta(minutes=minute)
        # Some rows published at once at minute 40, the way a whole session is.
        available = start + timedelta(minutes=40) if lag == 60 else t + timedelta(minutes=lag)
        rows.append((driver, t, available, value))
    return pl.DataFrame(rows, schema={"driver_id": pl.Int64,
                                      "event_timestamp": pl.Datetime("us", "UTC"),
                                      "available_at": pl.Datetime("us", "UTC"),
                                      "lap_time_s": pl.Float64}, orient="row")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=entity_frames(), name=st.sampled_from(["expanding_mean", *LEAKY]),
       seed=st.integers(0, 3))
def test_exhaustive_verification_agrees_with_brute_force(frame, name, seed):
    """Exhaustive verification raises exactly when truncating the whole input at some distinct
    available_at changes a remaining row, or (for a transform that reads other entities, which
    the entity scope forbids) when an entity computed alone differs from the full run."""
    transform = CAUSAL if name == "expanding_mean" else LEAKY[name]
    expected = naive_leak(transform, frame, CTX)
    try:
        report = verify_causality(transform, {}, frame, CTX, budget=math.inf, seed=seed)
        assert report.mode in ("exhaustive", "isolation", "trivial", "none")
        found, message = False, ""
    except LeakageError as exc:
        found, message = True, str(exc)
    if name == "whole_column_normalisation" and not expected:
        # Found only because it reads other entities: then it must say so, and it must be true.
        assert found == naive_mixing(transform, frame, CTX) or not found
        assert not found or "mixes entities" in message
    else:
        assert found == expected


# Causal whatever the data: earlier rows in order of availability, not of event time.
BY_AVAILABILITY = Transform(
    "expanding_mean_by_availability",
    lambda frame, params, ctx: frame.sort(
        [*ctx.keys, ctx.available_column, ctx.time_column, "lap_time_s"], nulls_last=True)
    .select(*ctx.keys, ctx.time_column, ctx.available_column,
            ((X.cum_sum().over(ctx.keys) - X.fill_null(0))
             / (X.cum_count().over(ctx.keys) - X.is_not_null().cast(pl.Int64))).alias("f")),
    lambda params, schema: {"f": pl.Float64})


@settings(max_examples=25, deadline=None)
@given(frame=entity_frames(), seed=st.integers(0, 100))
def test_sampled_verification_never_flags_a_causal_transform(frame, seed):
    verify_causality(BY_AVAILABILITY, {}, frame, CTX, seed=seed, samples=seed % 4,
                     budget=seed * 3)


def test_event_time_order_leaks_when_availability_is_not_monotone():
    """A lap recorded first but published last must not reach the laps published before it."""
    t0 = datetime(2024, 1, 1, tzinfo=UTC)
    frame = pl.DataFrame({
        "driver_id": [1, 1],
        "event_timestamp": [t0, t0 + timedelta(minutes=1)],
        "available_at": [t0 + timedelta(hours=1), t0 + timedelta(minutes=1)],
        "lap_time_s": [80.0, 81.0],
    }, schema_overrides={"event_timestamp": pl.Datetime("us", "UTC"),
                         "available_at": pl.Datetime("us", "UTC")})
    with pytest.raises(LeakageError, match=r"feature 'f'.* is 80.0 on the full input but nan"):
        verify_causality(CAUSAL, {}, frame, CTX)
    verify_causality(BY_AVAILABILITY, {}, frame, CTX)


# --------------------------------------------------------------------------- first_difference


def test_first_difference_tolerances_and_duplicates():
    ids = ["k", "t"]
    a = pl.DataFrame({"k": [1, 1, 2], "t": [1, 1, 2], "v": [1.0, 2.0, float("nan")]})
    b = pl.DataFrame({"k": [2, 1, 1], "t": [2, 1, 1], "v": [float("nan"), 2.0, 1.0 + 1e-12]})
    assert first_difference(a, b, ids, ["v"]) is None  # duplicates paired by value, NaN == NaN
    assert first_difference(a, b, ids, ["v"], rtol=0.0, atol=0.0)["feature"] == "v"
    c = b.with_columns(pl.when(pl.col("k") == 2).then(3.0).otherwise(pl.col("v")).alias("v"))
    diff = first_difference(a, c, ids, ["v"])
    assert diff["feature"] == "v" and diff["row"] == {"k": 2, "t": 2}
    assert math.isnan(diff["left"]) and diff["right"] == 3.0


def test_first_difference_missing_rows_and_nulls():
    ids = ["k", "t"]
    a = pl.DataFrame({"k": [1, 2, None], "t": [1, 2, 3], "v": [None, 2.0, 3.0]})
    assert first_difference(a, a.reverse(), ids, ["v"]) is None  # null == null, null keys too
    missing = first_difference(a, a.head(2), ids, ["v"])
    assert missing == {"row": {"k": None, "t": 3}, "feature": None, "left": True, "right": False}
    nulled = first_difference(a, a.with_columns(pl.lit(None, pl.Float64).alias("v")), ids, ["v"])
    assert nulled == {"row": {"k": 2, "t": 2}, "feature": "v", "left": 2.0, "right": None}


# --------------------------------------------------------------------------- check_contract


def passthrough(extra=None, declared=None):
    """A transform returning the keys and times plus ``extra`` expressions."""
    extra = extra if extra is not None else [pl.lit(1.0).alias("f")]
    declared = declared if declared is not None else {"f": pl.Float64}

    def fn(frame, params, ctx):
        return frame.select(*ctx.keys, ctx.time_column, ctx.available_column, *extra)

    return Transform("broken_plugin_t", fn, lambda p, s: dict(declared))


def contract(transform, frame=None, result=None):
    frame = laps() if frame is None else frame
    result = transform(frame.lazy(), {}, CTX) if result is None else result
    return check_contract(transform, {}, frame, result, CTX, plugin="bp")


def test_contract_passes_and_returns_the_collected_output():
    frame = laps()
    out = contract(CAUSAL, frame)
    assert isinstance(out, pl.DataFrame) and out.height == frame.height
    assert contract(CAUSAL, frame, CAUSAL(frame.lazy(), {}, CTX).collect()).equals(out)


def test_pandas_like_return_is_rejected():
    fake_pandas = types.new_class("DataFrame")
    fake_pandas.__module__ = "pandas.core.frame"
    with pytest.raises(PluginError, match=r"transform 'broken_plugin_t' \(plugin 'bp'\) returned "
                                          r"pandas\.core\.frame\.DataFrame, expected a polars "
                                          "LazyFrame"):
        contract(passthrough(), result=fake_pandas())
    with pytest.raises(PluginError, match=r"returned types\.SimpleNamespace"):
        contract(passthrough(), result=types.SimpleNamespace())


@pytest.mark.parametrize("extra, declared, message", [
    ([pl.lit(1).alias("f")], {"f": pl.Float64}, "column f is Int32, declared Float64"),
    ([], {"f": pl.Float64}, "missing column(s) f (Float64)"),
    ([pl.lit(1.0).alias("f"), pl.lit("x").alias("g")], {"f": pl.Float64},
     "undeclared column(s) g (String)"),
])
def test_wrong_schema_is_rejected(extra, declared, message):
    with pytest.raises(PluginError) as info:
        contract(passthrough(extra, declared))
    assert "output schema differs from the declared one" in str(info.value)
    assert message in str(info.value)


def test_dropped_key_column_is_rejected():
    def fn(frame, params, ctx):
        return frame.select(ctx.time_column, ctx.available_column, pl.lit(1.0).alias("f"))

    transform = Transform("no_keys", fn, lambda p, s: {"f": pl.Float64})
    with pytest.raises(PluginError, match=r"missing column\(s\) driver_id \(Int64\)"):
        contract(transform)


def test_changed_time_dtype_is_rejected():
    def fn(frame, params, ctx):
        return frame.select(*ctx.keys, pl.col(ctx.time_column).dt.cast_time_unit("ns"),
                            ctx.available_column, pl.lit(1.0).alias("f"))

    with pytest.raises(PluginError, match="column event_timestamp is Datetime"):
        contract(Transform("ns", fn, lambda p, s: {"f": pl.Float64}))


@pytest.mark.parametrize("change, message", [
    (lambda lf: lf.filter(pl.col("lap") != 3), r"returned \d+ row\(s\) for \d+ input row\(s\)"),
    (lambda lf: pl.concat([lf, lf.head(1)]), r"returned \d+ row\(s\) for \d+ input row\(s\)"),
    (lambda lf: lf.with_columns(pl.col("driver_id") + 100), "keys/event times"),
    (lambda lf: lf.with_columns(pl.when(pl.col("driver_id") == 1).then(2)
                                .otherwise(pl.col("driver_id")).alias("driver_id")),
     "keys/event times"),
    (lambda lf: lf.with_columns(pl.col("event_timestamp") + pl.duration(seconds=1)),
     "keys/event times"),
    (lambda lf: lf.with_columns(pl.col("available_at") - pl.duration(hours=1)),
     "moved available_at earlier"),
    (lambda lf: lf.with_columns(pl.col("available_at") + pl.duration(hours=1)),
     "changed available_at"),
])
def test_rows_keys_and_times_must_be_preserved(change, message):
    def fn(frame, params, ctx):
        out = frame.select(*ctx.keys, ctx.time_column, ctx.available_column, "lap",
                           pl.lit(1.0).alias("f"))
        return change(out).drop("lap")

    transform = Transform("mangler", fn, lambda p, s: {"f": pl.Float64})
    with pytest.raises(PluginError, match=message):
        contract(transform)


def test_invented_keys_name_the_row():
    with pytest.raises(PluginError) as info:
        contract(passthrough([pl.lit(1.0).alias("f")]),
                 result=laps().lazy().select(
                     pl.col("driver_id") + 100, "event_timestamp", "available_at",
                     pl.lit(1.0).alias("f")))
    text = str(info.value)
    assert "driver_id=" in text and "event_timestamp=" in text and "time(s)" in text


def test_bad_params_and_bad_declarations():
    def raise_value(params, schema):
        raise ValueError("'column' is required")

    def raise_type(params, schema):
        raise TypeError("oops")

    fn = passthrough().fn
    with pytest.raises(DefinitionError, match="rejected its params: 'column' is required"):
        contract(Transform("needs_params", fn, raise_value), result=pl.LazyFrame())
    with pytest.raises(PluginError, match="output_columns raised TypeError: oops"):
        contract(Transform("buggy", fn, raise_type), result=pl.LazyFrame())
    with pytest.raises(PluginError, match="would overwrite the keys or times"):
        contract(Transform("overwrites", fn, lambda p, s: {"available_at": pl.Float64}),
                 result=pl.LazyFrame())


def test_failing_lazy_output_is_a_plugin_error():
    def fn(frame, params, ctx):
        return frame.select(*ctx.keys, ctx.time_column, ctx.available_column,
                            pl.col("compound").cast(pl.Float64, strict=True).alias("f"))

    with pytest.raises(PluginError, match=r"'bad_cast' .*failed"):
        contract(Transform("bad_cast", fn, lambda p, s: {"f": pl.Float64}))


# --------------------------------------------------------------------------- the kit


def test_sample_laps_has_the_awkward_cases():
    frame = sample_laps()
    assert frame.schema["event_timestamp"] == pl.Datetime("us", "UTC")
    assert frame.columns[:3] == ["driver_id", "event_timestamp", "available_at"]
    assert frame["lap_time_s"].null_count() > 0
    assert not frame.equals(frame.sort(["driver_id", "event_timestamp"]))  # shuffled
    per_driver = frame.group_by("driver_id").len()
    assert per_driver["len"].min() == 1  # a driver with a single lap
    assert frame.group_by("driver_id", "available_at").len()["len"].max() > 1  # shared times
    assert (frame["available_at"] >= frame["event_timestamp"]).all()
    assert sample_laps(seed=4).equals(sample_laps(seed=4))
    assert "team_id" in sample_laps(composite_key=True).columns
    dup = sample_laps(duplicate_times=True)
    assert dup.select(pl.struct("driver_id", "event_timestamp", "available_at")
                      .is_duplicated().any()).item()
    ordered = sample_laps(shuffle=False)
    assert ordered.equals(ordered.sort(["driver_id", "event_timestamp", "available_at"]))


def test_kit_passes_a_conforming_transform():
    out = assert_transform_conforms(CAUSAL, {}, laps())
    assert out.columns == ["driver_id", "event_timestamp", "available_at", "f"]
    transform = make("previous", lambda k: X.shift(1).over(k), lookback=1)
    assert_transform_conforms(transform, {}, sample_laps(composite_key=True, seed=5),
                              keys=("driver_id", "team_id"))


def _returns_eager(frame, params, ctx):
    return CAUSAL.fn(frame, params, ctx).collect()


def _random_noise(frame, params, ctx):
    return frame.select(*ctx.keys, ctx.time_column, ctx.available_column,
                        pl.lit(random.random()).alias("f"))


def _input_order(frame, params, ctx):  # numbers rows in input order, no sort
    return frame.select(*ctx.keys, ctx.time_column, ctx.available_column,
                        pl.int_range(pl.len()).over(ctx.keys).cast(pl.Float64).alias("f"))


def _one_row_when_empty(frame, params, ctx):
    out = CAUSAL.fn(frame, params, ctx)
    return out.collect().pipe(
        lambda df: df if df.height else pl.DataFrame({"driver_id": [1]}).join(
            df, how="cross")).lazy()


def _bad_declaration(params, schema):
    raise ValueError("'column' is required")


KIT_FAILURES = {
    "params": Transform("t", CAUSAL.fn, _bad_declaration),
    "contract": Transform("t", CAUSAL.fn, lambda p, s: {"f": pl.Float32}),
    "lazy": Transform("t", _returns_eager, CAUSAL.output_columns),
    "determinism": Transform("t", _random_noise, CAUSAL.output_columns),
    "unsorted": Transform("t", _input_order, CAUSAL.output_columns),
    "empty": Transform("t", _one_row_when_empty, CAUSAL.output_columns),
    # Causal in time, but relative to the other drivers at the same time: mixes entities.
    "isolation": make("t", lambda k: X - X.mean().over("available_at")),
    "causality": LEAKY["next_value"],
    "lookback": make("t", lambda k: X.fill_null(0).cum_sum().over(k), lookback=2),
}


@pytest.mark.parametrize("check", KIT_FAILURES)
def test_kit_names_the_failed_check(check):
    assert check in CHECKS
    with pytest.raises(ConformanceError) as info:
        assert_transform_conforms(KIT_FAILURES[check], {}, laps())
    assert info.value.check == check, str(info.value)
    assert str(info.value).startswith(f"[{check}] ")
    assert isinstance(info.value, AssertionError)
