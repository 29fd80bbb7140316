"""Entity-hash buckets: ingest and materialize within a memory limit.

Under the memory limit (the ``memory_limit`` setting, or ``FEATURESTORE_MEMORY_LIMIT`` for one
process) a source whose rows would not fit is ingested in buckets: one streaming pass splits
its rows by a hash of the entity keys into ``n`` temporary files, then each bucket is read,
validated, sorted and written as one part of a *bucketed artifact* (a directory of part files,
``featurestore.artifacts.write_parts_atomic``), so only one bucket is in memory at a time. Each
entity lives in exactly one bucket, and each part is sorted like a whole snapshot, so the
concatenation of the parts keeps every entity's rows contiguous and in order: what retrieval
needs (``featurestore.artifacts.artifact_files`` lists the parts in order). A column view of a
bucketed snapshot is materialized part by part the same way, and retrieval joins a bucketed
view part by part, eagerly (``featurestore.retrieval_buckets``) and in the lazy plan.

A transform view of a bucketed snapshot is computed bucket by bucket and written as a bucketed
view (``featurestore.materialize_buckets``): an entity-scope transform part by part; a
group-scope one per *group bucket* (the rows re-split by a hash of its group columns, the output
re-split by entity hash into the view's parts). Each call is checked and verified on its own
rows. Re-ingesting keeps the bucket count while it suffices (``stable_count``), so that bucket i
keeps its entities and a view is rebuilt from the changed parts only (unchanged parts are
carried over as hard links).

What stays whole: one entity's rows (a bucket holds whole entities), one group's rows for a
group-scope transform, and a group-scope transform without group columns (one group: every row).
Small sources keep one file, as before: below the limit, which without a setting is a quarter of
the machine's memory and at most 2 GiB (``none``: no limit). See docs/memory.md.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from featurestore.errors import DefinitionError

if TYPE_CHECKING:
    from featurestore.store import FeatureStore

MEMORY_ENV = "FEATURESTORE_MEMORY_LIMIT"
# For tests and experiments: force this many buckets whatever the sizes (1: never bucket).
BUCKETS_ENV = "FEATURESTORE_BUCKETS"
BUCKET = "__fs_bucket"
ROW = "__fs_ingest_row"
# Peak memory of ingesting a bucket, in multiples of its rows' in-memory size: the rows (sorted
# in place, column by column: featurestore.packedsort), the sort key and permutation, the
# checks' narrow copy and the writer's buffers. Measured 2026-12-01 (benchmarks/pit.py M,
# 10M rows estimated at 1.04 GB, one file): peak RSS 1.90 GB, the interpreter included.
WORKING_FACTOR = 1.8
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_bytes(text: str, *, what: str) -> int:
    """``"2GiB"``, ``"512 MB"``, ``"1e9"`` -> bytes; a ``DefinitionError`` naming ``what`` else."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?(?:e[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if m is None or unit not in _UNITS or float(m.group(1)) <= 0:
        raise DefinitionError(f"{what}: {text!r} is not a memory size; write it like 2GiB, "
                              "512MiB or 4GB")
    return int(float(m.group(1)) * _UNITS[unit])


# Said instead of a size: no limit, every artifact one file (the behaviour before limits).
NO_LIMIT = "none"
# Without a setting, a quarter of this machine's memory and at most 2 GiB. The cap because
# bigger buckets buy nothing: at 50M rows (benchmarks/pit.py L, 2026-12-01) setup took 46.07 s
# with a 7.09 GiB peak in 3 buckets under a 6 GiB limit, and 42.76 s with a 2.90 GiB peak in 8
# buckets under 2 GiB; at 10M rows 2 buckets cost 9.78 s against 8.94 s for one file.
DEFAULT_SHARE = 4
DEFAULT_CAP = 2 * 2**30


