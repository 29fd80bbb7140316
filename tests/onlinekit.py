"""Shared pieces of the online-store tests: real Redis per test, seeded data, a plain oracle."""

from __future__ import annotations

import datetime as dt
import os
import random
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from featurestore import Entity, Feature, FeatureSet, FeatureStore, Source

REDIS_ENV = "FEATURESTORE_TEST_REDIS_URL"
REDIS_DEFAULT = "redis://127.0.0.1:6379/0"
T0 = dt.datetime(2025, 3, 1, tzinfo=dt.UTC)


def redis_base_url() -> str | None:
    """The Redis URL to test against, or None to skip (only when the env var is unset)."""
    url = os.environ.get(REDIS_ENV)
    try:
        import redis

        client = redis.Redis.from_url(url or REDIS_DEFAULT, socket_connect_timeout=2)
        client.ping()
        client.close()
    except Exception as exc:
        if url:
            pytest.fail(f"{REDIS_ENV} is set but Redis does not answer at {url}: {exc}")
        return None
    return url or REDIS_DEFAULT


def drop_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i:i + 1000])
    client.close()


@contextmanager
def redis_store_url() -> Iterator[str]:
    """A Redis online-store URL with a key prefix of its own, removed afterwards."""
    base = redis_base_url()
    if base is None:
        pytest.skip(f"no Redis server answers (set {REDIS_ENV} to make this a failure)")
    prefix = f"fstest-{uuid.uuid4().hex[:12]}"
    try:
        yield f"{base}?prefix={prefix}"
    finally:
        drop_prefix(base, prefix)


def online_store_url(kind: str, tmp_path: Path) -> Iterator[str]:
    """For the ``online_url`` fixtures: a real SQLite file or the real Redis server."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / 'online-test.db'}"
    else:
        with redis_store_url() as url:
            yield url


def random_laps(seed: int, n_drivers: int = 12) -> pl.DataFrame:
    """Seeded rows with availability ties, nulls and drivers without rows.

    ``avail`` (the availability column) takes few distinct hours so that ties on
    ``available_at`` are common; event times are unique per driver (the source forbids
    duplicates), so ties resolve by event time.
    """
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    for driver in range(1, n_drivers + 1):
        hours = rng.sample(range(0, 60), rng.randint(0, 7))
        for h in hours:
            rows.append({
                "driver_id": driver,
                "t": (T0 + dt.timedelta(hours=h)).replace(tzinfo=None),
                "avail": (T0 + dt.timedelta(hours=h + rng.choice([0, 1, 3]))).replace(tzinfo=None),
                "x": None if rng.random() < 0.15 else round(rng.uniform(-5, 5), 3),
                "n": rng.randint(0, 40),
                "label": rng.choice(["soft", "medium", "hard", None]),
            })
    rng.shuffle(rows)
    schema = {"driver_id": pl.Int64, "t": pl.Datetime("us"), "avail": pl.Datetime("us"),
              "x": pl.Float64, "n": pl.Int32, "label": pl.String}
    return pl.DataFrame(rows, schema=schema)


def laps_store(root: Path, data: pl.DataFrame, *, online_store: str | None = None,
               tier: str = "practice") -> FeatureStore:
    path = root / "laps.parquet"
    root.mkdir(parents=True, exist_ok=True)
    data.write_parquet(path)
    store = FeatureStore(root / "store", online_store=online_store)
    store.apply([
        Entity("driver", ("driver_id",)),
        Source("laps", str(path), "driver", "t", available_time="avail", tier=tier),
        Feature("x", source="laps"), Feature("n", source="laps", dtype="Int32"),
        Feature("label", source="laps", dtype="String"),
        FeatureSet("lapset", ("x", "n", "label")),
    ])
    return store


def oracle(data: pl.DataFrame, keys: list[int | None], moment: dt.datetime, *,
           inclusive: bool = False, ttl: dt.timedelta | None = None,
           features: tuple[str, ...] = ("x", "n", "label")) -> dict[str, list[Any]]:
    """The contract, as a loop: newest row with avail < T (<= T), ties to the later event."""
    cutoff = moment.astimezone(dt.UTC).replace(tzinfo=None)
    out: dict[str, list[Any]] = {f: [] for f in features}
    rows = data.to_dicts()
    for key in keys:
        best = None
        for r in rows:
            if key is None or r["driver_id"] != key:
                continue
            if not (r["avail"] < cutoff or (inclusive and r["avail"] == cutoff)):
                continue
            if best is None or (r["avail"], r["t"]) > (best["avail"], best["t"]):
                best = r
        stale = best is not None and ttl is not None and best["avail"] < cutoff - ttl
        for f in features:
            out[f].append(None if best is None or stale else best[f])
    return out
