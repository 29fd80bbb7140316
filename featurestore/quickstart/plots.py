"""Quickstart pictures: one driver's stints in a race, and a race weekend's availability timeline.

Both functions draw with matplotlib's Agg canvas (no pyplot, no global backend switch) and save
a PNG. matplotlib is imported inside them, so the core package never needs it; without it they
raise ``ImportError`` naming the ``plot`` extra (``pip install 'featurestore[plot]'``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl

__all__ = ["plot_availability_timeline", "plot_stints"]

_FIT_CANDIDATES = (
    "fitted_lap_time", "lap_time_fit", "fit_lap_time", "falloff_fit", "fitted", "fit",
    "predicted_lap_time", "lap_time_fitted",
)
_SESSION_COLORS = {"practice": "#4C72B0", "qualifying": "#8172B2", "race": "#2CA02C"}
_KNOWN_TIER_COLORS = {"historical": "#7F7F7F", "practice": "#4C72B0", "qualifying": "#8172B2",
                      "race": "#2CA02C", "results": "#DD8452"}
_TIER_COLORS = ("#C44E52", "#937860", "#DA8BC3", "#8C8C8C", "#CCB974", "#64B5CD")


def _matplotlib() -> tuple[Any, Any]:
    """``(Figure, FigureCanvasAgg)``, or an ImportError that names the ``plot`` extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "featurestore's quickstart plots need matplotlib, which is not installed; "
            "install the 'plot' extra: pip install 'featurestore[plot]'"
        ) from exc
    return Figure, FigureCanvasAgg


def _save(fig: Any, canvas_cls: Any, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas_cls(fig)
    fig.savefig(out, format="png", dpi=130)
    return out


# --------------------------------------------------------------------------------------------
# stints
# --------------------------------------------------------------------------------------------


def _with_stints(laps: pl.DataFrame) -> pl.DataFrame:
    """Add ``stint`` (1.., a new one on the lap after each pit in-lap) and ``tyre_age`` (1..)."""
    laps = laps.sort("lap")
    return laps.with_columns(
        (pl.col("pit").shift(1, fill_value=False).cum_sum() + 1).cast(pl.Int32).alias("stint")
    ).with_columns(pl.col("lap").rank("ordinal").over("stint").cast(pl.Int32).alias("tyre_age"))


def _clean_mask(laps: pl.DataFrame) -> pl.Series:
    """Laps a falloff fit should use: green, not an in-lap, out-lap, restart or the first lap."""
    flags = laps.select(
        (
            ~pl.col("caution")
            & ~pl.col("pit")
            & ~pl.col("pit").shift(1, fill_value=False)
            & ~pl.col("caution").shift(1, fill_value=False)
            & (pl.col("lap") > 1)
        ).alias("clean")
    )
    return flags["clean"]


def _least_squares(x: Sequence[float], y: Sequence[float]) -> tuple[float, float] | None:
    n = len(x)
    if n < 3:
        return None
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    if sxx == 0:
        return None
    slope = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True)) / sxx
    return slope, my - slope * mx


def _fit_column(fits: pl.DataFrame, requested: str | None) -> str | None:
    if requested is not None:
        if requested not in fits.columns:
            raise ValueError(f"fit_column {requested!r} is not a column of stint_fits "
                             f"(columns: {fits.columns})")
        return requested
    for name in _FIT_CANDIDATES:
        if name in fits.columns:
            return name
    numeric = [c for c, t in fits.schema.items() if t.is_float() and "fit" in c.lower()]
    return numeric[0] if numeric else None


