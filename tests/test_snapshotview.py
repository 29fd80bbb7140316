"""A source's column view served from its snapshot's files (``featurestore.snapshotview``).

When the snapshot is in retrieval order the view's artifact is the snapshot's file (or parts)
hard-linked: these tests check that it is, that answers equal the brute-force oracle and a store
that copies (no hard links), and that ``gc``, ``doctor``, ``delete``, online publishing and
``load_artifact`` treat the shared file right. A source whose availability goes back in event
order keeps a sorted copy of its own.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from featurestore import Entity, Feature, FeatureStore, Source, View
from featurestore.artifacts import artifact_files, verify_artifact
from featurestore.buckets import BUCKETS_ENV
from featurestore.errors import ArtifactError, DataError
from featurestore.materialize import materialize
from featurestore.retrieval import ViewFrame
from tests.oracles_retrieval import python_oracle

UTC = dt.UTC
T0 = dt.datetime(2025, 1, 1, tzinfo=UTC)


def _laps(seed: int, *, late: bool) -> pl.DataFrame:
    """Laps of 6 cars in random row order; ``late``: a per-row availability that goes back in
    event order (a row published up to 50 min after its event), else none (a fixed lag)."""
    import random

    rng = random.Random(seed)
    rows = []
    for car in range(6):
        for lap in rng.sample(range(40), 25):
            rows.append({"car": car, "t": T0 + dt.timedelta(minutes=10 * lap),
                         "seen": T0 + dt.timedelta(minutes=10 * lap + rng.randint(0, 50)),
                         "speed": rng.random() * 300 if rng.random() > 0.1 else None,
                         "fuel": rng.randint(0, 100), "note": f"n{rng.randint(0, 9)}"})
    rng.shuffle(rows)
    frame = pl.DataFrame(rows)
    return frame if late else frame.drop("seen")


def _store(root: Path, raw: Path, *, late: bool, online_store: str | None = None) -> FeatureStore:
    store = FeatureStore(root, online_store=online_store)
    store.apply([
        Entity("car", ("car",)),
        Source("laps", str(raw), "car", "t", timezone="UTC",
               **({"available_time": "seen"} if late else {"available_lag": "5m"})),
        Feature("speed", source="laps"),
        Feature("fuel", source="laps"),  # "note" is in the snapshot, not in the view
    ])
    return store


def _query(seed: int) -> pl.DataFrame:
    import random

    rng = random.Random(seed)
    return pl.DataFrame({
        "car": [rng.choice([0, 1, 2, 3, 4, 5, 9, None]) for _ in range(300)],
        "event_timestamp": [T0 + dt.timedelta(minutes=rng.randint(-20, 460)) for _ in range(300)],
    })


def _oracle(store: FeatureStore, query: pl.DataFrame) -> pl.DataFrame:
    snapshot = store.registry.latest_artifact("source", "laps")
    assert snapshot is not None
    rows = pl.read_parquet(artifact_files(store.root, snapshot))
    want = python_oracle(query, [ViewFrame("laps", rows.lazy(), ("car",),
                                           {"speed": "speed", "fuel": "fuel"})])
    return pl.DataFrame(want, schema={**query.schema, "speed": pl.Float64, "fuel": pl.Int64})


def _view(store: FeatureStore) -> dict:
    row = store.registry.latest_artifact("view", "laps")
    assert row is not None
    return row


def _same_file(a: Path, b: Path) -> bool:
    return os.stat(a).st_ino == os.stat(b).st_ino


@pytest.mark.parametrize("late", [False, True])
def test_column_view_is_the_snapshots_file(tmp_path: Path, late: bool) -> None:
    """With no transform view over the source the snapshot is written in retrieval order, late
    availability or not, and the column view links it."""
    raw = tmp_path / "laps.parquet"
    _laps(1, late=late).write_parquet(raw)
    store = _store(tmp_path / "store", raw, late=late)
    [result] = materialize(store)
    assert result.status == "materialized"
    snapshot, view = store.registry.latest_artifact("source", "laps"), _view(store)
    assert _same_file(store.root / snapshot["path"], store.root / view["path"])
    # Only a snapshot that is not in event order says so.
    assert snapshot["params"].get("order") == ("retrieval" if late else None)
    # And it says it was written in retrieval order: its column view is linked without
    # reading the key and time columns back to check.
    assert snapshot["params"]["layout"] == "retrieval"
    assert view["path"] != snapshot["path"] and view["path"].startswith("data/views/")
    # The view's row lists the columns it serves, whatever its file holds.
    assert sorted(view["params"]["columns"]) == ["fuel", "speed"]
    assert list(view["schema"]) == ["car", "event_timestamp", "available_at",
                                    *view["params"]["columns"]]
    assert "note" in pl.read_parquet_schema(store.root / view["path"])
    assert view["row_count"] == snapshot["row_count"] and view["checksum"] == snapshot["checksum"]
    verify_artifact(store.root, view, trust_cache=False)
    verify_artifact(store.root, view, checksum=False)
    query = _query(2)
    got = store.get_historical_features(query, ["speed", "fuel"], tier="historical")
    assert got.equals(_oracle(store, query))
    lazy = store.get_historical_features_lazy(query, ["speed", "fuel"], tier="historical")
    assert lazy.collect().equals(got)
    loaded = store.load_artifact(view["id"])
    assert loaded.columns == list(view["schema"])  # not the snapshot's "note"
    assert store.load_artifact(view["id"], lazy=True).collect().equals(loaded)
    # Up to date on the next run: the shared file passes the intact check.
    [again] = materialize(store)
    assert again.status == "up-to-date"


def test_a_transform_view_gets_its_snapshot_in_event_order(tmp_path: Path) -> None:
    """Late availability and a transform view over the source: the snapshot stays in event
    order (the transform's input order) and the column view is a sorted copy. Adding the
    transform view to a store whose snapshot is in retrieval order writes the snapshot again."""
    raw = tmp_path / "laps.parquet"
    _laps(14, late=True).write_parquet(raw)
    store = _store(tmp_path / "store", raw, late=True)
    materialize(store)
    first = store.registry.latest_artifact("source", "laps")
    assert first["params"]["order"] == "retrieval"
    query = _query(15)
    before = store.get_historical_features(query, ["speed", "fuel"], tier="historical")
    store.apply([View("speeds", "laps", "rolling",
                      {"column": "speed", "windows": [3], "aggs": ["mean"]}),
                 Feature("speed_mean_last_3", view="speeds")])
    # Row windows over late rows do leak (verification says so): not what is tested here.
    with pytest.warns(UserWarning, match="verification skipped"):
        materialize(store, verify=False)
    snapshot = store.registry.latest_artifact("source", "laps")
    assert snapshot["id"] != first["id"] and "order" not in snapshot["params"]
    assert "layout" not in snapshot["params"]  # event order: its column view checks the order
    rows = pl.read_parquet(store.root / snapshot["path"])
    assert rows.equals(rows.sort("car", "event_timestamp"))
    view = _view(store)
    assert not _same_file(store.root / snapshot["path"], store.root / view["path"])
    assert pl.read_parquet_schema(store.root / view["path"]) == {
        c: rows.schema[c] for c in view["schema"]}
    assert store.get_historical_features(query, ["speed", "fuel"], tier="historical").equals(before)
    assert before.equals(_oracle(store, query))


def test_without_hard_links_the_view_is_copied_with_equal_answers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = tmp_path / "laps.parquet"
    _laps(3, late=False).write_parquet(raw)
    linked = _store(tmp_path / "linked", raw, late=False)
    materialize(linked)

    def no_link(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    copied = _store(tmp_path / "copied", raw, late=False)
    materialize(copied)
    view = _view(copied)
    assert not _same_file(copied.root / view["path"],
                          copied.root / copied.registry.latest_artifact("source", "laps")["path"])
    assert pl.read_parquet(copied.root / view["path"]).columns == list(view["schema"])
    verify_artifact(copied.root, view, trust_cache=False)
    query = _query(4)
    a = linked.get_historical_features(query, ["speed", "fuel"], tier="historical")
    b = copied.get_historical_features(query, ["speed", "fuel"], tier="historical")
    assert a.equals(b) and a.equals(_oracle(linked, query))
    assert (pl.read_parquet(linked.root / _view(linked)["path"], columns=list(view["schema"]))
            .equals(pl.read_parquet(copied.root / view["path"])))
    # A view with a file of its own (as every store written before linking has) stays as it is
    # and is read as before once links work again.
    monkeypatch.undo()
    assert [r.status for r in materialize(copied)] == ["up-to-date"]
    assert copied.get_historical_features(query, ["speed", "fuel"], tier="historical").equals(b)
    assert copied.doctor()["ok"]


@pytest.mark.parametrize("late", [False, True])
def test_bucketed_snapshot_parts_are_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            late: bool) -> None:
    monkeypatch.setenv(BUCKETS_ENV, "3")
    raw = tmp_path / "laps.parquet"
    _laps(5, late=late).write_parquet(raw)
    store = _store(tmp_path / "store", raw, late=late)
    materialize(store)
    snapshot, view = store.registry.latest_artifact("source", "laps"), _view(store)
    assert len(view["parts"]) == len(snapshot["parts"]) == 3
    assert snapshot["params"].get("order") == ("retrieval" if late else None)
    for a, b in zip(artifact_files(store.root, snapshot), artifact_files(store.root, view),
                    strict=True):
        assert _same_file(a, b)
    verify_artifact(store.root, view, trust_cache=False)
    query = _query(6)
    got = store.get_historical_features(query, ["speed", "fuel"], tier="historical")
    assert got.equals(_oracle(store, query))


def test_a_damaged_shared_file_is_refused_through_either_row(tmp_path: Path) -> None:
    raw = tmp_path / "laps.parquet"
    _laps(7, late=False).write_parquet(raw)
    store = _store(tmp_path / "store", raw, late=False)
    materialize(store)
    snapshot, view = store.registry.latest_artifact("source", "laps"), _view(store)
    path = store.root / view["path"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    with open(path, "r+b") as fh:  # in place: both names see it
        fh.write(data)
    for row in (snapshot, view):
        with pytest.raises(ArtifactError, match="checksum"):
            verify_artifact(store.root, row, trust_cache=False)


def test_gc_after_reingest_keeps_every_file_a_live_row_names(tmp_path: Path) -> None:
    raw = tmp_path / "laps.parquet"
    _laps(8, late=False).write_parquet(raw)
    store = _store(tmp_path / "store", raw, late=False)
    materialize(store)
    first_view = _view(store)
    query = _query(9)
    before = store.get_historical_features(query, ["speed", "fuel"], tier="historical")
    _laps(10, late=False).write_parquet(raw)  # new input: a new snapshot
    store.ingest()
    store.gc()
    # The view's artifact still answers from the first snapshot's bytes, whatever gc removed.
    assert _view(store)["id"] == first_view["id"]
    verify_artifact(store.root, first_view, trust_cache=False)
    assert store.get_historical_features(query, ["speed", "fuel"], tier="historical").equals(before)
    materialize(store)
    removed = store.gc()
    assert first_view["path"] in {r["path"] for r in removed.removed}
    assert not (store.root / first_view["path"]).exists()
    for row in store.registry.artifacts():
        verify_artifact(store.root, row, trust_cache=False)
    got = store.get_historical_features(query, ["speed", "fuel"], tier="historical")
    assert got.equals(_oracle(store, query))
    report = store.doctor(fix=True)
    assert report["ok"] and not report["orphans"] and not report["quarantined"], report


def test_doctor_hashes_a_shared_file_once_and_finds_no_orphan(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import featurestore.checksums as checksums

    raw = tmp_path / "laps.parquet"
    _laps(11, late=False).write_parquet(raw)
    store = _store(tmp_path / "store", raw, late=False)
    materialize(store)
    hashed: list[Path] = []
    real = checksums.file_checksum

    def counting(path: Path) -> str:
        hashed.append(Path(path))
        return real(path)

    monkeypatch.setattr(checksums, "file_checksum", counting)
    report = store.doctor(fix=True)
    assert report["ok"] and report["artifacts_checked"] == 2, report
    assert not report["orphans"] and not report["quarantined"]
    assert len(hashed) == 1  # two rows, one file
    hashed.clear()
    report = store.doctor()  # a second run hashes again (doctor trusts no cache), once
    assert report["ok"] and len(hashed) == 1


def test_delete_the_source_keeps_nothing_and_the_view_file_goes_with_gc(tmp_path: Path) -> None:
    raw = tmp_path / "laps.parquet"
    _laps(12, late=False).write_parquet(raw)
    store = _store(tmp_path / "store", raw, late=False)
    materialize(store)
    paths = [store.root / r["path"] for r in store.registry.artifacts()]
    store.delete("source", "laps", cascade=True)
    store.gc()
    assert not any(p.exists() for p in paths)
    assert store.doctor()["ok"]


def test_online_publishing_serves_only_the_view_columns(tmp_path: Path) -> None:
    from featurestore.online import publish

    raw = tmp_path / "laps.parquet"
    _laps(13, late=False).write_parquet(raw)
    store = _store(tmp_path / "store", raw, late=False,
                   online_store=f"sqlite:///{tmp_path / 'online.db'}")
    materialize(store)
    [res] = publish(store, moment=T0 + dt.timedelta(hours=8))
    assert res.status == "published"
    at = T0 + dt.timedelta(hours=9)
    cars = [0, 1, 5, 9]
    online = store.get_online_features(pl.DataFrame({"car": cars}), ["speed", "fuel"],
                                       tier="historical", as_of=at)
    assert online.columns == ["car", "speed", "fuel"]
    query = pl.DataFrame({"car": cars, "event_timestamp": [at] * len(cars)})
    offline = store.get_historical_features(query, ["speed", "fuel"], tier="historical")
    assert online.equals(offline.drop("event_timestamp"))


ingest_row = st.tuples(st.integers(0, 2), st.sampled_from(["a", "b"]), st.integers(0, 6),
                       st.integers(0, 4), st.one_of(st.none(), st.integers(0, 9)))


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(ingest_row, max_size=40),
       on_duplicate=st.sampled_from(["error", "keep_last"]))
def test_validating_in_retrieval_order_keeps_the_same_rows(rows: list[tuple],
                                                           on_duplicate: str) -> None:
    """``validate_rows(order="retrieval")`` refuses what event order refuses, with the same
    message, and keeps the same rows (the last one read of duplicates), in retrieval order."""
    from featurestore.layout import retrieval_order
    from featurestore.sourcedata import validate_rows

    frame = pl.DataFrame(
        {"k": [r[0] for r in rows], "k2": [r[1] for r in rows],
         "event_timestamp": [T0 + dt.timedelta(minutes=r[2]) for r in rows],
         "available_at": [T0 + dt.timedelta(minutes=r[2] + r[3]) for r in rows],
         "v": [r[4] for r in rows]},
        schema={"k": pl.Int64, "k2": pl.String, "event_timestamp": pl.Datetime("us", "UTC"),
                "available_at": pl.Datetime("us", "UTC"), "v": pl.Int64})
    outcomes = []
    for order in ("event", "retrieval"):
        try:
            outcomes.append(validate_rows(frame, path="p", keys=["k", "k2"], event_time="t",
                                          on_duplicate=on_duplicate, order=order))
        except DataError as exc:
            outcomes.append(str(exc))
    by_event, by_retrieval = outcomes
    if isinstance(by_event, str):
        assert by_retrieval == by_event
        return
    # Plain Python: the last row read of each (keys, event time), sorted in retrieval order.
    last = {}
    for i, r in enumerate(rows):
        last[(r[0], r[1], r[2])] = (r, i)
    want = sorted(((r[0], r[1], r[2] + r[3], r[2], r[4]) for r, _ in last.values()),
                  key=lambda t: t[:4])
    got = by_retrieval.select(*retrieval_order(["k", "k2"]), "v").rows()
    assert [(k, k2, int((a - T0).total_seconds() // 60), int((e - T0).total_seconds() // 60), v)
            for k, k2, a, e, v in got] == want
    assert by_event.sort(retrieval_order(["k", "k2"])).equals(by_retrieval)


def test_a_transform_view_over_a_bucketed_retrieval_order_snapshot(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both halves of setup together: a bucketed snapshot first written in retrieval order (only
    a column view reads it), then a transform view appears. The parts are written again in
    event order, the transform runs bucket by bucket, and every answer equals a store that never
    bucketed."""
    raw = tmp_path / "laps.parquet"
    _laps(21, late=True).write_parquet(raw)
    rolling = [View("speeds", "laps", "rolling",
                    {"column": "speed", "windows": [3], "aggs": ["mean", "count"]}),
               Feature("speed_mean_last_3", view="speeds"),
               Feature("speed_count_last_3", view="speeds")]
    query = _query(22)
    features = ["speed", "fuel", "speed_mean_last_3", "speed_count_last_3"]
    answers = {}
    for buckets in ("1", "3"):
        monkeypatch.setenv(BUCKETS_ENV, buckets)
        store = _store(tmp_path / f"store{buckets}", raw, late=True)
        materialize(store)
        first = store.registry.latest_artifact("source", "laps")
        assert first["params"]["order"] == "retrieval"
        store.apply(rolling)
        with pytest.warns(UserWarning, match="verification skipped"):
            materialize(store, verify=False)
        snapshot = store.registry.latest_artifact("source", "laps")
        assert snapshot["id"] != first["id"] and "order" not in snapshot["params"]
        assert len(snapshot.get("parts") or [None]) == int(buckets)
        for f in artifact_files(store.root, snapshot):  # each part in event order
            rows = pl.read_parquet(f)
            assert rows.equals(rows.sort("car", "event_timestamp"))
        speeds = store.registry.latest_artifact("view", "speeds")
        assert len(speeds.get("parts") or [None]) == int(buckets)
        # Row windows over late rows leak (verification would say so): not what is tested here.
        answers[buckets] = store.get_historical_features(query, features, tier="historical",
                                                         allow_unverified=True)
        assert answers[buckets].select(*query.columns, "speed", "fuel").equals(
            _oracle(store, query))
    assert answers["3"].equals(answers["1"])
