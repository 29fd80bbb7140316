"""The main job, end to end at a reduced size: its outputs, not just its exit code."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest


def run_quickstart(out: Path) -> dict:  # type: ignore[type-arg]
    env = {k: v for k, v in os.environ.items() if k != "FEATURESTORE_REGISTRY_URL"}
    proc = subprocess.run([sys.executable, "-m", "featurestore", "quickstart", "-o", str(out),
                           "--races", "5", "--drivers", "14", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:  # type: ignore[type-arg]
    out = tmp_path_factory.mktemp("qs") / "store"
    return out, run_quickstart(out)


def test_frames_audit_and_guard(first_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    out, summary = first_run
    results = pl.read_parquet(out / "season" / "results.parquet")
    prerace = pl.read_parquet(summary["prerace"]["path"])
    inrace = pl.read_parquet(summary["inrace"]["path"])
    assert prerace.height == results.height == summary["prerace"]["rows"]
    assert prerace.columns[:5] == ["race_id", "driver_id", "track_id", "event_timestamp", "label_finish"]
    assert len(prerace.columns) == 5 + 11
    assert inrace.height == summary["inrace"]["rows"] > 0 and len(inrace.columns) == 5 + 11 + 21
    assert summary["audit"]["checked"] > 1000 and summary["audit"]["violations"] == 0
    assert "lap_time_mean_last_10l (tier race)" in summary["leakage_error"]
    for picture in summary["pictures"]:
        assert Path(picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Qualifying and practice values are known for every pre-race row; form is known from race 2.
    assert prerace["qualifying_position"].null_count() == 0
    assert prerace.filter(pl.col("race_id") > 1)["prev_finish"].null_count() < prerace.height * 0.1
    assert inrace["avg_position_last_10l"].null_count() == 0


def test_previous_finish_matches_a_plain_loop(first_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    out, summary = first_run
    results = pl.read_parquet(out / "season" / "results.parquet").to_dicts()
    schedule = {r["race_id"]: r for r in pl.read_parquet(out / "season" / "schedule.parquet").to_dicts()}
    prerace = pl.read_parquet(summary["prerace"]["path"]).to_dicts()
    for row in prerace:
        cutoff = schedule[row["race_id"]]["green_flag"]
        earlier = [r for r in results if r["driver_id"] == row["driver_id"] and r["result_time"] < cutoff]
        expected = max(earlier, key=lambda r: r["result_time"])["finish_position"] if earlier else None
        assert row["prev_finish"] == expected, row


def test_field_features_match_a_plain_loop(first_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    """The in-race field features, recomputed from the season files with loops: the driver's
    newest lap available before the cutoff, compared with the cars of that lap available then.
    Live timing (gap to the leader): a lap is available when the car crosses the line. Lap chart
    (rank, delta to the median): a lap is available once every car completing it has."""
    out, summary = first_run
    laps = pl.read_parquet(out / "season" / "race_laps.parquet").to_dicts()
    by_lap: dict[tuple[int, int], list[dict]] = {}
    for lap in laps:
        by_lap.setdefault((lap["race_id"], lap["lap"]), []).append(lap)
    complete: dict[tuple[int, int], object] = {}
    for race_id, n in sorted(by_lap):  # laps are published in order
        done = max(lap["lap_timestamp"] for lap in by_lap[(race_id, n)])
        complete[(race_id, n)] = max(done, complete.get((race_id, n - 1), done))
    inrace = pl.read_parquet(summary["inrace"]["path"]).to_dicts()
    for row in inrace:
        cutoff = row["event_timestamp"]
        mine = [lap for lap in laps if lap["driver_id"] == row["driver_id"]
                and lap["race_id"] == row["race_id"]]
        live = max((lap for lap in mine if lap["lap_timestamp"] < cutoff),
                   key=lambda lap: lap["lap_timestamp"])
        ahead = [o["race_time"] for o in by_lap[(live["race_id"], live["lap"])]
                 if o["lap_timestamp"] <= live["lap_timestamp"]]
        assert row["gap_to_leader"] == pytest.approx(live["race_time"] - min(ahead)), row
        chart = max((lap for lap in mine if complete[(lap["race_id"], lap["lap"])] < cutoff),
                    key=lambda lap: lap["lap"])
        field = [o["lap_time"] for o in by_lap[(chart["race_id"], chart["lap"])]]
        assert row["lap_time_rank_on_lap"] == 1 + sum(t < chart["lap_time"] for t in field), row
        assert row["lap_time_delta_field_median"] == pytest.approx(
            chart["lap_time"] - statistics.median(field)), row
    assert any(row["gap_to_leader"] > 0 for row in inrace)


def test_second_run_is_a_noop(first_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    out, summary = first_run
    again = run_quickstart(out)
    assert again["apply"]["add"] == again["apply"]["version"] == again["apply"]["update"] == 0
    assert {m["status"] for m in again["materialize"]} == {"up-to-date"}
    assert {i["status"] for i in again["ingest"]} == {"up-to-date"}
    assert pl.read_parquet(again["prerace"]["path"]).equals(pl.read_parquet(summary["prerace"]["path"]))


def test_the_suggested_retrieve_command_works(first_run: tuple[Path, dict], tmp_path: Path) -> None:  # type: ignore[type-arg]
    out, summary = first_run
    target = tmp_path / "train.parquet"
    proc = subprocess.run([sys.executable, "-m", "featurestore", "-s", str(out), "retrieve",
                           "--entities", str(out / "frames" / "prerace_entities.parquet"),
                           "--features", "prerace_model", "--tier", "qualifying", "--audit",
                           "--output", str(target), "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["audit"]["violations"] == 0
    assert pl.read_parquet(target).equals(pl.read_parquet(summary["prerace"]["path"]))


def test_the_suggested_online_command_needs_and_takes_a_tier(first_run: tuple[Path, dict]) -> None:  # type: ignore[type-arg]
    out, _ = first_run
    args = [sys.executable, "-m", "featurestore", "-s", str(out), "online", "--key", "driver_id=1",
            "--features", "prev_finish,avg_finish_last_5", "--json"]
    proc = subprocess.run([*args, "--tier", "qualifying"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert set(row) == {"driver_id", "prev_finish", "avg_finish_last_5"}
    missing = subprocess.run(args, capture_output=True, text=True)
    assert missing.returncode == 2 and "--tier" in missing.stderr
