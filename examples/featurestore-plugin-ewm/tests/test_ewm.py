"""Tests of the ewm_mean transform, with featurestore's conformance kit."""

from __future__ import annotations

import math

import polars as pl
import pytest
from featurestore_plugin_ewm import EWM_MEAN, register_transforms

from featurestore.testing import assert_transform_conforms, sample_laps
from featurestore.transforms import TransformContext

PARAMS = [
    {"column": "lap_time_s", "alpha": 0.3},
    {"column": "lap_time_s", "span": 5, "include_current": True},
    {"column": "lap_time_s", "half_life": 2.0, "min_samples": 3, "output": "pace"},
    {"column": "position", "alpha": 1.0},
]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
def test_conforms(params):
    assert_transform_conforms(EWM_MEAN, params, sample_laps(seed=3), plugin="ewm")


def test_conforms_with_composite_keys_and_duplicate_times():
    frame = sample_laps(composite_key=True, duplicate_times=True, null_fraction=0.2, seed=7)
    assert_transform_conforms(EWM_MEAN, {"column": "lap_time_s", "alpha": 0.5}, frame,
                              keys=("driver_id", "team_id"))


def reference(values, alpha, include_current, min_samples=1):
    """ewm_mean in plain Python: skip nulls, adjust=False."""
    out, mean, seen = [], None, 0
    for x in values:
        before = mean if seen >= min_samples else None
        if x is not None:
            mean = x if mean is None else (1 - alpha) * mean + alpha * x
            seen += 1
        after = mean if seen >= min_samples else None
        out.append(after if include_current else before)
    return out


@pytest.mark.parametrize("include_current", [False, True])
@pytest.mark.parametrize("min_samples", [1, 2])
def test_values_match_reference(include_current, min_samples):
    frame = sample_laps(null_fraction=0.25, seed=11)
    ctx = TransformContext(("driver_id",))
    params = {"column": "lap_time_s", "alpha": 0.4, "include_current": include_current,
              "min_samples": min_samples}
    out = EWM_MEAN(frame.lazy(), params, ctx).collect()
    ordered = frame.sort(["driver_id", "event_timestamp", "available_at", "lap_time_s"],
                         nulls_last=True)
    for (driver,), rows in ordered.group_by(["driver_id"], maintain_order=True):
        expected = reference(rows["lap_time_s"].to_list(), 0.4, include_current, min_samples)
        got = (out.filter(pl.col("driver_id") == driver)
               .sort(["event_timestamp", "available_at"])["lap_time_s_ewm_mean"].to_list())
        assert len(got) == len(expected)
        for g, e in zip(got, expected, strict=True):
            assert (g is None and e is None) or math.isclose(g, e, rel_tol=1e-12), (driver, g, e)


@pytest.mark.parametrize("params, message", [
    ({"alpha": 0.3}, "'column'"),
    ({"column": "lap_time_s"}, "exactly one of"),
    ({"column": "lap_time_s", "alpha": 0.3, "span": 4}, "exactly one of"),
    ({"column": "lap_time_s", "alpha": 1.5}, "'alpha' must be in (0, 1]"),
    ({"column": "lap_time_s", "span": 0.5}, "'span' must be >= 1"),
    ({"column": "lap_time_s", "alpha": 0.3, "min_samples": 0}, "'min_samples'"),
    ({"column": "lap_time_s", "alpha": 0.3, "window": 3}, "unknown param(s) window"),
    ({"column": "nope", "alpha": 0.3}, "'nope' not found"),
    ({"column": "compound", "alpha": 0.3}, "expected a number"),
])
def test_bad_params_are_rejected_readably(params, message):
    with pytest.raises(ValueError) as info:
        EWM_MEAN.declared_schema(params, sample_laps().schema)
    assert message in str(info.value)


def test_hook_registers_the_transform():
    registered = []
    register_transforms(registered.append)
    assert registered == [EWM_MEAN]
    assert EWM_MEAN.name == "ewm_mean"
