"""What causality verification costs, and when it is exhaustive, for inputs of several shapes.

    python benchmarks/verify_cost.py [--transform rolling|falloff]

For inputs of N rows with n rows per entity (laps from ``materialize_polars.make_laps``, one
``available_at`` per row) it prints the rows an exhaustive check recomputes (about N x n / 2),
whether the default budget (the larger of 1,000,000 rows and 10 % of N) covers it, and the
seconds of the transform's full run, of the default verification and, where it is affordable, of
an exhaustive one. Ends with ``RESULT verify_cost`` and the largest exhaustive shape measured.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPES = [(10_000, 20), (10_000, 200), (100_000, 20), (100_000, 200), (100_000, 1000),
          (1_000_000, 100), (1_000_000, 1000)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transform", default="rolling", choices=["rolling", "falloff"])
    parser.add_argument("--max-exhaustive", type=int, default=5_000_000,
                        help="run the exhaustive check only up to this many rows recomputed")
    args = parser.parse_args()
    from materialize_polars import falloff_params, make_laps, rolling_params

    from featurestore.plugins import get_transform
    from featurestore.transforms import TransformContext
    from featurestore.verification import verify_causality

    transform = get_transform(args.transform).transform
    params = rolling_params() if args.transform == "rolling" else falloff_params()
    ctx = TransformContext(("driver_id",))
    print(f"{'rows':>10} {'per entity':>10} {'exhaustive rows':>16} {'default':>10} "
          f"{'full s':>8} {'default s':>10} {'exhaustive s':>13}")
    largest = "none"
    for rows, per in SHAPES:
        frame = make_laps(rows, rows // per).sort("driver_id", "event_timestamp")
        started = time.perf_counter()
        output = transform(frame.lazy(), params, ctx).collect()
        full = time.perf_counter() - started
        started = time.perf_counter()
        report = verify_causality(transform, params, frame, ctx, output=output)
        default = time.perf_counter() - started
        exhaustive = "-"
        if report.exhaustive_rows <= args.max_exhaustive:
            started = time.perf_counter()
            verify_causality(transform, params, frame, ctx, output=output, budget=math.inf)
            exhaustive = f"{time.perf_counter() - started:.2f}"
        if report.mode == "exhaustive":
            largest = f"{rows}x{per}"
        print(f"{rows:>10,} {per:>10,} {report.exhaustive_rows:>16,} {report.mode:>10} "
              f"{full:>8.2f} {default:>10.2f} {exhaustive:>13}", flush=True)
    print(f"RESULT verify_cost transform={args.transform} largest_exhaustive_by_default={largest}")


if __name__ == "__main__":
    main()
