"""Point-in-time join benchmark: featurestore vs a hand-written Polars join_asof vs DuckDB ASOF.

    python benchmarks/pit.py --scale S|M|L|XL [--data-dir DIR] [--repeat N] [--skip-multi]
                                [--skip-prepare] [--reuse-store] [--peers a,b] [--cold-checksums] [--engine spark]
                                [--layout copy|reference]

``--engine spark`` runs ``pit_spark.py`` instead: the store's polars engine against its spark
engine on the same store and query (see that module).

Scales (feature rows / query rows / entities): S 1M/100k/1k, M 10M/1M/10k, L 50M/5M/50k,
XL 200M/20M/200k (about 16 GB on disk, written chunk by chunk).
Data is generated deterministically (fixed seeds) and cached in ``--data-dir``: a feature file
with 10 float features in random row order (``available_at`` unique per entity, so no
engine-specific tie rules are involved; ``f0`` has ~1% nulls), and a shuffled query frame
(``query_id``, ``entity_id``, ``event_timestamp``) where 1% of entities have no data, 2% of
cutoffs fall outside the data's time range and 10% of cutoffs equal an existing
``available_at`` exactly, so the strict boundary rule matters.

Each contestant runs as its own process; the parent measures wall time and peak RSS with
``os.wait4``. All use the strict rule ``available_at < cutoff``:

(a) featurestore: ``FeatureStore.get_historical_features`` through the public API, over the
    store's own artifacts. Their one-time cost (apply, ingest with validation and UTC
    conversion, materialize to retrieval-sorted Parquet) is timed and reported separately.
    Every read checks the artifact's sha256 first; a verified checksum is remembered per user
    (see ``featurestore/checksums.py``), except within 2 s of the file's last change. The
    first read's check (a full hash) is timed once after the setup and reported on its own,
    so the rounds measure every later read; ``--cold-checksums`` instead gives every round an
    empty cache, so each pays the full hash.
(b) polars: ``join_asof(by=entity, allow_exact_matches=False)`` on the raw file (which it has to
    sort by ``available_at``), default engine.
(c) duckdb: ``ASOF LEFT JOIN ... ON q.entity_id = f.entity_id AND q.event_timestamp >
    f.available_at`` on the raw file, ordered back to query order.

(d) polars_art / (e) duckdb_art: (b) and (c) on the store's own artifacts (already sorted by
    entity and ``available_at``; the files come from ``featurestore.artifacts.artifact_files``).

The store's setup runs as its own process (wall, peak RSS), and so does a hand-written Polars
"prepare" (scan, compute ``available_at``, sort by key and time, ``sink_parquet``): what a user
would otherwise write once instead of the store's setup. At XL the raw-file peers (b, c) need
more memory than the machine has and run only when named in ``--peers``.

Each writes its result (Arrow IPC, uncompressed); the parent checks they are all identical and
exits non-zero if not. A multi-view case (5 views x 10 features, each view file N/5 rows, one
call) is timed the same way. Reports the median wall time and the peak RSS (max) over
``--repeat`` interleaved rounds, and ends with exactly one line

    RESULT scale=M fs_vs_polars_wall=<x> fs_vs_duckdb_wall=<x> fs_vs_polars_art_wall=<x>
           fs_vs_duckdb_art_wall=<x> fs_mem_gib=<x> setup_vs_prepare_wall=<x>
           setup_peak_gib=<x> e2e_vs_duckdb_wall=<x>

(one line; ratios featurestore / peer for the single-view case, below 1 means featurestore is
better; ``e2e`` is setup plus one retrieval against DuckDB on the raw file; ``nan`` for a peer
that did not run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SCALES = {
    "S": (1_000_000, 100_000, 1_000),
    "M": (10_000_000, 1_000_000, 10_000),
    "L": (50_000_000, 5_000_000, 50_000),
    "XL": (200_000_000, 20_000_000, 200_000),
}
# Contestants reading the raw files hold all of them in memory: at XL that is more than this
# machine has, so there they run only when asked for (--peers).
BIG_SCALES = {"XL"}
N_FEATURES = 10
N_VIEWS = 5
SEED = 20240601
CHUNK = 5_000_000
T0_US = 1_640_995_200 * 10**6  # 2022-01-01 UTC
SPAN_US = 2 * 365 * 86_400 * 10**6  # two years
GEN_VERSION = 1
KEY = "entity_id"
CUTOFF = "event_timestamp"
FEATURES = [f"f{i}" for i in range(N_FEATURES)]


@dataclass(frozen=True)
class Paths:
    root: Path
    scale: str

    def raw(self, view: int | None = None) -> Path:
        return self.root / (
            f"features_{self.scale}.parquet"
            if view is None
            else f"features_{self.scale}_v{view}.parquet"
        )

    def artifact(self, view: int | None = None) -> Path:
        return self.root / (
            f"artifact_{self.scale}.parquet"
            if view is None
            else f"artifact_{self.scale}_v{view}.parquet"
        )

    @property
    def query(self) -> Path:
        return self.root / f"query_{self.scale}.parquet"

    def raws(self, case: str) -> list[Path]:
        return [self.raw()] if case == "single" else [self.raw(v) for v in range(N_VIEWS)]

    def artifacts(self, case: str) -> list[Path]:
        return [self.artifact()] if case == "single" else [self.artifact(v) for v in range(N_VIEWS)]


def output_names(case: str) -> list[list[str]]:
    """Output column names per view: f0..f9 (single) or v{j}_f{i} (multi)."""
    if case == "single":
        return [FEATURES]
    return [[f"v{j}_{c}" for c in FEATURES] for j in range(N_VIEWS)]


# --------------------------------------------------------------------------------------------
# data generation (deterministic, chunked so L fits in memory)


def _write_features(path: Path, n_rows: int, n_entities: int, stream: int, pick: int):
    """Write a random-order feature file; return `pick` (entity, available_at) samples."""
    import numpy as np
    import polars as pl
    import pyarrow.parquet as pq

    n_chunks = max(1, -(-n_rows // CHUNK))
    sub_span = SPAN_US // n_chunks
    writer = None
    picks_e, picks_t = [], []
    tmp = path.with_suffix(".tmp")
    for c in range(n_chunks):
        rng = np.random.default_rng([SEED, stream, c])
        size = n_rows // n_chunks + (1 if c < n_rows % n_chunks else 0)
        # Unique (entity, available_at) in this chunk; available_at = c (mod n_chunks) makes
        # them unique across chunks too.
        codes = np.unique(rng.integers(0, n_entities * sub_span, int(size * 1.01) + 16))
        codes = rng.permutation(codes)[:size]
        ent = codes // sub_span
        av = T0_US + (codes % sub_span) * n_chunks + c
        lag = rng.integers(0, 3_600 * 10**6, size)
        cols = {KEY: ent, CUTOFF: av - lag, "available_at": av}
        for i in range(N_FEATURES):
            cols[f"f{i}"] = rng.standard_normal(size)
        df = pl.DataFrame(cols).with_columns(
            pl.col(CUTOFF, "available_at").cast(pl.Datetime("us", "UTC")),
            pl.when(pl.col("f0") > 2.33).then(None).otherwise(pl.col("f0")).alias("f0"),
        )
        table = df.to_arrow()
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
        writer.write_table(table, row_group_size=1_000_000)
        k = pick // n_chunks + (1 if c < pick % n_chunks else 0)
        idx = rng.integers(0, size, k)
        picks_e.append(ent[idx])
        picks_t.append(av[idx])
        del df, table, cols
    writer.close()
    tmp.replace(path)
    return np.concatenate(picks_e), np.concatenate(picks_t)


def generate(paths: Paths, multi: bool = True) -> None:
    """Write the scale's data unless it is cached; the 5-view files only when ``multi``.

    Feature files are written chunk by chunk (``CHUNK`` rows at a time), so even XL never holds
    its feature rows in memory; the query frame (20M rows at XL, about 0.5 GB) is built whole.
    """
    import numpy as np
    import polars as pl

    n_rows, n_query, n_entities = SCALES[paths.scale]
    meta = paths.root / f"meta_{paths.scale}.json"
    want = {"scale": paths.scale, "seed": SEED, "version": GEN_VERSION}
    cached = meta.exists() and json.loads(meta.read_text()) == want
    t = time.perf_counter()
    if multi and cached and paths.query.exists():
        for v in range(N_VIEWS):
            if not paths.raw(v).exists():
                _write_features(paths.raw(v), n_rows // N_VIEWS, n_entities, 1 + v, 0)
    if cached and paths.query.exists() and paths.raw().exists():
        return
    n_exact = n_query // 10
    pick_e, pick_t = _write_features(paths.raw(), n_rows, n_entities, 0, n_exact)
    for v in range(N_VIEWS) if multi else ():
        _write_features(paths.raw(v), n_rows // N_VIEWS, n_entities, 1 + v, 0)
    rng = np.random.default_rng([SEED, 99])
    ent = rng.integers(0, int(n_entities * 1.01), n_query)  # ~1% entities without data
    margin = SPAN_US // 50
    cut = T0_US + rng.integers(-margin, SPAN_US + margin, n_query)
    ent[:n_exact], cut[:n_exact] = pick_e, pick_t  # exact boundary hits
    perm = rng.permutation(n_query)
    query = pl.DataFrame(
        {"query_id": np.arange(n_query), KEY: ent[perm], CUTOFF: cut[perm]}
    ).with_columns(pl.col(CUTOFF).cast(pl.Datetime("us", "UTC")))
    query.write_parquet(paths.query)
    meta.write_text(json.dumps(want))
    print(f"generated scale {paths.scale} data in {time.perf_counter() - t:.1f} s", flush=True)


# --------------------------------------------------------------------------------------------
# contestants (each runs in its own process via --child)


def store_root(paths: Paths, case: str) -> Path:
    return paths.root / f"store_{paths.scale}_{case}"


def materialize(paths: Paths, case: str) -> None:
    """One-time cost, through the store: apply definitions, ingest the raw files (validation,
    UTC, snapshot) and materialize each source's columns as a retrieval-sorted artifact."""
    import shutil

    from featurestore import Entity, Feature, FeatureStore, Source
    from featurestore.materialize import materialize as run

    root = store_root(paths, case)
    shutil.rmtree(root, ignore_errors=True)
    defs: list[object] = [Entity("entity", (KEY,))]
    for j, (raw, names) in enumerate(zip(paths.raws(case), output_names(case), strict=True)):
        defs.append(Source(f"raw{j}", str(raw), "entity", CUTOFF, available_time="available_at",
                           tier="historical"))
        defs += [Feature(n, source=f"raw{j}", column=c) for n, c in zip(names, FEATURES, strict=True)]
    with FeatureStore(root) as store:
        store.apply(defs)
        run(store)


