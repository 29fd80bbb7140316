"""Exceptions raised by featurestore.

Every error carries a one-line message that names the object at fault (file, column, feature,
plugin) and what was expected; the CLI prints ``str(error)`` and exits non-zero.
"""

from __future__ import annotations


class FeatureStoreError(Exception):
    """Base class of every error featurestore raises on purpose."""

    exit_code = 1


class LeakageError(FeatureStoreError):
    """A value could become visible before it was available (tier contract or causality)."""

    exit_code = 3


class DefinitionError(FeatureStoreError):
    """A definitions file or API declaration is invalid (syntax, unknown reference, clash)."""

    exit_code = 2


class DataError(FeatureStoreError):
    """Input data does not match what its source declares (missing column, dtype, nulls...)."""

    exit_code = 4


class ArtifactError(FeatureStoreError):
    """An artifact is missing, outside the store, or differs from what the registry recorded."""

    exit_code = 5


class PluginError(FeatureStoreError):
    """A plugin failed to load, clashed with another, or broke the transform contract."""

    exit_code = 6


class NotFoundError(FeatureStoreError):
    """A named entity, source, feature, view, artifact or feature set is not registered."""

    exit_code = 7


class UsageError(FeatureStoreError):
    """A command-line option or argument has a value that cannot be used (format, type, path,
    a registry URL that is not a URL)."""

    exit_code = 2


class DataWarning(UserWarning):
    """Input that is accepted but probably not what was meant (null keys, an assumed time zone)."""


class DeletedError(NotFoundError):
    """The object was registered once but has been deleted (``featurestore delete``)."""


class DependentsError(DefinitionError):
    """A delete was refused because other registered objects depend on the object.

    ``dependents`` lists them (what ``cascade=True`` would delete too).
    """

    def __init__(self, message: str, dependents: list[object] | None = None) -> None:
        super().__init__(message)
        self.dependents = dependents or []


class StoreMismatchError(UsageError):
    """The registry opened is not the store's own: its store id differs from the store root's.

    Exit code 2 (usage): the fix is to point ``--store`` and ``--registry`` at the same store.
    """


class NoStoreError(NotFoundError):
    """There is no store at the root given (a read verb never creates one)."""


class ReadOnlyStoreError(FeatureStoreError):
    """A write was asked of a store (registry or folder) this user can only read."""

    exit_code = 1
