"""Point-in-time retrieval: the engine against two independent oracles, plus audit.

Every comparison runs four implementations on the same input: the eager engine
(``point_in_time_join``), the lazy ``join_asof`` plan (``point_in_time_join_lazy``), the plain
Python loop oracle and the DuckDB SQL oracle (``tests/oracles_retrieval.py``).
"""

from __future__ import annotations

import warnings
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles_retrieval import duckdb_oracle, python_oracle

from featurestore.errors import DataError
from featurestore.retrieval import (
    AuditReport,
    ViewFrame,
    audit,
    availability_column,
    point_in_time_join,
    point_in_time_join_lazy,
    sort_for_retrieval,
)

ET, AV = "event_timestamp", "available_at"
SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def check_all(query, views, *, duck: bool = True, **kw) -> pl.DataFrame:
    """Assert engine == lazy plan == Python oracle (== DuckDB oracle); return the engine's."""
    got = point_in_time_join(query, views, **kw)
    lazy = point_in_time_join_lazy(query, views, **kw).collect()
    expected = python_oracle(query, views, **kw)
    assert got.height == query.height
    assert got.columns == lazy.columns
    assert got.schema == lazy.schema
    assert got.select(query.columns).equals(query)  # query columns untouched, same order
    assert got.to_dicts() == expected
    assert lazy.to_dicts() == expected
    if duck:
        assert duckdb_oracle(query, views, **kw) == expected
    return got


def frame(rows: list[tuple], keys=("driver_id",), tz: str | None = "UTC") -> pl.DataFrame:
    """Rows as (*keys, event_timestamp, available_at, value)."""
    cols = [*keys, ET, AV, "value"]
    schema = {k: pl.Int64 for k in keys} | {
        ET: pl.Datetime("us", tz),
        AV: pl.Datetime("us", tz),
        "value": pl.Int64,
    }
    return pl.DataFrame(rows, schema=schema, orient="row").select(cols)


# --------------------------------------------------------------------------------------------
# small hand-checkable cases (each also compared with the oracles)


def test_hand_checked_strict_inclusive_ties_and_null_value():
    f = frame(
        [
            (1, utc(2024, 1, 1), utc(2024, 1, 2), 10),
            (1, utc(2024, 1, 2), utc(2024, 1, 2), 20),  # same available_at, later event: wins
            (1, utc(2024, 1, 1), utc(2024, 1, 2), 30),
            (1, utc(2024, 1, 2), utc(2024, 1, 3), None),  # latest row has a null value
            (2, utc(2024, 1, 1), utc(2024, 1, 1), 50),
            (2, utc(2024, 1, 1), utc(2024, 1, 1), 60),  # full tie: later ingestion wins
        ]
    )
    q = pl.DataFrame(
        {
            "driver_id": [1, 1, 1, 2, 2, 3, None, 1],
            ET: [
                utc(2024, 1, 2),
                utc(2024, 1, 3),
                utc(2024, 1, 4),
                utc(2024, 1, 1),
                utc(2024, 1, 2),
                utc(2024, 1, 9),
                utc(2024, 1, 9),
                utc(2024, 1, 3),
            ],
            "extra": list("abcdefgh"),
        }
    )
    view = ViewFrame("laps", f.lazy(), ("driver_id",), {"lap": "value"})
    strict = check_all(q, [view])
    assert strict["lap"].to_list() == [None, 20, None, None, 60, None, None, 20]
    incl = check_all(q, [view], inclusive=True)
    assert incl["lap"].to_list() == [20, None, None, 60, 60, None, None, None]
    fresh = check_all(q, [view], ttl=timedelta(hours=12))
    assert fresh["lap"].to_list() == [None, None, None, None, None, None, None, None]
    day = check_all(q, [view], ttl=timedelta(days=1))  # av == T - ttl is still fresh
    assert day["lap"].to_list() == [None, 20, None, None, 60, None, None, 20]


def test_null_event_timestamp_loses_an_available_at_tie():
    f = frame(
        [
            (1, utc(2024, 1, 1), utc(2024, 1, 2), 1),
            (1, None, utc(2024, 1, 2), 2),
            (2, None, utc(2024, 1, 2), 3),
            (2, None, utc(2024, 1, 2), 4),
        ]
    )
    q = pl.DataFrame({"driver_id": [1, 2], ET: [utc(2024, 1, 3)] * 2})
    for presorted in (False, True):
        fr = sort_for_retrieval(f, ["driver_id"]) if presorted else f.lazy()
        v = ViewFrame("v", fr, ("driver_id",), {"x": "value"}, presorted=presorted)
        assert check_all(q, [v])["x"].to_list() == [1, 4]


