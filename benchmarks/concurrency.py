"""A storm of concurrent writers (and readers) against one featurestore registry.

    python benchmarks/concurrency.py [--workers 8] [--ops 200] [--pg-url URL] [--no-pg]

Each writer is a real process (multiprocessing, spawn) with its own ``FeatureStore`` on the same
store root and registry. Writers cycle through three operations:

- ``group``: apply a definitions set that adds two new features and a feature set pinning them
  (one transaction: all three or none);
- ``version``: apply the one ``shared`` feature with a random tier, so every writer keeps adding
  versions of the same feature (contention on the same version number);
- ``artifact``: re-ingest the source (``ingest --force``): write a Parquet artifact, record it.

Reader processes meanwhile take registry snapshots in a loop and check that every group is either
complete or absent and that the ``shared`` versions are exactly 1..n. ``run_storm`` returns every
worker's log; ``check_storm`` lists everything that went wrong (lost or duplicated writes, errors
that reached a writer, half-applied groups a reader saw, bad artifacts). The test
``tests/test_concurrency.py`` runs the same storm and asserts that list is empty; this script
prints throughput and retries for SQLite and PostgreSQL.
"""

from __future__ import annotations

import argparse
import datetime as dt
import multiprocessing
import os
import random
import re
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TIERS = ("historical", "practice", "qualifying", "race")
OPS = ("group", "version", "artifact")
GROUP_RE = re.compile(r"^g_(\d+)_(\d+)_([abs])$")
START_FILE = "START"
STOP_FILE = "STOP"


def write_source(root: Path, rows: int = 200) -> Path:
    import polars as pl

    path = root / "laps.parquet"
    start = dt.datetime(2025, 1, 1)
    pl.DataFrame({
        "driver_id": [i % 10 for i in range(rows)],
        "t": [start + dt.timedelta(minutes=i) for i in range(rows)],
        "x": [float(i) for i in range(rows)],
        "y": [i * 2 for i in range(rows)],
        "z": [str(i) for i in range(rows)],
    }).write_parquet(path)
    return path


def base_defs(source: Path) -> list[Any]:
    from featurestore import Entity, Feature, Source

    return [Entity("driver", ("driver_id",)),
            Source("laps", str(source), "driver", "t"),
            Feature("base_x", source="laps", column="x"),
            Feature("base_y", source="laps", column="y"),
            Feature("base_z", source="laps", column="z")]


def _ready_then_wait(root: Path, tag: str) -> None:
    """Say this process has imported everything, then wait for the common start."""
    (root / f"ready-{tag}").touch()
    _wait_for(root / START_FILE)


def _wait_for(path: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)


def writer(wid: int, root: str, url: str, ops: int, seed: int,
           busy_timeout_ms: int | None = None) -> dict[str, Any]:
    """One writer process: ``ops`` operations; returns what it did and what it observed.

    ``busy_timeout_ms`` shortens how long one attempt waits for the registry's write lock
    (SQLite busy timeout, PostgreSQL lock timeout), so that contention overflows into
    ``Registry.write``'s retries instead of being absorbed by the wait.
    """
    from featurestore import Feature, FeatureSet, FeatureStore, registry

    if busy_timeout_ms is not None:
        registry.BUSY_TIMEOUT_MS = busy_timeout_ms

    rng = random.Random(seed)
    store_root = Path(root)
    log: dict[str, Any] = {"wid": wid, "groups": [], "versions": [], "artifacts": [],
                           "errors": [], "counts": Counter()}
    _ready_then_wait(store_root, f"w{wid}")
    t0 = time.perf_counter()
    store = None
    try:
        store = FeatureStore(store_root, registry_url=url)  # a fresh registry: migrations race too
        base = base_defs(store_root / "laps.parquet")
        log["max_op_retries"] = 0
        for k in range(ops):
            op = OPS[k % len(OPS)] if k else "group"
            retries_before = store.registry.retries
            try:
                if op == "group":
                    a, b, s = (f"g_{wid}_{k}_{x}" for x in "abs")
                    plan = store.apply([*base,
                                        Feature(a, source="laps", column="x", tier=rng.choice(TIERS)),
                                        Feature(b, source="laps", column="y"),
                                        FeatureSet(s, (a, b))])
                    added = sorted(i.name for i in plan.items if i.action == "add")
                    if not {a, b, s} <= set(added):
                        log["errors"].append(f"group {k}: apply added {added}")
                    log["groups"].append(k)
                elif op == "version":
                    tier = rng.choice(TIERS)
                    plan = store.apply([*base, Feature("shared", source="laps", column="x",
                                                       tier=tier)])
                    [item] = [i for i in plan.items if i.name == "shared"]
                    if item.action in ("add", "version"):
                        log["versions"].append((item.version, tier))
                    log["counts"][f"shared_{item.action}"] += 1
                else:
                    [res] = store.ingest(["laps"], force=True)
                    art = res["artifact"]
                    log["artifacts"].append((art["id"], art["path"], art["checksum"]))
                log["counts"][op] += 1
            except Exception as exc:
                log["errors"].append(f"{op} {k}: {type(exc).__name__}: {exc}")
            log["max_op_retries"] = max(log["max_op_retries"],
                                        store.registry.retries - retries_before)
    except Exception as exc:
        log["errors"].append(f"open: {type(exc).__name__}: {exc}\n{traceback.format_exc()}")
    log["seconds"] = time.perf_counter() - t0
    log["retries"] = store.registry.retries if store is not None else 0
    if store is not None:
        store.close()
    log["counts"] = dict(log["counts"])
    return log