def run_featurestore(paths: Paths, case: str):
    """(a) featurestore retrieval through the public API, over the store's own artifacts."""
    import polars as pl

    from featurestore import FeatureStore

    query = pl.read_parquet(paths.query)
    names = [n for view in output_names(case) for n in view]
    with FeatureStore(store_root(paths, case)) as store:
        return store.get_historical_features(query, names, tier="historical", cutoff=CUTOFF)


def run_polars(paths: Paths, case: str):
    """(b) hand-written Polars join_asof on the raw, random-order files."""
    import polars as pl

    lf = pl.scan_parquet(paths.query).with_row_index("__row").sort(CUTOFF)
    for raw, names in zip(paths.raws(case), output_names(case), strict=True):
        feats = (
            pl.scan_parquet(raw)
            .select(
                KEY,
                "available_at",
                *[pl.col(c).alias(n) for c, n in zip(FEATURES, names, strict=True)],
            )
            .sort("available_at")
        )
        lf = lf.join_asof(
            feats,
            left_on=CUTOFF,
            right_on="available_at",
            by=KEY,
            allow_exact_matches=False,
            check_sortedness=False,
        ).drop("available_at")
    return lf.sort("__row").drop("__row").collect()


def run_duckdb(paths: Paths, case: str):
    """(c) DuckDB ASOF JOIN (strict: ``>``) on the raw files, back in query order."""
    return _duckdb_query(paths, [f"'{raw}'" for raw in paths.raws(case)], case)


