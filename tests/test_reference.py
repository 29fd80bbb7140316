"""Snapshots by reference (``featurestore.reference``): the answers of a copy, from checked bytes.

A store under ``snapshot_layout reference`` keeps an index of keys and times and reads values
from the source's own files. Held here: every retrieval path (eager, lazy, online publish and
lookup, ``load_artifact``) gives what the copy layout and the brute-force oracle give, with
composite keys, ties, duplicates, nulls, time zones and multi-file sources; a source file that
changes after ingest is refused by checksum, naming the file, until ``ingest`` takes a new
snapshot; and where an index cannot serve (a transform reads the source, fills, buckets, the
Spark engine) the store takes a copy or says why not.
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

from featurestore import Entity, Feature, FeatureStore, Source, View
from featurestore.buckets import BUCKETS_ENV
from featurestore.errors import ArtifactError, DefinitionError
from featurestore.materialize import materialize
from featurestore.reference import LAYOUT_ENV, SOURCE_ROW, reference_of
from featurestore.retrieval import ViewFrame
from tests.oracles_retrieval import python_oracle

UTC = dt.UTC
LOCAL0 = dt.datetime(2025, 6, 1)  # naive, in New York (no clock change within the data)
T0 = dt.datetime(2025, 6, 1, 4, tzinfo=UTC)  # the same instant
FEATURES = ["speed", "fuel", "tyre"]


def _laps(rows: list[tuple]) -> pl.DataFrame:
    """Laps of cars keyed by (team, car_no), in the order given: duplicates of (keys, event
    time) included, ties on availability common, nulls in the values."""
    return pl.DataFrame({
        "team": [r[0] for r in rows], "car_no": [r[1] for r in rows],
        # naive wall times in New York: the store converts them to UTC once
        "t": [LOCAL0 + dt.timedelta(hours=r[2]) for r in rows],
        "seen": [LOCAL0 + dt.timedelta(hours=r[2] + r[3]) for r in rows],
        "speed": [r[4] for r in rows], "fuel": [r[5] for r in rows],
        "tyre": [["soft", "hard", None][r[5] % 3] for r in rows],
    }, schema={"team": pl.String, "car_no": pl.Int64, "t": pl.Datetime("us"),
               "seen": pl.Datetime("us"), "speed": pl.Float64, "fuel": pl.Int64,
               "tyre": pl.String})


def _write_source(where: Path, laps: pl.DataFrame, n_files: int) -> str:
    """The rows as one file, or split over ``n_files`` files of a directory (row order kept:
    the files are read in name order)."""
    if n_files == 1:
        path = where / "laps.parquet"
        laps.write_parquet(path)
        return str(path)
    folder = where / "laps"
    folder.mkdir()
    size = -(-laps.height // n_files) if laps.height else 1
    for i in range(n_files):
        laps.slice(i * size, size).write_parquet(folder / f"part-{i}.parquet")
    return str(folder)


def _store(root: Path, path: str, layout: str, monkeypatch: pytest.MonkeyPatch, *,
           on_duplicate: str = "keep_last", extra: list[Any] | None = None) -> FeatureStore:
    monkeypatch.setenv(LAYOUT_ENV, layout)
    store = FeatureStore(root)
    store.apply([
        Entity("car", ("team", "car_no")),
        Source("laps", path, "car", "t", available_time="seen", timezone="America/New_York",
               on_duplicate=on_duplicate),
        *[Feature(f, source="laps") for f in FEATURES],
        *(extra or []),
    ])
    return store


row = st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3), st.integers(0, 40),
                st.integers(0, 5), st.one_of(st.none(), st.floats(0, 300, allow_nan=False)),
                st.integers(0, 100))
query_row = st.tuples(st.one_of(st.none(), st.sampled_from(["a", "b", "c", "z"])),
                      st.integers(0, 4), st.one_of(st.none(), st.integers(-2, 50)),
                      st.sampled_from([0, 30]))


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(row, min_size=0, max_size=40),
       queries=st.lists(query_row, min_size=1, max_size=30), n_files=st.sampled_from([1, 3]),
       inclusive=st.booleans(), ttl_h=st.one_of(st.none(), st.integers(0, 8)),
       buckets=st.sampled_from([None, 3]))
def test_an_index_answers_as_the_copy_and_the_oracle(
        tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
        rows: list[tuple], queries: list[tuple], n_files: int, inclusive: bool,
        ttl_h: int | None, buckets: int | None) -> None:
    """Eager, lazy and ``load_artifact`` on an index equal the copy; the copy equals the
    oracle (on the rows that survive keep_last: the last one read of each duplicate). With
    ``buckets`` both are built bucket by bucket, as parts in the same order; the index's parts
    are searched one by one and their values fetched in one pass."""
    tmp = tmp_path_factory.mktemp("ref")
    if buckets is None:
        monkeypatch.delenv(BUCKETS_ENV, raising=False)
    else:
        monkeypatch.setenv(BUCKETS_ENV, str(buckets))
    laps = _laps(rows)
    path = _write_source(tmp, laps, n_files)
    query = pl.DataFrame({
        "team": [q[0] for q in queries], "car_no": [q[1] for q in queries],
        "cutoff": [None if q[2] is None else T0 + dt.timedelta(hours=q[2], minutes=q[3])
                   for q in queries]},
        schema={"team": pl.String, "car_no": pl.Int32, "cutoff": pl.Datetime("us", "UTC")})
    ttl = None if ttl_h is None else dt.timedelta(hours=ttl_h)
    options = {"tier": "historical", "cutoff": "cutoff", "inclusive": inclusive, "ttl": ttl,
               "with_availability": True}
    got, loaded = {}, {}
    for layout in ("copy", "reference"):
        with _store(tmp / layout, path, layout, monkeypatch) as store:
            materialize(store)
            arts = {a["kind"]: a for a in store.list("artifact")}
            if laps.height:  # the layout under test, not the other one
                assert (reference_of(arts["source"]) is not None) == (layout == "reference")
                assert (reference_of(arts["view"]) is not None) == (layout == "reference")
                assert bool(arts["source"]["parts"]) == bool(buckets)
            with warnings.catch_warnings():  # null keys and cutoffs are warned about
                warnings.simplefilter("ignore")
                got[layout] = store.get_historical_features(query, FEATURES, **options)
                lazy = store.get_historical_features_lazy(query.lazy(), FEATURES,
                                                          **options).collect()
            assert lazy.equals(got[layout])
            loaded[layout] = {k: store.load_artifact(a["id"]) for k, a in arts.items()}
    assert got["reference"].equals(got["copy"])
    for kind, frame in loaded["copy"].items():
        assert loaded["reference"][kind].equals(frame), kind
        assert SOURCE_ROW not in loaded["reference"][kind].columns
    survivors = loaded["copy"]["source"] if laps.height else laps.head(0).rename(
        {"t": "event_timestamp", "seen": "available_at"})
    view = ViewFrame("laps", survivors, keys=("team", "car_no"),
                     features={f: f for f in FEATURES})
    assert got["copy"].to_dicts() == python_oracle(query, [view], cutoff="cutoff",
                                                   inclusive=inclusive, ttl=ttl,
                                                   with_availability=True)


def _many_laps(n: int, *, duplicates: bool) -> pl.DataFrame:
    """``n`` rows (above the packed sort's threshold), 300 cars, availability that goes back in
    event time; with ``duplicates`` every 1000th row repeats an earlier row's keys and time."""
    i = pl.int_range(n, eager=True)
    frame = pl.DataFrame({
        "team": (i % 3).replace_strict({0: "a", 1: "b", 2: "c"}, return_dtype=pl.String),
        "car_no": (i % 100),
        "t": pl.datetime_range(LOCAL0, LOCAL0 + dt.timedelta(seconds=n - 1), "1s", eager=True),
    })
    frame = frame.with_columns(
        (pl.col("t") + pl.duration(seconds=(pl.int_range(n) * 7919) % 600)).alias("seen"),
        (pl.int_range(n) * 0.5).alias("speed"), pl.int_range(n).alias("fuel"),
        pl.lit("soft").alias("tyre"))
    if duplicates:  # same keys and event time as row k - 300 (same car), a different value
        k = pl.int_range(n) % 1000 == 999
        frame = frame.with_columns(
            pl.when(k).then(pl.col("t").shift(300)).otherwise(pl.col("t")).alias("t"),
            pl.when(k).then(pl.col("seen").shift(300)).otherwise(pl.col("seen")).alias("seen"))
    return frame.sample(fraction=1.0, shuffle=True, seed=11)


@pytest.mark.parametrize("duplicates", [False, True])
def test_a_large_source_with_and_without_duplicates(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    duplicates: bool) -> None:
    """Above ``PACK_FROM_ROWS`` the duplicate check is a packed sort of (keys, event time):
    with duplicates it falls back to the full check (keep_last keeps the last read; error
    names a row), without it proves there are none; both layouts agree."""
    laps = _many_laps(150_000, duplicates=duplicates)
    path = _write_source(tmp_path, laps, 1)
    query = laps.sample(2_000, seed=3).select(
        "team", "car_no", (pl.col("seen").dt.replace_time_zone("America/New_York")
                           + pl.duration(seconds=1)).alias("cutoff"))
    got = {}
    for layout in ("copy", "reference"):
        with _store(tmp_path / layout, path, layout, monkeypatch) as store:
            materialize(store)
            [src] = [a for a in store.list("artifact") if a["kind"] == "source"]
            n_dup = laps.select(pl.struct("team", "car_no", "t").is_duplicated().sum()).item()
            assert src["row_count"] == laps.height - n_dup // 2
            got[layout] = store.get_historical_features(query, FEATURES, tier="historical",
                                                        cutoff="cutoff")
    assert got["reference"].equals(got["copy"])
    assert got["copy"]["speed"].null_count() < query.height  # the query matches rows
    with _store(tmp_path / "strict", path, "reference", monkeypatch,
                on_duplicate="error") as store:
        if duplicates:
            with pytest.raises(Exception, match="share their key and event time"):
                materialize(store)
        else:
            materialize(store)


def test_a_changed_source_file_is_refused_until_ingested_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    laps = _laps([("a", 1, h, 1, float(h), h) for h in range(10)])
    path = _write_source(tmp_path, laps, 1)
    query = pl.DataFrame({"team": ["a"], "car_no": [1], "cutoff": [T0 + dt.timedelta(days=2)]})
    with _store(tmp_path / "s", path, "reference", monkeypatch) as store:
        materialize(store)
        before = store.get_historical_features(query, ["speed"], tier="historical",
                                               cutoff="cutoff")
        assert before["speed"].to_list() == [9.0]
        # Same size, one value changed: only the checksum can tell.
        laps.with_columns(pl.col("speed") + 100).write_parquet(path)
        with pytest.raises(ArtifactError, match=rf"source file {path} changed.*ingest"):
            store.get_historical_features(query, ["speed"], tier="historical", cutoff="cutoff")
        with pytest.raises(ArtifactError, match="changed"):
            store.load_artifact(store.list("artifact")[0]["id"])
        [res] = store.ingest()
        assert res["status"] == "ingested"
        materialize(store)
        after = store.get_historical_features(query, ["speed"], tier="historical",
                                              cutoff="cutoff")
        assert after["speed"].to_list() == [109.0]
        os.unlink(path)
        with pytest.raises(ArtifactError, match=rf"source file {path} is missing"):
            store.get_historical_features(query, ["speed"], tier="historical", cutoff="cutoff")
        for fix in (False, True):  # doctor names the file; --fix leaves the index in place
            report = store.doctor(fix=fix)
            assert not report["ok"] and report["problems"]
            assert all(f"source file {path} is missing" in p for p in report["problems"])
            assert not report["removed"] and not report["quarantined"]


def test_a_flipped_byte_in_the_source_is_never_served(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A flipped byte keeps size and (restored) mtime: the checksum refuses it even though the
    check was cached (a write changes ctime, which the cache key holds)."""
    laps = _laps([("a", 1, h, 1, float(h), h) for h in range(50)])
    path = Path(_write_source(tmp_path, laps, 1))
    query = pl.DataFrame({"team": ["a"], "car_no": [1], "cutoff": [T0 + dt.timedelta(days=9)]})
    with _store(tmp_path / "s", str(path), "reference", monkeypatch) as store:
        materialize(store)
        store.get_historical_features(query, ["speed"], tier="historical", cutoff="cutoff")
        st_ = path.stat()
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns))
        with pytest.raises(ArtifactError, match="changed \\(checksum sha256:"):
            store.get_historical_features(query, ["speed"], tier="historical", cutoff="cutoff")


def test_where_an_index_cannot_serve_the_store_takes_a_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A transform view reads rows in event order with their values: its source gets a copy.
    A bucketed source still gets an index, in parts."""
    # A fixed lag: a row-count window over event order is causal only then.
    laps = _laps([(t, c, h, 1, float(h * c), h) for t in "ab" for c in range(3)
                  for h in range(12)])
    path = _write_source(tmp_path, laps, 1)
    rolling = View("roll", "laps", "rolling",
                   {"column": "speed", "windows": [3], "aggs": ["mean"]})
    with _store(tmp_path / "t", path, "reference", monkeypatch) as store:
        materialize(store)  # no transform yet: an index
        assert reference_of(store.registry.latest_artifact("source", "laps")) is not None
        store.apply([rolling])  # additive: the source's column view stays
        materialize(store)
        src = store.registry.latest_artifact("source", "laps")
        assert reference_of(src) is None  # re-snapshotted as a copy for the transform
        arts = {a["name"]: a for a in store.list("artifact") if a["kind"] == "view"}
        assert reference_of(arts["roll"]) is None
    monkeypatch.setenv(BUCKETS_ENV, "2")
    with _store(tmp_path / "b", path, "reference", monkeypatch) as store:
        materialize(store)
        src = store.registry.latest_artifact("source", "laps")
        assert reference_of(src) is not None and len(src["parts"]) == 2
        query = pl.DataFrame({"team": ["a", "b"], "car_no": [1, 2],
                              "cutoff": [T0 + dt.timedelta(days=2)] * 2})
        got = store.get_historical_features(query, ["speed"], tier="historical",
                                            cutoff="cutoff")
        assert got["speed"].to_list() == [11.0, 22.0]


def test_a_source_column_named_like_the_index_row_gets_a_copy(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    laps = _laps([("a", 1, h, 1, float(h), h) for h in range(5)]).with_columns(
        pl.lit(7).alias(SOURCE_ROW))
    path = _write_source(tmp_path, laps, 1)
    with _store(tmp_path / "s", path, "reference", monkeypatch,
                extra=[Feature("clash", source="laps", column=SOURCE_ROW)]) as store:
        materialize(store)
        assert reference_of(store.registry.latest_artifact("source", "laps")) is None
        query = pl.DataFrame({"team": ["a"], "car_no": [1],
                              "cutoff": [T0 + dt.timedelta(days=2)]})
        got = store.get_historical_features(query, ["speed", "clash"], tier="historical",
                                            cutoff="cutoff")
        assert got.select("speed", "clash").row(0) == (4.0, 7)


def test_the_layout_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    laps = _laps([("a", 1, h, 1, float(h), h) for h in range(5)])
    path = _write_source(tmp_path, laps, 1)
    monkeypatch.delenv(LAYOUT_ENV, raising=False)
    with FeatureStore(tmp_path / "s") as store:
        store.apply([Entity("car", ("team", "car_no")),
                     Source("laps", path, "car", "t", available_time="seen", timezone="UTC"),
                     Feature("speed", source="laps")])
        with pytest.raises(DefinitionError, match="'sideways' is not a snapshot layout"):
            store.set_setting("snapshot_layout", "sideways")
        materialize(store)  # default: a copy
        assert reference_of(store.registry.latest_artifact("source", "laps")) is None
        store.set_setting("snapshot_layout", "reference")
        assert store.settings()["snapshot_layout"] == "reference"
        store.ingest(force=True)
        assert reference_of(store.registry.latest_artifact("source", "laps")) is not None
        monkeypatch.setenv(LAYOUT_ENV, "copy")  # the environment wins over the setting
        store.ingest(force=True)
        assert reference_of(store.registry.latest_artifact("source", "laps")) is None
        monkeypatch.setenv(LAYOUT_ENV, "nope")
        with pytest.raises(DefinitionError, match=f"{LAYOUT_ENV}: 'nope'"):
            store.ingest(force=True)


def test_online_publish_and_lookup_from_an_index(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from featurestore.online import publish, reader_for
    from tests.onlinekit import T0 as LAP_T0
    from tests.onlinekit import laps_store, oracle, random_laps

    monkeypatch.setenv(LAYOUT_ENV, "reference")
    data = random_laps(seed=5)
    store = laps_store(tmp_path, data, online_store=f"sqlite:///{tmp_path / 'online.db'}")
    with store:
        materialize(store)
        [art] = [a for a in store.list("artifact") if a["kind"] == "view"]
        assert reference_of(art) is not None
        publish(store, moment=LAP_T0 + dt.timedelta(days=30))
        keys = [*sorted(data["driver_id"].unique().to_list()), 99]
        for hours in (20, 24 * 40):  # before the publish moment (the artifact), after (online)
            at = LAP_T0 + dt.timedelta(hours=hours)
            result = reader_for(store).lookup({"driver_id": keys}, ["x", "n", "label"],
                                              tier="practice", as_of=at)
            want = oracle(data, keys, at)
            for f in ("x", "n", "label"):
                assert result.values[f] == want[f], (hours, f)


def test_the_spark_engine_says_it_cannot_read_an_index(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("pyspark")
    laps = _laps([("a", 1, h, 1, float(h), h) for h in range(5)])
    path = _write_source(tmp_path, laps, 1)
    query = pl.DataFrame({"team": ["a"], "car_no": [1], "cutoff": [T0 + dt.timedelta(days=2)]})
    with _store(tmp_path / "s", path, "reference", monkeypatch) as store:
        materialize(store)
        with pytest.raises(DefinitionError, match=r"snapshot by reference.*polars engine"):
            store.get_historical_features(query, ["speed"], tier="historical", cutoff="cutoff",
                                          engine="spark")


def test_row_group_reads_give_the_scan_s_rows_and_dtypes(tmp_path: Path) -> None:
    """``Reference._read`` by row group (pyarrow) against a gather from the whole frame as
    polars reads it: files of several row groups, asked rows on both
    sides of every boundary, none at all, and columns pyarrow may read unlike polars (a
    nanosecond time zone, a dictionary-encoded string, nulls, a date64)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from featurestore.reference import Reference

    rng = np.random.default_rng(7)
    sizes = [13, 0, 40, 7]  # an empty file too
    frames, files = [], []
    for i, n in enumerate(sizes):
        t = pa.table({
            "speed": pa.array([None if v < 0.1 else float(v) for v in rng.random(n)],
                              pa.float64()),
            "tyre": pa.array(rng.choice(["soft", "hard", "wet"], n)).dictionary_encode(),
            "seen": pa.array((rng.integers(0, 10**12, n) * 1000).tolist(),
                             pa.timestamp("ns", tz="Europe/Paris")),
            # pyarrow reads a date64 as a date, polars as a millisecond datetime
            "day": pa.array((rng.integers(0, 20_000, n) * 86_400_000).tolist(), pa.date64()),
        })
        path = tmp_path / f"part-{i}.parquet"
        pq.write_table(t, path, row_group_size=5)
        files.append((str(path), n))
        frames.append(pl.read_parquet(path))
    whole = pl.concat(frames)
    values = pl.scan_parquet([f for f, _ in files])
    by_groups = Reference(pl.LazyFrame(), values, tuple(files))
    n = whole.height
    asks = [[], [0], [n - 1], [4, 5, 12, 13, 14, 52, 53], list(range(n)),
            *[rng.choice(n, k, replace=False).tolist() for k in (1, 9, 30)]]  # any order
    for ask in asks:
        rows = pl.Series(ask, dtype=pl.UInt32)
        for cols in (["speed", "tyre", "seen", "day"], ["day"]):
            got = by_groups._read(rows, cols)  # in source order, whatever the order asked
            assert got.schema == values.select(cols).collect_schema() == whole.select(cols).schema
            assert got.equals(whole.select(cols)[sorted(ask)]), (ask, cols)
    with pytest.raises(ArtifactError, match="returned 0 of 1 rows"):
        by_groups._read(pl.Series([n], dtype=pl.UInt32), ["speed"])
