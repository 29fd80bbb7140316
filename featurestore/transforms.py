"""The transform interface: what a plugin registers and what the core calls.

A transform turns one source's rows into feature columns. It receives a Polars ``LazyFrame``
holding the entity key columns, ``event_timestamp`` and ``available_at`` (both UTC datetimes) and
the source's other columns, plus its JSON params, and returns a ``LazyFrame`` with exactly one row
per input row: the same key columns, ``event_timestamp`` and ``available_at`` values, and the
output columns it declared up front through ``output_columns``.

The contract a transform keeps (checked by the core and by ``featurestore.testing``):
- row preserving: one output row per input row, keys and event times unchanged;
- causal: the value of an output row depends only on input rows whose ``available_at`` is at or
  before the row's own ``available_at``, and only on rows of its own entity (scope ``entity``:
  every column of ``ctx.keys``) or on rows, of any entity, that share its values of the declared
  group columns (scope ``group``: every car on the same lap of the same race, for
  field-relative features);
- declared schema: output columns and dtypes are those ``output_columns`` returned;
- deterministic: the same input and params give the same output.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import polars as pl

EVENT_TIMESTAMP = "event_timestamp"
AVAILABLE_AT = "available_at"
SCOPES = ("entity", "group")

Params = Mapping[str, Any]


@dataclass(frozen=True)
class TransformContext:
    """What a transform knows about its input besides the frame itself."""

    keys: tuple[str, ...]
    """The entity's join-key columns, in declaration order."""
    time_column: str = EVENT_TIMESTAMP
    """The event-time column (UTC). Rows of an entity are ordered by it, then by ``available_at``."""
    available_column: str = AVAILABLE_AT
    """The column saying when each row's values became available (UTC)."""


TransformFn = Callable[[pl.LazyFrame, Params, TransformContext], pl.LazyFrame]
# ``output_columns(params, input_schema)`` or, to see the keys, ``(params, input_schema, ctx)``.
OutputColumnsFn = Callable[..., Mapping[str, pl.DataType]]


def takes_context(fn: Callable[..., Any]) -> bool:
    """Whether ``output_columns`` accepts the context: a third positional parameter, ``ctx``
    by keyword, or ``*args``. Plugins written for the two-argument form keep working."""
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = 0
    for p in parameters:
        if p.kind is p.VAR_POSITIONAL or p.name == "ctx":
            return True
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional += 1
    return positional >= 3


@dataclass(frozen=True)
class Transform:
    """A named, registered computation from source rows to feature columns.

    ``output_columns(params, input_schema)`` returns the columns and dtypes ``fn`` will add; it
    must raise ``ValueError`` with a readable message for invalid params or a missing input
    column. Declared with a third parameter, ``output_columns(params, input_schema, ctx)``, it
    also receives the ``TransformContext`` (the entity's keys), for wrappers that must not
    guess them. ``lookback(params)`` says how many earlier rows per entity a row's value may depend on
    (``None``: the whole history), which lets incremental materialization recompute only new rows
    plus that look-back.

    ``scope`` says which rows an output row may read: ``"entity"`` (the default) only rows of its
    own entity; ``"group"`` also rows of other entities that share its values of the columns
    ``group_columns(params)`` returns (for example ``["race_id"]``), always subject to the
    availability rule above. Causality verification truncates a group transform's input across
    every entity at once.

    ``input_columns(params)``, when given, names the source columns whose *values* the transform
    turns into features (not the columns it only groups or orders by). Apply uses it for the
    forbidden-column rule: a column a later-tier view reads holds later-tier information, so no
    earlier-tier source may carry it. Without it, the strings under params keys named
    ``column``/``columns`` or ending in ``_column``/``_columns`` are taken.
    """

    name: str
    fn: TransformFn
    output_columns: OutputColumnsFn
    description: str = ""
    lookback: Callable[[Params], int | None] = field(default=lambda params: None)
    scope: str = "entity"
    group_columns: Callable[[Params], Sequence[str]] = field(default=lambda params: ())
    input_columns: Callable[[Params], Sequence[str]] | None = None

    def declared_schema(
        self,
        params: Params,
        input_schema: Mapping[str, pl.DataType],
        ctx: TransformContext | None = None,
    ) -> dict[str, pl.DataType]:
        """Return the declared output columns, with ``ValueError`` for bad params.

        ``ctx`` (the keys and time columns) reaches an ``output_columns`` that takes it (see
        ``takes_context``); without one, such a function gets a context with no keys.
        """
        if takes_context(self.output_columns):
            return dict(self.output_columns(params, input_schema, ctx or TransformContext(())))
        return dict(self.output_columns(params, input_schema))

    def __call__(
        self, frame: pl.LazyFrame, params: Params, ctx: TransformContext
    ) -> pl.LazyFrame:
        return self.fn(frame, params, ctx)


def entity_order(ctx: TransformContext) -> Sequence[str]:
    """Columns that put rows in causal order within an entity."""
    return [*ctx.keys, ctx.time_column, ctx.available_column]
