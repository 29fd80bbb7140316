"""Tests for the ``falloff`` transform: oracle comparisons, properties, schema, params."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from featurestore_plugins import falloff as falloff_module
from featurestore_plugins.falloff import FALLOFF, KINDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from featurestore.transforms import TransformContext

try:
    from oracles_transforms import (
        AV,
        TS,
        TransformUnderTest,
        assert_outputs_match,
        falloff_oracle,
        falloff_order,
        load_benchmark_module,
    )
except ImportError:  # tests/ imported as a package
    from tests.oracles_transforms import (
        AV,
        TS,
        TransformUnderTest,
        assert_outputs_match,
        falloff_oracle,
        falloff_order,
        load_benchmark_module,
    )

T0 = datetime(2024, 2, 18, 19, 0, tzinfo=UTC)
SCHEMA = {
    "driver_id": pl.Int32(),
    "series": pl.String(),
    TS: pl.Datetime("us", "UTC"),
    AV: pl.Datetime("us", "UTC"),
    "race_id": pl.Int32(),
    "lap": pl.Int32(),
    "lap_time": pl.Float64(),
    "pit": pl.Boolean(),
    "caution": pl.Boolean(),
}
KEY_CHOICES = [["driver_id"], ["driver_id", "series"]]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------ generators


def _pick(one_in: int, strategy: st.SearchStrategy, other: object) -> st.SearchStrategy:
    """``strategy`` with probability 1/one_in, else ``other``."""
    return st.tuples(st.integers(1, one_in), strategy).map(lambda t: t[1] if t[0] == 1 else other)


@st.composite
def lap_rows(draw: st.DrawFn, max_rows: int = 40) -> list[dict]:
    """Laps of up to 3 drivers, unsorted and interleaved: ties in time, missing and null laps,
    null/NaN lap times, slow laps, pit and caution flags (sometimes null)."""
    rows = []
    for _ in range(draw(st.integers(0, max_rows))):
        ts = T0 + timedelta(minutes=draw(st.integers(0, 25)))
        lap_time = draw(
            st.one_of(
                st.integers(120, 130).map(lambda v: v / 4),  # racing pace, 30.0 .. 32.5
                st.integers(120, 130).map(lambda v: v / 4),
                st.integers(130, 180).map(lambda v: v / 4),  # slow laps
                _pick(3, st.just(math.nan), None),
            )
        )
        rows.append(
            {
                "driver_id": draw(st.integers(1, 3)),
                "series": draw(st.sampled_from(["cup", "truck"])),
                TS: ts,
                AV: ts + timedelta(minutes=draw(st.integers(0, 1))),
                "race_id": draw(
                    _pick(8, st.none(), 1).flatmap(
                        lambda v: st.just(v) if v is None else st.integers(1, 2)
                    )
                ),
                "lap": draw(
                    _pick(10, st.none(), 0).flatmap(
                        lambda v: st.just(v) if v is None else st.integers(1, 40)
                    )
                ),
                "lap_time": lap_time,
                "pit": draw(_pick(6, st.sampled_from([True, None]), False)),
                "caution": draw(_pick(5, st.sampled_from([True, True, None]), False)),
            }
        )
    return rows


@st.composite
def falloff_params(draw: st.DrawFn) -> dict:
    params: dict = {}
    for key, value in (
        ("lap_column", "lap"),
        ("pit_column", "pit"),
        ("caution_column", "caution"),
        ("group_by", ["race_id"]),
    ):
        if draw(st.booleans()):
            params[key] = value
    if draw(st.booleans()):
        params["jump_seconds"] = draw(st.sampled_from([1, 2.5, 6.0]))
    if draw(st.booleans()):
        params["first_n"] = draw(st.integers(1, 4))
    if draw(st.booleans()):
        params["first_n_partial"] = draw(st.booleans())
    if draw(st.booleans()):
        params["slope_window"] = draw(st.integers(2, 5))
        if draw(st.booleans()):
            params["slope_min_laps"] = draw(st.integers(2, params["slope_window"]))
    if draw(st.booleans()):
        params["slow_k"] = draw(st.sampled_from([1.0, 1.02, 1.2]))
    if draw(st.booleans()):
        params["slow_window"] = draw(st.integers(1, 4))
        params["slow_min_laps"] = draw(st.integers(1, params["slow_window"]))
    choice = draw(st.integers(0, 3))
    if choice == 1:
        params["outputs"] = draw(st.lists(st.sampled_from(list(KINDS)), min_size=1, unique=True))
        params["prefix"] = "fo_"
    elif choice == 2:
        kinds = draw(st.lists(st.sampled_from(list(KINDS)), min_size=1, unique=True))
        params["outputs"] = {kind: f"my_{kind}" for kind in kinds}
    return params


def to_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA)


UNDER_TEST = TransformUnderTest(FALLOFF, SCHEMA, falloff_order, falloff_oracle)


def run(rows: list[dict], keys: list[str], params: dict, frame: pl.DataFrame | None = None):
    """Run the transform; return (declared schema, output frame, outputs in input order)."""
    return UNDER_TEST.run(rows, keys, params, frame)


# ------------------------------------------------------------------------ oracle comparisons


@SETTINGS
@given(rows=lap_rows(), keys=st.sampled_from(KEY_CHOICES), params=falloff_params())
def test_matches_oracle(rows: list[dict], keys: list[str], params: dict) -> None:
    UNDER_TEST.check_matches_oracle(rows, keys, params)


@SETTINGS
@given(
    rows=lap_rows(),
    keys=st.sampled_from(KEY_CHOICES),
    params=falloff_params(),
    cut=st.floats(0, 1),
    inside_tie=st.booleans(),
)
def test_causal_truncation(
    rows: list[dict], keys: list[str], params: dict, cut: float, inside_tie: bool
) -> None:
    UNDER_TEST.check_causal_truncation(rows, keys, params, cut, inside_tie)


@SETTINGS
@given(
    rows=lap_rows(),
    keys=st.sampled_from(KEY_CHOICES),
    params=falloff_params(),
    seed=st.integers(0, 2**32 - 1),
)
def test_input_order_irrelevant(rows: list[dict], keys: list[str], params: dict, seed: int) -> None:
    UNDER_TEST.check_input_order_irrelevant(rows, keys, params, seed)


def test_empty_input() -> None:
    params = {"lap_column": "lap", "pit_column": "pit", "jump_seconds": 3, "group_by": ["race_id"]}
    declared, out, got = run([], ["driver_id", "series"], params)
    assert out.height == 0 and got == []
    assert dict(out.schema) == {
        "driver_id": pl.Int32(),
        "series": pl.String(),
        TS: SCHEMA[TS],
        AV: SCHEMA[AV],
        **declared,
    }


def test_benchmark_data_matches_oracle_and_hand_written() -> None:
    bench = load_benchmark_module()
    laps = bench.make_laps(4_000, 5, seed=11)
    params = bench.falloff_params()
    rows = laps.to_dicts()
    declared, out, got = run(rows, ["driver_id"], params, frame=laps)
    assert_outputs_match(got, falloff_oracle(rows, ["driver_id"], params), list(declared))
    assert out["stint"].max() > 3 and out["slow_lap"].sum() > 0  # the data exercises stints
    hand = bench.hand_falloff(laps.lazy()).collect()
    assert_frame_equal(out.select(hand.columns), hand, rel_tol=1e-9, abs_tol=1e-9)


# ------------------------------------------------------------------------ hand-checked cases


def _laps(lap_times: list, **columns: list) -> list[dict]:
    rows = []
    for i, lap_time in enumerate(lap_times):
        ts = T0 + timedelta(seconds=31 * i)
        row = dict.fromkeys(SCHEMA)
        row.update(
            {"driver_id": 1, "series": "cup", TS: ts, AV: ts, "lap": i + 1, "lap_time": lap_time}
        )
        for name, values in columns.items():
            row[name] = values[i]
        rows.append(row)
    return rows


def test_pit_stints_by_hand() -> None:
    rows = _laps(
        [30.0, 30.5, 31.0, 50.0, 30.0, 30.0, 31.5],
        pit=[False, False, False, True, False, False, False],
    )
    params = {
        "pit_column": "pit",
        "first_n": 2,
        "slope_window": 3,
        "slope_min_laps": 2,
        "slow_k": 1.02,
        "slow_window": 2,
    }
    _, out, _ = run(rows, ["driver_id"], params)
    assert out["stint"].to_list() == [1, 1, 1, 2, 2, 2, 2]
    assert out["tyre_age"].to_list() == [1, 2, 3, 1, 2, 3, 4]
    assert out["lap_time_delta_best"].to_list() == [0.0, 0.5, 1.0, None, 0.0, 0.0, 1.5]
    assert out["lap_time_delta_first_n"].to_list() == [None, 0.25, 0.75, None, None, 0.0, 1.5]
    # slope over (1, 30), (2, 30.5), (3, 31): 0.5 s/lap; stint 2 clean laps (2, 30), (3, 30)
    # and (4, 31.5): slope 0.75
    assert out["deg_slope"].to_list() == pytest.approx([None, 0.5, 0.5, None, None, 0.0, 0.75])
    # 31.5 > 1.02 * median(30, 30) = 30.6; 31.0 > 1.02 * median(30, 30.5) = 30.855
    assert out["slow_lap"].to_list() == [None, False, True, None, None, False, True]


def test_jump_rule_and_caution_by_hand() -> None:
    rows = _laps(
        [30.0, 30.5, 40.0, 31.0, 55.0, 31.2], caution=[False, False, False, False, True, False]
    )
    params = {"jump_seconds": 5, "caution_column": "caution", "outputs": ["stint", "tyre_age"]}
    _, out, _ = run(rows, ["driver_id"], params)
    # lap 3 is 9.5 s slower than lap 2: a stop; lap 5 is a caution lap, so it is not
    assert out["stint"].to_list() == [1, 1, 2, 2, 2, 2]
    assert out["tyre_age"].to_list() == [1, 2, 1, 2, 3, 4]


def test_consecutive_pit_laps_are_one_stop() -> None:
    rows = _laps([30.0, 45.0, 44.0, 30.0], pit=[False, True, True, False])
    _, out, _ = run(rows, ["driver_id"], {"pit_column": "pit", "outputs": ["stint"]})
    assert out["stint"].to_list() == [1, 2, 2, 2]


def test_one_lap_stints() -> None:
    rows = _laps([30.0, 50.0, 31.0, 52.0], pit=[False, True, False, True])
    _, out, _ = run(rows, ["driver_id"], {"pit_column": "pit", "slope_min_laps": 2})
    assert out["stint"].to_list() == [1, 2, 2, 3]
    assert out["tyre_age"].to_list() == [1, 1, 2, 1]
    assert out["lap_time_delta_best"].to_list() == [0.0, None, 0.0, None]
    assert out["deg_slope"].to_list() == [None, None, None, None]
    assert out["slow_lap"].to_list() == [None, None, None, None]


def test_tyre_age_counts_missing_laps_with_lap_column() -> None:
    rows = _laps([30.0, 30.1, 30.2, 30.3])
    for row, lap in zip(rows, [1, 2, 5, 6], strict=True):
        row["lap"] = lap
    _, out, _ = run(rows, ["driver_id"], {"lap_column": "lap", "outputs": ["tyre_age"]})
    assert out["tyre_age"].to_list() == [1, 2, 5, 6]
    _, out, _ = run(rows, ["driver_id"], {"outputs": ["tyre_age"]})
    assert out["tyre_age"].to_list() == [1, 2, 3, 4]


def test_group_by_separates_races() -> None:
    rows = _laps([30.0, 30.4, 29.0, 29.5], race_id=[1, 1, 2, 2])
    _, out, _ = run(
        rows, ["driver_id"], {"group_by": ["race_id"], "outputs": ["tyre_age", "delta_best"]}
    )
    assert out["tyre_age"].to_list() == [1, 2, 1, 2]
    assert out["lap_time_delta_best"].to_list() == pytest.approx([0.0, 0.4, 0.0, 0.5])


def test_first_n_partial() -> None:
    rows = _laps([30.0, 31.0, 32.0])
    params = {"first_n": 3, "first_n_partial": True, "outputs": ["delta_first_n"]}
    _, out, _ = run(rows, ["driver_id"], params)
    assert out["lap_time_delta_first_n"].to_list() == [0.0, 0.5, 1.0]


# ---------------------------------------------------------------------------------- schema


def test_output_dtypes_with_integer_inputs() -> None:
    rows = _laps([30, 31, 60, 30], pit=[0, 0, 1, 0], caution=[0, 1, 0, 0])
    frame = pl.DataFrame(
        rows,
        schema={
            **SCHEMA,
            "lap_time": pl.Int16(),
            "pit": pl.UInt8(),
            "caution": pl.Int64(),
            "lap": pl.UInt16(),
        },
    )
    params = {
        "pit_column": "pit",
        "caution_column": "caution",
        "lap_column": "lap",
        "prefix": "fo_",
    }
    declared, out, got = run(rows, ["driver_id"], params, frame=frame)
    assert declared == {
        "fo_stint": pl.Int32(),
        "fo_tyre_age": pl.Int32(),
        "fo_lap_time_delta_best": pl.Float64(),
        "fo_lap_time_delta_first_n": pl.Float64(),
        "fo_deg_slope": pl.Float64(),
        "fo_slow_lap": pl.Boolean(),
    }
    assert dict(out.schema) == {"driver_id": pl.Int32(), TS: SCHEMA[TS], AV: SCHEMA[AV], **declared}
    assert_outputs_match(got, falloff_oracle(rows, ["driver_id"], params), list(declared))


def test_lookback_is_unbounded() -> None:
    assert FALLOFF.lookback({"pit_column": "pit"}) is None


def test_registers_through_the_hook() -> None:
    registered = []
    falloff_module.register_transforms(register=registered.append)
    assert registered == [FALLOFF] and FALLOFF.name == "falloff"


# ------------------------------------------------------------------------------ bad params

BAD_PARAMS = [
    ({"pit_col": "pit"}, "'pit_col'"),
    ({"lap_time_column": 5}, "'lap_time_column'"),
    ({"lap_time_column": "nope"}, "'lap_time_column'"),
    ({"lap_time_column": "series"}, "'lap_time_column'"),
    ({"lap_column": "lap_time"}, "'lap_column'"),
    ({"pit_column": "lap_time"}, "'pit_column'"),
    ({"caution_column": "nope"}, "'caution_column'"),
    ({"jump_seconds": 0}, "'jump_seconds'"),
    ({"jump_seconds": "5"}, "'jump_seconds'"),
    ({"jump_seconds": True}, "'jump_seconds'"),
    ({"group_by": "race_id"}, "'group_by'"),
    ({"group_by": ["nope"]}, "'group_by'"),
    ({"first_n": 0}, "'first_n'"),
    ({"first_n_partial": "yes"}, "'first_n_partial'"),
    ({"slope_window": 1}, "'slope_window'"),
    ({"slope_min_laps": 1}, "'slope_min_laps'"),
    ({"slope_window": 4, "slope_min_laps": 5}, "'slope_min_laps'"),
    ({"slow_k": 0}, "'slow_k'"),
    ({"slow_window": 0}, "'slow_window'"),
    ({"slow_window": 2, "slow_min_laps": 3}, "'slow_min_laps'"),
    ({"outputs": ["tyre_age", "grip"]}, "'outputs'"),
    ({"outputs": []}, "'outputs'"),
    ({"outputs": {"stint": ""}}, "'outputs.stint'"),
    ({"outputs": {"stint": "x", "tyre_age": "x"}}, "'outputs'"),
    ({"outputs": {"stint": TS}}, "'outputs'"),
    ({"prefix": 3}, "'prefix'"),
    ("pit", "params"),
]


@pytest.mark.parametrize(("params", "fragment"), BAD_PARAMS)
def test_bad_params_name_the_param(params, fragment) -> None:
    with pytest.raises(ValueError, match=re.escape(fragment)):
        FALLOFF.declared_schema(params, SCHEMA)


def test_output_clashing_with_a_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="driver_id"):
        FALLOFF(
            to_frame([]).lazy(),
            {"outputs": {"stint": "driver_id"}},
            TransformContext(keys=("driver_id",)),
        )


# ------------------------------------------------------------------- the project's conformance kit


@pytest.mark.parametrize("composite", [False, True])
def test_passes_the_conformance_kit(composite: bool) -> None:
    from featurestore.testing import assert_transform_conforms, sample_laps

    frame = sample_laps(composite_key=composite, duplicate_times=True, seed=5)
    keys = ("driver_id", "team_id") if composite else ("driver_id",)
    params = {
        "lap_time_column": "lap_time_s",
        "lap_column": "lap",
        "pit_column": "pit",
        "group_by": ["race_id"],
        "jump_seconds": 3.0,
        "slope_window": 4,
    }
    assert_transform_conforms(FALLOFF, params, frame, keys=keys)
