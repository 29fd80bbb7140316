"""Artifacts written by Spark: the same single-file layout, atomically, described for the registry.

Spark writes a sorted frame as one part file (``coalesce(1)`` keeps a global sort's order) into a
temporary directory beside the destination; the part file is then fsynced and renamed to the
artifact's never-reused name, exactly as ``featurestore.artifacts.write_parquet_atomic`` does with
a Polars frame, so what Polars reads from a Spark-written store is the same file layout,
timestamps as INT64 microseconds (UTC-adjusted for instants).
"""

from __future__ import annotations

import os
import shutil
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from featurestore.artifacts import (
    _READ_ONLY_ERRNOS,
    TMP_PREFIX,
    WrittenArtifact,
    _fsync_dir,
    confine,
    read_only_error,
    schema_dict,
)
from featurestore.checksums import file_checksum
from featurestore.definitions import COMPRESSIONS
from featurestore.errors import ArtifactError

_CODECS = {"uncompressed": "none"}


def write_artifact(root: Path, relative: str | Path, frame: Any, *, compression: str = "zstd",
                   time_column: str | None = None) -> WrittenArtifact:
    """Write the Spark DataFrame ``frame`` (in its current order) to ``root/relative``
    atomically and describe the result."""
    if compression not in COMPRESSIONS:
        raise ArtifactError(f"compression {compression!r} is not supported; choose one of "
                            f"{', '.join(COMPRESSIONS)}")
    final = confine(root, relative)
    if final.exists():
        raise ArtifactError(f"artifact {relative} already exists; artifacts are never overwritten")
    tmpdir = final.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    tmp = final.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}.parquet"
    try:
        if not final.parent.exists():
            final.parent.mkdir(parents=True, exist_ok=True)
            _fsync_dir(final.parent.parent)
        (frame.coalesce(1).write.mode("errorifexists")
         .option("compression", _CODECS.get(compression, compression))
         .parquet(tmpdir.as_uri()))
        [part] = [p for p in tmpdir.iterdir() if p.suffix == ".parquet"
                  and not p.name.startswith((".", "_"))] or [None]
        if part is None:  # an empty frame may leave no part file: write its schema
            pl.DataFrame(schema=_polars_schema(frame)).write_parquet(tmp, compression=compression)
        else:
            os.replace(part, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        checksum = file_checksum(tmp)
        size = tmp.stat().st_size
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in _READ_ONLY_ERRNOS:
            raise read_only_error(Path(exc.filename or final.parent), exc) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    # The footer and one column: what the registry row records, read back from the file.
    scan = pl.scan_parquet(final)
    schema = scan.collect_schema()
    lo = hi = None
    if time_column and time_column in schema:
        n, lo, hi = scan.select(pl.len(), pl.col(time_column).min().alias("lo"),
                                pl.col(time_column).max().alias("hi")).collect().row(0)
        lo = lo.replace(tzinfo=None) if isinstance(lo, datetime) else None
        hi = hi.replace(tzinfo=None) if isinstance(hi, datetime) else None
    else:
        n = scan.select(pl.len()).collect().item()
    return WrittenArtifact(str(Path(relative).as_posix()), final, schema_dict(schema), n, lo, hi,
                           checksum, size, compression)


def _polars_schema(frame: Any) -> dict[str, pl.DataType]:
    table = frame.limit(0).toArrow()
    return dict(pl.from_arrow(table).schema)  # type: ignore[union-attr]
