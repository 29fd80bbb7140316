"""End to end: the example plugin, built as a wheel and pip-installed next to the core in a fresh
virtual environment, is discovered through its entry point and works.

Slow (a venv, two wheel builds, pip installs: about half a minute to a minute) but part of the
default run: it is the only test that proves a third-party plugin needs no change in the core.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "featurestore-plugin-ewm"
BIN = "Scripts" if os.name == "nt" else "bin"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in {"FEATURESTORE_PLUGINS", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env.update(extra)
    return env


def run(args, *, cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=_env(**env), capture_output=True,
                          text=True, timeout=600, check=False)
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, args))} exited {done.returncode}\n"
                    f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}")
    return done


def _copy_core(dest: Path) -> Path:
    """The files a core wheel is built from (not the work tree: no build/ or egg-info left there)."""
    dest.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "LICENSE.txt"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, dest / name)
    if not (dest / "README.md").exists():
        (dest / "README.md").write_text("featurestore\n")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("featurestore", "plugins"):
        shutil.copytree(ROOT / package, dest / package, ignore=ignore)
    return dest


class FreshVenv:
    def __init__(self, base: Path, wheels: dict[str, Path], example: Path) -> None:
        self.base = base
        self.python = base / "venv" / BIN / "python"
        self.bin = base / "venv" / BIN
        self.wheels = wheels
        self.example = example

    def cli(self, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        return run([self.python, "-m", "featurestore.cli_plugins", *args], cwd=self.base,
                   check=check, **env)

    def plugins_json(self, *args: str, **env: str) -> list[dict]:
        done = self.cli("plugins", "--json", *args, **env)
        return json.loads(done.stdout)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> FreshVenv:
    base = tmp_path_factory.mktemp("plugin-install")
    core = _copy_core(base / "core")
    example = base / "featurestore-plugin-ewm"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns(
        "__pycache__", "*.pyc", "build", "dist", "*.egg-info", ".pytest_cache"))
    wheel_dir = base / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", wheel_dir, core,
         example], cwd=base)
    wheels = {p.name.split("-")[0]: p for p in wheel_dir.glob("*.whl")}
    assert set(wheels) == {"featurestore", "featurestore_plugin_ewm"}, wheels
    run([sys.executable, "-m", "venv", base / "venv"], cwd=base)
    fresh = FreshVenv(base, wheels, example)
    # The core and its dependencies, from the package index; then the plugin through the CLI.
    run([fresh.python, "-m", "pip", "install", "--quiet", wheels["featurestore"]], cwd=base)
    fresh.cli("install", str(wheels["featurestore_plugin_ewm"]))
    return fresh


def _ewm_entry(infos: list[dict]) -> dict:
    found = [i for i in infos if i["name"] == "ewm"]
    assert len(found) == 1, infos
    return found[0]


def test_installed_plugin_is_listed_with_version_and_transform(venv):
    done = venv.cli("plugins", "--json")
    assert _ewm_entry(json.loads(done.stdout)) == {
        "name": "ewm", "distribution": "featurestore-plugin-ewm", "version": "0.1.0",
        "builtin": False, "hooks": ["register_transforms"], "transforms": ["ewm_mean"],
        "scopes": {"ewm_mean": "entity"}}
    assert "Warning" not in done.stderr, done.stderr
    everything = venv.plugins_json("--all")
    builtins = {i["name"] for i in everything if i["builtin"]}
    assert builtins == {"featurestore_plugins.rolling", "featurestore_plugins.falloff",
                        "featurestore_plugins.field", "featurestore_plugins.window",
                        "featurestore.engines.polars_engine", "featurestore.engines.spark"}
    assert {t for i in everything for t in i["transforms"]} >= {"ewm_mean", "rolling", "falloff",
                                                                "field"}
    text = venv.cli("plugins").stdout
    assert "ewm 0.1.0  (featurestore-plugin-ewm)" in text and "transforms: ewm_mean (entity)" in text


def test_console_script_lists_the_plugin(venv):
    done = run([venv.bin / "featurestore", "plugins", "--json"], cwd=venv.base)
    assert _ewm_entry(json.loads(done.stdout))["transforms"] == ["ewm_mean"]


def test_featurestore_plugins_selects_in_the_real_environment(venv):
    assert [i["name"] for i in venv.plugins_json("--all", FEATURESTORE_PLUGINS="ewm")] == ["ewm"]
    assert {i["name"] for i in venv.plugins_json(
        "--all", FEATURESTORE_PLUGINS="featurestore-plugin-ewm,rolling")} == {
        "ewm", "featurestore_plugins.rolling"}
    assert venv.plugins_json("--all", FEATURESTORE_PLUGINS="") == []


def test_installed_transform_conforms(venv):
    script = textwrap.dedent("""
        from featurestore.plugins import get_transform
        from featurestore.testing import assert_transform_conforms, sample_laps

        registered = get_transform("ewm_mean")
        assert (registered.plugin, registered.distribution, registered.version) == (
            "ewm", "featurestore-plugin-ewm", "0.1.0"), registered
        for params in ({"column": "lap_time_s", "alpha": 0.3},
                       {"column": "lap_time_s", "span": 4, "include_current": True}):
            out = assert_transform_conforms(registered.transform, params, sample_laps(seed=2),
                                            plugin=registered.plugin)
            print(out.height, list(out.columns))
        """)
    done = run([venv.python, "-c", script], cwd=venv.base)
    assert "lap_time_s_ewm_mean" in done.stdout


def test_example_plugins_own_tests_pass_against_the_installed_plugin(venv):
    run([venv.python, "-m", "pip", "install", "--quiet", "pytest>=8"], cwd=venv.base)
    done = run([venv.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                venv.example / "tests"], cwd=venv.base)
    assert " passed" in done.stdout and "failed" not in done.stdout


def test_uninstall_and_reinstall_through_the_cli(venv):
    venv.cli("uninstall", "featurestore-plugin-ewm", "-y")
    assert all(i["name"] != "ewm" for i in venv.plugins_json("--all"))
    script = "from featurestore.plugins import get_transform; get_transform('ewm_mean')"
    missing = run([venv.python, "-c", script], cwd=venv.base, check=False)
    assert missing.returncode != 0 and "unknown transform 'ewm_mean'" in missing.stderr
    done = venv.cli("install", str(venv.wheels["featurestore_plugin_ewm"]))
    assert _ewm_entry(venv.plugins_json())["version"] == "0.1.0"
    # A short summary, not pip's own output (that needs -v).
    assert done.stdout.splitlines() == ["Installed featurestore-plugin-ewm 0.1.0",
                                        "  plugin ewm 0.1.0: transforms ewm_mean"], done.stdout
    again = venv.cli("install", str(venv.wheels["featurestore_plugin_ewm"]))
    assert again.stdout.startswith("Nothing changed"), again.stdout
    verbose = venv.cli("install", "-v", str(venv.wheels["featurestore_plugin_ewm"]))
    assert "Requirement already satisfied" in verbose.stdout, verbose.stdout


def test_cli_materialize_and_retrieve_use_the_installed_transform(venv):
    """A user's whole path: definitions naming the plugin's transform, then the real CLI."""
    project = venv.base / "project"
    project.mkdir(exist_ok=True)
    laps = textwrap.dedent("""
        import datetime as dt, polars as pl
        pl.DataFrame({"driver_id": [1, 1, 1, 2, 2],
                      "t": [dt.datetime(2025, 3, 1, 12, m) for m in (0, 1, 2, 0, 1)],
                      "lap_time_s": [30.0, 32.0, 31.0, 29.0, 29.5]}).write_parquet("laps.parquet")
        pl.DataFrame({"driver_id": [1, 2],
                      "event_timestamp": [dt.datetime(2025, 3, 1, 12, 2, 30, tzinfo=dt.UTC)] * 2,
                      }).write_parquet("entities.parquet")
        """)
    run([venv.python, "-c", laps], cwd=project)
    (project / "features.toml").write_text(textwrap.dedent("""
        [[entities]]
        name = "driver"
        join_keys = ["driver_id"]

        [[sources]]
        name = "laps"
        path = "laps.parquet"
        entity = "driver"
        event_time = "t"
        tier = "race"

        [[views]]
        name = "smooth"
        source = "laps"
        transform = "ewm_mean"
        params = { column = "lap_time_s", alpha = 0.5, include_current = true }

        [[features]]
        name = "lap_time_s_ewm_mean"
        view = "smooth"
        """))
    fs = venv.bin / "featurestore"
    run([fs, "-s", project, "apply"], cwd=project)
    done = run([fs, "-s", project, "materialize", "--json"], cwd=project)
    [view] = json.loads(done.stdout)
    assert view["view"] == "smooth" and view["rows"] == 5 and view["verified"]
    arts = json.loads(run([fs, "-s", project, "artifacts", "--json"], cwd=project).stdout)
    produced = [a for a in arts if a["kind"] == "view"]
    assert [(a["transform"], a["plugin"], a["plugin_version"]) for a in produced] == [
        ("ewm_mean", "ewm", "0.1.0")]
    out = project / "train.parquet"
    run([fs, "-s", project, "retrieve", "--entities", project / "entities.parquet", "--features",
         "lap_time_s_ewm_mean", "--tier", "race", "--output", out], cwd=project)
    check = run([venv.python, "-c", f"import polars as pl; print(pl.read_parquet({str(out)!r}).to_dicts())"],
                cwd=project)
    # Driver 1: 30 -> 31 -> 31 (alpha 0.5, current lap included); driver 2: 29 -> 29.25.
    assert "'lap_time_s_ewm_mean': 31.0" in check.stdout and "29.25" in check.stdout
