"""Compare declarations with the registry: what an apply adds, versions, updates or leaves
(and, with ``prune``, deletes).

``build_plan`` reads only; ``execute_plan`` writes a plan's rows. ``FeatureStore.apply`` runs
both inside one write transaction, so a plan is never applied against a registry that changed
after it was computed, and a failure anywhere writes nothing.

The work is split: ``planmodel`` (what a plan holds), ``planner`` (the comparison),
``tierguard`` (the tier leakage guards); this module runs them in order and writes a plan.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, update

from featurestore import schema
from featurestore.definitions import Definitions
from featurestore.dtypes import dtype_from_str
from featurestore.planmodel import (
    KIND_ORDER,
    MEANING,
    METADATA,
    Plan,
    PlanItem,
    absolute_source_path,
    column_view_row,
)
from featurestore.planner import Planner
from featurestore.registry import Registry, utcnow
from featurestore.tierguard import check_forbidden_columns, check_tier_order, view_input_columns

__all__ = [
    "KIND_ORDER",
    "MEANING",
    "METADATA",
    "Plan",
    "PlanItem",
    "absolute_source_path",
    "build_plan",
    "column_view_row",
    "dtype_from_str",
    "execute_plan",
    "view_input_columns",
]


def build_plan(conn: Connection, registry: Registry, defs: Definitions, root: Path, *,
               prune: bool = False) -> Plan:
    """Compare ``defs`` with the registry as seen through ``conn``; raises on any invalid input.

    With ``prune``, registered objects ``defs`` does not declare get a ``delete`` item; the
    declared ones may not refer to them.
    """
    planner = Planner(conn, registry, defs, root, prune)
    planner.tier_changes = []
    planner.check_unique_names()
    if prune:
        planner.plan_prune()
    tiers = planner.plan_tiers()
    planner.plan_entities()
    planner.plan_sources(tiers)
    outputs = planner.plan_views(tiers)
    planner.plan_features(tiers, outputs)
    planner.check_dependents(outputs)
    planner.plan_feature_sets()
    check_tier_order(planner.final, tiers)
    check_forbidden_columns(planner.final, tiers, planner.input_schema, planner.entity_keys)
    order = {k: i for i, k in enumerate(KIND_ORDER)}
    items = sorted(planner.items, key=lambda i: (order[i.kind], i.name))
    return Plan(items, planner.tier_changes, tiers if planner.tier_changes else None,
                planner.warnings)


def execute_plan(conn: Connection, registry: Registry, plan: Plan) -> None:
    """Write a plan's rows through ``conn`` (the caller owns the transaction)."""
    if plan.new_tiers is not None:
        Registry._write_tiers(conn, list(plan.new_tiers))
    now = utcnow()
    for item in plan.changed:
        table = schema.VERSIONED[item.kind]
        if item.action == "update":
            conn.execute(update(table)
                         .where(table.c.name == item.name, table.c.version == item.version)
                         .values(**{k: item.row[k] for k in METADATA[item.kind]}))
        elif item.action == "delete":
            Registry.mark_deleted(conn, item.kind, item.name, now)
        else:
            conn.execute(table.insert().values(name=item.name, version=item.version,
                                               created_at=now, **item.row))
