"""The ``field`` transform: compare each row with the rest of its field at the same moment.

A group-scope transform: a row's values come from the rows of *every* entity that share its
group (``group_by``, e.g. the race) and its moment (``at``, e.g. the lap), as far as they were
available when the row itself was: lap time minus the field's median on that lap, rank on the
lap, gap to the leader in cumulative race time.

Params (JSON object):

- ``group_by`` (list of column names, required, non-empty): the group, e.g. ``["race_id"]``.
- ``at`` (list of column names, default ``[]``): the columns that make "the same moment" within
  the group, e.g. ``["lap"]``. With ``[]`` the whole group is one moment.
- ``min_count`` (int >= 1, default 1): fewer non-null values in the comparison set than this
  gives null for every output except ``count``.
- ``outputs`` (object, required, non-empty): ``{output column: spec}``, each spec an object with
  ``kind`` (below), ``column`` (the numeric value column compared; NaN counts as null) and, for
  ``rank``, ``percentile`` and ``delta_best`` only, ``descending`` (bool, default false: smaller
  is better, as for lap times; true: larger is better, as for speeds).

Group and moment columns may not be floats (NaN makes float equality ambiguous). The group
columns the transform declares (``group_columns``, what causality verification truncates and
isolates by) are ``group_by``: ``at`` only narrows which rows of its group a row reads. (Declaring
the moment too would make a lap published at once a group with a single ``available_at``, which
no truncation can test.)

The comparison set of a row r: the rows s of the input (any entity, r itself included) with the
same values as r in every ``group_by`` and ``at`` column and ``available_at(s) <=
available_at(r)``. So rows with equal ``available_at`` see each other, and a car whose lap was
published after the others' sees all of them while they do not see it. The set counts rows, not
entities: two rows of one entity at the same moment are two values. Only non-null values of the
spec's column take part; ``n`` below is their number. A row with a null in a ``group_by`` or
``at`` column belongs to no group: every output of it is null (``count`` too).

Outputs (kind: dtype — value):

- ``rank``: Int32 — 1 + the number of values in the set strictly better than the row's own
  ("competition" ranking: tied values share the best of their ranks and the next rank is
  skipped, 1, 2, 2, 4). Null when the row's own value is null.
- ``percentile``: Float64 — the share of the *other* values in the set that are strictly worse
  than the row's: ``(number strictly worse) / (n - 1)``, 1.0 = better than every other row,
  0.0 = no other row is worse. Null when the row's value is null or ``n < 2``.
- ``delta_median``, ``delta_mean``: Float64 — the row's value minus the median (the mean of the
  two middle values when ``n`` is even) / the mean of the set's values.
- ``delta_best``: Float64 — the row's value minus the best value of the set: the minimum, or the
  maximum with ``descending``. 0 for the best row.
- ``gap_to_leader``: Float64 — for a cumulative-time column (seconds since the start): the row's
  value minus the smallest value of the set (``delta_best`` without ``descending``). 0 for the
  leader; the leader of a lap crosses the line first, so it is always in the set.
- ``count``: Int64 — ``n``, the number of non-null values in the set (0 when there are none).

Every output but ``count`` is null when the row's own value is null (a null row is compared with
nothing) or when ``n < min_count``. The set always holds the row itself, so a row with a non-null
value never has an empty set; a row whose value is null may (``count`` 0).

Output: the key columns, ``event_timestamp``, ``available_at`` and the declared columns, one row
per input row, *sorted* by the keys, ``event_timestamp``, ``available_at``, then the group and
moment columns and the value columns (NaN as null, nulls first). Rows still tied are identical
in everything the transform reads and get the same values, so the output never depends on the
input's row order. ``lookback`` is ``None``: a row depends on other entities' rows, not on a
bounded number of its own entity's earlier rows.

Cost: ``delta_*``, ``gap_to_leader`` and ``count`` are running aggregations over each (group,
moment) bucket sorted by ``available_at``. ``rank`` and ``percentile`` count, for each row, the
values below and above its own among the rows of its bucket available by then, with one Fenwick
(binary indexed) tree over every bucket: O(n log n) whether a lap is published at once (a lap
chart) or car by car (live timing), in as many vectorised steps as the largest number of
distinct ``available_at`` values in one bucket (about 40 for a lap of a 40-car field).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from featurestore.hookspecs import hookimpl
from featurestore.paramspec import REQUIRED, Param, ParamSpec
from featurestore.transforms import (
    AVAILABLE_AT,
    EVENT_TIMESTAMP,
    Params,
    Transform,
    TransformContext,
)

if TYPE_CHECKING:  # numpy is imported where it runs: every process loads this plugin
    import numpy as np

NAME = "field"
KINDS: dict[str, pl.DataType] = {
    "rank": pl.Int32(),
    "percentile": pl.Float64(),
    "delta_median": pl.Float64(),
    "delta_mean": pl.Float64(),
    "delta_best": pl.Float64(),
    "gap_to_leader": pl.Float64(),
    "count": pl.Int64(),
}
DIRECTED = ("rank", "percentile", "delta_best")
# Window covering every earlier position of a bucket (positions are dense ranks, < 2**32).
_ALL = f"{2**32}i"


@dataclass(frozen=True)
class Output:
    name: str
    kind: str
    column: str
    descending: bool


@dataclass(frozen=True)
class FieldParams:
    group_by: tuple[str, ...]
    at: tuple[str, ...]
    min_count: int
    outputs: tuple[Output, ...]

    @property
    def bucket(self) -> list[str]:
        """The columns whose values make one comparison bucket: the group, then the moment."""
        return [*self.group_by, *self.at]

    @property
    def value_columns(self) -> list[str]:
        """The compared columns, each once, in the order the outputs name them."""
        return list(dict.fromkeys(o.column for o in self.outputs))


def _fail(message: str) -> ValueError:
    return ValueError(f"{NAME}: {message}")


OUTPUT = ParamSpec("An output (`outputs.<column name>`)", (
    Param("kind", "str", f"One of {', '.join(KINDS)}.", default=REQUIRED),
    Param("column", "column", "The compared numeric column (NaN counts as null).",
          default=REQUIRED),
    Param("descending", "bool", f"Larger is better (for {', '.join(DIRECTED)} only).",
          default=False),
), example={"kind": "rank", "column": "lap_time"})
SPEC = ParamSpec("Params", (
    Param("group_by", "columns", "Columns that make a group (`[\"race_id\"]`), declared as "
          "the transform's group columns; at least one.", default=REQUIRED),
    Param("at", "columns", "Columns that make \"the same moment\" within a group "
          "(`[\"lap\"]`); none: the whole group is one moment.", default=[]),
    Param("min_count", "int", "Fewer non-null values than this in the comparison set gives "
          "null (except count).", default=1, low=1),
    Param("outputs", "object", "`{output column: output}`, one entry per output column (below).",
          default=REQUIRED),
), doc="Each row against the rest of its field at the same moment (a group-scope transform).",
    example={"group_by": ["race_id"], "at": ["lap"], "outputs": {
        "lap_time_rank_on_lap": {"kind": "rank", "column": "lap_time"}}},
    nested=(OUTPUT,))


def _parse_output(name: Any, raw: Any) -> Output:
    where = f"outputs.{name}"
    if not isinstance(name, str) or not name:
        raise _fail("param 'outputs' keys must be non-empty output column names")
    if name in (EVENT_TIMESTAMP, AVAILABLE_AT):
        raise _fail(f"param 'outputs': column {name!r} clashes with a reserved column")
    v = OUTPUT.parse(raw, _fail, f"{where}.")
    if v["kind"] not in KINDS:
        raise _fail(f"param '{where}.kind' must be one of {list(KINDS)}, got {v['kind']!r}")
    if "descending" in raw and v["kind"] not in DIRECTED:
        raise _fail(f"param '{where}.descending' applies only to kinds {list(DIRECTED)}, "
                    f"not {v['kind']!r}")
    return Output(name, v["kind"], v["column"], v["descending"])


def parse_params(params: Params) -> FieldParams:
    """Validate params without a schema; ``ValueError`` names the bad param."""
    if not isinstance(params, Mapping):
        raise _fail("params must be a JSON object")
    v = SPEC.parse(params, _fail)
    group_by, at = tuple(v["group_by"]), tuple(v["at"])
    if not group_by:
        raise _fail("param 'group_by' must name at least one column")
    both = sorted(set(group_by) & set(at))
    if both:
        raise _fail(f"column(s) {both} appear in both 'group_by' and 'at'")
    min_count, raw = v["min_count"], v["outputs"]
    if not raw:
        raise _fail("param 'outputs' is required: a non-empty object {output column: "
                    "{\"kind\": ..., \"column\": ...}}")
    outputs = tuple(_parse_output(name, spec) for name, spec in raw.items())
    return FieldParams(group_by, at, min_count, outputs)


def _declare(p: FieldParams, schema: Mapping[str, pl.DataType]) -> dict[str, pl.DataType]:
    for key, cols in (("group_by", p.group_by), ("at", p.at)):
        for col in cols:
            if col not in schema:
                raise _fail(f"param '{key}': no column {col!r} in input")
            if schema[col].is_float():
                raise _fail(f"param '{key}': column {col!r} has dtype {schema[col]}; group and "
                            "moment columns must not be floats (use an integer or string)")
    for out in p.outputs:
        where = f"outputs.{out.name}.column"
        if out.column not in schema:
            raise _fail(f"param '{where}': no column {out.column!r} in input")
        dtype = schema[out.column]
        if not dtype.is_numeric() or isinstance(dtype, pl.Decimal):
            raise _fail(f"param '{where}': column {out.column!r} has dtype {dtype}; field "
                        "compares numeric columns")
    return {out.name: KINDS[out.kind] for out in p.outputs}


def output_columns(
    params: Params, input_schema: Mapping[str, pl.DataType]
) -> dict[str, pl.DataType]:
    """The declared output columns and dtypes; ``ValueError`` for bad params or missing columns."""
    return _declare(parse_params(params), input_schema)


def group_columns(params: Params) -> Sequence[str]:
    """The columns other entities' rows must share with a row to be read: ``group_by``."""
    return list(parse_params(params).group_by)


