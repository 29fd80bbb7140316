"""What checking artifacts before reading them costs: the first read, and every read after.

    python benchmarks/checksums.py STORE [--repeat N]

For every view artifact of the store at STORE (e.g. the one ``pit.py --scale M`` leaves in its
data folder, ``store_M_single``): the time to verify it with an empty checksum cache (a full
sha256 of the file: what the first read pays), and the median time of ``--repeat`` verifications
once the check is remembered (what every later read pays), with the share of it that is the
checksum lookup itself (the rest, reading the footer's schema, reads did before checksums). Both run in this process against a
fresh cache folder; the file must be older than the 2 s racy window (``featurestore/checksums.py``)
for the second figure to be a cache hit, which the script checks and reports.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("store")
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fs-checksum-bench-") as cache:
        os.environ["FEATURESTORE_CACHE_DIR"] = cache
        from featurestore import FeatureStore, checksums
        from featurestore.artifacts import verify_artifact

        with FeatureStore.open(args.store, read_only=True) as store:
            rows = [a for a in store.list("artifact") if a["kind"] == "view"]
            for row in rows:
                path = store.root / row["path"]
                size = path.stat().st_size
                age = time.time() - max(path.stat().st_mtime, path.stat().st_ctime)
                t = time.perf_counter()
                verify_artifact(store.root, row)
                cold = time.perf_counter() - t
                remembered = checksums._is_known(checksums._key(path.stat(), row["checksum"]))
                warm = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    verify_artifact(store.root, row)
                    warm.append(time.perf_counter() - t)
                lookup = []
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    checksums.checksum_mismatch(path, row["checksum"])
                    lookup.append(time.perf_counter() - t)
                print(f"artifact {row['id']} {row['name']}: {size / 2**20:.1f} MiB, "
                      f"age {age:.0f} s; first verification {cold * 1000:.1f} ms "
                      f"({size / 2**20 / cold:.0f} MiB/s); then median "
                      f"{statistics.median(warm) * 1e6:.0f} us over {args.repeat} "
                      f"({'remembered' if remembered else 'NOT remembered: rehashed each time'}; "
                      "includes reading the Parquet footer's schema, as before this check), "
                      f"of which the checksum lookup {statistics.median(lookup) * 1e6:.0f} us")


if __name__ == "__main__":
    main()