def artifacts_json(paths: Paths, case: str) -> Path:
    return paths.root / f"artifacts_{paths.scale}_{case}.json"


def record_artifacts(paths: Paths, case: str) -> list[list[str]]:
    """The files of each view's artifact (view j reads source raw{j}), for the peers that read
    the store's own sorted data; written next to the data for their processes."""
    from featurestore import FeatureStore
    from featurestore.artifacts import artifact_files

    with FeatureStore.open(store_root(paths, case), read_only=True) as store:
        views = store.registry.latest("view")
        files = []
        for j in range(len(paths.raws(case))):
            [name] = [n for n, v in views.items() if v["source"] == f"raw{j}"]
            row = store.registry.latest_artifact("view", name)
            files.append([str(f) for f in artifact_files(store.root, row)])
    artifacts_json(paths, case).write_text(json.dumps(files))
    return files


def _artifact_files(paths: Paths, case: str) -> list[list[str]]:
    return json.loads(artifacts_json(paths, case).read_text())


def run_polars_art(paths: Paths, case: str):
    """(d) Polars join_asof on the store's own artifacts: already sorted by (entity,
    available_at), so no sort of the feature side; the query is sorted as in (b)."""
    import polars as pl

    lf = pl.scan_parquet(paths.query).with_row_index("__row").sort(CUTOFF)
    for files, names in zip(_artifact_files(paths, case), output_names(case), strict=True):
        feats = pl.scan_parquet(files).select(
            KEY, "available_at", *[pl.col(c).alias(n) for c, n in zip(FEATURES, names, strict=True)]
        )
        lf = lf.join_asof(feats, left_on=CUTOFF, right_on="available_at", by=KEY,
                          allow_exact_matches=False, check_sortedness=False).drop("available_at")
    return lf.sort("__row").drop("__row").collect()


