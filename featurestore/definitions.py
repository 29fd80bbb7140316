"""Declarations users write: entities, sources, views, features, feature sets and tiers.

They come from a TOML definitions file (``load_definitions``) or are built in Python. Nothing
here touches the registry or data; ``featurestore.plan`` compares declarations with the registry.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl

from featurestore.errors import DefinitionError
from featurestore.tiers import Tier, parse_duration

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
COMPRESSIONS = ("zstd", "snappy", "gzip", "brotli", "lz4", "uncompressed")
FILL_METHODS = ("forward", "expanding_mean", "none")


def check_name(name: object, what: str) -> str:
    """Return ``name`` if it is a safe identifier, else raise ``DefinitionError`` naming it."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise DefinitionError(
            f"{what} name {name!r} is not allowed: use letters, digits and '_' "
            "(starting with a letter or '_', at most 128 characters)"
        )
    return name


_DTYPES: dict[str, pl.DataType] = {
    "Int8": pl.Int8(), "Int16": pl.Int16(), "Int32": pl.Int32(), "Int64": pl.Int64(),
    "UInt8": pl.UInt8(), "UInt16": pl.UInt16(), "UInt32": pl.UInt32(), "UInt64": pl.UInt64(),
    "Float32": pl.Float32(), "Float64": pl.Float64(), "Boolean": pl.Boolean(),
    "String": pl.String(), "Utf8": pl.String(), "Date": pl.Date(),
    "Datetime": pl.Datetime("us", "UTC"), "Duration": pl.Duration("us"),
    "Categorical": pl.Categorical(),
}


def parse_dtype(name: str, *, what: str) -> pl.DataType:
    """Map a dtype name such as ``Float64`` to a Polars dtype."""
    try:
        return _DTYPES[name]
    except KeyError:
        raise DefinitionError(
            f"{what}: unknown dtype {name!r}; expected one of {', '.join(sorted(_DTYPES))}"
        ) from None


def dtype_name(dtype: pl.DataType) -> str:
    """The canonical name stored in the registry for ``dtype``."""
    if isinstance(dtype, pl.Datetime):
        return "Datetime"
    if dtype == pl.String:
        return "String"
    return str(dtype.base_type()) if not dtype.is_nested() else str(dtype)


@dataclass(frozen=True)
class Entity:
    """A thing features describe, identified by one or more join-key columns."""

    name: str
    join_keys: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Fill:
    """Causal missing-value handling for one source column at ingestion."""

    column: str
    method: str = "forward"
    value: float | int | str | bool | None = None


@dataclass(frozen=True)
class Source:
    """A Parquet dataset (file, directory or glob) of time-stamped rows of one entity."""

    name: str
    path: str
    entity: str
    event_time: str
    tier: str = "historical"
    # How naive timestamps are read. None (not declared) reads them as UTC and, when the file
    # holds naive times, apply warns once, since that is a guess about the data.
    timezone: str | None = None
    available_time: str | None = None
    fills: tuple[Fill, ...] = ()
    # The source's own lag (``"4h"``, seconds or a timedelta), overriding its tier's lag: rows
    # become available at event_time + available_lag. None: the tier's lag.
    available_lag: str | int | float | timedelta | None = None
    on_duplicate: str = "error"
    description: str = ""
    owner: str = ""


@dataclass(frozen=True)
class View:
    """The features one transform produces from one source; materialized to one artifact."""

    name: str
    source: str
    transform: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    tier: str | None = None
    description: str = ""
    owner: str = ""


@dataclass(frozen=True)
class Feature:
    """One named, typed, tiered column a model can ask for."""

    name: str
    tier: str | None = None
    view: str | None = None
    source: str | None = None
    column: str | None = None
    dtype: str | None = None
    description: str = ""
    tags: tuple[str, ...] = ()
    owner: str = ""


@dataclass(frozen=True)
class FeatureSet:
    """A named list of features a model uses, pinned to feature versions at apply time."""

    name: str
    features: tuple[str, ...]
    description: str = ""


@dataclass
class Definitions:
    """Everything one definitions file (or API call) declares."""

    entities: list[Entity] = field(default_factory=list)
    sources: list[Source] = field(default_factory=list)
    views: list[View] = field(default_factory=list)
    features: list[Feature] = field(default_factory=list)
    feature_sets: list[FeatureSet] = field(default_factory=list)
    tiers: list[Tier] | None = None
    origin: str = "<python>"

    @classmethod
    def of(cls, objects: Iterable[object], tiers: Iterable[Tier] | None = None) -> Definitions:
        """Group a flat list of declarations by kind."""
        defs = cls(tiers=list(tiers) if tiers is not None else None)
        buckets: dict[type, list[Any]] = {
            Entity: defs.entities, Source: defs.sources, View: defs.views,
            Feature: defs.features, FeatureSet: defs.feature_sets,
        }
        for obj in objects:
            bucket = buckets.get(type(obj))
            if bucket is None:
                raise DefinitionError(f"cannot declare {obj!r}: not an Entity, Source, View, "
                                      "Feature or FeatureSet")
            bucket.append(obj)
        return defs


