"""Availability declared where it belongs: per-source lags, tiers from strings, the expanding
rolling window, case-insensitive conditions and ``FeatureStore.materialize``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from featurestore_plugins.rolling import ROLLING
from sqlalchemy import create_engine, inspect

from featurestore import Definitions, Entity, Feature, FeatureStore, Source, Tier
from featurestore.errors import DefinitionError
from featurestore.materialize import materialize
from featurestore.migrations import LATEST, migrate
from featurestore.registry import Registry
from featurestore.testing import sample_laps
from featurestore.tiers import TierOrder
from featurestore.transforms import TransformContext

T = datetime(2025, 3, 1, 12)


def _two_sources(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pl.DataFrame({"driver_id": [1], "t": [T], "x": [1.0]}).write_parquet(a)
    pl.DataFrame({"driver_id": [1], "t": [T], "y": [2.0]}).write_parquet(b)
    return a, b


TOML = """
[[tiers]]
name = "pre"
[[tiers]]
name = "race"
lag = "1h"

[[entities]]
name = "driver"
join_keys = ["driver_id"]

[[sources]]
name = "a"
path = "a.parquet"
entity = "driver"
event_time = "t"
tier = "race"
timezone = "UTC"

[[sources]]
name = "b"
path = "b.parquet"
entity = "driver"
event_time = "t"
tier = "race"
timezone = "UTC"
available_lag = "4h"

[[features]]
name = "x"
source = "a"