def reader(root: str, url: str) -> dict[str, Any]:
    """Snapshot the registry in a loop until STOP; every group must be all there or absent."""
    from sqlalchemy.exc import OperationalError

    from featurestore.registry import Registry

    store_root = Path(root)
    _ready_then_wait(store_root, f"r{uuid.uuid4().hex[:6]}")
    out: dict[str, Any] = {"snapshots": 0, "groups_seen": 0, "violations": [], "errors": []}
    registry = None
    deadline = time.monotonic() + 60
    while registry is None:
        try:
            registry = Registry(url)
        except Exception as exc:
            # With very short lock waits the storm can outlast every open attempt; once the
            # writers stop, opening succeeds, so keep trying (bounded) rather than give up.
            if time.monotonic() > deadline:
                out["errors"].append(f"open: {exc}")
                return out
            time.sleep(0.05)
    # At least one snapshot, even when the storm ended while the reader was opening.
    first = True
    while first or not (store_root / STOP_FILE).exists():
        first = False
        try:
            with registry.read() as conn:
                features = Registry.latest_rows(conn, "feature")
                sets = Registry.latest_rows(conn, "feature_set")
                shared = sorted(v["version"] for v in registry_history(conn, "shared"))
        except OperationalError as exc:
            out["errors"].append(f"read: {exc}")
            continue
        except Exception as exc:
            if "no such table" in str(exc) or "does not exist" in str(exc):
                time.sleep(0.05)
                continue
            out["errors"].append(f"read: {type(exc).__name__}: {exc}")
            continue
        groups: dict[tuple[str, str], set[str]] = {}
        for name in [*features, *sets]:
            m = GROUP_RE.match(name)
            if m:
                groups.setdefault((m.group(1), m.group(2)), set()).add(m.group(3))
        for gid, parts in groups.items():
            if parts != {"a", "b", "s"}:
                out["violations"].append(f"group g_{gid[0]}_{gid[1]} half applied: saw {sorted(parts)}")
            else:
                pinned = {r["name"] for r in sets[f"g_{gid[0]}_{gid[1]}_s"]["features"]}
                if pinned != {f"g_{gid[0]}_{gid[1]}_a", f"g_{gid[0]}_{gid[1]}_b"}:
                    out["violations"].append(f"group g_{gid[0]}_{gid[1]} set pins {pinned}")
        if shared != list(range(1, len(shared) + 1)):
            out["violations"].append(f"shared versions are not 1..n: {shared}")
        out["snapshots"] += 1
        out["groups_seen"] = max(out["groups_seen"], len(groups))
    registry.close()
    return out


