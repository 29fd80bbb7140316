"""Artifacts: atomic writes, confinement to the store root, checksum and schema checks."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl
import pytest

from featurestore import ArtifactError, FeatureStore
from featurestore.artifacts import TMP_PREFIX, confine, write_parquet_atomic
from featurestore.materialize import materialize
from tests.storekit import basic_defs, open_store, write_results


@pytest.mark.parametrize("bad", ["../x.parquet", "data/../../x.parquet", "/etc/x.parquet",
                                 "data/x.csv", "data/x"])
def test_paths_are_confined_to_the_root(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ArtifactError):
        confine(tmp_path, bad)


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(outside, root / "data")
    with pytest.raises(ArtifactError, match="outside the store root"):
        confine(root, "data/x.parquet")


@pytest.mark.parametrize("compression", ["zstd", "snappy", "gzip", "brotli", "lz4"])
def test_compressions_roundtrip(tmp_path: Path, compression: str) -> None:
    df = pl.DataFrame({"a": [1, 2, 3]})
    w = write_parquet_atomic(tmp_path, f"data/x-{compression}.parquet", df, compression=compression)
    assert pl.read_parquet(w.full_path).equals(df)
    import pyarrow.parquet as pq

    codec = pq.ParquetFile(w.full_path).metadata.row_group(0).column(0).compression
    assert codec.lower().startswith(compression[:3])


def test_artifacts_are_never_overwritten(tmp_path: Path) -> None:
    df = pl.DataFrame({"a": [1]})
    write_parquet_atomic(tmp_path, "data/a.parquet", df)
    with pytest.raises(ArtifactError, match="already exists"):
        write_parquet_atomic(tmp_path, "data/a.parquet", pl.DataFrame({"a": [2]}))
    assert pl.read_parquet(tmp_path / "data/a.parquet")["a"].to_list() == [1]


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    bad = pl.DataFrame({"a": [object()]}, schema={"a": pl.Object})
    with pytest.raises(Exception):  # noqa: B017 - polars' own error type for Object columns
        write_parquet_atomic(tmp_path, "data/a.parquet", bad)
    assert not list((tmp_path / "data").iterdir())


def _store_with_artifacts(tmp_path: Path) -> FeatureStore:
    store = open_store(tmp_path)
    store.apply(basic_defs(write_results(tmp_path / "r.parquet")))
    materialize(store)
    return store


def test_registry_failure_removes_the_new_file_and_keeps_the_old(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store_with_artifacts(tmp_path)
    before = store.list("artifact")
    files_before = sorted((store.root / "data").rglob("*.parquet"))

    def broken_insert(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise RuntimeError("registry went away")

    monkeypatch.setattr(FeatureStore, "_insert_artifact", staticmethod(broken_insert))
    with pytest.raises(RuntimeError):
        materialize(store, force=True)
    assert store.list("artifact") == before
    assert sorted((store.root / "data").rglob("*.parquet")) == files_before
    for row in before:
        store.load_artifact(row["id"])  # still there, still matching its checksum


def test_load_detects_changed_bytes_and_schema(tmp_path: Path) -> None:
    store = _store_with_artifacts(tmp_path)
    view = next(a for a in store.list("artifact") if a["kind"] == "view")
    path = store.root / view["path"]
    df = pl.read_parquet(path)
    assert store.load_artifact(view["id"]).equals(df)
    df.with_columns(pl.col("finish") + 1).write_parquet(path, compression="zstd")
    with pytest.raises(ArtifactError, match=r"(checksum|size)"):
        store.load_artifact(view["id"])
    df.with_columns(pl.col("finish").cast(pl.Float64)).write_parquet(path)
    with pytest.raises(ArtifactError, match=r"finish: registry Int64 vs file Float64"):
        store.load_artifact(view["id"])
    path.unlink()
    with pytest.raises(ArtifactError, match="file is missing"):
        store.load_artifact(view["id"])


def test_doctor_reports_and_fixes_orphans_only(tmp_path: Path) -> None:
    store = _store_with_artifacts(tmp_path)
    assert store.doctor()["ok"]
    orphan = store.root / "data" / "views" / "results" / f"{TMP_PREFIX}dead.parquet"
    orphan.write_bytes(b"half written")
    report = store.doctor()
    assert not report["ok"] and str(orphan) in report["orphans"]
    fixed = store.doctor(fix=True)
    assert fixed["removed"] == [str(orphan)] and not orphan.exists()
    assert store.doctor()["ok"]
    for row in store.list("artifact"):
        store.load_artifact(row["id"])
