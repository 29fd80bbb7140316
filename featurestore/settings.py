"""Store-level settings: named values kept in the registry's ``store_info`` table.

Each setting is stored under the key ``setting.<name>``, so every client of a shared registry
sees the same value. Only the settings listed in ``SETTINGS`` exist; a value is checked before
it is written.

- ``default_tier``: the prediction tier online lookups use when the caller gives none. Unset by
  default, and then an online lookup without a tier is refused: serving has no safe default.
- ``memory_limit``: the memory ``ingest`` and ``materialize`` aim to stay within, such as
  ``2GiB`` (``FEATURESTORE_MEMORY_LIMIT`` overrides it per process). Unset: a quarter of the
  machine's memory, at most 2 GiB; ``none``: no limit, every artifact one file. See ``featurestore.buckets``.
- ``snapshot_layout``: ``copy`` (the default: a snapshot holds a sorted copy of its rows) or
  ``reference`` (an index of keys and times; values read from the source's own files, checked
  by checksum). ``FEATURESTORE_SNAPSHOT_LAYOUT`` overrides it per process. See
  ``featurestore.reference``.
- ``compression``: the Parquet codec of artifacts written next: ``lz4`` (the default),
  ``zstd``, ``snappy``, ``gzip``, ``brotli`` or ``uncompressed``. ``FEATURESTORE_COMPRESSION``
  overrides it per process, and ``FeatureStore(compression=...)`` overrides both. Retrieval
  decodes every value page it reads, and LZ4 decodes about five times faster than zstd (see
  docs/semantics.md, "Storage"); zstd keeps compressible data smaller on disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from featurestore.errors import DefinitionError

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from featurestore.registry import Registry

PREFIX = "setting."


def _check_tier(registry: Registry, conn: Connection, value: str) -> str:
    registry.tiers(conn).get(value, what="setting default_tier")
    return value


def _check_memory(registry: Registry, conn: Connection, value: str) -> str:
    from featurestore.buckets import NO_LIMIT, parse_bytes

    if value.strip().lower() == NO_LIMIT:
        return NO_LIMIT
    parse_bytes(value, what="setting memory_limit")
    return value.strip()


def _check_layout(registry: Registry, conn: Connection, value: str) -> str:
    from featurestore.reference import check_layout

    return check_layout(value, what="setting snapshot_layout")


def _check_compression(registry: Registry, conn: Connection, value: str) -> str:
    return check_compression(value, what="setting compression")


# name -> (description, check(registry, conn, value) -> normalized value)
SETTINGS: dict[str, tuple[str, Callable[[Registry, Connection, str], str]]] = {
    "default_tier": ("prediction tier of online lookups that name none", _check_tier),
    "memory_limit": ("memory ingest and materialize stay within, e.g. 2GiB, or none "
                     "(default: a quarter of RAM, at most 2 GiB; FEATURESTORE_MEMORY_LIMIT overrides)",
                     _check_memory),
    "snapshot_layout": ("copy (default) or reference: what the next snapshots hold "
                        "(FEATURESTORE_SNAPSHOT_LAYOUT overrides)", _check_layout),
    "compression": ("Parquet codec of the next artifacts: lz4 (default), zstd, snappy, gzip, "
                    "brotli or uncompressed (FEATURESTORE_COMPRESSION overrides)",
                    _check_compression),
}

COMPRESSION_ENV = "FEATURESTORE_COMPRESSION"
DEFAULT_COMPRESSION = "lz4"


def one_of(value: str, choices: Sequence[str], *, what: str, noun: str) -> str:
    """``value`` (trimmed, lower case) when it is one of ``choices``, else a
    ``DefinitionError`` naming ``what`` and the choices."""
    chosen = value.strip().lower()
    if chosen not in choices:
        raise DefinitionError(f"{what}: {value!r} is not a {noun}; use one of "
                              f"{', '.join(choices)}")
    return chosen


def resolved(settings: Mapping[str, str | None], name: str, env: str,
             choices: Sequence[str], default: str, noun: str) -> str:
    """A choice setting's value for this process: the environment variable ``env`` when set,
    else the store's setting ``name``, else ``default``; each checked against ``choices``."""
    if os.environ.get(env, "").strip():
        return one_of(os.environ[env], choices, what=env, noun=noun)
    value = settings.get(name)
    return one_of(value, choices, what=f"setting {name}", noun=noun) if value else default


def check_compression(value: str, *, what: str) -> str:
    """``value`` as a codec name, or a ``DefinitionError`` naming ``what``."""
    from featurestore.definitions import COMPRESSIONS

    return one_of(value, COMPRESSIONS, what=what, noun="compression")


def artifact_compression(settings: Mapping[str, str | None]) -> str:
    """The codec of the next artifact: the environment's, else the store's setting, else
    ``lz4``."""
    from featurestore.definitions import COMPRESSIONS

    return resolved(settings, "compression", COMPRESSION_ENV, COMPRESSIONS,
                    DEFAULT_COMPRESSION, "compression")


def setting_name(key: str) -> str:
    """The canonical name of a setting (``default-tier`` is ``default_tier``)."""
    name = key.strip().replace("-", "_")
    if name not in SETTINGS:
        raise DefinitionError(f"unknown setting {key!r}; settings: {', '.join(sorted(SETTINGS))}")
    return name


def read_settings(registry: Registry) -> dict[str, str | None]:
    """Every known setting with its stored value (None when unset)."""
    with registry.read() as conn:
        return {name: registry.info(PREFIX + name, conn) for name in SETTINGS}


def write_setting(registry: Registry, key: str, value: str | None) -> None:
    """Check and store one setting in a single write transaction; None removes it."""
    from featurestore.registry import Registry

    name = setting_name(key)

    def txn(conn: Connection) -> None:
        checked = None if value is None else SETTINGS[name][1](registry, conn, value)
        Registry.set_info(conn, PREFIX + name, checked)

    registry.write(txn)
