"""Transform views of bucketed snapshots (``featurestore.materialize_buckets``).

Held against the one-file layout, which the oracle and property suites cover: the same rows for
entity-scope (rolling, falloff) and group-scope (field) transforms at several bucket counts;
incremental runs equal a full recompute; each transform call sees one bucket; a failure half-way
leaves the previous artifact and the registry as they were.
"""

from __future__ import annotations

import datetime as dt
import os
import warnings
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import featurestore.plugins as fp
from featurestore import Entity, FeatureStore, Source, View, hookimpl
from featurestore.artifacts import artifact_files, verify_artifact
from featurestore.buckets import BUCKETS_ENV
from featurestore.cutplan import CUT_ID
from featurestore.errors import LeakageError, PluginError
from featurestore.materialize import materialize
from featurestore.plugins import get_transform
from featurestore.transforms import Transform
from tests.test_incremental import VIEWS, laps

FIELD = View("field", "laps", "field", {
    "group_by": ["race_id"], "at": ["lap"],
    "outputs": {"lap_time_rank": {"kind": "rank", "column": "lap_time"},
                "lap_time_vs_median": {"kind": "delta_median", "column": "lap_time"},
                "position_best": {"kind": "delta_best", "column": "position"}}})
ORDER = ["driver_id", "available_at", "event_timestamp"]


def _store(root: Path, frame: pl.DataFrame, views: list[View] | None = None) -> tuple[FeatureStore, Path]:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "laps.parquet"
    frame.write_parquet(path)
    store = FeatureStore(root / "store")
    views = [*VIEWS, FIELD] if views is None else views
    store.apply([Entity("driver", ("driver_id",)),
                 Source("laps", str(path), "driver", "t", tier="race", timezone="UTC"),
                 *views])
    return store, path


def _rows(store: FeatureStore, art: dict[str, Any]) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(f) for f in artifact_files(store.root, art)])


def _check_layout(store: FeatureStore, art: dict[str, Any], n: int) -> None:
    """n parts, each in retrieval order, every driver in one part only."""
    assert len(art["parts"]) == n
    seen: set[int] = set()
    for f in artifact_files(store.root, art):
        part = pl.read_parquet(f)
        assert part.equals(part.sort(ORDER)), f
        drivers = set(part.get_column("driver_id").to_list())
        assert not drivers & seen
        seen |= drivers


@pytest.mark.parametrize("buckets", [2, 3, 7])
def test_bucketed_views_equal_one_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       buckets: int) -> None:
    data = laps(list(range(1, 12)), 30)
    outputs: dict[int, dict[str, pl.DataFrame]] = {}
    for n in (1, buckets):
        monkeypatch.setenv(BUCKETS_ENV, str(n))
        store, _ = _store(tmp_path / f"b{n}", data)
        results = {r.view: r for r in materialize(store)}
        assert {r.status for r in results.values()} == {"materialized"}
        for view, r in results.items():
            assert r.artifact["verified"], (view, r.artifact["verification"])
            if n > 1:
                _check_layout(store, r.artifact, n)
                assert "part by part" in r.as_dict()["verification_report"]["notes"][0]
        outputs[n] = {v: _rows(store, r.artifact) for v, r in results.items()}
        store.close()
    assert set(outputs[1]) == {"rows", "timed", "tyres", "field"}
    for view, one in outputs[1].items():
        assert outputs[buckets][view].sort(ORDER).equals(one), view


