"""Ingestion: time zones, validation errors that name the culprit, causal fills."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import DataError, Entity, Feature, Fill, Source
from featurestore.sourcedata import causal_fill
from tests.storekit import basic_defs, open_store, write_results


def test_naive_times_are_read_in_the_declared_zone(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.apply(basic_defs(write_results(tmp_path / "r.parquet")))
    df = store.read_source("results")
    # 14:00 US Eastern in February (EST, UTC-5) is 19:00 UTC.
    first = df.filter(pl.col("driver_id") == 1)["event_timestamp"][0]
    assert first == dt.datetime(2025, 2, 16, 19, tzinfo=dt.UTC)
    assert df.schema["event_timestamp"] == pl.Datetime("us", "UTC")
    assert (df["available_at"] == df["event_timestamp"]).all()  # historical tier, lag 0


def test_zoned_times_are_converted_not_reinterpreted(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pl.DataFrame({"driver_id": [1], "t": [dt.datetime(2025, 7, 6, 15)]}).with_columns(
        pl.col("t").dt.replace_time_zone("America/Chicago"), x=pl.lit(1.0)).write_parquet(path)
    store = open_store(tmp_path)
    store.apply([Entity("driver", ("driver_id",)),
                 Source("s", str(path), "driver", "t", timezone="Asia/Tokyo"),
                 Feature("x", source="s")])
    assert store.read_source("s")["event_timestamp"][0] == dt.datetime(2025, 7, 6, 20, tzinfo=dt.UTC)


def test_tier_lag_sets_available_at(tmp_path: Path) -> None:
    from featurestore import Definitions, Tier

    store = open_store(tmp_path)
    tiers = [Tier("historical", 0, dt.timedelta(hours=4)), Tier("race", 1)]
    store.apply(Definitions.of(basic_defs(write_results(tmp_path / "r.parquet")), tiers=tiers))
    df = store.read_source("results")
    assert ((df["available_at"] - df["event_timestamp"]) == dt.timedelta(hours=4)).all()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.with_columns(pl.lit(None, pl.Int64).alias("driver_id")),
         r"key column 'driver_id' has 4 null value\(s\)"),
        (lambda d: d.with_columns(pl.lit(None, pl.Datetime).alias("race_date")),
         r"event-time column 'race_date' has 4 null"),
        (lambda d: pl.concat([d, d.head(1)]), r"rows share their key and event time"),
        (lambda d: d.with_columns(pl.col("finish").cast(pl.String)),
         r"column 'finish' has dtype String, the source was registered with Int64"),
        (lambda d: d.drop("race_date"), r"column 'race_date' is missing"),
    ],
)
def test_bad_rows_are_refused_with_the_column_named(tmp_path: Path, mutate, message) -> None:  # type: ignore[no-untyped-def]
    path = write_results(tmp_path / "r.parquet")
    store = open_store(tmp_path)
    store.apply(basic_defs(path))
    mutate(pl.read_parquet(path)).write_parquet(path)
    with pytest.raises(DataError, match=message):
        store.ingest()
    assert store.list("artifact") == []


def test_empty_and_corrupt_files_are_named(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet")
    store = open_store(tmp_path)
    store.apply(basic_defs(path))
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"r.parquet: file is empty"):
        store.ingest()
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"r.parquet: cannot read as Parquet"):
        store.ingest()


def test_duplicates_can_keep_last(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    t = dt.datetime(2025, 1, 1)
    pl.DataFrame({"driver_id": [1, 1], "t": [t, t], "x": [1.0, 2.0]}).write_parquet(path)
    store = open_store(tmp_path)
    store.apply([Entity("driver", ("driver_id",)),
                 Source("s", str(path), "driver", "t", on_duplicate="keep_last"),
                 Feature("x", source="s")])
    assert store.read_source("s")["x"].to_list() == [2.0]


def test_ingest_skips_unchanged_inputs(tmp_path: Path) -> None:
    path = write_results(tmp_path / "r.parquet")
    store = open_store(tmp_path)
    store.apply(basic_defs(path))
    assert [r["status"] for r in store.ingest()] == ["ingested"]
    assert [r["status"] for r in store.ingest()] == ["up-to-date"]
    write_results(path, extra={"laps_led": [1, 2, 3, 4]})
    assert [r["status"] for r in store.ingest()] == ["ingested"]
    assert len(store.list("artifact")) == 2


def test_fill_forward_then_value(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pl.DataFrame({
        "driver_id": [1, 1, 1, 2, 2],
        "t": [dt.datetime(2025, 1, d) for d in (1, 2, 3, 1, 2)],
        "x": [None, 2.0, None, None, None],
    }).write_parquet(path)
    store = open_store(tmp_path)
    store.apply([Entity("driver", ("driver_id",)),
                 Source("s", str(path), "driver", "t", fills=(Fill("x", "forward", -1.0),)),
                 Feature("x", source="s")])
    assert store.read_source("s")["x"].to_list() == [-1.0, 2.0, 2.0, -1.0, -1.0]


def _fill_oracle(rows: list[tuple[int, float | None]], method: str, value: float | None) -> list[float | None]:
    """Row by row, looking only backwards within the entity."""
    out: list[float | None] = []
    for i, (key, x) in enumerate(rows):
        if x is None:
            earlier = [v for k, v in rows[:i] if k == key and v is not None]
            if earlier:
                x = earlier[-1] if method == "forward" else sum(earlier) / len(earlier)
            else:
                x = value
        out.append(x)
    return out


entity_rows = st.lists(st.tuples(st.integers(0, 3),
                                 st.one_of(st.none(), st.floats(-100, 100, allow_nan=False))),
                       max_size=40)


@settings(max_examples=150, deadline=None)
@given(rows=entity_rows, method=st.sampled_from(["forward", "expanding_mean"]),
       value=st.one_of(st.none(), st.just(0.0)))
def test_causal_fill_matches_oracle_and_ignores_the_future(rows, method, value) -> None:  # type: ignore[no-untyped-def]
    # Rows are already in time order within each entity (as ingestion sorts them).
    rows = sorted(rows, key=lambda r: r[0])
    frame = pl.DataFrame({"k": [r[0] for r in rows], "x": [r[1] for r in rows]},
                         schema={"k": pl.Int64, "x": pl.Float64})
    fills = [{"column": "x", "method": method, "value": value}]
    full = causal_fill(frame, ["k"], fills)["x"].to_list()
    assert full == pytest.approx(_fill_oracle(rows, method, value), nan_ok=True)
    for i in range(len(rows)):
        key = rows[i][0]
        # Remove every later row of the same entity: row i's filled value must not change.
        kept = [r for j, r in enumerate(rows) if j <= i or r[0] != key]
        idx = kept.index(rows[i]) if rows.count(rows[i]) == 1 else None
        if idx is None:
            continue
        truncated = causal_fill(pl.DataFrame({"k": [r[0] for r in kept], "x": [r[1] for r in kept]},
                                             schema={"k": pl.Int64, "x": pl.Float64}),
                                ["k"], fills)["x"].to_list()
        assert truncated[idx] == pytest.approx(full[i], nan_ok=True)
