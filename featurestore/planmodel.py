"""What an apply will do: one ``PlanItem`` per declared or registered object, in a ``Plan``.

Also the field lists that decide whether a change makes a new version (``MEANING``) or only
updates a description (``METADATA``), and how a source path is stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurestore.tiers import TierOrder

# Which fields change a definition's meaning (a new version) and which only describe it.
MEANING = {
    "entity": ("join_keys",),
    "source": ("path", "entity", "event_time", "tier", "timezone", "available_time", "fills",
               "on_duplicate", "schema", "available_lag_seconds"),
    "view": ("source", "transform", "params", "tier"),
    "feature": ("entity", "source", "view", "column_name", "dtype", "tier", "transform", "params"),
    "feature_set": ("features",),
}
METADATA = {
    "entity": ("description",),
    "source": ("description", "owner"),
    "view": ("description", "owner"),
    "feature": ("description", "tags", "owner"),
    "feature_set": ("description",),
}
KIND_ORDER = ("entity", "source", "view", "feature", "feature_set")
# The names a user may give a kind (the command line offers them).
KIND_ALIASES = {"entity": "entity", "source": "source", "view": "view", "feature": "feature",
                "feature-set": "feature_set", "feature_set": "feature_set"}


@dataclass
class PlanItem:
    """One object's fate in an apply."""

    kind: str
    name: str
    action: str  # "add" | "version" | "update" | "unchanged" | "delete"
    version: int
    previous_version: int | None = None
    changes: list[str] = field(default_factory=list)
    row: dict[str, Any] = field(default_factory=dict, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "action": self.action,
                "version": self.version, "previous_version": self.previous_version,
                "changes": self.changes}


@dataclass
class Plan:
    """The outcome of comparing definitions with the registry."""

    items: list[PlanItem]
    tier_changes: list[str] = field(default_factory=list)
    new_tiers: TierOrder | None = None
    warnings: list[str] = field(default_factory=list)  # issued by apply once it committed

    @property
    def changed(self) -> list[PlanItem]:
        return [i for i in self.items if i.action != "unchanged"]

    @property
    def is_noop(self) -> bool:
        return not self.changed and not self.tier_changes

    def counts(self) -> dict[str, int]:
        out = {"add": 0, "version": 0, "update": 0, "unchanged": 0, "delete": 0}
        for item in self.items:
            out[item.action] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"noop": self.is_noop, "counts": self.counts(), "tier_changes": self.tier_changes,
                "items": [i.as_dict() for i in self.items], "warnings": self.warnings}


def store_path(path: str, root: Path) -> str:
    p = Path(path)
    if not p.is_absolute() and not any(ch in path for ch in "*?["):
        p = p.resolve()
    try:
        return str(p.relative_to(root.resolve()))
    except ValueError:
        return str(p)


def absolute_source_path(path: str, root: Path) -> str:
    return path if Path(path).is_absolute() else str(root / path)


def column_view_row(source: str, features: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The definition of a source's own column view: every column its features read as is."""
    cols = sorted({r["column_name"] for r in features
                   if r["view"] == source and r.get("transform") is None})
    return {"source": source, "transform": None, "params": {"columns": cols}, "tier": None,
            "description": f"columns of source {source}", "owner": ""}
