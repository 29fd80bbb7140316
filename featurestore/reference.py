"""Snapshots by reference: a sorted index of the source's rows, values read from its files.

A snapshot normally holds a sorted copy of every source row (``copy`` layout). Under the
``snapshot_layout`` setting ``reference`` (``FEATURESTORE_SNAPSHOT_LAYOUT`` overrides it per
process), a source with no fills that no transform view reads is ingested as an **index**: the
key columns, ``event_timestamp`` and ``available_at`` of every validated row, in retrieval
order, plus ``__fs_source_row``, the row's position in the concatenation of the source's files
(read in ``resolve_files`` order). Under the memory limit an index may be bucketed like a copy
(``index_buckets``); its parts are searched one by one (``retrieval_buckets``). The value
columns stay in the source's own files; the snapshot's registry row lists those files with
their sha256, size and row count (``params.reference``). Setup then reads, checks, sorts and writes only the narrow columns,
which is what makes the first training frame cheap.

What the contract keeps: every read checks the referenced files' checksums first, exactly as an
artifact's own (the per-user cache of verified checksums applies), so a value is served only
from the bytes the snapshot was validated on; a source file changed, moved or deleted after
ingest makes the snapshot unreadable with an error naming the file, and ``ingest`` takes a new
snapshot. Unlike a copy, a snapshot by reference does not outlive its source files: keep
``copy`` where older snapshots must stay readable after the source is rewritten.

Readers see the same rows either way: ``artifact_frame`` joins the index to the values by
source row; the eager retrieval engine and online lookups search the index and fetch only the
matched rows' values (``Reference``). Transforms never read an index: a source that a
transform view reads, or that has fills, is snapshotted as a copy (so is one with a column
named ``__fs_source_row``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from featurestore.errors import ArtifactError

SOURCE_ROW = "__fs_source_row"  # an unsigned integer: Polars' row index type
LAYOUT_ENV = "FEATURESTORE_SNAPSHOT_LAYOUT"
LAYOUTS = ("copy", "reference")


def check_layout(value: str, *, what: str) -> str:
    """``value`` as a layout name, or a ``DefinitionError`` naming ``what``."""
    from featurestore.settings import one_of

    return one_of(value, LAYOUTS, what=what, noun="snapshot layout")


def snapshot_layout(settings: Mapping[str, str | None]) -> str:
    """The layout of the next snapshot: the environment's, else the store's setting, else
    ``copy``."""
    from featurestore.settings import resolved

    return resolved(settings, "snapshot_layout", LAYOUT_ENV, LAYOUTS, "copy", "snapshot layout")


def reference_of(row: Mapping[str, Any]) -> dict[str, Any] | None:
    """An artifact's ``params.reference`` (its source files and value columns), or None for an
    artifact that holds its values."""
    params = row.get("params") or {}
    return params.get("reference") if isinstance(params, dict) else None


def reference_params(files: Sequence[str], sums: Mapping[str, str],
                     columns: Sequence[str]) -> dict[str, Any]:
    """``params.reference`` for an index over ``files`` (their checksums in ``sums``)."""
    import pyarrow.parquet as pq

    listed = []
    for f in files:
        p = Path(f).resolve()
        listed.append({"path": str(p), "checksum": sums[f], "size": p.stat().st_size,
                       "rows": pq.read_metadata(p).num_rows})
    return {"files": listed, "columns": list(columns)}


# Peak memory of building an index over the bytes of its rows: the rows are narrow, so the
# sort's per-row structures weigh more than in a copy's (buckets.WORKING_FACTOR). Measured
# 2026-12-01: 50M rows (28 bytes each, 1.40 GB) in one bucket peaked at 4.04 GB.
INDEX_FACTOR = 3.0


_WIDTHS = ((pl.Boolean, 1), (pl.Int8, 1), (pl.UInt8, 1), (pl.Int16, 2), (pl.UInt16, 2),
           (pl.Int32, 4), (pl.UInt32, 4), (pl.Float32, 4), (pl.Int64, 8), (pl.UInt64, 8),
           (pl.Float64, 8), (pl.Int128, 16), (pl.UInt128, 16))


def _width(dtype: pl.DataType) -> int | None:
    """Bytes a value of ``dtype`` takes in memory; None for variable widths (strings)."""
    physical = pl.Series([], dtype=dtype).to_physical().dtype
    return next((w for d, w in _WIDTHS if physical == d), None)


def index_buckets(files: Sequence[str], keys: Sequence[str], settings: Mapping[str, str | None]
                  ) -> int:
    """How many buckets building the index of ``files`` takes under the memory limit (as
    ``buckets.bucket_count`` for a copy): an index row holds the ``keys`` (their dtype's width,
    or for strings and other variable widths their size in the Parquet footers), two times of
    8 bytes and a 4-byte source row number."""
    import math

    import pyarrow.parquet as pq

    from featurestore.buckets import BUCKETS_ENV, bucket_count, memory_limit

    if os.environ.get(BUCKETS_ENV, "").strip():
        return bucket_count(files, dict(settings))  # checks and returns the forced count
    limit = memory_limit(dict(settings))
    if limit is None:
        return 1
    schema = pl.read_parquet_schema(files[0])
    widths = {k: _width(schema[k]) for k in keys}
    per_row = 8 + 8 + 4 + sum(w for w in widths.values() if w is not None)
    varying, total = {k for k, w in widths.items() if w is None}, 0
    for f in files:
        try:
            meta = pq.read_metadata(f)
        except Exception:
            continue  # unreadable: reading the source reports it, naming the file
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            total += group.num_rows * per_row + sum(
                group.column(c).total_uncompressed_size for c in range(group.num_columns)
                if group.column(c).path_in_schema in varying)
    return max(1, math.ceil(total * INDEX_FACTOR / limit))


def verify_referenced(ref: Mapping[str, Any], label: str, expected: Mapping[str, str], *,
                      checksum: bool = True, trust_cache: bool = True) -> None:
    """Check the files an index refers to: there, of their recorded size and checksum, with
    the value columns and dtypes of the registry's schema (``expected``); else ``ArtifactError``
    naming the file. Nothing of a file is read by the engine before its checksum matched."""
    from featurestore.artifacts import reading_artifacts, schema_dict
    from featurestore.checksums import checksum_mismatch

    for f in ref["files"]:
        path = Path(f["path"])
        gone = (f"{label}: its source file {path} {{}} since the snapshot was taken; run "
                "`featurestore ingest` to take a new one")
        try:
            size = path.stat().st_size
            if size != f["size"]:
                raise ArtifactError(gone.format(f"changed ({size} bytes, {f['size']} then)"))
            got = checksum_mismatch(path, f["checksum"], trust_cache=trust_cache) if checksum else None
        except FileNotFoundError:
            raise ArtifactError(gone.format("is missing")) from None
        except PermissionError as exc:
            raise ArtifactError(f"{label}: cannot read its source file {path}: "
                                f"{exc.strerror}") from None
        if got is not None:
            raise ArtifactError(gone.format(f"changed (checksum {got}, {f['checksum']} then)"))
    first = Path(ref["files"][0]["path"])
    with reading_artifacts([first]):
        actual = schema_dict(pl.read_parquet_schema(first))
    wrong = [f"{c!r}: {actual.get(c, 'absent')}, expected {expected[c]}"
             for c in ref["columns"] if c in expected and actual.get(c) != expected[c]]
    if wrong:
        raise ArtifactError(f"{label}: its source file {first} no longer has the snapshot's "
                            f"value columns ({'; '.join(wrong)})")


def index_schema(expected: Mapping[str, str], ref: Mapping[str, Any]) -> dict[str, str]:
    """What an index file holds of the registry's schema: every column but the values."""
    return {c: t for c, t in expected.items() if c not in ref["columns"]}