@pytest.mark.parametrize("buckets", [3, 5])
def test_bucketed_incremental_equals_full_recompute(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    buckets: int) -> None:
    monkeypatch.setenv(BUCKETS_ENV, str(buckets))
    drivers = list(range(1, 13))
    store, path = _store(tmp_path, laps(drivers, 25))
    first = {r.view: r.artifact for r in materialize(store)}
    snap1 = store.registry.latest_artifact("source", "laps")
    # Drivers 1 and 2 grow; driver 3 gets an edited old row (not growth: its part recomputes).
    grown = pl.concat([laps(drivers, 25), laps([1, 2], 10, start=25)]).with_columns(
        position=pl.when((pl.col("driver_id") == 3) & (pl.col("lap") == 4)).then(99)
        .otherwise(pl.col("position")))
    grown.write_parquet(path)
    results = {r.view: r for r in materialize(store)}
    snap2 = store.registry.latest_artifact("source", "laps")
    changed = [a["checksum"] != b["checksum"] for a, b in zip(snap1["parts"], snap2["parts"],
                                                               strict=True)]
    assert 1 <= sum(changed) < buckets  # the data set is chosen so that some parts stay put
    for view in ("rows", "timed", "tyres"):
        r = results[view]
        assert r.status == "incremental", r.artifact["verification"]
        assert f"{buckets - sum(changed)} of {buckets} parts carried over" in r.artifact["verification"]
        assert r.artifact["verified"]
        old_files, new_files = (artifact_files(store.root, a) for a in (first[view], r.artifact))
        for i, moved in enumerate(changed):
            same = os.stat(old_files[i]).st_ino == os.stat(new_files[i]).st_ino
            assert same == (not moved), (view, i)  # carried over: the very file, linked
        verify_artifact(store.root, r.artifact, trust_cache=False)
    assert results["field"].status == "materialized"  # group scope: always in full
    incremental = {v: _rows(store, r.artifact) for v, r in results.items()}
    full = {r.view: r for r in materialize(store, force=True)}
    for view, r in full.items():
        assert r.status == "materialized"
        assert_frame_equal(_rows(store, r.artifact).sort(ORDER), incremental[view].sort(ORDER),
                           rel_tol=1e-12, abs_tol=1e-12)
    # Old view artifacts are garbage now; removing them leaves the linked parts readable.
    store.gc()
    for view in ("rows", "timed", "tyres"):
        verify_artifact(store.root, store.registry.latest_artifact("view", view),
                        trust_cache=False)
    assert store.doctor()["ok"]
    store.close()


def test_reordered_input_leaves_bucketed_views_up_to_date(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUCKETS_ENV, "3")
    data = laps([1, 2, 3, 4, 5], 12)
    store, path = _store(tmp_path, data, views=[VIEWS[0]])
    [first] = materialize(store)
    data.reverse().write_parquet(path)  # other bytes, the same snapshot parts
    [again] = materialize(store)
    assert store.registry.latest_artifact("source", "laps")["checksum"] == \
        store.artifact(first.artifact["input_artifact_id"])["checksum"]
    assert again.status == "up-to-date" and again.artifact["id"] == first.artifact["id"]
    store.close()


CALLS: list[pl.DataFrame] = []
FAIL_ON: set[int] = set()


def _spy(name: str) -> Transform:
    """A first-party transform that records the key columns of every input it receives (and
    raises on a driver in ``FAIL_ON``). The wrapped transform is looked up when called: the
    registry is being built while this registers."""

    def inner() -> Transform:
        return get_transform(name).transform

    def fn(frame: pl.LazyFrame, params: Any, ctx: Any) -> pl.LazyFrame:
        seen = frame.select(*[c for c in ("driver_id", "race_id", CUT_ID)
                              if c in frame.collect_schema().names()]).collect()
        CALLS.append(seen)
        if FAIL_ON & set(seen.get_column("driver_id").to_list()):
            raise RuntimeError("planned failure")
        return inner()(frame, params, ctx)

    scope = "group" if name == "field" else "entity"
    return Transform(f"spy_{name}", fn,
                     lambda params, schema: inner().declared_schema(params, schema),
                     lookback=lambda params: inner().lookback(params), scope=scope,
                     group_columns=lambda params: inner().group_columns(params))


class SpyPlugin:
    @hookimpl
    def register_transforms(self, register: Any) -> None:
        register(_spy("rolling"))
        register(_spy("field"))


@pytest.fixture
def spies():
    plugin = SpyPlugin()
    fp.pm.register(plugin, name="bucket_spies")
    CALLS.clear()
    FAIL_ON.clear()
    try:
        yield CALLS
    finally:
        fp.pm.unregister(plugin)
        CALLS.clear()
        FAIL_ON.clear()


def _spy_views() -> list[View]:
    rows, field = VIEWS[0], FIELD
    return [View("rows", "laps", "spy_rolling", rows.params),
            View("field", "laps", "spy_field", field.params)]


