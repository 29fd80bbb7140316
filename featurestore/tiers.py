"""Availability tiers: the ordered phases in which values become known.

A tier has a name, a position in the order and a lag: a row of a source at tier T becomes
available at ``event_time + lag(T)``. Retrieval at tier T may use features of tier <= T only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import timedelta

from featurestore.errors import DefinitionError, LeakageError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | int | float | timedelta, *, what: str = "duration") -> timedelta:
    """Parse ``"90s"``, ``"15m"``, ``"2h"``, ``"7d"``, ``"1w"`` or a number of seconds."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, bool):
        raise DefinitionError(f"{what}: expected a duration like '15m' or seconds, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise DefinitionError(f"{what}: a duration cannot be negative, got {value!r}")
        return timedelta(seconds=value)
    match = _DURATION.match(str(value))
    if not match:
        raise DefinitionError(
            f"{what}: expected a duration like '30s', '15m', '2h', '7d' or '1w', got {value!r}"
        )
    return timedelta(seconds=float(match.group(1)) * _UNIT_SECONDS[match.group(2)])


def format_duration(value: timedelta) -> str:
    """Inverse of ``parse_duration`` for whole units (used in plans and tables)."""
    seconds = value.total_seconds()
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class Tier:
    """One availability phase: ``Tier("race", lag="4h")``.

    ``lag`` takes what TOML takes (``"4h"``, ``"30m"``, seconds) or a ``timedelta``. Tiers
    declared without ``position`` are ordered as declared (the old positional form,
    ``Tier("race", 3, timedelta(hours=4))``, still works; one list cannot mix the two).
    ``forbidden_before`` names columns that hold information of this tier: no source of an
    earlier tier may carry a column of that name (checked at apply). Kept sorted and unique.
    """

    name: str
    position: int | None = None
    lag: timedelta | str | int | float = timedelta(0)
    forbidden_before: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "lag", parse_duration(self.lag, what=f"tier {self.name!r} lag"))
        object.__setattr__(self, "forbidden_before", tuple(sorted(set(self.forbidden_before))))


DEFAULT_TIERS: tuple[Tier, ...] = (
    Tier("historical", 0),
    Tier("practice", 1),
    Tier("qualifying", 2),
    Tier("race", 3),
)


class TierOrder:
    """An ordered set of tiers with lookups that fail with a readable error."""

    def __init__(self, tiers: Iterable[Tier]) -> None:
        tiers = list(tiers)
        unplaced = [t.name for t in tiers if t.position is None]
        if unplaced and len(unplaced) != len(tiers):
            raise DefinitionError(
                f"tiers: {', '.join(unplaced)} have no position while others do; give every "
                "tier a position or none (then they are ordered as declared)")
        if unplaced:
            tiers = [replace(t, position=i) for i, t in enumerate(tiers)]
        ordered = sorted(tiers, key=lambda t: t.position)  # type: ignore[arg-type,return-value]
        if not ordered:
            raise DefinitionError("tiers: at least one tier must be declared")
        names = [t.name for t in ordered]
        if len(set(names)) != len(names):
            raise DefinitionError(f"tiers: duplicate tier names in {names}")
        self.tiers: tuple[Tier, ...] = tuple(ordered)
        self._by_name = {t.name: t for t in ordered}

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tiers]

    def get(self, name: str, *, what: str = "tier") -> Tier:
        try:
            return self._by_name[name]
        except KeyError:
            raise DefinitionError(
                f"{what}: unknown tier {name!r}; known tiers in order: {', '.join(self.names)}"
            ) from None

    def rank(self, name: str, *, what: str = "tier") -> int:
        return self.get(name, what=what).position

    def later_than(self, name: str) -> list[str]:
        """Tier names strictly after ``name``."""
        rank = self.rank(name)
        return [t.name for t in self.tiers if t.position > rank]

    def check_usable(self, prediction_tier: str,
                     feature_tiers: Mapping[tuple[str, int], str] | Mapping[str, str]) -> None:
        """Raise ``LeakageError`` naming every feature whose tier is later than the prediction's.

        ``feature_tiers`` maps each requested feature, keyed by ``(name, version)`` (two
        versions of one feature may have different tiers, and each is checked), to its tier.
        """
        rank = self.rank(prediction_tier, what="retrieval tier")
        names = [k[0] if isinstance(k, tuple) else k for k in feature_tiers]

        def label(key: tuple[str, int] | str) -> str:
            # name@version only where the request holds several versions of the name
            if isinstance(key, tuple):
                return f"{key[0]}@{key[1]}" if names.count(key[0]) > 1 else key[0]
            return key

        late = sorted((label(f), t) for f, t in feature_tiers.items() if self.rank(t) > rank)
        if late:
            detail = ", ".join(f"{f} (tier {t})" for f, t in late)
            raise LeakageError(
                f"features of a tier later than {prediction_tier!r} were requested: {detail}; "
                f"they are not known at a {prediction_tier} prediction point"
            )

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.tiers)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TierOrder) and self.tiers == other.tiers
