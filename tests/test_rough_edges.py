"""What a new user meets first: tables in an 80-column terminal, typed command-line values,
warnings that say what was assumed, and a CLI that starts (and stops on Ctrl-C) quickly.

The bad-input cases themselves live in tests/test_bad_input.py (and docs/bad-input.md).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import polars as pl
import pytest

from featurestore import FeatureStore
from featurestore.cli_plugins import _summarize
from featurestore.cli_values import cast_key, parse_key_args, parse_timestamp
from featurestore.errors import DataError, DataWarning, UsageError
from tests.storekit import write_results

LONG = {
    "entity": "driver_identified_by_the_sanctioning_body",
    "source": "race_results_from_the_public_archive",
    "features": ["finishing_position_of_the_driver_in_that_race",
                 "laps_led_by_the_driver_during_the_whole_race"],
    "set": "model_with_a_rather_long_feature_set_name",
}

DEFS = f"""
[[entities]]
name = "{LONG['entity']}"
join_keys = ["driver_id"]

[[sources]]
name = "{LONG['source']}"
path = "r.parquet"
entity = "{LONG['entity']}"
event_time = "race_date"
timezone = "America/New_York"

[[features]]
name = "{LONG['features'][0]}"
source = "{LONG['source']}"
column = "finish"
tags = ["results", "position", "official"]
description = "where the driver finished the race, as published in the official results after review"

[[features]]
name = "{LONG['features'][1]}"
source = "{LONG['source']}"
column = "laps_led"

