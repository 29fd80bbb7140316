"""Windows anchored at the cutoff: featurestore vs the fastest hand-written Polars and DuckDB.

    python benchmarks/windows.py --scale S|M|L [--data-dir DIR] [--repeat N]

Scales (feature rows / query rows / entities): S 1M/100k/1k, M 10M/1M/10k, L 50M/5M/50k.
Data is generated deterministically and cached in ``--data-dir``: feature rows (``entity_id``,
``available_at`` at second resolution over two years, a float ``x`` with 1% nulls), stored
sorted by (entity, available_at) as featurestore artifacts are, and a shuffled query frame
(``entity_id``, ``cutoff``) where 1% of entities have no rows and 10% of cutoffs equal an
existing ``available_at`` exactly, so the strict boundary matters.

The task: five aggregations (count, sum, mean, min, max of ``x``) over two windows (1 day and
30 days), each over the rows with ``cutoff - w <= available_at < cutoff``; an empty window gives
count 0 and nulls. Every contestant runs in its own process, reads the same Parquet files and
is timed from the read to the result in query order; peak RSS is the process's maximum.

(a) featurestore: ``featurestore.windowengine.window_aggregate`` (prefix sums, packed binary
    searches, block sparse table), the engine ``get_historical_features`` runs for window views;
(b) polars: the query rows appended to the feature rows, sorted by (entity, time), and
    ``rolling_{sum,mean,min,max}_by(time, w, closed="left")`` over the entity: one pass per
    aggregation and window (``closed="left"`` is exactly ``[T - w, T)``);
(c) duckdb: a range join ``r.entity_id = q.entity_id AND r.available_at < q.cutoff AND
    r.available_at >= q.cutoff - 30 days`` grouped by query row, the 1-day window as
    ``FILTER`` aggregates over the same join;
(d) pit: featurestore's plain latest-value retrieval (``point_in_time_join``) of ``x``: what a
    window costs over a point-in-time lookup of the same column.

The parent checks (a), (b) and (c) agree (counts exactly, floats to 1e-9 relative), prints the
median wall time and peak RSS over ``--repeat`` rounds and `uptime`, and ends with one line

    RESULT windows scale=M fs_vs_polars_wall=.. fs_vs_duckdb_wall=.. fs_vs_pit_wall=.. fs_mem_gib=..
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

SCALES = {"S": (1_000_000, 100_000, 1_000), "M": (10_000_000, 1_000_000, 10_000),
          "L": (50_000_000, 5_000_000, 50_000)}
WINDOWS = {"1d": timedelta(days=1), "30d": timedelta(days=30)}
AGGS = ("count", "sum", "mean", "min", "max")
SEED = 11
OUTPUTS = [f"x_{a}_{w}" for w in WINDOWS for a in AGGS]


def generate(root: Path, scale: str) -> tuple[Path, Path]:
    import numpy as np
    import polars as pl

    rows_path, query_path = root / f"win_rows_{scale}.parquet", root / f"win_query_{scale}.parquet"
    if rows_path.exists() and query_path.exists():
        return rows_path, query_path
    n, nq, ne = SCALES[scale]
    rng = np.random.default_rng(SEED)
    start = 1_700_000_000
    span = 2 * 365 * 86_400
    ent = rng.integers(0, ne, n)
    sec = rng.integers(0, span, n)
    x = rng.normal(50.0, 20.0, n)
    rows = pl.DataFrame({
        "entity_id": ent, "available_at": (start + sec) * 1_000_000,
        "x": pl.Series(x).set(pl.Series(rng.random(n) < 0.01), None),
    }).with_columns(pl.col("available_at").cast(pl.Datetime("us", "UTC"))).sort(
        "entity_id", "available_at")
    rows.write_parquet(rows_path, row_group_size=1_000_000)
    q_ent = rng.integers(0, int(ne * 1.01), nq)  # 1% of entities have no rows
    q_sec = start + rng.integers(-86_400 * 10, span + 86_400 * 10, nq)
    exact = rng.random(nq) < 0.10
    picks = rows["available_at"].dt.epoch("s").gather(rng.integers(0, n, nq)).to_numpy()
    ent_picks = rows["entity_id"].gather(rng.integers(0, n, nq)).to_numpy()
    query = pl.DataFrame({
        "entity_id": np.where(exact, ent_picks, q_ent),
        "cutoff": np.where(exact, picks, q_sec) * 1_000_000,
    }).with_columns(pl.col("cutoff").cast(pl.Datetime("us", "UTC")))
    query.write_parquet(query_path)
    return rows_path, query_path


def run_fs(rows_path: Path, query_path: Path):  # type: ignore[no-untyped-def]
    import polars as pl

    from featurestore.windowengine import WindowOutput, window_aggregate

    rows, query = pl.read_parquet(rows_path), pl.read_parquet(query_path)
    outs = [WindowOutput(f"x_{a}_{w}", "x", a, d) for w, d in WINDOWS.items() for a in AGGS]
    return pl.DataFrame(window_aggregate(rows, query, outs, keys=["entity_id"], cutoff="cutoff",
                                         event_timestamp=None))


def run_pit(rows_path: Path, query_path: Path):  # type: ignore[no-untyped-def]
    import polars as pl

    from featurestore.retrieval import ViewFrame, point_in_time_join

    query = pl.read_parquet(query_path)
    view = ViewFrame("rows", pl.scan_parquet(rows_path), ("entity_id",), {"x_latest": "x"},
                     presorted=True)
    return point_in_time_join(query, view, cutoff="cutoff").select("x_latest")


def run_polars(rows_path: Path, query_path: Path):  # type: ignore[no-untyped-def]
    import polars as pl

    rows = pl.read_parquet(rows_path).rename({"available_at": "t"})
    query = pl.read_parquet(query_path).with_row_index("qid").rename({"cutoff": "t"})
    both = pl.concat([rows.with_columns(pl.lit(None, pl.UInt32).alias("qid")),
                      query.with_columns(pl.lit(None, pl.Float64).alias("x"))],
                     how="diagonal_relaxed").sort("entity_id", "t")
    exprs = []
    for w in WINDOWS:
        count = pl.col("x").is_not_null().cast(pl.Int64).rolling_sum_by("t", w, closed="left")
        exprs.append(count.over("entity_id").alias(f"x_count_{w}"))
        for a in AGGS[1:]:
            e = getattr(pl.col("x"), f"rolling_{a}_by")("t", w, closed="left").over("entity_id")
            exprs.append(e.alias(f"x_{a}_{w}"))
    out = both.with_columns(exprs).filter(pl.col("qid").is_not_null()).sort("qid")
    empty = {w: pl.col(f"x_count_{w}") == 0 for w in WINDOWS}
    return out.select([pl.col(f"x_count_{w}").fill_null(0) if a == "count" else
                       pl.when(~empty[w]).then(pl.col(f"x_{a}_{w}")).alias(f"x_{a}_{w}")
                       for w in WINDOWS for a in AGGS])


def run_duckdb(rows_path: Path, query_path: Path):  # type: ignore[no-untyped-def]
    import duckdb

    con = duckdb.connect()
    sql_aggs = {"count": "count(r.x)", "sum": "sum(r.x)", "mean": "avg(r.x)",
                "min": "min(r.x)", "max": "max(r.x)"}
    cols = []
    for w, d in WINDOWS.items():
        cond = f"r.available_at >= q.cutoff - INTERVAL {d.days} DAY"
        for a in AGGS:
            cols.append(f"{sql_aggs[a]} FILTER (WHERE {cond}) AS x_{a}_{w}")
    sql = f"""
        WITH q AS (SELECT row_number() OVER () - 1 AS qid, * FROM read_parquet('{query_path}')),
             r AS (SELECT * FROM read_parquet('{rows_path}'))
        SELECT q.qid, {', '.join(cols)}
        FROM q LEFT JOIN r ON r.entity_id = q.entity_id AND r.available_at < q.cutoff
             AND r.available_at >= q.cutoff - INTERVAL {max(d.days for d in WINDOWS.values())} DAY
        GROUP BY q.qid ORDER BY q.qid"""
    return con.sql(sql).pl().drop("qid")


RUNNERS = {"fs": run_fs, "polars": run_polars, "duckdb": run_duckdb, "pit": run_pit}


def child(args: argparse.Namespace) -> None:
    rows_path, query_path = generate(Path(args.data_dir), args.scale)
    # Imports are not part of the timing.
    import duckdb  # noqa: F401
    import polars  # noqa: F401

    import featurestore.retrieval
    import featurestore.windowengine  # noqa: F401

    before = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    out = RUNNERS[args.child](rows_path, query_path)
    wall = time.perf_counter() - t
    out.write_ipc(args.out)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    rss = usage.ru_maxrss / 2**20  # KiB -> GiB
    # CPU time (all threads, user + system) over the same span as the wall time: on a loaded
    # machine it is steadier than the wall time.
    cpu = usage.ru_utime + usage.ru_stime - before.ru_utime - before.ru_stime
    print(json.dumps({"wall": wall, "rss_gib": rss, "cpu": cpu}))


def _same(a, b, name: str) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    import polars as pl

    assert a.height == b.height, f"{name}: {a.height} rows vs {b.height}"
    for c in OUTPUTS:
        x, y = a[c], b[c]
        if not x.is_null().equals(y.is_null()):
            raise SystemExit(f"{name}: column {c} has nulls in other rows")
        x, y = x.drop_nulls().cast(pl.Float64).to_numpy(), y.drop_nulls().cast(pl.Float64).to_numpy()
        if not np.allclose(x, y, rtol=1e-9, atol=1e-9):
            i = int(np.argmax(~np.isclose(x, y, rtol=1e-9, atol=1e-9)))
            raise SystemExit(f"{name}: column {c} differs, e.g. {x[i]!r} vs {y[i]!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", choices=SCALES, default="S")
    ap.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "fs_bench_windows"))
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--child", choices=RUNNERS)
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    generate(Path(args.data_dir), args.scale)
    print(f"data ready in {time.perf_counter() - t:.1f} s ({args.data_dir})", flush=True)
    import polars as pl

    walls: dict[str, list[float]] = {k: [] for k in RUNNERS}
    cpus: dict[str, list[float]] = {k: [] for k in RUNNERS}
    mem: dict[str, float] = dict.fromkeys(RUNNERS, 0.0)
    results = {}
    for _ in range(args.repeat):
        for name in RUNNERS:
            out = Path(args.data_dir) / f"win_out_{args.scale}_{name}.arrow"
            proc = subprocess.run([sys.executable, __file__, "--scale", args.scale, "--data-dir",
                                   args.data_dir, "--child", name, "--out", str(out)],
                                  capture_output=True, text=True, check=False)
            if proc.returncode:
                raise SystemExit(f"{name} failed:\n{proc.stderr}")
            stats = json.loads(proc.stdout.strip().splitlines()[-1])
            walls[name].append(stats["wall"])
            cpus[name].append(stats["cpu"])
            mem[name] = max(mem[name], stats["rss_gib"])
            results[name] = pl.read_ipc(out)
            print(f"  {name:7s} wall {stats['wall']:7.2f} s  CPU {stats['cpu']:7.2f} s  "
                  f"peak RSS {stats['rss_gib']:.2f} GiB", flush=True)
    _same(results["fs"], results["polars"], "featurestore vs polars")
    _same(results["fs"], results["duckdb"], "featurestore vs duckdb")
    print("results identical: featurestore = polars = duckdb")
    med = {k: statistics.median(v) for k, v in walls.items()}
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    print("median CPU (user + sys, all threads): "
          + ", ".join(f"{k} {v:.2f} s" for k, v in cpu.items())
          + f"; fs/pit {cpu['fs'] / cpu['pit']:.2f}")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())
    print(f"RESULT windows scale={args.scale} fs_vs_polars_wall={med['fs'] / med['polars']:.2f} "
          f"fs_vs_duckdb_wall={med['fs'] / med['duckdb']:.2f} "
          f"fs_vs_pit_wall={med['fs'] / med['pit']:.2f} fs_mem_gib={mem['fs']:.2f}")


if __name__ == "__main__":
    main()
