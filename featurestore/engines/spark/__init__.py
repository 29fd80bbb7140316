"""The ``spark`` engine: the same store, past one machine (``pip install 'featurestore[spark]'``).

A built-in plugin module: it registers the engine through ``register_engines`` only when
``pyspark`` can be imported, so a store without the extra simply has no ``spark`` engine (and
asking for it says how to install it). Importing this module never imports ``pyspark``: the JVM
starts on the first call that needs it (``session.spark_session``).

What runs natively on Spark, and how, is described in the modules beside this one
(``retrieval``, ``ingest``, ``materialize``) and in ``docs/scale-out.md``.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.errors import DefinitionError
from featurestore.hookspecs import hookimpl

if TYPE_CHECKING:
    import polars as pl

    from featurestore.artifacts import WrittenArtifact
    from featurestore.materialize import MaterializeResult
    from featurestore.retrieval import ViewFrame
    from featurestore.store import FeatureStore


class SparkEngine:
    """PySpark on ``FEATURESTORE_SPARK_MASTER`` (default ``local[*]``), one session reused."""

    name = "spark"

    def read_source(self, store: FeatureStore, source: str) -> Any:
        from featurestore.engines.spark.ingest import read_source

        return read_source(store, source)

    def write_artifact(self, root: Path, relpath: str, frame: Any, *, compression: str,
                       time_column: str | None) -> WrittenArtifact:
        from featurestore.engines.spark.io import write_artifact

        return write_artifact(root, relpath, frame, compression=compression,
                              time_column=time_column)

    def materialize(self, store: FeatureStore, views: Sequence[str] | None, **options: Any
                    ) -> list[MaterializeResult]:
        from featurestore.engines.spark.materialize import materialize

        return materialize(store, views, **options)

    def point_in_time_join(self, query: pl.DataFrame, views: Sequence[ViewFrame],
                           files: Sequence[Sequence[Path]], *, cutoff: str, inclusive: bool,
                           ttl: timedelta | None, cutoff_timezone: str | None,
                           with_availability: bool) -> pl.DataFrame:
        from featurestore.engines.spark.retrieval import point_in_time_join

        for view in views:
            if view.reference is not None:
                raise DefinitionError(
                    f"view {view.name!r} is served from a snapshot by reference (setting "
                    "snapshot_layout reference), whose values Spark does not read; use the "
                    "polars engine, or take a copy: `featurestore config snapshot_layout "
                    "copy`, then `featurestore ingest --force` and `featurestore materialize`")
        return point_in_time_join(query, views, files, cutoff=cutoff, inclusive=inclusive,
                                  ttl=ttl, cutoff_timezone=cutoff_timezone,
                                  with_availability=with_availability)


ENGINE = SparkEngine()


def available() -> bool:
    """Whether pyspark is installed (checked without importing it: that is slow)."""
    return importlib.util.find_spec("pyspark") is not None


@hookimpl
def register_engines(register: Any) -> None:
    if available():
        register(ENGINE)