def canonical_json(value: Any) -> str:
    """JSON with sorted keys: equal params always serialize to equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


# --------------------------------------------------------------------------- TOML loading

_KINDS = {
    "tiers": {"name", "lag", "forbidden_before"},
    "entities": {"name", "join_keys", "description"},
    "sources": {"name", "path", "entity", "event_time", "tier", "timezone", "available_time",
                "available_lag", "fill", "on_duplicate", "description", "owner"},
    "views": {"name", "source", "transform", "params", "tier", "description", "owner"},
    "features": {"name", "tier", "view", "source", "column", "dtype", "description", "tags",
                 "owner"},
    "feature_sets": {"name", "features", "description"},
}


# Keys whose value must be a string (lists, tables and durations are checked where parsed).
_STRING_KEYS = {"name", "path", "entity", "event_time", "tier", "timezone", "available_time",
                "on_duplicate", "description", "owner", "source", "transform", "view", "column",
                "dtype"}


def _check_keys(kind: str, index: int, table: Mapping[str, Any], origin: str) -> str:
    if not isinstance(table, Mapping):
        raise DefinitionError(f"{origin}: [[{kind}]] entry {index + 1} is not a table")
    name = table.get("name")
    label = f"{origin}: [[{kind}]] {name!r}" if name else f"{origin}: [[{kind}]] entry {index + 1}"
    unknown = sorted(set(table) - _KINDS[kind])
    if unknown:
        raise DefinitionError(
            f"{label}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_KINDS[kind]))}"
        )
    for key in sorted(_STRING_KEYS & set(table)):
        if not isinstance(table[key], str):
            raise DefinitionError(f"{label}: {key!r} must be a string, got {table[key]!r}")
    if "name" not in table:
        raise DefinitionError(f"{label}: missing required key 'name'")
    return label


def _req(table: Mapping[str, Any], key: str, label: str) -> Any:
    if key not in table:
        raise DefinitionError(f"{label}: missing required key {key!r}")
    return table[key]


def _str_list(value: Any, label: str, key: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DefinitionError(f"{label}: {key!r} must be a list of strings, got {value!r}")
    return tuple(value)


def _parse_fills(value: Any, label: str) -> tuple[Fill, ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise DefinitionError(
            f"{label}: 'fill' must be a table of column = {{method = ..., value = ...}}"
        )
    fills = []
    for column, spec in value.items():
        if isinstance(spec, str):
            spec = {"method": spec}
        if not isinstance(spec, Mapping) or set(spec) - {"method", "value"}:
            raise DefinitionError(
                f"{label}: fill for column {column!r} must be {{method = ..., value = ...}}"
            )
        method = spec.get("method", "forward")
        if method not in FILL_METHODS:
            raise DefinitionError(
                f"{label}: fill method {method!r} for column {column!r} is not one of "
                f"{', '.join(FILL_METHODS)} (only causal fills are offered)"
            )
        fills.append(Fill(column=column, method=method, value=spec.get("value")))
    return tuple(fills)


def parse_definitions(data: Mapping[str, Any], origin: str = "<definitions>",
                      base_dir: Path | None = None) -> Definitions:
    """Build ``Definitions`` from a parsed TOML document, checking every key."""
    unknown = sorted(set(data) - set(_KINDS))
    if unknown:
        raise DefinitionError(
            f"{origin}: unknown section(s) {', '.join(unknown)}; expected [[{']], [['.join(_KINDS)}]]"
        )
    defs = Definitions(origin=origin)
    for kind in _KINDS:
        entries = data.get(kind, [])
        if not isinstance(entries, list):
            raise DefinitionError(f"{origin}: {kind!r} must be an array of tables ([[{kind}]])")
        for i, t in enumerate(entries):
            label = _check_keys(kind, i, t, origin)
            name = t["name"]
            if kind == "tiers":
                tiers = defs.tiers if defs.tiers is not None else []
                forbidden = _str_list(t.get("forbidden_before", []), label, "forbidden_before")
                if not all(forbidden):
                    raise DefinitionError(f"{label}: 'forbidden_before' holds an empty column name")
                tiers.append(Tier(check_name(name, "tier"), len(tiers),
                                  parse_duration(t.get("lag", 0), what=f"{label} lag"),
                                  forbidden))
                defs.tiers = tiers
            elif kind == "entities":
                defs.entities.append(Entity(
                    name, _str_list(_req(t, "join_keys", label), label, "join_keys"),
                    t.get("description", "")))
            elif kind == "sources":
                path = str(_req(t, "path", label))
                if base_dir is not None and not Path(path).is_absolute():
                    path = str((base_dir / path).resolve())
                defs.sources.append(Source(
                    name=name, path=path, entity=_req(t, "entity", label),
                    event_time=_req(t, "event_time", label), tier=t.get("tier", "historical"),
                    timezone=t.get("timezone"), available_time=t.get("available_time"),
                    available_lag=t.get("available_lag"),
                    fills=_parse_fills(t.get("fill"), label),
                    on_duplicate=t.get("on_duplicate", "error"),
                    description=t.get("description", ""), owner=t.get("owner", "")))
            elif kind == "views":
                params = t.get("params", {})
                if not isinstance(params, Mapping):
                    raise DefinitionError(f"{label}: 'params' must be a table")
                defs.views.append(View(
                    name=name, source=_req(t, "source", label), transform=t.get("transform"),
                    params=dict(params), tier=t.get("tier"),
                    description=t.get("description", ""), owner=t.get("owner", "")))
            elif kind == "features":
                defs.features.append(Feature(
                    name=name, tier=t.get("tier"), view=t.get("view"), source=t.get("source"),
                    column=t.get("column"), dtype=t.get("dtype"),
                    description=t.get("description", ""),
                    tags=_str_list(t.get("tags", []), label, "tags"), owner=t.get("owner", "")))
            else:
                defs.feature_sets.append(FeatureSet(
                    name=name, features=_str_list(_req(t, "features", label), label, "features"),
                    description=t.get("description", "")))
    return defs


def load_definitions(path: str | Path) -> Definitions:
    """Read a TOML definitions file; syntax errors name the file, line and column."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DefinitionError(f"{path}: definitions file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DefinitionError(f"{path}: cannot read definitions file: {exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionError(f"{path}: TOML syntax error: {exc}") from None
    return parse_definitions(data, origin=str(path), base_dir=path.parent.resolve())