def registry_history(conn: Any, name: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from featurestore import schema

    t = schema.features
    return [dict(r) for r in conn.execute(select(t.c.version).where(t.c.name == name)).mappings()]


@dataclass
class StormResult:
    url: str
    root: Path
    workers: int
    ops: int
    seconds: float
    logs: list[dict[str, Any]]
    readers: list[dict[str, Any]]
    problems: list[str] = field(default_factory=list)

    @property
    def total_ops(self) -> int:
        return sum(sum(v for k, v in log["counts"].items() if k in OPS) for log in self.logs)

    @property
    def ops_per_second(self) -> float:
        return self.total_ops / self.seconds if self.seconds else 0.0

    @property
    def retries(self) -> int:
        return sum(log["retries"] for log in self.logs)

    def summary(self) -> str:
        kinds = Counter()
        for log in self.logs:
            kinds.update({k: v for k, v in log["counts"].items()})
        snaps = sum(r["snapshots"] for r in self.readers)
        return (f"{self.workers} writers x {self.ops} ops: {self.total_ops} ops in "
                f"{self.seconds:.1f} s = {self.ops_per_second:.1f} ops/s; retries "
                f"{self.retries} (per writer {[log['retries'] for log in self.logs]}, at most "
                f"{max(log.get('max_op_retries', 0) for log in self.logs)} for one op); "
                f"ops {dict(sorted(kinds.items()))}; reader snapshots {snaps}; "
                f"problems {len(self.problems)}")


def run_storm(root: Path, url: str, *, workers: int = 8, ops: int = 200, readers: int = 1,
              seed: int = 6, busy_timeout_ms: int | None = None) -> StormResult:
    """Run the storm on a fresh store root and registry URL; see the module docstring."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in [root / START_FILE, root / STOP_FILE, *root.glob("ready-*")]:
        stale.unlink(missing_ok=True)
    write_source(root)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers + readers) as pool:
        reading = [pool.apply_async(reader, (str(root), url)) for _ in range(readers)]
        writing = [pool.apply_async(writer, (w, str(root), url, ops, seed * 1000 + w,
                                             busy_timeout_ms)) for w in range(workers)]
        deadline = time.monotonic() + 300
        while len(list(root.glob("ready-*"))) < workers + readers:  # every process imported
            if time.monotonic() > deadline:
                raise TimeoutError("storm processes did not start")
            time.sleep(0.01)
        t0 = time.perf_counter()
        (root / START_FILE).touch()
        logs = [w.get(timeout=900) for w in writing]
        seconds = max(log["seconds"] for log in logs) if logs else time.perf_counter() - t0
        (root / STOP_FILE).touch()
        reads = [r.get(timeout=120) for r in reading]
    result = StormResult(url, root, workers, ops, seconds, logs, reads)
    result.problems = check_storm(result)
    return result


def check_storm(result: StormResult) -> list[str]:
    """Everything that went wrong: the storm passed when this is empty."""
    from featurestore import FeatureStore

    problems: list[str] = []
    for log in result.logs:
        problems += [f"writer {log['wid']}: {e}" for e in log["errors"]]
    for r in result.readers:
        problems += [f"reader: {v}" for v in r["violations"][:20]]
        problems += [f"reader: {e}" for e in r["errors"][:20]]
        if not r["snapshots"]:
            problems.append("reader: took no snapshot during the storm")
    store = FeatureStore(result.root, registry_url=result.url)
    try:
        features = store.registry.latest("feature")
        sets = store.registry.latest("feature_set")
        for log in result.logs:
            for k in log["groups"]:
                a, b, s = (f"g_{log['wid']}_{k}_{x}" for x in "abs")
                if a not in features or b not in features or s not in sets:
                    problems.append(f"lost write: group {a[:-2]} of writer {log['wid']}")
        expected_groups = sum(len(log["groups"]) for log in result.logs)
        found = {m.group(1, 2) for n in [*features, *sets] if (m := GROUP_RE.match(n))}
        if len(found) != expected_groups:
            problems.append(f"{len(found)} groups in the registry, {expected_groups} applied")
        # Every version a writer was told it created exists, with its tier, exactly once.
        claimed = [v for log in result.logs for v in log["versions"]]
        history = {r["version"]: r for r in store.registry.history("feature", "shared")} if claimed else {}
        numbers = Counter(v for v, _ in claimed)
        dupes = sorted(v for v, n in numbers.items() if n > 1)
        if dupes:
            problems.append(f"duplicate version numbers handed out: {dupes[:10]}")
        if sorted(history) != list(range(1, len(history) + 1)):
            problems.append(f"shared versions are not 1..n: {sorted(history)[:20]}...")
        if sorted(numbers) != sorted(history):
            problems.append(f"versions claimed {len(numbers)} vs registered {len(history)}")
        for version, tier in claimed:
            row = history.get(version)
            if row is None or row["tier"] != tier:
                problems.append(f"lost write: shared v{version} should have tier {tier}, "
                                f"registry has {row and row['tier']}")
        # Every recorded artifact is registered once and its file matches the checksum.
        registered = {a["id"]: a for a in store.registry.artifacts()}
        claimed_arts = [a for log in result.logs for a in log["artifacts"]]
        if len(registered) != len(claimed_arts):
            problems.append(f"{len(registered)} artifacts registered, {len(claimed_arts)} recorded")
        for art_id, path, checksum in claimed_arts:
            row = registered.get(art_id)
            if row is None or row["path"] != path or row["checksum"] != checksum:
                problems.append(f"lost write: artifact {art_id} ({path})")
        report = store.doctor()
        if not report["ok"]:
            problems += [f"doctor: {p}" for p in report["problems"][:20]]
            problems += [f"doctor: orphan {o}" for o in report["orphans"][:20]]
    finally:
        store.close()
    return problems


def _pg_schema_url(base: str) -> tuple[str, Any]:
    from sqlalchemy import create_engine, text

    name = f"fs_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()

    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options=-csearch_path%3D{name}", drop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--ops", type=int, default=200)
    parser.add_argument("--readers", type=int, default=1)
    parser.add_argument("--pg-url", default=os.environ.get(
        "FEATURESTORE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--no-pg", action="store_true", help="SQLite only.")
    parser.add_argument("--busy-timeout-ms", type=int, default=None,
                        help="Shorter lock waits, so contention shows up as retries.")
    args = parser.parse_args(argv)
    failed = False
    with tempfile.TemporaryDirectory(prefix="fs-storm-") as tmp:
        runs = [("sqlite", None)] + ([] if args.no_pg else [("postgresql", args.pg_url)])
        for label, base in runs:
            root = Path(tmp) / label
            drop = None
            if base is None:
                url = f"sqlite:///{root / 'registry.db'}"
            else:
                url, drop = _pg_schema_url(base)
            try:
                result = run_storm(root, url, workers=args.workers, ops=args.ops,
                                   readers=args.readers, busy_timeout_ms=args.busy_timeout_ms)
            finally:
                if drop:
                    drop()
            print(f"{label:>10}: {result.summary()}", flush=True)
            for p in result.problems[:20]:
                print(f"    problem: {p}")
            failed |= bool(result.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
