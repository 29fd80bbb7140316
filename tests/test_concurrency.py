"""Many writers, one registry: nothing lost, nothing duplicated, nothing half-applied seen.

The storm itself lives in ``benchmarks/concurrency.py``: 8 real processes (spawn) on one fresh
registry - applies that add a group of objects, new versions of one shared feature, artifacts -
with a reader process checking every snapshot it takes. Here each writer runs 50 operations to
keep the suite fast on two cores (every apply plans against the whole registry, so later
operations cost more); ``FEATURESTORE_STORM_OPS=200`` runs the full 8 x 200, as the benchmark
``python benchmarks/concurrency.py`` does, which prints the throughput and retry figures.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from benchmarks.concurrency import run_storm
from featurestore import FeatureStore, FeatureStoreError
from featurestore import registry as registry_module
from tests.storekit import basic_defs, write_results

pytestmark = pytest.mark.slow  # storms of writer processes against both registries

WORKERS = 8
OPS = int(os.environ.get("FEATURESTORE_STORM_OPS", "50"))


def test_storm_of_writers_loses_nothing(tmp_path: Path, registry_url: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    result = run_storm(tmp_path / "store", registry_url, workers=WORKERS, ops=OPS, readers=1)
    with capsys.disabled():
        db = "postgresql" if registry_url.startswith("postgresql") else "sqlite"
        print(f"\n[storm {db}] {result.summary()}")
    assert result.problems == []
    assert result.total_ops == WORKERS * OPS
    assert all(r["snapshots"] > 0 for r in result.readers)
    # The groups really were applied while the reader looked (it saw some, never half of one).
    assert max(r["groups_seen"] for r in result.readers) > 0


def test_storm_with_short_lock_waits_retries_and_loses_nothing(
        tmp_path: Path, registry_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Lock waits cut to 100 ms: contention now surfaces as retries inside Registry.write."""
    result = run_storm(tmp_path / "store", registry_url, workers=WORKERS, ops=max(OPS // 4, 12),
                       readers=1, busy_timeout_ms=100)
    with capsys.disabled():
        db = "postgresql" if registry_url.startswith("postgresql") else "sqlite"
        print(f"\n[storm {db}, 100 ms lock waits] {result.summary()}")
    assert result.problems == []
    assert result.retries > 0


@contextmanager
def registry_write_lock(url: str, store: FeatureStore) -> Iterator[None]:
    """Hold the registry's write lock from another connection, as a slow writer would."""
    if url.startswith("sqlite"):
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    engine = create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        key = "hashtext('featurestore:' || coalesce(current_schema(), ''))"
        conn.execute(text(f"SELECT pg_advisory_lock({key})"))
        try:
            yield
        finally:
            conn.execute(text(f"SELECT pg_advisory_unlock({key})"))
    engine.dispose()


def test_write_waits_out_a_held_lock_by_retrying(tmp_path: Path, registry_url: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "BUSY_TIMEOUT_MS", 50)
    store = FeatureStore(tmp_path / "store", registry_url=registry_url)
    defs = basic_defs(write_results(tmp_path / "r.parquet"))
    held = threading.Event()

    def hold_for(seconds: float) -> None:
        with registry_write_lock(registry_url, store):
            held.set()
            time.sleep(seconds)

    holder = threading.Thread(target=hold_for, args=(0.6,))
    holder.start()
    held.wait(10)
    started = time.perf_counter()
    plan = store.apply(defs)  # blocked for ~0.6 s: 50 ms waits, then retries with backoff
    waited = time.perf_counter() - started
    holder.join()
    assert plan.counts()["add"] == 6
    assert store.registry.retries >= 1, f"no retry after waiting {waited:.2f} s"
    assert {f["name"] for f in store.list("feature")} == {"finish", "laps_led"}
    store.close()


def test_a_lock_that_outlives_every_retry_is_one_clear_error(tmp_path: Path, registry_url: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry_module, "BUSY_TIMEOUT_MS", 20)
    monkeypatch.setattr(registry_module, "MAX_ATTEMPTS", 3)
    store = FeatureStore(tmp_path / "store", registry_url=registry_url)
    defs = basic_defs(write_results(tmp_path / "r.parquet"))
    busy = r"stayed busy through 3 attempts.*nothing was written"
    with registry_write_lock(registry_url, store), pytest.raises(FeatureStoreError,
                                                                 match=busy) as info:
        store.apply(defs)
    assert type(info.value) is FeatureStoreError and store.registry.retries == 2
    assert store.list("feature") == []
    store.apply(defs)  # the lock is gone: the same apply goes through
    assert len(store.list("feature")) == 2
    store.close()
