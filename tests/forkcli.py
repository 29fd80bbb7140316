"""Run many ``featurestore`` CLI invocations fast: one process per invocation, forked.

Starting the CLI costs about a second, nearly all of it imports. This driver imports the CLI
once (touching no data, so no engine thread exists yet), then forks one child per invocation;
each child runs the console script's ``main(argv)`` and exits with its code, so every
invocation is a process of its own with real exit codes, signals included (a Rust abort shows
as -6), and its own stdout and stderr.

    python tests/forkcli.py JOBS.json RESULTS.json

JOBS.json is ``{"warmup": argv, "jobs": [...]}``. The warm-up invocation runs in the driver
itself (a verb that reads only the registry, e.g. ``list --json``: it loads what every child
would load again, and starts no engine thread). Each job is ``{"file": path, "pos": int,
"runs": [{"argv": [...], "out": stdout path, "err": stderr path}, ...]}``: the driver XORs the
byte at ``pos`` of ``file`` with 0xFF, runs the invocations (side by side: they only read), and puts the original byte back.
Each result is ``{"pos", "codes"}``.
"""

from __future__ import annotations

import json
import os
import sys
import time

TIMEOUT = 120.0


def start_child(argv: list[str], out: str, err: str) -> int:
    pid = os.fork()
    if pid == 0:  # the child: the CLI, then exit without running the parent's cleanup
        code = 1
        try:
            for fd, path in ((1, out), (2, err)):
                target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.dup2(target, fd)
                os.close(target)
            from featurestore.cli import main

            code = main(argv)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    return pid


def wait_child(pid: int, deadline: float) -> int:
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return -9999  # hung
        time.sleep(0.005)


def main() -> None:
    jobs_path, results_path = sys.argv[1:3]
    import pyarrow.parquet  # noqa: F401 - what a refused read imports to explain itself

    import featurestore.cli as cli

    cli._register_extra_commands()
    with open(jobs_path) as fh:
        spec = json.load(fh)
    saved = os.dup(1)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    try:
        if cli.main(spec["warmup"]) != 0:
            raise SystemExit(f"warm-up {spec['warmup']} failed")
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
    jobs = spec["jobs"]
    results = []
    for job in jobs:
        with open(job["file"], "r+b") as fh:
            fh.seek(job["pos"])
            original = fh.read(1)
            fh.seek(job["pos"])
            fh.write(bytes([original[0] ^ 0xFF]))
        try:
            # A job's invocations only read: they run side by side.
            pids = [start_child(r["argv"], r["out"], r["err"]) for r in job["runs"]]
            deadline = time.monotonic() + TIMEOUT
            codes = [wait_child(pid, deadline) for pid in pids]
        finally:
            with open(job["file"], "r+b") as fh:
                fh.seek(job["pos"])
                fh.write(original)
        results.append({"pos": job["pos"], "codes": codes})
    with open(results_path, "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main()
