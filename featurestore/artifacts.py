"""Parquet artifacts: atomic writes, checksums, verified loads, paths confined to the store.

A write goes to a temporary file in the destination directory, is fsynced, then renamed over
its final name (a new, never-reused name), and the directory is fsynced. Only then does the
caller record the registry row; if that fails the new file is removed and the previous
artifact, which was never touched, stays current.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from featurestore.checksums import checksum_mismatch, file_checksum, write_hashed
from featurestore.definitions import COMPRESSIONS
from featurestore.errors import ArtifactError, FeatureStoreError, ReadOnlyStoreError

__all__ = ["LinkUnsupported", "ReusedPart", "artifact_files", "artifact_parts", "file_checksum",
           "link_artifact_atomic", "reading_artifacts", "verify_artifact", "write_parquet_atomic",
           "write_parts_atomic"]

TMP_PREFIX = ".fs-tmp-"
LOCK_FILE = ".fs-writers.lock"
_READ_ONLY_ERRNOS = (errno.EACCES, errno.EPERM, errno.EROFS)
# os.link's answers for "this file system (or its protected_hardlinks policy) will not link".
_NO_LINK_ERRNOS = (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                   errno.ENOSYS)


def read_only_error(path: Path, exc: OSError) -> ReadOnlyStoreError:
    """The error for a write refused by the file system: names the path and the reason."""
    return ReadOnlyStoreError(f"cannot write {path}: {exc.strerror or exc}; the store is "
                              "read-only for this user (write verbs need write access)")


@contextmanager
def writers_lock(root: Path, *, exclusive: bool = False, create: bool = True) -> Iterator[None]:
    """Hold the store's file lock: shared for writers, exclusive for ``doctor``.

    A writer holds it (shared: writers never wait for each other) from creating its temporary
    file until its registry row is committed or the file is removed again, the one span in which
    an unregistered file under ``data/`` is legitimate. ``doctor`` holds it exclusively while it
    decides what is an orphan and removes it, so it can never delete a file a live writer is
    about to register. The kernel drops the lock when a process dies (even by SIGKILL), so a
    crashed writer never blocks ``doctor``. A no-op where ``fcntl`` is missing (Windows).
    ``create=False`` (a reader's ``doctor``) never creates the lock file or ``data/``.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    data = root / "data"
    lock = data / LOCK_FILE
    fd = None
    if create:
        try:
            data.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno not in _READ_ONLY_ERRNOS:
                raise
            if not exclusive:
                raise read_only_error(lock, exc) from None
    if fd is None:
        # A reader's `doctor`, or a store this user can only read: it still waits for live
        # writers (flock works on a descriptor opened for reading). No lock file: no writer
        # ever ran, so none runs now.
        if not lock.exists():
            yield
            return
        fd = os.open(lock, os.O_RDONLY)
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


def artifact_parts(row: dict[str, Any]) -> list[dict[str, Any]]:
    """A bucketed artifact's parts (``file``, ``size``, ``checksum``, ``rows``); [] for a file."""
    parts = row.get("parts") or []
    return json.loads(parts) if isinstance(parts, str) else list(parts)


def artifact_files(root: Path, row: dict[str, Any]) -> list[Path]:
    """The Parquet files holding an artifact's rows, in row order: every reader (the Polars
    engine, other engines, ``doctor``) lists them here and nowhere else. Not verified: see
    ``verify_artifact``.

    An artifact is one file, or (bucketed, see ``featurestore.buckets``) a directory of part
    files, one per entity-hash bucket: each part holds whole entities, so every entity's rows
    are contiguous in the concatenation, in the artifact's order.
    """
    path = confine(root, row["path"])
    parts = artifact_parts(row)
    return [path / p["file"] for p in parts] if parts else [path]


def remove_artifact_path(path: Path) -> None:
    """Remove an artifact's file, or a bucketed artifact's directory with its parts."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


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
    parts: tuple[dict[str, Any], ...] = ()


@contextmanager
def atomic_artifact_file(root: Path, relative: str | Path, compression: str, *,
                         directory: bool = False) -> Iterator[tuple[Path, Path]]:
    """Yield ``(tmp, final)``: the caller writes the artifact to ``tmp`` (a file, or with
    ``directory`` an empty directory for the caller's fsynced part files); on a clean exit
    ``tmp`` is fsynced and renamed to ``final`` (never an existing path), and on any failure
    ``tmp`` is removed and a refused write names the path."""
    if compression not in COMPRESSIONS:
        raise ArtifactError(
            f"compression {compression!r} is not supported; choose one of {', '.join(COMPRESSIONS)}"
        )
    final = confine(root, relative)
    if final.exists():
        raise ArtifactError(f"artifact {relative} already exists; artifacts are never overwritten")
    tmp = final.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}.parquet"
    try:
        if not final.parent.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            _fsync_dir(final.parent.parent)  # the new directory's entry is durable too
        # Created here first, so a refused write is an OSError naming the path.
        if directory:
            tmp.mkdir()
        else:
            open(tmp, "xb").close()
        yield tmp, final
        if directory:
            _fsync_dir(tmp)
        else:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        remove_artifact_path(tmp)
        if exc.errno in _READ_ONLY_ERRNOS:
            raise read_only_error(Path(exc.filename or final.parent), exc) from None
        raise
    except BaseException:
        remove_artifact_path(tmp)
        raise


def write_parquet_atomic(root: Path, relative: str | Path, frame: pl.DataFrame, *,
                         compression: str = "lz4", time_column: str | None = None) -> WrittenArtifact:
    """Write ``frame`` to ``root/relative`` atomically and describe the result."""
    with atomic_artifact_file(root, relative, compression) as (tmp, final):
        # Hashed as it is written, so the checksum costs no second read of the file.
        checksum = write_hashed(tmp, lambda p: frame.write_parquet(
            p, compression=compression, statistics=True))
    size = final.stat().st_size
    lo = hi = None
    if time_column and frame.height:
        lo, hi = frame[time_column].min(), frame[time_column].max()
        lo = lo.replace(tzinfo=None) if isinstance(lo, datetime) else None
        hi = hi.replace(tzinfo=None) if isinstance(hi, datetime) else None
    return WrittenArtifact(str(Path(relative).as_posix()), final, schema_dict(frame.schema),
                           frame.height, lo, hi, checksum, size, compression)


def parts_checksum(parts: Sequence[dict[str, Any]]) -> str:
    """A bucketed artifact's checksum: over its parts' names and checksums, in order."""
    digest = hashlib.sha256()
    for p in parts:
        digest.update(f"{p['file']}:{p['checksum']}\n".encode())
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class ReusedPart:
    """A part of an earlier bucketed artifact carried into a new one unchanged (incremental
    materialization: its bucket's input did not change). ``checksum``, ``size`` and ``rows`` are
    the earlier artifact's record of ``path``: the caller verified that artifact first."""

    path: Path
    checksum: str
    size: int
    rows: int


def _carry_over(part: ReusedPart, target: Path) -> None:
    """``part``'s file at ``target``: a hard link (no bytes copied; the file is immutable, and
    removing the earlier artifact only drops its name), else a copy checked against the record."""
    try:
        os.link(part.path, target)
    except OSError:  # another file system, or one without hard links
        got = write_hashed(target, lambda p: shutil.copyfile(part.path, p))
        with open(target, "rb+") as fh:
            os.fsync(fh.fileno())
        if got != part.checksum:
            raise ArtifactError(f"reused part {part.path} has checksum {got}, its artifact "
                                f"recorded {part.checksum}") from None
    size = target.stat().st_size
    if size != part.size:
        raise ArtifactError(f"reused part {part.path} is {size} bytes, its artifact recorded "
                            f"{part.size}")


def write_parts_atomic(root: Path, relative: str | Path,
                       frames: Iterable[pl.DataFrame | ReusedPart], *,
                       compression: str = "lz4",
                       time_column: str | None = None) -> WrittenArtifact:
    """Write a bucketed artifact: one part file per item of ``frames``, all or nothing.

    ``frames`` is consumed one at a time (a generator keeps one bucket in memory). The parts go
    to a temporary directory, each hashed as it is written; the directory is renamed to its
    final name only once all are written and fsynced. Every part must have the same schema. A
    ``ReusedPart`` is an earlier artifact's part, linked (or copied) in with its recorded
    checksum; only its time column is read, for the artifact's time range.
    """
    parts: list[dict[str, Any]] = []
    schema: dict[str, str] | None = None
    rows, lo, hi = 0, None, None
    with atomic_artifact_file(root, relative, compression, directory=True) as (tmp, final):
        # Not enumerate(): its result tuple would hold the previous part while the next is made.
        for frame in frames:
            i = len(parts)
            name = f"part-{i:05d}.parquet"
            target = tmp / name
            if isinstance(frame, ReusedPart):
                _carry_over(frame, target)
                got = schema_dict(pl.read_parquet_schema(target))
                checksum, height = frame.checksum, frame.rows
                times = (pl.read_parquet(target, columns=[time_column]).get_column(time_column)
                         if time_column and height else None)
            else:
                got = schema_dict(frame.schema)
                checksum = write_hashed(target, lambda p, f=frame: f.write_parquet(
                    p, compression=compression, statistics=True))
                with open(target, "rb+") as fh:
                    os.fsync(fh.fileno())
                height = frame.height
                times = frame[time_column] if time_column and height else None
            if schema is not None and got != schema:
                raise ArtifactError(f"artifact {relative}: part {i} has schema {got}, part 0 "
                                    f"has {schema}; parts must agree")
            schema = got
            parts.append({"file": name, "size": target.stat().st_size, "checksum": checksum,
                          "rows": height})
            rows += height
            if times is not None:
                lo = _earliest(lo, times.min())
                hi = _latest(hi, times.max())
            # Before the next part is computed: else this one stays in memory beside it.
            del frame, times
        if schema is None:
            raise ArtifactError(f"artifact {relative}: no parts to write")
    lo = lo.replace(tzinfo=None) if isinstance(lo, datetime) else None
    hi = hi.replace(tzinfo=None) if isinstance(hi, datetime) else None
    return WrittenArtifact(str(Path(relative).as_posix()), final, schema, rows, lo, hi,
                           parts_checksum(parts), sum(p["size"] for p in parts), compression,
                           tuple(parts))


class LinkUnsupported(Exception):
    """The file system refused a hard link (none supported, or not to this user's file)."""


def link_artifact_atomic(root: Path, relative: str | Path, row: dict[str, Any],
                         schema: dict[str, str]) -> WrittenArtifact:
    """A new artifact at ``root/relative`` whose bytes are those of the artifact ``row`` (its
    file, or each of its parts), as hard links: nothing is copied, read or hashed, and the new
    artifact's size, checksum, parts and row count are ``row``'s. ``schema`` is what the new
    artifact serves: some of ``row``'s columns (a column view of a source snapshot).

    All or nothing, like the writers above. Each name is an ordinary registered file to ``gc``,
    ``doctor`` and ``delete``: removing one leaves the other's bytes in place. Raises
    ``LinkUnsupported`` (nothing left behind) where the file system cannot link, so the caller
    writes a copy instead.
    """
    files = artifact_files(root, row)
    parts = artifact_parts(row)
    with atomic_artifact_file(root, relative, row["compression"],
                              directory=bool(parts)) as (tmp, final):
        try:
            if parts:
                for p, f in zip(parts, files, strict=True):
                    os.link(f, tmp / p["file"])
            else:
                tmp.unlink()  # the placeholder that proved the directory writable
                os.link(files[0], tmp)
        except OSError as exc:
            if exc.errno in _NO_LINK_ERRNOS:
                raise LinkUnsupported(f"cannot hard-link {files[0]}: {exc.strerror}") from None
            raise
    return WrittenArtifact(str(Path(relative).as_posix()), final, dict(schema), row["row_count"],
                           row["min_event_time"], row["max_event_time"], row["checksum"],
                           row["size_bytes"], row["compression"], tuple(parts))


def _earliest(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and b < a) else a


def _latest(a: Any, b: Any) -> Any:
    return b if a is None or (b is not None and b > a) else a


def _verify_parts(path: Path, row: dict[str, Any], label: str, expected: dict[str, str], *,
                  checksum: bool, trust_cache: bool, subset: bool) -> Path:
    """``verify_artifact`` for a bucketed artifact: the directory holds exactly the recorded
    parts, each of its recorded size and checksum."""
    parts = artifact_parts(row)
    if not path.is_dir():
        raise ArtifactError(f"{label}: directory of {len(parts)} parts is missing")
    if parts_checksum(parts) != row["checksum"]:
        raise ArtifactError(f"{label}: the registry's part list does not match its checksum")
    present = {p.name for p in path.iterdir()}
    missing = [p["file"] for p in parts if p["file"] not in present]
    extra = sorted(present - {p["file"] for p in parts})
    if missing or extra:
        raise ArtifactError(f"{label}: parts differ from the registry (missing: "
                            f"{', '.join(missing) or 'none'}; unexpected: {', '.join(extra) or 'none'})")
    for p in parts:
        part = path / p["file"]
        try:
            size = part.stat().st_size
            if size != p["size"]:
                raise ArtifactError(f"{label}: part {p['file']} is {size} bytes, the registry "
                                    f"recorded {p['size']}{_schema_hint(part, expected, subset)}")
            got = (checksum_mismatch(part, p["checksum"], trust_cache=trust_cache)
                   if checksum else None)
        except FileNotFoundError:
            raise ArtifactError(f"{label}: part {p['file']} is missing") from None
        except PermissionError as exc:
            raise ArtifactError(f"{label}: cannot read {part}: {exc.strerror}") from None
        if got is not None:
            raise ArtifactError(f"{label}: part {p['file']} has checksum {got}, the registry "
                                f"recorded {p['checksum']}{_schema_hint(part, expected, subset)}")
    first = path / parts[0]["file"]
    try:
        with reading_artifacts([first]):
            actual = schema_dict(pl.read_parquet_schema(first))
    except Exception as exc:
        raise ArtifactError(f"{label}: part {parts[0]['file']} is not a readable Parquet file "
                            f"({exc})") from None
    diffs = _schema_diffs(expected, actual, subset)
    if diffs:
        raise ArtifactError(f"{label}: schema differs from the registry: {diffs}")
    return path


def verify_artifact(root: Path, row: dict[str, Any], *, checksum: bool = True,
                    trust_cache: bool = True) -> Path:
    """Check an artifact file against its registry row; return its path or raise ``ArtifactError``.

    Checks existence and size, then (with ``checksum``) the recorded sha256, and only then reads
    the schema from the Parquet footer with the engine that will read the data: no byte of a
    damaged file reaches that reader, whose failures on garbage include aborting the process.
    Without ``checksum`` the footer is first read with pyarrow (an exception on garbage, never
    an abort) and its row count compared with the registry's.
    A verified checksum is remembered per user (``featurestore.checksums``), so repeat reads
    cost a ``stat``; ``trust_cache=False`` rehashes anyway (``doctor``, ``artifacts --verify``).
    A column view's file may hold more columns than its row lists (``serves_some_columns``).
    """
    from featurestore.reference import index_schema, reference_of, verify_referenced

    label = f"artifact {row['id']} ({row['kind']} {row['name']!r}, {row['path']})"
    served = row["schema"] if isinstance(row["schema"], dict) else json.loads(row["schema"])
    ref = reference_of(row)
    if ref is None:
        return _verify_file(root, row, label, served, checksum=checksum,
                            trust_cache=trust_cache)
    # An index (featurestore.reference): its own file, then the source files it refers to.
    path = _verify_file(root, row, label, index_schema(served, ref), checksum=checksum,
                        trust_cache=trust_cache, subset=True)
    verify_referenced(ref, label, served, checksum=checksum, trust_cache=trust_cache)
    return path


def _verify_file(root: Path, row: dict[str, Any], label: str, expected: dict[str, str], *,
                 checksum: bool, trust_cache: bool, subset: bool = False) -> Path:
    """``verify_artifact`` for the artifact's own file (or parts), against ``expected``."""
    path = confine(root, row["path"])
    subset = subset or serves_some_columns(row)
    if artifact_parts(row):
        return _verify_parts(path, row, label, expected, checksum=checksum,
                             trust_cache=trust_cache, subset=subset)
    if path.is_dir():
        raise ArtifactError(f"{label}: is a directory, the registry recorded one file")
    try:
        size = path.stat().st_size
        if row.get("size_bytes") and size != row["size_bytes"]:
            raise ArtifactError(f"{label}: size is {size} bytes, the registry recorded "
                                f"{row['size_bytes']}{_schema_hint(path, expected, subset)}")
        got = checksum_mismatch(path, row["checksum"], trust_cache=trust_cache) if checksum else None
    except FileNotFoundError:
        raise ArtifactError(f"{label}: file is missing") from None
    except PermissionError as exc:
        raise ArtifactError(f"{label}: cannot read {path}: {exc.strerror}") from None
    if got is not None:
        raise ArtifactError(f"{label}: checksum {got} differs from the recorded "
                            f"{row['checksum']}{_schema_hint(path, expected, subset)}")
    if not checksum:
        _check_footer(path, label, row)
    try:
        with reading_artifacts([path]):
            actual = schema_dict(pl.read_parquet_schema(path))
    except Exception as exc:
        raise ArtifactError(f"{label}: not a readable Parquet file ({exc})") from None
    diffs = _schema_diffs(expected, actual, subset)
    if diffs:
        raise ArtifactError(f"{label}: schema differs from the registry: {diffs}")
    return path


def _check_footer(path: Path, label: str, row: dict[str, Any]) -> None:
    """For bytes no checksum vouched for: read the Parquet footer with pyarrow, which reports a
    damaged file as an exception (the engine's reader may abort the process on some), and check
    its row count against the registry's."""
    import pyarrow.parquet as pq

    try:
        rows = pq.read_metadata(path).num_rows
    except Exception as exc:
        raise ArtifactError(f"{label}: not a readable Parquet file ({exc})") from None
    if row.get("row_count") is not None and rows != row["row_count"]:
        raise ArtifactError(f"{label}: holds {rows} rows, the registry recorded "
                            f"{row['row_count']}")


def serves_some_columns(row: dict[str, Any]) -> bool:
    """Whether the artifact ``row`` may be a file with more columns than it serves: a column
    view (no transform) may share its source snapshot's file (``link_artifact_atomic``), whose
    other columns it never reads. Its recorded schema lists the columns it serves."""
    return row.get("kind") == "view" and row.get("transform") is None


def _schema_diffs(expected: dict[str, str], actual: dict[str, str], subset: bool = False) -> str:
    if subset:  # only the served columns must be there, each with its dtype
        actual = {c: t for c, t in actual.items() if c in expected}
    return "; ".join(f"{c}: registry {expected.get(c, 'absent')} vs file {actual.get(c, 'absent')}"
                     for c in sorted(set(actual) | set(expected)) if actual.get(c) != expected.get(c))


def _schema_hint(path: Path, expected: dict[str, str], subset: bool = False) -> str:
    """Why a file that failed its checksum differs, when its footer still says (a rewrite).

    Read with pyarrow, whose reader reports garbage as an exception: these bytes are known to be
    wrong, and the engine's reader may abort the process on some of them.
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq

        # from_batches, not Schema.empty_table: that one imports pandas (half a second).
        empty = pa.Table.from_batches([], schema=pq.read_schema(path))
        actual = schema_dict(pl.from_arrow(empty).schema)  # type: ignore[union-attr]
    except Exception:
        return ""
    diffs = _schema_diffs(expected, actual, subset)
    return f"; schema differs from the registry: {diffs}" if diffs else ""


_FILE_FAULTS = ("parquet", "thrift", "decompress", "out of spec", "zstd", "snappy", "lz4",
                "brotli", "gzip", "page", "footer", "magic", "buffer", "eof", "utf-8", "utf8")


def engine_read_fault(exc: BaseException) -> str | None:
    """``"<type>: <first line>"`` when ``exc`` is the engine failing on a file's bytes, else None."""
    fault = type(exc).__name__ == "PanicException"  # pyo3's, a BaseException: a Rust panic
    if isinstance(exc, pl.exceptions.ComputeError | OSError):
        text = str(exc).lower()
        fault = any(word in text for word in _FILE_FAULTS)
    if not fault:
        return None
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


@contextmanager
def reading_artifacts(paths: Sequence[Path | str]) -> Iterator[None]:
    """Turn an engine failure while reading these files into ``ArtifactError`` naming them.

    Files are checked against their checksums before they are read, so this is the last line:
    a file changed under a running read, or a reader bug. A Rust panic (pyo3's
    ``PanicException`` derives from ``BaseException``) never reaches the user as a traceback.
    """
    try:
        yield
    except FeatureStoreError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        fault = engine_read_fault(exc)
        if fault is None:
            raise
        names = ", ".join(str(p) for p in paths)
        raise ArtifactError(f"reading {names} failed ({fault}); the file may be damaged: run "
                            "`featurestore doctor`") from None


def temp_files(root: Path) -> list[Path]:
    """Temporary files left by interrupted writes (safe to delete: never registered)."""
    data = root / "data"
    return sorted(data.rglob(f"{TMP_PREFIX}*")) if data.exists() else []
