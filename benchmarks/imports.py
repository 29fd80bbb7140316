"""Start-up cost: ``import featurestore`` and ``featurestore --help``, whole processes.

    python benchmarks/imports.py [--runs 15] [--python PATH]

Each command runs ``--runs`` times, each in a fresh interpreter (no warm module cache in the
process; the OS file cache is warm after the first run, as it is for a user). A bare
``python -c pass`` is timed the same way, as the floor no import can beat. Runs of the three
commands are interleaved, so a change in machine load hits them alike. Prints the median and
the spread of each (wall time, and the child's CPU time, which a loaded machine distorts less),
the load average before and after, and finally:

    RESULT import import_s=.. help_s=.. python_s=.. import_cpu_s=.. help_cpu_s=..

Targets (issue 15): ``import_s`` <= 0.25 and ``help_s`` <= 0.3 on an idle 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def commands(python: str) -> dict[str, list[str]]:
    script = shutil.which("featurestore", path=str(Path(python).parent))
    help_cmd = [script, "--help"] if script else [python, "-m", "featurestore", "--help"]
    return {
        "python": [python, "-c", "pass"],
        "import": [python, "-c", "import featurestore"],
        "help": help_cmd,
    }


def run_once(argv: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one run. CPU time (user + system of the child) hardly
    moves with the load of a shared machine; wall time is what a user waits."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    cmds = commands(args.python)
    print(f"load before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for argv in cmds.values():  # warm the file cache; not counted
        run_once(argv)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    cpu: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(args.runs):
        for name, argv in cmds.items():
            wall, used = run_once(argv)
            times[name].append(wall)
            cpu[name].append(used)
    for name, ts in times.items():
        print(f"{name:>7}: median {statistics.median(ts):.3f} s  min {min(ts):.3f}  "
              f"max {max(ts):.3f}  cpu median {statistics.median(cpu[name]):.3f} s  "
              f"({' '.join(cmds[name][-2:])})")
    print(f"load after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    med = {name: statistics.median(ts) for name, ts in times.items()}
    cmed = {name: statistics.median(ts) for name, ts in cpu.items()}
    print(f"RESULT import import_s={med['import']:.3f} help_s={med['help']:.3f} "
          f"python_s={med['python']:.3f} import_cpu_s={cmed['import']:.3f} "
          f"help_cpu_s={cmed['help']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