def test_output_layout_and_availability_columns():
    f = frame([(1, utc(2024, 1, 1), utc(2024, 1, 1, 6), 7)])
    q = pl.DataFrame({"driver_id": [1, 1], ET: [utc(2024, 1, 2), utc(2024, 1, 1)]})
    view = ViewFrame("v", f.lazy(), ("driver_id",), {"a": "value", "b": "value"})
    got = check_all(q, [view], with_availability=True)
    assert got.columns == ["driver_id", ET, "a", "b", "a__available_at", "b__available_at"]
    assert got.schema["a__available_at"] == pl.Datetime("us", "UTC")
    assert got["a__available_at"].to_list() == [utc(2024, 1, 1, 6), None]
    assert availability_column("a") == "a__available_at"


def test_several_views_each_by_its_own_availability_and_keys():
    laps = frame(
        [(1, utc(2024, 1, 1), utc(2024, 1, 1), 1), (1, utc(2024, 1, 2), utc(2024, 1, 5), 2)]
    )
    teams = pl.DataFrame(
        {
            "team": ["x", "x"],
            ET: [utc(2024, 1, 1)] * 2,
            AV: [utc(2024, 1, 1), utc(2024, 1, 3)],
            "rating": [0.5, 0.7],
        }
    )
    q = pl.DataFrame({"driver_id": [1, 1], "team_id": ["x", "y"], ET: [utc(2024, 1, 4)] * 2})
    views = [
        ViewFrame("laps", laps.lazy(), ("driver_id",), {"lap": "value"}),
        ViewFrame("teams", teams.lazy(), ("team",), {"rating": "rating"}, query_keys=("team_id",)),
    ]
    got = check_all(q, views, with_availability=True)
    assert got["lap"].to_list() == [1, 1]
    assert got["rating"].to_list() == [0.7, None]


def test_composite_keys_compared_column_by_column():
    # ("1", "23") and ("12", "3") concatenate to the same string: must not match.
    f = pl.DataFrame(
        {
            "a": ["1", "12"],
            "b": ["23", "3"],
            ET: [utc(2024, 1, 1)] * 2,
            AV: [utc(2024, 1, 1)] * 2,
            "value": [1, 2],
        }
    )
    q = pl.DataFrame({"a": ["1", "12", "1"], "b": ["23", "3", "3"], ET: [utc(2024, 2, 1)] * 3})
    view = ViewFrame("v", f.lazy(), ("a", "b"), {"x": "value"})
    assert check_all(q, [view])["x"].to_list() == [1, 2, None]


def test_empty_view_empty_query_and_no_features():
    empty = frame([]).lazy()
    q = pl.DataFrame({"driver_id": [1, None], ET: [utc(2024, 1, 1), None]})
    got = check_all(
        q, [ViewFrame("e", empty, ("driver_id",), {"x": "value"})], with_availability=True
    )
    assert got["x"].to_list() == [None, None]
    assert got.schema["x"] == pl.Int64
    full = frame([(1, utc(2024, 1, 1), utc(2024, 1, 1), 5)]).lazy()
    got = check_all(q.clear(), [ViewFrame("f", full, ("driver_id",), {"x": "value"})])
    assert got.height == 0 and got.columns == ["driver_id", ET, "x"]
    got = check_all(q, [ViewFrame("f", full, ("driver_id",), {})])
    assert got.equals(q)


def test_features_may_be_key_or_time_columns_of_the_view():
    f = frame(
        [(1, utc(2024, 1, 1), utc(2024, 1, 1, 6), 5), (2, utc(2024, 1, 2), utc(2024, 1, 2), 6)]
    )
    q = pl.DataFrame({"driver": [2, 1, 3], ET: [utc(2024, 1, 3)] * 3})
    feats = {"driver_id": "driver_id", "seen": AV, "happened": ET, "v": "value"}
    for presorted in (False, True):
        fr = sort_for_retrieval(f, ["driver_id"]) if presorted else f.lazy()
        v = ViewFrame("v", fr, ("driver_id",), feats, query_keys=("driver",), presorted=presorted)
        got = check_all(q, [v], with_availability=True)
        assert got["driver_id"].to_list() == [2, 1, None]
        assert got["seen"].to_list() == got["seen__available_at"].to_list()


def test_lazy_query_input_and_single_view_argument():
    f = frame([(1, utc(2024, 1, 1), utc(2024, 1, 1), 5)])
    q = pl.DataFrame({"driver_id": [1], ET: [utc(2024, 1, 2)]})
    view = ViewFrame("f", f.lazy(), ("driver_id",), {"x": "value"})
    assert point_in_time_join(q.lazy(), view)["x"].to_list() == [5]
    assert point_in_time_join_lazy(q.lazy(), view).collect()["x"].to_list() == [5]


