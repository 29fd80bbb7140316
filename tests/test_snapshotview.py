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

from featurestore import Entity, Feature, FeatureStore, Source
from featurestore.artifacts import artifact_files, verify_artifact
from featurestore.buckets import BUCKETS_ENV
from featurestore.errors import ArtifactError
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
def test_column_view_shares_the_snapshot_only_when_it_is_in_retrieval_order(
        tmp_path: Path, late: bool) -> None:
    raw = tmp_path / "laps.parquet"
    _laps(1, late=late).write_parquet(raw)
    store = _store(tmp_path / "store", raw, late=late)
    [result] = materialize(store)
    assert result.status == "materialized"
    snapshot, view = store.registry.latest_artifact("source", "laps"), _view(store)
    shared = _same_file(store.root / snapshot["path"], store.root / view["path"])
    assert shared is (not late)
    assert view["path"] != snapshot["path"] and view["path"].startswith("data/views/")
    # The view's row lists the columns it serves, whatever its file holds.
    assert sorted(view["params"]["columns"]) == ["fuel", "speed"]
    assert list(view["schema"]) == ["car", "event_timestamp", "available_at",
                                    *view["params"]["columns"]]
    assert view["row_count"] == snapshot["row_count"]
    assert (view["checksum"] == snapshot["checksum"]) is shared
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


def test_bucketed_snapshot_parts_are_shared(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BUCKETS_ENV, "3")
    raw = tmp_path / "laps.parquet"
    _laps(5, late=False).write_parquet(raw)
    store = _store(tmp_path / "store", raw, late=False)
    materialize(store)
    snapshot, view = store.registry.latest_artifact("source", "laps"), _view(store)
    assert len(view["parts"]) == len(snapshot["parts"]) == 3
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
