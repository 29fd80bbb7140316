"""featurestore plugin: ``ewm_mean``, an exponentially weighted mean of a column per entity.

For each entity, rows are taken in causal order (event time, then ``available_at``, then the
value itself so that rows sharing both times give the same result in any input order) and the
average is updated row by row with ``adjust=False``::

    m_0 = x_0,    m_i = (1 - alpha) * m_(i-1) + alpha * x_i

Null values are skipped: they neither update nor decay the average, and a row whose value is null
gets the average so far. With ``include_current`` false (the default) a row gets the average of
the rows before it, which is what a prediction made just before this lap would have known.

Params:
- ``column`` (required): the numeric input column.
- exactly one of ``alpha`` (0 < alpha <= 1), ``span`` (>= 1, alpha = 2 / (span + 1)) or
  ``half_life`` (> 0, alpha = 1 - exp(-ln 2 / half_life)).
- ``include_current`` (bool, default false): include the row's own value.
- ``min_samples`` (int >= 1, default 1): null until that many non-null values were seen.
- ``output`` (str): the output column, default ``<column>_ewm_mean``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import polars as pl

from featurestore import hookimpl
from featurestore.transforms import Transform, TransformContext, entity_order

__version__ = "0.1.0"

# Bad params raise ValueError, as the transform contract asks (TRY004 would want TypeError).
_KNOWN = {"column", "alpha", "span", "half_life", "include_current", "min_samples", "output"}


def _alpha(params: Mapping[str, Any]) -> float:
    given = [k for k in ("alpha", "span", "half_life") if params.get(k) is not None]
    if len(given) != 1:
        raise ValueError("give exactly one of 'alpha', 'span' or 'half_life'"
                         + (f" (got {', '.join(given)})" if given else ""))
    key = given[0]
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{key!r} must be a number, got {value!r}")
    value = float(value)
    if key == "alpha":
        if not 0.0 < value <= 1.0:
            raise ValueError(f"'alpha' must be in (0, 1], got {value}")
        return value
    if key == "span":
        if value < 1.0:
            raise ValueError(f"'span' must be >= 1, got {value}")
        return 2.0 / (value + 1.0)
    if value <= 0.0:
        raise ValueError(f"'half_life' must be > 0, got {value}")
    return 1.0 - math.exp(-math.log(2.0) / value)


def _settings(params: Mapping[str, Any]) -> tuple[str, float, bool, int, str]:
    unknown = sorted(set(params) - _KNOWN)
    if unknown:
        raise ValueError(f"unknown param(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN))}")
    column = params.get("column")
    if not isinstance(column, str) or not column:
        raise ValueError("'column' (the input column name) is required")
    include = params.get("include_current", False)
    if not isinstance(include, bool):
        raise ValueError(f"'include_current' must be true or false, got {include!r}")
    min_samples = params.get("min_samples", 1)
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise ValueError(f"'min_samples' must be an integer >= 1, got {min_samples!r}")
    output = params.get("output") or f"{column}_ewm_mean"
    if not isinstance(output, str):
        raise ValueError(f"'output' must be a column name, got {output!r}")
    return column, _alpha(params), include, min_samples, output


def _output_columns(params: Mapping[str, Any],
                    input_schema: Mapping[str, pl.DataType]) -> dict[str, pl.DataType]:
    column, _, _, _, output = _settings(params)
    if column not in input_schema:
        raise ValueError(f"input column {column!r} not found; columns: {', '.join(input_schema)}")
    dtype = input_schema[column]
    if not dtype.is_numeric():
        raise ValueError(f"input column {column!r} is {dtype}, expected a number")
    return {output: pl.Float32 if dtype == pl.Float32 else pl.Float64}


def _ewm_mean(frame: pl.LazyFrame, params: Mapping[str, Any],
              ctx: TransformContext) -> pl.LazyFrame:
    column, alpha, include, min_samples, output = _settings(params)
    keys = list(ctx.keys)
    dtype = _output_columns(params, frame.collect_schema())[output]
    x = pl.col(column).cast(dtype)
    running = x.ewm_mean(alpha=alpha, adjust=False, min_samples=min_samples, ignore_nulls=True)
    # The average after each row, carried over rows whose value is null.
    state = running.over(keys).forward_fill().over(keys)
    value = state if include else state.shift(1).over(keys)
    return (
        frame.sort([*entity_order(ctx), column], nulls_last=True)
        .select(*keys, ctx.time_column, ctx.available_column, value.alias(output))
    )


EWM_MEAN = Transform(
    name="ewm_mean",
    fn=_ewm_mean,
    output_columns=_output_columns,
    description="Exponentially weighted mean of a column per entity (adjust=False), of the rows "
    "before the current one, or up to and including it with include_current.",
    lookback=lambda params: None,
)


@hookimpl
def register_transforms(register):
    register(EWM_MEAN)
