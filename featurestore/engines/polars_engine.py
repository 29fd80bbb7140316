"""The default engine, ``polars``: the store's own single-machine code, registered as a plugin.

Nothing here computes anything: each method is the code path the store always had (ingest in
``featurestore.store``/``featurestore.sourcedata``, ``featurestore.materialize``, the eager join in
``featurestore.retrieval``). It is registered through ``register_engines`` like any
third-party engine, from this built-in plugin module.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurestore.hookspecs import hookimpl

if TYPE_CHECKING:
    import polars as pl

    from featurestore.artifacts import WrittenArtifact
    from featurestore.materialize import MaterializeResult
    from featurestore.retrieval import ViewFrame
    from featurestore.store import FeatureStore


class PolarsEngine:
    """Polars on one machine: the default engine."""

    name = "polars"

    def read_source(self, store: FeatureStore, source: str) -> pl.DataFrame:
        return store.read_source(source)

    def write_artifact(self, root: Path, relpath: str, frame: pl.DataFrame, *, compression: str,
                       time_column: str | None) -> WrittenArtifact:
        from featurestore.artifacts import write_parquet_atomic

        return write_parquet_atomic(root, relpath, frame, compression=compression,
                                    time_column=time_column)

    def materialize(self, store: FeatureStore, views: Sequence[str] | None, **options: Any
                    ) -> list[MaterializeResult]:
        from featurestore.materialize import materialize_polars

        return materialize_polars(store, views, **options)

    def point_in_time_join(self, query: pl.DataFrame, views: Sequence[ViewFrame],
                           files: Sequence[Sequence[Path]], *, cutoff: str, inclusive: bool,
                           ttl: timedelta | None, cutoff_timezone: str | None,
                           with_availability: bool) -> pl.DataFrame:
        from featurestore.retrieval_buckets import point_in_time_join_parts

        return point_in_time_join_parts(query, list(views), files, cutoff=cutoff,
                                        inclusive=inclusive, ttl=ttl,
                                        cutoff_timezone=cutoff_timezone,
                                        with_availability=with_availability)


ENGINE = PolarsEngine()


@hookimpl
def register_engines(register: Any) -> None:
    register(ENGINE)
