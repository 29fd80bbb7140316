"""Apply-time leakage guards on tiers: checked on the definitions as they will be after an apply.

A view or feature is never declared at an earlier tier than what it reads, and a source never
carries a column that holds information of a later tier. Both raise ``LeakageError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import polars as pl

from featurestore.errors import LeakageError
from featurestore.tiers import TierOrder
from featurestore.transforms import AVAILABLE_AT, EVENT_TIMESTAMP

# kind -> name -> registry row, as the registry will hold them after the apply.
Final = Mapping[str, Mapping[str, Mapping[str, Any]]]
# (source name, who asks) -> (the source's input schema, its entity keys)
InputSchema = Callable[[str, str], tuple[dict[str, pl.DataType], list[str]]]
# (entity name, who asks) -> its join keys
EntityKeys = Callable[[str, str], list[str]]


def check_tier_order(final: Final, tiers: TierOrder) -> None:
    """A view is never earlier than its source, a feature never earlier than its source or
    its view: an earlier tier would serve values before they are known."""
    sources = final["source"]

    def refuse(what: str, tier: str, other: str, other_tier: str) -> LeakageError:
        return LeakageError(
            f"{what} is declared at tier {tier}, earlier than its {other} (tier "
            f"{other_tier}): its values are not known at a {tier} prediction point; declare "
            f"it at tier {other_tier} or later")

    for name, view in sorted(final["view"].items()):
        src = sources.get(view["source"])
        if view.get("tier") and src and tiers.rank(view["tier"]) < tiers.rank(src["tier"]):
            raise refuse(f"view {name!r}", view["tier"], f"source {view['source']!r}",
                         src["tier"])
    for name, feat in sorted(final["feature"].items()):
        src = sources.get(feat["source"])
        if src and tiers.rank(feat["tier"]) < tiers.rank(src["tier"]):
            raise refuse(f"feature {name!r}", feat["tier"], f"source {feat['source']!r}",
                         src["tier"])
        view = final["view"].get(feat["view"])
        if (view and view.get("tier") and view["transform"] is not None
                and tiers.rank(feat["tier"]) < tiers.rank(view["tier"])):
            raise refuse(f"feature {name!r}", feat["tier"], f"view {feat['view']!r}",
                         view["tier"])

def column_readers(final: Final, input_schema: InputSchema) -> dict[str, list[tuple[str, str, str]]]:
    """Source column -> ``(reader, its tier, the source it reads the column from)``.

    A column feature reads its column at the feature's tier; a transform view reads, at its
    tier (its source's when it declares none), the columns ``view_input_columns`` finds.
    """
    readers: dict[str, list[tuple[str, str, str]]] = {}
    for name, feat in final["feature"].items():
        if feat.get("transform") is None:
            readers.setdefault(feat["column_name"], []).append(
                (f"feature {name!r}", feat["tier"], feat["source"]))
    for name, view in final["view"].items():
        src = final["source"].get(view["source"])
        if view["transform"] is None or src is None:
            continue
        tier = view.get("tier") or src["tier"]
        in_schema, keys = input_schema(view["source"], f"view {name!r}")
        for col in view_input_columns(view, in_schema, keys):
            readers.setdefault(col, []).append((f"view {name!r}", tier, view["source"]))
    return readers

def check_forbidden_columns(final: Final, tiers: TierOrder, input_schema: InputSchema,
                            entity_keys: EntityKeys) -> None:
    """A source at tier T must not carry a column that holds information of a later tier.

    Two ways to know that a column holds later information:
    - a later tier's contract lists it in ``forbidden_before``: always refused;
    - a feature or view of a later tier reads a column of that name from another source,
      while nothing reads it from this one. A column that some feature or view reads from
      this very source is declared by that reader as this source's information (so a
      practice lap table and a race lap table may both have ``lap_time``, each read by its
      own tier's features); one nobody reads here is later information lying in wait.
    """
    readers = column_readers(final, input_schema)
    own = {(rsrc, col) for col, rs in readers.items() for _, _, rsrc in rs}
    for sname, src in sorted(final["source"].items()):
        problems = []
        rank = tiers.rank(src["tier"])
        # The source's own keys and times identify its rows; they hold no later values.
        structural = {*entity_keys(src["entity"], f"source {sname!r}"),
                      src["event_time"], src.get("available_time")}
        for col in src["schema"]:
            why = [] if (sname, col) in own or col in structural else [
                f"{reader} (tier {rtier}) reads it from source {rsrc!r}"
                for reader, rtier, rsrc in sorted(readers.get(col, []))
                if tiers.rank(rtier) > rank]
            why += [f"tier {t.name}'s contract lists it in forbidden_before"
                    for t in tiers if t.position > rank and col in t.forbidden_before]
            if why:
                problems.append(f"column {col!r}: {'; '.join(why)}")
        if problems:
            raise LeakageError(
                f"source {sname!r} (tier {src['tier']}) carries column(s) holding information "
                f"of a later tier: {' | '.join(problems)}; drop or rename them in the file, "
                "or register the source at that later tier")


def view_input_columns(view: Mapping[str, Any], in_schema: Mapping[str, pl.DataType],
                       keys: Sequence[str] = ()) -> set[str]:
    """The source columns whose values a transform view turns into features.

    The transform says so when it defines ``input_columns(params)``; otherwise (or when that
    fails) every string under a params key named ``column`` or ``columns`` or ending in
    ``_column`` / ``_columns``, at any depth, counts. Only columns of the source count, never
    its keys or times: grouping and ordering columns are not values of a later tier.
    """
    columns: set[str] | None = None
    try:
        from featurestore.plugins import get_transform

        input_columns = get_transform(view["transform"]).transform.input_columns
        if input_columns is not None:
            columns = set(input_columns(view["params"]))
    except Exception:  # unloadable transform or a failing hook: judge by the params
        columns = None
    if columns is None:
        columns = set(_column_params(view["params"]))
    return {c for c in columns
            if c in in_schema and c not in (*keys, AVAILABLE_AT, EVENT_TIMESTAMP)}


def _column_params(value: Any, key: str = "") -> Iterable[str]:
    named = key in ("column", "columns") or key.endswith(("_column", "_columns"))
    if isinstance(value, str):
        if named:
            yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _column_params(v, str(k))
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _column_params(v, key)
