"""The command line, run as a real process: help, JSON output, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from featurestore.cli import _register_extra_commands, cli
from tests.storekit import write_results

DEFS = """
[[entities]]
name = "driver"
join_keys = ["driver_id"]

[[sources]]
name = "results"
path = "r.parquet"
entity = "driver"
event_time = "race_date"
timezone = "America/New_York"
tier = "historical"

[[features]]
name = "finish"
source = "results"
tier = "historical"
tags = ["results"]

[[features]]
name = "laps_led"
source = "results"
tier = "race"
"""


def run(*args: str, cwd: Path, check_code: int | None = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEATURESTORE_DEBUG": ""}
    env.pop("FEATURESTORE_REGISTRY_URL", None)
    proc = subprocess.run([sys.executable, "-m", "featurestore", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    if check_code is not None:
        assert proc.returncode == check_code, proc.stderr + proc.stdout
    return proc


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write_results(tmp_path / "r.parquet")
    (tmp_path / "features.toml").write_text(DEFS)
    return tmp_path


def all_commands() -> list[str]:
    _register_extra_commands()
    return sorted(cli.commands)


def test_every_verb_has_help(tmp_path: Path) -> None:
    top = run("--help", cwd=tmp_path).stdout
    for verb in all_commands():
        assert verb in top
        out = run(verb, "--help", cwd=tmp_path).stdout
        assert f"Usage: featurestore {verb}" in out


def test_init_apply_list_show_json(project: Path) -> None:
    info = json.loads(run("init", "--json", cwd=project).stdout)
    assert info["tiers"] == ["historical", "practice", "qualifying", "race"]
    plan = json.loads(run("apply", "--json", cwd=project).stdout)
    assert plan["applied"] and plan["counts"]["add"] == 5
    again = json.loads(run("apply", "--json", cwd=project).stdout)
    assert again["noop"]
    feats = json.loads(run("list", "features", "--tier", "race", "--json", cwd=project).stdout)
    assert [f["name"] for f in feats] == ["laps_led"]
    tagged = json.loads(run("list", "features", "--tag", "results", "--json", cwd=project).stdout)
    assert [f["name"] for f in tagged] == ["finish"]
    shown = json.loads(run("show", "finish", "--json", cwd=project).stdout)
    assert shown["kind"] == "feature" and shown["object"]["dtype"] == "Int64"
    hist = json.loads(run("show", "finish", "--history", "--json", cwd=project).stdout)
    assert [v["version"] for v in hist["versions"]] == [1]
    ingested = json.loads(run("ingest", "--json", cwd=project).stdout)
    assert ingested[0]["status"] == "ingested" and ingested[0]["rows"] == 4
    mat = json.loads(run("materialize", "--json", cwd=project).stdout)
    assert mat[0]["view"] == "results" and mat[0]["rows"] == 4
    arts = json.loads(run("artifacts", "--verify", "--json", cwd=project).stdout)
    assert [a["status"] for a in arts] == ["ok", "ok"]
    assert json.loads(run("doctor", "--json", cwd=project).stdout)["ok"]
    human = run("list", "features", cwd=project).stdout
    assert "finish" in human and "laps_led" in human


@pytest.mark.parametrize(
    ("defs", "code", "needle"),
    [
        ("[[entities]]\nname = \"driver\"\njoin_keys = [\"driver_id\"\n", 2, "TOML syntax error"),
        (DEFS.replace('tier = "historical"', 'tier = "warmup"'), 2, "unknown tier 'warmup'"),
        (DEFS.replace('entity = "driver"', 'entity = "car"'), 2, "unknown entity 'car'"),
        (DEFS.replace('name = "finish"', 'name = "fin; DROP TABLE features"'), 2, "is not allowed"),
        (DEFS.replace('path = "r.parquet"', 'path = "missing.parquet"'), 4, "no Parquet file"),
        (DEFS + "\n[[features]]\nname = \"x\"\nsource = \"results\"\ncolour = 1\n", 2, "unknown key(s) colour"),
    ],
)
def test_bad_definitions_give_one_line_and_a_code(project: Path, defs: str, code: int, needle: str) -> None:
    (project / "features.toml").write_text(defs)
    proc = run("apply", cwd=project, check_code=code)
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("Warning:")]
    assert len(errors) == 1 and errors[0].startswith("Error: ")
    assert json.loads(run("list", "entities", "--json", cwd=project).stdout) == []


def test_not_found_exit_code(project: Path) -> None:
    run("init", cwd=project)  # `show` only reads: it never creates the store
    proc = run("show", "nothing", cwd=project, check_code=7)
    errors = [line for line in proc.stderr.splitlines() if not line.startswith("Warning:")]
    assert errors == ["Error: nothing named 'nothing' is registered"]
