"""The comparison behind a plan: each declared object against its registered version.

``Planner`` reads the registry through one connection and fills ``items`` (one ``PlanItem`` per
object), ``final`` (the registry as it will be after the apply) and ``warnings``; it raises
``DefinitionError`` / ``DataError`` / ``PluginError`` on invalid input and never writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import polars as pl
from sqlalchemy import Connection, select

from featurestore import schema
from featurestore.definitions import (
    Definitions,
    canonical_json,
    check_name,
    dtype_name,
    parse_dtype,
)
from featurestore.dtypes import dtype_from_str
from featurestore.errors import DataError, DefinitionError, PluginError
from featurestore.planmodel import (
    KIND_ORDER,
    MEANING,
    METADATA,
    PlanItem,
    absolute_source_path,
    column_view_row,
    store_path,
)
from featurestore.registry import Registry
from featurestore.sourcedata import RESERVED, check_column_roles, check_timezone, read_schema
from featurestore.tiers import TierOrder, format_duration, parse_duration
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP, TransformContext


class Planner:
    def __init__(self, conn: Connection, registry: Registry, defs: Definitions, root: Path,
                 prune: bool = False) -> None:
        self.conn, self.registry, self.defs, self.root = conn, registry, defs, root
        self.existing = {kind: Registry.latest_rows(conn, kind) for kind in KIND_ORDER}
        # Deleted objects: declaring one again adds a version after its old ones.
        self.deleted = {kind: Registry.latest_rows(conn, kind, deleted=True) for kind in KIND_ORDER}
        self.prune = prune
        self.pruned: dict[str, set[str]] = {kind: set() for kind in KIND_ORDER}
        self.final: dict[str, dict[str, dict[str, Any]]] = {k: dict(v) for k, v in self.existing.items()}
        self.items: list[PlanItem] = []
        self.warnings: list[str] = []
        self.origin = defs.origin

    # -- helpers
    def err(self, msg: str) -> DefinitionError:
        return DefinitionError(f"{self.origin}: {msg}")

    def unknown(self, kind: str, name: str) -> str:
        """``unknown KIND 'name'``, saying why when the object is deleted or being pruned."""
        why = ""
        if name in self.pruned[kind]:
            why = " (registered but not declared, so --prune deletes it)"
        elif name in self.deleted[kind]:
            why = f" (deleted at {self.deleted[kind][name]['deleted_at']:%Y-%m-%d %H:%M:%S} UTC)"
        return f"unknown {kind} {name!r}{why}"

    def check_unique_names(self) -> None:
        declared: dict[str, str] = {}
        groups: list[tuple[str, Iterable[Any]]] = [
            ("entity", self.defs.entities), ("source", self.defs.sources),
            ("view", self.defs.views), ("feature", self.defs.features),
            ("feature_set", self.defs.feature_sets)]
        for kind, objs in groups:
            for obj in objs:
                check_name(obj.name, kind)
                if obj.name in declared:
                    other = declared[obj.name]
                    if other == kind:
                        raise self.err(f"{kind} {obj.name!r} is declared twice")
                    raise self.err(f"name {obj.name!r} is declared both as a {other} and as a {kind}")
                declared[obj.name] = kind
        for name, kind in declared.items():
            if self.prune:
                break  # an undeclared object of another kind is pruned: its name is free
            for other_kind, rows in self.existing.items():
                if other_kind == kind or name not in rows:
                    continue
                if other_kind == "view" and rows[name]["transform"] is None and kind == "source":
                    continue  # a source's own column view carries the source's name
                raise self.err(f"{kind} {name!r} clashes with the registered {other_kind} {name!r}; "
                               "names are shared by all kinds")

    def version_item(self, kind: str, name: str, row: dict[str, Any]) -> None:
        old = self.existing[kind].get(name)
        encoded = _encode(kind, row)
        gone = self.deleted[kind].get(name)
        if old is None and gone is not None:
            item = PlanItem(kind, name, "add", gone["version"] + 1, gone["version"],
                            [f"registered again (v{gone['version']} was deleted at "
                             f"{gone['deleted_at']:%Y-%m-%d %H:%M:%S} UTC)"], row=encoded)
        elif old is None:
            item = PlanItem(kind, name, "add", 1, row=encoded)
        else:
            old_enc = _encode(kind, old)
            meaning = [f for f in MEANING[kind] if old_enc.get(f) != encoded.get(f)]
            meta = [f for f in METADATA[kind] if old_enc.get(f) != encoded.get(f)]
            if meaning:
                item = PlanItem(kind, name, "version", old["version"] + 1, old["version"],
                                [_describe_change(f, old.get(f), row.get(f)) for f in meaning],
                                row=encoded)
            elif meta:
                item = PlanItem(kind, name, "update", old["version"], old["version"],
                                [_describe_change(f, old.get(f), row.get(f)) for f in meta],
                                row=encoded)
            else:
                item = PlanItem(kind, name, "unchanged", old["version"], old["version"])
        self.items.append(item)
        self.final[kind][name] = {**row, "version": item.version, "name": name}

    def plan_prune(self) -> None:
        """Registered objects the definitions do not declare are deleted (``apply --prune``).

        A declared source's own column view is never declared: ``plan_features`` maintains it;
        it goes only with its source.
        """
        declared = {"entity": self.defs.entities, "source": self.defs.sources,
                    "view": self.defs.views, "feature": self.defs.features,
                    "feature_set": self.defs.feature_sets}
        names = {kind: {obj.name for obj in objs} for kind, objs in declared.items()}
        for kind in KIND_ORDER:
            for name, row in self.existing[kind].items():
                if name in names[kind] or (kind == "view" and row["transform"] is None
                                           and name in names["source"]):
                    continue
                self.pruned[kind].add(name)
                del self.final[kind][name]
                self.items.append(PlanItem(kind, name, "delete", row["version"], row["version"],
                                           ["not in the definitions"]))

    # -- kinds
    def plan_tiers(self) -> TierOrder:
        current = self.registry.tiers(self.conn)
        if self.defs.tiers is None:
            return current
        wanted = TierOrder(self.defs.tiers)
        if wanted == current:
            return current
        self.tier_changes = [f"tiers: {_describe_tiers(current)} -> {_describe_tiers(wanted)}"]
        used = {r["tier"] for kind in ("source", "feature") for r in self.existing[kind].values()}
        used |= {r["tier"] for r in self.existing["view"].values() if r.get("tier")}
        default_tier = self.registry.info("setting.default_tier", self.conn)
        if default_tier:
            used.add(default_tier)
        missing = sorted(used - set(wanted.names))
        if missing:
            raise self.err(f"tiers {', '.join(missing)} are used by registered objects (or the "
                           "default_tier setting) and cannot be removed")
        return wanted

    def plan_entities(self) -> None:
        for e in self.defs.entities:
            if not e.join_keys:
                raise self.err(f"entity {e.name!r} needs at least one join key")
            if len(set(e.join_keys)) != len(e.join_keys):
                raise self.err(f"entity {e.name!r} repeats a join key: {list(e.join_keys)}")
            self.version_item("entity", e.name, {"join_keys": list(e.join_keys),
                                                 "description": e.description})

    def entity_keys(self, name: str, what: str) -> list[str]:
        row = self.final["entity"].get(name)
        if row is None:
            raise self.err(f"{what} refers to {self.unknown('entity', name)}")
        return list(row["join_keys"])

    def plan_sources(self, tiers: TierOrder) -> None:
        for s in self.defs.sources:
            what = f"source {s.name!r}"
            keys = self.entity_keys(s.entity, what)
            tiers.get(s.tier, what=what)
            timezone = check_timezone(s.timezone if s.timezone is not None else "UTC", what)
            if s.on_duplicate not in ("error", "keep_last"):
                raise self.err(f"{what}: on_duplicate must be 'error' or 'keep_last', "
                               f"got {s.on_duplicate!r}")
            lag = None
            if s.available_lag is not None:
                if s.available_time:
                    raise self.err(f"{what}: declare 'available_time' (a per-row column) or "
                                   "'available_lag' (one lag for every row), not both")
                lag = parse_duration(s.available_lag, what=f"{self.origin}: {what} available_lag")
            path = store_path(s.path, self.root)
            src_schema = read_schema(absolute_source_path(path, self.root))
            needed = {s.event_time: "event_time"} | {k: "join key" for k in keys}
            if s.available_time:
                needed[s.available_time] = "available_time"
            for fill in s.fills:
                needed[fill.column] = "fill column"
            for col, role in needed.items():
                if col not in src_schema:
                    raise DataError(f"{path}: {what} declares {role} {col!r}, but the file has "
                                    f"no such column; found {', '.join(map(repr, src_schema))}")
            for col in RESERVED:
                if col in src_schema and col not in (s.event_time, s.available_time):
                    raise DataError(f"{path}: column {col!r} is reserved by featurestore; rename it")
            check_column_roles(src_schema, path=path, keys=keys, event_time=s.event_time,
                               available_time=s.available_time)
            self.version_item("source", s.name, {
                "path": path, "entity": s.entity, "event_time": s.event_time, "tier": s.tier,
                "timezone": timezone, "available_time": s.available_time,
                "available_lag_seconds": None if lag is None else lag.total_seconds(),
                "fills": [{"column": f.column, "method": f.method, "value": f.value}
                          for f in s.fills],
                "on_duplicate": s.on_duplicate,
                "schema": {c: str(t) for c, t in src_schema.items()},
                "description": s.description, "owner": s.owner})
            if s.timezone is None and self.items[-1].action in ("add", "version"):
                self.warn_assumed_utc(s.name, path, src_schema, [s.event_time, s.available_time])

    def warn_assumed_utc(self, name: str, path: str, src_schema: Mapping[str, pl.DataType],
                         columns: Iterable[str | None]) -> None:
        """Naive times with no declared zone are read as UTC: say so when the source registers."""
        naive = [c for c in columns if c is not None and (
            src_schema[c] == pl.Date
            or (isinstance(src_schema[c], pl.Datetime) and src_schema[c].time_zone is None))]
        if naive:
            self.warnings.append(
                f"source {name!r} ({path}): column(s) {', '.join(map(repr, naive))} hold naive "
                "times and the source declares no timezone, so they are read as UTC; declare "
                "timezone = \"UTC\" to confirm, or the zone they were recorded in")

    def input_schema(self, source: str, what: str) -> tuple[dict[str, pl.DataType], list[str]]:
        row = self.final["source"].get(source)
        if row is None:
            raise self.err(f"{what} refers to {self.unknown('source', source)}")
        keys = self.entity_keys(row["entity"], f"source {source!r}")
        raw = {c: dtype_from_str(t, what=f"registered source {source!r} column {c!r}")
               for c, t in row["schema"].items()}
        out: dict[str, pl.DataType] = {k: raw[k] for k in keys}
        out[EVENT_TIMESTAMP] = pl.Datetime("us", "UTC")
        out[AVAILABLE_AT] = pl.Datetime("us", "UTC")
        for c, t in raw.items():
            if c not in out and c not in (row["event_time"], row.get("available_time")):
                out[c] = t
        return out, keys

    def plan_views(self, tiers: TierOrder) -> dict[str, dict[str, pl.DataType]]:
        outputs: dict[str, dict[str, pl.DataType]] = {}
        for v in self.defs.views:
            what = f"view {v.name!r}"
            in_schema, keys = self.input_schema(v.source, what)
            if v.tier is not None:
                tiers.get(v.tier, what=what)
            if not v.transform:
                raise self.err(f"{what}: 'transform' is required (features read straight from a "
                               "source are declared with source = ... and column = ...)")
            from featurestore.plugins import get_transform

            transform = get_transform(v.transform)
            try:
                declared = transform.transform.declared_schema(
                    v.params, in_schema, TransformContext(tuple(keys)))
            except (ValueError, KeyError, TypeError) as exc:
                raise self.err(f"{what}: transform {v.transform!r} rejected its params: {exc}") from None
            except Exception as exc:  # the plugin's bug: name it, never a bare traceback
                raise PluginError(f"{what}: transform {v.transform!r} (plugin "
                                  f"{transform.plugin!r}) failed in output_columns: "
                                  f"{type(exc).__name__}: {exc}") from None
            bad = [c for c, t in declared.items() if not isinstance(c, str) or not (
                isinstance(t, pl.DataType) or (isinstance(t, type) and issubclass(t, pl.DataType)))]
            if bad:
                raise PluginError(f"{what}: transform {v.transform!r} declared output column(s) "
                                  f"{bad} without a polars dtype (got "
                                  f"{', '.join(type(declared[c]).__name__ for c in bad)})")
            clash = sorted(set(declared) & {*keys, EVENT_TIMESTAMP, AVAILABLE_AT})
            if clash:
                raise PluginError(f"{what}: transform {v.transform!r} declares output column(s) "
                                  f"{clash} that would overwrite keys or times")
            outputs[v.name] = dict(declared)
            self.version_item("view", v.name, {
                "source": v.source, "transform": v.transform, "params": dict(v.params),
                "tier": v.tier, "description": v.description, "owner": v.owner})
        return outputs

    def view_outputs(self, name: str, planned: dict[str, dict[str, pl.DataType]]) -> dict[str, pl.DataType]:
        if name in planned:
            return planned[name]
        # A registered view not redeclared: its outputs are its registered features' columns.
        return {r["column_name"]: dtype_from_str(r["dtype"], what=f"registered feature {r['name']!r}")
                for r in self.final["feature"].values() if r["view"] == name}

    def plan_features(self, tiers: TierOrder, outputs: dict[str, dict[str, pl.DataType]]) -> None:
        implicit: dict[str, set[str]] = {}
        for f in self.defs.features:
            what = f"feature {f.name!r}"
            if (f.view is None) == (f.source is None):
                raise self.err(f"{what}: declare exactly one of 'view' (a transform's output) or "
                               "'source' (a column read as is)")
            column = f.column if f.column is not None else f.name
            if f.view is not None:
                view = self.final["view"].get(f.view)
                if view is None or view["transform"] is None:
                    raise self.err(f"{what} refers to {self.unknown('view', f.view)}")
                available = self.view_outputs(f.view, outputs)
                source_name, view_name = view["source"], f.view
                transform, params, default_tier = view["transform"], view["params"], view.get("tier")
            else:
                in_schema, keys = self.input_schema(f.source, what)
                available = {c: t for c, t in in_schema.items()
                             if c not in (*keys, EVENT_TIMESTAMP, AVAILABLE_AT)}
                source_name = view_name = f.source
                transform, params, default_tier = None, {}, None
                implicit.setdefault(f.source, set()).add(column)
            if column not in available:
                raise self.err(f"{what}: column {column!r} is not produced by "
                               f"{'view ' + repr(f.view) if f.view else 'source ' + repr(f.source)}; "
                               f"available: {', '.join(map(repr, sorted(available))) or '(none)'}")
            actual = available[column]
            if f.dtype is not None:
                declared = parse_dtype(f.dtype, what=what)
                if dtype_name(declared) != dtype_name(actual):
                    raise self.err(f"{what}: declared dtype {f.dtype} but column {column!r} "
                                   f"has dtype {actual}")
            src = self.final["source"][source_name]
            tier = f.tier or default_tier or src["tier"]
            tiers.get(tier, what=what)
            self.version_item("feature", f.name, {
                "entity": src["entity"], "source": source_name, "view": view_name,
                "column_name": column, "dtype": dtype_name(actual), "tier": tier,
                "transform": transform, "params": params, "description": f.description,
                "tags": list(f.tags), "owner": f.owner})
        # Each source's own columns view holds every column any feature reads from it; views
        # of sources whose column features all moved elsewhere are recomputed too.
        for name, view in self.existing["view"].items():
            if view["transform"] is None and name not in self.pruned["view"]:
                implicit.setdefault(name, set())
        for source_name in sorted(implicit):
            self.version_item("view", source_name,
                              column_view_row(source_name, self.final["feature"].values()))

    def check_dependents(self, outputs: dict[str, dict[str, pl.DataType]]) -> None:
        """Refuse to change a view or source under a registered feature these definitions omit.

        Such a feature keeps its version, pinned to the old view definition; materialize builds
        only a view's current version, so the feature would never be served again and no command
        could repair it. It happens when two definitions files share a view: applied one after
        the other, or at the same moment by two processes (the registry's write lock makes those
        two applies run one after the other, and the second one is refused here).
        """
        declared = {f.name for f in self.defs.features}
        versioned = {(i.kind, i.name): i for i in self.items if i.action == "version"}
        for name, feat in sorted(self.existing["feature"].items()):
            view_item = versioned.get(("view", feat["view"]))
            source_item = versioned.get(("source", feat["source"]))
            if (name in declared or name in self.pruned["feature"]
                    or (view_item is None and source_item is None)):
                continue
            view = self.final["view"][feat["view"]]
            changed = source_item or view_item  # a changed column is the source's doing
            problem = None
            if feat["transform"] is not None and (
                    (view["source"], view["transform"], canonical_json(view["params"]))
                    != (feat["source"], feat["transform"], canonical_json(feat["params"]))):
                changed, problem = view_item, "it reads the old definition"
            else:
                available = self.outputs_for(feat, outputs)
                column = feat["column_name"]
                if available is None:
                    continue  # a registered view whose transform is not loaded: nothing to compare
                if column not in available:
                    problem = f"its column {column!r} would be gone"
                elif dtype_name(available[column]) != feat["dtype"]:
                    problem = (f"its column {column!r} would change from {feat['dtype']} to "
                               f"{dtype_name(available[column])}")
            if problem:
                assert changed is not None
                raise self.err(
                    f"{changed.kind} {changed.name!r} changes ({'; '.join(changed.changes)}) "
                    f"under feature {name!r} v{feat['version']}, which is registered but not in "
                    f"these definitions ({problem}): it would be left on a definition that is "
                    f"never materialized again. Declare {name!r} here too so it gets a new "
                    f"version, or keep the {changed.kind} as it is")

    def outputs_for(self, feat: Mapping[str, Any],
                    outputs: dict[str, dict[str, pl.DataType]]) -> dict[str, pl.DataType] | None:
        """The columns (and dtypes) the final definitions give a registered feature's view."""
        if feat["transform"] is None:
            in_schema, keys = self.input_schema(feat["source"], f"feature {feat['name']!r}")
            return {c: t for c, t in in_schema.items()
                    if c not in (*keys, EVENT_TIMESTAMP, AVAILABLE_AT)}
        if feat["view"] in outputs:
            return outputs[feat["view"]]
        from featurestore.plugins import get_transform

        try:
            transform = get_transform(feat["transform"])
            in_schema, keys = self.input_schema(feat["source"], f"feature {feat['name']!r}")
            return dict(transform.transform.declared_schema(feat["params"], in_schema,
                                                            TransformContext(tuple(keys))))
        except (PluginError, ValueError, KeyError, TypeError):
            return None

    def plan_feature_sets(self) -> None:
        for fs in self.defs.feature_sets:
            pinned = []
            for ref in fs.features:
                name, _, version = ref.partition("@")
                name = name.split(":")[-1]
                row = self.final["feature"].get(name)
                if row is None:
                    raise self.err(f"feature set {fs.name!r} refers to "
                                   f"{self.unknown('feature', name)}")
                pin = {"name": name, "version": int(version) if version else row["version"]}
                if version and int(version) != row["version"]:
                    self.check_pin(fs.name, name, int(version))
                if pin in pinned:  # two versions of one feature may be pinned, one twice not
                    raise self.err(f"feature set {fs.name!r} pins {name}@{pin['version']} twice")
                pinned.append(pin)
            self.version_item("feature_set", fs.name, {"features": pinned,
                                                       "description": fs.description})

    def check_pin(self, feature_set: str, name: str, version: int) -> None:
        """A pinned older version must be registered and not deleted (else it cannot be served)."""
        table = schema.features
        deleted_at = self.conn.execute(select(table.c.deleted_at).where(
            table.c.name == name, table.c.version == version)).first()
        if deleted_at is None:
            raise self.err(f"feature set {feature_set!r} pins feature {name!r} version {version}, "
                           "which is not registered")
        if deleted_at[0] is not None:
            raise self.err(f"feature set {feature_set!r} pins feature {name!r} version {version}, "
                           f"which was deleted at {deleted_at[0]:%Y-%m-%d %H:%M:%S} UTC")


def _describe_tiers(order: TierOrder) -> str:
    def one(t: Any) -> str:
        forbidden = f"[forbidden before: {', '.join(t.forbidden_before)}]" if t.forbidden_before else ""
        return f"{t.name}(+{format_duration(t.lag)}){forbidden}"
    return " < ".join(one(t) for t in order)


def _describe_change(fieldname: str, old: Any, new: Any) -> str:
    def short(v: Any) -> str:
        text = canonical_json(v) if not isinstance(v, str) else v
        return text if len(text) <= 60 else text[:57] + "..."
    return f"{fieldname}: {short(old)} -> {short(new)}"


_JSON_COLUMNS = {"join_keys", "fills", "schema", "params", "tags", "features"}


def _encode(kind: str, row: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for key in (*MEANING[kind], *METADATA[kind]):
        value = row.get(key)
        out[key] = canonical_json(value) if key in _JSON_COLUMNS else value
    return out
