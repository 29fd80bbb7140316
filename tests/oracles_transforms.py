"""Brute-force plain-Python oracles for the ``rolling`` and ``falloff`` transforms.

Readable loops over rows, written from the documented semantics (plugins/rolling.py and
plugins/falloff.py docstrings), not from the Polars code. Both take ``rows`` (a list of dicts,
one per input row, in input order) and return a list of ``{output column: value}`` dicts in the
same input order.
"""

from __future__ import annotations

import math
import re
import statistics
from datetime import timedelta
from typing import Any

TS = "event_timestamp"
AV = "available_at"


def _clean(value: Any) -> Any:
    """NaN counts as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _nulls_first(value: Any) -> tuple[bool, Any]:
    value = _clean(value)
    return (value is not None, value if value is not None else 0)


def entity_order(rows: list[dict], keys: list[str], order: list[str]) -> list[int]:
    """Input indices sorted by keys then ``order`` (NaN as null, nulls first, stable), the way the
    transforms order rows and sort their output."""
    return sorted(
        range(len(rows)),
        key=lambda i: tuple(_nulls_first(rows[i][c]) for c in [*keys, *order]),
    )


def _groups(rows: list[dict], by: list[str], order: list[str]) -> list[list[int]]:
    """Row indices per group, each group in causal order."""
    groups: dict[tuple, list[int]] = {}
    for i in entity_order(rows, [], order):
        groups.setdefault(tuple(rows[i][c] for c in by), []).append(i)
    return list(groups.values())


# ------------------------------------------------------------------------------------ rolling

_UNITS = {
    "us": timedelta(microseconds=1),
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}


def parse_duration(text: str) -> timedelta:
    """Duration strings without ns (timedelta has microsecond resolution); anything else (such
    as ``"all"``) is an ``AssertionError``, never a silent zero-width period."""
    parts = re.findall(r"(\d+)(us|ms|s|m|h|d|w)", text)
    assert parts and "".join(a + u for a, u in parts) == text, f"not a duration: {text!r}"
    total = timedelta(0)
    for amount, unit in parts:
        total += int(amount) * _UNITS[unit]
    return total


def _holds(value: Any, cond: dict) -> bool | None:
    """Evaluate ``{op: operand}`` on a value; None for a null value."""
    if value is None:
        return None
    ((op, operand),) = [(k, v) for k, v in cond.items() if k != "column"]
    if op == "eq":
        return value == operand
    if op == "ne":
        return value != operand
    if op == "lt":
        return value < operand
    if op == "le":
        return value <= operand
    if op == "gt":
        return value > operand
    if op == "ge":
        return value >= operand
    if op == "in":
        return value in operand
    raise AssertionError(op)


def _rolling_value(spec: dict, row: dict) -> Any:
    indicator = spec.get("indicator")
    column = spec.get("column") or indicator["column"]
    value = _clean(row[column])
    if indicator is not None:
        held = _holds(value, indicator)
        value = None if held is None else int(held)
    elif isinstance(value, bool):
        value = int(value)
    where = spec.get("where")
    if where is not None and _holds(_clean(row[where.get("column", column)]), where) is not True:
        value = None
    return value


def _rolling_outputs(spec: dict) -> list[tuple[str, str, Any]]:
    """(name, agg, window) triples, following the naming rules."""
    if "outputs" in spec:
        return [(name, o["agg"], o["window"]) for name, o in spec["outputs"].items()]
    indicator = spec.get("indicator")
    column = spec.get("column") or indicator["column"]
    alias = spec.get("alias")
    if alias is None:
        alias = column
        if indicator is not None:
            ((op, operand),) = [(k, v) for k, v in indicator.items() if k != "column"]
            operands = operand if isinstance(operand, list) else [operand]
            text = "_".join(str(v).lower() if isinstance(v, bool) else str(v) for v in operands)
            alias = f"{column}_{op}_{text}"
    default = "{column}_{agg}_last_{window}"
    name = spec.get("name", default)
    result = []
    for window in spec["windows"]:
        for agg in spec["aggs"]:
            template = name.get(agg, default) if isinstance(name, dict) else name
            result.append((template.format(column=alias, agg=agg, window=window), agg, window))
    return result


def _aggregate(agg: str, values: list, min_periods: int) -> Any:
    if agg == "count":
        return len(values)
    if len(values) < max(min_periods, 1):
        return None
    if agg == "sum":
        return math.fsum(values) if any(isinstance(v, float) for v in values) else sum(values)
    if agg == "min":
        return min(values)
    if agg == "max":
        return max(values)
    mean = math.fsum(values) / len(values)
    if agg == "mean":
        return mean
    if agg == "std":
        if len(values) < 2:
            return None
        return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1))
    raise AssertionError(agg)


def rolling_order(params: dict) -> list[str]:
    """Row order within an entity: times, tie_break, then the columns the specs read."""
    order = [TS, AV, *params.get("tie_break", [])]
    for spec in params.get("features", [params]):
        column = spec.get("column") or spec["indicator"]["column"]
        for name in (column, spec.get("where", {}).get("column", column)):
            if name not in order:
                order.append(name)
    return order


def rolling_oracle(rows: list[dict], keys: list[str], params: dict) -> list[dict]:
    specs = params.get("features", [params])
    order = rolling_order(params)
    results: list[dict] = [{} for _ in rows]
    for group in _groups(rows, keys, order):
        for spec in specs:
            include = spec.get("include_current", True)
            min_periods = spec.get("min_periods", 1)
            values = [_rolling_value(spec, rows[i]) for i in group]
            for name, agg, window in _rolling_outputs(spec):
                for pos, i in enumerate(group):
                    if isinstance(window, int) or window == "all":
                        # "all" is a row window without a limit: every row before this one in
                        # the entity's order (rows at the same instant included), not a period.
                        end = pos + 1 if include else pos
                        start = 0 if window == "all" else max(0, end - window)
                        members = list(range(start, end))
                    else:
                        now, period = rows[i][TS], parse_duration(window)
                        members = [
                            q for q, j in enumerate(group) if now - period < rows[j][TS] < now
                        ]
                        if include:
                            members.append(pos)
                    present = [values[q] for q in members if values[q] is not None]
                    results[i][name] = _aggregate(agg, present, min_periods)
    return results


# ------------------------------------------------------------------------------------ falloff

FALLOFF_DEFAULT_NAMES = {
    "stint": "stint",
    "tyre_age": "tyre_age",
    "delta_best": "lap_time_delta_best",
    "delta_first_n": "lap_time_delta_first_n",
    "deg_slope": "deg_slope",
    "slow_lap": "slow_lap",
}


def _ols_slope(points: list[tuple[int, float]]) -> float | None:
    xs = [x for x, _ in points]
    if len(set(xs)) < 2:
        return None
    mx = sum(xs) / len(xs)
    my = math.fsum(y for _, y in points) / len(points)
    sxy = math.fsum((x - mx) * (y - my) for x, y in points)
    sxx = math.fsum((x - mx) ** 2 for x in xs)
    return sxy / sxx


def falloff_order(params: dict) -> list[str]:
    """Row order within a partition: times, lap, group_by, lap time, pit and caution columns."""
    order = [TS, AV]
    for name in (
        params.get("lap_column"),
        *params.get("group_by", []),
        params.get("lap_time_column", "lap_time"),
        params.get("pit_column"),
        params.get("caution_column"),
    ):
        if name is not None and name not in order:
            order.append(name)
    return order


def falloff_oracle(rows: list[dict], keys: list[str], params: dict) -> list[dict]:
    lt_col = params.get("lap_time_column", "lap_time")
    lap_col = params.get("lap_column")
    pit_col = params.get("pit_column")
    caution_col = params.get("caution_column")
    jump = params.get("jump_seconds")
    first_n = params.get("first_n", 3)
    partial = params.get("first_n_partial", False)
    slope_window = params.get("slope_window", 10)
    slope_min = params.get("slope_min_laps", min(3, slope_window))
    slow_k = params.get("slow_k", 1.05)
    slow_window = params.get("slow_window", 5)
    slow_min = params.get("slow_min_laps", 1)
    outputs = params.get("outputs", list(FALLOFF_DEFAULT_NAMES))
    if isinstance(outputs, list):
        prefix = params.get("prefix", "")
        outputs = {kind: prefix + FALLOFF_DEFAULT_NAMES[kind] for kind in outputs}

    results: list[dict] = [{} for _ in rows]
    for group in _groups(rows, [*keys, *params.get("group_by", [])], falloff_order(params)):
        stint = 0
        previous_lap_time = None
        previous_pit = False
        for pos, i in enumerate(group):
            row = rows[i]
            lap_time = _clean(row[lt_col])
            lap_time = None if lap_time is None else float(lap_time)
            caution = bool(caution_col and row[caution_col])
            pit = bool(pit_col and row[pit_col])
            if (
                jump is not None
                and not caution
                and pos > 0
                and lap_time is not None
                and previous_lap_time is not None
                and lap_time - previous_lap_time > jump
            ):
                pit = True
            if pos == 0 or (pit and not previous_pit):
                stint += 1
                rows_in_stint = 0
                first_lap = None
                clean_laps: list[tuple[int, float]] = []  # (tyre_age, lap_time)
            previous_lap_time, previous_pit = lap_time, pit

            rows_in_stint += 1
            if lap_col is None:
                age = rows_in_stint
            else:
                lap = row[lap_col]
                if first_lap is None and lap is not None:
                    first_lap = lap
                age = None if lap is None else lap - first_lap + 1
            clean = not pit and not caution and lap_time is not None and age is not None
            earlier_clean = list(clean_laps)
            if clean:
                clean_laps.append((age, lap_time))

            out = {"stint": stint, "tyre_age": age}
            best = min((t for _, t in clean_laps), default=None)
            out["delta_best"] = None if lap_time is None or best is None else lap_time - best
            firsts = [t for _, t in clean_laps[:first_n]]
            enough = len(firsts) == first_n or (partial and firsts)
            out["delta_first_n"] = (
                lap_time - math.fsum(firsts) / len(firsts)
                if enough and lap_time is not None
                else None
            )
            recent = clean_laps[-slope_window:]
            out["deg_slope"] = _ols_slope(recent) if len(recent) >= slope_min else None
            prior = [t for _, t in earlier_clean[-slow_window:]]
            out["slow_lap"] = (
                lap_time > slow_k * statistics.median(prior)
                if len(prior) >= slow_min and lap_time is not None
                else None
            )
            results[i] = {name: out[kind] for kind, name in outputs.items()}
    return results


# ------------------------------------------------------------------------------- test helpers


def load_benchmark_module() -> Any:
    """Import benchmarks/materialize_polars.py (not a package) by path."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "materialize_polars.py"
    spec = importlib.util.spec_from_file_location("materialize_polars", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def same_value(got: Any, want: Any, tol: float = 1e-9) -> bool:
    """Equality, with a relative/absolute tolerance for floats."""
    if got is None or want is None:
        return got is None and want is None
    if isinstance(got, float) or isinstance(want, float):
        return math.isclose(got, want, rel_tol=tol, abs_tol=tol)
    return type(got) is type(want) and got == want


def outputs_in_input_order(
    out_rows: list[dict], rows: list[dict], keys: list[str], order: list[str]
) -> list[dict]:
    """Map output rows (sorted by keys then ``order``, ties in input order) back to input order,
    checking the pass-through columns on the way."""
    assert len(out_rows) == len(rows), "one output row per input row"
    result: list[dict] = [{} for _ in rows]
    for out, i in zip(out_rows, entity_order(rows, keys, order), strict=True):
        for column in [*keys, TS, AV]:
            assert out[column] == rows[i][column], (column, out, rows[i])
        result[i] = out
    return result


def assert_outputs_match(
    got: list[dict], want: list[dict], columns: list[str], tol: float = 1e-9
) -> None:
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        for column in columns:
            assert same_value(g[column], w[column], tol), (
                f"row {i} column {column}: got {g[column]!r}, want {w[column]!r}"
            )


# ------------------------------------------------------------------ shared property checks


class TransformUnderTest:
    """The property checks every row-wise transform test runs (against its oracle, causal
    truncation, input order), written once. ``order(params)`` gives the columns after the
    keys that order an entity's rows (ties then keep input order), ``oracle(rows, keys,
    params)`` the expected outputs in input order."""

    def __init__(self, transform: Any, schema: dict[str, Any], order: Any, oracle: Any) -> None:
        self.transform, self.schema, self.order, self.oracle = transform, schema, order, oracle

    def run(self, rows: list[dict], keys: list[str], params: dict,
            frame: Any = None) -> tuple[dict[str, Any], Any, list[dict]]:
        """Run the transform; return (declared schema, output frame, outputs in input order)."""
        import polars as pl

        from featurestore.transforms import TransformContext

        frame = pl.DataFrame(rows, schema=self.schema) if frame is None else frame
        declared = self.transform.declared_schema(params, frame.schema)
        out = self.transform(frame.lazy(), params, TransformContext(keys=tuple(keys))).collect()
        return declared, out, outputs_in_input_order(out.to_dicts(), rows, keys,
                                                     self.order(params))

    def check_matches_oracle(self, rows: list[dict], keys: list[str], params: dict) -> None:
        """Output schema is keys, times and the declared columns; values are the oracle's."""
        declared, out, got = self.run(rows, keys, params)
        assert dict(out.schema) == {**{k: self.schema[k] for k in keys}, TS: self.schema[TS],
                                    AV: self.schema[AV], **declared}
        assert_outputs_match(got, self.oracle(rows, keys, params), list(declared))

    def check_causal_truncation(self, rows: list[dict], keys: list[str], params: dict,
                                cut: float, inside_tie: bool) -> None:
        """Dropping every row after a cut point (in event order) leaves earlier outputs
        unchanged. With ``inside_tie`` the cut falls between two rows with the same event time
        if there are any."""
        order = entity_order(rows, [], self.order(params))
        end = int(cut * len(rows))
        ties = [c for c in range(1, len(rows)) if rows[order[c - 1]][TS] == rows[order[c]][TS]]
        if inside_tie and ties:
            end = ties[int(cut * (len(ties) - 1))]
        kept = sorted(order[:end])
        declared, _, full = self.run(rows, keys, params)
        _, _, part = self.run([rows[i] for i in kept], keys, params)
        assert_outputs_match(part, [full[i] for i in kept], list(declared), tol=0.0)

    def check_input_order_irrelevant(self, rows: list[dict], keys: list[str], params: dict,
                                     seed: int) -> None:
        """Shuffling the input (exact duplicates of keys and times included) changes nothing."""
        import random

        from polars.testing import assert_frame_equal

        shuffled = list(rows)
        random.Random(seed).shuffle(shuffled)
        assert_frame_equal(self.run(rows, keys, params)[1], self.run(shuffled, keys, params)[1])
