"""The quickstart season generator: determinism, shapes and the invariants of real race data."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from featurestore.quickstart.season import EASTERN, build_season, generate_season

N_RACES = 3
N_DRIVERS = 12
TS = pl.Datetime("us", EASTERN)


@pytest.fixture(scope="module")
def season(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pl.DataFrame]:
    files = generate_season(
        tmp_path_factory.mktemp("season"), seed=7, n_races=N_RACES, n_drivers=N_DRIVERS
    )
    return files.read()


def test_files_written_and_read_back(tmp_path: Path) -> None:
    files = generate_season(tmp_path / "out", seed=3, n_races=1, n_drivers=8)
    assert set(files.as_dict()) == {
        "drivers", "tracks", "schedule", "practice_laps", "qualifying", "race_laps", "results",
    }
    for path in files.as_dict().values():
        assert path.parent == tmp_path / "out" and path.suffix == ".parquet" and path.exists()
    assert not list((tmp_path / "out").glob(".*tmp"))


def test_same_seed_gives_identical_frames_and_bytes(tmp_path: Path) -> None:
    a = generate_season(tmp_path / "a", seed=11, n_races=2, n_drivers=10)
    b = generate_season(tmp_path / "b", seed=11, n_races=2, n_drivers=10)
    for name, path in a.as_dict().items():
        assert pl.read_parquet(path).equals(pl.read_parquet(b.as_dict()[name])), name
        assert path.read_bytes() == b.as_dict()[name].read_bytes(), name


def test_different_seed_differs() -> None:
    a = build_season(seed=1, n_races=1, n_drivers=10)
    b = build_season(seed=2, n_races=1, n_drivers=10)
    for name in ("drivers", "practice_laps", "qualifying", "race_laps", "results"):
        assert not a[name].equals(b[name]), name
    assert a["tracks"].equals(b["tracks"])  # real tracks, not random


def test_first_races_do_not_depend_on_n_races() -> None:
    short = build_season(seed=5, n_races=1, n_drivers=10)
    longer = build_season(seed=5, n_races=2, n_drivers=10)
    assert short["race_laps"].equals(longer["race_laps"].filter(pl.col("race_id") == 1))


def test_schema(season: dict[str, pl.DataFrame]) -> None:
    i32, f64, b, s = pl.Int32, pl.Float64, pl.Boolean, pl.String
    expected = {
        "drivers": {"driver_id": i32, "driver_name": s, "team": s, "car_number": i32,
                    "manufacturer": s, "full_time": b},
        "tracks": {"track_id": i32, "track_name": s, "track_type": s, "length_miles": f64,
                   "scheduled_laps": i32},
        "schedule": {"race_id": i32, "season": i32, "round": i32, "track_id": i32,
                     "scheduled_laps": i32, "practice_start": TS, "practice_end": TS,
                     "qualifying_start": TS, "qualifying_end": TS, "green_flag": TS,
                     "checkered_flag": TS},
        "practice_laps": {"race_id": i32, "driver_id": i32, "lap": i32, "run": i32,
                          "lap_time": f64, "lap_timestamp": TS, "pit": b},
        "qualifying": {"race_id": i32, "driver_id": i32, "qualifying_position": i32,
                       "best_lap_time": f64, "best_speed_mph": f64, "session_end": TS},
        "race_laps": {"race_id": i32, "driver_id": i32, "lap": i32, "lap_timestamp": TS,
                      "race_time": f64, "running_position": i32, "lap_time": f64, "pit": b,
                      "caution": b},
        "results": {"race_id": i32, "driver_id": i32, "start_position": i32,
                    "finish_position": i32, "laps_completed": i32, "laps_led": i32,
                    "status": s, "dnf": b, "result_time": TS},
    }
    for name, schema in expected.items():
        assert dict(season[name].schema) == schema, name
        assert season[name].null_count().sum_horizontal().item() == 0, name
    assert "skill" not in season["drivers"].columns


def test_shapes(season: dict[str, pl.DataFrame]) -> None:
    assert season["drivers"].height == N_DRIVERS
    assert season["tracks"].height >= 25
    assert season["schedule"].height == N_RACES
    entrants = season["results"].group_by("race_id").len()["len"]
    assert entrants.min() >= N_DRIVERS - N_DRIVERS // 10 and entrants.max() <= N_DRIVERS
    assert season["qualifying"].height == season["results"].height
    # Daytona 200 + Atlanta 260 + COTA 95 laps, ~12 cars
    assert 4_500 <= season["race_laps"].height <= 7_000
    assert 500 <= season["practice_laps"].height <= 2_500
    key = ["race_id", "driver_id", "lap"]
    assert not season["race_laps"].select(key).is_duplicated().any()
    assert not season["practice_laps"].select(key).is_duplicated().any()


def test_lap_timing_realistic(season: dict[str, pl.DataFrame]) -> None:
    laps = season["race_laps"].join(season["schedule"], on="race_id").join(
        season["tracks"].select("track_id", "track_name"), on="track_id"
    )
    green = laps.filter(~pl.col("caution")).group_by("track_name").agg(
        pl.col("lap_time").quantile(0.1)
    )
    p10 = dict(green.iter_rows())
    assert 45.5 < p10["Daytona International Speedway"] < 48.5
    assert 98 < p10["Circuit of the Americas"] < 104
    speed = season["qualifying"].join(season["schedule"], on="race_id").filter(
        pl.col("track_id") == 1
    )["best_speed_mph"]
    assert 175 < speed.median() < 190  # Daytona single-car qualifying


def test_running_positions_are_a_ranking_per_lap(season: dict[str, pl.DataFrame]) -> None:
    per_lap = season["race_laps"].group_by("race_id", "lap").agg(
        pl.len().alias("k"),
        pl.col("running_position").min().alias("lo"),
        pl.col("running_position").max().alias("hi"),
        pl.col("running_position").n_unique().alias("distinct"),
    )
    assert (per_lap["lo"] == 1).all()
    assert (per_lap["hi"] == per_lap["k"]).all()
    assert (per_lap["distinct"] == per_lap["k"]).all()
    # the ranking is the order in which the cars crossed the line on that lap
    ranked = season["race_laps"].with_columns(
        pl.col("lap_timestamp").rank("ordinal").over("race_id", "lap").alias("by_time")
    )
    assert (ranked["by_time"] == ranked["running_position"]).all()


def test_lap_timestamps(season: dict[str, pl.DataFrame]) -> None:
    laps = season["race_laps"].sort("race_id", "driver_id", "lap").join(
        season["schedule"].select("race_id", "green_flag", "checkered_flag"), on="race_id"
    )
    checks = laps.with_columns(
        (pl.col("lap_timestamp").diff().over("race_id", "driver_id")).alias("step"),
        (pl.col("lap").diff().over("race_id", "driver_id")).alias("lap_step"),
        (pl.col("green_flag") + pl.duration(
            microseconds=(pl.col("lap_time") * 1e6).round().cast(pl.Int64)
            .cum_sum().over("race_id", "driver_id", order_by="lap")
        )).alias("expected"),
    )
    assert (checks["step"].drop_nulls() > dt.timedelta(0)).all()
    assert (checks["lap_step"].drop_nulls() == 1).all()
    assert (checks.group_by("race_id", "driver_id").agg(pl.col("lap").min())["lap"] == 1).all()
    assert (checks["expected"] == checks["lap_timestamp"]).all()
    assert (checks["lap_timestamp"] > checks["green_flag"]).all()
    # race_time is the same cumulative sum, in seconds since the green flag
    since_green = (checks["lap_timestamp"] - checks["green_flag"]).dt.total_microseconds()
    assert ((checks["race_time"] * 1e6).round().cast(pl.Int64) == since_green).all()
    # the winner's last lap is the checkered flag
    winners = season["results"].filter(pl.col("finish_position") == 1).join(
        laps, left_on=["race_id", "driver_id", "laps_completed"],
        right_on=["race_id", "driver_id", "lap"],
    )
    assert (winners["lap_timestamp"] == winners["checkered_flag"]).all()


def test_times_are_eastern_and_sessions_ordered(season: dict[str, pl.DataFrame]) -> None:
    sched = season["schedule"]
    for col in ("practice_start", "practice_end", "qualifying_start", "qualifying_end",
                "green_flag", "checkered_flag"):
        assert sched.schema[col] == TS
    assert (sched["practice_start"] < sched["practice_end"]).all()
    assert (sched["practice_end"] < sched["qualifying_start"]).all()
    assert (sched["qualifying_start"] < sched["qualifying_end"]).all()
    assert (sched["qualifying_end"] < sched["green_flag"]).all()
    assert (sched["green_flag"] < sched["checkered_flag"]).all()
    # Fri / Sat / Sun for these three weekends; the 2025 season opens at Daytona in February
    assert sched["practice_start"].dt.weekday().to_list() == [5] * N_RACES
    assert sched["qualifying_start"].dt.weekday().to_list() == [6] * N_RACES
    assert sched["green_flag"].dt.weekday().to_list() == [7] * N_RACES
    first = sched.row(0, named=True)["green_flag"]
    assert first == dt.datetime(2025, 2, 16, 14, 30, tzinfo=first.tzinfo)
    assert str(first.tzinfo) == EASTERN

    q = season["qualifying"].join(sched, on="race_id")
    assert (q["session_end"] == q["qualifying_end"]).all()
    assert (q["session_end"] < q["green_flag"]).all()
    p = season["practice_laps"].join(sched, on="race_id")
    assert (p["lap_timestamp"] > p["practice_start"]).all()
    assert (p["lap_timestamp"] <= p["practice_end"]).all()
    r = season["results"].join(sched, on="race_id")
    assert (r["result_time"] >= r["checkered_flag"]).all()
    last_lap = season["race_laps"].group_by("race_id").agg(pl.col("lap_timestamp").max())
    assert (last_lap.join(r, on="race_id").select(
        pl.col("lap_timestamp") <= pl.col("result_time")).to_series()).all()


def test_season_crosses_dst() -> None:
    sched = build_season(seed=7, n_races=4, n_drivers=8)["schedule"]
    phoenix = sched.filter(pl.col("round") == 4).row(0, named=True)  # Sunday 2025-03-09
    assert phoenix["practice_start"].utcoffset() == dt.timedelta(hours=-5)  # EST
    assert phoenix["green_flag"].utcoffset() == dt.timedelta(hours=-4)  # EDT


def test_results_consistent_with_laps(season: dict[str, pl.DataFrame]) -> None:
    laps, res = season["race_laps"], season["results"]
    agg = laps.group_by("race_id", "driver_id").agg(
        pl.col("lap").max().alias("max_lap"),
        pl.len().alias("n_laps"),
        (pl.col("running_position") == 1).sum().cast(pl.Int32).alias("led"),
        pl.col("running_position").sort_by("lap").last().alias("last_pos"),
    )
    both = res.join(agg, on=["race_id", "driver_id"], how="left")
    assert (both["laps_completed"] == both["n_laps"]).all()
    assert (both["laps_completed"] == both["max_lap"]).all()
    assert (both["laps_led"] == both["led"]).all()
    per_race = res.group_by("race_id").agg(
        pl.col("finish_position").sort().alias("fp"), pl.len().alias("n")
    )
    for fp, n in per_race.select("fp", "n").iter_rows():
        assert fp == list(range(1, n + 1))
    # finishers: the finish order is their position when they crossed the line the last time
    finishers = both.filter(~pl.col("dnf"))
    assert (finishers["status"] == "running").all()
    assert (finishers["finish_position"] == finishers["last_pos"]).all()
    # classification: by laps completed first
    ordered = res.sort("race_id", "finish_position")
    assert (ordered.group_by("race_id", maintain_order=True).agg(
        (pl.col("laps_completed").diff().drop_nulls() <= 0).all()
    )["laps_completed"]).all()
    # the winner ran the full distance (overtime may add laps)
    sched = season["schedule"]
    win = res.filter(pl.col("finish_position") == 1).join(sched, on="race_id")
    assert (win["laps_completed"] >= win["scheduled_laps"]).all()
    # start positions are the qualifying result
    q = season["qualifying"].join(res, on=["race_id", "driver_id"])
    assert (q["qualifying_position"] == q["start_position"]).all()


def test_laps_led_total_equals_race_distance(season: dict[str, pl.DataFrame]) -> None:
    led = season["results"].group_by("race_id").agg(pl.col("laps_led").sum())
    dist = season["results"].group_by("race_id").agg(pl.col("laps_completed").max())
    assert led.sort("race_id")["laps_led"].to_list() == dist.sort("race_id")[
        "laps_completed"].to_list()


def test_dnfs_have_fewer_laps() -> None:
    res = build_season(seed=7, n_races=8, n_drivers=20)["results"]
    dnf = res.filter(pl.col("dnf"))
    assert dnf.height > 0
    assert set(dnf["status"].unique()) <= {
        "accident", "dvp", "engine", "suspension", "electrical", "brakes", "transmission",
        "overheating", "rear gear", "fuel pump", "vibration",
    }
    winner = res.group_by("race_id").agg(pl.col("laps_completed").max().alias("win_laps"))
    assert (dnf.join(winner, on="race_id").select(
        pl.col("laps_completed") < pl.col("win_laps")).to_series()).all()


def test_caution_laps_are_slower_and_pits_cluster_there(season: dict[str, pl.DataFrame]) -> None:
    laps = season["race_laps"]
    med = laps.group_by("race_id", "caution").agg(pl.col("lap_time").median())
    wide = med.pivot(on="caution", index="race_id", values="lap_time")
    assert (wide["true"] > 1.5 * wide["false"]).all()
    rate = laps.group_by("caution").agg(pl.col("pit").mean()).sort("caution")["pit"]
    assert rate[1] > 3 * rate[0]  # stops happen mostly under yellow
    stops = laps.group_by("race_id", "driver_id").agg(pl.col("pit").sum())
    assert stops["pit"].mean() >= 2


def _stints(laps: pl.DataFrame) -> pl.DataFrame:
    """Green, non-pit, non-out, non-restart laps with their stint id and tyre age."""
    keys = ["race_id", "driver_id"]
    return (
        laps.sort(*keys, "lap")
        .with_columns(
            pl.col("pit").shift(1, fill_value=False).cum_sum().over(keys).alias("stint"),
            pl.col("caution").shift(1, fill_value=False).over(keys).alias("after_yellow"),
            pl.col("pit").shift(1, fill_value=False).over(keys).alias("out_lap"),
        )
        .with_columns(pl.col("lap").rank("ordinal").over(*keys, "stint").alias("tyre_age"))
        .filter(~pl.col("caution") & ~pl.col("pit") & ~pl.col("out_lap")
                & ~pl.col("after_yellow") & (pl.col("lap") > 1))
    )


def test_lap_times_fall_off_within_a_stint(season: dict[str, pl.DataFrame]) -> None:
    green = _stints(season["race_laps"])
    slopes = (
        green.group_by("race_id", "driver_id", "stint")
        .agg(pl.cov("tyre_age", "lap_time").alias("c"), pl.col("tyre_age").var().alias("v"),
             pl.len().alias("n"))
        .filter(pl.col("n") >= 8)
        .select((pl.col("c") / pl.col("v")).alias("slope"))["slope"]
    )
    assert slopes.len() > 20
    assert 0.01 < slopes.median() < 0.2  # seconds per lap of tyre age
    assert (slopes > 0).mean() > 0.75


def test_practice_runs(season: dict[str, pl.DataFrame]) -> None:
    p = season["practice_laps"]
    runs = p.group_by("race_id", "driver_id").agg(
        pl.col("run").n_unique().alias("runs"), pl.col("pit").sum().alias("in_laps"),
        pl.col("run").value_counts().struct.field("count").max().alias("longest"),
    )
    assert runs["runs"].min() >= 2 and runs["runs"].max() <= 5
    assert (runs["longest"] >= 8).mean() > 0.9  # a long run almost always fits
    laps_sorted = p.sort("race_id", "driver_id", "lap")
    step = laps_sorted.select(
        pl.col("lap_timestamp").diff().over("race_id", "driver_id")
    ).to_series().drop_nulls()
    assert (step > dt.timedelta(0)).all()
    # long runs fall off too: in-run laps after the out-lap get slower with tyre age
    long_runs = (
        p.with_columns(pl.len().over("race_id", "driver_id", "run").alias("n"),
                       pl.col("lap").rank("ordinal").over("race_id", "driver_id", "run")
                       .alias("age"))
        .filter((pl.col("n") >= 12) & (pl.col("age") > 1) & ~pl.col("pit"))
        .group_by("race_id", "driver_id", "run")
        .agg((pl.cov("age", "lap_time") / pl.col("age").var()).alias("slope"))
    )
    assert long_runs.height > 5 and long_runs["slope"].median() > 0


def test_qualifying(season: dict[str, pl.DataFrame]) -> None:
    q = season["qualifying"].join(season["schedule"], on="race_id").join(
        season["tracks"], on="track_id"
    )
    for _, grp in q.group_by("race_id"):
        g = grp.sort("qualifying_position")
        assert g["qualifying_position"].to_list() == list(range(1, g.height + 1))
        assert g["best_lap_time"].is_sorted()
    mph = q["length_miles"] / q["best_lap_time"] * 3600
    assert ((mph - q["best_speed_mph"]).abs() < 0.01).all()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="n_races"):
        build_season(n_races=0)
    with pytest.raises(ValueError, match="n_drivers"):
        build_season(n_drivers=2)
    with pytest.raises(ValueError, match="seed"):
        build_season(seed=-1)


def test_plots_write_pngs(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from featurestore.quickstart.plots import plot_availability_timeline, plot_stints

    data = build_season(seed=7, n_races=1, n_drivers=8)
    laps = data["race_laps"]
    driver = int(data["results"].filter(pl.col("finish_position") == 1)["driver_id"][0])
    png = plot_stints(laps, None, driver, 1, tmp_path / "stints.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    one = _stints(laps).filter(pl.col("driver_id") == driver)
    fits = one.select("race_id", "driver_id", "lap", "stint", "tyre_age", "lap_time")
    assert plot_stints(laps, fits, driver, 1, tmp_path / "fits.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="no laps"):
        plot_stints(laps, None, 999, 1, tmp_path / "none.png")

    row = data["schedule"].row(0, named=True)
    entries = [
        ("historical", row["practice_start"] - dt.timedelta(days=7), ["avg_finish_last_5"]),
        ("practice", row["practice_end"], ["practice_best_lap"]),
        ("qualifying", row["qualifying_end"], ["qualifying_position"]),
        ("race", row["green_flag"] + dt.timedelta(minutes=30), ["rolling_lap_time"]),
    ]
    out = plot_availability_timeline(row, entries, tmp_path / "t.png", cutoff=row["green_flag"])
    assert out.stat().st_size > 10_000
    with pytest.raises(ValueError, match="naive"):
        plot_availability_timeline(row, [("race", dt.datetime(2025, 2, 16), ["x"])],
                                   tmp_path / "bad.png")
