"""The one SparkSession the spark engine uses, and the Arrow bridge to and from Polars.

The master comes from ``FEATURESTORE_SPARK_MASTER`` (default ``local[*]``). The session is
created on first use and reused by every later call (a JVM start takes seconds); a session the
caller already created (``SparkSession.builder...getOrCreate()`` with their own settings, e.g.
object-storage credentials) is the one used, as ``getOrCreate`` returns it. Times are handled
in UTC whatever the machine's zone: ``spark.sql.session.timeZone`` is set to UTC.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import polars as pl

MASTER_ENV = "FEATURESTORE_SPARK_MASTER"
DEFAULT_MASTER = "local[*]"

_lock = threading.Lock()


def spark_session() -> Any:
    """The engine's ``SparkSession`` (created on the first call, then reused)."""
    from pyspark.sql import SparkSession

    with _lock:
        active = SparkSession.getActiveSession()
        if active is not None:
            _configure(active)
            return active
        master = os.environ.get(MASTER_ENV, "").strip() or DEFAULT_MASTER
        builder = (SparkSession.builder.master(master).appName("featurestore")
                   .config("spark.sql.session.timeZone", "UTC")
                   .config("spark.sql.execution.arrow.pyspark.enabled", "true")
                   .config("spark.ui.showConsoleProgress", "false"))
        if master.startswith("local"):
            # Python workers run this interpreter (with featurestore and polars), not whatever
            # `python3` is first on PATH; on a cluster PYSPARK_PYTHON names the executors' one.
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            # Small local jobs: few shuffle partitions, no web UI port to collide on.
            builder = (builder.config("spark.ui.enabled", "false")
                       .config("spark.sql.shuffle.partitions", "8")
                       .config("spark.driver.memory", os.environ.get(
                           "FEATURESTORE_SPARK_DRIVER_MEMORY", "2g")))
        session = builder.getOrCreate()
        session.sparkContext.setLogLevel("ERROR")
        _configure(session)
        return session


def _configure(session: Any) -> None:
    # Instants compare and print in UTC; Parquet timestamps are written as INT64 microseconds,
    # the artifacts' layout, so Polars reads what Spark wrote and the other way round.
    session.conf.set("spark.sql.session.timeZone", "UTC")
    session.conf.set("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
    # Nanosecond timestamps (which Spark has no type for) read as their Int64 count; retrieval
    # casts feature columns back to their Polars dtype, so such a value survives exactly.
    session.conf.set("spark.sql.legacy.parquet.nanosAsLong", "true")


def to_spark(frame: pl.DataFrame) -> Any:
    """A Polars frame as a Spark DataFrame (through Arrow; unsigned integers widened to signed,
    which Spark has no type for)."""
    casts = {c: _signed(d) for c, d in frame.schema.items() if _signed(d) != d}
    if casts:
        frame = frame.cast(casts)  # type: ignore[arg-type]
    session = spark_session()
    if frame.width == 0:
        return session.range(0)
    return session.createDataFrame(frame.to_arrow())


def _signed(dtype: pl.DataType) -> pl.DataType:
    return {pl.UInt8: pl.Int16, pl.UInt16: pl.Int32, pl.UInt32: pl.Int64,
            pl.UInt64: pl.Int64}.get(dtype, dtype)  # type: ignore[call-overload]


def to_polars(frame: Any) -> pl.DataFrame:
    """Collect a Spark DataFrame to Polars through Arrow (the last step of a Spark job)."""
    table = frame.toArrow()
    out = pl.from_arrow(table)
    assert isinstance(out, pl.DataFrame)
    return out


def arrow_caster(schema: Any) -> Any:
    """A function casting an Arrow table (from Polars: large strings and lists) to the Arrow
    types of the Spark schema ``schema``, which is what ``applyInArrow`` must return."""
    from pyspark.sql.pandas.types import to_arrow_schema

    target = to_arrow_schema(schema, timezone="UTC")

    def cast(table: Any) -> Any:
        return table.select(target.names).cast(target)

    return cast


def raise_worker_error(exc: BaseException) -> None:
    """Re-raise a featurestore error a Python worker raised (Spark wraps it in a
    ``PythonException`` holding the worker's traceback) as itself; return if it is none."""
    import re

    from featurestore import errors

    found = re.findall(r"featurestore\.errors\.(\w+): (.*)", str(exc))
    if found:
        name, message = found[-1]
        cls = getattr(errors, name, None)
        if isinstance(cls, type) and issubclass(cls, errors.FeatureStoreError):
            raise cls(message) from None
