"""Online serving latency and throughput: the online stores in-process and over HTTP.

    python benchmarks/online.py --scale S|M [--data-dir DIR] [--seconds 5] [--feast]

Uses (and builds when missing) the store of ``benchmarks/pit.py --scale X``, single-view case:
10 float features of one view over N feature rows (S: 1M rows / 1k entities, M: 10M / 10k).
For each online store (embedded SQLite, and Redis when one answers at 127.0.0.1:6379):

1. publish the view (newest row per entity; timed);
2. in-process ``FeatureStore.get_online_features`` for 1 random key and for 100 random keys,
   all 10 features, one request time: p50 and p99 over many calls;
3. HTTP: ``featurestore serve`` as a subprocess, a keep-alive asyncio client sending 1-key
   requests from 1, 8 and 32 concurrent connections for ``--seconds`` each: p50, p99 and
   requests per second;
4. every value served (every in-process answer, and every 25th HTTP answer) is compared,
   row by row and value by value, with ``get_historical_features`` at the same request time;
   a 100-key answer must come back in the order of its keys; any difference exits non-zero.

The stores take turns (``--rounds``, default 4: SQLite, Redis, Redis, SQLite, ...) for the
in-process calls and for each HTTP concurrency level, both servers up at once, so a change in
the load of the shared machine falls on both alike.

The artifact fallback (a request time before the kept rows, as in a replay) is timed once for
reference. Load averages are printed at the start and the end: the machine is shared. Last line:

    RESULT online scale=M inproc_p50_ms=.. inproc_p99_ms=.. http_p50_ms=.. http_p99_ms=.. http_rps=..

(SQLite store; in-process 1-key; HTTP 1-key with 1 client for p50/p99; rps with 8 clients).
``--feast`` runs the same data through Feast's SQLite online store and feature server, in the
virtual environment ``--feast-venv`` (default ``$TMPDIR/feast-venv``, created with
``pip install feast`` when missing), and prints its figures next to ours.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import pit

from featurestore import FeatureStore
from featurestore.online import publish

FEATURES = [f"f{i}" for i in range(10)]
KEY = "entity_id"
TIER = "historical"


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return f"p50 {pct(values, 50):7.3f} ms  p99 {pct(values, 99):7.3f} ms  (n={len(values)})"


# ------------------------------------------------------------------------ correctness
def check_against_historical(store: FeatureStore, frames: list[pl.DataFrame], moment: dt.datetime,
                             label: str) -> int:
    """Compare every served row, value by value, with the join engine at the same cutoff; exit
    non-zero on any difference. Returns the number of distinct keys checked."""
    served = pl.concat(frames).select(KEY, *FEATURES)
    query = served.select(pl.col(KEY).unique().sort()).with_columns(
        pl.lit(moment).cast(pl.Datetime("us", "UTC")).alias("event_timestamp"))
    expected = store.get_historical_features(query, FEATURES, tier=TIER).drop("event_timestamp")
    joined = served.join(expected, on=KEY, how="left", suffix="_hist")
    # Null equals null, NaN equals NaN: the same stored value either way.
    same = pl.all_horizontal(
        pl.col(f).eq_missing(pl.col(f"{f}_hist")) | (pl.col(f).is_nan() & pl.col(f"{f}_hist").is_nan())
        for f in FEATURES)
    bad = joined.filter(~same.fill_null(False))
    if bad.height:
        raise SystemExit(f"{label}: {bad.height} of {served.height} served rows differ from "
                         f"get_historical_features:\n{bad.head(5)}")
    return query.height


# ------------------------------------------------------------------------ in-process
def warm_up(store: FeatureStore, keys: list[int], moment: dt.datetime) -> None:
    rng = random.Random(7)
    for _ in range(200):  # caches, connections, code paths
        store.get_online_features({KEY: [rng.choice(keys)]}, FEATURES, tier=TIER, as_of=moment)


def inprocess(store: FeatureStore, keys: list[int], moment: dt.datetime, n_single: int,
              n_batch: int, seed: int) -> tuple[list[float], list[float], list[pl.DataFrame]]:
    """One round of timed calls: ``n_single`` 1-key and ``n_batch`` 100-key lookups."""
    rng = random.Random(seed)
    frames: list[pl.DataFrame] = []
    call = store.get_online_features
    single = []
    for _ in range(n_single):
        k = rng.choice(keys)
        t = time.perf_counter()
        out = call({KEY: [k]}, FEATURES, tier=TIER, as_of=moment)
        single.append((time.perf_counter() - t) * 1000)
        frames.append(out)
    batch = []
    for _ in range(n_batch):
        ks = rng.sample(keys, 100)
        t = time.perf_counter()
        out = call({KEY: ks}, FEATURES, tier=TIER, as_of=moment)
        batch.append((time.perf_counter() - t) * 1000)
        if out.select(KEY).to_series().to_list() != ks:
            raise SystemExit("a 100-key lookup did not answer in the order of its keys")
        frames.append(out)
    return single, batch, frames


def rounds_order(labels: list[str], rounds: int) -> list[tuple[int, str]]:
    """(round, store) in an interleaved order, reversed every other round (A B, B A, ...), so
    a drift in machine load falls on every store alike."""
    out = []
    for r in range(rounds):
        order = labels if r % 2 == 0 else labels[::-1]
        out += [(r, label) for label in order]
    return out


# ------------------------------------------------------------------------ HTTP
class ServerProcess:
    def __init__(self, argv: list[str], ready: str, env: dict[str, str] | None = None,
                 url: str | None = None, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, cwd=cwd, start_new_session=True)
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in self.proc.stdout],  # type: ignore[union-attr]
                         daemon=True).start()
        deadline = time.monotonic() + 300
        seen = []
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                raise SystemExit("server did not start:\n" + "".join(seen)) from None
            seen.append(line)
            if ready in line:
                break
        self.url = url or line.split()[2]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def _client(host: str, port: int, bodies: list[bytes], deadline: float,
                  latencies: list[float], answers: list[bytes], keep_every: int,
                  reconnects: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    i = 0
    try:
        while time.perf_counter() < deadline:
            body = bodies[i % len(bodies)]
            request = (b"POST /get-online-features HTTP/1.1\r\nHost: %s\r\n"
                       b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                       % (host.encode(), len(body))) + body
            t = time.perf_counter()
            try:
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                # The server closed this keep-alive connection (a worker recycled): reconnect.
                writer.close()
                reconnects[0] += 1
                reader, writer = await asyncio.open_connection(host, port)
                continue
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            payload = await reader.readexactly(length)
            latencies.append((time.perf_counter() - t) * 1000)
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"HTTP error: {head[:40]!r} {payload[:200]!r}")
            if i % keep_every == 0:
                answers.append(body + b"\n" + payload)
            i += 1
    finally:
        writer.close()


def http_run(url: str, bodies: list[bytes], clients: int, seconds: float,
             keep_every: int) -> tuple[list[float], float, list[bytes]]:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    latencies: list[float] = []
    answers: list[bytes] = []
    reconnects = [0]

    async def main() -> float:
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*[_client(host, int(port), bodies[c::clients] or bodies, deadline,
                                       latencies, answers, keep_every, reconnects)
                               for c in range(clients)])
        return time.perf_counter() - start

    try:
        import uvloop

        elapsed = uvloop.run(main())
    except ImportError:
        elapsed = asyncio.run(main())
    if reconnects[0]:
        print(f"  ({reconnects[0]} keep-alive connections closed by the server and reopened)")
    return latencies, len(latencies) / elapsed, answers


def answers_to_frames(answers: list[bytes], names: list[str]) -> list[pl.DataFrame]:
    frames = []
    for item in answers:
        _, payload = item.split(b"\n", 1)
        body = json.loads(payload)
        columns = {KEY: body["results"][0]["values"]}
        # By the names the response gives: Feast does not keep the requested order.
        returned = [n.rpartition(":")[2].rpartition("__")[2]
                    for n in body["metadata"]["feature_names"][1:]]
        for name, result in zip(returned, body["results"][1:], strict=True):
            columns[name] = [None if isinstance(v, str) else v for v in result["values"]]
        overrides = {KEY: pl.Int64, **dict.fromkeys(names, pl.Float64)}
        frames.append(pl.DataFrame(columns, schema_overrides=overrides).select(KEY, *names))
    return frames


def http_suite(url: str, keys: list[int], moment: dt.datetime, seconds: float, *,
               body_of: Any) -> dict[int, tuple[list[float], float, list[bytes]]]:
    rng = random.Random(11)
    bodies = [body_of(rng.choice(keys)) for _ in range(5000)]
    http_run(url, bodies, 8, min(2.0, seconds), 10**9)  # warm-up
    return {c: http_run(url, bodies, c, seconds, 25) for c in (1, 8, 32)}


def http_interleaved(urls: dict[str, str], keys: list[int], moment: dt.datetime, seconds: float,
                     rounds: int) -> dict[str, dict[int, tuple[list[float], float, list[bytes]]]]:
    """``http_suite`` for several servers at once, in interleaved rounds of ``seconds / rounds``
    per server and concurrency level; req/s is requests over the summed run time."""
    rng = random.Random(11)
    body_of = ours_body(moment)
    bodies = [body_of(rng.choice(keys)) for _ in range(5000)]
    for url in urls.values():
        http_run(url, bodies, 8, min(2.0, seconds), 10**9)  # warm-up
    out: dict[str, dict[int, tuple[list[float], float, list[bytes]]]] = {
        label: {} for label in urls}
    for clients in (1, 8, 32):
        got: dict[str, tuple[list[float], float, list[bytes]]] = {
            label: ([], 0.0, []) for label in urls}
        for _, label in rounds_order(list(urls), rounds):
            lat, rps, ans = http_run(urls[label], bodies, clients, seconds / rounds, 25)
            total_lat, elapsed, total_ans = got[label]
            got[label] = (total_lat + lat, elapsed + len(lat) / rps, total_ans + ans)
        for label, (lat, elapsed, ans) in got.items():
            out[label][clients] = (lat, len(lat) / elapsed, ans)
    return out


def ours_body(moment: dt.datetime) -> Any:
    stamp = moment.isoformat()

    def body(key: int) -> bytes:
        return json.dumps({"features": FEATURES, "entities": {KEY: [key]}, "tier": TIER,
                           "as_of": stamp}).encode()
    return body


# ------------------------------------------------------------------------ Feast
FEAST_REPO = """\
from datetime import timedelta
from feast import Entity, FeatureView, Field, FileSource
from feast.types import Float64
entity = Entity(name="entity", join_keys=["entity_id"])
source = FileSource(path="{path}", timestamp_field="available_at")
raw0 = FeatureView(name="raw0", entities=[entity], ttl=timedelta(days=3650), source=source,
                   schema=[{fields}])
