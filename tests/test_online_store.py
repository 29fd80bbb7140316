"""The online store against a plain-loop oracle and the join engine, on real SQLite and Redis.

Covers: what a publish keeps and when the reader falls back to the artifact, atomic publishes
under concurrent readers (and a publish dying half way), incremental publishes, the tier,
verification and TTL rules, cached registry lookups, dtypes and composite keys.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featurestore import Entity, Feature, FeatureSet, FeatureStore, LeakageError, Source, View
from featurestore.errors import DataError, DefinitionError, NotFoundError
from featurestore.materialize import materialize
from featurestore.online import (
    NOT_FOUND,
    NULL_VALUE,
    OUTSIDE_MAX_AGE,
    PRESENT,
    ViewMeta,
    open_backend,
    publish,
    published_artifact_ids,
    reader_for,
    unpublish,
)
from featurestore.online import redis_backend as redis_module
from featurestore.online.base import PublishBatch
from featurestore.registry import Registry
from tests.onlinekit import T0, laps_store, online_store_url, oracle, random_laps


@pytest.fixture(params=["sqlite", "redis"])
def online_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each test runs on a real SQLite file and on the real Redis server (own key prefix)."""
    yield from online_store_url(request.param, tmp_path)

FEATURES = ("x", "n", "label")


def _query(keys: list[int | None], at: dt.datetime) -> pl.DataFrame:
    return pl.DataFrame({"driver_id": keys, "event_timestamp": [at] * len(keys)},
                        schema={"driver_id": pl.Int64, "event_timestamp": pl.Datetime("us", "UTC")})


def _statuses(data: pl.DataFrame, keys: list[int | None], at: dt.datetime, inclusive: bool,
              ttl: dt.timedelta | None) -> dict[str, list[str]]:
    """Expected statuses: the oracle's row without TTL tells found / stale / null."""
    found = oracle(data, keys, at, inclusive=inclusive, features=("t",))["t"]
    fresh = oracle(data, keys, at, inclusive=inclusive, ttl=ttl, features=("t", *FEATURES))
    out = {}
    for f in FEATURES:
        out[f] = [NOT_FOUND if t is None else OUTSIDE_MAX_AGE if t2 is None
                  else (PRESENT if v is not None else NULL_VALUE)
                  for t, t2, v in zip(found, fresh["t"], fresh[f], strict=True)]
    return out


# (publish moment in hours after T0, rows kept from before it); the data spans hours 0..63.
PUBLISH_CASES = [(100, 1), (-10, 1), (30, 1), (30, 2), (30, None)]


@pytest.mark.parametrize(("offset", "history"), PUBLISH_CASES)
def test_values_follow_the_contract(online_url: str, tmp_path: Path, offset: int,
                                    history: int | None) -> None:
    data = random_laps(seed=1000 + offset + (history or 0))
    store = laps_store(tmp_path, data, online_store=online_url)
    materialize(store)
    moment = T0 + dt.timedelta(hours=offset)
    [res] = publish(store, history=history, moment=moment)
    assert res.status == "published" and res.entities == data["driver_id"].n_unique()
    reader = reader_for(store)

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(keys=st.lists(st.one_of(st.none(), st.integers(0, 14)), min_size=1, max_size=6),
           hour=st.integers(-2, 70), minute=st.sampled_from([0, 0, 30]),
           inclusive=st.booleans(), ttl_h=st.one_of(st.none(), st.integers(0, 12)))
    def check(keys: list[int | None], hour: int, minute: int, inclusive: bool,
              ttl_h: int | None) -> None:
        at = T0 + dt.timedelta(hours=hour, minutes=minute)
        ttl = None if ttl_h is None else dt.timedelta(hours=ttl_h)
        got = store.get_online_features(pl.DataFrame({"driver_id": keys}, schema={"driver_id": pl.Int64}),
                                        "lapset", tier="practice", as_of=at, inclusive=inclusive,
                                        ttl=ttl, with_status=True)
        want = oracle(data, keys, at, inclusive=inclusive, ttl=ttl)
        statuses = _statuses(data, keys, at, inclusive, ttl)
        for f in FEATURES:
            assert got[f].to_list() == want[f], f
            assert got[f"{f}__status"].to_list() == statuses[f], f
        hist = store.get_historical_features(_query(keys, at), "lapset", tier="practice",
                                             inclusive=inclusive, ttl=ttl)
        assert got.select("driver_id", *FEATURES).equals(hist.drop("event_timestamp"))
        served = reader.lookup({"driver_id": keys}, "lapset", tier="practice", as_of=at,
                               inclusive=inclusive, ttl=ttl).served_from["laps"]
        if at >= moment or history is None:
            assert served == "online"  # kept rows always answer from the publish moment on

    check()


