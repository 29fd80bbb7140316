"""The online store: the latest feature values per entity, served in-process and over HTTP.

``publish`` copies views' artifacts into an online backend (embedded SQLite by default, Redis by
URL), ``OnlineReader`` serves them under the retrieval contract (tier, availability, TTL,
verification), falling back to the artifacts where the online copy cannot answer. The Python
entry point stays ``FeatureStore.get_online_features``; docs/online.md describes the design.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from featurestore.online.base import (
    NOT_FOUND,
    NULL_VALUE,
    OUTSIDE_MAX_AGE,
    PRESENT,
    OnlineBackend,
    ViewMeta,
)
from featurestore.online.lookup import OnlineReader, OnlineResult
from featurestore.online.publishing import (
    ONLINE_STORE_ENV,
    ONLINE_STORE_SETTING,
    PublishResult,
    online_store_url,
    open_backend,
    publish,
    published_artifact_ids,
    unpublish,
)

if TYPE_CHECKING:
    from featurestore.store import FeatureStore

__all__ = [
    "NOT_FOUND",
    "NULL_VALUE",
    "ONLINE_STORE_ENV",
    "ONLINE_STORE_SETTING",
    "OUTSIDE_MAX_AGE",
    "PRESENT",
    "OnlineBackend",
    "OnlineReader",
    "OnlineResult",
    "PublishResult",
    "ViewMeta",
    "online_store_url",
    "open_backend",
    "publish",
    "published_artifact_ids",
    "reader_for",
    "unpublish",
]


def reader_for(store: FeatureStore) -> OnlineReader:
    """The store's reader, created on first use and kept until ``store.close()``."""
    reader: OnlineReader | None = getattr(store, "_online_reader", None)
    if reader is None:
        reader = OnlineReader(store, open_backend(store))
        store._online_reader = reader  # type: ignore[attr-defined]
    return reader
