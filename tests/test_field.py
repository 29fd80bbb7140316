"""Tests for the ``field`` transform: oracle comparisons, properties, hand cases, schema, params."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from featurestore_plugins import field as field_module
from featurestore_plugins.field import FIELD, KINDS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from featurestore.testing import assert_transform_conforms, sample_laps
from featurestore.transforms import TransformContext

try:
    from oracles_field import field_oracle, field_order
    from oracles_transforms import AV, TS, assert_outputs_match, outputs_in_input_order
except ImportError:  # tests/ imported as a package
    from tests.oracles_field import field_oracle, field_order
    from tests.oracles_transforms import AV, TS, assert_outputs_match, outputs_in_input_order

T0 = datetime(2025, 3, 9, 19, 30, tzinfo=UTC)
SCHEMA = {
    "driver_id": pl.Int32(),
    "team": pl.String(),
    TS: pl.Datetime("us", "UTC"),
    AV: pl.Datetime("us", "UTC"),
    "race_id": pl.Int32(),
    "series": pl.String(),
    "lap": pl.Int32(),
    "lap_time": pl.Float64(),
    "race_time": pl.Float64(),
    "position": pl.Int32(),
}
KEY_CHOICES = [["driver_id"], ["driver_id", "team"]]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LAP_TIME_KINDS = [k for k in KINDS if k != "gap_to_leader"]


# ------------------------------------------------------------------------------ generators


def _maybe(strategy: st.SearchStrategy, null_one_in: int = 6) -> st.SearchStrategy:
    return st.tuples(st.integers(1, null_one_in), strategy).map(
        lambda t: None if t[0] == 1 else t[1]
    )


@st.composite
def field_rows(draw: st.DrawFn, max_rows: int = 40) -> list[dict]:
    """Laps of up to 4 drivers (2 teams) in up to 2 races, unsorted, with the awkward cases:
    equal availability (a lap published at once), a lap published late, missing and null laps,
    null race ids, null and NaN values, tied values, duplicate rows."""
    rows = []
    for _ in range(draw(st.integers(0, max_rows))):
        lap = draw(_maybe(st.integers(1, 4), 10))
        ts = T0 + timedelta(seconds=30 * (lap or 0) + draw(st.integers(0, 20)))
        delay = draw(st.sampled_from([0, 0, 5, 10, 60, 600]))  # 600: published after the race
        lap_time = draw(_maybe(st.integers(116, 124).map(lambda v: v / 4)))
        if lap_time is not None and draw(st.integers(0, 15)) == 0:
            lap_time = math.nan
        gap = draw(_maybe(st.integers(0, 6)))  # race_time: ~30 s a lap, ties likely
        rows.append(
            {
                "driver_id": draw(st.integers(1, 4)),
                "team": draw(st.sampled_from(["red", "blue"])),
                TS: ts,
                AV: ts + timedelta(seconds=delay),
                "race_id": draw(_maybe(st.integers(1, 2), 12)),
                "series": draw(st.sampled_from(["cup", "cup", "xfinity"])),
                "lap": lap,
                "lap_time": lap_time,
                "race_time": None if gap is None else 30.0 * (lap or 0) + gap,
                "position": draw(_maybe(st.integers(1, 4))),
            }
        )
    if rows and draw(st.booleans()):
        rows.append(dict(rows[draw(st.integers(0, len(rows) - 1))]))  # an exact duplicate
    return rows


@st.composite
def field_params(draw: st.DrawFn) -> dict:
    outputs = {}
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(list(KINDS)))
        column = "race_time" if kind == "gap_to_leader" else draw(
            st.sampled_from(["lap_time", "position", "race_time"]))
        spec = {"kind": kind, "column": column}
        if kind in field_module.DIRECTED and draw(st.booleans()):
            spec["descending"] = draw(st.booleans())
        outputs[f"out{i}_{kind}"] = spec
    params: dict = {
        "group_by": draw(st.sampled_from([["race_id"], ["race_id", "series"]])),
        "outputs": outputs,
    }
    at = draw(st.sampled_from([["lap"], ["lap"], []]))
    if at or draw(st.booleans()):
        params["at"] = at
    if draw(st.integers(0, 3)) == 0:
        params["min_count"] = draw(st.integers(1, 3))
    return params


def to_frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=SCHEMA)


def run(rows: list[dict], keys: list[str], params: dict):
    """Run the transform; return (declared schema, output frame, outputs in input order)."""
    frame = to_frame(rows)
    declared = FIELD.declared_schema(params, frame.schema)
    out = FIELD(frame.lazy(), params, TransformContext(keys=tuple(keys))).collect()
    return declared, out, outputs_in_input_order(out.to_dicts(), rows, keys, field_order(params))


# ------------------------------------------------------------------------ oracle comparisons


@SETTINGS
@given(rows=field_rows(), keys=st.sampled_from(KEY_CHOICES), params=field_params())
def test_matches_oracle(rows: list[dict], keys: list[str], params: dict) -> None:
    declared, out, got = run(rows, keys, params)
    assert dict(out.schema) == {
        **{k: SCHEMA[k] for k in keys}, TS: SCHEMA[TS], AV: SCHEMA[AV], **declared,
    }
    assert_outputs_match(got, field_oracle(rows, keys, params), list(declared))


@SETTINGS
@given(rows=field_rows(), keys=st.sampled_from(KEY_CHOICES), params=field_params(),
       cut=st.floats(0, 1))
def test_removing_later_rows_of_every_entity_changes_nothing(
    rows: list[dict], keys: list[str], params: dict, cut: float
) -> None:
    """Global truncation: drop every row (of any entity) available after a cut point t; the rows
    available at or before t keep their values. The cut is one of the rows' own availability
    times, so rows tied with it stay."""
    times = sorted({r[AV] for r in rows})
    if not times:
        return
    t = times[min(int(cut * len(times)), len(times) - 1)]
    kept = [i for i, r in enumerate(rows) if r[AV] <= t]
    declared, _, full = run(rows, keys, params)
    _, _, part = run([rows[i] for i in kept], keys, params)
    assert_outputs_match(part, [full[i] for i in kept], list(declared), tol=1e-12)


@SETTINGS
@given(rows=field_rows(), keys=st.sampled_from(KEY_CHOICES), params=field_params(),
       seed=st.integers(0, 2**32 - 1))
def test_input_order_irrelevant(rows: list[dict], keys: list[str], params: dict, seed: int) -> None:
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    _, first, _ = run(rows, keys, params)
    _, second, _ = run(shuffled, keys, params)
    assert_frame_equal(first, second)


def test_empty_input() -> None:
    params = {"group_by": ["race_id"], "at": ["lap"],
              "outputs": {k: {"kind": k, "column": "race_time"} for k in KINDS}}
    declared, out, got = run([], ["driver_id", "team"], params)
    assert out.height == 0 and got == []
    assert dict(out.schema) == {"driver_id": pl.Int32(), "team": pl.String(), TS: SCHEMA[TS],
                                AV: SCHEMA[AV], **declared}


def test_matches_oracle_on_generated_laps() -> None:
    """A bigger, realistic input: 12 drivers (composite keys), 4 races of 20 laps, half the
    races published lap by lap and half at the end, nulls, a driver with a single lap."""
    laps = sample_laps(n_drivers=12, n_races=4, laps_per_race=20, seed=5, null_fraction=0.1,
                       composite_key=True, duplicate_times=True)
    params = {
        "group_by": ["race_id"], "at": ["lap"],
        "outputs": {
            "rank": {"kind": "rank", "column": "lap_time_s"},
            "pct": {"kind": "percentile", "column": "lap_time_s"},
            "median": {"kind": "delta_median", "column": "lap_time_s"},
            "mean": {"kind": "delta_mean", "column": "lap_time_s"},
            "best": {"kind": "delta_best", "column": "lap_time_s"},
            "n": {"kind": "count", "column": "lap_time_s"},
            "pos_rank_desc": {"kind": "rank", "column": "position", "descending": True},
        },
    }
    keys = ["driver_id", "team_id"]
    out = FIELD(laps.lazy(), params, TransformContext(keys=tuple(keys))).collect()
    rows = laps.to_dicts()
    got = outputs_in_input_order(out.to_dicts(), rows, keys, field_order(params))
    assert_outputs_match(got, field_oracle(rows, keys, params), list(params["outputs"]))
    assert out["n"].max() > 5 and out["rank"].max() > 5  # the buckets really hold a field


def test_conforms() -> None:
    """The conformance kit, with the checks it runs for group-scope transforms."""
    params = {"group_by": ["race_id"], "at": ["lap"],
              "outputs": {"rank": {"kind": "rank", "column": "lap_time_s"},
                          "median": {"kind": "delta_median", "column": "lap_time_s"},
                          "n": {"kind": "count", "column": "lap_time_s"}}}
    assert_transform_conforms(FIELD, params, plugin="featurestore_plugins.field")
    assert_transform_conforms(FIELD, params, sample_laps(composite_key=True, seed=3),
                              keys=("driver_id", "team_id"))


# ------------------------------------------------------------------------ hand-checked cases


def _lap(driver: int, lap_time: float | None, *, seconds: int = 0, delay: int = 0,
         lap: int | None = 1, race_id: int | None = 1, race_time: float | None = None) -> dict:
    ts = T0 + timedelta(seconds=seconds)
    row = dict.fromkeys(SCHEMA)
    row.update({"driver_id": driver, "team": "red", TS: ts, AV: ts + timedelta(seconds=delay),
                "race_id": race_id, "series": "cup", "lap": lap, "lap_time": lap_time,
                "race_time": race_time})
    return row


ALL_KINDS = {
    "rank": {"kind": "rank", "column": "lap_time"},
    "pct": {"kind": "percentile", "column": "lap_time"},
    "median": {"kind": "delta_median", "column": "lap_time"},
    "mean": {"kind": "delta_mean", "column": "lap_time"},
    "best": {"kind": "delta_best", "column": "lap_time"},
    "n": {"kind": "count", "column": "lap_time"},
}


def _values(rows: list[dict], params: dict, column: str) -> list:
    _, _, got = run(rows, ["driver_id"], params)
    return [g[column] for g in got]


def test_a_lap_published_at_once_by_hand() -> None:
    # four cars, one lap, all available together: everyone sees the whole field
    rows = [_lap(1, 30.0), _lap(2, 31.0), _lap(3, 31.0), _lap(4, 33.0)]
    params = {"group_by": ["race_id"], "at": ["lap"], "outputs": ALL_KINDS}
    assert _values(rows, params, "rank") == [1, 2, 2, 4]  # competition ranking on ties
    assert _values(rows, params, "pct") == [1.0, 1 / 3, 1 / 3, 0.0]
    assert _values(rows, params, "median") == [-1.0, 0.0, 0.0, 2.0]
    assert _values(rows, params, "mean") == [-1.25, -0.25, -0.25, 1.75]
    assert _values(rows, params, "best") == [0.0, 1.0, 1.0, 3.0]
    assert _values(rows, params, "n") == [4, 4, 4, 4]


def test_lap_by_lap_availability_by_hand() -> None:
    # cars cross the line 1 s apart and each lap is available as the car crosses: a car sees
    # the cars ahead of it on this lap, never the ones behind
    rows = [_lap(d, t, seconds=d) for d, t in ((1, 32.0), (2, 30.0), (3, 31.0), (4, 29.0))]
    params = {"group_by": ["race_id"], "at": ["lap"], "outputs": ALL_KINDS}
    assert _values(rows, params, "rank") == [1, 1, 2, 1]
    assert _values(rows, params, "n") == [1, 2, 3, 4]
    assert _values(rows, params, "median") == [0.0, -1.0, 0.0, -1.5]
    assert _values(rows, params, "pct") == [None, 1.0, 0.5, 1.0]


def test_a_car_published_late_sees_the_field_and_is_not_seen() -> None:
    rows = [_lap(1, 30.0, seconds=1), _lap(2, 31.0, seconds=2, delay=300), _lap(3, 32.0, seconds=3)]
    params = {"group_by": ["race_id"], "at": ["lap"], "outputs": ALL_KINDS}
    assert _values(rows, params, "n") == [1, 3, 2]
    assert _values(rows, params, "rank") == [1, 2, 2]


def test_descending_gap_to_leader_and_min_count_by_hand() -> None:
    rows = [_lap(d, None, seconds=d, race_time=rt)
            for d, rt in ((1, 100.0), (2, 100.5), (3, 103.0))]
    params = {"group_by": ["race_id"], "at": ["lap"], "min_count": 2, "outputs": {
        "gap": {"kind": "gap_to_leader", "column": "race_time"},
        "fastest_first": {"kind": "rank", "column": "race_time", "descending": True},
        "worst": {"kind": "delta_best", "column": "race_time", "descending": True},
        "n": {"kind": "count", "column": "race_time"},
    }}
    assert _values(rows, params, "gap") == [None, 0.5, 3.0]  # the leader alone: < min_count
    assert _values(rows, params, "fastest_first") == [None, 1, 1]
    assert _values(rows, params, "worst") == [None, 0.0, 0.0]
    assert _values(rows, params, "n") == [1, 2, 3]  # count ignores min_count


def test_nulls_missing_laps_and_other_groups() -> None:
    rows = [
        _lap(1, 30.0),
        _lap(2, None),  # null value: no outputs but count
        _lap(3, math.nan),  # NaN is null
        _lap(4, 29.0, lap=None),  # no lap: belongs to no group
        _lap(5, 28.0, race_id=None),  # no race: belongs to no group
        _lap(6, 27.0, lap=2),  # another lap: not compared
        _lap(7, 26.0, race_id=2),  # another race: not compared
    ]
    params = {"group_by": ["race_id"], "at": ["lap"], "outputs": ALL_KINDS}
    assert _values(rows, params, "rank") == [1, None, None, None, None, 1, 1]
    assert _values(rows, params, "n") == [1, 1, 1, None, None, 1, 1]
    assert _values(rows, params, "median") == [0.0, None, None, None, None, 0.0, 0.0]


def test_without_at_the_whole_group_is_one_moment() -> None:
    rows = [_lap(1, 30.0, lap=1), _lap(2, 32.0, lap=7)]
    params = {"group_by": ["race_id"], "outputs": {"rank": ALL_KINDS["rank"]}}
    assert _values(rows, params, "rank") == [1, 2]


# ---------------------------------------------------------------------------------- schema


@pytest.mark.parametrize("dtype", [pl.Int8(), pl.UInt16(), pl.Int64(), pl.Float32()])
def test_output_dtypes_match_declared(dtype: pl.DataType) -> None:
    frame = to_frame([_lap(1, 30.0), _lap(2, 31.0), _lap(3, None)]).with_columns(
        pl.col("position").fill_null(3).cast(dtype))
    params = {"group_by": ["race_id"], "at": ["lap"],
              "outputs": {k: {"kind": k, "column": "position"} for k in KINDS}}
    declared = FIELD.declared_schema(params, frame.schema)
    assert declared == dict(KINDS)
    out = FIELD(frame.lazy(), params, TransformContext(keys=("driver_id",))).collect()
    assert dict(out.schema) == {"driver_id": pl.Int32(), TS: SCHEMA[TS], AV: SCHEMA[AV],
                                **declared}


def test_group_columns_and_lookback() -> None:
    params = {"group_by": ["race_id", "series"], "at": ["lap"],
              "outputs": {"r": {"kind": "rank", "column": "lap_time"}}}
    assert list(FIELD.group_columns(params)) == ["race_id", "series"]
    assert FIELD.scope == "group"
    assert FIELD.lookback(params) is None


# ---------------------------------------------------------------------------------- params

GOOD = {"group_by": ["race_id"], "at": ["lap"], "outputs": {"r": {"kind": "rank",
                                                                  "column": "lap_time"}}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"group_by": None}, "param 'group_by' is required"),
        ({"group_by": []}, "param 'group_by' must name at least one column"),
        ({"group_by": "race_id"}, "param 'group_by' must be a list of column names"),
        ({"group_by": ["race_id", "race_id"]}, "param 'group_by' has duplicates"),
        ({"at": ["race_id"]}, "column(s) ['race_id'] appear in both 'group_by' and 'at'"),
        ({"at": "lap"}, "param 'at' must be a list of column names"),
        ({"min_count": 0}, "param 'min_count' must be an int >= 1, got 0"),
        ({"min_count": True}, "param 'min_count' must be an int >= 1, got True"),
        ({"outputs": {}}, "param 'outputs' is required"),
        ({"outputs": [{"kind": "rank"}]}, "param 'outputs' must be an object"),
        ({"outputs": {"r": "rank"}}, "param 'outputs.r' must be an object"),
        ({"outputs": {"r": {"kind": "rnak", "column": "lap_time"}}},
         "param 'outputs.r.kind' must be one of ['rank', "),
        ({"outputs": {"r": {"kind": "rank"}}}, "param 'outputs.r.column' is required"),
        ({"outputs": {"r": {"kind": "rank", "column": "lap_time", "window": 3}}},
         "unknown param(s) ['outputs.r.window']"),
        ({"outputs": {"r": {"kind": "rank", "column": "lap_time", "descending": "yes"}}},
         "param 'outputs.r.descending' must be true or false"),
        ({"outputs": {"r": {"kind": "delta_median", "column": "lap_time", "descending": True}}},
         "param 'outputs.r.descending' applies only to kinds ['rank', 'percentile', "
         "'delta_best'], not 'delta_median'"),
        ({"outputs": {"available_at": {"kind": "rank", "column": "lap_time"}}},
         "column 'available_at' clashes with a reserved column"),
        ({"window": 3}, "unknown param(s) ['window']"),
        ({"group_by": ["circuit"]}, "param 'group_by': no column 'circuit' in input"),
        ({"at": ["lap_time"]}, "param 'at': column 'lap_time' has dtype Float64; group and "
                               "moment columns must not be floats"),
        ({"outputs": {"r": {"kind": "rank", "column": "laptime"}}},
         "param 'outputs.r.column': no column 'laptime' in input"),
        ({"outputs": {"r": {"kind": "rank", "column": "series"}}},
         "param 'outputs.r.column': column 'series' has dtype String; field compares numeric"),
    ],
)
def test_bad_params_are_readable_errors(change: dict, message: str) -> None:
    params = {**GOOD, **change}
    params = {k: v for k, v in params.items() if v is not None}
    with pytest.raises(ValueError) as info:
        FIELD.declared_schema(params, SCHEMA)
    assert str(info.value).startswith("field: ")
    assert message in str(info.value)


def test_params_must_be_an_object() -> None:
    with pytest.raises(ValueError, match="field: params must be a JSON object"):
        FIELD.declared_schema([], SCHEMA)  # type: ignore[arg-type]


def test_output_named_like_a_key_is_refused_when_run() -> None:
    params = {**GOOD, "outputs": {"driver_id": {"kind": "rank", "column": "lap_time"}}}
    with pytest.raises(ValueError, match="output column 'driver_id' clashes with a key"):
        FIELD(to_frame([]).lazy(), params, TransformContext(keys=("driver_id",)))


@pytest.mark.slow
def test_a_scanned_parquet_with_whole_laps_tied_matches_the_oracle(tmp_path) -> None:
    """Whole laps published at once tie every row of a bucket on ``available_at``; read lazily
    from Parquet (as the materializer does), the engine may order tied rows differently each
    time it evaluates the plan, which must not change any value."""
    # Big enough (~21k rows) for the engine to sort in parallel, where tied rows lose order.
    laps = sample_laps(n_drivers=40, n_races=10, laps_per_race=60, seed=9, shuffle=True)
    lap_end = pl.col(TS).max().over("race_id", "lap")
    laps = laps.with_columns(lap_end.alias(AV))  # the lap chart: a lap out once it is complete
    path = tmp_path / "laps.parquet"
    laps.write_parquet(path, row_group_size=500)
    params = {"group_by": ["race_id"], "at": ["lap"], "outputs": {
        "rank": {"kind": "rank", "column": "lap_time_s"},
        "pct": {"kind": "percentile", "column": "lap_time_s", "descending": True},
        "median": {"kind": "delta_median", "column": "lap_time_s"},
    }}
    out = FIELD(pl.scan_parquet(path), params, TransformContext(keys=("driver_id",))).collect()
    rows = laps.to_dicts()
    got = outputs_in_input_order(out.to_dicts(), rows, ["driver_id"], field_order(params))
    assert_outputs_match(got, field_oracle(rows, ["driver_id"], params), list(params["outputs"]))
