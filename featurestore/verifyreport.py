"""What a causality verification checked: ``VerificationReport``, recorded on the artifact.

``featurestore.verification.verify_causality`` returns it; the materializer stores ``str(report)``
in ``artifacts.verification`` and ``report.as_dict()`` as JSON in ``artifacts.verification_report``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# The verification defaults live here, with the report and away from polars, so that the CLI
# can show them in --help without loading the engine.
DEFAULT_SAMPLES = 64
"""Cuts checked after every unit's first cut whatever the budget (``--samples``)."""
DEFAULT_MIN_BUDGET = 1_000_000
DEFAULT_BUDGET_FRACTION = 0.1
"""Default budget: ``max(DEFAULT_MIN_BUDGET, DEFAULT_BUDGET_FRACTION * input rows)`` rows."""


@dataclass(frozen=True)
class VerificationReport:
    """What ``verify_causality`` checked. It returns only when nothing leaked; ``verified`` says
    whether that is a proof (see the property)."""

    transform: str
    plugin: str
    view: str
    features: tuple[str, ...]
    scope: str
    group_columns: tuple[str, ...]
    mode: str
    """``exhaustive`` (every candidate cut), ``targeted`` (a prefix of the priority order) or
    ``isolation`` (no entity or group has two ``available_at`` values, so no cut removes a row of
    it: only reading outside the entity or group could leak, which the isolation reruns check),
    ``trivial`` (every input row shares one ``available_at``: no value can depend on a later row)
    or ``none`` (nothing checked)."""
    cuts: int
    """(entity or group, cut) pairs checked."""
    cut_times: int
    """Distinct cut times among them."""
    first_cut: datetime | None
    last_cut: datetime | None
    units_checked: int
    """Entities (entity scope) or groups (group scope) cut at least once."""
    units_total: int
    units_cuttable: int
    """Units with at least two distinct ``available_at`` values: the others cannot be cut."""
    entities_total: int
    candidates: int
    """Cuts an exhaustive check makes."""
    exhaustive_rows: int
    """Rows an exhaustive check recomputes."""
    rows_compared: int
    """Truncated-run rows compared with the full run."""
    rows_recomputed: int
    """Input rows the reruns processed in total (isolation rerun included)."""
    input_rows: int
    reruns: int
    budget: float
    samples: int
    categories: Mapping[str, tuple[int, int]]
    """Per category: (cuts checked, candidates)."""
    isolation_units: int
    isolation_rows: int
    seconds: float
    notes: tuple[str, ...] = field(default=())

    @property
    def verified(self) -> bool:
        """Whether the check proves something: truncated rows were compared with the full run,
        or (no entity or group can be cut) the isolation reruns compared rows, or every row
        shares one ``available_at``. A verification that compared nothing proves nothing."""
        if self.rows_compared > 0 or self.mode == "trivial":
            return True
        return self.mode == "isolation" and self.isolation_rows > 0

    @property
    def units(self) -> str:
        return "entities" if self.scope == "entity" else "groups"

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (times in ISO 8601, an unlimited budget as None)."""
        return {
            "verified": self.verified, "mode": self.mode, "scope": self.scope,
            "group_columns": list(self.group_columns), "transform": self.transform,
            "plugin": self.plugin, "features": list(self.features), "cuts": self.cuts,
            "cut_times": self.cut_times,
            "first_cut": self.first_cut.isoformat() if self.first_cut else None,
            "last_cut": self.last_cut.isoformat() if self.last_cut else None,
            "units": self.units, "units_checked": self.units_checked,
            "units_total": self.units_total, "units_cuttable": self.units_cuttable,
            "entities_total": self.entities_total, "candidates": self.candidates,
            "exhaustive_rows": self.exhaustive_rows, "rows_compared": self.rows_compared,
            "rows_recomputed": self.rows_recomputed, "input_rows": self.input_rows,
            "reruns": self.reruns,
            "budget_rows": None if math.isinf(self.budget) else int(self.budget),
            "samples": self.samples,
            "categories": {k: {"checked": c, "candidates": n}
                           for k, (c, n) in self.categories.items()},
            "isolation": {"units": self.isolation_units, "rows": self.isolation_rows},
            "seconds": round(self.seconds, 3), "notes": list(self.notes),
        }

    def __str__(self) -> str:
        if not self.verified:
            why = "; ".join(self.notes) or "nothing was compared"
            return f"NOT VERIFIED: causality of {self.transform!r} could not be checked: {why}"
        if self.mode == "trivial":
            return (f"causality verified (trivial, {self.scope} scope): all {self.input_rows:,} "
                    "input rows share one available_at, so no value can depend on a later row")
        if self.mode == "isolation":
            return (f"causality verified (isolation, {self.scope} scope): no one of the "
                    f"{self.units_total:,} {self.units} has two available_at values, so no cut "
                    f"removes a row of it; {self.isolation_units:,} of them computed apart from "
                    f"the others gave the same values ({self.isolation_rows:,} rows)")
        budget = "unlimited" if math.isinf(self.budget) else f"{int(self.budget):,}"
        return (f"causality verified ({self.mode}, {self.scope} scope): {self.cuts:,} cut(s) on "
                f"{self.units_checked:,} of {self.units_total:,} {self.units}, "
                f"{self.rows_compared:,} row(s) compared, {self.rows_recomputed:,} recomputed in "
                f"{self.reruns} rerun(s) (budget {budget} rows; exhaustive: "
                f"{self.candidates:,} cut(s), {self.exhaustive_rows:,} rows)")


def combine_reports(reports: Sequence[VerificationReport], *, budget: float, samples: int,
                    note: str) -> VerificationReport:
    """One report for a verification run part by part (a bucketed view: each part's rows on
    their own, see ``featurestore.materialize_buckets``), whose units (entities or groups) are
    disjoint: counts are summed, the cut range spans the parts', and ``cut_times`` is the sum of
    the parts' (a time cut in two parts counts twice). ``budget`` and ``samples`` are what was
    asked for the whole; ``note`` says how it was split. Parts without rows are left out.
    ``verified`` holds only when every part with rows proved something (``combined_verified``).
    """
    if not reports:
        raise ValueError("no reports to combine")
    used = [r for r in reports if r.input_rows] or list(reports[:1])
    first = used[0]
    if any(r.cuts for r in used):
        mode = "exhaustive" if all(r.mode == "exhaustive" for r in used if r.cuts) else "targeted"
    elif all(r.mode == "trivial" for r in used):
        mode = "trivial"
    elif any(r.isolation_rows for r in used):
        mode = "isolation"
    else:
        mode = "none"
    cuts = [r.first_cut for r in used if r.first_cut is not None]
    lasts = [r.last_cut for r in used if r.last_cut is not None]
    categories: dict[str, tuple[int, int]] = {}
    for r in used:
        for k, (c, n) in r.categories.items():
            got = categories.get(k, (0, 0))
            categories[k] = (got[0] + c, got[1] + n)
    notes = [note, *dict.fromkeys(n for r in used for n in r.notes)]

    def total(attr: str) -> int:
        return sum(getattr(r, attr) for r in used)

    return VerificationReport(
        transform=first.transform, plugin=first.plugin, view=first.view,
        features=first.features, scope=first.scope, group_columns=first.group_columns,
        mode=mode, cuts=total("cuts"), cut_times=total("cut_times"),
        first_cut=min(cuts) if cuts else None, last_cut=max(lasts) if lasts else None,
        units_checked=total("units_checked"), units_total=total("units_total"),
        units_cuttable=total("units_cuttable"), entities_total=total("entities_total"),
        candidates=total("candidates"), exhaustive_rows=total("exhaustive_rows"),
        rows_compared=total("rows_compared"), rows_recomputed=total("rows_recomputed"),
        input_rows=total("input_rows"), reruns=total("reruns"), budget=budget, samples=samples,
        categories=categories, isolation_units=total("isolation_units"),
        isolation_rows=total("isolation_rows"), seconds=sum(r.seconds for r in used),
        notes=tuple(notes))


def combined_verified(reports: Sequence[VerificationReport]) -> VerificationReport | None:
    """The first part's report (with rows) that proved nothing, or None when all did."""
    return next((r for r in reports if r.input_rows and not r.verified), None)


__all__ = ["VerificationReport", "combine_reports", "combined_verified"]