def default_memory_limit() -> int | None:
    """A quarter of physical memory, at most 2 GiB; None where the platform does not say."""
    try:
        ram = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return min(ram // DEFAULT_SHARE, DEFAULT_CAP)


def memory_limit(settings: dict[str, str | None]) -> int | None:
    """The memory limit in bytes: the environment's, else the store's setting, else a quarter
    of physical memory at most 2 GiB; None (no limit) when the one that applies says ``none``."""
    env = os.environ.get(MEMORY_ENV, "").strip()
    value = env or settings.get("memory_limit")
    if value is None:
        return default_memory_limit()
    if value.strip().lower() == NO_LIMIT:
        return None
    return parse_bytes(value, what=MEMORY_ENV if env else "setting memory_limit")


def estimated_bytes(files: Sequence[str]) -> int:
    """The in-memory size of the files' rows, from their Parquet footers (no data read)."""
    import pyarrow.parquet as pq

    total = 0
    for f in files:
        try:
            meta = pq.read_metadata(f)
        except Exception:
            continue  # unreadable: reading the source reports it, naming the file
        total += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return total


def bucket_count(files: Sequence[str], settings: dict[str, str | None]) -> int:
    """How many buckets ingesting ``files`` needs to stay within the memory limit (1: none)."""
    forced = os.environ.get(BUCKETS_ENV, "").strip()
    if forced:
        if not forced.isdigit() or int(forced) < 1:
            raise DefinitionError(f"{BUCKETS_ENV}: expected a whole number >= 1, got {forced!r}")
        return int(forced)
    limit = memory_limit(settings)
    if limit is None:
        return 1
    return max(1, math.ceil(estimated_bytes(files) * WORKING_FACTOR / limit))


def bucket_expr(keys: Sequence[str], n: int) -> pl.Expr:
    """Which of ``n`` buckets a row's entity falls in (the same for every row of an entity)."""
    return (pl.struct([pl.col(k) for k in keys]).hash(seed=0) % n).cast(pl.UInt32)


def source_buckets(store: FeatureStore, src: dict[str, Any]) -> int:
    """How many buckets ingesting the source ``src`` (a registry row) takes: enough for the
    memory limit, and the previous snapshot's count while that is enough (``stable_count``)."""
    from featurestore.artifacts import artifact_parts
    from featurestore.plan import absolute_source_path
    from featurestore.sourcedata import resolve_files

    needed = bucket_count(resolve_files(absolute_source_path(src["path"], store.root)),
                          store.settings())
    if os.environ.get(BUCKETS_ENV, "").strip():
        return needed  # forced
    previous = store.registry.latest_artifact("source", src["name"])
    return stable_count(needed, len(artifact_parts(previous)) if previous else 0)


# A previous bucket count is kept while it is at most this many times the count needed.
STABLE_SPREAD = 4


def stable_count(needed: int, previous: int) -> int:
    """The bucket count for a snapshot that needs ``needed`` buckets when the previous one had
    ``previous`` parts (0 or 1: one file). Bucket i holds the same entities as long as the
    count stays, which lets a re-ingested source's views be rebuilt incrementally (only the
    buckets whose rows changed: ``featurestore.materialize_buckets``). So the previous count is
    kept while it suffices and is not ``STABLE_SPREAD`` times more than needed; outgrown, it at
    least doubles, so a growing source changes its count a logarithmic number of times."""
    if previous <= 1:
        return needed
    if needed <= previous <= STABLE_SPREAD * needed:
        return previous
    return max(needed, 2 * previous) if needed > previous else needed


@contextmanager
def bucketed_source(store: FeatureStore, name: str, n: int, *, order: str = "event",
                    narrow: Callable[[pl.LazyFrame], pl.LazyFrame] | None = None,
                    source_rows: str | None = None) -> Iterator[Iterator[pl.DataFrame] | None]:
    """The source's validated snapshot rows bucket by bucket (None when ``n`` is 1: read it
    whole), each in ``order`` (``sourcedata.snapshot_rows``). The source is read once,
    streaming, into per-bucket temporary files under ``data/``, which are gone when this
    exits. ``narrow`` maps the source's rows (store layout) to the columns to keep, and
    ``source_rows`` names a column to keep each row's position in the source in (an index
    keeps keys, times and those: ``featurestore.reference``)."""
    if n <= 1:
        yield None
        return
    from featurestore.sourcedata import snapshot_rows, source_read_errors

    lf, src, keys, path = store.source_frame(name)
    if narrow is not None:
        lf = narrow(lf)
    workdir = workdir_for(store.root)
    # Deleting a big file can take as long as writing it on some file systems: a thread
    # deletes each bucket's files while the next bucket is sorted and written.
    reaper = ThreadPoolExecutor(1, thread_name_prefix="featurestore-unlink")
    try:
        with source_read_errors(path, name):
            files = split(lf, keys, n, workdir)
            empty = lf.with_row_index(ROW).clear().collect()

        def prepare(frame: pl.DataFrame) -> pl.DataFrame:
            rows = snapshot_rows(frame, src, path=path, keys=keys, order=order, row_column=ROW,
                                 keep_rows=source_rows is not None)
            return rows if source_rows is None else rows.rename({ROW: source_rows})

        yield (prepare(read_bucket(f, empty, reaper)) for f in files)
    finally:
        reaper.shutdown(wait=True)
        shutil.rmtree(workdir, ignore_errors=True)


def split(lf: pl.LazyFrame, keys: Sequence[str], n: int, workdir: Path) -> list[list[Path]]:
    """Stream ``lf`` once into Parquet files per bucket under ``workdir``; each row keeps its
    position in ``lf`` in a ``ROW`` column (the order rows were read: ties and error messages
    refer to it). Returns each bucket's files (none for a bucket without rows)."""
    workdir.mkdir(parents=True)

    def name(args: Any) -> Path:
        return workdir / f"{args.partition_keys[0, 0]}-{args.index_in_partition:06d}.parquet"

    (lf.with_row_index(ROW).with_columns(bucket_expr(keys, n).alias(BUCKET))
     .sink_parquet(pl.PartitionBy(workdir, key=BUCKET, include_key=False,
                                  file_path_provider=name, approximate_bytes_per_file=None),
                   # Temporary, read back once: fast compression, no statistics.
                   compression="lz4", statistics=False, mkdir=True, engine="streaming"))
    return [sorted(workdir.glob(f"{b}-*.parquet")) for b in range(n)]


def read_bucket(files: Sequence[Path], empty: pl.DataFrame,
                reaper: Executor | None = None) -> pl.DataFrame:
    """One bucket's rows (``empty`` when it has none); its files are deleted once read (by
    ``reaper`` when given, else before this returns)."""
    frame = pl.concat([pl.read_parquet(f) for f in files]) if files else empty
    for f in files:
        if reaper is None:
            f.unlink(missing_ok=True)
        else:
            reaper.submit(f.unlink, missing_ok=True)
    return frame


def workdir_for(root: Path) -> Path:
    """A temporary directory under ``data/`` (``doctor`` removes it if a crash leaves it)."""
    from featurestore.artifacts import TMP_PREFIX

    return root / "data" / f"{TMP_PREFIX}{uuid.uuid4().hex}"
