"""Online lookup latency: ``get_online_features`` for 1, 100 and 10,000 keys.

    python benchmarks/online.py [--scale S|M|L] [--data-dir DIR] [--repeat 7]

Uses the store that ``benchmarks/pit.py --scale X`` built (its single-view case: 10 float
features over N feature rows) and asks for all 10 features of randomly chosen entities, as of
one moment inside the data's range. Prints the median and the best latency of ``--repeat``
calls per size after one warm-up call, in milliseconds, plus a hand-written Polars baseline
that filters the same artifact for the keys and takes each key's last row before the moment.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path

import polars as pl

from featurestore import FeatureStore

FEATURES = [f"f{i}" for i in range(10)]


def timed(fn, repeat: int) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times), min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", default="M")
    ap.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "featurestore-pit-bench"))
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    root = Path(args.data_dir) / f"store_{args.scale}_single"
    if not root.exists():
        raise SystemExit(f"{root} is missing: run `python benchmarks/pit.py --scale {args.scale}` first")
    store = FeatureStore(root)
    art = store.registry.latest_artifact("view", "raw0")
    assert art is not None
    path = store.root / art["path"]
    entities = pl.scan_parquet(path).select(pl.col("entity_id").unique()).collect()["entity_id"]
    moment = dt.datetime(2023, 6, 1, tzinfo=dt.UTC)
    tier = store.tiers.names[-1]  # every feature usable, as before online lookups needed a tier
    print(f"store {root}: {art['row_count']:,} rows, {entities.len():,} entities; as of {moment}")
    for n in (1, 100, 10_000):
        keys = entities.sample(min(n, entities.len()), seed=n).to_list()

        def featurestore(keys: list[int] = keys) -> pl.DataFrame:
            return store.get_online_features({"entity_id": keys}, FEATURES, as_of=moment,
                                             tier=tier)

        def polars_by_hand(keys: list[int] = keys) -> pl.DataFrame:
            return (pl.scan_parquet(path).filter(pl.col("entity_id").is_in(keys),
                                                 pl.col("available_at") < moment)
                    .group_by("entity_id").agg(pl.all().sort_by("available_at").last())
                    .collect())

        assert featurestore().height == len(keys)
        fs_med, fs_best = timed(featurestore, args.repeat)
        pl_med, pl_best = timed(polars_by_hand, args.repeat)
        print(f"{n:>6} keys: featurestore median {fs_med:8.1f} ms (best {fs_best:8.1f})   "
              f"polars by hand median {pl_med:8.1f} ms (best {pl_best:8.1f})")


if __name__ == "__main__":
    main()
