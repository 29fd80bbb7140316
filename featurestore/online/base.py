"""What every online backend shares: the published view's metadata, the storage encoding of
entity keys and values, and the backend interface.

Encoding (the same for SQLite and Redis, so the two are interchangeable):

* an **entity key** is the JSON array of the view's key values in their storage form, compact
  (``[7]``, ``[7,"abc"]``); request keys are normalised to the view's key dtypes before they are
  encoded, so ``7``, ``7.0`` and an ``Int32`` column all find the same entity;
* a **payload** (one per entity) is the JSON array ``[complete, row, row, ...]``: the kept rows of
  the entity, oldest first, each ``[available_at_us, event_timestamp_us, value, ...]`` in the
  order of ``ViewMeta.columns``; ``complete`` is 1 when every row of the entity with a known
  ``available_at`` is kept, 0 when older rows exist only in the view's artifact;
* values are stored in their *storage dtype*: temporal values as integers (their physical form),
  categoricals, enums and decimals as strings; ``decode`` casts them back.
"""

from __future__ import annotations

import functools
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import polars as pl

from featurestore.errors import DataError

FORMAT = 1
# Feast's names for a served value's status, so its clients read ours unchanged.
PRESENT = "PRESENT"
NOT_FOUND = "NOT_FOUND"
NULL_VALUE = "NULL_VALUE"
OUTSIDE_MAX_AGE = "OUTSIDE_MAX_AGE"


@dataclass(frozen=True)
class ViewMeta:
    """One published view version: what its payloads hold and where they came from."""

    view: str
    view_version: int
    artifact_id: int
    artifact_checksum: str
    verified: bool
    keys: tuple[str, ...]
    key_dtypes: tuple[str, ...]
    columns: tuple[str, ...]
    dtypes: tuple[str, ...]
    history: int | None  # rows kept per entity before the publish moment; None = all
    moment_us: int  # the publish moment (UTC, microseconds since the epoch)
    published_at: str
    entities: int
    rows: int
    gen: int = 0  # set by the backend: increases with every publish of any view
    format: int = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ViewMeta:
        data = json.loads(text)
        for name in ("keys", "key_dtypes", "columns", "dtypes"):
            data[name] = tuple(data[name])
        return cls(**data)

    @property
    def layout(self) -> tuple[Any, ...]:
        """What decides how a payload is read: equal layouts can share unchanged payloads."""
        return (self.format, self.keys, self.key_dtypes, self.columns, self.dtypes)


@dataclass
class PublishBatch:
    """What one publish writes: changed entities' payloads, removed entities, the new meta."""

    meta: ViewMeta
    upserts: list[tuple[str, str, str]] = field(default_factory=list)  # (key, digest, payload)
    removals: list[str] = field(default_factory=list)


# make(old_meta, old_digests) -> the batch to write, or None when nothing needs writing.
MakeBatch = Callable[[ViewMeta | None, dict[str, str]], PublishBatch | None]


class OnlineBackend(ABC):
    """Where published views live. Implementations: ``SQLiteBackend``, ``RedisBackend``.

    Guarantees every backend gives: ``read`` sees one consistent state (a publish is either
    wholly visible or not at all); ``publish`` is serialised per view and atomic.
    """

    kind: str
    url: str  # printable: never holds a password

    @abstractmethod
    def read(self, wanted: Sequence[tuple[str, Sequence[str]]]
             ) -> dict[str, tuple[str | None, dict[str, str]]]:
        """For each (view, entity keys): the raw meta JSON (None when the view is not
        published) and the payloads of the keys that exist, all from one snapshot."""

    @abstractmethod
    def metas(self) -> dict[str, ViewMeta]:
        """Every published view's meta."""

    @abstractmethod
    def publish(self, view: str, make: MakeBatch) -> ViewMeta | None:
        """Under the view's write lock: call ``make`` with the current meta and digests and
        write its batch atomically. Returns the new meta, or None when nothing was written."""

    @abstractmethod
    def drop(self, view: str) -> bool:
        """Unpublish ``view`` (readers stop seeing it at once); True when it was published."""

    @abstractmethod
    def ping(self) -> None:
        """Raise when the backend cannot be reached."""

    def close(self) -> None:  # noqa: B027 - optional for backends without resources
        """Release connections."""


# ------------------------------------------------------------------------ dtypes and values
_STRING_STORED = (pl.Categorical, pl.Enum, pl.Decimal)


