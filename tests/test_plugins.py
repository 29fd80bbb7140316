"""Plugin discovery, the transform registry, the hooks, and the plugin CLI commands.

Throwaway plugins are either registered on the plugin manager in a fixture (and unregistered
after), or installed as real distributions: a ``*.dist-info`` folder with ``entry_points.txt`` on a
temporary ``sys.path`` entry, which ``importlib.metadata`` finds exactly as it finds a pip-installed
plugin.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import click
import pluggy
import polars as pl
import pytest
from click.testing import CliRunner

import featurestore.plugins as fp
from featurestore import cli_plugins, hookimpl, hookspecs, plugin_loading
from featurestore.errors import PluginError
from featurestore.transforms import Transform

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "plugins.md"


# --------------------------------------------------------------------------- helpers & fixtures


def _fn(frame, params, ctx):
    return frame.select(*ctx.keys, ctx.time_column, ctx.available_column,
                        pl.lit(1.0).alias("one"))


def make_transform(name: str) -> Transform:
    return Transform(name, _fn, lambda params, schema: {"one": pl.Float64})


def plugin_source(*names: str, extra: str = "", body: str | None = None) -> str:
    """Source of a plugin module registering a constant transform per name."""
    registrations = "\n".join(f"    register(_t({n!r}))" for n in names) or "    pass"
    return textwrap.dedent("""\
        import polars as pl
        from featurestore import hookimpl
        from featurestore.transforms import Transform


        def _fn(frame, params, ctx):
            return frame.select(*ctx.keys, ctx.time_column, ctx.available_column,
                                pl.lit(1.0).alias("one"))


        def _t(name):
            return Transform(name, _fn, lambda params, schema: {"one": pl.Float64})


        @hookimpl
        def register_transforms(register):
        """) + (body if body is not None else registrations) + "\n" + textwrap.dedent(extra)


@pytest.fixture
def fresh(monkeypatch):
    """Nothing loaded, FEATURESTORE_PLUGINS unset, no built-ins; everything restored after."""
    monkeypatch.delenv(fp.ENV_VAR, raising=False)
    monkeypatch.setattr(plugin_loading, "DEFAULT_PLUGINS", ())
    fp.reset_plugins()
    yield
    fp.reset_plugins()


@pytest.fixture
def site(tmp_path, monkeypatch):
    """Install throwaway plugin distributions: ``site.dist(name, version, {ep: module}, {module:
    source})``; ``site.builtin(module, source)`` adds a module to DEFAULT_PLUGINS."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    modules: list[str] = []

    class Site:
        def module(self, name: str, source: str) -> None:
            path = root.joinpath(*name.split(".")).with_suffix(".py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
            modules.append(name)

        def dist(self, name: str, version: str, entry_points: dict[str, str],
                 sources: dict[str, str] | None = None) -> None:
            for module, source in (sources or {}).items():
                self.module(module, source)
            info = root / f"{name.replace('-', '_')}-{version}.dist-info"
            info.mkdir()
            (info / "METADATA").write_text(
                f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
            lines = "".join(f"{ep} = {target}\n" for ep, target in entry_points.items())
            (info / "entry_points.txt").write_text(f"[featurestore]\n{lines}")
            importlib.invalidate_caches()

        def builtin(self, name: str, source: str) -> None:
            self.module(name, source)
            monkeypatch.setattr(plugin_loading, "DEFAULT_PLUGINS", (*plugin_loading.DEFAULT_PLUGINS, name))
            importlib.invalidate_caches()

    yield Site()
    for name in modules:
        sys.modules.pop(name, None)
        sys.modules.pop(name.split(".")[0], None)


@pytest.fixture
def throwaway():
    """Register plain objects as plugins for one test (datasette style); unregistered after."""
    registered = []

    def register(plugin: object, name: str) -> object:
        fp.pm.register(plugin, name=name)
        registered.append(plugin)
        return plugin

    yield register
    for plugin in registered:
        if fp.pm.is_registered(plugin):
            fp.pm.unregister(plugin)


def problems_text() -> str:
    return "\n".join(str(p) for p in fp.plugin_problems())


def quiet(fn, *args, **kwargs):
    with pytest.warns(fp.PluginWarning):
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------- every hook tested


@pytest.mark.parametrize("hook", fp.HOOK_NAMES)
def test_every_hook_has_a_test(hook):
    assert f"test_hook_{hook}" in globals(), f"hook {hook!r} has no test_hook_{hook} test"


@pytest.mark.parametrize("hook", fp.HOOK_NAMES)
def test_every_hook_is_documented(hook):
    headings = re.findall(r"^###\s+`?(\w+)\(", DOCS.read_text(), flags=re.MULTILINE)
    assert hook in headings, f"hook {hook!r} has no '### {hook}(...)' section in {DOCS.name}"


def test_hook_names_are_the_hookspecs():
    specs = {n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "featurestore_spec")}
    assert set(fp.HOOK_NAMES) == specs == {
        "register_transforms", "validate_materialized", "register_commands", "register_engines"}


def test_docs_cover_the_env_var_and_the_kit():
    text = DOCS.read_text()
    for needle in ("FEATURESTORE_PLUGINS", "assert_transform_conforms", "sample_laps",
                   "The transform contract", "wrapper=True", "featurestore install"):
        assert needle in text


# --------------------------------------------------------------------------- the three hooks


def test_hook_register_transforms(fresh, throwaway):
    class Plugin:
        @hookimpl
        def register_transforms(self, register):
            register(make_transform("tmp_one"))
            register(make_transform("tmp_two"))

    throwaway(Plugin(), "tmp-plugin")
    registered = fp.get_transform("tmp_one")
    assert registered.name == "tmp_one"
    assert registered.plugin == "tmp-plugin"
    assert (registered.distribution, registered.version, registered.builtin) == (None, None, False)
    assert list(fp.get_transforms()) == ["tmp_one", "tmp_two"]
    info = {i["name"]: i for i in fp.plugin_info()}
    assert info["tmp-plugin"]["transforms"] == ["tmp_one", "tmp_two"]
    assert info["tmp-plugin"]["hooks"] == ["register_transforms"]


def test_hook_register_engines(fresh, throwaway):
    from featurestore.engines import engine_problems, get_engine, get_engines
    from featurestore.engines.polars_engine import PolarsEngine

    class Twin(PolarsEngine):  # a real engine: the Polars code under another name
        name = "twin"

    class Plugin:
        @hookimpl
        def register_engines(self, register):
            register(Twin())
            register(object())  # no name, no methods: reported, skipped

    throwaway(Plugin(), "tmp-engines")
    engines = quiet(get_engines)
    assert isinstance(get_engine("twin"), Twin)
    assert (engines["twin"].plugin, engines["twin"].builtin) == ("tmp-engines", False)
    assert "polars" in engines  # the core's, even with no built-in plugin loaded
    assert "registered an engine named None" in "\n".join(str(p) for p in engine_problems())
    with pytest.raises(PluginError, match=r"unknown engine 'twim' \(did you mean 'twin'\?\); "
                                          r"available engines: polars from plugin .*; twin from "
                                          r"plugin 'tmp-engines'"):
        get_engine("twim")


def test_registry_follows_plugins_registered_and_unregistered(fresh, throwaway):
    class Plugin:
        @hookimpl
        def register_transforms(self, register):
            register(make_transform("tmp_gone"))

    plugin = throwaway(Plugin(), "tmp-gone")
    assert "tmp_gone" in fp.get_transforms()
    fp.pm.unregister(plugin)
    assert "tmp_gone" not in fp.get_transforms()


def test_hook_validate_materialized(fresh, throwaway):
    frame = pl.DataFrame({"x": [1.0, -2.0]})
    seen = {}

    class Checks:
        @hookimpl
        def validate_materialized(self, view, transform, params, frame):
            seen.update(view=view, transform=transform, params=params, height=frame.height)
            return [f"{(frame['x'] < 0).sum()} negative value(s) in x"]

    class Fine:
        @hookimpl
        def validate_materialized(self, frame):  # a subset of the arguments is fine
            return []

    class Broken:
        @hookimpl
        def validate_materialized(self, view):
            raise RuntimeError("validator crashed")

    class Wrong:
        @hookimpl
        def validate_materialized(self):
            return 42

    throwaway(Checks(), "checks")
    throwaway(Fine(), "fine")
    throwaway(Broken(), "broken")
    throwaway(Wrong(), "wrong")
    problems = fp.call_validate_materialized("laps", "ewm_mean", {"alpha": 0.3}, frame)
    assert seen == {"view": "laps", "transform": "ewm_mean", "params": {"alpha": 0.3},
                    "height": 2}
    assert problems == [
        "plugin 'broken': validate_materialized raised RuntimeError: validator crashed",
        "plugin 'checks': 1 negative value(s) in x",
        "plugin 'wrong': validate_materialized returned int, expected a list of strings",
    ]


def test_validate_materialized_honours_a_plugins_own_new_style_wrapper(fresh, throwaway):
    class Shouting:
        @hookimpl
        def validate_materialized(self):
            return ["quiet problem"]

        @hookimpl(specname="validate_materialized", wrapper=True)
        def shout(self):
            results = yield
            return [[p.upper() for p in r] for r in results]

    class Other:
        @hookimpl
        def validate_materialized(self):
            return ["other problem"]

    throwaway(Shouting(), "shouting")
    throwaway(Other(), "other")
    problems = fp.call_validate_materialized("v", "t", {}, pl.DataFrame())
    # A wrapper wraps only its own plugin's implementations.
    assert problems == ["plugin 'other': other problem", "plugin 'shouting': QUIET PROBLEM"]


def test_hook_register_commands(fresh, throwaway):
    @click.group()
    def cli():
        pass

    for command in cli_plugins.PLUGIN_COMMANDS:
        cli.add_command(command)

    class Adds:
        @hookimpl
        def register_commands(self, cli):
            @cli.command()
            def hello():
                """Say hello."""
                click.echo("hello from a plugin")

    class Replaces:
        @hookimpl
        def register_commands(self, cli):
            @cli.command(name="plugins")
            def hijack():
                click.echo("hijacked")

    class Raises:
        @hookimpl
        def register_commands(self, cli):
            @cli.command()
            def half():
                pass

            raise RuntimeError("boom")

    throwaway(Adds(), "adds")
    throwaway(Replaces(), "replaces")
    throwaway(Raises(), "raises")
    with pytest.warns(fp.PluginWarning) as caught:
        problems = fp.call_register_commands(cli)
    assert sorted(cli.commands) == ["hello", "install", "plugins", "uninstall"]
    assert cli.commands["plugins"] is cli_plugins.plugins_cmd
    text = "\n".join(map(str, problems))
    assert "plugin 'replaces': tried to replace the command(s) plugins" in text
    assert "plugin 'raises': raised RuntimeError: boom in register_commands" in text
    assert {str(w.message) for w in caught} == {str(p) for p in problems}
    result = CliRunner().invoke(cli, ["hello"])
    assert result.exit_code == 0 and result.output == "hello from a plugin\n"
    assert any("replaces" in str(p) for p in fp.plugin_problems())


# --------------------------------------------------------------------------- discovery


def test_entry_point_plugin_is_found_with_distribution_and_version(fresh, site):
    site.dist("featurestore-plugin-good", "1.2.3", {"good": "fsp_good"},
              {"fsp_good": plugin_source("good_t")})
    registered = fp.get_transform("good_t")
    assert (registered.plugin, registered.distribution, registered.version, registered.builtin) \
        == ("good", "featurestore-plugin-good", "1.2.3", False)
    assert fp.plugin_info() == [{
        "name": "good", "distribution": "featurestore-plugin-good", "version": "1.2.3",
        "builtin": False, "hooks": ["register_transforms"], "transforms": ["good_t"],
        "scopes": {"good_t": "entity"}}]
    assert fp.plugin_problems() == []


def test_entry_point_may_name_an_object_in_a_module(fresh, site):
    source = plugin_source() + textwrap.dedent("""
        class Plugin:
            @hookimpl
            def register_transforms(self, register):
                register(_t("from_object"))

        PLUGIN = Plugin()
        """)
    site.dist("fs-obj", "0.1", {"obj": "fsp_obj:PLUGIN"}, {"fsp_obj": source})
    assert fp.get_transform("from_object").plugin == "obj"


def test_builtins_load_first_and_are_flagged(fresh, site):
    site.builtin("fsp_builtins.fakeroll", plugin_source("shared", "fake_rolling"))
    site.dist("featurestore-plugin-aaa", "1.0", {"aaa": "fsp_aaa"},
              {"fsp_aaa": plugin_source("shared", "aaa_only")})
    with pytest.warns(fp.PluginWarning, match="'shared', a name plugin 'fsp_builtins.fakeroll'"):
        transforms = fp.get_transforms()
    assert transforms["shared"].plugin == "fsp_builtins.fakeroll"
    assert transforms["shared"].builtin is True
    assert transforms["shared"].distribution == "featurestore"
    assert transforms["aaa_only"].plugin == "aaa"
    names = [i["name"] for i in fp.plugin_info(include_builtins=False)]
    assert names == ["aaa"]
    assert {i["name"] for i in fp.plugin_info()} == {"aaa", "fsp_builtins.fakeroll"}


def test_the_real_builtins_are_registered_as_builtin(monkeypatch):
    monkeypatch.delenv(fp.ENV_VAR, raising=False)
    fp.reset_plugins()
    try:
        # Imported, never skipped: a built-in missing from the package is a packaging break.
        for module in fp.DEFAULT_PLUGINS:
            importlib.import_module(module)
        transforms = fp.get_transforms()
        for name in ("rolling", "falloff"):
            assert transforms[name].builtin
            assert transforms[name].plugin == f"featurestore_plugins.{name}"
            assert transforms[name].distribution == "featurestore"
    finally:
        fp.reset_plugins()


@pytest.mark.parametrize("kind, source, expected", [
    ("import error", "import not_a_module_anywhere\n", "ModuleNotFoundError"),
    ("syntax error", "def broken(:\n", "SyntaxError"),
    ("error at import", "raise RuntimeError('no licence key')\n", "RuntimeError: no licence key"),
])
def test_plugin_failing_to_import_is_reported_and_others_load(fresh, site, kind, source, expected):
    site.dist("featurestore-plugin-broken", "0.9.1", {"broken": "fsp_broken"},
              {"fsp_broken": source})
    site.dist("featurestore-plugin-good", "1.0", {"good": "fsp_good"},
              {"fsp_good": plugin_source("good_t")})
    with pytest.warns(fp.PluginWarning, match=r"plugin 'broken' \(featurestore-plugin-broken "
                                              r"0\.9\.1\): failed to import"):
        transforms = fp.get_transforms()
    assert list(transforms) == ["good_t"]
    assert expected in problems_text()
    assert [i["name"] for i in fp.plugin_info()] == ["good"]


def test_entry_point_naming_a_missing_module_is_reported(fresh, site):
    site.dist("fs-ghost", "2.0", {"ghost": "fsp_not_there"})
    quiet(fp.load_plugins)
    assert "plugin 'ghost' (fs-ghost 2.0): failed to import entry point ghost = fsp_not_there" \
        in problems_text()


def test_raising_hook_is_reported_and_registers_nothing(fresh, site):
    body = "    register(_t('before_crash'))\n    raise ValueError('bad config')"
    site.dist("fs-crash", "0.1", {"crash": "fsp_crash"}, {"fsp_crash": plugin_source(body=body)})
    site.dist("fs-good", "1.0", {"good": "fsp_good"}, {"fsp_good": plugin_source("good_t")})
    with pytest.warns(fp.PluginWarning, match="raised ValueError: bad config in "
                                              "register_transforms"):
        transforms = fp.get_transforms()
    assert list(transforms) == ["good_t"]
    assert "none of its transforms were registered" in problems_text()


def test_clashing_names_first_plugin_by_name_wins(fresh, site):
    site.dist("fs-bbb", "2.0", {"bbb": "fsp_bbb"}, {"fsp_bbb": plugin_source("shared", "b_only")})
    site.dist("fs-aaa", "1.0", {"aaa": "fsp_aaa"}, {"fsp_aaa": plugin_source("shared")})
    with pytest.warns(fp.PluginWarning) as caught:
        transforms = fp.get_transforms()
    assert transforms["shared"].plugin == "aaa"
    assert transforms["b_only"].plugin == "bbb"  # the rest of the plugin still loads
    expected = ("plugin 'bbb' (fs-bbb 2.0): registered transform 'shared', a name plugin 'aaa' "
                "(fs-aaa 1.0) already registered; kept that one, skipped this one")
    assert [str(w.message) for w in caught] == [expected]


def test_two_distributions_with_the_same_plugin_name(fresh, site):
    site.dist("fs-one", "1.0", {"same": "fsp_one"}, {"fsp_one": plugin_source("one_t")})
    site.dist("fs-two", "1.0", {"same": "fsp_two"}, {"fsp_two": plugin_source("two_t")})
    quiet(fp.load_plugins)
    assert len(fp.get_transforms()) == 1
    assert "could not be registered" in problems_text()


BAD_REGISTRATIONS = {
    "not a transform": ("register({'name': 'dict_t'})",
                        "registered a builtins.dict instead of a featurestore.transforms.Transform"),
    "bad name": ("register(_t('Bad-Name'))", "registered a transform named 'Bad-Name'"),
    "leading digit": ("register(_t('1st'))", "registered a transform named '1st'"),
    "fn not callable": ("register(Transform('nofn', 42, lambda p, s: {}))",
                        "registered transform 'nofn' whose fn is not callable"),
    "twice": ("register(_t('twice'))\n    register(_t('twice'))",
              "registered transform 'twice' twice; kept the first"),
}


@pytest.mark.parametrize("case", BAD_REGISTRATIONS)
def test_wrong_objects_are_rejected_and_reported(fresh, site, case):
    body, message = BAD_REGISTRATIONS[case]
    body = f"    {body}\n    register(_t('valid_t'))"
    site.dist("fs-sloppy", "0.3", {"sloppy": "fsp_sloppy"},
              {"fsp_sloppy": plugin_source(body=body)})
    with pytest.warns(fp.PluginWarning, match=re.escape(message)):
        transforms = fp.get_transforms()
    assert "valid_t" in transforms
    assert "plugin 'sloppy' (fs-sloppy 0.3)" in problems_text()


def test_misspelled_hook_is_reported_and_the_plugin_skipped(fresh, site):
    source = plugin_source("typo_t").replace("def register_transforms", "def register_transform")
    site.dist("fs-typo", "0.1", {"typo": "fsp_typo"}, {"fsp_typo": source})
    site.dist("fs-good", "1.0", {"good": "fsp_good"}, {"fsp_good": plugin_source("good_t")})
    with pytest.warns(fp.PluginWarning, match="implements unknown hook 'register_transform' "
                                              r"\(did you mean 'register_transforms'\?\)"):
        fp.load_plugins()
    assert [i["name"] for i in fp.plugin_info()] == ["good"]
    fp.pm.check_pending()  # the global manager stays clean


def test_check_pending_catches_a_misspelled_hook():
    pm = pluggy.PluginManager("featurestore")
    pm.add_hookspecs(hookspecs)

    class Typo:
        @hookimpl
        def register_transform(self, register):
            pass

    pm.register(Typo())
    with pytest.raises(pluggy.PluginValidationError, match="register_transform"):
        pm.check_pending()


def test_implementation_with_unknown_argument_is_reported(fresh, site):
    source = plugin_source("arg_t").replace("def register_transforms(register)",
                                            "def register_transforms(register, store)")
    site.dist("fs-args", "0.1", {"args": "fsp_args"}, {"fsp_args": source})
    quiet(fp.load_plugins)
    assert "plugin 'args' (fs-args 0.1): could not be registered" in problems_text()
    assert "Argument(s) {'store'} are declared in the hookimpl" in problems_text()


def test_old_style_hookwrapper_is_refused(fresh, site):
    source = plugin_source("wrapped_t") + textwrap.dedent("""
        @hookimpl(hookwrapper=True, specname="register_transforms")
        def old_style(register):
            yield
        """)
    site.dist("fs-old", "0.1", {"old": "fsp_old"}, {"fsp_old": source})
    with pytest.warns(fp.PluginWarning, match=r"old-style hookwrapper=True on "
                                              r"'register_transforms'; use "
                                              r"@hookimpl\(wrapper=True\)"):
        fp.load_plugins()
    assert fp.plugin_info() == []
    assert "wrapped_t" not in fp.get_transforms()


def test_problems_warn_once(fresh, site):
    site.dist("fs-broken", "1.0", {"broken": "fsp_broken"}, {"fsp_broken": "raise ImportError\n"})
    def use_everything():
        fp.get_transforms()
        fp.get_transforms()
        fp.plugin_problems()
        fp.plugin_info()

    with pytest.warns(fp.PluginWarning) as caught:
        use_everything()
    assert len(caught) == 1


# --------------------------------------------------------------------------- loading & selection


def test_plugins_load_lazily_and_once(fresh, site, monkeypatch):
    site.dist("fs-good", "1.0", {"good": "fsp_good"}, {"fsp_good": plugin_source("good_t")})
    calls = []
    real = plugin_loading._entry_points
    monkeypatch.setattr(plugin_loading, "_entry_points", lambda: calls.append(1) or real())
    assert calls == [] and "fsp_good" not in sys.modules
    results = []
    threads = [threading.Thread(target=lambda: results.append(fp.get_transforms()))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fp.get_transform("good_t")
    fp.plugin_info()
    assert calls == [1]
    assert all(list(r) == ["good_t"] for r in results)
    assert fp.get_plugin_manager() is fp.pm


def test_reset_keeps_hand_registered_plugins(fresh, site, throwaway):
    site.dist("fs-good", "1.0", {"good": "fsp_good"}, {"fsp_good": plugin_source("good_t")})

    class Hand:
        @hookimpl
        def register_transforms(self, register):
            register(make_transform("by_hand"))

    throwaway(Hand(), "hand")
    assert set(fp.get_transforms()) == {"good_t", "by_hand"}
    fp.reset_plugins()
    assert fp.pm.get_plugin("good") is None
    assert fp.pm.get_plugin("hand") is not None


@pytest.fixture
def three(fresh, site):
    site.builtin("fsp_builtins.fakeroll", plugin_source("fake_rolling"))
    site.dist("featurestore-plugin-good", "1.0", {"good": "fsp_good"},
              {"fsp_good": plugin_source("good_t")})
    site.dist("fs_other", "1.0", {"other": "fsp_other"}, {"fsp_other": plugin_source("other_t")})


@pytest.mark.parametrize("value, expected", [
    (None, {"fake_rolling", "good_t", "other_t"}),
    ("good", {"good_t"}),
    ("good, other", {"good_t", "other_t"}),
    ("featurestore-plugin-good", {"good_t"}),
    ("Featurestore_Plugin_Good", {"good_t"}),
    ("fs-other", {"other_t"}),
    ("fakeroll", {"fake_rolling"}),
    ("fsp_builtins.fakeroll,good", {"fake_rolling", "good_t"}),
    ("", set()),
    (" , ", set()),
])
def test_featurestore_plugins_env_var(three, monkeypatch, value, expected):
    if value is not None:
        monkeypatch.setenv(fp.ENV_VAR, value)
    assert set(fp.get_transforms()) == expected
    assert fp.plugin_problems() == []


def test_featurestore_plugins_unknown_name_is_reported(three, monkeypatch):
    monkeypatch.setenv(fp.ENV_VAR, "good,nonesuch")
    with pytest.warns(fp.PluginWarning, match="named in FEATURESTORE_PLUGINS but not installed; "
                                              "installed plugins: fsp_builtins.fakeroll, good, "
                                              "other"):
        assert set(fp.get_transforms()) == {"good_t"}


def test_featurestore_plugins_empty_skips_broken_plugins_too(fresh, site, monkeypatch):
    site.dist("fs-broken", "1.0", {"broken": "fsp_broken"}, {"fsp_broken": "raise ImportError\n"})
    monkeypatch.setenv(fp.ENV_VAR, "")
    assert fp.get_transforms() == {}
    assert fp.plugin_problems() == []


def test_unknown_transform_names_it_and_lists_the_available(fresh, throwaway):
    class Plugin:
        @hookimpl
        def register_transforms(self, register):
            register(make_transform("rolling_mean"))
            register(make_transform("ewm_mean"))

    throwaway(Plugin(), "p")
    with pytest.raises(PluginError) as info:
        fp.get_transform("rolling_maen")
    assert str(info.value) == ("unknown transform 'rolling_maen' (did you mean 'rolling_mean'?); "
                               "available transforms: ewm_mean, rolling_mean")


def test_unknown_transform_when_none_registered(fresh):
    with pytest.raises(PluginError, match=r"unknown transform 'x'.*none"):
        fp.get_transform("x")


def test_docs_example_plugin_conforms(fresh):
    from featurestore.testing import assert_transform_conforms

    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    example = next(b for b in blocks if "PREVIOUS = Transform(" in b)
    namespace: dict = {}
    exec(compile(example, str(DOCS), "exec"), namespace)
    registered = []
    namespace["register_transforms"](registered.append)
    assert [t.name for t in registered] == ["previous"]
    assert_transform_conforms(registered[0], {"column": "lap_time_s"})


# --------------------------------------------------------------------------- CLI


@pytest.fixture
def cli():
    @click.group(name="featurestore")
    def group():
        pass

    for command in cli_plugins.PLUGIN_COMMANDS:
        group.add_command(command)
    return group


def test_plugins_command_json_lists_installed_plugins(three, cli):
    result = CliRunner().invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [
        {"name": "good", "distribution": "featurestore-plugin-good", "version": "1.0",
         "builtin": False, "hooks": ["register_transforms"], "transforms": ["good_t"],
         "scopes": {"good_t": "entity"}},
        {"name": "other", "distribution": "fs_other", "version": "1.0",
         "builtin": False, "hooks": ["register_transforms"], "transforms": ["other_t"],
         "scopes": {"other_t": "entity"}},
    ]
    result = CliRunner().invoke(cli, ["plugins", "--all", "--json"])
    infos = {i["name"]: i for i in json.loads(result.stdout)}
    assert infos["fsp_builtins.fakeroll"]["builtin"] is True
    assert infos["fsp_builtins.fakeroll"]["transforms"] == ["fake_rolling"]


def test_plugins_command_text_and_warnings(fresh, site, cli):
    site.dist("featurestore-plugin-good", "1.0", {"good": "fsp_good"},
              {"fsp_good": plugin_source("good_t")})
    site.dist("fs-broken", "0.2", {"broken": "fsp_broken"}, {"fsp_broken": "import nope_nope\n"})
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.exit_code == 0
    assert result.stdout == ("good 1.0  (featurestore-plugin-good)\n"
                             "  hooks: register_transforms\n"
                             "  transforms: good_t (entity)\n")
    assert result.stderr.startswith("Warning: plugin 'broken' (fs-broken 0.2): failed to import "
                                    "entry point broken = fsp_broken: ModuleNotFoundError")


def test_plugins_command_with_nothing_installed(fresh, cli):
    result = CliRunner().invoke(cli, ["plugins"])
    assert result.stdout == "No plugins installed (--all also lists the built-in ones).\n"
    assert CliRunner().invoke(cli, ["plugins", "--json"]).stdout == "[]\n"


class PipCalls(list):
    """The argument lists featurestore passed to pip; ``code`` is what pip "returns"."""

    code = 0


@pytest.fixture
def pip_calls(monkeypatch):
    calls = PipCalls()

    def fake(args, **_options):
        calls.append(list(args))
        return calls.code

    monkeypatch.setattr(cli_plugins, "_run_pip", fake)
    return calls


def test_install_passes_arguments_to_pip(cli, pip_calls):
    result = CliRunner().invoke(cli, ["install", "featurestore-plugin-ewm", "-U", "-e", "./dev",
                                      "--force-reinstall", "--no-cache-dir", "--pre",
                                      "--index-url", "https://example.invalid/simple"])
    assert result.exit_code == 0, result.output
    assert pip_calls == [["install", "--upgrade", "--force-reinstall", "--no-cache-dir", "--pre",
                          "--editable", "./dev", "featurestore-plugin-ewm", "--index-url",
                          "https://example.invalid/simple"]]


def test_install_needs_a_package_and_reports_pip_failure(cli, pip_calls):
    result = CliRunner().invoke(cli, ["install"])
    assert result.exit_code == 2 and "name at least one package" in result.output
    assert pip_calls == []
    pip_calls.code = 1
    assert CliRunner().invoke(cli, ["install", "nope"]).exit_code == 1


def test_uninstall_passes_arguments_to_pip(cli, pip_calls):
    result = CliRunner().invoke(cli, ["uninstall", "featurestore-plugin-ewm", "-y"])
    assert result.exit_code == 0
    assert pip_calls == [["uninstall", "featurestore-plugin-ewm", "--yes"]]
    assert CliRunner().invoke(cli, ["uninstall"]).exit_code == 2


def test_pip_runs_in_this_interpreter(monkeypatch):
    seen = []
    monkeypatch.setattr(subprocess, "call", lambda argv: seen.append(argv) or 0)
    assert cli_plugins._run_pip(["install", "x"]) == 0
    assert seen == [[sys.executable, "-m", "pip", "install", "x"]]


def test_python_m_cli_plugins(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != fp.ENV_VAR}
    argv = [sys.executable, "-m", "featurestore.cli_plugins", "plugins", "--all", "--json"]
    run = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    infos = json.loads(run.stdout)
    assert all(i["builtin"] for i in infos)  # nothing third-party installed here
    env[fp.ENV_VAR] = ""
    run = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120, check=False)
    assert (run.returncode, run.stdout, run.stderr) == (0, "[]\n", "")