def _duckdb_asof(sources: list[str], case: str):
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    joins, select = [], []
    for j, (src, names) in enumerate(zip(sources, output_names(case), strict=True)):
        joins.append(
            f"ASOF LEFT JOIN read_parquet({src}) f{j} "
            f"ON q.{KEY} = f{j}.{KEY} AND q.{CUTOFF} > f{j}.available_at"
        )
        select += [f'f{j}.{c} AS "{n}"' for c, n in zip(FEATURES, names, strict=True)]
    return con, joins, select


def run_duckdb_art(paths: Paths, case: str):
    """(e) DuckDB ASOF JOIN on the store's own artifacts (the same query as (c))."""
    sources = [repr(files) for files in _artifact_files(paths, case)]
    return _duckdb_query(paths, sources, case)


def _duckdb_query(paths: Paths, sources: list[str], case: str):
    con, joins, select = _duckdb_asof(sources, case)
    sql = (
        f"SELECT q.query_id, q.{KEY}, q.{CUTOFF}, {', '.join(select)} "
        f"FROM read_parquet('{paths.query}', file_row_number = true) q {' '.join(joins)} "
        "ORDER BY q.file_row_number"
    )
    return con.sql(sql).to_arrow_table()


def prepared(paths: Paths, case: str, j: int) -> Path:
    return paths.root / f"prepared_{paths.scale}_{case}_{j}.parquet"


# The store's default codec (setting ``compression``): the peer writes the same kind of file.
PREPARE_CODEC = "lz4"


def run_prepare(paths: Paths, case: str) -> None:
    """The hand-written counterpart of the store's setup: scan each raw file, compute
    ``available_at`` (UTC), sort by key and time, write Parquet (Polars' streaming sink)."""
    import polars as pl

    for j, raw in enumerate(paths.raws(case)):
        (pl.scan_parquet(raw)
         .with_columns(pl.col("available_at").dt.convert_time_zone("UTC"))
         .sort([KEY, "available_at", CUTOFF])
         .sink_parquet(prepared(paths, case, j), compression=PREPARE_CODEC))