def plot_stints(
    race_laps: pl.DataFrame,
    stint_fits: pl.DataFrame | None,
    driver_id: int,
    race_id: int,
    path: str | Path,
    *,
    fit_column: str | None = None,
    title: str | None = None,
) -> Path:
    """Plot one driver's lap times across a race, stint by stint, and save a PNG to ``path``.

    ``race_laps`` needs ``race_id, driver_id, lap, lap_time, pit, caution`` (the quickstart's
    ``race_laps.parquet``). Caution periods are shaded, pit in-laps marked, and each stint gets
    a straight line: tyre falloff in seconds per lap.

    ``stint_fits``, when given, holds the falloff transform's output with per-lap ``lap``,
    ``stint`` and ``tyre_age`` (and ``race_id``/``driver_id`` if it covers more than one car).
    Its fitted line is taken from ``fit_column`` (default: the first of ``fitted_lap_time``,
    ``lap_time_fit``, ``falloff_fit``, ``fitted``, ``fit``... or any float column with "fit"
    in its name). Without such a column, a least-squares line ``lap_time ~ tyre_age`` is fitted
    per stint from its ``lap_time`` (or race_laps' lap time). With ``stint_fits=None`` the stints
    come from the pit flags (a stint starts on the lap after an in-lap) and the fit uses green
    laps only, leaving out in-laps, out-laps, restarts and lap 1.

    Returns the path written.
    """
    Figure, Canvas = _matplotlib()
    laps = race_laps.filter((pl.col("race_id") == race_id) & (pl.col("driver_id") == driver_id))
    if laps.is_empty():
        raise ValueError(f"race_laps has no laps for race_id={race_id}, driver_id={driver_id}")
    laps = _with_stints(laps.select("lap", "lap_time", "pit", "caution"))
    laps = laps.with_columns(_clean_mask(laps).alias("clean"))

    # per stint: (stint, laps, fitted lap times, slope in s per lap of tyre age)
    lines: list[tuple[int, list[int], list[float], float]] = []
    if stint_fits is None:
        for (stint,), grp in laps.filter("clean").group_by("stint", maintain_order=True):
            fit = _least_squares(grp["tyre_age"].to_list(), grp["lap_time"].to_list())
            if fit is not None:
                slope, icept = fit
                ages = grp["tyre_age"].to_list()
                lines.append((int(stint), grp["lap"].to_list(),
                              [icept + slope * a for a in ages], slope))
    else:
        fits = stint_fits
        for key, value in (("race_id", race_id), ("driver_id", driver_id)):
            if key in fits.columns:
                fits = fits.filter(pl.col(key) == value)
        missing = {"lap", "stint", "tyre_age"} - set(fits.columns)
        if missing:
            raise ValueError(f"stint_fits lacks column(s) {sorted(missing)}")
        col = _fit_column(fits, fit_column)
        if "lap_time" not in fits.columns:
            fits = fits.join(laps.select("lap", "lap_time"), on="lap", how="left")
        fits = fits.sort("lap")
        for (stint,), grp in fits.group_by("stint", maintain_order=True):
            grp = grp.drop_nulls(["tyre_age"])
            if col is not None:
                grp = grp.drop_nulls([col])
                if grp.height < 2:
                    continue
                yhat = grp[col].to_list()
                ages = grp["tyre_age"].to_list()
                span = ages[-1] - ages[0]
                slope = (yhat[-1] - yhat[0]) / span if span else 0.0
                lines.append((int(stint), grp["lap"].to_list(), yhat, slope))
            else:
                grp = grp.drop_nulls(["lap_time"])
                fit = _least_squares(grp["tyre_age"].to_list(), grp["lap_time"].to_list())
                if fit is not None:
                    slope, icept = fit
                    lines.append((int(stint), grp["lap"].to_list(),
                                  [icept + slope * a for a in grp["tyre_age"].to_list()], slope))

    fig = Figure(figsize=(12, 5.6), layout="constrained")
    ax = fig.add_subplot()
    cmap = [f"C{k}" for k in range(10)]

    lap = laps["lap"].to_list()
    lt = laps["lap_time"].to_list()
    clean = laps["clean"].to_list()
    stint = laps["stint"].to_list()
    caution = laps["caution"].to_list()
    pit = laps["pit"].to_list()

    # y range from the clean green laps, so caution laps do not flatten the picture
    green_lt = sorted(t for t, c in zip(lt, clean, strict=True) if c) or sorted(lt)
    lo = green_lt[max(0, int(0.01 * len(green_lt)))]
    hi = green_lt[min(len(green_lt) - 1, int(0.99 * len(green_lt)))]
    pad = max(0.25, 0.15 * (hi - lo))
    y0, y1 = lo - pad, hi + 2.2 * pad
    ax.set_ylim(y0, y1)
    ax.set_xlim(0.5, max(lap) + 0.5)

    # caution periods
    first = True
    k = 0
    while k < len(lap):
        if caution[k]:
            start = k
            while k + 1 < len(lap) and caution[k + 1] and lap[k + 1] == lap[k] + 1:
                k += 1
            ax.axvspan(lap[start] - 0.5, lap[k] + 0.5, color="#FFD23F", alpha=0.35, lw=0,
                       label="caution (yellow flag)" if first else None, zorder=0)
            first = False
        k += 1

    # pit in-laps
    pit_laps = [x for x, p in zip(lap, pit, strict=True) if p]
    for n, x in enumerate(pit_laps):
        ax.axvline(x, color="#C44E52", lw=1.0, ls="--", alpha=0.8, zorder=1,
                   label="pit stop (in-lap)" if n == 0 else None)

    # lap times: fitted laps coloured by stint, the rest hollow; off-scale laps at the top edge
    for s in sorted(set(stint)):
        xs = [x for x, c, st, t in zip(lap, clean, stint, lt, strict=True)
              if c and st == s and t <= y1]
        ys = [t for c, st, t in zip(clean, stint, lt, strict=True) if c and st == s and t <= y1]
        ax.scatter(xs, ys, s=14, color=cmap[(s - 1) % 10], zorder=3)
    other = [(x, t) for x, c, t in zip(lap, clean, lt, strict=True) if not c and t <= y1]
    if other:
        ax.scatter(*zip(*other, strict=True), s=18, facecolors="none", edgecolors="#555555",
                   lw=0.8, zorder=3, label="lap 1, restart, out-/in-lap (not fitted)")
    off = [x for x, t in zip(lap, lt, strict=True) if t > y1]
    if off:
        ax.scatter(off, [y1 - 0.02 * (y1 - y0)] * len(off), marker="^", s=16, color="#999999",
                   zorder=3, clip_on=False, label="slower lap, off the scale (caution / pit)")

    # per-stint lines
    for n, (s, xs, ys, slope) in enumerate(lines):
        color = cmap[(s - 1) % 10]
        ax.plot(xs, ys, color=color, lw=2.2, zorder=4,
                label="per-stint linear fit (tyre falloff)" if n == 0 else None)
        if len(xs) >= 4:
            ax.annotate(f"{slope:+.3f} s/lap", (xs[-1], ys[-1]), xytext=(3, 6),
                        textcoords="offset points", fontsize=8, color=color, zorder=5,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                              "alpha": 0.8})

    n_stops = len(pit_laps)
    ax.set_title(title or f"Race {race_id}, driver {driver_id}: lap times and tyre falloff "
                          f"by stint ({n_stops} pit stops)", fontsize=12)
    ax.set_xlabel("lap")
    ax.set_ylabel("lap time (s)")
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center", fontsize=8, ncol=5, frameon=False)
    return _save(fig, Canvas, path)