"""
FEAST_STORE = """\
project: bench
registry: {root}/registry.db
provider: local
online_store:
  type: sqlite
  path: {root}/online.db
offline_store:
  type: file
entity_key_serialization_version: 3
"""
FEAST_INPROC = """\
import json, random, sys, time
from feast import FeatureStore
store = FeatureStore(repo_path=sys.argv[1])
keys = json.loads(sys.argv[2])
refs = [f"raw0:f{i}" for i in range(10)]
rng = random.Random(7)
for _ in range(200):
    store.get_online_features(refs, [{"entity_id": rng.choice(keys)}]).to_dict()
single, batch = [], []
for _ in range(int(sys.argv[3])):
    k = rng.choice(keys); t = time.perf_counter()
    store.get_online_features(refs, [{"entity_id": k}]).to_dict()
    single.append((time.perf_counter() - t) * 1000)
for _ in range(int(sys.argv[4])):
    ks = rng.sample(keys, 100); t = time.perf_counter()
    store.get_online_features(refs, [{"entity_id": k} for k in ks]).to_dict()
    batch.append((time.perf_counter() - t) * 1000)
print(json.dumps({"single": single, "batch": batch}))
"""


def feast_suite(args: argparse.Namespace, raw: Path, keys: list[int], n_single: int,
                n_batch: int, ours: FeatureStore) -> None:
    venv = Path(args.feast_venv)
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"[feast] creating {venv} and installing feast (pip) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "feast"], check=True)
    version = subprocess.run([str(python), "-c", "import feast; print(feast.__version__)"],
                             capture_output=True, text=True)
    if version.returncode != 0:
        print(f"[feast] feast does not import in {venv}: {version.stderr.strip()[-300:]}")
        return
    print(f"[feast] feast {version.stdout.strip()} in {venv}", flush=True)
    root = Path(args.data_dir) / f"feast_{args.scale}"
    feast = venv / "bin" / "feast"
    done = root / "materialized.ok"  # the data never changes: materialize once
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        fields = ", ".join(f'Field(name="f{i}", dtype=Float64)' for i in range(10))
        (root / "repo.py").write_text(FEAST_REPO.format(path=raw, fields=fields))
        (root / "feature_store.yaml").write_text(FEAST_STORE.format(root=root))
        t = time.perf_counter()
        subprocess.run([str(feast), "apply"], cwd=root, check=True, capture_output=True)
        end = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
        subprocess.run([str(feast), "materialize", "2021-01-01T00:00:00", end], cwd=root,
                       check=True, capture_output=True)
        print(f"[feast] apply + materialize into its SQLite online store: "
              f"{time.perf_counter() - t:.1f} s", flush=True)
        done.write_text("ok")
    out = subprocess.run([str(python), "-c", FEAST_INPROC, str(root), json.dumps(keys),
                          str(n_single), str(n_batch)], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"[feast] in-process   1 key : {summary(res['single'])}")
    print(f"[feast] in-process 100 keys: {summary(res['batch'])}")
    port = free_port()
    server = ServerProcess([str(feast), "serve", "--host", "127.0.0.1", "--port", str(port),
                            "--no-access-log"], ready="Application startup complete", url=f"http://127.0.0.1:{port}",
                           env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=root)
    try:
        def body(key: int) -> bytes:
            return json.dumps({"features": [f"raw0:{f}" for f in FEATURES],
                               "entities": {KEY: [key]}}).encode()
        moment = dt.datetime.now(dt.UTC)
        runs = http_suite(server.url, keys, moment, args.seconds, body_of=body)
        for clients, (lat, rps, _) in runs.items():
            print(f"[feast] HTTP {clients:>2} clients: {summary(lat)}  {rps:8.0f} req/s")
    finally:
        server.stop()
    answers = [a for _, _, ans in runs.values() for a in ans]
    try:
        checked = check_against_historical(ours, answers_to_frames(answers, FEATURES), moment,
                                           "feast HTTP")
        print(f"[feast] {len(answers):,} sampled answers ({checked:,} distinct keys) equal ours "
              "(every available_at here is in the past and unique per entity)")
    except SystemExit as exc:
        print(f"[feast] answers differ from get_historical_features: {str(exc)[:300]}")
    print("[feast] note: Feast serves each key's row with the latest event timestamp "
          "(here available_at) and does not apply a tier or request-time rule.")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------ main
def redis_url() -> str | None:
    try:
        import redis

        client = redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=1)
        client.ping()
        client.close()
    except Exception:
        return None
    return f"redis://127.0.0.1:6379/0?prefix=fsbench-{uuid.uuid4().hex[:8]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="M", choices=["S", "M"])
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "featurestore-pit-bench"))
    ap.add_argument("--seconds", type=float, default=5.0, help="Per HTTP concurrency level.")
    ap.add_argument("--single", type=int, default=3000, help="In-process 1-key calls.")
    ap.add_argument("--batch", type=int, default=300, help="In-process 100-key calls.")
    ap.add_argument("--rounds", type=int, default=4,
                    help="Interleaved rounds: the online stores take turns this many times.")
    ap.add_argument("--feast", action="store_true", help="Also run Feast on the same data.")
    ap.add_argument("--feast-venv", default=os.path.join(tempfile.gettempdir(), "feast-venv"))
    ap.add_argument("--no-redis", action="store_true")
    args = ap.parse_args()
    print(f"start: {load()}", flush=True)
    paths = pit.Paths(Path(args.data_dir), args.scale)
    paths.root.mkdir(parents=True, exist_ok=True)
    pit.generate(paths)
    root = pit.store_root(paths, "single")
    if not (root / "registry.db").exists():
        print("building the store (apply, ingest, materialize) ...", flush=True)
        pit.materialize(paths, "single")
    moment = dt.datetime.now(dt.UTC).replace(microsecond=0)
    stores = [("sqlite", "sqlite")]
    redis = None if args.no_redis else redis_url()
    if redis:
        stores.append(("redis", redis))
    result: dict[str, float] = {}
    rounds = max(1, args.rounds)
    servers: dict[str, ServerProcess] = {}
    try:
        opened: dict[str, FeatureStore] = {}
        keys: list[int] = []
        for label, url in stores:
            store = opened[label] = FeatureStore(root, online_store=url)
            t = time.perf_counter()
            [res] = publish(store, ["raw0"], force=True)
            print(f"[{label}] publish: {res.entities:,} entities, {res.rows:,} rows kept, "
                  f"{time.perf_counter() - t:.2f} s", flush=True)
            art = store.registry.latest_artifact("view", "raw0")
            assert art is not None
            keys = (pl.scan_parquet(store.root / art["path"]).select(pl.col(KEY).unique())
                    .collect().to_series().sort().to_list())
            warm_up(store, keys, moment)
        # In-process: the stores take turns, round by round.
        timed: dict[str, tuple[list[float], list[float], list[pl.DataFrame]]] = {
            label: ([], [], []) for label in opened}
        for r, label in rounds_order(list(opened), rounds):
            single, batch, frames = inprocess(opened[label], keys, moment, args.single // rounds,
                                              args.batch // rounds, seed=7 + r)
            timed[label][0].extend(single)
            timed[label][1].extend(batch)
            timed[label][2].extend(frames)
        for label, store in opened.items():
            single, batch, frames = timed[label]
            checked = check_against_historical(store, frames, moment, f"{label} in-process")
            print(f"[{label}] in-process   1 key : {summary(single)}")
            print(f"[{label}] in-process 100 keys: {summary(batch)}")
            print(f"[{label}] {len(frames):,} answers ({checked:,} distinct keys), every value "
                  "= get_historical_features", flush=True)
            if label == "sqlite":
                result["inproc_p50_ms"], result["inproc_p99_ms"] = pct(single, 50), pct(single, 99)
                replay = dt.datetime(2023, 6, 1, tzinfo=dt.UTC)
                fallback = []
                for k in keys[:20]:
                    t = time.perf_counter()
                    store.get_online_features({KEY: [k]}, FEATURES, tier=TIER, as_of=replay)
                    fallback.append((time.perf_counter() - t) * 1000)
                print(f"[{label}] replay at {replay.date()} (kept rows too new: artifact path) "
                      f"1 key: {summary(fallback)}")
            store.close()
        # HTTP: one server per store, all up at once, taking turns the same way.
        for label, url in stores:
            servers[label] = ServerProcess(
                [sys.executable, "-m", "featurestore", "-s", str(root), "serve", "--port", "0",
                 "--online-store", url], ready="featurestore serving")
        runs_by = http_interleaved({label: srv.url for label, srv in servers.items()}, keys,
                                   moment, args.seconds, rounds)
        for srv in servers.values():
            srv.stop()
        for label, url in stores:
            runs = runs_by[label]
            answers = [a for _, _, ans in runs.values() for a in ans]
            store = FeatureStore(root, online_store=url)
            checked = check_against_historical(store, answers_to_frames(answers, FEATURES), moment,
                                               f"{label} HTTP")
            store.close()
            for clients, (lat, rps, _) in runs.items():
                print(f"[{label}] HTTP {clients:>2} clients: {summary(lat)}  {rps:8.0f} req/s")
            print(f"[{label}] {len(answers):,} sampled HTTP answers ({checked:,} distinct keys), "
                  "every value = get_historical_features", flush=True)
            if label == "sqlite":
                result["http_p50_ms"] = pct(runs[1][0], 50)
                result["http_p99_ms"] = pct(runs[1][0], 99)
                result["http_rps"] = runs[8][1]
        if args.feast:
            with FeatureStore(root) as ours:
                feast_suite(args, paths.raw(), keys, args.single, args.batch, ours)
    finally:
        for srv in servers.values():
            srv.stop()
        if redis:
            from featurestore.online.redis_backend import split_url

            base, prefix = split_url(redis, "")
            import redis as redis_client

            client = redis_client.Redis.from_url(base)
            for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                client.delete(key)
            client.close()
    print(f"end: {load()}")
    print(f"RESULT online scale={args.scale} inproc_p50_ms={result['inproc_p50_ms']:.3f} "
          f"inproc_p99_ms={result['inproc_p99_ms']:.3f} http_p50_ms={result['http_p50_ms']:.3f} "
          f"http_p99_ms={result['http_p99_ms']:.3f} http_rps={result['http_rps']:.0f}")


if __name__ == "__main__":
    main()
