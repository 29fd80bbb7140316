"""Small builders for test stores: real Parquet files and definitions, nothing mocked."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from featurestore import Entity, Feature, FeatureSet, FeatureStore, Source


def write_results(path: Path, *, extra: dict[str, list[object]] | None = None) -> Path:
    """Four race results of two drivers, naive US Eastern race start times."""
    data: dict[str, list[object]] = {
        "driver_id": [1, 1, 2, 2],
        "race_date": [dt.datetime(2025, 2, 16, 14), dt.datetime(2025, 2, 23, 15),
                      dt.datetime(2025, 2, 16, 14), dt.datetime(2025, 2, 23, 15)],
        "finish": [3, None, 1, 5],
        "laps_led": [10, 0, 50, 2],
    }
    data.update(extra or {})
    pl.DataFrame(data).write_parquet(path)
    return path


def basic_defs(results: Path, *, tier: str = "historical", dtype: str | None = "Int64",
               description: str = "finishing position") -> list[object]:
    return [
        Entity("driver", ("driver_id",)),
        Source("results", str(results), "driver", "race_date", tier=tier,
               timezone="America/New_York"),
        Feature("finish", source="results", dtype=dtype, description=description, tags=("results",)),
        Feature("laps_led", source="results", tier=tier),
        FeatureSet("model_a", ("finish", "laps_led")),
    ]


def open_store(tmp_path: Path, registry_url: str | None = None) -> FeatureStore:
    return FeatureStore(tmp_path / "store", registry_url=registry_url)
