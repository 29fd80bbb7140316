"""``featurestore materialize --online``, ``publish``, ``unpublish``, ``serve`` from the shell."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

from featurestore.cli import main
from tests.onlinekit import laps_store, random_laps


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """The CLI's entry point in this process (the server tests run it as a subprocess)."""
    monkeypatch.delenv("FEATURESTORE_REGISTRY_URL", raising=False)
    monkeypatch.delenv("FEATURESTORE_ONLINE_STORE", raising=False)

    def invoke(root: Path, *args: str) -> Run:
        capsys.readouterr()
        code = main(["-s", str(root), *args])
        out = capsys.readouterr()
        return Run(code, out.out, out.err)

    return invoke


def test_publish_verbs(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = laps_store(tmp_path, random_laps(seed=31))
    root = store.root
    store.close()
    first = run(root, "materialize", "--online", "--json")
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert [p["status"] for p in out["published"]] == ["published"]
    assert out["materialized"][0]["view"] == "laps"
    again = run(root, "publish", "--json")
    assert [p["status"] for p in json.loads(again.stdout)] == ["up-to-date"]
    listed = json.loads(run(root, "publish", "--list", "--json").stdout)
    assert [(v["view"], v["history"]) for v in listed] == [("laps", 1)]
    everything = run(root, "publish", "laps", "--history", "all", "--json")
    assert json.loads(everything.stdout)[0]["status"] == "published"
    assert json.loads(run(root, "publish", "--list", "--json").stdout)[0]["history"] == "all"
    assert json.loads(run(root, "unpublish", "laps", "--json").stdout) == {"removed": ["laps"]}
    assert json.loads(run(root, "publish", "--list", "--json").stdout) == []
    table = run(root, "publish")
    assert table.returncode == 0 and "online store" in table.stdout


def test_publish_errors_have_the_cli_exit_codes(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = laps_store(tmp_path, random_laps(seed=32))
    root = store.root
    store.close()
    missing = run(root, "publish", "nope")
    assert missing.returncode == 7 and "view 'nope' is not registered" in missing.stderr
    unmaterialized = run(root, "publish", "laps")
    assert unmaterialized.returncode == 7 and "featurestore materialize laps" in unmaterialized.stderr
    bad_history = run(root, "publish", "--history", "0")
    assert bad_history.returncode == 2 and "at least 1 row" in bad_history.stderr
    bad_store = run(root, "publish", "--online-store", "mongodb://x")
    assert bad_store.returncode == 2 and "redis://" in bad_store.stderr


def test_serve_reports_a_busy_port(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = laps_store(tmp_path, random_laps(seed=33))
    root = store.root
    store.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        busy = run(root, "serve", "--port", str(port))
    assert busy.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr
    helptext = run(root, "serve", "--help").stdout  # click prints help and exits 0
    assert "--max-keys" in helptext and "--online-store" in helptext