[[feature_sets]]
name = "{LONG['set']}"
features = ["{LONG['features'][0]}", "{LONG['features'][1]}"]
"""


def run(root: Path, *args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns), "FEATURESTORE_DEBUG": ""}
    env.pop("FEATURESTORE_REGISTRY_URL", None)
    proc = subprocess.run([sys.executable, "-m", "featurestore", "--store", str(root), *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("long-names")
    write_results(root / "r.parquet")
    (root / "features.toml").write_text(DEFS, encoding="utf-8")
    run(root, "apply")
    pl.DataFrame({"driver_id": [1, 2],
                  "event_timestamp": [dt.datetime(2025, 3, 1, tzinfo=dt.UTC)] * 2}
                 ).write_parquet(root / "q.parquet")
    return root


def assert_whole(out: str, names: list[str], width: int = 80) -> None:
    assert "…" not in out, out
    assert max(len(line) for line in out.splitlines()) <= width, out
    for name in names:
        assert name in out, f"{name!r} is cut or wrapped in:\n{out}"


@pytest.mark.slow
def test_tables_never_cut_names_at_80_columns(project: Path) -> None:
    entity, source, features, fset = LONG["entity"], LONG["source"], LONG["features"], LONG["set"]
    assert_whole(run(project, "materialize").stdout, [source])
    assert_whole(run(project, "list", "features").stdout, [*features, entity, source])
    assert_whole(run(project, "list", "sources").stdout, [source, entity])
    assert_whole(run(project, "list", "entities").stdout, [entity])
    assert_whole(run(project, "list", "views").stdout, [source])
    assert_whole(run(project, "list", "feature-sets").stdout, [fset, *(f"{f}@1" for f in features)])
    assert_whole(run(project, "artifacts").stdout, [source])
    assert_whole(run(project, "retrieve", "--entities", "q.parquet", "--features", ",".join(features),
                     "--tier", "race", "-o", "out.parquet").stdout, features)
    assert_whole(run(project, "online", "--tier", "race", "--key", "driver_id=1", "--features", ",".join(features),
                     "--as-of", "2025-03-01").stdout, features)
    # The free-text description wraps between words: every word is there, none cut.
    described = run(project, "list", "features").stdout
    assert all(word in described for word in ("published", "official", "results", "review"))


def test_a_wide_terminal_gets_one_line_per_row(project: Path) -> None:
    out = run(project, "list", "features", columns=250).stdout
    rows = [line for line in out.splitlines() if any(f in line for f in LONG["features"])]
    assert len(rows) == 2 and LONG["features"][0] in rows[0], out


def test_feature_sets_read_as_pinned_names_and_json_is_unchanged(project: Path) -> None:
    out = run(project, "list", "feature-sets", columns=250).stdout
    pinned = f"{LONG['features'][0]}@1, {LONG['features'][1]}@1"
    assert pinned in out and "{" not in out, out
    [row] = json.loads(run(project, "list", "feature-sets", "--json").stdout)
    assert row["features"] == [{"name": n, "version": 1} for n in LONG["features"]]


# --------------------------------------------------------------------------- command-line values


def test_timestamps_from_the_command_line() -> None:
    assert parse_timestamp("2025-03-09", option="--as-of") == dt.datetime(2025, 3, 9, tzinfo=dt.UTC)
    assert parse_timestamp("2025-03-09T14:00:00+02:00", option="--as-of") == \
        dt.datetime(2025, 3, 9, 12, tzinfo=dt.UTC)
    with pytest.raises(UsageError, match=r"--as-of 'yesterday': expected an ISO 8601") as info:
        parse_timestamp("yesterday", option="--as-of")
    assert info.value.exit_code == 2


@pytest.mark.parametrize(("text", "dtype", "value"), [
    ("007", pl.String(), "007"),  # never guessed to be the integer 7
    ("-12", pl.Int64(), -12),
    ("true", pl.Boolean(), True),
    ("0", pl.Boolean(), False),
    ("2025-03-09", pl.Date(), dt.date(2025, 3, 9)),
    ("255", pl.UInt8(), 255),
])
def test_keys_are_cast_to_the_artifact_dtype(text: str, dtype: pl.DataType, value: object) -> None:
    assert cast_key(text, dtype, col="k", view="v") == value


@pytest.mark.parametrize(("text", "dtype", "why"), [
    ("abc", pl.Int64(), "not an integer"),
    ("256", pl.UInt8(), "not in the range of UInt8"),
    ("yes please", pl.Boolean(), "not a boolean"),
    ("09/03/2025", pl.Date(), "not an ISO date"),
])
def test_keys_that_do_not_fit_name_column_dtype_and_value(text: str, dtype: pl.DataType,
                                                          why: str) -> None:
    with pytest.raises(UsageError, match=rf"--key k={text}: key column 'k' is {dtype} in view "
                                         rf"'v'; '{text}' is {why}"):
        cast_key(text, dtype, col="k", view="v")


def test_key_arguments_are_checked_before_the_store_is_read() -> None:
    assert parse_key_args(["a=1", "b=x", "a=2", "b=y"]) == {"a": ["1", "2"], "b": ["x", "y"]}
    with pytest.raises(UsageError, match="expected column=value"):
        parse_key_args(["driver_id"])
    with pytest.raises(UsageError, match=r"same number of values.*\(a: 2, b: 1\)"):
        parse_key_args(["a=1", "a=2", "b=3"])


# --------------------------------------------------------------------------- warnings (API)


def test_null_keys_and_cutoffs_warn_with_counts_or_fail_when_strict(project: Path) -> None:
    from featurestore.materialize import materialize

    store = FeatureStore(project)
    materialize(store)  # a no-op when another test of this module materialized already
    feature = LONG["features"][0]
    query = pl.DataFrame({"driver_id": [2, None, 1, None],
                          "event_timestamp": [dt.datetime(2025, 3, 1, tzinfo=dt.UTC), None, None,
                                              dt.datetime(2025, 3, 1, tzinfo=dt.UTC)]})
    with pytest.warns(DataWarning, match=r"3 of 4 row\(s\) have a null key or cutoff \(2 null "
                                         r"'driver_id', 2 null cutoff 'event_timestamp'\)"):
        frame = store.get_historical_features(query, [feature], tier="race")
    assert frame[feature].to_list() == [5, None, None, None]  # rows kept, in order
    with pytest.raises(DataError, match=r"refused \(strict\)"):
        store.get_historical_features(query, [feature], tier="race", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean frame warns about nothing
        store.get_historical_features(query.drop_nulls(), [feature], tier="race", strict=True)
    store.close()


def test_naive_times_without_a_zone_warn_once_per_registration(tmp_path: Path) -> None:
    from featurestore import Entity, Feature, Source

    write_results(tmp_path / "r.parquet")
    store = FeatureStore(tmp_path / "store")
    defs = [Entity("driver", ("driver_id",)), Source("results", str(tmp_path / "r.parquet"),
                                                     "driver", "race_date"),
            Feature("finish", source="results")]
    with pytest.warns(DataWarning, match=r"source 'results' .*'race_date' hold naive times"):
        store.apply(defs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store.apply(defs)  # unchanged: said once already
        declared = [defs[0], Source("results", str(tmp_path / "r.parquet"), "driver",
                                    "race_date", timezone="UTC"), defs[2]]
        plan = store.apply(declared)  # the zone stated: no warning, and nothing changed
    assert plan.is_noop
    store.close()


# --------------------------------------------------------------------------- start-up, install


def test_the_cli_module_loads_without_polars() -> None:
    """Ctrl-C is handled from main() on; what runs before it must be short (no polars)."""
    code = "import sys, featurestore.cli; print('polars' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_install_summary_names_versions_plugins_and_transforms() -> None:
    before = {"polars": ("polars", "1.0")}
    after = {**before, "featurestore-plugin-ewm": ("featurestore-plugin-ewm", "0.2.0"),
             "tinydep": ("tinydep", "1.1")}
    infos = [{"name": "ewm", "distribution": "featurestore_plugin_ewm", "version": "0.2.0",
              "transforms": ["ewm_mean"]}]
    assert _summarize(before, after, infos, []) == [
        "Installed featurestore-plugin-ewm 0.2.0",
        "  plugin ewm 0.2.0: transforms ewm_mean",
        "Also installed: tinydep 1.1"]
    upgraded = _summarize({**after, "tinydep": ("tinydep", "1.0")}, after, [], ["plugin x: boom"])
    assert upgraded[0] == "Installed: tinydep 1.1 (was 1.0)"
    assert "No new featurestore plugin" in upgraded[1] and upgraded[2] == "Warning: plugin x: boom"
    assert _summarize(after, after, infos, [])[0].startswith("Nothing changed")