# --------------------------------------------------------------------------------------------
# availability timeline
# --------------------------------------------------------------------------------------------


def _row_dict(schedule_row: Mapping[str, Any] | pl.DataFrame) -> dict[str, Any]:
    if isinstance(schedule_row, pl.DataFrame):
        if schedule_row.height != 1:
            raise ValueError(f"schedule_row must have exactly one row, got {schedule_row.height}")
        return schedule_row.row(0, named=True)
    return dict(schedule_row)


def _aware(value: dt.datetime, tz: dt.tzinfo, what: str) -> dt.datetime:
    if not isinstance(value, dt.datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None:
        raise ValueError(f"{what} is a naive datetime; pass a time-zone-aware one")
    return value.astimezone(tz)


def plot_availability_timeline(
    schedule_row: Mapping[str, Any] | pl.DataFrame,
    tiers_and_features: list[tuple[str, dt.datetime, list[str]]],
    path: str | Path,
    *,
    cutoff: dt.datetime | None = None,
    title: str | None = None,
    tz: str = "America/New_York",
) -> Path:
    """Draw when each tier's features become usable during one race weekend; save a PNG.

    ``schedule_row`` is one row of the quickstart's ``schedule.parquet`` (a dict or a one-row
    DataFrame) with ``practice_start/_end``, ``qualifying_start/_end``, ``green_flag`` and
    ``checkered_flag`` (tz-aware). ``tiers_and_features`` lists ``(tier, available_at,
    [feature names])``; a tier may appear several times (e.g. in-race features at several laps),
    and entries may lie before the weekend (historical features, drawn in their own panel).

    The picture has one panel per stretch of activity (Friday practice, Saturday qualifying,
    Sunday race, plus any earlier entry), a lane for the sessions and one lane per tier: a
    marker where a value becomes available and a band to the right while it stays usable.
    With ``cutoff`` (a prediction time) a red line is drawn, and entries available at or after
    it (not usable: the store joins only ``available_at < cutoff``) are drawn hollow.
    Times are shown in ``tz``. Returns the path written.
    """
    Figure, Canvas = _matplotlib()
    import matplotlib.dates as mdates

    zone = ZoneInfo(tz)
    row = _row_dict(schedule_row)
    sessions: list[tuple[str, dt.datetime, dt.datetime]] = []
    for name, a, b in (("practice", "practice_start", "practice_end"),
                       ("qualifying", "qualifying_start", "qualifying_end"),
                       ("race", "green_flag", "checkered_flag")):
        if row.get(a) is not None and row.get(b) is not None:
            sessions.append((name, _aware(row[a], zone, a), _aware(row[b], zone, b)))
    entries = [(str(tier), _aware(t, zone, f"available_at of tier {tier!r}"), list(feats))
               for tier, t, feats in tiers_and_features]
    if not sessions and not entries:
        raise ValueError("nothing to draw: no sessions in schedule_row and no tiers")
    cut = _aware(cutoff, zone, "cutoff") if cutoff is not None else None

    # panels: clusters of activity separated by more than 6 hours
    spans = [(a, b) for _, a, b in sessions] + [(t, t) for _, t, _ in entries]
    if cut is not None:
        spans.append((cut, cut))
    spans.sort()
    clusters: list[list[dt.datetime]] = []
    for a, b in spans:
        if clusters and a - clusters[-1][1] <= dt.timedelta(hours=6):
            clusters[-1][1] = max(clusters[-1][1], b)
        else:
            clusters.append([a, b])
    pad = dt.timedelta(minutes=35)
    panels = []
    for a, b in clusters:
        lo, hi = a - pad, b + pad
        if hi - lo < dt.timedelta(hours=1, minutes=45):
            mid = lo + (hi - lo) / 2
            lo, hi = mid - dt.timedelta(minutes=52), mid + dt.timedelta(minutes=53)
        panels.append((lo, hi))
    widths = [(hi - lo).total_seconds() for lo, hi in panels]

    tiers: list[str] = []
    for tier, _, _ in entries:
        if tier not in tiers:
            tiers.append(tier)
    lanes = {tier: len(tiers) - k for k, tier in enumerate(tiers)}  # top to bottom
    session_y = len(tiers) + 1.15
    tier_feats: dict[str, list[str]] = {t: [] for t in tiers}
    for tier, _, feats in entries:
        for f in feats:
            if f not in tier_feats[tier]:
                tier_feats[tier].append(f)
    others = iter(_TIER_COLORS * (1 + len(tiers) // len(_TIER_COLORS)))
    color_of = {t: _KNOWN_TIER_COLORS.get(t.lower()) or next(others) for t in tiers}

    height = 2.4 + 0.82 * (len(tiers) + 1)
    fig = Figure(figsize=(14, height), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, width_ratios=widths, squeeze=False)[0]
    marks = [("practice ends", "practice_end"), ("qualifying ends", "qualifying_end"),
             ("green flag", "green_flag"), ("checkered flag", "checkered_flag")]
    mark_times = [(label, _aware(row[key], zone, key)) for label, key in marks
                  if row.get(key) is not None]

    for k, (ax, (lo, hi)) in enumerate(zip(axes, panels, strict=True)):
        ax.set_xlim(lo, hi)
        ax.set_ylim(0.3, session_y + 0.75)
        # session bars
        for name, a, b in sessions:
            if b < lo or a > hi:
                continue
            ax.barh(session_y, b - a, left=a, height=0.55, color=_SESSION_COLORS[name],
                    alpha=0.85, zorder=2)
            mid = max(a, lo) + (min(b, hi) - max(a, lo)) / 2
            minutes = round((b - a).total_seconds() / 60)
            text = f"{name}\n{a:%H:%M}–{b:%H:%M}" if minutes < 150 else (
                f"{name}  {a:%H:%M}–{b:%H:%M} ({minutes // 60} h {minutes % 60:02d} min)")
            ax.text(mid, session_y, text, ha="center", va="center", fontsize=8,
                    color="white", fontweight="bold", zorder=3)
        # session boundaries
        for label, t in mark_times:
            if lo <= t <= hi:
                ax.axvline(t, color="#444444", lw=0.8, ls=":", zorder=1)
                ax.text(t, session_y + 0.42, label, rotation=0, ha="center", va="bottom",
                        fontsize=7.5, color="#333333")
        # tier lanes
        for tier, t, _ in entries:
            y = lanes[tier]
            usable = cut is None or t < cut
            color = color_of[tier]
            if t <= hi:
                ax.plot([max(t, lo), hi], [y, y], color=color, lw=9, alpha=0.18,
                        solid_capstyle="butt", zorder=1)
            if lo <= t <= hi:
                ax.plot([t], [y], marker="D", ms=8, color=color,
                        mfc=color if usable else "white", mew=1.8, zorder=4, ls="none")
                ax.annotate(f"{t:%a %H:%M}", (t, y), xytext=(0, 9), textcoords="offset points",
                            ha="center", fontsize=7.5, color="#222222")
        if cut is not None and lo <= cut <= hi:
            ax.axvline(cut, color="#D62728", lw=2, zorder=5)
            ax.text(cut, 0.36, f" prediction cutoff {cut:%a %H:%M}", color="#D62728",
                    fontsize=8, fontweight="bold", ha="left", va="bottom")
        span_h = (hi - lo).total_seconds() / 3600
        step = 1 if span_h <= 5 else 2
        ax.xaxis.set_major_locator(mdates.HourLocator(interval=step, tz=zone))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=zone))
        ax.tick_params(axis="x", labelsize=8)
        ax.set_title(f"{lo + (hi - lo) / 2:%a %d %b %Y}", fontsize=9)
        ax.grid(axis="x", alpha=0.25)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        if k > 0:
            ax.spines["left"].set_visible(False)
            ax.tick_params(axis="y", length=0)

    labels = []
    for tier in tiers:
        feats = tier_feats[tier]
        text = ", ".join(feats)
        wrapped = textwrap.wrap(text, 34)
        if len(wrapped) > 3:
            wrapped = [*wrapped[:2], f"… (+{len(feats)} features)"]
        labels.append("\n".join([f"$\\bf{{{_tex_safe(tier)}}}$", *wrapped]))
    axes[0].set_yticks([lanes[t] for t in tiers] + [session_y],
                       labels=[*labels, "$\\bf{sessions}$"], fontsize=8)
    fig.suptitle(title or "When does each feature become usable? (times "
                 f"{tz}; a value joins a query only if available_at < cutoff)", fontsize=11)
    if cut is not None:
        from matplotlib.lines import Line2D

        proxy = {"ls": "none", "marker": "D", "ms": 7, "color": "#333333", "mew": 1.5}
        handles = [
            Line2D([], [], mfc="#333333", label="usable at the cutoff (available_at < cutoff)",
                   **proxy),
            Line2D([], [], mfc="white", label="not yet available at the cutoff", **proxy),
            Line2D([], [], color="#D62728", lw=2, label="prediction cutoff"),
        ]
        fig.legend(handles=handles, loc="outside lower center", fontsize=8, ncol=3,
                   frameon=False)
    # break marks between panels: the time axis is not continuous
    for left, right in itertools.pairwise(axes):
        for ax, x in ((left, 1.0), (right, 0.0)):
            ax.plot([x], [0.0], transform=ax.transAxes, marker=[(-1, -1.6), (1, 1.6)],
                    markersize=9, color="#444444", mew=1.2, ls="none", clip_on=False)
    return _save(fig, Canvas, path)


def _tex_safe(text: str) -> str:
    """Escape a tier name for matplotlib mathtext bold."""
    out = text.replace("\\", "").replace("{", "").replace("}", "")
    for ch in "_$#%&^~":
        out = out.replace(ch, "\\" + ch)
    return out.replace(" ", "\\ ")