def test_every_transform_call_sees_one_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             spies: list[pl.DataFrame]) -> None:
    monkeypatch.setenv(BUCKETS_ENV, "4")
    data = laps(list(range(1, 17)), 42)  # 16 drivers, 6 races
    store, _ = _store(tmp_path, data, views=_spy_views())
    snapshot = store.ingest()[0]["artifact"]
    parts = [set(pl.read_parquet(f, columns=["driver_id"]).get_column("driver_id").to_list())
             for f in artifact_files(store.root, snapshot)]
    biggest = max(p["rows"] for p in snapshot["parts"])
    assert biggest < data.height
    materialize(store, ["rows"])
    assert spies
    for call in spies:  # the full runs, and verification's reruns
        drivers = set(call.get_column("driver_id").to_list())
        assert any(drivers <= p for p in parts), drivers
        if CUT_ID not in call.columns:  # not packed copies: a bucket's rows or fewer
            assert call.height <= biggest
    # Each bucket's full run is one call with exactly that bucket's rows.
    for p, meta in zip(parts, snapshot["parts"], strict=True):
        assert any(set(c.get_column("driver_id").to_list()) == p and c.height == meta["rows"]
                   for c in spies if CUT_ID not in c.columns)
    spies.clear()
    materialize(store, ["field"])
    n_races = data.get_column("race_id").n_unique()
    calls = [c for c in spies if c.height]
    races = [set(c.get_column("race_id").to_list()) for c in calls]
    assert max(len(r) for r in races) < n_races  # no call sees every race
    # The group buckets' full runs (verification's reruns see subsets of one): they split
    # the races, each holding every row of its races.
    full = {frozenset(r) for r in races if not any(r < other for other in races)}
    assert sorted(x for r in full for x in r) == sorted(data.get_column("race_id").unique())
    for r in full:
        assert any(c.height == data.filter(pl.col("race_id").is_in(list(r))).height
                   for c in calls)
    store.close()


@pytest.mark.parametrize("view", ["rows", "field"])
def test_a_failure_half_way_leaves_the_previous_artifact(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         spies: list[pl.DataFrame],
                                                         view: str) -> None:
    monkeypatch.setenv(BUCKETS_ENV, "4")
    store, _ = _store(tmp_path, laps(list(range(1, 17)), 21), views=_spy_views())
    [before] = materialize(store, [view])
    artifacts = store.list("artifact")
    snapshot = store.registry.latest_artifact("source", "laps")
    last_part = pl.read_parquet(artifact_files(store.root, snapshot)[-1], columns=["driver_id"])
    FAIL_ON.add(last_part.get_column("driver_id")[0])  # fails in the last bucket (or group)
    with pytest.raises(PluginError, match="planned failure"):
        materialize(store, [view], force=True)
    assert store.list("artifact") == artifacts
    assert store.registry.latest_artifact("view", view)["id"] == before.artifact["id"]
    verify_artifact(store.root, before.artifact, trust_cache=False)
    data = store.root / "data"
    assert not [p for p in data.rglob("*") if p.name.startswith(".fs-tmp-")]
    assert store.doctor()["ok"]
    FAIL_ON.clear()
    [after] = materialize(store, [view], force=True)
    assert _rows(store, after.artifact).equals(_rows(store, before.artifact))
    store.close()


def _peek_next(frame: pl.LazyFrame, params: Any, ctx: Any) -> pl.LazyFrame:
    """The driver's next lap time: a leak."""
    return frame.select(*ctx.keys, ctx.time_column, ctx.available_column,
                        pl.col("lap_time").shift(-1).over(ctx.keys).alias("next_lap_time"))


def _race_median(frame: pl.LazyFrame, params: Any, ctx: Any) -> pl.LazyFrame:
    """The median of every lap of the race, later ones included: a leak across entities."""
    return frame.select(*ctx.keys, ctx.time_column, ctx.available_column,
                        pl.col("lap_time").median().over("race_id").alias("race_median"))


class LeakyPlugin:
    @hookimpl
    def register_transforms(self, register: Any) -> None:
        register(Transform("peek_next", _peek_next,
                           lambda params, schema: {"next_lap_time": pl.Float64()}))
        register(Transform("race_median", _race_median,
                           lambda params, schema: {"race_median": pl.Float64()},
                           scope="group", group_columns=lambda params: ["race_id"]))


@pytest.mark.parametrize("transform", ["peek_next", "race_median"])
def test_bucket_by_bucket_verification_still_refuses_leaks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transform: str) -> None:
    from featurestore.errors import LeakageError

    monkeypatch.setenv(BUCKETS_ENV, "3")
    plugin = LeakyPlugin()
    fp.pm.register(plugin, name="bucket_leaks")
    try:
        store, _ = _store(tmp_path, laps(list(range(1, 10)), 20),
                          views=[View("leaky", "laps", transform, {})])
        with pytest.raises(LeakageError, match=transform):
            materialize(store)
        assert store.registry.latest_artifact("view", "leaky") is None
        assert not list((store.root / "data").rglob(".fs-tmp-*"))
        store.close()
    finally:
        fp.pm.unregister(plugin)