def test_a_request_before_the_kept_rows_reads_the_artifact(online_url: str, tmp_path: Path) -> None:
    data = random_laps(seed=7)
    store = laps_store(tmp_path, data, online_store=online_url)
    materialize(store)
    publish(store, moment=T0 + dt.timedelta(days=30))
    keys = sorted(data["driver_id"].unique().to_list())
    early = T0 + dt.timedelta(hours=20)
    result = reader_for(store).lookup({"driver_id": keys}, ["x"], tier="practice", as_of=early)
    assert result.served_from == {"laps": "online+artifact"}
    assert result.values["x"] == oracle(data, keys, early)["x"]
    late = reader_for(store).lookup({"driver_id": keys}, ["x"], tier="practice")
    assert late.served_from == {"laps": "online"}


# ------------------------------------------------------------------------ atomic publish
def _meta(gen: int) -> ViewMeta:
    return ViewMeta(view="v", view_version=1, artifact_id=gen, artifact_checksum="", verified=True,
                    keys=("k",), key_dtypes=("Int64",), columns=("x",), dtypes=("Int64",),
                    history=1, moment_us=0, published_at="", entities=0, rows=gen)


def _batch(gen: int, n: int) -> PublishBatch:
    # Generation g rewrites keys i with (i + g) even: an incremental publish of half the keys.
    keys = [i for i in range(n) if gen == 0 or (i + gen) % 2 == 0]
    return PublishBatch(_meta(gen), [(f"[{i}]", f"d{gen}", json.dumps([1, [0, 0, gen]]))
                                     for i in keys])


def _expected(i: int, gen: int) -> int:
    return gen if gen == 0 or (i + gen) % 2 == 0 else gen - 1