def test_key_width_casts_and_out_of_range_query_keys():
    f = frame([(1, utc(2024, 1, 1), utc(2024, 1, 1), 5), (2, utc(2024, 1, 1), utc(2024, 1, 1), 6)])
    f = f.with_columns(pl.col("driver_id").cast(pl.Int16))
    q = pl.DataFrame(
        {
            "driver_id": pl.Series([1, 2, 2**40 + 1, -(2**40)], dtype=pl.Int64),
            ET: [utc(2024, 1, 2)] * 4,
        }
    )
    view = ViewFrame("v", f.lazy(), ("driver_id",), {"x": "value"})
    assert check_all(q, [view])["x"].to_list() == [5, 6, None, None]
    q32 = q.head(2).with_columns(pl.col("driver_id").cast(pl.UInt8))
    assert check_all(q32, [view])["x"].to_list() == [5, 6]
    # String vs Categorical keys
    fs = f.with_columns(pl.col("driver_id").cast(pl.String).cast(pl.Categorical))
    qs = q.head(2).with_columns(pl.col("driver_id").cast(pl.String))
    vs = ViewFrame("v", fs.lazy(), ("driver_id",), {"x": "value"})
    assert check_all(qs, [vs])["x"].to_list() == [5, 6]


@pytest.mark.parametrize("query_dtype", [pl.String, pl.Float64, pl.Boolean, pl.Date])
def test_incompatible_key_dtypes_raise_data_error_naming_view_and_column(query_dtype):
    f = frame([(1, utc(2024, 1, 1), utc(2024, 1, 1), 5)])
    q = pl.DataFrame({"driver_id": pl.Series([None], dtype=query_dtype), ET: [utc(2024, 1, 2)]})
    view = ViewFrame("laps", f.lazy(), ("driver_id",), {"x": "value"})
    for fn in (point_in_time_join, point_in_time_join_lazy):
        with pytest.raises(DataError, match=r"'laps'.*'driver_id'"):
            fn(q, [view])


def test_name_clashes_and_missing_columns_raise_data_error():
    f = frame([(1, utc(2024, 1, 1), utc(2024, 1, 1), 5)])
    q = pl.DataFrame({"driver_id": [1], ET: [utc(2024, 1, 2)], "x": [0]})
    v = ViewFrame("laps", f.lazy(), ("driver_id",), {"x": "value"})
    with pytest.raises(DataError, match=r"'x'.*clashes"):
        point_in_time_join(q, [v])
    v2 = ViewFrame("laps", f.lazy(), ("driver_id",), {"y": "value"})
    with pytest.raises(DataError, match=r"'y'.*clashes"):
        point_in_time_join(q, [v2, v2])
    with pytest.raises(DataError, match="y__available_at"):
        point_in_time_join(q.with_columns(y__available_at=0), [v2], with_availability=True)
    with pytest.raises(DataError, match=r"'laps'.*'nope'"):
        point_in_time_join(q, [ViewFrame("laps", f.lazy(), ("driver_id",), {"y": "nope"})])
    with pytest.raises(DataError, match="'team'"):
        point_in_time_join(
            q, [ViewFrame("laps", f.lazy(), ("driver_id",), {"y": "value"}, query_keys=("team",))]
        )
    with pytest.raises(DataError, match="cutoff column 'when'"):
        point_in_time_join(q, [v2], cutoff="when")
    with pytest.raises(DataError, match="cutoff_timezone"):
        point_in_time_join(q, [v2], cutoff_timezone="Mars/Olympus")
    with pytest.raises(DataError, match="ttl"):
        point_in_time_join(q, [v2], ttl=timedelta(seconds=-1))


def test_internal_column_names_do_not_clash_with_user_columns():
    f = frame([(1, utc(2024, 1, 1), utc(2024, 1, 1), 5)]).with_columns(__fs_g=pl.lit(1))
    q = pl.DataFrame({"driver_id": [1], ET: [utc(2024, 1, 2)], "__fs_row": [9], "__fs_k0": [3]})
    v = ViewFrame("v", f.lazy(), ("driver_id",), {"x": "value"})
    assert check_all(q, [v])["x"].to_list() == [5]


def test_null_available_at_rows_are_never_available():
    f = frame([(1, utc(2024, 1, 1), utc(2024, 1, 1), 5), (1, utc(2024, 1, 2), None, 6)])
    q = pl.DataFrame({"driver_id": [1], ET: [utc(2030, 1, 1)]})
    for presorted in (False, True):
        fr = sort_for_retrieval(f, ["driver_id"]) if presorted else f.lazy()
        v = ViewFrame("v", fr, ("driver_id",), {"x": "value"}, presorted=presorted)
        assert check_all(q, [v])["x"].to_list() == [5]


