"""Parquet artifacts: atomic writes, checksums, verified loads, paths confined to the store.

A write goes to a temporary file in the destination directory, is fsynced, then renamed over
its final name (a new, never-reused name), and the directory is fsynced. Only then does the
caller record the registry row; if that fails the new file is removed and the previous
artifact, which was never touched, stays current.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from featurestore.definitions import COMPRESSIONS
from featurestore.errors import ArtifactError

TMP_PREFIX = ".fs-tmp-"
LOCK_FILE = ".fs-writers.lock"
_CHUNK = 4 << 20


@contextmanager
def writers_lock(root: Path, *, exclusive: bool = False) -> Iterator[None]:
    """Hold the store's file lock: shared for writers, exclusive for ``doctor``.

    A writer holds it (shared: writers never wait for each other) from creating its temporary
    file until its registry row is committed or the file is removed again, the one span in which
    an unregistered file under ``data/`` is legitimate. ``doctor`` holds it exclusively while it
    decides what is an orphan and removes it, so it can never delete a file a live writer is
    about to register. The kernel drops the lock when a process dies (even by SIGKILL), so a
    crashed writer never blocks ``doctor``. A no-op where ``fcntl`` is missing (Windows).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    fd = os.open(data / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def confine(root: Path, relative: str | Path) -> Path:
    """Resolve ``relative`` under ``root``; refuse absolute paths and anything escaping root."""
    rel = Path(relative)
    if rel.is_absolute() or rel.drive:
        raise ArtifactError(f"artifact path {str(relative)!r} must be relative to the store root")
    if any(part == ".." for part in rel.parts):
        raise ArtifactError(f"artifact path {str(relative)!r} may not contain '..'")
    full = (root / rel).resolve()
    root_resolved = root.resolve()
    if full != root_resolved and root_resolved not in full.parents:
        raise ArtifactError(f"artifact path {str(relative)!r} resolves outside the store root")
    if full.suffix != ".parquet":
        raise ArtifactError(f"artifact path {str(relative)!r} must end in .parquet")
    return full


def file_checksum(path: Path) -> str:
    """``sha256:<hex>`` of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def schema_dict(schema: pl.Schema | dict[str, pl.DataType]) -> dict[str, str]:
    return {name: str(dtype) for name, dtype in schema.items()}


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class WrittenArtifact:
    """What was written: enough to record the registry row."""

    path: str
    full_path: Path
    schema: dict[str, str]
    row_count: int
    min_event_time: datetime | None
    max_event_time: datetime | None
    checksum: str
    size_bytes: int
    compression: str


def write_parquet_atomic(root: Path, relative: str | Path, frame: pl.DataFrame, *,
                         compression: str = "zstd", time_column: str | None = None) -> WrittenArtifact:
    """Write ``frame`` to ``root/relative`` atomically and describe the result."""
    if compression not in COMPRESSIONS:
        raise ArtifactError(
            f"compression {compression!r} is not supported; choose one of {', '.join(COMPRESSIONS)}"
        )
    final = confine(root, relative)
    if final.exists():
        raise ArtifactError(f"artifact {relative} already exists; artifacts are never overwritten")
    if not final.parent.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        _fsync_dir(final.parent.parent)  # the new directory's entry is durable too
    tmp = final.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}.parquet"
    try:
        frame.write_parquet(tmp, compression=compression, statistics=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        checksum = file_checksum(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    lo = hi = None
    if time_column and frame.height:
        lo, hi = frame[time_column].min(), frame[time_column].max()
        lo = lo.replace(tzinfo=None) if isinstance(lo, datetime) else None
        hi = hi.replace(tzinfo=None) if isinstance(hi, datetime) else None
    return WrittenArtifact(str(Path(relative).as_posix()), final, schema_dict(frame.schema),
                           frame.height, lo, hi, checksum, size, compression)


def verify_artifact(root: Path, row: dict[str, Any], *, checksum: bool = True) -> Path:
    """Check an artifact file against its registry row; return its path or raise ``ArtifactError``.

    Always checks existence, size and schema (from the Parquet footer); with ``checksum`` also
    rehashes the whole file.
    """
    path = confine(root, row["path"])
    label = f"artifact {row['id']} ({row['kind']} {row['name']!r}, {row['path']})"
    if not path.exists():
        raise ArtifactError(f"{label}: file is missing")
    try:
        actual = schema_dict(pl.read_parquet_schema(path))
    except Exception as exc:
        raise ArtifactError(f"{label}: not a readable Parquet file ({exc})") from None
    expected = row["schema"] if isinstance(row["schema"], dict) else json.loads(row["schema"])
    if actual != expected:
        diffs = [f"{c}: registry {expected.get(c, 'absent')} vs file {actual.get(c, 'absent')}"
                 for c in sorted(set(actual) | set(expected)) if actual.get(c) != expected.get(c)]
        raise ArtifactError(f"{label}: schema differs from the registry: {'; '.join(diffs)}")
    size = path.stat().st_size
    if row.get("size_bytes") and size != row["size_bytes"]:
        raise ArtifactError(f"{label}: size is {size} bytes, the registry recorded {row['size_bytes']}")
    if checksum:
        got = file_checksum(path)
        if got != row["checksum"]:
            raise ArtifactError(f"{label}: checksum {got} differs from the recorded {row['checksum']}")
    return path


def temp_files(root: Path) -> list[Path]:
    """Temporary files left by interrupted writes (safe to delete: never registered)."""
    data = root / "data"
    return sorted(data.rglob(f"{TMP_PREFIX}*")) if data.exists() else []
