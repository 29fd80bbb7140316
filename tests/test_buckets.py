"""Bucketed artifacts (``featurestore.buckets``): the same answers as one file, within a memory limit.

Buckets are forced with ``FEATURESTORE_BUCKETS`` (tiny data, many buckets, most of them holding a
handful of entities or none), and the results are held against the brute-force retrieval oracle
and against the one-file layout. Then the files themselves: per-part checksums, a damaged or
missing part, and ``doctor``/``gc`` treating a part directory as the artifact's own.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import warnings
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore import Entity, Feature, FeatureStore, Source
from featurestore.artifacts import artifact_files
from featurestore.buckets import BUCKETS_ENV, MEMORY_ENV, bucket_count, parse_bytes
from featurestore.errors import ArtifactError, DataError, DefinitionError
from featurestore.materialize import materialize
from featurestore.retrieval import ViewFrame
from tests.oracles_retrieval import python_oracle

UTC = dt.UTC
T0 = dt.datetime(2025, 1, 1, tzinfo=UTC)


def _store(tmp_path: Path, frame: pl.DataFrame, *, name: str = "store",
           on_duplicate: str = "error") -> FeatureStore:
    raw = tmp_path / f"{name}-raw.parquet"
    frame.write_parquet(raw)
    store = FeatureStore(tmp_path / name)
    store.apply([
        Entity("car", ("team", "car_no")),
        Source("laps", str(raw), "car", "t", available_time="seen", timezone="UTC",
               on_duplicate=on_duplicate),
        Feature("speed", source="laps"),
        Feature("fuel", source="laps"),
    ])
    return store


row = st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 5), st.integers(0, 30),
                st.integers(0, 6), st.one_of(st.none(), st.floats(0, 300, allow_nan=False)),
                st.integers(0, 100))
query_row = st.tuples(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "z"])),
                      st.integers(0, 6), st.one_of(st.none(), st.integers(-2, 40)))


def _laps(rows: list[tuple]) -> pl.DataFrame:
    unique = {(r[0], r[1], r[2]): r for r in rows}  # one row per key and event time
    rows = list(unique.values())
    return pl.DataFrame({
        "team": [r[0] for r in rows], "car_no": [r[1] for r in rows],
        "t": [T0 + dt.timedelta(hours=r[2]) for r in rows],
        # ties on availability within an entity are common: the tie rule matters
        "seen": [T0 + dt.timedelta(hours=r[2] + r[3]) for r in rows],
        "speed": [r[4] for r in rows], "fuel": [r[5] for r in rows],
    }, schema={"team": pl.String, "car_no": pl.Int64, "t": pl.Datetime("us", "UTC"),
               "seen": pl.Datetime("us", "UTC"), "speed": pl.Float64, "fuel": pl.Int64})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row, min_size=0, max_size=40), queries=st.lists(query_row, min_size=1, max_size=15),
       buckets=st.sampled_from([2, 3, 7]), inclusive=st.booleans(), narrow=st.booleans(),
       ttl_h=st.one_of(st.none(), st.integers(0, 10)))
def test_bucketed_retrieval_matches_the_oracle(tmp_path_factory: pytest.TempPathFactory,
                                               monkeypatch: pytest.MonkeyPatch, rows: list[tuple],
                                               queries: list[tuple], buckets: int,
                                               inclusive: bool, narrow: bool,
                                               ttl_h: int | None) -> None:
    """Part by part (``retrieval_buckets``): a query key of another width (Int32 against the
    artifact's Int64) must reach the part its entity is in; ttl and ties as one file."""
    tmp_path = tmp_path_factory.mktemp("b")
    laps = _laps(rows)
    monkeypatch.setenv(BUCKETS_ENV, str(buckets))
    with _store(tmp_path, laps) as store:
        materialize(store)
        [art] = [a for a in store.list("artifact") if a["kind"] == "view"]
        assert len(art["parts"]) == buckets  # the layout under test, not one file
        query = pl.DataFrame({"team": [q[0] for q in queries], "car_no": [q[1] for q in queries],
                              "cutoff": [None if q[2] is None else T0 + dt.timedelta(hours=q[2])
                                         for q in queries]},
                             schema={"team": pl.String, "car_no": pl.Int32 if narrow else pl.Int64,
                                     "cutoff": pl.Datetime("us", "UTC")})
        ttl = None if ttl_h is None else dt.timedelta(hours=ttl_h)
        with warnings.catch_warnings():  # null keys and cutoffs are warned about: expected here
            warnings.simplefilter("ignore")
            got = store.get_historical_features(query, ["speed", "fuel"], tier="historical",
                                                cutoff="cutoff", inclusive=inclusive, ttl=ttl,
                                                with_availability=True)
            # The lazy plan joins part by part too (retrieval_buckets): the same frame.
            lazy = store.get_historical_features_lazy(
                query.lazy(), ["speed", "fuel"], tier="historical", cutoff="cutoff",
                inclusive=inclusive, ttl=ttl, with_availability=True).collect()
        assert lazy.equals(got)
    view = ViewFrame("laps", laps.rename({"t": "event_timestamp", "seen": "available_at"}),
                     keys=("team", "car_no"), features={"speed": "speed", "fuel": "fuel"})
    expected = python_oracle(query, [view], cutoff="cutoff", inclusive=inclusive, ttl=ttl,
                             with_availability=True)
    assert got.to_dicts() == expected


def _duplicated_laps(n: int = 400) -> pl.DataFrame:
    base = pl.DataFrame({
        "team": [["a", "b", "c"][i % 3] for i in range(n)], "car_no": [i % 17 for i in range(n)],
        # a car (i mod 51) comes back every 51 rows with one of 5 times: duplicates
        "t": [T0 + dt.timedelta(hours=(i // 51) % 5 * 3) for i in range(n)],
        "seen": [T0 + dt.timedelta(hours=(i // 51) % 5 * 3 + i % 4) for i in range(n)],
        "speed": [float(i) for i in range(n)], "fuel": list(range(n)),
    }, schema={"team": pl.String, "car_no": pl.Int64, "t": pl.Datetime("us", "UTC"),
               "seen": pl.Datetime("us", "UTC"), "speed": pl.Float64, "fuel": pl.Int64})
    return base


def test_bucketed_snapshot_and_view_hold_the_same_rows_as_one_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    laps = _duplicated_laps()  # many rows share keys and event time: keep_last must agree
    assert laps.select("team", "car_no", "t").is_duplicated().sum() > 100
    frames = {}
    for n in (1, 5):
        monkeypatch.setenv(BUCKETS_ENV, str(n))
        with _store(tmp_path, laps, name=f"s{n}", on_duplicate="keep_last") as store:
            materialize(store)
            arts = {a["kind"]: a for a in store.list("artifact")}
            assert len(arts["source"]["parts"]) == (0 if n == 1 else 5)
            frames[n] = {k: pl.read_parquet(artifact_files(store.root, a))
                         for k, a in arts.items()}
            if n > 1:  # each part alone is in the artifact's order
                keys = ["team", "car_no"]
                for f in artifact_files(store.root, arts["view"]):
                    part = pl.read_parquet(f)
                    assert part.equals(part.sort([*keys, "available_at", "event_timestamp"]))
    for kind, order in (("source", ["event_timestamp"]), ("view", ["available_at", "event_timestamp"])):
        one, many = frames[1][kind], frames[5][kind]
        # Rows per entity in the same order; entities in another order (by bucket).
        assert many.sort(["team", "car_no", *order]).equals(one)
        runs = many.select(pl.struct("team", "car_no").rle_id()).to_series()
        assert runs.n_unique() == one.select("team", "car_no").n_unique()  # entities contiguous


def test_bucketed_ingest_still_names_bad_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUCKETS_ENV, "4")
    laps = _duplicated_laps()
    with _store(tmp_path, laps, name="dup") as store, \
            pytest.raises(DataError, match=r"at least \d+ rows share their key and event time"):
        store.ingest()
    nulls = laps.with_columns(car_no=pl.when(pl.int_range(pl.len()) == 123).then(None)
                              .otherwise("car_no"))
    with _store(tmp_path, nulls, name="nulls", on_duplicate="keep_last") as store:
        with pytest.raises(DataError, match=r"key column 'car_no' has at least 1 null value\(s\) "
                                            r"\(first at row 123\)"):
            store.ingest()
        # the failed write left nothing behind: no artifact, no temporary file
        assert store.list("artifact") == []
        assert not [p for p in (store.root / "data").rglob("*") if p.is_file()
                    and not p.name.startswith(".fs-")]
        assert not list((store.root / "data").glob(".fs-tmp-*"))


def test_memory_limit_decides_the_bucket_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BUCKETS_ENV, raising=False)
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    raw = tmp_path / "raw.parquet"
    _duplicated_laps(20_000).write_parquet(raw)
    assert bucket_count([str(raw)], {"memory_limit": None}) == 1  # the default (<= 2 GiB): fits
    assert bucket_count([str(raw)], {"memory_limit": "none"}) == 1
    small = bucket_count([str(raw)], {"memory_limit": "100KiB"})
    assert small > 1
    assert bucket_count([str(raw)], {"memory_limit": "1GiB"}) == 1
    monkeypatch.setenv(MEMORY_ENV, "100KiB")  # the environment wins over the store's setting
    assert bucket_count([str(raw)], {"memory_limit": "1GiB"}) == small
    assert parse_bytes("2GiB", what="x") == 2 * 2**30
    assert parse_bytes("512 MB", what="x") == 512 * 10**6
    for bad in ("lots", "-1GiB", "2 parsecs", "0"):
        with pytest.raises(DefinitionError, match="not a memory size"):
            parse_bytes(bad, what="x")


def test_without_a_setting_the_limit_is_a_share_of_the_machine(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from featurestore import buckets

    monkeypatch.delenv(BUCKETS_ENV, raising=False)
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert buckets.memory_limit({}) == min(ram // 4, 2 * 2**30)
    assert buckets.memory_limit({"memory_limit": "none"}) is None
    monkeypatch.setenv(MEMORY_ENV, "none")  # the environment lifts a store's limit
    assert buckets.memory_limit({"memory_limit": "1GiB"}) is None
    monkeypatch.delenv(MEMORY_ENV)
    # A machine so small that a quarter of it cannot hold this source: bucketed by default.
    monkeypatch.setattr(buckets, "DEFAULT_SHARE", ram // (64 * 1024))
    raw = tmp_path / "raw.parquet"
    _duplicated_laps(20_000).write_parquet(raw)
    assert bucket_count([str(raw)], {"memory_limit": None}) > 1
    assert bucket_count([str(raw)], {"memory_limit": "none"}) == 1


def test_memory_limit_setting_buckets_ingest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BUCKETS_ENV, raising=False)
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    with _store(tmp_path, _duplicated_laps(5_000), on_duplicate="keep_last") as store:
        with pytest.raises(DefinitionError, match="not a memory size"):
            store.set_setting("memory_limit", "plenty")
        store.set_setting("memory_limit", "64KiB")
        assert store.settings()["memory_limit"] == "64KiB"
        [res] = store.ingest()
        assert len(res["artifact"]["parts"]) > 1


def _bucketed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FeatureStore:
    monkeypatch.setenv(BUCKETS_ENV, "3")
    store = _store(tmp_path, _duplicated_laps(), on_duplicate="keep_last")
    materialize(store)
    return store


def test_each_part_is_checked_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _bucketed(tmp_path, monkeypatch)
    [view] = [a for a in store.list("artifact") if a["kind"] == "view"]
    query = pl.DataFrame({"team": ["a"], "car_no": [3], "cutoff": [T0 + dt.timedelta(days=9)]})
    store.get_historical_features(query, ["speed"], tier="historical", cutoff="cutoff")
    part = artifact_files(store.root, view)[1]
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    part.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"part part-00001\.parquet has checksum"):
        store.get_historical_features(query, ["speed"], tier="historical", cutoff="cutoff")
    report = store.doctor()
    assert not report["ok"] and any("part-00001.parquet" in p for p in report["problems"])
    part.unlink()
    with pytest.raises(ArtifactError, match=r"missing: part-00001\.parquet"):
        store.get_historical_features(query, ["speed"], tier="historical", cutoff="cutoff")
    (part.parent / "part-00009.parquet").write_bytes(b"stray")
    with pytest.raises(ArtifactError, match=r"unexpected: part-00009\.parquet"):
        store.get_historical_features(query, ["speed"], tier="historical", cutoff="cutoff",
                                      verify_checksums=True)
    store.close()


def test_doctor_and_gc_know_part_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _bucketed(tmp_path, monkeypatch)
    report = store.doctor()
    assert report["ok"] and report["orphans"] == [], report  # parts are the artifact's own
    old = {a["id"]: a for a in store.list("artifact")}
    materialize(store, force=True)  # a second view artifact; the first is now garbage
    # a crashed bucketed write: a temporary part directory, and a leftover ingest work folder
    leftover = store.root / "data" / "views" / "laps" / ".fs-tmp-0123.parquet"
    leftover.mkdir()
    (leftover / "part-00000.parquet").write_bytes(b"half")
    report = store.doctor()
    assert str(leftover) in report["orphans"]
    fixed = store.doctor(fix=True)
    assert str(leftover) in fixed["removed"] and not leftover.exists()
    result = store.gc()
    removed = [r for r in result.removed if r["id"] in old and r["kind"] == "view"]
    assert removed, "the superseded view artifact is garbage"
    for r in removed:
        assert not (store.root / r["path"]).exists()  # the whole directory, parts included
    assert store.doctor()["ok"]
    store.close()


def test_registry_records_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _bucketed(tmp_path, monkeypatch)
    for art in store.list("artifact"):
        assert [p["file"] for p in art["parts"]] == [f"part-{i:05d}.parquet" for i in range(3)]
        assert sum(p["rows"] for p in art["parts"]) == art["row_count"]
        assert sum(p["size"] for p in art["parts"]) == art["size_bytes"]
        assert all(p["checksum"].startswith("sha256:") for p in art["parts"])
    with store.registry.read() as conn:
        raw = conn.exec_driver_sql("SELECT parts FROM artifacts").scalars().all()
    assert all(len(json.loads(r)) == 3 for r in raw)
    store.close()


def test_transform_views_of_a_bucketed_snapshot_equal_one_file(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_incremental import laps, make_store

    first, grown = laps([1, 2, 3, 4, 5], 20), laps([1, 2, 3, 4, 5, 6], 26)
    outputs: dict[int, dict[str, pl.DataFrame]] = {}
    for n in (1, 4):
        monkeypatch.setenv(BUCKETS_ENV, str(n))
        (tmp_path / f"b{n}").mkdir()
        store, path = make_store(tmp_path / f"b{n}", first)
        materialize(store)
        grown.write_parquet(path)  # growth: both layouts build on the previous artifact
        results = {r.view: r for r in materialize(store)}
        assert results["rows"].status == "incremental"
        snapshot = store.registry.latest_artifact("source", "laps")
        assert len(snapshot["parts"]) == (0 if n == 1 else 4)
        for r in results.values():  # a bucketed snapshot's views are bucketed too
            assert len(r.artifact["parts"]) == len(snapshot["parts"])
        outputs[n] = {v: pl.concat([pl.read_parquet(f)
                                    for f in artifact_files(store.root, r.artifact)])
                      for v, r in results.items()}
        store.close()
    order = ["driver_id", "available_at", "event_timestamp"]
    for view, one in outputs[1].items():
        assert set(one.columns) > {"driver_id", "event_timestamp", "available_at"}
        # Rows per entity in the same order; entities in another order (by bucket).
        assert outputs[4][view].sort(order).equals(one), view


@pytest.mark.parametrize(("offset", "history"), [(30, 1), (30, None), (100, 1)])
def test_online_serving_of_bucketed_artifacts_follows_the_contract(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offset: int, history: int | None) -> None:
    """The online store's oracle suite, run on a bucketed view (publish reads every part;
    requests before the published moment read the artifact)."""
    from tests.test_online_store import test_values_follow_the_contract

    monkeypatch.setenv(BUCKETS_ENV, "3")
    test_values_follow_the_contract(f"sqlite:///{tmp_path / 'online.db'}", tmp_path, offset,
                                    history)
    with FeatureStore.open(tmp_path / "store") as store:  # the layout under test
        assert all(len(a["parts"]) == 3 for a in store.list("artifact"))


def test_cli_config_memory_limit_buckets_the_next_ingest(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_guards import cli

    monkeypatch.delenv(BUCKETS_ENV, raising=False)
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    store = _store(tmp_path, _duplicated_laps(5_000), on_duplicate="keep_last")
    bad = cli("config", "memory_limit", "lots", store=store, code=2)
    assert "not a memory size" in bad.stderr
    cli("config", "memory-limit", "64KiB", store=store)
    assert json.loads(cli("config", "memory_limit", "--json", store=store).stdout) == {
        "memory_limit": "64KiB"}
    out = json.loads(cli("ingest", "--json", store=store).stdout)
    assert out[0]["status"] == "ingested"
    assert len(store.registry.latest_artifact("source", "laps")["parts"]) > 1
    store.close()


def _frames_released_one_by_one(consume: Any) -> None:
    """``consume(frames)`` drops each frame it is given before it asks for the next: while the
    generator builds part i+1, nothing holds part i (one bucket in memory, not two)."""
    import gc
    import weakref

    given: list[weakref.ref] = []
    held: list[int] = []

    def frames():
        for i in range(4):
            gc.collect()
            held.append(sum(ref() is not None for ref in given))
            frame = pl.DataFrame({"k": [i, i], "event_timestamp": [dt.datetime(2024, 1, 1, i)] * 2,
                                  "v": [1.0, 2.0]},
                                 schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")})
            given.append(weakref.ref(frame))
            yield frame
            del frame

    consume(frames())
    assert held == [0, 0, 0, 0]


def test_a_bucketed_write_holds_one_part_at_a_time(tmp_path: Path) -> None:
    from featurestore.artifacts import write_parts_atomic

    _frames_released_one_by_one(lambda frames: write_parts_atomic(
        tmp_path, "data/views/v/a.parquet", frames, time_column="event_timestamp"))


def test_marking_parts_holds_one_part_at_a_time() -> None:
    from featurestore.store_data import _marking

    params: dict = {}
    from collections import deque

    # deque(maxlen=0) drops each item before asking for the next, as the part writer does.
    _frames_released_one_by_one(lambda frames: deque(_marking(frames, ["k"], params), maxlen=0))
    assert params == {}  # each part is in event order


def test_a_key_in_two_parts_is_refused(tmp_path: Path) -> None:
    """Routing assumes each part holds whole entities (what the store writes); parts that
    break it (here: written by hand) are an error naming the view, never a half answer."""
    from featurestore.retrieval_buckets import point_in_time_join_parts

    laps = _laps([("a", 1, h, 0, float(h), h) for h in range(4)] + [("b", 2, 1, 0, 9.0, 9)])
    frame = laps.rename({"t": "event_timestamp", "seen": "available_at"})
    files = [tmp_path / "part-0.parquet", tmp_path / "part-1.parquet"]
    frame.slice(0, 2).write_parquet(files[0])  # car a/1's first two laps
    frame.slice(2).write_parquet(files[1])  # its other two, and car b/2
    view = ViewFrame("laps", pl.scan_parquet(files), keys=("team", "car_no"),
                     features={"speed": "speed"}, presorted=True)
    query = pl.DataFrame({"team": ["a"], "car_no": [1],
                          "cutoff": [T0 + dt.timedelta(hours=9)]})
    with pytest.raises(ArtifactError, match="view 'laps': a key is in two parts"):
        point_in_time_join_parts(query, [view], [files], cutoff="cutoff")
    # Split between entities, the same parts answer as the whole frame does.
    frame.slice(0, 4).write_parquet(files[0])
    frame.slice(4).write_parquet(files[1])
    got = point_in_time_join_parts(query, [view], [files], cutoff="cutoff")
    assert got["speed"].to_list() == [3.0]
