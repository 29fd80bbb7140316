#!/usr/bin/env python3
"""Set up featurestore's environment and run its main job or its tests.

    python3 dev.py quickstart [ARGS...]   # the main job: a NASCAR season, end to end
    python3 dev.py test [PYTEST ARGS...]  # the test suite, without the long end-to-end cases
    python3 dev.py test --all [ARGS...]   # every test (CI runs the rest with `test -m slow`)

Needs only Python 3.11+. Creates ./.venv on first use and (re)installs the project with its
extras whenever pyproject.toml changes, then runs the command inside that environment.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("FEATURESTORE_VENV", ROOT / ".venv"))
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"
STAMP = VENV / ".featurestore-installed"


def ensure_env() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        sys.exit(f"featurestore needs Python 3.11 or newer; this is {sys.version.split()[0]}")
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PY.exists() and STAMP.exists() and STAMP.read_text() == want:
        return
    if not PY.exists():
        print(f"Creating virtual environment {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("Installing featurestore and its test/plot extras ...", flush=True)
    subprocess.run([str(PY), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run([str(PY), "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test,plot,postgres]"],
                   check=True)
    STAMP.write_text(want)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("quickstart", "test"):
        print(__doc__)
        return 2
    ensure_env()
    command, rest = argv[0], argv[1:]
    if command == "test":
        # Two workers by default (pytest-xdist): most tests wait on subprocesses, PostgreSQL or
        # the disk, so the suite takes about half as long; `-n 0` runs it in one process.
        workers = [] if any(a == "-n" or a.startswith(("-n", "--numprocesses")) for a in rest) \
            else ["-n", "2"]
        # The long end-to-end cases (marked slow: Spark, real pip installs, process storms and
        # kills) are left to `--all` or `-m slow`, so the everyday run stays under ten minutes.
        marks = [] if "--all" in rest or any(a == "-m" or a.startswith("-m") for a in rest) \
            else ["-m", "not slow"]
        rest = [a for a in rest if a != "--all"]
        return subprocess.call([str(PY), "-m", "pytest", *workers, *marks, *rest], cwd=ROOT)
    return subprocess.call([str(BIN / "featurestore"), "quickstart", *rest], cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