def test_bucket_count_stays_while_it_suffices() -> None:
    from featurestore.buckets import STABLE_SPREAD, stable_count

    assert stable_count(3, 0) == 3 and stable_count(3, 1) == 3  # first bucketed snapshot
    assert stable_count(3, 5) == 5  # enough, and not far too many: kept
    assert stable_count(1, STABLE_SPREAD) == STABLE_SPREAD
    assert stable_count(1, STABLE_SPREAD + 1) == 1  # far too many: what is needed
    assert stable_count(6, 5) == 10 and stable_count(13, 5) == 13  # outgrown: at least double


def test_a_grown_source_under_a_memory_limit_keeps_its_buckets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from featurestore.buckets import MEMORY_ENV

    monkeypatch.delenv(BUCKETS_ENV, raising=False)
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    drivers = list(range(1, 41))
    store, path = _store(tmp_path, laps(drivers, 40), views=[VIEWS[0]])
    store.set_setting("memory_limit", "15KiB")
    [first] = materialize(store)
    n = len(first.artifact["parts"])
    assert n > 2
    # More rows, but a limit that needs fewer buckets now: the count stays, and so the view
    # is rebuilt from the parts that changed only.
    store.set_setting("memory_limit", "30KiB")
    pl.concat([laps(drivers, 40), laps(drivers[:2], 10, start=40)]).write_parquet(path)
    [again] = materialize(store)
    assert len(store.registry.latest_artifact("source", "laps")["parts"]) == n
    assert again.status == "incremental" and len(again.artifact["parts"]) == n
    store.close()


lap_row = st.tuples(st.integers(1, 9), st.integers(1, 3), st.integers(1, 12),
                    st.integers(0, 3), st.one_of(st.none(), st.floats(25, 35, allow_nan=False)),
                    st.booleans())


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(lap_row, min_size=1, max_size=60), buckets=st.sampled_from([2, 3, 5]),
       window=st.integers(1, 6))
def test_bucketed_views_equal_one_file_property(tmp_path_factory: pytest.TempPathFactory,
                                                monkeypatch: pytest.MonkeyPatch,
                                                rows: list[tuple], buckets: int,
                                                window: int) -> None:
    """Random laps (publication lags that tie and cross, missing lap times): rolling, falloff
    and field views of a bucketed snapshot hold the one-file views' rows."""
    unique = {(r[0], r[1], r[2]): r for r in rows}
    t0 = dt.datetime(2025, 3, 1, 12)
    data = pl.DataFrame({
        "driver_id": [r[0] for r in unique.values()], "race_id": [r[1] for r in unique.values()],
        "lap": [r[2] for r in unique.values()],
        "t": [t0 + dt.timedelta(days=r[1], minutes=r[2]) for r in unique.values()],
        "seen": [t0 + dt.timedelta(days=r[1], minutes=r[2] + r[3]) for r in unique.values()],
        "lap_time": [r[4] for r in unique.values()],
        "position": [1 + (r[0] + r[2]) % 7 for r in unique.values()],
        "pit": [r[5] for r in unique.values()], "caution": [r[2] % 5 == 0 for r in unique.values()],
    }, schema_overrides={"lap_time": pl.Float64})
    views = [View("rows", "laps", "rolling", {"column": "lap_time", "windows": [window],
                                              "aggs": ["mean", "max", "count"]}),
             VIEWS[2], FIELD]
    tmp = tmp_path_factory.mktemp("prop")
    outputs = {}
    for n in (1, buckets):
        monkeypatch.setenv(BUCKETS_ENV, str(n))
        path = tmp / f"laps{n}.parquet"
        data.write_parquet(path)
        store = FeatureStore(tmp / f"store{n}")
        store.apply([Entity("driver", ("driver_id",)),
                     Source("laps", str(path), "driver", "t", tier="race", timezone="UTC",
                            available_time="seen"), *views])
        outputs[n] = {}
        for view in views:  # one by one: a leak refused in one view leaves the others
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # unverifiable tiny inputs are warned about
                try:
                    [r] = materialize(store, [view.name])
                except LeakageError as exc:  # falloff's tyre age when a lap is published
                    outputs[n][view.name] = ("leak", exc.feature)  # before the one before it
                    continue
            outputs[n][view.name] = (_rows(store, r.artifact), r.artifact["verified"])
        store.close()
    for view, (one, verified) in outputs[1].items():
        many, many_verified = outputs[buckets][view]
        if isinstance(one, str):  # refused: refused bucket by bucket too, for the same feature
            assert (many, many_verified) == (one, verified), view
            continue
        assert_frame_equal(many.sort(ORDER), one, check_exact=True)
        if verified:
            assert many_verified, view
