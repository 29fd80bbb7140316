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
    TMP_PREFIX,
    WrittenArtifact,
    atomic_artifact_file,
    schema_dict,
)
from featurestore.checksums import file_checksum

_CODECS = {"uncompressed": "none"}


def write_artifact(root: Path, relative: str | Path, frame: Any, *, compression: str = "lz4",
                   time_column: str | None = None) -> WrittenArtifact:
    """Write the Spark DataFrame ``frame`` (in its current order) to ``root/relative``
    atomically and describe the result."""
    with atomic_artifact_file(root, relative, compression) as (tmp, final):
        tmpdir = final.parent / f"{TMP_PREFIX}{uuid.uuid4().hex}"
        try:
            (frame.coalesce(1).write.mode("errorifexists")
             .option("compression", _CODECS.get(compression, compression))
             .parquet(tmpdir.as_uri()))
            [part] = [p for p in tmpdir.iterdir() if p.suffix == ".parquet"
                      and not p.name.startswith((".", "_"))] or [None]
            if part is None:  # an empty frame may leave no part file: write its schema
                pl.DataFrame(schema=_polars_schema(frame)).write_parquet(
                    tmp, compression=compression)
            else:
                os.replace(part, tmp)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        checksum = file_checksum(tmp)
    size = final.stat().st_size
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