def test_presorted_flag_on_unsorted_frame_warns_and_stays_correct():
    f = frame(
        [
            (1, utc(2024, 1, 2), utc(2024, 1, 2), 2),
            (1, utc(2024, 1, 1), utc(2024, 1, 1), 1),
            (2, utc(2024, 1, 1), utc(2024, 1, 1), 3),
            (1, utc(2024, 1, 3), utc(2024, 1, 3), 4),
        ]
    )
    q = pl.DataFrame(
        {"driver_id": [1, 1, 2], ET: [utc(2024, 1, 2, 12), utc(2024, 1, 5), utc(2024, 1, 2)]}
    )
    v = ViewFrame("v", f.lazy(), ("driver_id",), {"x": "value"}, presorted=True)
    with pytest.warns(UserWarning, match="not sorted"):
        got = point_in_time_join(q, [v])
    assert got["x"].to_list() == [2, 4, 3]
    assert got.to_dicts() == python_oracle(q, [v])


def test_presorted_flag_with_ties_out_of_event_order_warns_and_stays_correct():
    # Sorted by (keys, available_at) but not by event_timestamp within the tie.
    f = frame(
        [
            (1, utc(2024, 1, 1), utc(2024, 1, 1), 1),
            (1, utc(2024, 1, 3), utc(2024, 1, 5), 2),
            (1, utc(2024, 1, 2), utc(2024, 1, 5), 3),
        ]
    )
    q = pl.DataFrame({"driver_id": [1, 1], ET: [utc(2024, 1, 2), utc(2024, 1, 6)]})
    v = ViewFrame("v", f.lazy(), ("driver_id",), {"x": "value"}, presorted=True)
    with pytest.warns(UserWarning, match="not sorted"):
        got = point_in_time_join(q, [v])
    assert got["x"].to_list() == [1, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # correctly sorted ties: no warning
        ok = ViewFrame(
            "v",
            sort_for_retrieval(f, ["driver_id"]),
            ("driver_id",),
            {"x": "value"},
            presorted=True,
        )
        assert point_in_time_join(q, [ok])["x"].to_list() == [1, 2]


def test_parquet_artifact_round_trip(tmp_path):
    """The store's path: sort_for_retrieval -> Parquet -> scan, presorted=True."""
    raw = frame(
        [
            (d, utc(2024, 1, 1 + i % 5), utc(2024, 1, 1 + i % 5, i % 3), i)
            for i in range(60)
            for d in (3, 1, 2)
        ]
    )
    path = tmp_path / "view.parquet"
    sort_for_retrieval(raw.lazy(), ["driver_id"]).sink_parquet(path)
    q = pl.DataFrame(
        {"driver_id": [1, 2, 3, 4] * 5, ET: [utc(2024, 1, 1 + i % 7, i % 4) for i in range(20)]}
    )
    art = ViewFrame("v", pl.scan_parquet(path), ("driver_id",), {"x": "value"}, presorted=True)
    got = check_all(q, [art], with_availability=True)
    unsorted = ViewFrame("v", raw.lazy(), ("driver_id",), {"x": "value"})
    assert got.equals(point_in_time_join(q, [unsorted], with_availability=True))


def test_int128_packing_path_for_wide_time_ranges():
    # ns timestamps spanning 500 years: (key runs) x (time span) overflows Int64.
    dt_ns = pl.Datetime("ns", "UTC")
    f = pl.DataFrame(
        {
            "k": [1, 1, 2, 2],
            ET: [datetime(1700, 1, 1), datetime(2200, 1, 1)] * 2,
            AV: [
                datetime(1700, 1, 1),
                datetime(2200, 1, 1),
                datetime(1800, 1, 1),
                datetime(2100, 1, 1),
            ],
            "value": [1, 2, 3, 4],
        },
    ).with_columns(pl.col(ET, AV).cast(pl.Datetime("ns")).dt.replace_time_zone("UTC"))
    assert f.schema[AV] == dt_ns
    q = pl.DataFrame(
        {
            "k": [1, 1, 2, 2, 2],
            ET: [
                datetime(1800, 1, 1),
                datetime(2250, 1, 1),
                datetime(1800, 1, 1),
                datetime(1800, 1, 1, 0, 0, 0, 1),
                datetime(2150, 1, 1),
            ],
        }
    )
    v = ViewFrame("v", sort_for_retrieval(f, ["k"]), ("k",), {"x": "value"}, presorted=True)
    got = check_all(q, [v], duck=False)
    assert got["x"].to_list() == [1, 2, None, 3, 4]


def test_nanosecond_cutoff_against_microsecond_availability():
    # One nanosecond after available_at qualifies under the strict rule; truncating the cutoff
    # to microseconds would lose it.
    f = frame([(1, utc(2024, 1, 1), utc(2024, 1, 1), 5)])
    t_ns = int(utc(2024, 1, 1).timestamp()) * 10**9
    q = pl.DataFrame(
        {"driver_id": [1, 1], ET: pl.Series([t_ns, t_ns + 1]).cast(pl.Datetime("ns", "UTC"))}
    )
    v = ViewFrame("v", f.lazy(), ("driver_id",), {"x": "value"})
    for fn in (point_in_time_join, lambda *a, **k: point_in_time_join_lazy(*a, **k).collect()):
        assert fn(q, [v])["x"].to_list() == [None, 5]
        assert fn(q, [v], inclusive=True)["x"].to_list() == [5, 5]


def test_millisecond_units_and_date_cutoffs():
    f = frame(
        [(1, utc(2024, 1, 1), utc(2024, 1, 1, 23), 5), (1, utc(2024, 1, 2), utc(2024, 1, 2), 6)]
    )
    f = f.with_columns(pl.col(ET, AV).dt.cast_time_unit("ms"))
    q = pl.DataFrame(
        {"driver_id": [1, 1, 1], ET: [date(2024, 1, 1), date(2024, 1, 2), date(2024, 1, 3)]}
    )
    v = ViewFrame("v", f.lazy(), ("driver_id",), {"x": "value"})
    got = check_all(q, [v], with_availability=True)
    assert got["x"].to_list() == [None, 5, 6]  # the race-date row does not leak into that date
    assert got.schema["x__available_at"] == pl.Datetime("ms", "UTC")
    check_all(q, [v], cutoff_timezone="Asia/Tokyo", ttl=timedelta(hours=3))


# --------------------------------------------------------------------------------------------
# time zones and DST


def test_time_zone_representations_give_identical_features():
    f = frame([(1, utc(2024, 5, 1, h), utc(2024, 5, 1, h, 30), h) for h in range(0, 24, 2)])
    instants = [utc(2024, 5, 1, h, m) for h in range(0, 24, 3) for m in (0, 30, 31)]
    q_utc = pl.DataFrame({"driver_id": [1] * len(instants), ET: instants})
    v = ViewFrame("v", f.lazy(), ("driver_id",), {"x": "value"})
    base = check_all(q_utc, [v], with_availability=True)
    variants = [
        (q_utc.with_columns(pl.col(ET).dt.replace_time_zone(None)), None),
        (q_utc.with_columns(pl.col(ET).dt.convert_time_zone("Asia/Kolkata")), None),
        (q_utc.with_columns(pl.col(ET).dt.convert_time_zone("America/New_York")), "Asia/Tokyo"),
        (
            q_utc.with_columns(
                pl.col(ET).dt.convert_time_zone("Europe/Paris").dt.replace_time_zone(None)
            ),
            "Europe/Paris",
        ),
        (
            q_utc.with_columns(
                pl.col(ET).dt.convert_time_zone("Asia/Kathmandu").dt.replace_time_zone(None)
            ),
            "Asia/Kathmandu",
        ),
    ]
    for q, zone in variants:
        got = check_all(q, [v], with_availability=True, cutoff_timezone=zone)
        assert got.schema[ET] == q.schema[ET]  # cutoff column kept as given
        assert got.drop(ET).equals(base.drop(ET))
    # Naive view times are UTC.
    naive_view = ViewFrame(
        "v",
        f.with_columns(pl.col(ET, AV).dt.replace_time_zone(None)).lazy(),
        ("driver_id",),
        {"x": "value"},
    )
    assert check_all(q_utc, [naive_view], with_availability=True).equals(base)


def test_dst_fall_back_ambiguous_wall_time_reads_as_earliest_instant():
    ny = ZoneInfo("America/New_York")
    # 2024-11-03 01:30 happens twice in New York: 05:30 UTC (EDT) and 06:30 UTC (EST).
    f = frame(
        [
            (1, utc(2024, 11, 3, 5), utc(2024, 11, 3, 5, 45), 1),
            (1, utc(2024, 11, 3, 6), utc(2024, 11, 3, 6, 15), 2),
        ]
    )
    q = pl.DataFrame(
        {
            "driver_id": [1, 1, 1],
            ET: [
                datetime(2024, 11, 3, 1, 30),
                datetime(2024, 11, 3, 0, 59),
                datetime(2024, 11, 3, 2, 0),
            ],
        }
    )
    v = ViewFrame("v", f.lazy(), ("driver_id",), {"x": "value"})
    got = check_all(q, [v], duck=False, cutoff_timezone="America/New_York")
    assert got["x"].to_list() == [None, None, 2]
    assert datetime(2024, 11, 3, 1, 30, tzinfo=ny, fold=0).astimezone(UTC) == utc(
        2024, 11, 3, 5, 30
    )
    # Non-ambiguous times also agree with DuckDB.
    check_all(q.tail(2), [v], cutoff_timezone="America/New_York")


def test_dst_spring_forward_missing_wall_time_raises():
    f = frame([(1, utc(2024, 3, 10, 5), utc(2024, 3, 10, 5), 1)])
    q = pl.DataFrame({"driver_id": [1], ET: [datetime(2024, 3, 10, 2, 30)]})  # does not exist
    v = ViewFrame("v", f.lazy(), ("driver_id",), {"x": "value"})
    with pytest.raises(DataError, match="America/New_York"):
        point_in_time_join(q, [v], cutoff_timezone="America/New_York")
    with pytest.raises(pl.exceptions.ComputeError):
        point_in_time_join_lazy(q, [v], cutoff_timezone="America/New_York").collect()
    with pytest.raises(ValueError, match="does not exist"):
        python_oracle(q, [v], cutoff_timezone="America/New_York")
    # Right around the gap, everything agrees.
    q2 = pl.DataFrame(
        {
            "driver_id": [1, 1, 1],
            ET: [
                datetime(2024, 3, 10, 1, 59, 59),
                datetime(2024, 3, 10, 3, 0),
                datetime(2024, 3, 10, 3, 0, 1),
            ],
        }
    )
    f2 = frame([(1, utc(2024, 3, 10, 6), utc(2024, 3, 10, 7), 1)])  # 03:00 EDT
    v2 = ViewFrame("v", f2.lazy(), ("driver_id",), {"x": "value"})
    got = check_all(q2, [v2], cutoff_timezone="America/New_York")
    assert got["x"].to_list() == [None, None, 1]
    assert check_all(q2, [v2], cutoff_timezone="America/New_York", inclusive=True)[
        "x"
    ].to_list() == [None, 1, 1]


# --------------------------------------------------------------------------------------------
# generated adversarial cases

BASE = datetime(2024, 3, 1, tzinfo=UTC)
GRID = [BASE + timedelta(hours=h) for h in range(6)]
# Instants the generated views and queries draw from. "pre1970": negative epoch values. "wide":
# two centuries, so with nanosecond columns (key runs) x (time span) overflows Int64 and the
# engine packs into Int128 as soon as two keys are present. Every instant is a whole
# microsecond, so the Python oracle (datetime, microseconds) stays exact on nanosecond columns.
GRIDS = {
    "2024": GRID,
    "pre1970": [datetime(1950, 3, 1, tzinfo=UTC) + timedelta(hours=h) for h in range(6)],
    "wide": [datetime(1900, 1, 15, 12, tzinfo=UTC), datetime(1950, 6, 15, 12, tzinfo=UTC),
             datetime(1969, 12, 31, 23, tzinfo=UTC), datetime(1970, 1, 1, 1, tzinfo=UTC),
             datetime(2024, 3, 1, 12, tzinfo=UTC), datetime(2100, 1, 15, 12, tzinfo=UTC)],
}
FLOATS = st.sampled_from([-0.0, 0.5, -2.25, 1e300, -1e-300, float("inf"), None])


@st.composite
def scenarios(draw, grids=tuple(GRIDS)):
    """A query and 1-3 views with everything the contract must survive: ties, nulls,
    duplicates, composite keys, key width casts, and (drawn per case) float and categorical
    features, a categorical key column, millisecond to nanosecond units on either side and
    instants before 1970 or spread over two centuries (the Int128 packing path)."""
    grid = GRIDS[draw(st.sampled_from(grids))]
    unit = draw(st.sampled_from(["us", "ns", "ms"] if grid is not GRIDS["wide"] else ["ns", "us"]))
    query_unit = draw(st.sampled_from(["us", "ns"]))
    categorical = draw(st.booleans())
    string_type = pl.Categorical if categorical else pl.String
    n_views = draw(st.integers(1, 3))
    composite = draw(st.lists(st.booleans(), min_size=n_views, max_size=n_views))
    times = st.sampled_from(grid)
    maybe_time = st.one_of(times, times, times, times, st.none())
    drivers = st.sampled_from([1, 2, 3, None]) if draw(st.booleans()) else st.sampled_from([1, 2])
    sessions = st.sampled_from(["a", "b", None])
    views = []
    for i in range(n_views):
        rows = draw(
            st.lists(
                st.tuples(
                    drivers,
                    sessions,
                    maybe_time,
                    maybe_time,
                    st.one_of(st.integers(-5, 5), st.none()),
                    st.sampled_from(["p", "q", None]),
                    FLOATS,
                ),
                max_size=14,
            )
        )
        f = pl.DataFrame(
            rows,
            schema={
                "driver": pl.Int64,
                "session": string_type,
                ET: pl.Datetime("us", "UTC"),
                AV: pl.Datetime("us", "UTC"),
                "num": pl.Int64,
                "txt": string_type,
                "flt": pl.Float64,
            },
            orient="row",
        ).with_columns(pl.col(ET, AV).dt.cast_time_unit(unit))
        keys = ("driver", "session") if composite[i] else ("driver",)
        presorted = draw(st.booleans())
        lf = sort_for_retrieval(f, keys) if presorted else f.lazy()
        feats = {f"v{i}_num": "num"}
        if draw(st.booleans()):
            feats[f"v{i}_txt"] = "txt"
        if draw(st.booleans()):
            feats[f"v{i}_flt"] = "flt"
        views.append(ViewFrame(f"view{i}", lf, keys, feats, presorted=presorted))
    qrows = draw(
        st.lists(
            st.tuples(
                st.sampled_from([1, 2, 3, 4, None]),
                sessions,
                st.one_of(
                    times,
                    times,
                    times,
                    st.none(),
                    st.sampled_from([g + timedelta(minutes=30) for g in grid]),
                ),
            ),
            max_size=16,
        )
    )
    qdtype = draw(st.sampled_from([pl.Int64, pl.Int32, pl.UInt16]))
    q = pl.DataFrame(
        qrows,
        schema={"driver": qdtype, "session": pl.String, ET: pl.Datetime("us", "UTC")},
        orient="row",
    ).with_columns(pl.col(ET).dt.cast_time_unit(query_unit))
    q = q.with_columns(pl.int_range(pl.len()).alias("qid"))
    if q.height and draw(st.booleans()):  # duplicated query rows
        q = pl.concat([q, q.sample(fraction=0.5, seed=draw(st.integers(0, 9)))])
    kw = {
        "inclusive": draw(st.booleans()),
        "ttl": draw(
            st.one_of(
                st.none(),
                st.sampled_from([timedelta(0), timedelta(hours=1), timedelta(minutes=90)]),
            )
        ),
        "with_availability": draw(st.booleans()),
    }
    return q, views, kw


def test_generated_cases_reach_the_int128_packing_path(monkeypatch):
    """The strategy is not only narrow cases: it produces views whose packed (key run,
    available_at) column needs Int128, which the engine then packs that way."""
    import hypothesis

    from featurestore import retrieval_packed

    real, seen = retrieval_packed._pack, []

    def recording(*args, **kwargs):
        packed = real(*args, **kwargs)
        if packed is not None:
            seen.append(packed[0].dtype)
        return packed

    monkeypatch.setattr(retrieval_packed, "_pack", recording)

    def packs_int128(case) -> bool:
        seen.clear()
        q, views, kw = case
        point_in_time_join(q, views, **kw)
        return pl.Int128 in seen

    q, views, kw = hypothesis.find(
        scenarios(grids=("wide",)), packs_int128,
        settings=settings(max_examples=500, database=None, derandomize=True, deadline=None))
    check_all(q, views, **kw)  # and that case agrees with both oracles


@SETTINGS
@given(scenarios())
def test_engine_matches_both_oracles_on_generated_cases(case):
    q, views, kw = case
    check_all(q, views, **kw)


@SETTINGS
@given(scenarios(grids=("2024",)),
       st.sampled_from(["Europe/London", "Australia/Lord_Howe", "America/Santiago"]))
def test_generated_cases_in_other_time_zones(case, zone):
    q, views, kw = case
    zoned = q.with_columns(pl.col(ET).dt.convert_time_zone(zone))
    naive = zoned.with_columns(pl.col(ET).dt.replace_time_zone(None))
    base = check_all(q, views, **kw)
    assert check_all(zoned, views, **kw).drop(ET).equals(base.drop(ET))
    # The grid avoids DST changes in these zones, so naive wall times are unambiguous.
    assert check_all(naive, views, cutoff_timezone=zone, **kw).drop(ET).equals(base.drop(ET))


@SETTINGS
@given(scenarios())
def test_sort_for_retrieval_keeps_ingestion_order_for_full_ties(case):
    q, views, kw = case
    unsorted = [ViewFrame(v.name, v.frame, v.keys, v.features) for v in views]
    resorted = [
        ViewFrame(v.name, sort_for_retrieval(v.frame, v.keys), v.keys, v.features, presorted=True)
        for v in views
    ]
    a = point_in_time_join(q, unsorted, **kw)
    b = point_in_time_join(q, resorted, **kw)
    assert a.equals(b)
    kw["with_availability"] = True
    assert audit(point_in_time_join(q, resorted, **kw), ET, inclusive=kw["inclusive"]).ok


def test_larger_random_case_with_many_ties_against_duckdb():
    import random

    rnd = random.Random(7)
    grid = [BASE + timedelta(minutes=m) for m in range(0, 600, 7)]
    rows = [
        (rnd.randint(0, 60), rnd.choice(grid), rnd.choice(grid), rnd.randint(0, 99))
        for _ in range(6000)
    ]
    f = pl.DataFrame(
        rows,
        schema={
            "driver": pl.Int32,
            ET: pl.Datetime("us", "UTC"),
            AV: pl.Datetime("us", "UTC"),
            "num": pl.Int64,
        },
        orient="row",
    )
    q = pl.DataFrame(
        {
            "driver": [rnd.randint(0, 70) for _ in range(3000)],
            ET: [rnd.choice(grid) for _ in range(3000)],
        }
    )
    for presorted in (False, True):
        lf = sort_for_retrieval(f, ["driver"]) if presorted else f.lazy()
        v = ViewFrame("v", lf, ("driver",), {"x": "num"}, presorted=presorted)
        for inclusive in (False, True):
            got = point_in_time_join(q, [v], inclusive=inclusive, with_availability=True)
            expected = duckdb_oracle(q, [v], inclusive=inclusive, with_availability=True)
            assert got.to_dicts() == expected
            lazy = point_in_time_join_lazy(q, [v], inclusive=inclusive, with_availability=True)
            assert lazy.collect(engine="streaming").to_dicts() == expected


# --------------------------------------------------------------------------------------------
# audit


def _audited_result(inclusive: bool = False) -> pl.DataFrame:
    f = frame(
        [(d, utc(2024, 1, h), utc(2024, 1, h, 6), d * 10 + h) for d in (1, 2) for h in (1, 3, 5)]
    )
    q = pl.DataFrame(
        {
            "driver_id": [1, 2, 1, 2, 3, 1],
            ET: [*(utc(2024, 1, h) for h in (2, 4, 6, 1, 9)), utc(2024, 1, 3, 6)],
        }
    )
    v = ViewFrame("v", f.lazy(), ("driver_id",), {"x": "value", "y": "value"})
    return point_in_time_join(q, [v], with_availability=True, inclusive=inclusive)


def test_audit_passes_on_engine_output():
    res = _audited_result()
    report = audit(res, ET, ["x", "y"])
    assert isinstance(report, AuditReport)
    assert report.ok and report.n_violations == 0
    assert report.n_checked == 2 * res["x"].is_not_null().sum() > 0
    assert audit(res, ET).n_checked == report.n_checked  # features found from the columns


def test_audit_catches_a_planted_violation():
    res = _audited_result()
    # Plant: row 0's x claims a value available one microsecond after its cutoff.
    cut0 = res[ET][0]
    planted = res.with_columns(
        pl.when(pl.int_range(pl.len()) == 0)
        .then(pl.lit(cut0 + timedelta(microseconds=1)))
        .otherwise(pl.col("x__available_at"))
        .alias("x__available_at")
    )
    report = audit(planted, ET, ["x", "y"])
    assert not report.ok and report.n_violations == 1
    assert report.examples[0]["row"] == 0 and report.examples[0]["feature"] == "x"
    assert "1 violations" in str(report)


def test_audit_boundary_and_unproven_values():
    res = _audited_result()
    at_cutoff = res.with_columns(
        pl.when(pl.col("x").is_not_null()).then(pl.col(ET)).alias("x__available_at")
    )
    n = int(res["x"].is_not_null().sum())
    assert audit(at_cutoff, ET, ["x"]).n_violations == n
    assert audit(at_cutoff, ET, ["x"], inclusive=True).ok
    # A value with no recorded availability cannot be proven safe.
    unproven = res.with_columns(
        pl.lit(None, dtype=res.schema["y__available_at"]).alias("y__available_at")
    )
    assert audit(unproven, ET, ["y"]).n_violations == n
    with pytest.raises(DataError, match="z__available_at"):
        audit(res.with_columns(z=pl.lit(1)), ET, ["z"])
    # Naive cutoff read in a zone east of UTC: the same wall clock is an earlier instant.
    wall = pl.DataFrame(
        {ET: [datetime(2024, 1, 1, 12)], "x": [1], "x__available_at": [utc(2024, 1, 1, 11)]}
    )
    assert audit(wall, ET, ["x"]).ok
    assert audit(wall, ET, ["x"], cutoff_timezone="Asia/Tokyo").n_violations == 1  # 03:00 UTC


def test_inclusive_result_fails_strict_audit_only_when_it_uses_boundary_values():
    res_incl = _audited_result(inclusive=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strict_report = audit(res_incl, ET, ["x"])
    boundary = res_incl.filter(pl.col("x__available_at") == pl.col(ET)).height
    assert boundary == 1  # the last query row's cutoff equals an available_at
    assert strict_report.n_violations == boundary
    assert audit(res_incl, ET, ["x"], inclusive=True).ok
