"""Steps and checks of the bad-input cases about the store itself (issue 10).

Which registry a store opens, artifacts damaged or lost behind the registry's back, ``doctor``,
``delete``, ``apply --prune``, ``gc``, a plugin uninstalled under its views, and the tier guards.
``tests/test_bad_input.py`` turns them into rows of ``CASES``; each step takes the prepared
project's root (see ``make_project`` there: entity ``driver``, source ``results`` from
``r.parquet`` with its column view, features ``finish`` and ``laps_led``, all materialized).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from featurestore import Feature, FeatureStore, Transform, View, hookimpl
from featurestore.errors import DeletedError
from featurestore.materialize import materialize

Step = Callable[[Path], Any]
Prepare = Callable[[Path], list[str]]

ORPHAN = "v2-20250101T000000-deadbeef.parquet"  # named like an artifact, in no registry row


def then(step: Step, prepare: Prepare) -> Prepare:
    """``step`` changes the project, then ``prepare`` gives the command's arguments."""
    def run(root: Path) -> list[str]:
        step(root)
        return prepare(root)
    return run


def artifact_file(root: Path, kind: str = "view", name: str = "results") -> Path:
    with FeatureStore.open(root) as store:
        row = store.registry.latest_artifact(kind, name)
    assert row is not None, f"no artifact of {kind} {name!r}"
    return root / row["path"]


def live_artifacts(root: Path) -> list[dict[str, Any]]:
    with FeatureStore.open(root) as store:
        return store.registry.artifacts()


# --------------------------------------------------------------------------- registries


def empty_registry(root: Path) -> str:
    """A database that exists and is empty: a registry that knows no store."""
    (root / "empty.db").touch()
    return f"sqlite:///{root / 'empty.db'}"


def check_empty_registry_untouched(root: Path, _proc: Any = None) -> None:
    assert (root / "empty.db").stat().st_size == 0, "the unknowing registry was written"


def other_store(root: Path) -> str:
    """The registry of another store (one made in ``root/other``)."""
    FeatureStore(root / "other").close()
    return f"sqlite:///{root / 'other' / 'registry.db'}"


def check_nothing_created(name: str) -> Callable[[Path, Any], None]:
    def check(root: Path, _proc: Any = None) -> None:
        assert not (root / name).exists(), f"a read verb created {root / name}"
    return check


# --------------------------------------------------------------------------- artifacts


def flip_one_byte(root: Path) -> None:
    """One bit of one byte in the middle of the view artifact (a data page) flipped."""
    path = artifact_file(root)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def delete_view_file(root: Path) -> None:
    artifact_file(root).unlink()


def delete_every_file(root: Path) -> None:
    """The source snapshot and the view artifact: both gone, the registry still names them."""
    for row in live_artifacts(root):
        (root / row["path"]).unlink(missing_ok=True)


def check_rebuilt(expected: Callable[[], list[tuple[Any, ...]]]) -> Callable[[Path, Any], None]:
    """Every artifact the registry serves from exists again, and the view holds the ``expected``
    (key, event time, finish) rows."""
    def check(root: Path, _proc: Any = None) -> None:
        for kind in ("source", "view"):
            assert artifact_file(root, kind).exists(), f"the {kind} artifact was not rebuilt"
        with FeatureStore.open(root) as store:
            row = store.registry.latest_artifact("view", "results")
            assert row is not None
            view = store.load_artifact(row["id"])  # checksum-verified read
        assert isinstance(view, pl.DataFrame)
        assert sorted(view.select("driver_id", "event_timestamp", "finish").iter_rows()) == \
            expected()
    return check


def orphan(root: Path) -> None:
    """A byte-for-byte copy of the view artifact under an artifact's name no row records."""
    path = artifact_file(root)
    (path.parent / ORPHAN).write_bytes(path.read_bytes())


def check_orphan_kept(root: Path, _proc: Any = None) -> None:
    assert (root / "data" / "views" / "results" / ORPHAN).exists(), "doctor moved or removed it"


def check_quarantined(root: Path, proc: Any) -> None:
    """Moved (not deleted) to quarantine/ with its path kept; the registered files untouched."""
    moved = root / "quarantine" / "data" / "views" / "results" / ORPHAN
    assert moved.exists() and moved.read_bytes() == artifact_file(root).read_bytes()
    assert not (root / "data" / "views" / "results" / ORPHAN).exists()
    assert f"quarantined: {root / 'data' / 'views' / 'results' / ORPHAN} -> {moved}" in proc.stdout
    assert all((root / r["path"]).exists() for r in live_artifacts(root))


# --------------------------------------------------------------------------- lifecycle


def check_cascade(root: Path, proc: Any) -> None:
    """Every dependent deleted with the source; history and artifact files kept until gc."""
    assert proc.stdout.startswith("Deleting 4 object(s):"), proc.stdout
    for line in ("feature 'finish' v1: reads source 'results'",
                 "feature 'laps_led' v1: reads source 'results'",
                 "view 'results' v1: is the column view of source 'results'"):
        assert line in proc.stdout, proc.stdout
    with FeatureStore.open(root) as store:
        for kind in ("source", "view", "feature"):
            assert store.list(kind) == [], kind
        with pytest.raises(DeletedError, match="feature 'finish' was deleted at"):
            store.registry.get("feature", "finish")
        rows = store.registry.artifacts()
    assert len(rows) == 2 and all((root / r["path"]).exists() for r in rows)