def lookback(params: Params) -> int | None:
    """A row reads other entities' rows, never a bounded run of its own: no look-back bound."""
    parse_params(params)
    return None


# --------------------------------------------------------------------------- compute


def _statistic(o: Output) -> str | None:
    """The running aggregation a delta output subtracts (None for rank, percentile, count)."""
    if o.kind == "delta_best":
        return "max" if o.descending else "min"
    return {"delta_median": "median", "delta_mean": "mean", "gap_to_leader": "min"}.get(o.kind)


def _fenwick_add(tree: np.ndarray, slots: np.ndarray) -> None:
    """Add 1 at each of ``slots`` (1-based; repeats add more) of a Fenwick (binary indexed) tree."""
    import numpy as np

    slots = slots.copy()
    while slots.size:
        np.add.at(tree, slots, 1)
        slots = slots + (slots & -slots)
        slots = slots[slots < tree.size]


def _fenwick_prefix(tree: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """The sums of ``tree``'s slots 1..s for each s of ``slots`` (0 gives 0)."""
    import numpy as np

    slots, total = slots.copy(), np.zeros(slots.size, dtype=np.int64)
    while slots.any():
        total += tree[slots]  # tree[0] stays 0, so finished slots add nothing
        slots -= slots & -slots
    return total


def _dominance_counts(batch: pl.Series) -> pl.Series:
    """For each row of a frame sorted by bucket (``_fd_b``, its ordinal): among the values of its
    bucket at a position (``_fd_pos``) at or before its own, how many rank strictly below its
    value rank (``_fd_vr``, dense within the bucket), how many at or below it, and how many there
    are in all. A row with a null value rank gets zeros (the caller masks its outputs).

    The positions are processed in increasing order over every bucket at once: insert the value
    ranks of every row at position c, then read the counts of those rows from one Fenwick tree
    in which each bucket owns a disjoint range of slots. O(n log n), however many rows share a
    position, in as many steps as the largest position.
    """
    import numpy as np

    frame = batch.struct.unnest()
    rank = frame["_fd_vr"].fill_null(0).to_numpy().astype(np.int64)
    rows = np.flatnonzero(rank > 0)
    below = np.zeros(rows.size, dtype=np.int64)
    upto, total = np.zeros_like(below), np.zeros_like(below)
    if rows.size:
        bucket = frame["_fd_b"].to_numpy().astype(np.int64)[rows]
        rank, pos = rank[rows], frame["_fd_pos"].to_numpy().astype(np.int64)[rows]
        width = np.zeros(int(bucket.max()) + 1, dtype=np.int64)
        np.maximum.at(width, bucket, rank)
        start = (np.cumsum(width) - width)[bucket]  # the slot before the bucket's first one
        slot, end = start + rank, start + width[bucket]
        tree = np.zeros(int(width.sum()) + 1, dtype=np.int64)
        order = np.argsort(pos, kind="stable")
        bounds = np.flatnonzero(np.diff(pos[order])) + 1
        for step in np.split(order, bounds):
            _fenwick_add(tree, slot[step])
            base = _fenwick_prefix(tree, start[step])
            below[step] = _fenwick_prefix(tree, slot[step] - 1) - base
            upto[step] = _fenwick_prefix(tree, slot[step]) - base
            total[step] = _fenwick_prefix(tree, end[step]) - base
    out = {}
    for name, values in (("below", below), ("upto", upto), ("total", total)):
        out[name] = np.zeros(len(frame), dtype=np.int64)
        out[name][rows] = values
    return pl.DataFrame(out).to_struct(batch.name)


def _field(frame: pl.LazyFrame, params: Params, ctx: TransformContext) -> pl.LazyFrame:
    p = parse_params(params)
    schema = frame.collect_schema()
    declared = _declare(p, schema)
    keys = list(ctx.keys)
    base = [*keys, ctx.time_column, ctx.available_column]
    for name in declared:
        if name in base:
            raise _fail(f"output column {name!r} clashes with a key or time column")
    bucket = p.bucket
    # The compared values under private names, NaN as null (keys and times stay untouched).
    values = {c: f"_fd_v{i}" for i, c in enumerate(p.value_columns)}
    lf = frame.with_columns(
        (pl.col(c).fill_nan(None) if schema[c].is_float() else pl.col(c)).alias(v)
        for c, v in values.items()
    ).with_columns(_fd_in=pl.all_horizontal(pl.col(c).is_not_null() for c in bucket))
    # Within a bucket, position = dense rank of available_at: every row's comparison set is the
    # bucket's rows at or before its position (equal available_at, equal position).
    lf = lf.sort([*bucket, ctx.available_column], nulls_last=True).with_columns(
        _fd_pos=pl.col(ctx.available_column).rank("dense").over(bucket).cast(pl.Int64))

    def running(expr: pl.Expr, fn: str) -> pl.Expr:
        return getattr(expr, f"rolling_{fn}_by")("_fd_pos", _ALL, closed="right").over(bucket)

    # Running aggregations need the rows in (bucket, position) order: compute them right after
    # the sort, before any join (which need not keep row order).
    stats = {f"_fd_n_{v}": running(pl.col(v).is_not_null().cast(pl.Int64), "sum")
             for v in values.values()}
    for o in p.outputs:
        fn = _statistic(o)
        if fn is not None:
            v = values[o.column]
            stats[f"_fd_{fn}_{v}"] = running(pl.col(v).cast(pl.Float64), fn)
    ordered = [c for c in dict.fromkeys(o.column for o in p.outputs)
               if any(o.column == c and o.kind in ("rank", "percentile") for o in p.outputs)]
    if ordered:
        # The bucket's ordinal (rows are sorted by bucket) and each value's dense rank in it.
        stats["_fd_b"] = pl.any_horizontal(
            pl.col(c).ne_missing(pl.col(c).shift(1)) for c in bucket).cum_sum()
    lf = lf.with_columns(**stats)
    count_dtype = pl.Struct({"below": pl.Int64, "upto": pl.Int64, "total": pl.Int64})
    for column in ordered:
        v = values[column]
        rank = pl.when(pl.col("_fd_in")).then(pl.col(v).rank("dense").over(bucket))
        lf = lf.with_columns(
            pl.struct("_fd_b", "_fd_pos", rank.alias("_fd_vr"))
            .map_batches(_dominance_counts, return_dtype=count_dtype)
            .struct.rename_fields([f"_fd_below_{v}", f"_fd_upto_{v}", f"_fd_total_{v}"])
            .struct.unnest())

    exprs = []
    for o in p.outputs:
        v = values[o.column]
        value, n = pl.col(v), pl.col(f"_fd_n_{v}")
        if o.kind == "count":
            expr = n
        else:
            below = pl.col(f"_fd_below_{v}")
            above = pl.col(f"_fd_total_{v}") - pl.col(f"_fd_upto_{v}")
            better, worse = (above, below) if o.descending else (below, above)
            if o.kind == "rank":
                expr = better + 1
            elif o.kind == "percentile":
                expr = pl.when(n >= 2).then(worse.cast(pl.Float64) / (n - 1).cast(pl.Float64))
            else:  # a delta to the running median, mean, min or max
                expr = value.cast(pl.Float64) - pl.col(f"_fd_{_statistic(o)}_{v}")
            expr = pl.when(value.is_not_null() & (n >= p.min_count)).then(expr)
        exprs.append(pl.when(pl.col("_fd_in")).then(expr).cast(declared[o.name]).alias(o.name))

    # Output order: entity order, then everything read, so tied rows are indistinguishable.
    order = [*base, *[c for c in bucket if c not in base]]
    by = [pl.col(c) for c in order] + [pl.col(v) for v in values.values()]
    return lf.with_columns(exprs).sort(by, nulls_last=False, maintain_order=True).select(
        *base, *declared)


FIELD = Transform(
    name=NAME,
    fn=_field,
    output_columns=output_columns,
    description="Each row against its field at the same moment: rank, percentile, deltas to "
                "the median/mean/best, gap to the leader",
    lookback=lookback,
    scope="group",
    group_columns=group_columns,
)


@hookimpl
def register_transforms(register: Any) -> None:
    register(FIELD)
