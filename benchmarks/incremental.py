"""Incremental materialization of bucketed views against a full recompute.

    python benchmarks/incremental.py [--laps 4000000] [--drivers 4000] [--buckets 8]
                                     [--touched 3] [--new-laps 50] [--workdir DIR]

The rolling and falloff views of ``materialize.py``, verified, over a snapshot in ``--buckets``
parts (``FEATURESTORE_BUCKETS``). The source first lacks the last ``--new-laps`` laps of
``--touched`` drivers (0: of every driver); then it gains them (pure growth) and the views are
materialized again, each in a fresh process (wall, CPU seconds and peak RSS from wait4):

  incremental  the store's default: unchanged parts carried over, grown parts' new rows computed
               from their look-back rows only;
  full         the same views recomputed in full (``force``).

The two artifacts are checked equal. Ends with ``RESULT incremental incr_vs_full_wall=<x>
incr_vs_full_cpu=<x> incr_vs_full_mem=<x> carried=<parts carried over>/<parts>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
VIEWS = ["lap_rolling", "tyre_falloff"]


def child(mode: str, work: Path) -> None:
    from featurestore import FeatureStore
    from featurestore.materialize import materialize

    store = FeatureStore(work / "store")
    if mode == "setup":
        from materialize import DEFS, _toml_inline
        from materialize_polars import falloff_params, rolling_params

        (work / "features.toml").write_text(DEFS.format(
            laps=work / "laps.parquet", rolling=_toml_inline(rolling_params()),
            falloff=_toml_inline(falloff_params())))
        store.apply(work / "features.toml")
    results = materialize(store, VIEWS, force=(mode == "full"))
    print(json.dumps({r.view: {"status": r.status, "path": r.artifact["path"],
                               "verification": r.artifact["verification"],
                               "parts": len(r.artifact["parts"])} for r in results}))


def measure(mode: str, work: Path) -> tuple[float, float, float, dict]:
    """Run ``mode`` in a fresh process: wall s, CPU s, peak RSS GiB and what it printed."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", mode, "--workdir", str(work)],
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{mode} failed")
    return (wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 2**20,
            json.loads(out.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--laps", type=int, default=4_000_000)
    parser.add_argument("--drivers", type=int, default=4_000)
    parser.add_argument("--buckets", type=int, default=8)
    parser.add_argument("--touched", type=int, default=3, help="drivers that gain laps (0: all)")
    parser.add_argument("--new-laps", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fs-bench-incremental"))
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.workdir)
        return
    import polars as pl
    from materialize_polars import make_laps
    from polars.testing import assert_frame_equal

    os.environ["FEATURESTORE_BUCKETS"] = str(args.buckets)  # inherited by the children
    work = args.workdir / f"{args.laps}-{args.drivers}-b{args.buckets}-t{args.touched}-{args.new_laps}"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    full = make_laps(args.laps, args.drivers)
    touched = (pl.lit(True) if args.touched == 0
               else pl.col("driver_id").is_in(list(range(1, args.touched + 1))))
    late = (pl.int_range(pl.len()).over("driver_id", order_by="event_timestamp")
            >= pl.len().over("driver_id") - args.new_laps)
    full.filter(~(touched & late)).write_parquet(work / "laps.parquet")
    wall, cpu, mem, _ = measure("setup", work)
    print(f"setup (apply, ingest, materialize {len(VIEWS)} views): wall {wall:.2f}s cpu "
          f"{cpu:.2f}s peak {mem:.2f} GiB")
    full.write_parquet(work / "laps.parquet")  # the new laps arrive
    figures = {}
    for mode in ("incremental", "full"):
        figures[mode] = measure(mode, work)
        wall, cpu, mem, views = figures[mode]
        statuses = ", ".join(f"{v}: {r['status']}" for v, r in views.items())
        print(f"{mode:>11}: wall {wall:6.2f}s  cpu {cpu:6.2f}s  peak RSS {mem:5.2f} GiB  "
              f"{statuses}")
    incremental, recomputed = figures["incremental"][3], figures["full"][3]
    for view in VIEWS:
        print(f"  {view}: {incremental[view]['verification'].split(';')[0]}")
        got, want = (pl.read_parquet(sorted((work / "store" / r[view]["path"]).glob("*.parquet")))
                     for r in (incremental, recomputed))
        order = ["driver_id", "available_at", "event_timestamp"]
        assert_frame_equal(got.sort(order), want.sort(order), rel_tol=1e-9, abs_tol=1e-9)
        print(f"  {view}: incremental equals full ({got.height:,} rows)")
    carried = sum(int(incremental[v]["verification"].split(" of ")[0].split()[-1])
                  if incremental[v]["status"] == "incremental" else 0 for v in VIEWS)
    parts = sum(incremental[v]["parts"] for v in VIEWS)
    (iw, ic, im, _), (fw, fc, fm, _) = figures["incremental"], figures["full"]
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"RESULT incremental incr_vs_full_wall={iw / fw:.2f} incr_vs_full_cpu={ic / fc:.2f} "
          f"incr_vs_full_mem={im / fm:.2f} carried={carried}/{parts}")


if __name__ == "__main__":
    main()