[[features]]
name = "y"
source = "b"
"""


def test_a_source_lag_overrides_its_tier_lag(tmp_path: Path) -> None:
    _two_sources(tmp_path)
    (tmp_path / "f.toml").write_text(TOML)
    store = FeatureStore(tmp_path / "store")
    store.apply(tmp_path / "f.toml")
    assert store.read_source("a")["available_at"].item() == (T + timedelta(hours=1)).replace(tzinfo=UTC)
    assert store.read_source("b")["available_at"].item() == (T + timedelta(hours=4)).replace(tzinfo=UTC)
    store.materialize()
    q = pl.DataFrame({"driver_id": [1, 1], "event_timestamp": [T + timedelta(hours=2),
                                                               T + timedelta(hours=5)]})
    got = store.get_historical_features(q, ["x", "y"], tier="race")
    assert got["x"].to_list() == [1.0, 1.0] and got["y"].to_list() == [None, 2.0]
    # changing the lag changes meaning: a new source version
    (tmp_path / "f2.toml").write_text(TOML.replace('available_lag = "4h"', 'available_lag = "5h"'))
    plan = store.apply(tmp_path / "f2.toml")
    changed = [i for i in plan.items if i.action == "version"]
    assert [(i.kind, i.name) for i in changed][:1] == [("source", "b")]
    assert "available_lag_seconds: 14400.0 -> 18000.0" in changed[0].changes


@pytest.mark.parametrize(("lag", "extra", "message"), [
    ("4 hours", {}, "source 'b' available_lag: expected a duration"),
    ("4h", {"available_time": "t"}, "not both"),
])
def test_bad_source_lags_are_refused(tmp_path: Path, lag: str, extra: dict, message: str) -> None:
    _, b = _two_sources(tmp_path)
    store = FeatureStore(tmp_path / "store")
    with pytest.raises(DefinitionError, match=message):
        store.apply([Entity("driver", ("driver_id",)),
                     Source("b", str(b), "driver", "t", timezone="UTC", available_lag=lag,
                            **extra), Feature("y", source="b")])


def test_tiers_take_lag_strings_and_declaration_order() -> None:
    order = TierOrder([Tier("pre"), Tier("quali", lag="30m"), Tier("race", lag="4h")])
    assert order.names == ["pre", "quali", "race"]
    assert order.get("race").lag == timedelta(hours=4) and order.get("race").position == 2
    old = TierOrder([Tier("race", 1, timedelta(hours=4)), Tier("pre", 0)])
    assert old.names == ["pre", "race"] and old.get("race").lag == timedelta(hours=4)
    with pytest.raises(DefinitionError, match="no position while others do"):
        TierOrder([Tier("pre", 0), Tier("race")])
    with pytest.raises(DefinitionError, match="tier 'race' lag"):
        Tier("race", lag="soon")


def test_python_tiers_apply(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path / "store")
    store.apply(Definitions.of([Entity("driver", ("driver_id",))],
                               tiers=[Tier("before"), Tier("during", lag="5m")]))
    assert store.tiers.names == ["before", "during"]
    assert store.tiers.get("during").lag == timedelta(minutes=5)


def test_a_version_4_registry_gains_the_source_lag_column(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        migrate(conn, target=4)
        assert "available_lag_seconds" not in {c["name"] for c in inspect(conn).get_columns("sources")}
    engine.dispose()
    registry = Registry(url)
    with registry.read() as conn:
        assert "available_lag_seconds" in {c["name"] for c in inspect(conn).get_columns("sources")}
    assert LATEST >= 5  # v5 added it; later migrations come after
    registry.close()


def test_rolling_expanding_window_is_the_whole_history() -> None:
    frame = sample_laps()
    ctx = TransformContext(keys=("driver_id",))
    params = {"column": "lap_time_s", "windows": ["all", 10**6],
              "aggs": ["mean", "std", "min", "max", "sum", "count"], "include_current": False}
    out = ROLLING(frame.lazy(), params, ctx).collect()
    for agg in params["aggs"]:
        assert out[f"lap_time_s_{agg}_last_all"].equals(
            out[f"lap_time_s_{agg}_last_1000000"].alias(f"lap_time_s_{agg}_last_all"))
    assert ROLLING.lookback(params) is None
    assert ROLLING.lookback({**params, "windows": [3]}) == 3


def test_rolling_indicator_ignores_case() -> None:
    frame = sample_laps()
    ctx = TransformContext(keys=("driver_id",))
    caseless = {"indicator": {"column": "compound", "in": ["soft"], "ignore_case": True},
                "windows": [3], "aggs": ["sum"], "alias": "soft"}
    exact = {"indicator": {"column": "compound", "in": ["SOFT"]}, "windows": [3], "aggs": ["sum"],
             "alias": "soft"}
    a = ROLLING(frame.lazy(), caseless, ctx).collect()
    b = ROLLING(frame.lazy(), exact, ctx).collect()
    assert a.equals(b) and a["soft_sum_last_3"].sum() > 0


def test_materialize_method_is_the_free_function(tmp_path: Path) -> None:
    a, _ = _two_sources(tmp_path)
    store = FeatureStore(tmp_path / "store")
    store.apply([Entity("driver", ("driver_id",)),
                 Source("a", str(a), "driver", "t", timezone="UTC"), Feature("x", source="a")])
    [first] = store.materialize()
    [again] = materialize(store)
    assert first.status == "materialized" and again.status == "up-to-date"


def test_output_columns_may_take_the_context() -> None:
    """A wrapping transform sees the keys instead of guessing them; the old form still works."""
    from featurestore.testing import assert_transform_conforms
    from featurestore.transforms import Transform, takes_context

    seen: list[tuple[str, ...]] = []

    def columns(params, input_schema, ctx):  # type: ignore[no-untyped-def]
        seen.append(ctx.keys)
        return {"n_key_columns": pl.Int64()}

    def fn(frame, params, ctx):  # type: ignore[no-untyped-def]
        return frame.select(*ctx.keys, ctx.time_column, ctx.available_column,
                            pl.lit(len(ctx.keys), dtype=pl.Int64).alias("n_key_columns"))

    counting = Transform("n_keys", fn, columns)
    assert_transform_conforms(counting, {}, sample_laps(composite_key=True),
                              keys=("driver_id", "team_id"))
    assert ("driver_id", "team_id") in seen
    assert takes_context(columns) and not takes_context(lambda params, input_schema: {})
    assert takes_context(lambda params, input_schema, *, ctx=None: {})
    assert ROLLING.declared_schema({"column": "lap_time_s", "windows": [2], "aggs": ["sum"]},
                                   sample_laps().schema) == {"lap_time_s_sum_last_2": pl.Float64}
