"""featurestore: a plugin-based, leakage-safe feature store."""

from featurestore.errors import (
    ArtifactError,
    DataError,
    DefinitionError,
    FeatureStoreError,
    LeakageError,
    NotFoundError,
    PluginError,
)

from featurestore.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "DataError",
    "DefinitionError",
    "FeatureStoreError",
    "LeakageError",
    "NotFoundError",
    "PluginError",
    "__version__",
    "hookimpl",
]
