"""Materialize benchmark: featurestore's rolling and falloff views vs the same code by hand.

    python benchmarks/materialize.py [--laps 10000000] [--drivers 10000] [--workdir DIR]
                                     [--buckets N]

One run, each contender a whole separate process (wall time and peak RSS from wait4):
  polars       hand-written Polars (benchmarks/materialize_polars.py) reading the raw laps file
               and writing its two result files; each view scans and sorts the file itself;
  polars-once  the same views from one read and one sort of the file (the faster way to write
               it by hand, and the fairer baseline);
  ingest       the store's ingest of the raw file (validation, the sorted snapshot), forced;
  fs           ``materialize`` of the two views without causality verification;
  fs+verify    the same with verification, whose own seconds give the verification share.
``--buckets N`` runs the store's processes with ``FEATURESTORE_BUCKETS=N`` (their own store
under the work folder): a bucketed snapshot, views computed bucket by bucket and written as N
parts. Results of ``fs`` and both hand-written runs are checked equal. Ends with
``RESULT materialize fs_vs_polars_wall=<x> fs_vs_polars_mem=<x> verify_share=<x>
fs_ingest_vs_polars_wall=<x> fs_vs_polars_once_wall=<x> fs_ingest_vs_polars_once_wall=<x>``
(on one line): ``fs_ingest_*`` count the store's ingest too, as the hand-written code pays for
reading the raw file in its own time.
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
CPU: dict[str, float] = {}
sys.path.insert(0, str(HERE))

DEFS = """
[[entities]]
name = "driver"
join_keys = ["driver_id"]

[[sources]]
name = "laps"
path = "{laps}"
entity = "driver"
event_time = "event_timestamp"
available_time = "available_at"
tier = "race"

[[views]]
name = "lap_rolling"
source = "laps"
transform = "rolling"
tier = "race"
params = {rolling}