RUNNERS = {"featurestore": run_featurestore, "polars": run_polars, "duckdb": run_duckdb,
           "polars_art": run_polars_art, "duckdb_art": run_duckdb_art}
RAW_PEERS = ("polars", "duckdb")


def compile_bytecode() -> None:
    """Compile the store's modules (and its default plugins) to bytecode, as ``pip install``
    does for an installed package. An editable install under ``PYTHONDONTWRITEBYTECODE`` (set
    on some machines) would otherwise compile them again in every contestant process, while
    Polars and DuckDB, installed normally, never pay for that."""
    import importlib.util

    for name in ("featurestore", "featurestore_plugins"):
        spec = importlib.util.find_spec(name)
        for where in (spec.submodule_search_locations or []) if spec else []:
            subprocess.run([sys.executable, "-m", "compileall", "-q", where], check=True,
                           stdout=subprocess.DEVNULL)


def first_read(paths: Paths, case: str) -> float:
    """What the first read of the new artifacts pays once: their checksums, hashed and
    remembered. Waits out the racy window first (a file changed in the last 2 s is never
    remembered, so a read right after materializing would hash again next time)."""
    from featurestore import FeatureStore
    from featurestore.artifacts import verify_artifact
    from featurestore.checksums import RACY_SECONDS

    with FeatureStore.open(store_root(paths, case), read_only=True) as store:
        rows = [a for a in store.list("artifact") if a["kind"] == "view"]
        newest = max(os.stat(store.root / a["path"]).st_ctime for a in rows)
        time.sleep(max(0.0, newest + RACY_SECONDS + 0.1 - time.time()))
        t = time.perf_counter()
        for row in rows:
            verify_artifact(store.root, row)
        return time.perf_counter() - t


def child_main(args: argparse.Namespace) -> None:
    paths = Paths(Path(args.data_dir), args.scale)
    if args.child == "materialize":
        materialize(paths, args.case)
        return
    if args.child == "first-read":
        print(json.dumps({"join_s": first_read(paths, args.case)}), flush=True)
        return
    if args.child == "prepare":
        run_prepare(paths, args.case)
        return
    t = time.perf_counter()
    result = RUNNERS[args.child](paths, args.case)
    elapsed = time.perf_counter() - t
    if args.child in ("duckdb", "duckdb_art"):
        import pyarrow.feather as feather

        feather.write_feather(result, args.out, compression="uncompressed")
    else:
        result.write_ipc(args.out, compression="uncompressed")
    print(json.dumps({"join_s": elapsed}), flush=True)


# --------------------------------------------------------------------------------------------
# parent: run, measure, compare


@dataclass
class Run:
    wall: float
    rss: int  # bytes
    join_s: float
    cpu: float = float("nan")  # user + system seconds of the process (wall is load-sensitive)
    # Non-zero: the process failed (``os.wait4`` status); a negative figure is the signal that
    # killed it, -9 being the kernel's out-of-memory killer on this machine (no swap).
    status: int = 0

    @property
    def failed(self) -> bool:
        return self.status != 0

    def describe_failure(self) -> str:
        sig = -self.status if self.status < 0 else 0
        why = ("killed (SIGKILL: out of memory?)" if sig == signal.SIGKILL
               else f"killed by signal {sig}" if sig else f"exit status {self.status}")
        return f"FAILED: {why} after {self.wall:.2f} s at peak {gib(self.rss)}"