def without_laps_led(defs: str) -> Prepare:
    """Definitions that no longer declare ``laps_led``, applied with --prune."""
    def prepare(root: Path) -> list[str]:
        text = defs.replace('[[features]]\nname = "laps_led"\nsource = "results"\n', "")
        assert "laps_led" not in text
        (root / "pruned.toml").write_text(text, encoding="utf-8")
        return ["apply", "--prune", "pruned.toml"]
    return prepare


def check_pruned(root: Path, proc: Any) -> None:
    lines = proc.stdout.splitlines()
    plan = lines.index("- feature laps_led: delete (v1)")
    assert lines[plan + 1].strip() == "not in the definitions"
    assert lines[-1].startswith("Applied: ") and lines[-1].endswith(", 1 deleted."), lines[-1]
    assert plan < len(lines) - 1  # the plan is printed before what was applied
    with FeatureStore.open(root) as store:
        assert [f["name"] for f in store.list("feature")] == ["finish"]
        with pytest.raises(DeletedError, match="feature 'laps_led' was deleted at"):
            store.registry.get("feature", "laps_led")


def superseded(root: Path) -> None:
    """A forced materialize: every artifact gets a newer one (today's way to pile up files)."""
    with FeatureStore.open(root) as store:
        materialize(store, force=True)


def check_gc_dry_run(root: Path, proc: Any) -> None:
    """The dry run lists exactly the superseded artifacts and removes nothing."""
    report = json.loads(proc.stdout)
    rows = live_artifacts(root)
    newest = {(r["kind"], r["name"]): r["id"] for r in sorted(rows, key=lambda r: r["id"])}
    old = sorted(r["id"] for r in rows if r["id"] not in newest.values())
    assert report["dry_run"] is True and old
    assert sorted(r["id"] for r in report["removed"]) == old
    assert sorted(r["id"] for r in report["kept"]) == sorted(newest.values())
    assert all((root / r["path"]).exists() for r in rows), "a dry run removed a file"


# --------------------------------------------------------------------------- plugins

GONE = "gone-plugin"


def _one(frame: Any, params: Any, ctx: Any) -> Any:
    return frame.select(*ctx.keys, ctx.time_column, ctx.available_column,
                        (pl.col("laps_led") * 0 + 1).cast(pl.Float64).alias("one"))


class GonePlugin:
    """A plugin that exists only while ``uninstalled_plugin`` builds its views."""

    @hookimpl
    def register_transforms(self, register: Callable[[Transform], None]) -> None:
        register(Transform("gone_one", _one, lambda params, schema: {"one": pl.Float64()},
                           lookback=lambda params: 0))


def uninstalled_plugin(root: Path) -> None:
    """Views ``ones`` and ``ones_too`` built by a plugin the ``featurestore`` process never has.

    The plugin is registered in this (the test's) process only, so in the command's process it
    is not installed: exactly what a user sees after ``pip uninstall``.
    """
    from featurestore.plugins import get_plugin_manager

    pm = get_plugin_manager()
    plugin = GonePlugin()
    pm.register(plugin, name=GONE)
    try:
        with FeatureStore.open(root) as store:
            store.apply([View("ones", "results", transform="gone_one"),
                         View("ones_too", "results", transform="gone_one"),
                         Feature("one", view="ones")])
            materialize(store)
    finally:
        pm.unregister(plugin)


def check_skipped(root: Path, proc: Any) -> None:
    """The other views are materialized; the plugin's are skipped, their artifacts kept."""
    assert [r["view"] for r in json.loads(proc.stdout)] == ["results"]
    with FeatureStore.open(root) as store:
        assert store.registry.latest_artifact("view", "ones") is not None


# --------------------------------------------------------------------------- tiers

RACE_SOURCE = """
[[sources]]
name = "race_results"
path = "r.parquet"
entity = "driver"
event_time = "race_date"
timezone = "America/New_York"
tier = "race"

[[features]]
name = "race_finish"
source = "race_results"
column = "finish"
"""

FORBIDDEN_LAPS_LED = """
[[tiers]]
name = "historical"
[[tiers]]
name = "practice"
[[tiers]]
name = "qualifying"
[[tiers]]
name = "race"
forbidden_before = ["laps_led"]
"""


def race_feature_without_data(root: Path) -> None:
    """A race-tier feature, materialized; then every data file deleted, so a retrieval that
    reads a byte fails with ArtifactError: a LeakageError proves the guard ran first."""
    (root / "race.toml").write_text(RACE_SOURCE, encoding="utf-8")
    with FeatureStore.open(root) as store:
        store.apply(root / "race.toml")
        materialize(store)
    delete_every_file(root)