[[views]]
name = "tyre_falloff"
source = "laps"
transform = "falloff"
tier = "race"
params = {falloff}
"""


def child(mode: str, workdir: Path) -> None:
    """The body of one measured process."""
    import polars as pl
    from materialize_polars import (
        SORT_ONCE,
        falloff_params,
        hand_falloff,
        hand_rolling,
        rolling_params,
    )

    laps = workdir / "laps.parquet"
    if mode == "polars":
        lf = pl.scan_parquet(laps)
        hand_rolling(lf).collect().write_parquet(workdir / "hand_rolling.parquet")
        hand_falloff(lf).collect().write_parquet(workdir / "hand_falloff.parquet")
        return
    if mode == "polars-once":
        lf = pl.read_parquet(laps).sort(SORT_ONCE, maintain_order=True).lazy()
        hand_rolling(lf, presorted=True).collect().write_parquet(workdir / "once_rolling.parquet")
        hand_falloff(lf, presorted=True).collect().write_parquet(workdir / "once_falloff.parquet")
        return
    from featurestore import FeatureStore
    from featurestore.materialize import materialize

    store = FeatureStore(workdir / _store_name())
    if mode == "setup":
        (workdir / "features.toml").write_text(DEFS.format(
            laps=laps, rolling=_toml_inline(rolling_params()), falloff=_toml_inline(falloff_params())))
        store.apply(workdir / "features.toml")
        store.ingest()
        return
    if mode == "ingest":
        store.ingest(force=True)
        return
    results = materialize(store, ["lap_rolling", "tyre_falloff"], force=True,
                          verify=(mode == "fs+verify"))
    print(json.dumps({r.view: {"transform": r.seconds_transform, "verify": r.seconds_verify,
                               "path": r.artifact["path"]} for r in results}))


def _toml_inline(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_inline(v) for v in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def _store_name() -> str:
    buckets = os.environ.get("FEATURESTORE_BUCKETS", "").strip()
    return f"store-b{buckets}" if buckets else "store"


def measure(mode: str, workdir: Path) -> tuple[float, float, str]:
    """Run ``mode`` in a fresh process; return wall seconds, peak RSS in GiB and its stdout
    (and note its CPU seconds in ``CPU``)."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", mode, "--workdir", str(workdir)],
                            stdout=subprocess.PIPE, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    CPU[mode] = usage.ru_utime + usage.ru_stime
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{mode} failed with exit code {proc.returncode}")
    return wall, usage.ru_maxrss / 2**20, out  # ru_maxrss is KiB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--laps", type=int, default=10_000_000)
    parser.add_argument("--drivers", type=int, default=10_000)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fs-bench-materialize"))
    parser.add_argument("--buckets", type=int, default=None,
                        help="FEATURESTORE_BUCKETS for the store's processes")
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.buckets is not None:
        os.environ["FEATURESTORE_BUCKETS"] = str(args.buckets)  # inherited by the children
    if args.child:
        child(args.child, args.workdir)
        return
    import polars as pl
    from materialize_polars import make_laps
    from polars.testing import assert_frame_equal

    work = args.workdir / f"{args.laps}-{args.drivers}"
    work.mkdir(parents=True, exist_ok=True)
    laps = work / "laps.parquet"
    if not laps.exists():
        t = time.perf_counter()
        make_laps(args.laps, args.drivers).write_parquet(laps)
        print(f"data: {args.laps:,} laps of {args.drivers:,} drivers generated in "
              f"{time.perf_counter() - t:.1f}s")
    if not (work / _store_name()).exists():
        wall, mem, _ = measure("setup", work)
        print(f"one-time setup (apply + ingest snapshot): {wall:.2f}s, peak {mem:.2f} GiB")
    figures = {}
    for mode in ("polars", "polars-once", "ingest", "fs", "fs+verify"):
        figures[mode] = measure(mode, work)
        print(f"{mode:>11}: wall {figures[mode][0]:6.2f}s  cpu {CPU[mode]:6.2f}s  "
              f"peak RSS {figures[mode][1]:5.2f} GiB")
    fs_views = json.loads(figures["fs"][2].strip().splitlines()[-1])
    verified = json.loads(figures["fs+verify"][2].strip().splitlines()[-1])
    store_root = work / _store_name()
    for view, hand in (("lap_rolling", "hand_rolling"), ("tyre_falloff", "hand_falloff"),
                       ("lap_rolling", "once_rolling"), ("tyre_falloff", "once_falloff")):
        want = pl.read_parquet(work / f"{hand}.parquet")
        path = store_root / fs_views[view]["path"]
        got = pl.read_parquet(sorted(path.glob("part-*.parquet")) if path.is_dir() else path)
        order = ["driver_id", "event_timestamp", "available_at"]
        if "lap" in want.columns and "lap" not in got.columns:
            want = want.drop("lap")
        got = got.select(want.columns).sort(order, maintain_order=True)
        want = want.sort(order, maintain_order=True)
        assert_frame_equal(got, want, check_exact=False, rel_tol=1e-9, abs_tol=1e-9)
        print(f"  {view}: identical to {hand} ({got.height:,} rows x {got.width} columns)")
    verify_seconds = sum(v["verify"] for v in verified.values())
    wall_ratio = figures["fs"][0] / figures["polars"][0]
    mem_ratio = figures["fs"][1] / figures["polars"][1]
    share = verify_seconds / figures["fs+verify"][0]
    # The store's pipeline is ingest (validate, sort, snapshot) then materialize; the hand-written
    # code starts from the raw file every time. Counting ingestion is the fair whole-job figure.
    with_ingest = (figures["ingest"][0] + figures["fs"][0]) / figures["polars"][0]
    vs_once = figures["fs"][0] / figures["polars-once"][0]
    with_ingest_vs_once = (figures["ingest"][0] + figures["fs"][0]) / figures["polars-once"][0]
    print(f"verification: {verify_seconds:.2f}s of the {figures['fs+verify'][0]:.2f}s verified run")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"RESULT materialize fs_vs_polars_wall={wall_ratio:.2f} fs_vs_polars_mem={mem_ratio:.2f} "
          f"verify_share={share:.2f} fs_ingest_vs_polars_wall={with_ingest:.2f} "
          f"fs_vs_polars_once_wall={vs_once:.2f} "
          f"fs_ingest_vs_polars_once_wall={with_ingest_vs_once:.2f}")


if __name__ == "__main__":
    main()
