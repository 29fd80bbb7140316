"""Engine selection: the ``register_engines`` hook, ``engine=``, ``--engine`` and
``FEATURESTORE_ENGINE``, on a real store. An engine that wraps the Polars engine and records its
calls shows every data verb goes through the engine chosen, and only through it."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from storekit import basic_defs, open_store, write_results

import featurestore.plugins as fp
from featurestore import hookimpl
from featurestore.cli import main
from featurestore.engines import ENGINE_ENV, get_engine
from featurestore.engines.polars_engine import PolarsEngine
from featurestore.errors import LeakageError, PluginError
from featurestore.materialize import materialize


class Recording(PolarsEngine):
    """The Polars engine under the name ``recording``, noting each method it runs."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[str] = []

    def read_source(self, store, source):
        self.calls.append("read_source")
        return super().read_source(store, source)

    def write_artifact(self, root, relpath, frame, **kw):
        self.calls.append("write_artifact")
        return super().write_artifact(root, relpath, frame, **kw)

    def materialize(self, store, views, **options):
        self.calls.append("materialize")
        return super().materialize(store, views, **options)

    def point_in_time_join(self, query, views, files, **kw):
        assert [all(Path(f).exists() for f in fs) for fs in files] == [True] * len(views)
        self.calls.append("point_in_time_join")
        return super().point_in_time_join(query, views, files, **kw)


@pytest.fixture
def recording(monkeypatch):
    engine = Recording()

    class Plugin:
        @hookimpl
        def register_engines(self, register):
            register(engine)

    monkeypatch.delenv(ENGINE_ENV, raising=False)
    plugin = Plugin()
    fp.pm.register(plugin, name="tmp-recording")
    yield engine
    fp.pm.unregister(plugin)


@pytest.fixture
def store(tmp_path):
    s = open_store(tmp_path)
    s.apply(basic_defs(write_results(tmp_path / "results.parquet")))
    return s


def query() -> pl.DataFrame:
    return pl.DataFrame({"driver_id": [2, 1, 1],
                         "event_timestamp": pl.Series(["2025-03-01T00:00:00"] * 3)
                         .str.to_datetime(time_zone="UTC")})


def test_every_data_verb_runs_on_the_engine_named(store, recording):
    store.ingest(engine="recording")
    assert recording.calls == ["read_source", "write_artifact"]
    materialize(store, engine="recording")
    assert recording.calls[2] == "materialize"
    got = store.get_historical_features(query(), ["finish", "laps_led"], tier="historical",
                                        engine="recording")
    assert recording.calls[-1] == "point_in_time_join"
    n = len(recording.calls)
    # The default engine gives the same frame and never calls the other one.
    assert store.get_historical_features(query(), ["finish", "laps_led"],
                                         tier="historical").equals(got)
    assert len(recording.calls) == n
    assert got["finish"].to_list() == [5, None, None]


def test_environment_variable_chooses_the_engine(store, recording, monkeypatch):
    monkeypatch.setenv(ENGINE_ENV, "recording")
    store.ingest()
    assert recording.calls == ["read_source", "write_artifact"]
    assert isinstance(get_engine(), Recording)
    assert isinstance(get_engine("polars"), PolarsEngine)  # an explicit name wins


def test_unknown_engine_is_refused_before_any_work(store, monkeypatch):
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    with pytest.raises(PluginError, match=r"unknown engine 'nope'; available engines: polars "
                                          r"from plugin 'featurestore.engines.polars_engine'"):
        store.ingest(engine="nope")
    assert store.registry.artifacts() == []
    monkeypatch.setenv(ENGINE_ENV, "nope")
    with pytest.raises(PluginError, match=r"unknown engine 'nope' \(from FEATURESTORE_ENGINE\)"):
        materialize(store)


def test_tier_guard_runs_on_every_engine(tmp_path, recording):
    s = open_store(tmp_path)
    s.apply(basic_defs(write_results(tmp_path / "results.parquet"), tier="race"))
    with pytest.raises(LeakageError):
        s.get_historical_features(query(), ["finish"], tier="historical", engine="recording")
    assert recording.calls == []


def test_cli_engine_option(store, recording, capsys):
    root = str(store.root)
    assert main(["--store", root, "ingest", "--engine", "recording", "--json"]) == 0
    assert recording.calls == ["read_source", "write_artifact"]
    capsys.readouterr()
    assert main(["--store", root, "materialize", "--engine", "nope"]) == PluginError.exit_code
    err = capsys.readouterr().err
    assert "unknown engine 'nope'" in err and "recording from plugin 'tmp-recording'" in err


def test_polars_engine_stays_when_plugins_deselect_it(store, monkeypatch):
    monkeypatch.setenv(fp.ENV_VAR, "rolling")
    monkeypatch.delenv(ENGINE_ENV, raising=False)
    fp.reset_plugins()
    try:
        assert isinstance(get_engine(), PolarsEngine)
        store.ingest()
    finally:
        monkeypatch.delenv(fp.ENV_VAR)
        fp.reset_plugins()
