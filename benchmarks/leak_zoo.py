"""The leak zoo's catch table: every look-ahead transform of ``tests/leakzoo.py`` against
causality verification at its default settings, on lap data where the leak hides at rare rows.

    python benchmarks/leak_zoo.py [--seeds 20] [--control-seeds 20] [--control-budget ROWS]

For each leak and each rate of rare situations (nulls, pit stops, drivers retiring) it prints
how many of the seeds' datasets (at least 100k rows each) it was caught on, then how often a
safe control was flagged (it should be never), and the CPU and wall time spent. Ends with
``RESULT leak_zoo caught=<caught>/<verifications> controls_flagged=<n>/<verifications>``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import leakzoo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--control-seeds", type=int, default=20)
    parser.add_argument("--control-budget", type=int, default=None,
                        help="rows for the controls' verification (default: the verifier's)")
    args = parser.parse_args()
    wall, cpu = time.perf_counter(), time.process_time()
    table: dict[tuple[str, bool], dict[float, list[bool]]] = defaultdict(lambda: defaultdict(list))
    seconds: dict[tuple[str, bool], float] = defaultdict(float)
    misses = []
    for o in leakzoo.run(range(args.seeds), control_seeds=range(args.control_seeds),
                         control_budget=args.control_budget):
        table[o.name, o.leak][o.rate].append(o.caught)
        seconds[o.name, o.leak] += o.seconds
        if o.caught != o.leak:
            misses.append(o)
    rates = leakzoo.RATES
    header = f"{'transform':28s} {'what':44s} " + " ".join(f"{r:>8.1%}" for r in rates)
    for leak, title in ((True, "leaks: caught / datasets"), (False, "controls: flagged / datasets")):
        print(f"\n{title}\n{header}   seconds")
        cases = leakzoo.LEAKS if leak else leakzoo.CONTROLS
        for name, case in cases.items():
            cells = table[name, leak]
            print(f"{name:28s} {case.kind:44s} "
                  + " ".join(f"{sum(cells[r]):>4d}/{len(cells[r]):<3d}" for r in rates)
                  + f"   {seconds[name, leak]:6.1f}")
    for o in misses[:10]:
        print(f"UNEXPECTED: {o.name} seed={o.seed} rate={o.rate}: {o.message}")
    n_leak = sum(len(v) for (n, leak), c in table.items() if leak for v in c.values())
    caught = sum(sum(v) for (n, leak), c in table.items() if leak for v in c.values())
    n_ctl = sum(len(v) for (n, leak), c in table.items() if not leak for v in c.values())
    flagged = sum(sum(v) for (n, leak), c in table.items() if not leak for v in c.values())
    print(f"\n{n_leak + n_ctl} verifications in {time.perf_counter() - wall:.1f}s wall, "
          f"{time.process_time() - cpu:.1f}s CPU")
    print(f"RESULT leak_zoo caught={caught}/{n_leak} controls_flagged={flagged}/{n_ctl}")


if __name__ == "__main__":
    main()