@dataclass(frozen=True)
class Reference:
    """An index's two halves for a reader that fetches few rows: ``index`` (keys, times,
    ``__fs_source_row``, in the artifact's order), ``values`` (the value columns in source
    order) and ``files``, the source files with their row counts, in source order."""

    index: pl.LazyFrame
    values: pl.LazyFrame
    files: tuple[tuple[str, int], ...]

    def fetch(self, index_rows: pl.Series, columns: Sequence[str]
              ) -> tuple[pl.DataFrame, pl.Series]:
        """The ``columns`` of the given index rows (ascending positions in ``index``): a frame
        in source order, read in one pass over the source files that keeps only those rows,
        and for each asked row its row in that frame (so the caller gathers once)."""
        own = [c for c in columns if c in self.index.collect_schema()]
        if own:  # an index column asked for as a feature (a time): read it from the index
            rows = self.index.select(*own, SOURCE_ROW).collect().gather(index_rows)
            rest = [c for c in columns if c not in own]
            values = [self.values_at(rows.get_column(SOURCE_ROW), rest)] if rest else []
            got = pl.concat([rows.select(own), *values], how="horizontal").select(columns)
            return got, pl.int_range(index_rows.len(), dtype=pl.UInt32, eager=True)
        at = self.index.select(SOURCE_ROW).collect().to_series().gather(index_rows)
        got = self._read(at, columns)
        # got is in source order: the k-th asked row is at got's rank of at[k].
        rank = pl.repeat(0, at.len(), dtype=pl.UInt32, eager=True).scatter(
            at.arg_sort(), pl.int_range(at.len(), dtype=pl.UInt32, eager=True))
        return got, rank

    def values_at(self, source_rows: pl.Series, columns: Sequence[str]) -> pl.DataFrame:
        """The value ``columns`` at the given source positions (nulls give null rows), in
        that order: one streaming pass over the source files keeping only those rows.
        ``columns`` is not empty."""
        uniq = source_rows.drop_nulls().unique().sort()
        got = self._read(uniq, columns)
        if got.height == 0:
            return got.clear(source_rows.len())  # every row null
        # got is in source order, that is uniq's: a row's values are at its dense rank among
        # the asked rows (a sort of the asked rows: 0.35 s for 5M, against 1.2 s searching).
        pos = (source_rows.rank("dense") - 1).cast(pl.UInt32)
        matched = source_rows.is_not_null()
        # Column by column, rechunked first (the scan gives a chunk per row group, and gathers
        # across 500 chunks took 3.1 s for 5M rows' 10 columns against 0.7 s).
        out = []
        for c in columns:
            col = got.get_column(c).rechunk().gather(pos.fill_null(0))
            got = got.drop(c)
            out.append(pl.select(pl.when(matched).then(col)).to_series().alias(c))
        return pl.DataFrame(out)

    def _read(self, rows: pl.Series, columns: Sequence[str]) -> pl.DataFrame:
        """The value ``columns`` of the distinct source positions ``rows``, in source order.

        Each row group holding an asked row is read whole (its columns decoded in parallel by
        pyarrow) and cut to those rows at once, so memory holds one row group and the rows
        kept. Source files are the user's, often zstd with dictionary pages: pyarrow decoded
        the benchmark's 10 value columns of 10M rows this way in 1.18-1.83 s, against
        1.80-1.84 s for the row mask over a polars streaming scan that this replaced (a noisy
        machine: the gain is not certain, the bounded memory is)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        wanted = np.sort(rows.cast(pl.Int64).to_numpy())
        schema = self.values.select(columns).collect_schema()
        pieces = []
        start = 0
        for path, n_file in self.files:
            lo, hi = np.searchsorted(wanted, [start, start + n_file])
            if hi > lo:
                parquet = pq.ParquetFile(path)
                at = start
                for g in range(parquet.metadata.num_row_groups):
                    n = parquet.metadata.row_group(g).num_rows
                    a, b = np.searchsorted(wanted, [at, at + n])
                    if b > a:
                        table = parquet.read_row_group(g, columns=list(columns))
                        piece = pl.from_arrow(table.take(pa.array(wanted[a:b] - at)))
                        assert isinstance(piece, pl.DataFrame)
                        # pyarrow may read a logical type unlike polars (a time unit, say):
                        # values are served in the dtypes polars' own scan gives.
                        pieces.append(piece if piece.schema == schema else piece.cast(dict(schema)))
                    at += n
            start += n_file
        got = pl.concat(pieces) if pieces else pl.DataFrame(schema=schema)
        if got.height != rows.len():
            raise ArtifactError(f"source files returned {got.height} of {rows.len()} rows "
                                "asked for; the index does not match them")
        return got


def reference(root: Path, row: Mapping[str, Any]) -> Reference | None:
    """The halves of an index artifact (already verified), or None for a copy."""
    from featurestore.artifacts import artifact_files

    ref = reference_of(row)
    if ref is None:
        return None
    index = pl.scan_parquet(artifact_files(root, dict(row)))
    values = pl.scan_parquet([f["path"] for f in ref["files"]]).select(ref["columns"])
    return Reference(index, values, tuple((f["path"], int(f["rows"])) for f in ref["files"]))


def artifact_frame(root: Path, row: Mapping[str, Any]) -> pl.LazyFrame:
    """An artifact's rows (already verified) as a lazy frame of the columns it serves, in its
    order, whatever its layout: the files scanned, or an index joined to its source values."""
    from featurestore.artifacts import artifact_files

    columns = list(row["schema"])
    ref = reference(root, row)
    if ref is None:
        return pl.scan_parquet(artifact_files(root, dict(row))).select(columns)
    r = "__fs_r"
    values = ref.values.with_row_index(r).with_columns(pl.col(r).cast(pl.UInt64))
    return (ref.index.with_columns(pl.col(SOURCE_ROW).cast(pl.UInt64))
            .join(values, left_on=SOURCE_ROW, right_on=r, how="left", maintain_order="left")
            .select(columns))
