"""featurestore: a plugin-based, leakage-safe feature store.

The public names below are imported on first use, not with the package: ``import featurestore``
stays cheap, so the command line reaches its Ctrl-C handling (exit 130, "Aborted.") before
polars and SQLAlchemy load.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from featurestore.errors import (
    ArtifactError,
    DataError,
    DefinitionError,
    FeatureStoreError,
    LeakageError,
    NotFoundError,
    PluginError,
)

if TYPE_CHECKING:
    from featurestore.definitions import (
        Definitions,
        Entity,
        Feature,
        FeatureSet,
        Fill,
        Source,
        View,
    )
    from featurestore.hookspecs import hookimpl
    from featurestore.store import FeatureStore
    from featurestore.tiers import Tier
    from featurestore.transforms import Transform, TransformContext

__version__ = "0.1.0"

_LAZY = {
    **dict.fromkeys(("Definitions", "Entity", "Feature", "FeatureSet", "Fill", "Source", "View"),
                    "featurestore.definitions"),
    "hookimpl": "featurestore.hookspecs",
    "FeatureStore": "featurestore.store",
    "Tier": "featurestore.tiers",
    "Transform": "featurestore.transforms",
    "TransformContext": "featurestore.transforms",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'featurestore' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ArtifactError",
    "DataError",
    "DefinitionError",
    "Definitions",
    "Entity",
    "Feature",
    "FeatureSet",
    "FeatureStore",
    "FeatureStoreError",
    "Fill",
    "LeakageError",
    "NotFoundError",
    "PluginError",
    "Source",
    "Tier",
    "Transform",
    "TransformContext",
    "View",
    "__version__",
    "hookimpl",
]