def measure(name: str, paths: Paths, case: str, out: Path | None,
            env: dict[str, str] | None = None, *, may_fail: bool = False) -> Run:
    """Run one contestant in a fresh process; wall time and peak RSS come from ``os.wait4``.

    The contestant is started by a small launcher process (``--launch``): on Linux a child's
    ``ru_maxrss`` starts at the RSS of the process it was forked from, so forking it from this
    (large) parent would inflate its figure.
    """
    child = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--case",
        case,
        "--scale",
        paths.scale,
        "--data-dir",
        str(paths.root),
        "--out",
        str(out or ""),
    ]
    done = subprocess.run(
        [sys.executable, __file__, "--launch", *child],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
        env=env,
    )
    if done.returncode != 0:
        raise SystemExit(f"launcher for {name} ({case}) failed")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    if info["status"] != 0:
        if may_fail:  # a peer that cannot finish at this scale is a figure, not a crash
            return Run(info["wall"], info["rss"], float("nan"), status=info["status"])
        raise SystemExit(f"{name} ({case}) failed with status {info['status']}")
    joined = json.loads(info["stdout"].strip().splitlines()[-1]) if info["stdout"].strip() else {}
    return Run(info["wall"], info["rss"], joined.get("join_s", float("nan")), info["cpu"])


def launch(cmd: list[str]) -> None:
    """Launcher: run ``cmd``, print its wall time, peak RSS and output as one JSON line.

    Imports nothing heavy, so the child's inherited ``ru_maxrss`` floor stays ~10 MB.
    """
    t = time.perf_counter()
    # If the machine runs out of memory, the contestant is the process the kernel kills, not an
    # unrelated one (large peers at XL can outgrow 24 GiB).
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=_oom_first)
    stdout = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    print(
        json.dumps(
            {"wall": wall, "rss": usage.ru_maxrss * 1024, "status": code, "stdout": stdout,
             "cpu": usage.ru_utime + usage.ru_stime}
        )
    )


def _oom_first() -> None:
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000")