@functools.lru_cache(maxsize=512)
def storage_dtype(dtype: pl.DataType) -> pl.DataType:
    """The dtype a value is stored as: physical, with categoricals and decimals as strings."""
    if (dtype.is_numeric() and not isinstance(dtype, pl.Decimal)) or dtype == pl.String() \
            or dtype == pl.Boolean():
        return dtype
    if isinstance(dtype, pl.Object):
        raise DataError(f"dtype {dtype} cannot be stored in the online store")
    return pl.Series(dtype=_castable_logical(dtype)).to_physical().dtype


def to_storage(expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """An expression giving ``expr`` (of ``dtype``) in its storage form."""
    stored = storage_dtype(dtype)
    if stored == pl.String() and dtype != pl.String():
        return expr.cast(pl.String)
    return expr.cast(_castable_logical(dtype)).to_physical() if stored != dtype else expr


def _castable_logical(dtype: pl.DataType) -> pl.DataType:
    """``dtype`` with string-stored parts replaced by String (so to_physical gives storage)."""
    if isinstance(dtype, _STRING_STORED):
        return pl.String()
    if isinstance(dtype, pl.List):
        return pl.List(_castable_logical(dtype.inner))
    if isinstance(dtype, pl.Array):
        return pl.Array(_castable_logical(dtype.inner), dtype.shape)
    if isinstance(dtype, pl.Struct):
        return pl.Struct({f.name: _castable_logical(f.dtype) for f in dtype.fields})
    return dtype


def decode_series(name: str, values: list[Any], dtype: pl.DataType) -> pl.Series:
    """Stored values back into a Series of ``dtype``."""
    stored = storage_dtype(dtype)
    series = pl.Series(name, values, dtype=stored)
    return series if stored == dtype else series.cast(dtype)


# ------------------------------------------------------------------------ entity keys
def encode_key(values: Sequence[Any]) -> str:
    """The stored form of one entity key (its key values in storage form)."""
    if len(values) == 1 and type(values[0]) is int:
        return f"[{values[0]}]"
    return json.dumps(list(values), separators=(",", ":"))


_INT_TYPES = (pl.Int8, pl.Int16, pl.Int32, pl.Int64, pl.Int128, pl.UInt8, pl.UInt16, pl.UInt32,
              pl.UInt64)


def key_normalizer(column: str, dtype: pl.DataType, view: str) -> Callable[[list[Any]], list[Any]]:
    """A function turning request values of key ``column`` into the view's storage form.

    Integers accept ints and integral floats; floats accept numbers; strings accept strings;
    other dtypes go through a strict polars cast (ISO text for temporal keys). ``None`` stays
    ``None`` (a null key matches nothing). Anything else raises ``DataError`` naming the key.
    """
    def bad(value: Any, expected: str) -> DataError:
        return DataError(f"key {column!r} of view {view!r}: expected {expected}, got {value!r}")

    if isinstance(dtype, _INT_TYPES):
        def ints(values: list[Any]) -> list[Any]:
            out = []
            for v in values:
                if v is None or (type(v) is int):
                    out.append(v)
                elif (isinstance(v, float) and v.is_integer()) or (isinstance(v, int) and not isinstance(v, bool)):
                    out.append(int(v))
                else:
                    raise bad(v, f"an integer ({dtype})")
            return out
        return ints
    if isinstance(dtype, pl.Float32 | pl.Float64):
        def floats(values: list[Any]) -> list[Any]:
            out = []
            for v in values:
                if v is None:
                    out.append(None)
                elif isinstance(v, int | float) and not isinstance(v, bool):
                    out.append(float(v))
                else:
                    raise bad(v, "a number")
            return out
        return floats
    if isinstance(dtype, pl.String | pl.Categorical | pl.Enum):
        def strings(values: list[Any]) -> list[Any]:
            for v in values:
                if v is not None and not isinstance(v, str):
                    raise bad(v, "a string")
            return values
        return strings

    def generic(values: list[Any]) -> list[Any]:
        try:
            series = pl.Series(column, values, strict=False)
            if series.dtype == pl.String and isinstance(dtype, pl.Datetime):
                series = series.str.to_datetime(time_unit=dtype.time_unit,
                                                time_zone=dtype.time_zone or None)
            elif series.dtype == pl.String and isinstance(dtype, pl.Date):
                series = series.str.to_date()
            if isinstance(dtype, pl.Datetime) and isinstance(series.dtype, pl.Datetime):
                if dtype.time_zone and series.dtype.time_zone is None:
                    series = series.dt.replace_time_zone("UTC")
                series = series.dt.convert_time_zone(dtype.time_zone) if dtype.time_zone else \
                    series.dt.replace_time_zone(None)
            stored = series.cast(dtype, strict=True)
            return stored.cast(_castable_logical(dtype)).to_physical().to_list()
        except DataError:
            raise
        except Exception:
            raise bad(values[0] if values else None, f"values castable to {dtype}") from None
    return generic
