"""Real public NASCAR data from ../shared/data, read in place (never copied into the repo).

Skipped when the folder is absent; a failure instead when FEATURESTORE_TEST_REAL_DATA=1 (CI).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from collections import defaultdict
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from tests.realdata import shared_data_root

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nascar_real" / "run.py"
EASTERN = ZoneInfo("America/New_York")


def _example():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("nascar_real_example", EXAMPLE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    data = request.getfixturevalue("shared_data") / "nascar"
    out = tmp_path_factory.mktemp("real") / "store"
    summary = _example().run(data / "cup_results_2014_2024.parquet",
                             data / "lapraptor_cup2025_laps.parquet", out)
    return data, summary


@pytest.fixture(scope="module")
def shared_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_data_root()  # module-scoped here: one real run serves every test


def test_audit_is_clean(real_run) -> None:  # type: ignore[no-untyped-def]
    _, summary = real_run
    assert summary["prerace_rows"] == 15519 and summary["inrace_rows"] > 1000
    assert summary["checked"] > 50_000 and summary["violations"] == 0


def test_previous_finish_and_grid_match_a_plain_loop(real_run) -> None:  # type: ignore[no-untyped-def]
    data, summary = real_run
    rows = pl.read_parquet(data / "cup_results_2014_2024.parquet").filter(
        pl.col("finishing_position") > 0).to_dicts()
    by_driver: dict[int, list[dict]] = defaultdict(list)  # type: ignore[type-arg]
    for r in rows:
        by_driver[r["driver_id"]].append(r)
    frame = pl.read_parquet(summary["prerace_path"]).filter(pl.col("race_season") == 2024)
    assert frame.height == sum(1 for r in rows if r["race_season"] == 2024) > 1000
    for row in frame.to_dicts():
        cutoff = row["event_timestamp"].replace(tzinfo=EASTERN)
        finished = [r for r in by_driver[row["driver_id"]]
                    if (r["race_date"] + dt.timedelta(hours=4)).replace(tzinfo=EASTERN) < cutoff]
        expected_prev = max(finished, key=lambda r: r["race_date"])["finishing_position"] if finished else None
        assert row["prev_finish"] == expected_prev, row
        grids = [r for r in by_driver[row["driver_id"]]
                 if (r["race_date"] - dt.timedelta(hours=1)).replace(tzinfo=EASTERN) < cutoff]
        expected_grid = max(grids, key=lambda r: r["race_date"])["starting_position"]
        assert row["starting_position"] == expected_grid, row


def test_in_race_rolling_position_matches_a_plain_loop(real_run) -> None:  # type: ignore[no-untyped-def]
    _, summary = real_run
    laps = pl.read_parquet(Path(summary["prerace_path"]).parents[1] / "prepared" / "laps.parquet")
    series: dict[tuple[int, int], list[tuple[dt.datetime, int, int]]] = defaultdict(list)
    for r in laps.iter_rows(named=True):
        series[(r["race_num"], r["driver_id"])].append(
            (r["lap_timestamp"], r["lap_number"], r["running_position"]))
    frame = pl.read_parquet(summary["inrace_path"])
    for row in frame.to_dicts():
        seen = sorted(s for s in series[(row["race_num"], row["driver_id"])]
                      if s[0] < row["event_timestamp"])
        if not seen:
            assert row["avg_position_last_10l"] is None
            continue
        # The newest available lap row carries the mean of its last 10 laps (itself included).
        # Its window may reach into the same driver's previous race (entity = driver).
        last = seen[-1]
        history = sorted(s for key, ss in series.items() if key[1] == row["driver_id"] for s in ss
                         if s[0] <= last[0])
        window = [p for _, _, p in history[-10:]]
        assert row["avg_position_last_10l"] == pytest.approx(sum(window) / len(window)), row


def test_absent_data_names_the_variable_to_set(monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Without the data a developer is told which variable to set; CI is failed instead."""
    monkeypatch.setenv("FEATURESTORE_SHARED_DATA", str(tmp_path / "absent"))
    monkeypatch.delenv("FEATURESTORE_TEST_REAL_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match="set FEATURESTORE_SHARED_DATA"):
        shared_data_root()
    monkeypatch.setenv("FEATURESTORE_TEST_REAL_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match=r"FEATURESTORE_TEST_REAL_DATA=1 .* missing"):
        shared_data_root()
