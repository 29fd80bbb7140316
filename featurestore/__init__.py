"""featurestore: a plugin-based, leakage-safe feature store."""

from featurestore.definitions import Definitions, Entity, Feature, FeatureSet, Fill, Source, View
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
from featurestore.store import FeatureStore
from featurestore.tiers import Tier
from featurestore.transforms import Transform, TransformContext

__version__ = "0.1.0"

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