def test_readers_never_see_a_mix_of_versions(online_url: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_module, "CHUNK", 5)  # many pipelines per Redis publish
    store = FeatureStore(tmp_path / "s", online_store=online_url)
    writer = open_backend(store, online_url)
    n, wanted = 40, [f"[{i}]" for i in range(40)]
    writer.publish("v", lambda old, digests: _batch(0, n))
    stop, problems, reads = threading.Event(), [], [0]

    def read_loop() -> None:
        backend = open_backend(store, online_url)
        while not stop.is_set():
            text, payloads = backend.read([("v", wanted)])["v"]
            gen = ViewMeta.from_json(text).rows
            got = {k: json.loads(p)[1][2] for k, p in payloads.items()}
            want = {f"[{i}]": _expected(i, gen) for i in range(n)}
            if got != want:
                problems.append((gen, got))
            reads[0] += 1
        backend.close()

    threads = [threading.Thread(target=read_loop) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for gen in range(1, 16):
            writer.publish("v", lambda old, digests, g=gen: _batch(g, n))
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not problems, problems[:2]
    assert reads[0] > 0
    text, payloads = writer.read([("v", wanted)])["v"]
    assert ViewMeta.from_json(text).rows == 15 and len(payloads) == n
    writer.close()


class _Boom(RuntimeError):
    pass


def test_a_publish_that_dies_half_way_changes_nothing(online_url: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_module, "CHUNK", 4)
    store = FeatureStore(tmp_path / "s", online_store=online_url)
    backend = open_backend(store, online_url)
    wanted = [f"[{i}]" for i in range(20)]
    backend.publish("v", lambda old, digests: _batch(0, 20))

    class Dying(list):  # type: ignore[type-arg]
        """Upserts that fail after a few entities have been handed out."""

        def __iter__(self):  # type: ignore[no-untyped-def]
            for i, item in enumerate(list.__iter__(self)):
                if i == 9:
                    raise _Boom("publisher died")
                yield item

    if backend.kind == "redis":
        calls = [0]
        renew = redis_module.RedisBackend._renew

        def dying_renew(self: Any, view: str, token: str) -> None:
            calls[0] += 1
            if calls[0] == 2:  # two chunks of new payloads are written, the switch is not
                raise _Boom("publisher died")
            renew(self, view, token)

        monkeypatch.setattr(redis_module.RedisBackend, "_renew", dying_renew)
        with pytest.raises(_Boom):
            backend.publish("v", lambda old, digests: _batch(2, 20))
        monkeypatch.setattr(redis_module.RedisBackend, "_renew", renew)
    else:
        def dying(old: ViewMeta | None, digests: dict[str, str]) -> PublishBatch:
            batch = _batch(2, 20)
            batch.upserts = Dying(batch.upserts)
            return batch

        with pytest.raises(_Boom):
            backend.publish("v", dying)
    text, payloads = backend.read([("v", wanted)])["v"]
    assert ViewMeta.from_json(text).rows == 0
    assert {json.loads(p)[1][2] for p in payloads.values()} == {0}
    # The next publish recovers and is whole.
    backend.publish("v", lambda old, digests: _batch(1, 20))
    text, payloads = backend.read([("v", wanted)])["v"]
    assert {k: json.loads(p)[1][2] for k, p in payloads.items()} == \
        {f"[{i}]": _expected(i, 1) for i in range(20)}
    if backend.kind == "redis":
        gen = ViewMeta.from_json(text).gen
        client = backend.client  # type: ignore[attr-defined]
        for key in wanted:  # nothing of the dead publish is left to resurface later
            assert all(int(f) <= gen for f in client.hkeys(backend._k("e", "v", key)))  # type: ignore[attr-defined]
        assert client.get(backend._k("pending", "v")) is None  # type: ignore[attr-defined]
    backend.close()


# ------------------------------------------------------------------------ incremental
def test_only_changed_entities_are_rewritten(online_url: str, tmp_path: Path) -> None:
    data = random_laps(seed=11)
    drivers = sorted(data["driver_id"].unique().to_list())
    store = laps_store(tmp_path, data, online_store=online_url)
    materialize(store)
    [first] = publish(store)
    assert (first.changed, first.removed) == (len(drivers), 0)
    [again] = publish(store)
    assert again.status == "up-to-date"
    grown, gone = drivers[0], drivers[1]
    extra = pl.DataFrame({"driver_id": [grown], "t": [dt.datetime(2025, 6, 1)],
                          "avail": [dt.datetime(2025, 6, 1, 1)], "x": [42.0], "n": [7],
                          "label": ["wet"]}, schema=data.schema)
    changed = pl.concat([data.filter(pl.col("driver_id") != gone), extra])
    changed.write_parquet(tmp_path / "laps.parquet")
    materialize(store)
    [second] = publish(store)
    assert (second.status, second.changed, second.removed) == ("published", 1, 1)
    out = store.get_online_features({"driver_id": [grown, gone]}, ["x", "label"], tier="practice",
                                    with_status=True)
    assert out["x"].to_list() == [42.0, None] and out["label"].to_list() == ["wet", None]
    assert out["x__status"].to_list() == [PRESENT, NOT_FOUND]
    backend = reader_for(store).backend
    if backend.kind == "redis":
        gens = {k: backend.client.hkeys(backend._k("e", "laps", f"[{k}]"))  # type: ignore[attr-defined]
                for k in drivers}
        meta = backend.metas()["laps"]
        assert gens[grown] == [str(meta.gen)] and gens[gone] == []
        untouched = [g for k, g in gens.items() if k not in (grown, gone)]
        assert untouched and all(g == [str(meta.gen - 1)] for g in untouched)


def test_an_older_artifact_never_replaces_a_newer_one(online_url: str, tmp_path: Path) -> None:
    from featurestore.online.publishing import _publish_one

    data = random_laps(seed=3)
    store = laps_store(tmp_path, data, online_store=online_url)
    materialize(store)
    old = store.registry.latest_artifact("view", "laps")
    data.with_columns(pl.col("n") + 1).write_parquet(tmp_path / "laps.parquet")
    materialize(store)
    publish(store)
    backend = open_backend(store, online_url)
    view = store.registry.get("view", "laps")
    assert old is not None
    result = _publish_one(store, backend, view, old, ["driver_id"], dt.datetime.now(dt.UTC), 1,
                          False)
    assert result.status == "newer-published"
    assert backend.metas()["laps"].artifact_id > old["id"]
    backend.close()


# ------------------------------------------------------------------------ guards
def test_tier_is_required_unless_the_store_sets_a_default(online_url: str, tmp_path: Path) -> None:
    store = laps_store(tmp_path, random_laps(seed=5), online_store=online_url, tier="qualifying")
    materialize(store)
    publish(store)
    with pytest.raises(DefinitionError, match="tier of the prediction point"):
        store.get_online_features({"driver_id": [1]}, ["x"])
    with pytest.raises(LeakageError, match="x \\(tier qualifying\\)") as info:
        store.get_online_features({"driver_id": [1]}, ["x", "n"], tier="practice")
    assert info.value.features == ["n", "x"]  # type: ignore[attr-defined]
    store.registry.write(lambda c: Registry.set_info(c, "setting.default_tier", "practice"))
    reader_for(store).invalidate()
    with pytest.raises(LeakageError):
        store.get_online_features({"driver_id": [1]}, ["x"])
    store.registry.write(lambda c: Registry.set_info(c, "setting.default_tier", "race"))
    reader_for(store).invalidate()
    assert store.get_online_features({"driver_id": [1]}, ["x"]).height == 1


def test_unverified_views_are_refused_unless_allowed(online_url: str, tmp_path: Path) -> None:
    store = laps_store(tmp_path, random_laps(seed=9), online_store=online_url)
    store.apply([View("roll", source="laps", transform="rolling",
                      params={"column": "n", "windows": [2], "aggs": ["mean"]}),
                 Feature("n_mean_last_2", view="roll")])
    with pytest.warns(UserWarning, match="verification skipped"):
        materialize(store, ["roll"], verify=False)
    for published in (False, True):  # the artifact path and the online path refuse alike
        if published:
            publish(store, ["roll"])
        with pytest.raises(LeakageError, match="n_mean_last_2") as info:
            store.get_online_features({"driver_id": [1]}, ["n_mean_last_2"], tier="race")
        assert info.value.features == ["n_mean_last_2"]  # type: ignore[attr-defined]
        out = store.get_online_features({"driver_id": [1]}, ["n_mean_last_2"], tier="race",
                                        allow_unverified=True)
        assert out.height == 1


# ------------------------------------------------------------------------ registry caching
def test_registry_is_not_read_per_call(online_url: str, tmp_path: Path) -> None:
    from sqlalchemy import event

    store = laps_store(tmp_path, random_laps(seed=13), online_store=online_url)
    materialize(store)
    publish(store)
    reader = reader_for(store)
    reader.registry_ttl = 3600
    store.get_online_features({"driver_id": [1, 2]}, "lapset", tier="practice")  # warm
    statements: list[str] = []
    listener = lambda *args: statements.append(args[2])
    event.listen(store.registry.engine, "before_cursor_execute", listener)
    try:
        for i in range(25):
            store.get_online_features({"driver_id": [i % 5]}, "lapset", tier="practice")
        publish(store, force=True)  # a new online version: the reader adapts without the registry
        statements.clear()
        for i in range(25):
            store.get_online_features({"driver_id": [i % 5]}, "lapset", tier="practice")
        assert statements == []
    finally:
        event.remove(store.registry.engine, "before_cursor_execute", listener)


def test_registry_changes_are_seen_after_the_cache_expires(online_url: str, tmp_path: Path) -> None:
    data = random_laps(seed=17)
    store = laps_store(tmp_path, data, online_store=online_url)
    materialize(store)
    publish(store)
    reader_for(store).registry_ttl = 0  # every call reads the registry again
    before = store.get_online_features({"driver_id": [1]}, "lapset", tier="practice")
    assert before.columns == ["driver_id", "x", "n", "label"]
    store.apply([FeatureSet("lapset", ("x",))])  # a new version of the feature set
    after = store.get_online_features({"driver_id": [1]}, "lapset", tier="practice")
    assert after.columns == ["driver_id", "x"]


def test_unpublished_and_unregistered_views_leave_the_online_store(online_url: str,
                                                                   tmp_path: Path) -> None:
    data = random_laps(seed=19)
    store = laps_store(tmp_path, data, online_store=online_url)
    materialize(store)
    publish(store)
    art = store.registry.latest_artifact("view", "laps")
    assert art is not None and published_artifact_ids(store) == {art["id"]}
    assert unpublish(store, ["laps", "nothing"]) == ["laps"]
    result = reader_for(store).lookup({"driver_id": [1]}, ["x"], tier="practice")
    assert result.served_from == {"laps": "artifact"}
    publish(store)
    # Another registry over the same online store does not know "laps": a full publish drops it.
    other = FeatureStore(tmp_path / "other", online_store=online_url)
    if other.registry.info("store_id") is None and online_url.startswith("redis"):
        pass  # the prefix is explicit in the URL, so both stores share it
    results = publish(other, backend=open_backend(other, online_url))
    assert [(r.view, r.status) for r in results] == [("laps", "removed")]
    assert published_artifact_ids(store) == set()


# ------------------------------------------------------------------------ keys and dtypes
def test_dtypes_and_composite_keys_match_the_join_engine(online_url: str, tmp_path: Path) -> None:
    path = tmp_path / "stints.parquet"
    t = [dt.datetime(2025, 3, 1, h) for h in (10, 11, 12, 10, 11)]
    pl.DataFrame({
        "driver_id": pl.Series([1, 1, 1, 2, 2], dtype=pl.Int32),
        "race": ["daytona", "daytona", "atlanta", "daytona", "atlanta"],
        "t": t,
        "i8": pl.Series([1, None, 3, 4, 5], dtype=pl.Int8),
        "u16": pl.Series([1, 2, 3, 4, 5], dtype=pl.UInt16),
        "f32": pl.Series([1.5, float("nan"), 2.5, None, float("inf")], dtype=pl.Float32),
        "ok": [True, False, None, True, False],
        "tyre": pl.Series(["soft", "hard", "soft", None, "wet"], dtype=pl.Categorical),
        "day": [dt.date(2025, 3, d) for d in (1, 2, 3, 4, 5)],
        "when": pl.Series(t, dtype=pl.Datetime("ms", "America/New_York")),
        "gap": [dt.timedelta(seconds=s) for s in (1, 2, 3, 4, 5)],
        "laps": [[1, 2], [], None, [3], [4, 5, 6]],
    }).write_parquet(path)
    store = FeatureStore(tmp_path / "store", online_store=online_url)
    cols = ["i8", "u16", "f32", "ok", "tyre", "day", "when", "gap", "laps"]
    store.apply([Entity("stint", ("driver_id", "race")),
                 Source("stints", str(path), "stint", "t"),
                 *[Feature(c, source="stints") for c in cols]])
    materialize(store)
    publish(store)
    keys = pl.DataFrame({"driver_id": [1, 2, 1, 3, None], "race": ["daytona", "atlanta", "atlanta",
                                                                    "daytona", "daytona"]},
                        schema={"driver_id": pl.Int32, "race": pl.String})
    at = dt.datetime(2025, 3, 2, tzinfo=dt.UTC)
    got = store.get_online_features(keys, cols, tier="race", as_of=at, with_availability=True)
    assert reader_for(store).lookup(keys, cols, tier="race", as_of=at).served_from == \
        {"stints": "online"}
    hist = store.get_historical_features(
        keys.with_columns(pl.lit(at).alias("event_timestamp")), cols, tier="race",
        with_availability=True)
    assert got.equals(hist.drop("event_timestamp"))
    # Keys are normalised to the view's key dtypes; a wrong kind of key is an error.
    same = store.get_online_features({"driver_id": [1.0], "race": ["daytona"]}, ["u16"],
                                     tier="race", as_of=at)
    assert same["u16"].to_list() == [2]
    with pytest.raises(DataError, match="key 'driver_id' of view 'stints'"):
        store.get_online_features({"driver_id": ["1"], "race": ["daytona"]}, ["i8"], tier="race")
    with pytest.raises(DataError, match="race"):
        store.get_online_features({"driver_id": [1]}, ["i8"], tier="race")


def test_an_unmaterialized_feature_is_not_found(online_url: str, tmp_path: Path) -> None:
    store = laps_store(tmp_path, random_laps(seed=21), online_store=online_url)
    with pytest.raises(NotFoundError, match="featurestore materialize laps"):
        store.get_online_features({"driver_id": [1]}, ["x"], tier="race")
    with pytest.raises(NotFoundError, match="not registered"):
        store.get_online_features({"driver_id": [1]}, ["nope"], tier="race")


def test_a_deleted_feature_is_not_served(online_url: str, tmp_path: Path) -> None:
    from sqlalchemy import update

    from featurestore import schema
    from featurestore.registry import utcnow

    store = laps_store(tmp_path, random_laps(seed=23), online_store=online_url)
    materialize(store)
    publish(store)
    reader_for(store).registry_ttl = 0
    assert store.get_online_features({"driver_id": [1]}, ["x"], tier="race").height == 1
    # What `featurestore delete` records (history kept, every version marked).
    store.registry.write(lambda c: c.execute(update(schema.features)
                                             .where(schema.features.c.name == "x")
                                             .values(deleted_at=utcnow())))
    with pytest.raises(NotFoundError, match=r"deleted|not registered"):
        store.get_online_features({"driver_id": [1]}, ["x"], tier="race")