def same_results(files: dict[str, Path]) -> list[str]:
    import polars as pl

    frames = {k: pl.read_ipc(p) for k, p in files.items()}
    ref_name, ref = next(iter(frames.items()))
    problems = []
    for name, df in frames.items():
        if name == ref_name:
            continue
        if df.columns != ref.columns:
            problems.append(f"{name}: columns {df.columns} != {ref_name}: {ref.columns}")
        elif not df.cast(ref.schema).equals(ref):  # DuckDB's int/timestamp types differ in name
            problems.append(f"{name}: values differ from {ref_name}")
    return problems


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def ratio(a: Run | None, b: Run | None, attr: str = "wall") -> str:
    if a is None or b is None or a.failed or b.failed:
        return "nan"
    return f"{getattr(a, attr) / getattr(b, attr):.2f}"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--launch":
        launch(sys.argv[2:])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", choices=sorted(SCALES), default="S")
    ap.add_argument(
        "--data-dir", default=os.path.join(tempfile.gettempdir(), "featurestore-pit-bench")
    )
    ap.add_argument("--repeat", type=int, default=None, help="rounds (default: 3, L/XL: 1)")
    ap.add_argument("--skip-multi", action="store_true", help="skip the 5-view case")
    ap.add_argument(
        "--peers",
        default=None,
        help="comma-separated retrieval contestants (default: all; at XL all but the raw-file "
        f"peers {', '.join(RAW_PEERS)}, which need more memory than the machine has)",
    )
    ap.add_argument(
        "--memory-limit",
        default=None,
        help="FEATURESTORE_MEMORY_LIMIT for the store's setup (e.g. 2GiB): sources that would "
        "not fit are ingested and materialized bucket by bucket (default: no limit)",
    )
    ap.add_argument(
        "--cold-checksums",
        action="store_true",
        help="give each featurestore run an empty checksum cache: every run pays the first "
        "read's full artifact hash (by default it is timed once, outside the rounds)",
    )
    ap.add_argument("--skip-prepare", action="store_true",
                    help="do not run the hand-written prepare (at XL it needs more memory "
                         "than 24 GiB and spills for a quarter of an hour)")
    ap.add_argument("--reuse-store", action="store_true",
                    help="time retrieval on the store a previous run of this scale left, "
                         "without setting it up again (setup figures: nan)")
    ap.add_argument("--layout", choices=("copy", "reference"), default=None,
                    help="the store's snapshot_layout for this run (FEATURESTORE_SNAPSHOT_LAYOUT;"
                         " default: the store's default, copy). With reference, the peers "
                         "that read the store's sorted copy (polars_art, duckdb_art) have none "
                         "to read and are left out unless named in --peers")
    ap.add_argument("--engine", choices=("polars", "spark"), default="polars",
                    help="spark: compare the store's polars and spark engines (pit_spark.py)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--case", default="single", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args)
        return

    root = Path(args.data_dir)
    root.mkdir(parents=True, exist_ok=True)
    paths = Paths(root, args.scale)
    repeat = args.repeat or (1 if args.scale in ("L", "XL") else 3)
    n_rows, n_query, n_entities = SCALES[args.scale]
    if args.peers:
        contestants = [p.strip() for p in args.peers.split(",") if p.strip()]
        unknown = [p for p in contestants if p not in RUNNERS]
        if unknown:
            raise SystemExit(f"unknown contestants {unknown}; choose from {list(RUNNERS)}")
    else:
        contestants = [p for p in RUNNERS
                       if not (args.scale in BIG_SCALES and p in RAW_PEERS)
                       and not (args.layout == "reference" and p.endswith("_art"))]
    if args.layout:  # inherited by the setup's and every contestant's process
        os.environ["FEATURESTORE_SNAPSHOT_LAYOUT"] = args.layout
    if "featurestore" not in contestants:
        contestants.insert(0, "featurestore")
    import polars as pl

    print(
        f"PIT benchmark scale={args.scale}: {n_rows:,} feature rows, {n_query:,} query rows, "
        f"{n_entities:,} entities, {N_FEATURES} float features; {repeat} round(s); "
        f"contestants {', '.join(contestants)}"
    )
    print(
        f"machine: {platform.platform()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"polars {pl.__version__}, duckdb {__import__('duckdb').__version__}; "
        f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; load avg {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    if args.engine == "spark":
        import pit_spark

        generate(paths, multi=False)
        pit_spark.run(paths, repeat)
        return

    cases = ["single"] if args.skip_multi else ["single", "multi"]
    generate(paths, multi="multi" in cases)
    compile_bytecode()

    summary: dict[str, dict[str, Run]] = {}
    setups: dict[str, tuple[Run, Run]] = {}
    failed = False
    setup_env = None
    if args.memory_limit:
        setup_env = {**os.environ, "FEATURESTORE_MEMORY_LIMIT": args.memory_limit}
    skipped = Run(float("nan"), 0, float("nan"), status=-1)  # a step this run did not take
    for case in cases:
        if args.reuse_store and (store_root(paths, case) / "featurestore.json").exists():
            mat = prep = skipped
            print(f"\n[{case}] setup and prepare not run: reusing {store_root(paths, case)}",
                  flush=True)
        else:
            # The previous run's store goes first, untimed (the prepare's output is removed
            # untimed too): deleting gigabytes is not part of setting a store up.
            shutil.rmtree(store_root(paths, case), ignore_errors=True)
            mat = measure("materialize", paths, case, None, setup_env)
            print(
                f"\n[{case}] one-time store setup (apply + ingest + materialize, memory limit "
                f"{args.memory_limit or 'default: a quarter of RAM, at most 2 GiB'}): wall {mat.wall:.2f} s, "
                f"cpu {mat.cpu:.2f} s, peak {gib(mat.rss)}",
                flush=True,
            )
            prep = skipped if args.skip_prepare else measure("prepare", paths, case, None,
                                                             may_fail=True)
            for j in range(len(paths.raws(case))):
                prepared(paths, case, j).unlink(missing_ok=True)
            print(
                f"[{case}] hand-written Polars prepare (scan, available_at, sort, write): "
                + ("not run (--skip-prepare)" if args.skip_prepare else
                   prep.describe_failure() if prep.failed else
                   f"wall {prep.wall:.2f} s, cpu {prep.cpu:.2f} s, peak {gib(prep.rss)}; "
                   f"setup/prepare wall {mat.wall / prep.wall:.2f}, cpu "
                   f"{mat.cpu / prep.cpu:.2f}"),
                flush=True,
            )
        setups[case] = (mat, prep)
        files = record_artifacts(paths, case)
        print(f"[{case}] artifact layout: {', '.join(f'{len(f)} file(s)' for f in files)}")
        if not args.cold_checksums:
            first = measure("first-read", paths, case, None)
            print(
                f"[{case}] first read's checksum check (once per user and artifact, not in "
                f"the rounds): {first.join_s:.2f} s",
                flush=True,
            )
        runs: dict[str, list[Run]] = {k: [] for k in contestants}
        outs = {k: root / f"result_{args.scale}_{case}_{k}.arrow" for k in contestants}
        for r in range(repeat):
            shift = r % len(contestants)
            order = contestants[shift:] + contestants[:shift]  # no engine always runs first
            for name in order:
                env = None
                if args.cold_checksums and name == "featurestore":
                    cold = tempfile.mkdtemp(prefix="fs-checksums-", dir=root)
                    env = {**os.environ, "FEATURESTORE_CACHE_DIR": cold}
                run = measure(name, paths, case, outs[name], env,
                              may_fail=name != "featurestore")
                if env is not None:
                    shutil.rmtree(env["FEATURESTORE_CACHE_DIR"], ignore_errors=True)
                runs[name].append(run)
                print(
                    f"  round {r + 1} {name:<12} "
                    + (run.describe_failure() if run.failed else
                       f"wall {run.wall:6.2f} s  (in-process {run.join_s:6.2f} s)  "
                       f"peak {gib(run.rss)}"),
                    flush=True,
                )
        for name, rs in runs.items():  # a peer that failed once has no result to compare
            if any(x.failed for x in rs):
                outs.pop(name).unlink(missing_ok=True)
        problems = same_results(outs)
        if problems:
            failed = True
            print("  RESULTS DIFFER: " + "; ".join(problems))
        else:
            print(f"  results identical: {' == '.join(outs)}")
        for p in outs.values():
            p.unlink(missing_ok=True)
        med = {
            k: Run(
                statistics.median(x.wall for x in v),
                max(x.rss for x in v),
                statistics.median(x.join_s for x in v),
                statistics.median(x.cpu for x in v),
                next((x.status for x in v if x.failed), 0),
            )
            for k, v in runs.items()
        }
        summary[case] = med
        fs = med["featurestore"]
        print(
            f"  {'engine':<12} {'wall (median)':>14} {'peak RSS (max)':>15} {'wall ratio fs/x':>16} "
            f"{'mem ratio fs/x':>15}"
        )
        for name, run in med.items():
            if run.failed:
                print(f"  {name:<12} {run.describe_failure()}")
                continue
            print(
                f"  {name:<12} {run.wall:>12.2f} s {gib(run.rss):>15} {fs.wall / run.wall:>16.2f} "
                f"{fs.rss / run.rss:>15.2f}"
            )
    if failed:
        raise SystemExit("results differ between engines")
    s = summary["single"]
    fs = s["featurestore"]
    po, dd, pa, da = (s.get(k) for k in ("polars", "duckdb", "polars_art", "duckdb_art"))
    mat, prep = setups["single"]
    e2e = ("nan" if dd is None or dd.failed or mat.failed
           else f"{(mat.wall + fs.wall) / dd.wall:.2f}")
    print(
        f"RESULT scale={args.scale} fs_vs_polars_wall={ratio(fs, po)} "
        f"fs_vs_duckdb_wall={ratio(fs, dd)} fs_vs_polars_art_wall={ratio(fs, pa)} "
        f"fs_vs_duckdb_art_wall={ratio(fs, da)} fs_mem_gib={fs.rss / 2**30:.2f} "
        f"setup_vs_prepare_wall={ratio(mat, prep)} setup_peak_gib={'nan' if mat.failed else f'{mat.rss / 2**30:.2f}'} "
        f"e2e_vs_duckdb_wall={e2e}"
    )


if __name__ == "__main__":
    main()
