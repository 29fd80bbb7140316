"""Transform scope at registration and in the plugin listings (API and CLI).

A transform's ``scope`` must be one of ``featurestore.transforms.SCOPES``; a group-scope
transform must bring its own callable ``group_columns``. A transform that breaks either rule is
reported under its plugin's name and skipped, the plugin's other transforms still register.
"""

from __future__ import annotations

import json
import re

import polars as pl
import pytest
from click.testing import CliRunner

import featurestore.plugins as fp
from featurestore import hookimpl
from featurestore.transforms import SCOPES, Transform

try:
    from test_plugins import cli, fresh, throwaway  # fixtures
except ImportError:  # tests/ imported as a package
    from tests.test_plugins import cli, fresh, throwaway  # noqa: F401


def _fn(frame, params, ctx):
    return frame.select(*ctx.keys, ctx.time_column, ctx.available_column,
                        pl.lit(1.0).alias("one"))


def _out(params, schema):
    return {"one": pl.Float64}


def _race(params):
    return ["race_id"]


class Plugin:
    """A plugin object registering the transforms it was given."""

    def __init__(self, *transforms: object) -> None:
        self.transforms = transforms

    @hookimpl
    def register_transforms(self, register):
        for t in self.transforms:
            register(t)


def register_quietly(throwaway, name: str, *transforms: object) -> dict:
    throwaway(Plugin(*transforms), name)
    with pytest.warns(fp.PluginWarning) as caught:
        found = fp.get_transforms()
    return {"transforms": found, "warnings": [str(w.message) for w in caught]}


BAD_SCOPES = {
    "unknown scope": (Transform("wide", _fn, _out, scope="global"),
                      "registered transform 'wide' with scope 'global'; a scope is one of "
                      "'entity', 'group'"),
    "scope not a string": (Transform("wide", _fn, _out, scope=None),  # type: ignore[arg-type]
                           "registered transform 'wide' with scope None"),
    "group without group_columns": (
        Transform("wide", _fn, _out, scope="group"),
        "registered group-scope transform 'wide' without group_columns"),
    "group_columns not callable": (
        Transform("wide", _fn, _out, scope="group", group_columns=["race_id"]),  # type: ignore[arg-type]
        "registered group-scope transform 'wide' whose group_columns is not callable"),
}


@pytest.mark.parametrize("case", BAD_SCOPES)
def test_bad_scope_is_reported_by_plugin_and_skipped(fresh, throwaway, case):
    transform, message = BAD_SCOPES[case]
    good = Transform("good_t", _fn, _out)
    got = register_quietly(throwaway, "scoped", transform, good)
    assert "wide" not in got["transforms"]
    assert "good_t" in got["transforms"]
    assert any(w.startswith("plugin 'scoped': ") and message in w for w in got["warnings"]), \
        got["warnings"]
    assert message in "\n".join(str(p) for p in fp.plugin_problems())


def test_scopes_are_the_two_documented_ones():
    assert SCOPES == ("entity", "group")
    assert Transform("t", _fn, _out).scope == "entity"


def test_valid_group_transform_registers_and_is_listed_with_its_scope(fresh, throwaway):
    throwaway(Plugin(Transform("per_race", _fn, _out, scope="group", group_columns=_race),
                     Transform("own", _fn, _out)), "mixed")
    transforms = fp.get_transforms()
    assert transforms["per_race"].transform.scope == "group"
    assert list(transforms["per_race"].transform.group_columns({})) == ["race_id"]
    assert fp.plugin_problems() == []
    (info,) = fp.plugin_info()
    assert info["transforms"] == ["own", "per_race"]
    assert info["scopes"] == {"own": "entity", "per_race": "group"}


def test_plugins_command_shows_scopes(fresh, throwaway, cli):
    throwaway(Plugin(Transform("per_race", _fn, _out, scope="group", group_columns=_race),
                     Transform("own", _fn, _out)), "mixed")
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0, result.output
    assert result.stdout == ("mixed  (registered in code)\n"
                             "  hooks: register_transforms\n"
                             "  transforms: own (entity), per_race (group)\n")
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    (info,) = json.loads(result.stdout)
    assert info["scopes"] == {"own": "entity", "per_race": "group"}


def test_the_builtin_field_plugin_is_group_scope(monkeypatch, cli):
    monkeypatch.delenv(fp.ENV_VAR, raising=False)
    assert "featurestore_plugins.field" in fp.DEFAULT_PLUGINS
    fp.reset_plugins()
    try:
        transforms = fp.get_transforms()
        field = transforms["field"]
        assert field.builtin and field.plugin == "featurestore_plugins.field"
        assert field.transform.scope == "group"
        assert list(field.transform.group_columns(
            {"group_by": ["race_id"], "at": ["lap"],
             "outputs": {"r": {"kind": "rank", "column": "lap_time"}}})) == ["race_id"]
        assert transforms["rolling"].transform.scope == "entity"
        result = CliRunner().invoke(cli, ["plugins", "--all"])
        assert result.exit_code == 0, result.output
        assert re.search(r"^featurestore_plugins\.field .*\n.*\n  transforms: field \(group\)$",
                         result.stdout, re.M), result.stdout
        infos = {i["name"]: i for i in json.loads(
            CliRunner().invoke(cli, ["plugins", "--all", "--json"]).stdout)}
        assert infos["featurestore_plugins.field"]["scopes"] == {"field": "group"}
        assert infos["featurestore_plugins.rolling"]["scopes"] == {"rolling": "entity"}
    finally:
        fp.reset_plugins()
