"""A small but real store for the safety tests: a source, a rolling view, CLI helpers."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import polars as pl

DEFS = """
[[entities]]
name = "driver"
join_keys = ["driver_id"]

[[sources]]
name = "results"
path = "results.parquet"
entity = "driver"
event_time = "race_date"
timezone = "America/New_York"
tier = "historical"

[[features]]
name = "finish"
source = "results"

[[views]]
name = "form"
source = "results"
transform = "rolling"
params = { column = "finish", windows = [3, 10], aggs = ["mean", "max"], include_current = true }

[[features]]
name = "finish_mean_last_3"
view = "form"

[[features]]
name = "finish_max_last_10"
view = "form"

[[features]]
name = "finish_max_last_3"
view = "form"

[[features]]
name = "finish_mean_last_10"
view = "form"
"""

DRIVERS = 30
RACES = 40


def write_project(root: Path) -> Path:
    """``root/features.toml`` and ``root/results.parquet``: 30 drivers, 40 races, some nulls."""
    root.mkdir(parents=True, exist_ok=True)
    rows = [(d, dt.datetime(2024, 2, 1, 14) + dt.timedelta(days=7 * r), (d * 7 + r * 13) % 40 + 1)
            for d in range(1, DRIVERS + 1) for r in range(RACES)]
    pl.DataFrame(rows, schema=["driver_id", "race_date", "finish"], orient="row").with_columns(
        pl.when(pl.col("finish") % 17 == 0).then(None).otherwise(pl.col("finish")).alias("finish")
    ).write_parquet(root / "results.parquet")
    (root / "features.toml").write_text(DEFS)
    return root


def write_entities(path: Path) -> Path:
    """Query rows for retrieval: every driver at a few cutoffs, some before any data."""
    cutoffs = [dt.datetime(2024, 1, 1, tzinfo=dt.UTC), dt.datetime(2024, 5, 1, tzinfo=dt.UTC),
               dt.datetime(2024, 9, 15, 12, tzinfo=dt.UTC), dt.datetime(2025, 6, 1, tzinfo=dt.UTC)]
    pl.DataFrame([(d, c) for d in range(1, DRIVERS + 2) for c in cutoffs],
                 schema=["driver_id", "event_timestamp"], orient="row").write_parquet(path)
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "FEATURESTORE_DEBUG": ""}
    env.pop("FEATURESTORE_REGISTRY_URL", None)
    env.update(extra)
    return env


def fs(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
       timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the real ``featurestore`` CLI (``python -m featurestore``) as a process."""
    return subprocess.run([sys.executable, "-m", "featurestore", *args], cwd=cwd,
                          env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def build_store(root: Path, registry_url: str | None = None) -> None:
    """Create the project's store, apply, ingest and materialize (in process: fast)."""
    from featurestore import FeatureStore
    from featurestore.materialize import materialize

    write_project(root)
    with FeatureStore(root, registry_url=registry_url) as store:
        store.apply()
        materialize(store)


def json_out(proc: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(proc.stdout)


def one_error_line(stderr: str) -> str:
    """The CLI's single error line (warnings aside); fails on tracebacks or several lines."""
    assert "Traceback" not in stderr and "panicked" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("Warning:")]
    assert len(lines) == 1 and lines[0].startswith("Error: "), stderr
    return lines[0]
