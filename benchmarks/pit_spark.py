"""The point-in-time benchmark on the spark engine: ``python benchmarks/pit.py --engine spark``.

Uses ``pit.py``'s data (same generator, same cache) and store (built once through the public
API), then retrieves the same single-view query twice, each in a fresh process: with the polars
engine and with the spark engine (``FEATURESTORE_SPARK_MASTER``, default ``local[*]``). The two
results must be identical. Wall time is the whole process (the Spark run includes starting the
JVM); memory is the peak of the summed RSS of the process and all its descendants (the JVM and
the Python workers), sampled every 100 ms, since the JVM is not a waited-for child. Ends with

    RESULT scale=M engine=spark identical=1 spark_vs_polars_engine_wall=<x> spark_mem_gib=<x>

Spark on a few local cores is slower than Polars on one machine; what the engine is for is that
the same store and the same results scale out to a cluster (docs/scale-out.md).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pit

RESULT_NAMES = ("polars", "spark")


def _tree_rss(root_pid: int) -> int:
    """Summed RSS (bytes) of ``root_pid`` and every descendant, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root_pid]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def child(engine: str, data_dir: str, scale: str, out: str) -> None:
    """Run one retrieval on ``engine`` in this process; print its seconds as JSON."""
    import polars as pl

    from featurestore import FeatureStore

    paths = pit.Paths(Path(data_dir), scale)
    query = pl.read_parquet(paths.query)
    t = time.perf_counter()
    with FeatureStore(pit.store_root(paths, "single")) as store:
        result = store.get_historical_features(query, pit.FEATURES, tier="historical",
                                               cutoff=pit.CUTOFF, engine=engine)
    elapsed = time.perf_counter() - t
    result.write_ipc(out, compression="uncompressed")
    print(json.dumps({"join_s": elapsed}), flush=True)


def measure(engine: str, paths: pit.Paths, out: Path) -> dict[str, Any]:
    """Wall time and peak process-tree RSS of one retrieval in a fresh process."""
    cmd = [sys.executable, __file__, "--child", engine, str(paths.root), paths.scale, str(out)]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _tree_rss(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    done.set()
    sampler.join()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{engine} retrieval failed with status {proc.returncode}")
    info = json.loads(stdout.strip().splitlines()[-1])
    return {"wall": wall, "rss": peak, "join_s": info["join_s"]}


def run(paths: pit.Paths, repeat: int) -> None:
    """Called by ``pit.py --engine spark`` after it generated the data."""
    import polars as pl

    mat = pit.measure("materialize", paths, "single", None)
    print(f"\n[single] one-time store setup (polars engine): wall {mat.wall:.2f} s", flush=True)
    outs = {e: paths.root / f"result_{paths.scale}_engine_{e}.arrow" for e in RESULT_NAMES}
    runs: dict[str, list[dict[str, Any]]] = {e: [] for e in RESULT_NAMES}
    for r in range(repeat):
        for engine in RESULT_NAMES if r % 2 == 0 else RESULT_NAMES[::-1]:
            got = measure(engine, paths, outs[engine])
            runs[engine].append(got)
            print(f"  round {r + 1} {engine:<7} wall {got['wall']:7.2f} s  (in-process "
                  f"{got['join_s']:7.2f} s)  peak (process tree) {pit.gib(got['rss'])}  "
                  f"load avg {os.getloadavg()[0]:.2f}", flush=True)
    a, b = (pl.read_ipc(outs[e]) for e in RESULT_NAMES)
    identical = a.equals(b) and a.schema == b.schema
    for p in outs.values():
        p.unlink(missing_ok=True)
    print("  results identical: polars engine == spark engine" if identical
          else "  RESULTS DIFFER between the polars and the spark engine")
    wall = {e: statistics.median(x["wall"] for x in v) for e, v in runs.items()}
    mem = {e: max(x["rss"] for x in v) for e, v in runs.items()}
    print(f"  polars engine: wall {wall['polars']:.2f} s, peak {pit.gib(mem['polars'])}; "
          f"spark engine: wall {wall['spark']:.2f} s, peak {pit.gib(mem['spark'])}")
    print(f"RESULT scale={paths.scale} engine=spark identical={int(identical)} "
          f"spark_vs_polars_engine_wall={wall['spark'] / wall['polars']:.2f} "
          f"spark_mem_gib={mem['spark'] / 2**30:.2f}")
    if not identical:
        raise SystemExit("results differ between engines")


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(*sys.argv[2:])
    else:
        print(__doc__)
