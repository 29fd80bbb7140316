"""Start-up stays light: what ``import featurestore`` and the command line load (not how fast).

Each check runs in a fresh interpreter and inspects ``sys.modules``: deterministic, unlike a
timing (``benchmarks/imports.py`` measures the time).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import featurestore.plugin_loading as loading

HEAVY = ("polars", "sqlalchemy", "pyarrow", "numpy", "pandas", "rich")
ROOT = Path(__file__).resolve().parent.parent


def loaded_after(code: str) -> list[str]:
    """Top-level packages of ``HEAVY`` present in ``sys.modules`` after running ``code``."""
    probe = (f"{code}\nimport json, sys\n"
             f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))")
    env = {k: v for k, v in os.environ.items() if k != "FEATURESTORE_PLUGINS"}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("code", [
    "import featurestore",
    "import featurestore.errors",
    "from featurestore import DataError, LeakageError",
    "import featurestore.cli",
    "import featurestore.plugins",
    # What `featurestore --help` does before printing: every verb and every plugin command.
    "from featurestore.cli import _register_extra_commands; _register_extra_commands()",
])
def test_startup_loads_no_heavy_library(code: str) -> None:
    assert loaded_after(code) == []


def test_the_lazy_names_still_resolve() -> None:
    """The cheap import is not a broken one: the lazy public names load on first use."""
    assert "polars" in loaded_after("import featurestore; featurestore.FeatureStore")


def test_help_lists_every_core_verb() -> None:
    out = subprocess.run([sys.executable, "-m", "featurestore", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for verb in ("apply", "ingest", "materialize", "retrieve", "online", "plugins", "delete",
                 "config", "serve", "quickstart"):
        assert f"  {verb} " in out, verb


def test_builtin_plugins_add_no_commands() -> None:
    """``featurestore --help`` collects plugin commands without importing the built-in plugins;
    that is right only while no built-in implements ``register_commands`` outside
    ``BUILTIN_COMMANDS``."""
    import importlib

    for name in loading.DEFAULT_PLUGINS:
        module = importlib.import_module(name)
        if hasattr(module, "register_commands"):
            assert name in loading.BUILTIN_COMMANDS, name


def test_serving_does_not_import_the_store() -> None:
    """``store`` imports ``serving``; ``serving`` types its store with a protocol instead."""
    tree = ast.parse((ROOT / "featurestore" / "serving.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "featurestore.store" not in imported


def test_a_retrieval_without_windows_loads_no_window_engine(tmp_path: Path) -> None:
    """A training frame of plain features loads neither numpy nor the window engine (about
    0.3 s of a process's start): both come with the default plugins' window and field
    transforms only when one of them runs."""
    from featurestore.materialize import materialize
    from tests.storekit import basic_defs, open_store, write_results

    with open_store(tmp_path) as store:
        store.apply(basic_defs(write_results(tmp_path / "r.parquet")))
        materialize(store)
        root = store.root
    code = (
        "import sys, datetime as dt, polars as pl\n"
        "from featurestore import FeatureStore\n"
        f"with FeatureStore({str(root)!r}) as s:\n"
        "    q = pl.DataFrame({'driver_id': [1, 2], 't': [dt.datetime(2025, 3, 1)] * 2})\n"
        "    out = s.get_historical_features(q, ['finish', 'laps_led'], tier='historical',\n"
        "                                    cutoff='t')\n"
        "assert out['laps_led'].to_list() == [0, 2], out\n"
        "print([m for m in ('numpy', 'featurestore.windowengine') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"
