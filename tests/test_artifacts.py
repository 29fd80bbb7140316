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


def _codecs(store: FeatureStore) -> dict[str, str]:
    """Each latest artifact's codec, as recorded and as read from its Parquet footer."""
    import pyarrow.parquet as pq

    from featurestore.artifacts import artifact_files

    got = {}
    for row in store.list("artifact"):
        for f in artifact_files(store.root, row):
            meta = pq.ParquetFile(f).metadata
            written = {meta.row_group(i).column(j).compression.lower()
                       for i in range(meta.num_row_groups) for j in range(meta.num_columns)}
            assert written == {row["compression"]}
        got[f"{row['kind']}:{row['name']}:{row['id']}"] = row["compression"]
    return got


def test_the_compression_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from featurestore.errors import DefinitionError
    from featurestore.settings import COMPRESSION_ENV

    monkeypatch.delenv(COMPRESSION_ENV, raising=False)
    store = _store_with_artifacts(tmp_path)  # the default: lz4
    assert set(_codecs(store).values()) == {"lz4"} and store.compression == "lz4"
    with pytest.raises(DefinitionError, match="setting compression: 'lzma' is not a compression"):
        store.set_setting("compression", "lzma")
    store.set_setting("compression", "ZSTD")
    assert store.settings()["compression"] == "zstd"
    before = _codecs(store)
    store.ingest(force=True)  # a column view shares its snapshot's file, hence its codec
    materialize(store, force=True)
    after = _codecs(store)
    assert {k: v for k, v in after.items() if k in before} == before  # old ones keep theirs
    assert sorted(v for k, v in after.items() if k not in before) == ["zstd", "zstd"]
    monkeypatch.setenv(COMPRESSION_ENV, "snappy")  # the environment wins over the setting
    assert store.compression == "snappy"
    monkeypatch.setenv(COMPRESSION_ENV, "nope")
    with pytest.raises(DefinitionError, match=f"{COMPRESSION_ENV}: 'nope'"):
        _ = store.compression
    # and an explicit argument wins over both
    assert FeatureStore(store.root, compression="gzip").compression == "gzip"
    monkeypatch.delenv(COMPRESSION_ENV)
    for row in store.list("artifact"):
        store.load_artifact(row["id"])  # every codec still reads


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
