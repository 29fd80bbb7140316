"""The bad-input matrix: one case per row of docs/bad-input.md, plus a fuzz test.

Every refused case must give exactly one line on stderr (``Error: ...``) naming the culprit (file,
column, feature, plugin), a non-zero exit code, and leave the registry and the store's data
directory exactly as they were. Accepted cases (unsorted input, naive or zoned times, odd column
names) must give correct results. Command-line cases run the real CLI as a subprocess; plugin
and retrieval cases go through the Python API.

``CASES`` is the single list: the table in docs/bad-input.md is rendered from it and a test
checks the file matches (``python tests/test_bad_input.py`` rewrites it).

Adding a case is one entry in ``CASES`` and one run of ``python tests/test_bad_input.py``:

    Case("bad-registry-url", "--registry notaurl", "refused: the URL named", 2, "list",
         cli("--registry", "notaurl", "list"), r"registry 'notaurl'")

``cli(*args)`` runs the real command line (after ``--store ROOT``) in a project whose store is
applied and materialized (``make_project``); ``prepare=`` takes any function that changes the
project and returns the arguments. An accepted case gives ``code=0`` and a ``check(root, proc)``;
``warning=`` is a regex the single ``Warning:`` line must match. ``run=`` takes a function of
``(root, registry_url)`` for cases that need more than one command (two processes, a signal):
it runs on SQLite and PostgreSQL and asserts what it must.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
import re
import string
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from featurestore import (
    DataError,
    DefinitionError,
    Feature,
    FeatureStore,
    FeatureStoreError,
    LeakageError,
    NotFoundError,
    PluginError,
    Transform,
    View,
    hookimpl,
    schema,
)
from featurestore.errors import DataWarning
from featurestore.materialize import materialize

if __name__ == "__main__":  # ``python tests/test_bad_input.py``: make ``tests`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests import badinput_store as store_cases

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "bad-input.md"
START, END = "<!-- cases:start -->", "<!-- cases:end -->"

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

[[features]]
name = "finish"
source = "results"

[[features]]
name = "laps_led"
source = "results"
"""

NEW_SOURCE = """
[[sources]]
name = "extra"
path = "new.parquet"
entity = "driver"
event_time = "race_date"
timezone = "{tz}"

[[features]]
name = "extra_value"
source = "extra"
column = "{column}"
"""


def results_frame() -> pl.DataFrame:
    """Six race results of three drivers, naive US Eastern race start times."""
    t = [dt.datetime(2025, 2, 16, 14), dt.datetime(2025, 2, 23, 15), dt.datetime(2025, 3, 2, 15)]
    return pl.DataFrame({
        "driver_id": [1, 1, 1, 2, 2, 3],
        "race_date": [t[0], t[1], t[2], t[0], t[1], t[0]],
        "finish": [3, None, 7, 1, 5, 12],
        "laps_led": [10, 0, 4, 50, 2, 0],
    })


# --------------------------------------------------------------------------- state snapshots


def registry_dump(store: FeatureStore) -> dict[str, list[str]]:
    """Every row of every registry table, as sorted text: equal dumps, equal registries."""
    with store.registry.read() as conn:
        return {t.name: sorted(repr(tuple(r)) for r in conn.execute(select(t)))
                for t in schema.metadata.sorted_tables}


def data_listing(root: Path) -> dict[str, str]:
    """Every file under the store's data directory with its checksum."""
    data = root / "data"
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(data.rglob("*")) if p.is_file()} if data.exists() else {}


def state(root: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    store = FeatureStore(root)
    try:
        return registry_dump(store), data_listing(root)
    finally:
        store.close()


# --------------------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    id: str
    input: str
    answer: str
    code: int  # the CLI exit code (0: accepted); for API cases the code the error class maps to
    via: str  # "apply", "ingest", "materialize" (CLI verbs) or "API ..."
    prepare: Callable[[Path], list[str]] | None = None  # mutate the project, return CLI args
    needle: str = ""  # regex the one error line must match
    check: Callable[[Path], None] | None = None  # correctness of an accepted case
    api: Callable[[FeatureStore], Any] | None = None  # the step that must fail
    api_setup: Callable[[FeatureStore], Any] | None = None  # what runs (and succeeds) before it
    error: type[BaseException] | None = None
    warning: str = ""  # regex the one "Warning:" line on stderr must match (none when empty)
    run: Callable[[Path, str], None] | None = None  # a multi-step case: (root, registry URL)
    out: str = ""  # regex stdout must match (a report such as doctor's, refused or accepted)
    # "tests/test_x.py::test_name": the row is proven by that test (a setup of its own: another
    # user's permissions, fifty corrupted copies...); the table test checks it exists.
    proof: str = ""


def cli(*args: str) -> Callable[[Path], list[str]]:
    """A case that runs ``featurestore --store ROOT ARGS`` on the prepared project as it is."""
    return lambda _root: list(args)


def rewrite(mutate: Callable[[pl.DataFrame], pl.DataFrame]) -> Callable[[Path], list[str]]:
    def prepare(root: Path) -> list[str]:
        mutate(results_frame()).write_parquet(root / "r.parquet")
        return ["ingest"]
    return prepare


def raw_bytes(data: Callable[[bytes], bytes]) -> Callable[[Path], list[str]]:
    def prepare(root: Path) -> list[str]:
        path = root / "r.parquet"
        path.write_bytes(data(path.read_bytes()))
        return ["ingest"]
    return prepare


def bad_defs(text: str, *, frame: pl.DataFrame | None = None) -> Callable[[Path], list[str]]:
    def prepare(root: Path) -> list[str]:
        if frame is not None:
            frame.write_parquet(root / "new.parquet")
        (root / "bad.toml").write_text(text, encoding="utf-8")
        return ["apply", "bad.toml"]
    return prepare


def new_source(frame: pl.DataFrame, *, tz: str = "America/New_York",
               column: str = "value") -> Callable[[Path], list[str]]:
    return bad_defs(NEW_SOURCE.format(tz=tz, column=column.replace('"', '\\"')), frame=frame)


def remove(name: str) -> Callable[[Path], list[str]]:
    def prepare(root: Path) -> list[str]:
        (root / name).unlink()
        return ["ingest"]
    return prepare


def nat_times(root: Path) -> list[str]:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    df = results_frame()
    times = np.array([d.isoformat() for d in df["race_date"]], dtype="datetime64[us]")
    times[2] = np.datetime64("NaT")
    table = df.to_arrow().set_column(1, "race_date", pa.array(times))
    pq.write_table(table, root / "r.parquet")
    return ["ingest"]


def _snapshot(root: Path, source: str) -> pl.DataFrame:
    store = FeatureStore(root)
    try:
        row = store.registry.latest_artifact("source", source)
        assert row is not None
        return store.load_artifact(row["id"])  # type: ignore[return-value]
    finally:
        store.close()


def _view(root: Path, view: str) -> pl.DataFrame:
    store = FeatureStore(root)
    try:
        row = store.registry.latest_artifact("view", view)
        assert row is not None
        return store.load_artifact(row["id"])  # type: ignore[return-value]
    finally:
        store.close()


def shuffled(root: Path) -> list[str]:
    results_frame().sample(fraction=1.0, shuffle=True, seed=3).write_parquet(root / "r.parquet")
    return ["materialize"]


def check_unsorted(root: Path, _proc: Any = None) -> None:
    # Shuffled rows give exactly the artifact the sorted rows gave: same rows, same order.
    view = _view(root, "results")
    store = FeatureStore(root)
    first = store.registry.artifacts(kind="view", name="results")[0]
    store.close()
    assert view.equals(pl.read_parquet(root / first["path"]))
    assert view["finish"].to_list() == [3, None, 7, 1, 5, 12]


def naive_frame() -> pl.DataFrame:
    return pl.DataFrame({"driver_id": [1, 2], "race_date": [dt.datetime(2025, 7, 6, 15)] * 2,
                         "value": [1.5, 2.5]})


def check_naive(root: Path, _proc: Any = None) -> None:
    subprocess_ok(root, "ingest")
    snap = _snapshot(root, "extra")
    # 15:00 in Tokyo (UTC+9) is 06:00 UTC: naive times are read in the declared zone.
    assert snap["event_timestamp"].to_list() == [dt.datetime(2025, 7, 6, 6, tzinfo=dt.UTC)] * 2


def zoned_frame() -> pl.DataFrame:
    return naive_frame().with_columns(pl.col("race_date").dt.replace_time_zone("America/Chicago"))


def check_zoned(root: Path, _proc: Any = None) -> None:
    subprocess_ok(root, "ingest")
    snap = _snapshot(root, "extra")
    # 15:00 in Chicago (CDT, UTC-5) is 20:00 UTC, whatever zone the source declares.
    assert snap["event_timestamp"].to_list() == [dt.datetime(2025, 7, 6, 20, tzinfo=dt.UTC)] * 2


SQL_COLUMN = "x\"; DROP TABLE features; --'"


def check_sql_column(root: Path, _proc: Any = None) -> None:
    subprocess_ok(root, "materialize")
    view = _view(root, "extra")
    assert view[SQL_COLUMN].to_list() == [1.5, 2.5]
    store = FeatureStore(root)
    assert store.registry.get("feature", "extra_value")["column_name"] == SQL_COLUMN
    assert len(store.list("feature")) == 3
    store.close()


def check_duplicates_kept(root: Path, _proc: Any = None) -> None:
    snap = _snapshot(root, "results")
    assert snap.height == 6 and snap.filter(pl.col("driver_id") == 3)["finish"].to_list() == [99]


def dup_keep_last(root: Path) -> list[str]:
    df = results_frame()
    pl.concat([df, df.tail(1).with_columns(finish=pl.lit(99, pl.Int64))]).write_parquet(
        root / "r.parquet")
    (root / "keep.toml").write_text(DEFS.replace('timezone = "America/New_York"',
                                                 'timezone = "America/New_York"\n'
                                                 'on_duplicate = "keep_last"'))
    subprocess_ok(root, "apply", "keep.toml")
    return ["ingest"]


def subprocess_ok(root: Path, *args: str) -> None:
    proc = run_cli(root, *args)
    assert proc.returncode == 0, proc.stderr


FEATURE = '[[features]]\nname = "{name}"\nsource = "results"\ncolumn = "finish"\n'

# Plugin cases: throwaway transforms registered by the ``bad_plugins`` fixture.
PLUGIN = "bad_plugins"


def _declare_out(_params: Any, _schema: Any) -> dict[str, pl.DataType]:
    return {"out": pl.Float64()}


IDS = ["driver_id", "event_timestamp", "available_at"]


def _out(frame: pl.LazyFrame) -> pl.LazyFrame:
    return frame.select(*IDS, out=pl.col("laps_led").cast(pl.Float64))


def _t(name: str, fn: Callable[[pl.LazyFrame, Any, Any], Any],
       output_columns: Callable[[Any, Any], Any] = _declare_out) -> Transform:
    return Transform(name, fn, output_columns)


def _raise(frame: pl.LazyFrame, params: Any, ctx: Any) -> pl.LazyFrame:
    raise RuntimeError("the plugin fell over")


def _pandas(frame: pl.LazyFrame, params: Any, ctx: Any) -> Any:
    return _out(frame).collect().to_pandas()


def _needs_params(params: Any, schema_: Any) -> dict[str, pl.DataType]:
    if "column" not in params:
        raise ValueError("params need 'column'")
    return {"out": pl.Float64()}


def _broken_declaration(params: Any, schema_: Any) -> dict[str, pl.DataType]:
    raise ZeroDivisionError("division by zero in output_columns")


BAD_TRANSFORMS = [
    _t("bad_raise", _raise),
    _t("bad_schema", lambda f, p, c: _out(f).with_columns(pl.col("out").cast(pl.String))),
    _t("bad_extra_column", lambda f, p, c: _out(f).with_columns(surprise=pl.lit(1))),
    _t("bad_row_count", lambda f, p, c: _out(f).head(3)),
    _t("bad_drops_keys", lambda f, p, c: _out(f).with_columns(
        driver_id=pl.when(pl.col("driver_id") == 3).then(2).otherwise(pl.col("driver_id")))),
    _t("bad_invents_keys", lambda f, p, c: _out(f).with_columns(driver_id=pl.col("driver_id") + 100)),
    _t("bad_earlier", lambda f, p, c: _out(f).with_columns(
        available_at=pl.col("available_at") - pl.duration(days=1))),
    _t("bad_pandas", _pandas),
    _t("bad_arrow", lambda f, p, c: _out(f).collect().to_arrow()),
    _t("bad_none", lambda f, p, c: None),
    _t("bad_lazy_failure", lambda f, p, c: f.select(
        *IDS, out=pl.lit("not a number").cast(pl.Float64))),
    _t("bad_peeks_ahead", lambda f, p, c: f.sort("driver_id", "event_timestamp").select(
        *IDS, out=pl.col("laps_led").shift(-1).over("driver_id").cast(pl.Float64))),
    _t("bad_params", lambda f, p, c: _out(f), _needs_params),
    _t("bad_declaration", lambda f, p, c: _out(f), _broken_declaration),
]


class BadPlugins:
    @hookimpl
    def register_transforms(self, register: Callable[[Transform], None]) -> None:
        for t in BAD_TRANSFORMS:
            register(t)


def apply_view(name: str, params: dict[str, Any] | None = None) -> Callable[[FeatureStore], Any]:
    def run(store: FeatureStore) -> Any:
        return store.apply([View(f"v_{name}", "results", transform=name, params=params or {}),
                            Feature(f"f_{name}", view=f"v_{name}", column="out")])
    return run


def materialize_view(name: str) -> Callable[[FeatureStore], Any]:
    def run(store: FeatureStore) -> Any:
        return materialize(store, [f"v_{name}"])
    return run


def retrieve_unknown(store: FeatureStore) -> Any:
    query = pl.DataFrame({"driver_id": [1], "event_timestamp": [dt.datetime(2025, 3, 9,
                                                                            tzinfo=dt.UTC)]})
    if hasattr(store, "get_historical_features"):
        return store.get_historical_features(query, ["finish", "no_such_feature"], tier="race")
    return store.resolve_features(["finish", "no_such_feature"])


def _plugin_case(id_: str, transform: str, input_: str, answer: str, needle: str,
                 error: type[BaseException] = PluginError, code: int = 6,
                 params: dict[str, Any] | None = None) -> Case:
    return Case(id_, input_, answer, code, "API materialize()", needle=needle,
                api_setup=apply_view(transform, params), api=materialize_view(transform),
                error=error)



# Command-line retrieval and serving: a query of drivers 1, 2 and 3 a week after the last race.
QUERY_CUTOFF = dt.datetime(2025, 3, 9, tzinfo=dt.UTC)


def query_frame(**overrides: list[Any]) -> pl.DataFrame:
    data: dict[str, list[Any]] = {"driver_id": [1, 2, 3], "event_timestamp": [QUERY_CUTOFF] * 3}
    data.update(overrides)
    return pl.DataFrame(data, schema={"driver_id": pl.Int64,
                                      "event_timestamp": pl.Datetime("us", "UTC")})


def oracle_finish(driver: Any, cutoff: Any) -> Any:
    """finish of the driver's last race that started before the cutoff (plain Python)."""
    from zoneinfo import ZoneInfo

    if driver is None or cutoff is None:
        return None
    rows = [r for r in results_frame().iter_rows(named=True) if r["driver_id"] == driver
            and r["race_date"].replace(tzinfo=ZoneInfo("America/New_York")) < cutoff]
    return max(rows, key=lambda r: r["race_date"])["finish"] if rows else None


def results_in_utc() -> list[tuple[Any, ...]]:
    """(driver, UTC race start, finish) of every result, in plain Python."""
    from zoneinfo import ZoneInfo

    return sorted((r["driver_id"], r["race_date"].replace(tzinfo=ZoneInfo("America/New_York"))
                   .astimezone(dt.UTC), r["finish"]) for r in results_frame().iter_rows(named=True))


def retrieve(*args: str, entities: pl.DataFrame | bytes | None = None, features: str = "finish",
             output: str = "out.parquet", tier: str = "race") -> Callable[[Path], list[str]]:
    """``featurestore retrieve`` of ``features`` for an entity file (``query_frame()`` by default)."""
    def prepare(root: Path) -> list[str]:
        data = query_frame() if entities is None else entities
        if isinstance(data, bytes):
            (root / "q.parquet").write_bytes(data)
        else:
            data.write_parquet(root / "q.parquet")
        return ["retrieve", "--entities", "q.parquet", "--features", features, "--tier", tier,
                "-o", output, *args]
    return prepare


def check_retrieved(path: str) -> Callable[[Path, Any], None]:
    def check(root: Path, _proc: Any = None) -> None:
        out = pl.read_parquet(root / path)
        query = pl.read_parquet(root / "q.parquet")
        assert out.select(query.columns).equals(query)  # one row per query row, in order
        assert out["finish"].to_list() == [oracle_finish(d, t) for d, t in query.iter_rows()]
        assert not list((root / path).parent.glob("*.tmp")), "a temporary file was left"
    return check


def check_online_typed(root: Path, proc: Any) -> None:
    # driver 3 raced once (finish 12): the key was read as the Int64 it is in the artifact.
    assert json.loads(proc.stdout) == [{"driver_id": 3, "finish": 12}]


def source_dir(second: Callable[[pl.DataFrame], pl.DataFrame], *, at: str) -> Callable[[Path], list[str]]:
    """A source kept as a directory of two Parquet files, the second rewritten by ``second``.

    ``at="apply"``: the mixed directory is declared; ``at="ingest"``: it is declared while
    consistent, then the second file is replaced (new data arriving in another shape).
    """
    def prepare(root: Path) -> list[str]:
        parts = root / "parts"
        parts.mkdir()
        frame = results_frame()
        frame.head(3).write_parquet(parts / "a.parquet")
        (frame.tail(3) if at == "ingest" else second(frame.tail(3))).write_parquet(parts / "b.parquet")
        (root / "dir.toml").write_text(DIR_SOURCE, encoding="utf-8")
        if at == "apply":
            return ["apply", "dir.toml"]
        subprocess_ok(root, "apply", "dir.toml")
        subprocess_ok(root, "ingest")
        second(frame.tail(3)).write_parquet(parts / "b.parquet")
        return ["ingest"]
    return prepare


DIR_SOURCE = """
[[sources]]
name = "parted"
path = "parts"
entity = "driver"
event_time = "race_date"
timezone = "America/New_York"

[[features]]
name = "parted_finish"
source = "parted"
column = "finish"
"""


def second_version(then: Callable[[Path], list[str]]) -> Callable[[Path], list[str]]:
    """Give ``finish`` a second version (it reads another column), then prepare ``then``."""
    def prepare(root: Path) -> list[str]:
        (root / "v2.toml").write_text(DEFS.replace('name = "finish"\nsource = "results"\n',
                                                   'name = "finish"\nsource = "results"\n'
                                                   'column = "laps_led"\n'), encoding="utf-8")
        subprocess_ok(root, "apply", "v2.toml")
        return then(root)
    return prepare


NO_ZONE_SOURCE = """
[[sources]]
name = "extra"
path = "new.parquet"
entity = "driver"
event_time = "race_date"

[[features]]
name = "extra_value"
source = "extra"
column = "value"
"""


def check_assumed_utc(root: Path, _proc: Any = None) -> None:
    subprocess_ok(root, "ingest")
    snap = _snapshot(root, "extra")
    assert snap["event_timestamp"].to_list() == [dt.datetime(2025, 7, 6, 15, tzinfo=dt.UTC)] * 2
    again = run_cli(root, "apply", "bad.toml")  # registered already: the warning came once
    assert again.returncode == 0 and "Warning" not in again.stderr, again.stderr


def online_string_key(store: FeatureStore) -> Any:
    return store.get_online_features({"driver_id": ["3"]}, ["finish"], tier="race")


def strict_nulls(store: FeatureStore) -> Any:
    return store.get_historical_features(query_frame(driver_id=[1, None, 3]), ["finish"],
                                         tier="race", strict=True)


# Two definitions files that declare the same view differently, each with a feature of its own.
SHARED_VIEW = """
[[views]]
name = "roll"
source = "results"
transform = "rolling"
params = {{ column = "finish", windows = [{window}], aggs = ["mean"] }}

[[features]]
name = "{own}"
view = "roll"
column = "finish_mean_last_{window}"

[[features]]
name = "shared"
view = "roll"
column = "finish_mean_last_{window}"
"""


def cli_env(registry_url: str) -> dict[str, str]:
    return {**os.environ, "FEATURESTORE_DEBUG": "", "FEATURESTORE_REGISTRY_URL": registry_url}


def store_state(root: Path, registry_url: str) -> tuple[dict[str, list[str]], dict[str, str]]:
    store = FeatureStore(root, registry_url=registry_url)
    try:
        return registry_dump(store), data_listing(root)
    finally:
        store.close()


def concurrent_applies(root: Path, registry_url: str) -> None:
    """Two processes apply different definitions of one view at once: one wins, one is refused.

    Before the fix both succeeded and the loser's feature was left on a view version that
    materialize never builds again ("run materialize" could not help).
    """
    (root / "a.toml").write_text(SHARED_VIEW.format(window=2, own="fa"), encoding="utf-8")
    (root / "b.toml").write_text(SHARED_VIEW.format(window=3, own="fb"), encoding="utf-8")
    env = cli_env(registry_url)
    base = [sys.executable, "-m", "featurestore", "--store", str(root)]
    procs = [subprocess.Popen([*base, "apply", name], cwd=root, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name in ("a.toml", "b.toml")]
    done = [(p, *p.communicate(timeout=120)) for p in procs]
    codes = sorted(p.returncode for p, _, _ in done)
    assert codes == [0, 2], [(p.returncode, err) for p, _, err in done]
    [(_, _, err)] = [(p, out, err) for p, out, err in done if p.returncode == 2]
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(r"view 'roll' changes \(params: .*\) under feature 'f[ab]' v1, which is "
                     r"registered but not in these definitions", lines[0]), lines[0]
    # Every registered feature is served once materialized: nothing is left unrepairable.
    subprocess.run([*base, "materialize"], cwd=root, env=env, check=True, capture_output=True)
    store = FeatureStore(root, registry_url=registry_url)
    try:
        names = sorted(f["name"] for f in store.list("feature"))
        assert len(names) == 4 and "shared" in names, names  # finish, laps_led, shared, fa|fb
        frame = store.get_historical_features(query_frame(), names, tier="race")
        assert frame["finish"].to_list() == [oracle_finish(d, QUERY_CUTOFF) for d in (1, 2, 3)]
        winner = next(n for n in names if n in ("fa", "fb"))
        assert frame[winner].to_list() == frame["shared"].to_list()
    finally:
        store.close()


# Where an interrupted command is stopped: (module, attribute, owner expression, pause after the
# real call?). The child touches a marker file there and sleeps; the parent sends SIGINT.
PAUSES = [
    ("featurestore.cli", "_register_extra_commands", "target", False),  # loading plugins
    # The project's views read columns as is: the view's artifact is its snapshot's file,
    # linked (featurestore.snapshotview).
    ("featurestore.materialize", "column_view_rows", "target", False),  # computing the view
    ("featurestore.store_data", "link_artifact_atomic", "target", True),  # file linked, unregistered
    ("featurestore.store_data", "_insert_artifact", "target.StoreData", True),  # row not committed
]
PAUSED_CLI = """
import os, pathlib, sys, time
import {module} as target
owner = {owner}
real = getattr(owner, {attr!r})
def paused(*args, **kwargs):
    result = real(*args, **kwargs) if {after} else None
    pathlib.Path(os.environ["FS_TEST_PAUSED"]).touch()
    time.sleep(120)
    return result
setattr(owner, {attr!r}, staticmethod(paused) if isinstance(owner, type) else paused)
from featurestore.cli import main
sys.exit(main(sys.argv[1:]))
"""


def interrupted(root: Path, registry_url: str) -> None:
    """Ctrl-C (a real SIGINT from outside) at each pause point of ``materialize``."""
    import signal
    import time

    for module, attr, owner, after in PAUSES:
        before = store_state(root, registry_url)
        marker = root.parent / f"paused-{attr}"
        code = PAUSED_CLI.format(module=module, attr=attr, owner=owner, after=after)
        env = {**cli_env(registry_url), "FS_TEST_PAUSED": str(marker)}
        proc = subprocess.Popen([sys.executable, "-c", code, "--store", str(root), "materialize",
                                 "--force"], cwd=root, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), f"{attr}: never paused: {proc.communicate()[1]}"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, f"{attr}: exit {proc.returncode}: {err}"
        assert [line for line in err.splitlines() if line.strip()] == ["Aborted."], err
        assert store_state(root, registry_url) == before, f"{attr}: the interrupt left a change"


CASES: list[Case] = [
    # ---- files
    Case("corrupt-parquet", "source file is not Parquet (random bytes)",
         "refused: file named, 'cannot read as Parquet'", 4, "ingest",
         raw_bytes(lambda b: b"PAR1" + bytes(range(256)) * 4), r"r\.parquet: cannot read as Parquet"),
    Case("truncated-parquet", "source file cut in half (footer lost)",
         "refused: file named, 'cannot read as Parquet'", 4, "ingest",
         raw_bytes(lambda b: b[: len(b) // 2]), r"r\.parquet: cannot read as Parquet"),
    Case("empty-file", "source file of 0 bytes", "refused: file named, 'file is empty'", 4,
         "ingest", raw_bytes(lambda b: b""), r"r\.parquet: file is empty"),
    Case("missing-file", "source file deleted after apply", "refused: path named, 'no Parquet file'",
         4, "ingest", remove("r.parquet"), r"r\.parquet: no Parquet file found"),
    # ---- columns and dtypes
    Case("missing-key-column", "key column dropped from the file",
         "refused: file and column named, columns found listed", 4, "ingest",
         rewrite(lambda d: d.drop("driver_id")), r"r\.parquet: column 'driver_id' is missing"),
    Case("missing-time-column", "event-time column dropped from the file",
         "refused: file and column named", 4, "ingest",
         rewrite(lambda d: d.drop("race_date")), r"r\.parquet: column 'race_date' is missing"),
    Case("missing-column-at-apply", "a new source declares an event-time column the file lacks",
         "refused at apply: file, source and column named", 4, "apply",
         new_source(naive_frame().rename({"race_date": "when"})),
         r"new\.parquet: source 'extra' declares event_time 'race_date'.*no such column"),
    Case("wrong-dtype", "a value column's dtype changed after registration (Int64 to String)",
         "refused: column, new and registered dtype named", 4, "ingest",
         rewrite(lambda d: d.with_columns(pl.col("finish").cast(pl.String))),
         r"column 'finish' has dtype String, the source was registered with Int64"),
    Case("time-not-a-time", "event-time column holds strings",
         "refused at apply (not first at ingest): column and dtype named", 4, "apply",
         new_source(naive_frame().with_columns(pl.col("race_date").cast(pl.String))),
         r"new\.parquet: event-time column 'race_date': expected a Datetime or Date column, "
         r"found String"),
    Case("float-keys", "key column of Float64", "refused at apply: keys must compare exactly", 4,
         "apply", new_source(naive_frame().with_columns(pl.col("driver_id").cast(pl.Float64))),
         r"key column 'driver_id' has dtype Float64"),
    Case("reserved-column", "the file has a column named available_at",
         "refused: featurestore's own column names are reserved", 4, "apply",
         new_source(naive_frame().with_columns(available_at=pl.col("race_date"))),
         r"column 'available_at' is reserved"),
    # ---- rows
    Case("null-keys", "a null in the key column", "refused: column, count and first row named", 4,
         "ingest", rewrite(lambda d: d.with_columns(
             driver_id=pl.when(pl.int_range(pl.len()) == 4).then(None).otherwise("driver_id"))),
         r"key column 'driver_id' has 1 null value\(s\) \(first at row 4\)"),
    Case("null-timestamps", "a null event time", "refused: column, count and first row named", 4,
         "ingest", rewrite(lambda d: d.with_columns(
             race_date=pl.when(pl.int_range(pl.len()) == 2).then(None).otherwise("race_date"))),
         r"event-time column 'race_date' has 1 null value\(s\) \(first at row 2\)"),
    Case("nat-timestamps", "a NaT event time (numpy/pandas NaT; Parquet stores it as null)",
         "refused like a null: column and row named", 4, "ingest", nat_times,
         r"event-time column 'race_date' has 1 null value\(s\)"),
    Case("duplicate-rows", "two rows with the same key and event time",
         "refused: an example row shown, on_duplicate = \"keep_last\" suggested", 4, "ingest",
         rewrite(lambda d: pl.concat([d, d.tail(1)])),
         r"2 rows share their key and event time \(e\.g\. driver_id=3, "
         r"race_date=2025-02-16T19:00:00\+00:00\)"),
    Case("duplicate-rows-keep-last", "duplicates with on_duplicate = \"keep_last\"",
         "accepted: the last of the duplicates is kept", 0, "ingest", dup_keep_last,
         check=check_duplicates_kept),
    Case("unsorted-input", "rows in random order", "accepted: results identical to sorted input "
         "(rows are sorted by keys and time on ingest; order never matters)", 0, "materialize",
         shuffled, check=check_unsorted),
    # ---- time zones
    Case("naive-timestamps", "naive times, source declares timezone = \"Asia/Tokyo\"",
         "accepted: read as Tokyo local time, stored in UTC", 0, "apply",
         new_source(naive_frame(), tz="Asia/Tokyo"), check=check_naive),
    Case("zoned-timestamps", "times zoned America/Chicago, source declares Asia/Tokyo",
         "accepted: converted to UTC from their own zone (the declared zone only reads naive "
         "times)", 0, "apply", new_source(zoned_frame(), tz="Asia/Tokyo"), check=check_zoned),
    Case("nonexistent-local-time", "a naive time inside a DST gap (02:30 on 9 March 2025, New York)",
         "refused: source named, conversion error shown", 4, "ingest",
         rewrite(lambda d: d.with_columns(race_date=pl.when(pl.int_range(pl.len()) == 0)
                                          .then(dt.datetime(2025, 3, 9, 2, 30))
                                          .otherwise("race_date"))),
         r"cannot convert times of source 'results'.*non-existent"),
    Case("ambiguous-local-time", "a naive time repeated by a DST change (01:30 on 2 Nov 2025, "
         "New York)", "refused: source named, conversion error shown", 4, "ingest",
         rewrite(lambda d: d.with_columns(race_date=pl.when(pl.int_range(pl.len()) == 0)
                                          .then(dt.datetime(2025, 11, 2, 1, 30))
                                          .otherwise("race_date"))),
         r"cannot convert times of source 'results'.*ambiguous"),
    Case("unknown-timezone", "timezone = \"Mars/Olympus_Mons\"",
         "refused: source and zone named, IANA name asked for", 2, "apply",
         new_source(naive_frame(), tz="Mars/Olympus_Mons"), r"unknown time zone 'Mars/Olympus_Mons'"),
    # ---- definitions
    Case("toml-syntax-error", "definitions file with a TOML syntax error",
         "refused: file, line and column named", 2, "apply",
         bad_defs('[[features]\nname = "x"\n'), r"bad\.toml: TOML syntax error.*line 1"),
    Case("definitions-missing", "definitions file that does not exist", "refused: file named", 2,
         "apply", lambda root: ["apply", "nowhere.toml"], r"nowhere\.toml: definitions file not found"),
    Case("unknown-key", "a misspelt key (colour = ...)", "refused: key named, allowed keys listed",
         2, "apply", bad_defs(FEATURE.format(name="x") + "colour = 1\n"), r"unknown key\(s\) colour"),
    Case("wrong-value-type", "join_keys = 5 (not a list of strings)",
         "refused: object and key named", 2, "apply",
         bad_defs('[[entities]]\nname = "car"\njoin_keys = 5\n'),
         r"\[\[entities\]\] 'car': 'join_keys' must be a list of strings"),
    Case("unknown-tier", "tier = \"warmup\"", "refused: object and tier named", 2, "apply",
         bad_defs(FEATURE.format(name="x") + 'tier = "warmup"\n'), r"unknown tier 'warmup'"),
    Case("unknown-reference", "a feature reads a source that is not registered",
         "refused: feature and source named", 2, "apply",
         bad_defs('[[features]]\nname = "x"\nsource = "nowhere"\n'),
         r"feature 'x' refers to unknown source 'nowhere'"),
    Case("unknown-feature-in-set", "a feature set lists an unknown feature",
         "refused: set and feature named", 2, "apply",
         bad_defs('[[feature_sets]]\nname = "s"\nfeatures = ["finish", "ghost"]\n'),
         r"feature set 's' refers to unknown feature 'ghost'"),
    Case("cycle", "a would-be cycle: feature a reads view b, feature b reads view a",
         "refused: references only point down (feature set, feature, view, source, entity), so a "
         "cycle is always an unknown reference", 2, "apply",
         bad_defs('[[features]]\nname = "a"\nview = "b"\n\n[[features]]\nname = "b"\nview = "a"\n'),
         r"feature 'a' refers to unknown view 'b'"),
    Case("self-reference", "a view whose source is itself", "refused: view and source named", 2,
         "apply", bad_defs('[[views]]\nname = "loop"\nsource = "loop"\ntransform = "rolling"\n'),
         r"view 'loop' refers to unknown source 'loop'"),
    Case("declared-twice", "the same feature declared twice", "refused: name named", 2, "apply",
         bad_defs(FEATURE.format(name="x") * 2), r"feature 'x' is declared twice"),
    Case("name-clash", "a feature named like the registered source", "refused: both named", 2,
         "apply", bad_defs(FEATURE.format(name="results")),
         r"feature 'results' clashes with the registered source 'results'"),
    Case("sql-in-name", "feature name x'; DROP TABLE features; --",
         "refused: names are letters, digits and _", 2, "apply",
         bad_defs(FEATURE.format(name="x'; DROP TABLE features; --")),
         r"feature name \"x'; DROP TABLE features; --\" is not allowed"),
    Case("sql-in-column", "a column named x\"; DROP TABLE features; --' read by a feature",
         "accepted: column names are data, bound as parameters, never spliced into SQL", 0,
         "apply", new_source(naive_frame().rename({"value": SQL_COLUMN}), column=SQL_COLUMN),
         check=check_sql_column),
    Case("dotdot-in-name", "feature name ../../etc/passwd", "refused: names cannot be paths", 2,
         "apply", bad_defs(FEATURE.format(name="../../etc/passwd")),
         r"feature name '\.\./\.\./etc/passwd' is not allowed"),
    Case("absolute-path-in-name", "source name /tmp/evil", "refused: names cannot be paths", 2,
         "apply", bad_defs('[[sources]]\nname = "/tmp/evil"\npath = "r.parquet"\nentity = "driver"\n'
                           'event_time = "race_date"\n'), r"source name '/tmp/evil' is not allowed"),
    Case("unknown-transform", "a view names a transform no plugin registered",
         "refused: transform named, available ones listed", 6, "apply",
         bad_defs('[[views]]\nname = "v"\nsource = "results"\ntransform = "no_such_transform"\n'),
         r"unknown transform 'no_such_transform'"),
    # ---- plugins (Python API)
    _plugin_case("plugin-raises", "bad_raise", "a transform raises",
                 "PluginError: transform, plugin, view and the exception named",
                 r"transform 'bad_raise' \(plugin 'bad_plugins', view 'v_bad_raise'\) failed: "
                 r"RuntimeError: the plugin fell over"),
    _plugin_case("plugin-wrong-dtype", "bad_schema", "a transform returns a declared column with "
                 "another dtype", "PluginError: column, actual and declared dtype named",
                 r"transform 'bad_schema'.*column out is String, declared Float64"),
    _plugin_case("plugin-undeclared-column", "bad_extra_column", "a transform returns a column "
                 "it did not declare", "PluginError: the column named",
                 r"transform 'bad_extra_column'.*undeclared column\(s\) surprise"),
    _plugin_case("plugin-row-count", "bad_row_count", "a transform changes the row count",
                 "PluginError: both counts named", r"transform 'bad_row_count'.* returned 3 row\(s\) "
                 r"for 6 input row\(s\)"),
    _plugin_case("plugin-drops-keys", "bad_drops_keys", "a transform drops an entity key "
                 "(driver 3 becomes 2)", "PluginError: the row that changed named",
                 r"transform 'bad_drops_keys'.*(dropped|invented) or changed keys"),
    _plugin_case("plugin-invents-keys", "bad_invents_keys", "a transform invents entity keys "
                 "(every driver_id + 100)", "PluginError: a changed row named",
                 r"transform 'bad_invents_keys'.*(invented|dropped) or changed keys"),
    _plugin_case("plugin-moves-time-earlier", "bad_earlier", "a transform moves available_at "
                 "earlier", "PluginError: the row named", r"transform 'bad_earlier'.*available_at"),
    _plugin_case("plugin-returns-pandas", "bad_pandas", "a transform returns a pandas DataFrame",
                 "PluginError: the type named, a polars LazyFrame asked for",
                 r"transform 'bad_pandas'.*returned pandas\..*DataFrame, expected a polars"),
    _plugin_case("plugin-returns-arrow", "bad_arrow", "a transform returns a pyarrow Table",
                 "PluginError: the type named", r"transform 'bad_arrow'.*returned pyarrow\..*Table"),
    _plugin_case("plugin-returns-none", "bad_none", "a transform returns None",
                 "PluginError: the type named", r"transform 'bad_none'.*returned builtins\.NoneType"),
    _plugin_case("plugin-lazy-failure", "bad_lazy_failure", "a transform's LazyFrame fails when "
                 "collected", "PluginError: transform and polars error named",
                 r"transform 'bad_lazy_failure'.*(failed|cannot be resolved)"),
    _plugin_case("plugin-peeks-ahead", "bad_peeks_ahead", "a transform reads the next row "
                 "(a leak)", "LeakageError from causality verification: transform and row named",
                 r"bad_peeks_ahead", error=LeakageError, code=3),
    Case("plugin-rejects-params", "a transform's output_columns rejects the params (ValueError)",
         "DefinitionError at apply: view, transform and reason named", 2, "API apply()",
         needle=r"view 'v_bad_params': transform 'bad_params' rejected its params: params need "
                r"'column'", api=apply_view("bad_params"), error=FeatureStoreError),
    Case("plugin-broken-declaration", "a transform's output_columns crashes (ZeroDivisionError)",
         "PluginError at apply: view, transform, plugin and exception named", 6, "API apply()",
         needle=r"transform 'bad_declaration' \(plugin 'bad_plugins'\) failed in output_columns: "
                r"ZeroDivisionError", api=apply_view("bad_declaration"), error=PluginError),
    # ---- retrieval
    Case("retrieve-unknown-feature", "a retrieval asks for a feature that does not exist",
         "NotFoundError: the feature named, registered ones listed", 7, "API "
         "get_historical_features()", needle=r"feature 'no_such_feature' is not registered",
         api=retrieve_unknown, error=NotFoundError),
    # ---- retrieval and serving from the command line
    Case("bad-as-of", "online --as-of yesterday", "refused: the option and the expected ISO format "
         "named", 2, "online", cli("online", "--tier", "race", "--key", "driver_id=1", "--features", "finish",
                                   "--as-of", "yesterday"),
         r"--as-of 'yesterday': expected an ISO 8601 timestamp"),
    Case("key-wrong-type", "online --key driver_id=abc (the key is an integer)",
         "refused: key column, its dtype (from the view artifact) and the value named", 2,
         "online", cli("online", "--tier", "race", "--key", "driver_id=abc", "--features", "finish"),
         r"--key driver_id=abc: key column 'driver_id' is Int64 in view 'results'; 'abc' is not "
         r"an integer"),
    Case("key-typed", "online --key driver_id=3 --json", "accepted: command-line keys are cast to "
         "the key column's dtype in the view artifact (text is never guessed at)", 0, "online",
         cli("online", "--tier", "race", "--key", "driver_id=3", "--features", "finish", "--json"),
         check=check_online_typed),
    Case("key-not-a-key", "online --key driver=3 (no such key column)",
         "refused: the view's key columns listed", 2, "online",
         cli("online", "--tier", "race", "--key", "driver=3", "--features", "finish"),
         r"'driver' is not a key column of the requested features' views; their key columns: "
         r"driver_id"),
    Case("key-string-for-int", "get_online_features with the string \"3\" for an Int64 key",
         "DataError: view, key column and both dtypes named (never a silently empty answer)", 4,
         "API get_online_features()", needle=r"view 'results': key column 'driver_id' has dtype "
         r"Int64 but query column 'driver_id' has dtype String", api=online_string_key,
         error=DataError),
    Case("unknown-version", "finish@7 when finish has versions 1 and 2",
         "refused: the versions that exist named", 7, "retrieve",
         second_version(retrieve(features="finish@7")),
         r"feature 'finish' has no version 7; registered versions: 1, 2 \(newest 2\)"),
    Case("output-dir-missing", "retrieve -o into a directory that does not exist",
         "accepted: the directory is created (as pytest --junitxml and pip download -d do); the "
         "file is written to a temporary name and renamed", 0, "retrieve",
         retrieve(output="out/deeper/train.parquet"), check=check_retrieved("out/deeper/train.parquet")),
    Case("output-dir-blocked", "retrieve -o r.parquet/train.parquet (a file is in the way)",
         "refused: the path and the reason named", 2, "retrieve",
         retrieve(output="r.parquet/train.parquet"),
         r"--output r\.parquet/train\.parquet: cannot create directory r\.parquet"),
    Case("empty-entity-file", "retrieve --entities of 0 bytes", "refused: file named, 'entity "
         "file is empty'", 4, "retrieve", retrieve(entities=b""),
         r"q\.parquet: entity file is empty \(0 bytes\)"),
    Case("null-entity-keys", "entity rows with a null key and a null cutoff",
         "accepted with one warning counting them (they match nothing: null features)", 0,
         "retrieve", retrieve(entities=query_frame(driver_id=[1, None, 3],
                                                   event_timestamp=[QUERY_CUTOFF, QUERY_CUTOFF, None])),
         check=check_retrieved("out.parquet"),
         warning=r"entity frame: 2 of 3 row\(s\) have a null key or cutoff \(1 null 'driver_id', "
                 r"1 null cutoff 'event_timestamp'\)"),
    Case("null-entity-keys-strict", "the same with retrieve --strict",
         "refused: the counts named", 4, "retrieve",
         retrieve("--strict", entities=query_frame(driver_id=[1, None, 3])),
         r"entity frame: 1 of 3 row\(s\) have a null key or cutoff \(1 null 'driver_id'\); "
         r"refused \(strict\)"),
    Case("null-entity-keys-strict-api", "get_historical_features(..., strict=True) with a null key",
         "DataError: the counts named", 4, "API get_historical_features()",
         needle=r"1 of 3 row\(s\) have a null key or cutoff", api=strict_nulls, error=DataError),
    # ---- more data and time zones
    Case("mixed-schemas-at-apply", "a source directory whose two files differ (finish Int64 and "
         "String)", "refused at apply: both files and the differing column and dtypes named", 4,
         "apply", source_dir(lambda d: d.with_columns(pl.col("finish").cast(pl.String)), at="apply"),
         r"files .*a\.parquet and .*b\.parquet have different schemas \('finish': Int64 vs String\)"),
    Case("mixed-schemas-at-ingest", "a file of another shape (a column missing) arrives in a "
         "registered source directory", "refused at ingest: both files and the column named", 4,
         "ingest", source_dir(lambda d: d.drop("laps_led"), at="ingest"),
         r"a\.parquet and .*b\.parquet have different schemas \('laps_led': Int64 vs absent\)"),
    Case("naive-times-no-zone", "naive times, the source declares no timezone",
         "accepted as UTC (the contract's default), with one warning naming the source at the "
         "apply that registers it (not again)", 0, "apply",
         bad_defs(NO_ZONE_SOURCE, frame=naive_frame()), check=check_assumed_utc,
         warning=r"source 'extra' \(new\.parquet\): column\(s\) 'race_date' hold naive times and "
                 r"the source declares no timezone, so they are read as UTC"),
    # ---- several processes, signals
    Case("concurrent-applies", "two processes apply different definitions of one view (and of a "
         "shared feature) at the same moment", "one applies, the other is refused naming the "
         "feature it would strand (before: both applied, and one feature could never be served)",
         2, "apply x2", run=concurrent_applies),
    Case("interrupted-materialize", "Ctrl-C (SIGINT) during materialize: while plugins load, "
         "while the view computes, after the file is written, before the registry commits",
         "exit 130, one line \"Aborted.\", no traceback; registry and data as before", 130,
         "materialize", run=interrupted),
    # ---- which registry a store opens (issue 10)
    Case("registry-not-a-url", "--registry notaurl", "refused: the URL named, an example URL "
         "given (before: AttributeError)", 2, "list", cli("--registry", "notaurl", "list"),
         r"registry URL 'notaurl' is not a SQLAlchemy URL \(e\.g\. sqlite:///"),
    Case("registry-read-only", "registry.db read-only to the user during apply (its folder "
         "writable)", "refused: the registry file named, 'read-only' (before: internal error "
         "OperationalError)", 1, "apply", proof="tests/test_readonly.py::"
         "test_a_read_only_registry_file_during_apply_is_named"),
    Case("no-store", "featurestore -s typo list (no such folder)", "refused: 'no store at "
         "typo'; nothing created (read verbs never create a store)", 7, "list",
         cli("-s", "typo", "list"), r"no store at .*/typo \(the folder does not exist\)",
         check=store_cases.check_nothing_created("typo")),
    Case("no-store-any-read-verb", "list, show, artifacts, doctor, online, retrieve at a root "
         "that is no store (missing, or an empty folder)", "refused: 'no store at ...', nothing "
         "created in it", 7, "list, show, ...", proof="tests/test_store_identity.py::"
         "test_read_verbs_never_create_a_store"),
    Case("registry-knows-no-store", "doctor --fix with --registry naming an empty database",
         "refused: both registries named, 'records no store id'; the database is not even "
         "migrated, no artifact touched", 2, "doctor --fix",
         lambda root: ["--registry", store_cases.empty_registry(root), "doctor", "--fix"],
         r"registry .*empty\.db is not the registry of store .*records no store id",
         check=store_cases.check_empty_registry_untouched),
    Case("registry-knows-no-store-retrieve", "retrieve with --registry naming an empty database",
         "refused as doctor is: retrieval never reads through a registry that is not the "
         "store's", 2, "retrieve",
         store_cases.then(store_cases.empty_registry,
                          lambda root: ["--registry", f"sqlite:///{root / 'empty.db'}",
                                        *retrieve()(root)]),
         r"registry .*empty\.db is not the registry of store .*records no store id",
         check=store_cases.check_empty_registry_untouched),
    Case("registry-of-another-store", "doctor --fix with --registry naming another store's "
         "registry", "refused: both store ids and both registries named", 2, "doctor --fix",
         lambda root: ["--registry", store_cases.other_store(root), "doctor", "--fix"],
         r"registry .*other/registry\.db is not the registry of store .*: the store is "
         r"[0-9a-f]{32} .* but the registry records store [0-9a-f]{32} \(root .*other\)"),
    Case("registry-not-given", "doctor --fix of a PostgreSQL-backed store without --registry",
         "accepted: the registry featurestore.json records is used; every artifact checked, "
         "nothing removed (before: all 7 artifacts deleted, 'ok')", 0, "doctor --fix",
         proof="tests/test_store_identity.py::test_doctor_fix_without_registry_keeps_every_artifact"),
    Case("registry-lost", "registry.db deleted, then doctor --fix, list or materialize",
         "refused: 'has lost its registry'; never replaced by an empty one, no data removed "
         "(before: doctor --fix removed all data)", 7, "doctor --fix", proof="tests/"
         "test_store_identity.py::test_a_lost_registry_db_is_never_replaced_by_an_empty_one"),
    # ---- doctor
    Case("doctor-orphan", "an artifact-named Parquet file in data/ that no registry row names",
         "reported: the file named, 'NOT ok'; nothing moved", 5, "doctor",
         store_cases.then(store_cases.orphan, cli("doctor")),
         out=rf"orphan: .*/data/views/results/{store_cases.ORPHAN}\n(.*\n)*NOT ok",
         check=store_cases.check_orphan_kept),
    Case("doctor-fix-orphan", "doctor --fix with that file", "accepted: moved to quarantine/ "
         "under its own path, never deleted; the registered artifacts untouched", 0,
         "doctor --fix", store_cases.then(store_cases.orphan, cli("doctor", "--fix")),
         check=store_cases.check_quarantined),
    Case("doctor-fix-data-without-registry", "doctor --fix when the registry names no "
         "artifact but data/ holds some (data restored without its registry)", "refused: "
         "'names no artifact'; no file moved or deleted", 2, "doctor --fix",
         proof="tests/test_doctor_safety.py::"
         "test_fix_refuses_when_the_registry_names_no_artifact_but_data_holds_some"),
    # ---- artifacts damaged or lost behind the registry's back
    Case("corrupt-artifact", "one byte of the view artifact flipped, then retrieve",
         "refused: ArtifactError naming the artifact, its file and both checksums (never a "
         "value read from the damaged file)", 5, "retrieve",
         store_cases.then(store_cases.flip_one_byte, retrieve()),
         r"artifact \d+ \(view 'results', data/views/results/v1-.*\.parquet\): checksum "
         r"sha256:[0-9a-f]{64} differs from the recorded sha256:[0-9a-f]{64}"),
    Case("corrupt-artifact-50-bytes", "one byte flipped at each of 50 positions (header, pages, "
         "footer), retrieve and online each time", "exit 5 naming the file, or a frame equal "
         "to the undamaged one; nothing else (no wrong value, panic or abort)", 5,
         "retrieve, online", proof="tests/test_corruption.py::"
         "test_one_flipped_byte_at_50_positions_never_yields_a_wrong_value"),
    Case("deleted-artifact", "the view artifact's file deleted, then retrieve",
         "refused: artifact and path named, 'file is missing'", 5, "retrieve",
         store_cases.then(store_cases.delete_view_file, retrieve()),
         r"artifact \d+ \(view 'results', data/views/results/v1-.*\.parquet\): file is "
         r"missing"),
    Case("deleted-artifacts-materialize", "every artifact file deleted (source snapshot and "
         "view), then materialize", "accepted: both rebuilt (before: 'up-to-date'), the view "
         "holds the right values", 0, "materialize",
         store_cases.then(store_cases.delete_every_file, cli("materialize")),
         check=store_cases.check_rebuilt(results_in_utc)),
    Case("read-only-store", "a store whose files and folders the user cannot write (a shared "
         "team store), on SQLite and PostgreSQL", "accepted: list, show, retrieve, online and "
         "doctor answer as for the owner, not a byte written; apply, ingest, materialize and "
         "doctor --fix refused naming the read-only path (exit 1)", 0,
         "list, show, retrieve, online", proof="tests/test_readonly.py::"
         "test_a_read_only_store_serves_every_read_verb_and_writes_nothing"),
    # ---- lifecycle
    Case("delete-with-dependents", "delete source results while two features read it",
         "refused: every dependent and why listed, --cascade suggested", 2, "delete",
         cli("delete", "source", "results", "--yes"),
         r"cannot delete source 'results' v1: 2 registered object\(s\) depend on it: feature "
         r"'finish' v1 reads source 'results'; feature 'laps_led' v1 reads source 'results'; "
         r"delete them first, or pass --cascade"),
    Case("delete-cascade", "delete source results --cascade", "accepted: the source, its "
         "column view and both features deleted in one transaction, listed first; history and "
         "artifact files kept until gc", 0, "delete",
         cli("delete", "source", "results", "--cascade", "--yes"),
         check=store_cases.check_cascade),
    Case("apply-prune", "apply --prune of definitions that no longer declare laps_led",
         "accepted: the plan shows '- feature laps_led: delete' first, then applies it; "
         "finish stays", 0, "apply", store_cases.without_laps_led(DEFS),
         check=store_cases.check_pruned),
    Case("gc-dry-run", "gc --dry-run after materialize --force superseded every artifact",
         "accepted: lists exactly the superseded artifacts and why the rest are kept; removes "
         "nothing", 0, "gc", store_cases.then(store_cases.superseded,
                                                cli("gc", "--dry-run", "--json")),
         check=store_cases.check_gc_dry_run),
    Case("gc-under-a-reader", "gc while a retrieval holds a superseded artifact",
         "accepted: the rows go at once, the file once the reader is done; the reader gets "
         "its frame", 0, "gc", proof="tests/test_lifecycle.py::"
         "test_gc_waits_for_a_reader_that_started_before_it"),
    # ---- a plugin uninstalled under its views
    Case("plugin-uninstalled", "materialize after the plugin of views ones and ones_too is "
         "uninstalled", "accepted: the other views materialized, one warning naming the "
         "plugin, the transform and both views (before: exit 6 for good)", 0, "materialize",
         store_cases.then(store_cases.uninstalled_plugin, cli("materialize", "--json")),
         check=store_cases.check_skipped,
         warning=r"skipped view\(s\) 'ones', 'ones_too': transform 'gone_one' is missing: "
                 rf"plugin '{store_cases.GONE}'"),
    Case("plugin-uninstalled-strict", "the same with materialize --strict",
         "refused: plugin, transform and views named", 6, "materialize",
         store_cases.then(store_cases.uninstalled_plugin, cli("materialize", "--strict")),
         r"cannot materialize view\(s\) 'ones', 'ones_too': transform 'gone_one' is missing: "
         rf"plugin '{store_cases.GONE}'"),
    Case("plugin-uninstalled-show", "show one (a feature of such a view)", "accepted: says the "
         "transform's plugin is missing", 0, "show",
         store_cases.then(store_cases.uninstalled_plugin, cli("show", "one")),
         out=r"\n  MISSING PLUGIN transform 'gone_one' is missing: plugin 'gone-plugin', recorded on "
             r"its last artifact, is uninstalled"),
    # ---- tiers
    Case("tier-guard", "retrieve --tier qualifying of a race-tier feature (every data file "
         "deleted first)", "refused: LeakageError naming the feature and its tier, before "
         "any data is read (a read would be exit 5)", 3, "retrieve",
         store_cases.then(store_cases.race_feature_without_data,
                          retrieve(features="finish,race_finish", tier="qualifying")),
         r"features of a tier later than 'qualifying' were requested: race_finish \(tier "
         r"race\); they are not known at a qualifying prediction point"),
    Case("tier-forbidden-column", "tiers whose race contract forbids laps_led, while "
         "historical source results carries it", "refused: source, tier, column and the rule "
         "named", 3, "apply", bad_defs(store_cases.FORBIDDEN_LAPS_LED),
         r"source 'results' \(tier historical\) carries column\(s\) holding information of a "
         r"later tier: column 'laps_led': tier race's contract lists it in forbidden_before"),
    Case("tier-earlier-than-source", "a feature at tier qualifying reading a race-tier source",
         "refused: feature, both tiers and the fix named", 3, "apply",
         bad_defs(store_cases.RACE_SOURCE + 'tier = "qualifying"\n'),
         r"feature 'race_finish' is declared at tier qualifying, earlier than its source "
         r"'race_results' \(tier race\)"),
]
CLI_CASES = [c for c in CASES if c.api is None and c.run is None and not c.proof]
API_CASES = [c for c in CASES if c.api is not None]
RUN_CASES = [c for c in CASES if c.run is not None]
PROOF_CASES = [c for c in CASES if c.proof]


def render_table() -> str:
    rows = ["| case | input | answer | exit | via |", "|---|---|---|---|---|"]
    for c in CASES:
        via = c.via
        if c.proof:
            path, test = c.proof.split("::")
            via += f"; proven by [`{test}`](../{path})"
        cells = [f"`{c.id}`", c.input, c.answer, str(c.code), via]
        rows.append("| " + " | ".join(x.replace("|", "\\|") for x in cells) + " |")
    return "\n".join(rows)


# --------------------------------------------------------------------------- running them


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FEATURESTORE_DEBUG": ""}
    env.pop("FEATURESTORE_REGISTRY_URL", None)
    return subprocess.run([sys.executable, "-m", "featurestore", "--store", str(root), *args],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def make_project(root: Path, registry_url: str | None = None) -> FeatureStore:
    root.mkdir(parents=True)
    results_frame().write_parquet(root / "r.parquet")
    (root / "features.toml").write_text(DEFS)
    store = FeatureStore(root, registry_url=registry_url)
    store.apply(root / "features.toml")
    materialize(store)  # ingests, then writes the view: the registry holds artifacts
    return store


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line and not line.startswith("Warning:")]


def test_the_doc_table_is_the_case_list() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert START in text and END in text, f"{DOC} lost its {START} / {END} markers"
    table = text.split(START, 1)[1].split(END, 1)[0].strip()
    ids = re.findall(r"^\| `([a-z0-9-]+)` \|", table, flags=re.M)
    assert ids == [c.id for c in CASES], "docs/bad-input.md and CASES differ in their cases"
    assert table == render_table(), "docs/bad-input.md is stale: run python tests/test_bad_input.py"
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("case", PROOF_CASES, ids=[c.id for c in PROOF_CASES])
def test_rows_proven_elsewhere_name_a_real_test(case: Case) -> None:
    """A row backed by another file's test names a test function that exists there."""
    import ast

    path, name = case.proof.split("::")
    assert path.startswith("tests/test_") and path != "tests/test_bad_input.py", case.proof
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    tests = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert name in tests, f"{case.id}: {path} has no test {name}"
    assert case.api is None and case.run is None and case.prepare is None, case.id


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_case(tmp_path: Path, case: Case) -> None:
    root = tmp_path / "project"
    make_project(root).close()
    assert case.prepare is not None
    args = case.prepare(root)
    before = state(root)
    proc = run_cli(root, *args)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("Warning:")]
    if case.warning:
        assert len(warnings) == 1 and re.search(case.warning, warnings[0]), proc.stderr
    if case.code == 0:
        assert proc.returncode == 0, proc.stderr
        assert not case.warning or warnings, proc.stderr
        assert case.warning or not warnings, f"unexpected warning: {proc.stderr}"
        if case.out:
            assert re.search(case.out, proc.stdout), proc.stdout
        assert case.check is not None or case.out, f"{case.id}: an accepted case checks its result"
        if case.check is not None:
            case.check(root, proc)
        return
    assert proc.returncode == case.code, f"exit {proc.returncode}: {proc.stderr}"
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    if case.needle:
        assert len(lines) == 1 and lines[0].startswith("Error: "), proc.stderr
        assert re.search(case.needle, lines[0]), lines[0]
    else:  # a report on stdout (doctor's), no error line
        assert case.out and not lines, proc.stderr
    if case.out:
        assert re.search(case.out, proc.stdout), proc.stdout
    assert state(root) == before, "a refused command changed the registry or the data"
    if case.check is not None:
        case.check(root, proc)


@pytest.mark.slow
@pytest.mark.parametrize("case", RUN_CASES, ids=[c.id for c in RUN_CASES])
def test_run_case(tmp_path: Path, registry_url: str, case: Case) -> None:
    make_project(tmp_path / "project", registry_url).close()
    assert case.run is not None
    case.run(tmp_path / "project", registry_url)


@pytest.fixture
def bad_plugins() -> Any:
    from featurestore.plugins import get_plugin_manager

    pm = get_plugin_manager()
    plugin = BadPlugins()
    pm.register(plugin, name=PLUGIN)
    try:
        yield plugin
    finally:
        pm.unregister(plugin)


@pytest.mark.usefixtures("bad_plugins")
@pytest.mark.parametrize("case", API_CASES, ids=[c.id for c in API_CASES])
def test_api_case(tmp_path: Path, registry_url: str, case: Case) -> None:
    if case.id == "plugin-returns-pandas":
        pytest.importorskip("pandas", reason="pandas is not installed (not a dependency)")
    store = make_project(tmp_path / "project", registry_url)
    if case.api_setup is not None:
        case.api_setup(store)
    before = (registry_dump(store), data_listing(store.root))
    assert case.api is not None and case.error is not None
    with pytest.raises(case.error) as info:
        case.api(store)
    # The first line is what the CLI prints (the rest only with FEATURESTORE_DEBUG=1).
    message = str(info.value).strip().splitlines()[0]
    assert re.search(case.needle, message), message
    assert getattr(info.value, "exit_code", None) == case.code
    assert (registry_dump(store), data_listing(store.root)) == before
    store.close()


# --------------------------------------------------------------------------- fuzzing
#
# Each generated input is valid or carries exactly one defect, and ``expected_outcome`` (plain
# Python, next to the generator) says what must happen: refused at a given step with a given
# error class (and so exit code), or accepted, and then the snapshot, the view and a retrieval
# must equal what a plain-Python oracle computes. A store that refused everything would fail.

META_NAMES = ["k", "key", "t", "when", "x", "Value", "a b", "x'y", 'q"uote', "semi;colon",
              "--dash", "drop table x", "../up", "/abs", "ключ", "émoji🙂", "percent%s", "$1", "?",
              "back\\slash", "new\nline", ""]
RESERVED_NAMES = ["event_timestamp", "available_at"]
WILDCARD_NAMES = ["*", "^x$"]  # Polars reads these as "every column" or a regular expression
FEATURE_NAMES = ["f", "finish_2", "_x"]
BAD_FEATURE_NAMES = ["a b", "x'y", 'q"uote', "semi;colon", "--dash", "drop table x", "../up",
                     "/abs", ""]
ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]
TIERS = ["historical", "practice", "qualifying", "race"]
DTYPE_NAMES = ["Int64", "Int32", "Float64", "String", "Boolean", "Datetime", "Date", "Decimal"]
VALUE_DTYPE = {"int": "Int64", "float": "Float64", "str": "String", "bool": "Boolean"}
# Broken or surprising TOML fragments appended to the file, with what they must cause.
GARBAGE: dict[str, tuple[str, type[FeatureStoreError]] | None] = {
    "[[features]": ("apply", DefinitionError),  # TOML syntax
    "name = ": ("apply", DefinitionError),
    "= 1": ("apply", DefinitionError),
    "[[sources]]\nname = 1": ("apply", DefinitionError),
    "tier = [\"a\"]": ("apply", DefinitionError),  # lands in the [[features]] table above it
    "[[entities]]\nname = \"e2\"\njoin_keys = [1, 2]": ("apply", DefinitionError),
    "[tiers]\nname = \"x\"": ("apply", DefinitionError),
    "[[views]]\nname = \"v\"\nsource = \"s\"\nparams = 5": ("apply", DefinitionError),
    "[[features]]\nname = \"f9\"\nsource = \"s\"\ntags = [1]": ("apply", DefinitionError),
    # A feature set of one feature: valid when the feature is called "f" (see expected_outcome).
    "[[feature_sets]]\nname = \"fs\"\nfeatures = \"f\"": None,
    "[[sources]]\nname = \"s2\"\npath = \"../../etc/passwd\"\nentity = \"e\"\n"
    "event_time = \"t\"": ("apply", DataError),  # a file, but not Parquet
    "[[sources]]\nname = \"s3\"\npath = \"/dev/null\"\nentity = \"e\"\nevent_time = \"t\"":
        ("apply", DataError),  # 0 bytes
    "[[tiers]]\nname = \"only\"\nlag = \"-5m\"": ("apply", DefinitionError),
    "[[tiers]]\nname = \"a\"\nlag = true": ("apply", DefinitionError),
}
# The one defect of an invalid input, and where it must be refused with what.
DEFECTS: dict[str, tuple[str, type[FeatureStoreError]] | None] = {
    "time-as-text": ("apply", DataError), "time-as-int": ("apply", DataError),
    "float-key": ("apply", DataError), "undeclared-key": ("apply", DataError),
    "reserved-column": ("apply", DataError), "wildcard-column": ("apply", DataError),
    "unknown-zone": ("apply", DefinitionError), "unknown-tier": ("apply", DefinitionError),
    "wrong-dtype": ("apply", DefinitionError), "bad-entity-name": ("apply", DefinitionError),
    "bad-feature-name": ("apply", DefinitionError), "bad-on-duplicate": ("apply", DefinitionError),
    "repeated-key": ("apply", DefinitionError), "no-value-column": ("apply", DefinitionError),
    "null-key": ("ingest", DataError), "null-time": ("ingest", DataError),
    "garbage": None,  # GARBAGE says
}


def usable(name: str) -> bool:
    """A column name every role accepts (and that no feature is named)."""
    return name not in RESERVED_NAMES and name not in WILDCARD_NAMES and name not in FEATURE_NAMES \
        and not (len(name) > 1 and name.startswith("^") and name.endswith("$"))


def toml_str(value: Any) -> str:
    """A TOML basic string (or any other value as JSON, which TOML reads the same way)."""
    if isinstance(value, list):
        return "[" + ", ".join(toml_str(v) for v in value) + "]"
    if not isinstance(value, str):
        return json.dumps(value)
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


Choose = Callable[[Any], Any]  # picks one element of a sequence


def base_spec(columns: list[str], choose: Choose) -> dict[str, Any]:
    """A valid input: ``columns`` are the key, the event time and one to three value columns."""
    return {
        # The event-time column may carry a reserved name: it is the one column that may.
        "key": columns[0], "time": choose([columns[1], columns[1], *RESERVED_NAMES]),
        "n": choose(range(8)), "key_type": choose(["int", "str", "bool"]),
        "time_type": choose(["naive", "zoned", "date"]),
        "null_rate": choose([0.0, 0.0, 0.2]),  # values only: nulls there are fine
        "null_key": False, "null_time": False,
        "values": [(c, choose(["int", "float", "str", "bool"])) for c in columns[2:]],
        "seed": choose(range(10_000)), "tz": choose(ZONES), "tier": choose(TIERS),
        "declare_dtype": choose([False, True]), "dtype": None, "entity": "e",
        "feature": choose(FEATURE_NAMES), "on_duplicate": choose(["error", "keep_last"]),
        "declare_key": "same", "garbage": [], "defect": None,
    }


def apply_defect(spec: dict[str, Any], defect: str | None, choose: Choose) -> dict[str, Any]:
    """Give ``spec`` the one ``defect`` (a key of ``DEFECTS``); None leaves it valid."""
    spec["defect"] = defect
    if defect == "time-as-text":
        spec["time_type"] = "str"
    elif defect == "time-as-int":
        spec["time_type"] = "int"
    elif defect == "float-key":
        spec["key_type"] = "float"
    elif defect == "undeclared-key":
        spec["declare_key"] = "other"
    elif defect == "repeated-key":
        spec["declare_key"] = "list"
    elif defect in ("reserved-column", "wildcard-column"):
        pool = [n for n in RESERVED_NAMES if n != spec["time"]] if defect == "reserved-column" \
            else WILDCARD_NAMES
        renamed = choose(pool)
        if choose([False, True]):
            spec["key"] = renamed
        else:
            spec["values"][-1] = (renamed, spec["values"][-1][1])
    elif defect == "unknown-zone":
        spec["tz"] = choose(["Nowhere/Land", ""])
    elif defect == "unknown-tier":
        spec["tier"] = choose(["warmup", ""])
    elif defect == "wrong-dtype":
        actual = VALUE_DTYPE[spec["values"][0][1]]
        spec["dtype"] = choose([d for d in DTYPE_NAMES if d != actual])
    elif defect == "bad-entity-name":
        spec["entity"] = choose(["x'; --", ""])
    elif defect == "bad-feature-name":
        spec["feature"] = choose(BAD_FEATURE_NAMES)
    elif defect == "bad-on-duplicate":
        spec["on_duplicate"] = "x"
    elif defect == "no-value-column":
        spec["values"] = []
    elif defect in ("null-key", "null-time"):
        spec["n"] = max(spec["n"], 1)
        spec[defect.replace("-", "_")] = True
    elif defect == "garbage":
        spec["garbage"] = [choose(sorted(GARBAGE))]
    if spec["declare_dtype"] and defect != "wrong-dtype" and spec["values"]:
        spec["dtype"] = VALUE_DTYPE[spec["values"][0][1]]
    return spec


@st.composite
def fuzz_inputs(draw: st.DrawFn) -> dict[str, Any]:
    def choose(seq: Any) -> Any:
        return draw(st.sampled_from(list(seq)))

    names = st.sampled_from([n for n in META_NAMES if usable(n)]) | \
        st.text(alphabet=string.printable, max_size=6).filter(usable)
    n_values = choose([1, 2, 3])
    columns = draw(st.lists(names, min_size=2 + n_values, max_size=2 + n_values, unique=True))
    return apply_defect(base_spec(columns, choose), choose([None] * 6 + sorted(DEFECTS)), choose)


def build_frame(spec: dict[str, Any]) -> pl.DataFrame:
    rng = random.Random(spec["seed"])
    n = spec["n"]

    def maybe_null(values: list[Any]) -> list[Any]:
        return [None if rng.random() < spec["null_rate"] else v for v in values]

    def one_null(values: list[Any]) -> list[Any]:
        values = list(values)
        values[rng.randrange(len(values))] = None
        return values

    keys = [rng.randint(1, 3) for _ in range(n)]
    key_values: list[Any] = {
        "int": keys, "str": [f"d{k}" for k in keys], "float": [k + 0.5 for k in keys],
        "bool": [k % 2 == 0 for k in keys]}[spec["key_type"]]
    days = [rng.randint(0, 3) for _ in range(n)]
    naive = [dt.datetime(2025, 1, 10 + d, 12) for d in days]
    times: list[Any] = {
        "naive": naive, "zoned": naive, "date": [t.date() for t in naive],
        "str": [t.isoformat() for t in naive], "int": days}[spec["time_type"]]
    dtypes = {"int": pl.Int64, "str": pl.String, "float": pl.Float64, "bool": pl.Boolean,
              "naive": pl.Datetime("us"), "zoned": pl.Datetime("us"), "date": pl.Date}
    columns: dict[str, pl.Series] = {}
    columns[spec["key"]] = pl.Series(one_null(key_values) if spec["null_key"] else key_values,
                                     dtype=dtypes[spec["key_type"]])
    series = pl.Series(one_null(times) if spec["null_time"] else times,
                       dtype=dtypes.get(spec["time_type"], {"str": pl.String, "int": pl.Int64}.get(
                           spec["time_type"])))
    if spec["time_type"] == "zoned":
        series = series.dt.replace_time_zone("Europe/Paris")
    columns[spec["time"]] = series
    for name, kind in spec["values"]:
        values: list[Any] = {"int": [rng.randint(-5, 5) for _ in range(n)],
                             "float": [rng.uniform(-1, 1) for _ in range(n)],
                             "str": [rng.choice(["a", "b'", "c;"]) for _ in range(n)],
                             "bool": [rng.random() < 0.5 for _ in range(n)]}[kind]
        columns[name] = pl.Series(maybe_null(values), dtype=dtypes[kind])
    return pl.DataFrame(columns)


def build_toml(spec: dict[str, Any], value_col: str | None) -> str:
    key = {"same": [spec["key"]], "other": ["missing_key"], "list": [spec["key"], spec["key"]]}[
        spec["declare_key"]]
    parts = [f"[[entities]]\nname = {toml_str(spec['entity'])}\njoin_keys = {toml_str(key)}\n",
             f"[[sources]]\nname = \"s\"\npath = \"data.parquet\"\nentity = {toml_str(spec['entity'])}"
             f"\nevent_time = {toml_str(spec['time'])}\ntimezone = {toml_str(spec['tz'])}\n"
             f"tier = {toml_str(spec['tier'])}\non_duplicate = {toml_str(spec['on_duplicate'])}\n"]
    feature = f"[[features]]\nname = {toml_str(spec['feature'])}\nsource = \"s\"\n"
    if value_col is not None:
        feature += f"column = {toml_str(value_col)}\n"
    if spec["dtype"]:
        feature += f"dtype = {toml_str(spec['dtype'])}\n"
    parts.append(feature)
    parts += spec["garbage"]
    return "\n".join(parts)


def utc_time(value: Any, tz: str) -> dt.datetime:
    """An input time as the UTC instant the contract says it is (naive: in the declared zone)."""
    from zoneinfo import ZoneInfo

    if isinstance(value, dt.datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=ZoneInfo(tz))
    elif isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        value = dt.datetime(value.year, value.month, value.day, tzinfo=ZoneInfo(tz))
    return value.astimezone(dt.UTC)


def expected_rows(frame: pl.DataFrame, spec: dict[str, Any], value_col: str) -> list[tuple[Any, ...]]:
    """The oracle, in plain Python: (key, UTC event time, value) per row, duplicates resolved."""
    out: dict[tuple[Any, dt.datetime], Any] = {}
    for row in frame.iter_rows(named=True):
        out[(row[spec["key"]], utc_time(row[spec["time"]], spec["tz"]))] = row[value_col]
    return sorted((k, t, v) for (k, t), v in out.items())  # the last duplicate won


def expected_outcome(spec: dict[str, Any], frame: pl.DataFrame) -> tuple[str, type] | None:
    """Where the input must be refused and with what error class; None: it must be accepted."""
    defect = spec["defect"]
    if defect == "garbage":
        [fragment] = spec["garbage"]
        outcome = GARBAGE[fragment]
        if outcome is None and spec["feature"] != "f":  # the feature set names a missing feature
            outcome = ("apply", DefinitionError)
        if outcome is not None:
            return outcome
    elif defect is not None:
        return DEFECTS[defect]
    if spec["on_duplicate"] == "error":
        seen = [(r[spec["key"]], utc_time(r[spec["time"]], spec["tz"]))
                for r in frame.iter_rows(named=True)]
        if len(set(seen)) < len(seen):
            return ("ingest", DataError)
    return None


FUZZ_CUTOFF = dt.datetime(2025, 1, 12, 3, tzinfo=dt.UTC)  # inside the generated days


def check_accepted(store: FeatureStore, frame: pl.DataFrame, spec: dict[str, Any],
                   value_col: str) -> None:
    """Snapshot, view and a point-in-time retrieval against the plain-Python oracle."""
    want = expected_rows(frame, spec, value_col)
    row = store.registry.latest_artifact("source", "s")
    assert row is not None
    snap = store.load_artifact(row["id"])
    assert isinstance(snap, pl.DataFrame)
    assert sorted(snap.select(spec["key"], "event_timestamp", value_col).iter_rows()) == want
    view_row = store.registry.latest_artifact("view", "s")
    assert view_row is not None
    view = store.load_artifact(view_row["id"])
    assert isinstance(view, pl.DataFrame)
    assert sorted(view.select(spec["key"], "event_timestamp", value_col).iter_rows()) == want
    # Retrieval: each key's last value with event time (lag 0) strictly before the cutoff.
    keys = sorted({k for k, _, _ in want}) or [{"int": 1, "str": "d1", "bool": True}[
        spec["key_type"]]]
    query = pl.DataFrame({spec["key"]: keys, "event_timestamp": [FUZZ_CUTOFF] * len(keys)},
                         schema={spec["key"]: frame.schema[spec["key"]],
                                 "event_timestamp": pl.Datetime("us", "UTC")})
    got = store.get_historical_features(query, [spec["feature"]], tier="race")
    oracle = []
    for k in keys:
        before = [(t, v) for key, t, v in want if key == k and t < FUZZ_CUTOFF]
        oracle.append(max(before, key=lambda tv: tv[0])[1] if before else None)
    assert got[spec["feature"]].to_list() == oracle


def run_spec(spec: dict[str, Any], *, record: bool = True) -> None:
    """apply, ingest, materialize: refused exactly as ``expected_outcome`` says, or correct."""
    frame = build_frame(spec)
    value_col = next((c for c in frame.columns if c not in (spec["key"], spec["time"])), None)
    expected = expected_outcome(spec, frame)
    if record:  # hypothesis statistics
        event(f"expected: {'accepted' if expected is None else expected[0] + ' ' + expected[1].__name__}")
    with tempfile.TemporaryDirectory(prefix="fs-fuzz-") as tmp:
        root = Path(tmp)
        frame.write_parquet(root / "data.parquet")
        (root / "features.toml").write_text(build_toml(spec, value_col), encoding="utf-8")
        store = FeatureStore(root / "store")
        try:
            for step in ("apply", "ingest", "materialize"):
                before = (registry_dump(store), data_listing(store.root))
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", DataWarning)
                        if step == "apply":
                            store.apply(root / "features.toml")
                        elif step == "ingest":
                            store.ingest()
                        else:
                            materialize(store)
                except FeatureStoreError as exc:
                    message = str(exc)
                    assert expected is not None, f"valid input refused at {step}: {message}"
                    assert (step, type(exc)) == expected, \
                        f"expected {expected[1].__name__} at {expected[0]}, got " \
                        f"{type(exc).__name__} at {step}: {message}"
                    assert exc.exit_code == expected[1].exit_code
                    assert message and "\n" not in message.strip(), message
                    assert (registry_dump(store), data_listing(store.root)) == before, \
                        f"{step} failed with {message!r} but changed the registry or the data"
                    return
            assert expected is None, f"accepted, but {expected[1].__name__} was due at {expected[0]}"
            assert value_col is not None
            check_accepted(store, frame, spec, value_col)
        finally:
            store.close()


@settings(max_examples=int(os.environ.get("FEATURESTORE_FUZZ_EXAMPLES", "60")), deadline=None,
          derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=fuzz_inputs())
def test_fuzz_exact_error_or_correct_result(spec: dict[str, Any]) -> None:
    run_spec(spec)


EVERY_DEFECT = [(d, None) for d in sorted(DEFECTS) if d != "garbage"] + \
    [("garbage", g) for g in sorted(GARBAGE)]


@pytest.mark.parametrize(("defect", "fragment"), EVERY_DEFECT,
                         ids=[d if g is None else f"garbage-{i}"
                              for i, (d, g) in enumerate(EVERY_DEFECT)])
def test_every_defect_gets_its_error(defect: str, fragment: str | None) -> None:
    """Each defect at least once, whatever the fuzz drew (seeded, so reproducible)."""
    rng = random.Random(f"{defect}:{fragment}")

    def choose(seq: Any) -> Any:
        return rng.choice(list(seq))

    spec = base_spec(["driver id", "when", "value"], choose)
    spec["on_duplicate"] = "keep_last"  # only the defect decides, not a chance duplicate
    apply_defect(spec, defect, choose)
    if fragment is not None:
        spec["garbage"] = [fragment]
    run_spec(spec, record=False)


VALID_SHAPES = [(k, t) for k in ("int", "str", "bool") for t in ("naive", "zoned", "date")]


@pytest.mark.parametrize(("key_type", "time_type"), VALID_SHAPES,
                         ids=[f"{k}-key-{t}-time" for k, t in VALID_SHAPES])
def test_valid_inputs_are_accepted(key_type: str, time_type: str) -> None:
    """Valid input of every key and time dtype is accepted and equals the oracle (a store that
    refused everything would pass the defect tests, not this one)."""
    rng = random.Random(f"valid:{key_type}:{time_type}")

    def choose(seq: Any) -> Any:
        return rng.choice(list(seq))

    spec = base_spec(["driver id", "when", "value", "x'y"], choose)
    spec.update(key_type=key_type, time_type=time_type, n=6, on_duplicate="keep_last")
    apply_defect(spec, None, choose)
    assert expected_outcome(spec, build_frame(spec)) is None
    run_spec(spec, record=False)  # raises "valid input refused at ..." on any refusal


if __name__ == "__main__":
    # Rewrite the table in docs/bad-input.md from CASES.
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    DOC.write_text(f"{head}{START}\n{render_table()}\n{END}{rest.split(END, 1)[1]}",
                   encoding="utf-8")
    print(f"wrote {len(CASES)} cases to {DOC}")
