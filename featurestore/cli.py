"""The ``featurestore`` command line. Every verb wraps a ``FeatureStore`` method.

Conventions (as pip, pytest and datasette): ``--help`` on every verb, ``--json`` for scripts,
one-line errors on stderr with no traceback (``FEATURESTORE_DEBUG=1`` shows it), and exit codes
that say what went wrong: 0 ok, 1 general error, 2 bad definitions or usage, 3 leakage refused,
4 bad data, 5 artifact problem, 6 plugin problem, 7 not found.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from typing import Any

import click

from featurestore import __version__
from featurestore.cli_output import cell_text, emit_json, print_table, progress_bar
from featurestore.cli_values import engine_option
from featurestore.errors import FeatureStoreError
from featurestore.verifyreport import DEFAULT_SAMPLES

KINDS = {"entities": "entity", "sources": "source", "views": "view", "features": "feature",
         "feature-sets": "feature_set", "artifacts": "artifact", "tiers": "tier"}


# Verbs that only read: they open an existing store read-only and never create or write
# anything (no store there: exit 7). Every other verb that touches the store may create it.
READ_VERBS = frozenset({"list", "show", "retrieve", "online", "artifacts", "doctor", "plugins",
                        "serve"})
# Verbs that write to a store that must exist already: they never create one (exit 7).
EXISTING_VERBS = frozenset({"delete", "gc", "publish", "unpublish", "config"})


class Ctx:
    def __init__(self, root: str, registry_url: str | None, verb: str | None = None) -> None:
        self.root = root
        self.registry_url = registry_url
        self.verb = verb
        self._store: Any = None

    @property
    def store(self) -> Any:
        """The store as the running verb needs it: read-only for ``READ_VERBS``, else opened
        (and created when missing) for writing."""
        if self._store is None:
            self._store = self.open(write=self.verb not in READ_VERBS,
                                    create=self.verb not in EXISTING_VERBS)
        return self._store

    def open(self, *, write: bool, create: bool = False) -> Any:
        """Open the store: read-only (never creating), or for writing (creating with ``create``)."""
        from featurestore.store import FeatureStore

        if self._store is None:
            self._store = FeatureStore(self.root, registry_url=self.registry_url,
                                       create=write and create, read_only=not write)
        return self._store


pass_ctx = click.make_pass_decorator(Ctx)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="featurestore")
@click.option("-s", "--store", "root", default=".", envvar="FEATURESTORE_ROOT", show_default=True,
              type=click.Path(file_okay=False), help="Store root (registry.db and data/).")
@click.option("--registry", "registry_url", envvar="FEATURESTORE_REGISTRY_URL", default=None,
              help="SQLAlchemy URL of the registry (default: sqlite ROOT/registry.db).")
@click.pass_context
def cli(ctx: click.Context, root: str, registry_url: str | None) -> None:
    """featurestore: a plugin-based, leakage-safe feature store."""
    ctx.obj = Ctx(root, registry_url, ctx.invoked_subcommand)


@cli.command()
@click.argument("root", required=False, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def init(c: Ctx, root: str | None, as_json: bool) -> None:
    """Create a store (registry and data directory) at ROOT or --store."""
    from featurestore.store import DEFINITIONS_FILE, FeatureStore

    store = FeatureStore(root or c.root, registry_url=c.registry_url, read_only=False)
    defs = store.root / DEFINITIONS_FILE
    created = not defs.exists()
    if created:
        defs.write_text(TEMPLATE, encoding="utf-8")
    info = {"root": str(store.root), "store_id": store.store_id,
            "registry": store.registry.safe_url, "definitions": str(defs),
            "definitions_created": created, "tiers": store.tiers.names}
    if as_json:
        emit_json(info)
    else:
        click.echo(f"Store ready at {store.root}\n  store id:    {store.store_id}\n"
                   f"  registry:    {info['registry']}\n"
                   f"  definitions: {defs}{' (template written)' if created else ''}\n"
                   f"  tiers:       {' < '.join(info['tiers'])}")


@cli.command()
@click.argument("definitions", required=False, type=click.Path(dir_okay=False))
@click.option("--dry-run", is_flag=True, help="Show the plan without applying it.")
@click.option("--prune", is_flag=True,
              help="Also delete registered objects the definitions do not declare.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def apply(c: Ctx, definitions: str | None, dry_run: bool, prune: bool, as_json: bool) -> None:
    """Register DEFINITIONS (default ROOT/features.toml) in one all-or-nothing transaction."""
    plan = c.store.apply(definitions, dry_run=dry_run, prune=prune)
    if as_json:
        emit_json({"applied": not dry_run, **plan.as_dict()})
        return
    for change in plan.tier_changes:
        click.echo(f"~ {change}")
    marks = {"add": "+", "version": "~", "update": "*", "unchanged": "=", "delete": "-"}
    for item in plan.items:
        label = {"add": f"add (v{item.version})",
                 "version": f"new version v{item.version} (was v{item.previous_version})",
                 "update": f"update v{item.version}", "unchanged": f"unchanged (v{item.version})",
                 "delete": f"delete (v{item.version})"}[item.action]
        line = f"{marks[item.action]} {item.kind} {item.name}: {label}"
        if item.changes:
            line += "\n      " + "\n      ".join(item.changes)
        click.echo(line)
    counts = plan.counts()
    verb = "Would apply" if dry_run else ("Nothing to apply" if plan.is_noop else "Applied")
    click.echo(f"{verb}: {counts['add']} added, {counts['version']} new versions, "
               f"{counts['update']} updated, {counts['unchanged']} unchanged"
               + (f", {counts['delete']} deleted." if prune else "."))


LIST_COLUMNS = {
    "entity": ["name", "version", "join_keys", "description"],
    "source": ["name", "version", "entity", "tier", "event_time", "timezone", "path"],
    "view": ["name", "version", "source", "transform", "tier"],
    "feature": ["name", "version", "entity", "view", "dtype", "tier", "tags", "description"],
    "feature_set": ["name", "version", "features", "description"],
    "artifact": ["id", "kind", "name", "object_version", "row_count", "size_bytes", "verified",
                 "created_at", "path"],
    "tier": ["position", "name", "lag_seconds", "forbidden_before"],
}


@cli.command(name="list")
@click.argument("kind", type=click.Choice(list(KINDS)), default="features")
@click.option("--tier", help="Only objects of this tier.")
@click.option("--entity", help="Only objects of this entity.")
@click.option("--tag", help="Only features with this tag.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def list_cmd(c: Ctx, kind: str, tier: str | None, entity: str | None, tag: str | None,
             as_json: bool) -> None:
    """List registered KIND (features by default), newest versions only."""
    k = KINDS[kind]
    rows = c.store.list(k, tier=tier, entity=entity, tag=tag)
    if as_json:
        emit_json(rows)
    else:
        print_table(rows, LIST_COLUMNS[k], title=f"{kind} ({len(rows)})")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--verify", is_flag=True, help="Also check each file's checksum and schema.")
@pass_ctx
def artifacts(c: Ctx, as_json: bool, verify: bool) -> None:
    """List artifacts (Parquet files) with their provenance."""
    from featurestore.artifacts import verify_artifact
    from featurestore.errors import ArtifactError

    rows = c.store.list("artifact")
    bad = 0
    if verify:
        from featurestore.checksums import hashing_once

        with hashing_once():  # a file two rows share (a column view's) is hashed once
            for row in rows:
                try:
                    verify_artifact(c.store.root, row, trust_cache=False)
                    row["status"] = "ok"
                except ArtifactError as exc:
                    row["status"] = str(exc)
                    bad += 1
    if as_json:
        emit_json(rows)
    else:
        print_table(rows, LIST_COLUMNS["artifact"] + (["status"] if verify else []),
                    title=f"artifacts ({len(rows)})")
    if bad:
        sys.exit(5)


@cli.command()
@click.argument("name")
@click.option("--history", is_flag=True, help="Show every version, oldest first.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def show(c: Ctx, name: str, history: bool, as_json: bool) -> None:
    """Show one feature, view, source, entity or feature set by NAME."""
    if history:
        kind, rows = c.store.history(name)
    else:
        kind, row = c.store.find(name)
        rows = [row]
    from featurestore.lifecycle import missing_plugin_note

    missing = missing_plugin_note(c.store, kind, rows[-1])
    if as_json:
        emit_json({"kind": kind, "versions" if history else "object": rows if history else rows[0],
                   **({"missing_transform": missing} if missing else {})})
        return
    for row in rows:
        deleted = f", deleted {row['deleted_at']}" if row.get("deleted_at") else ""
        click.echo(f"{kind} {row['name']} v{row['version']} (created {row['created_at']}{deleted})")
        for key, value in row.items():
            if key in ("name", "version", "created_at", "id", "deleted_at"):
                continue
            click.echo(f"  {key:<14} {cell_text(value)}")
    if missing:
        click.echo(f"  MISSING PLUGIN {missing}")


@cli.command()
@click.argument("sources", nargs=-1)
@click.option("--force", is_flag=True, help="Re-ingest even when the input files are unchanged.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@engine_option
@pass_ctx
def ingest(c: Ctx, sources: tuple[str, ...], force: bool, as_json: bool,
           engine: str | None) -> None:
    """Validate SOURCES (all by default) and snapshot them into the store."""
    with progress_bar(not as_json) as progress:
        results = c.store.ingest(list(sources) or None, force=force, progress=progress,
                                 engine=engine)
    out = [{"source": r["name"], "status": r["status"], "artifact_id": r["artifact"]["id"],
            "rows": r["artifact"]["row_count"], "path": r["artifact"]["path"]} for r in results]
    if as_json:
        emit_json(out)
    else:
        print_table(out, ["source", "status", "rows", "artifact_id", "path"])


@cli.command()
@click.argument("views", nargs=-1)
@click.option("--no-verify", is_flag=True, help="Skip causality verification (warned, recorded).")
@click.option("--samples", type=click.IntRange(min=1), default=DEFAULT_SAMPLES, show_default=True,
              help="Causality cuts checked after every entity's (or group's) first cut, whatever "
                   "the budget; more never checks less.")
@click.option("--budget", "budget_text", default=None, metavar="ROWS|all",
              help="Rows the causality reruns may recompute in total (default: the larger of "
                   "1,000,000 and 10% of the input); 'all' verifies exhaustively.")
@click.option("--force", is_flag=True, help="Recompute even when inputs are unchanged.")
@click.option("--strict", is_flag=True,
              help="Fail (exit 6) instead of skipping views whose transform's plugin is missing.")
@click.option("--online", is_flag=True, help="Then publish the views to the online store.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@engine_option
@pass_ctx
def materialize(c: Ctx, views: tuple[str, ...], no_verify: bool, samples: int,
                budget_text: str | None, force: bool, strict: bool, online: bool,
                as_json: bool, engine: str | None) -> None:
    """Run VIEWS' transforms (all by default), verify causality and write artifacts.

    Causality verification checks every entity's (or group's) first cut, then --samples more,
    then as many as fit in --budget, in a fixed priority order (rows next to nulls, before rare
    events, gaps and the end of an entity's data first); exhaustive when everything fits. --json
    shows what was checked (verification_report).
    """
    from featurestore.materialize import materialize as run

    budget = _parse_budget(budget_text)
    if no_verify:
        click.echo("Warning: causality verification is skipped; the artifacts record it.", err=True)
    with progress_bar(not as_json) as progress:
        import warnings

        from featurestore.lifecycle import MissingTransformWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            warnings.simplefilter("always", MissingTransformWarning)  # skipped views: say so
            results = run(c.store, list(views) or None, verify=not no_verify, samples=samples,
                          budget=budget, force=force, progress=progress, strict=strict,
                          engine=engine)
    out = [r.as_dict() for r in results]
    if online:
        from featurestore.online import publish

        published = [r.as_dict() for r in publish(c.store, list(views) or None)]
    if as_json:
        emit_json({"materialized": out, "published": published} if online else out)
    else:
        print_table(out, ["view", "status", "rows", "verified", "verification", "artifact_id"])
        if online:
            print_table(published, ["view", "status", "entities", "changed", "removed"],
                        title="online store")


def _parse_budget(text: str | None) -> float | None:
    if text is None:
        return None
    if text.strip().lower() in {"all", "inf", "exhaustive"}:
        return math.inf
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise click.BadParameter(f"{text!r}: expected a number of rows >= 1, or 'all'",
                                 param_hint="--budget")
    return value


@cli.command()
@click.option("--fix", is_flag=True, help="Delete temporary files of interrupted writes and move "
              "unregistered artifact files to ROOT/quarantine/ (never deletes data).")
@click.option("--no-checksums", is_flag=True, help="Skip rehashing files (faster).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def doctor(c: Ctx, fix: bool, no_checksums: bool, as_json: bool) -> None:
    """Verify artifacts and registry consistency; exit 0 only when all is well.

    Only reads unless --fix. The store must exist, and its registry must be its own (the store
    id in ROOT/featurestore.json): doctor never checks a store against another registry.
    """
    store = c.open(write=fix)
    report = store.doctor(fix=fix, checksums=not no_checksums)
    if as_json:
        emit_json(report)
    else:
        click.echo(f"{report['artifacts_checked']} artifacts checked")
        for p in report["problems"]:
            click.echo(f"problem: {p}")
        moved = {q["path"]: q["to"] for q in report["quarantined"]}
        for o in report["orphans"]:
            if o in moved:
                click.echo(f"quarantined: {o} -> {moved[o]}")
            else:
                click.echo(f"{'removed' if fix else 'orphan'}: {o}")
        for u in report["unverified"]:
            click.echo(f"unverified: view {u['view']} (artifact {u['artifact_id']}): "
                       f"{u['verification']}")
        click.echo("ok" if report["ok"] else "NOT ok")
    if not report["ok"]:
        sys.exit(5)


TEMPLATE = """\
# featurestore definitions. `featurestore apply` registers them; re-applying is a no-op.
# Tiers default to historical < practice < qualifying < race; declare [[tiers]] to change them.

# [[entities]]
# name = "driver"
# join_keys = ["driver_id"]

# [[sources]]
# name = "race_laps"
# path = "data/race_laps.parquet"      # file, directory or glob; relative to this file
# entity = "driver"
# event_time = "lap_timestamp"
# timezone = "America/New_York"        # how naive timestamps are read
# tier = "race"

# [[views]]
# name = "lap_rolling"
# source = "race_laps"
# transform = "rolling"
# params = { column = "running_position", windows = [10, 20, 50], aggs = ["mean"] }

# [[features]]
# name = "running_position_mean_last_10"
# view = "lap_rolling"
"""


_extras_registered = False


def _register_extra_commands() -> None:
    global _extras_registered
    if _extras_registered:
        return
    _extras_registered = True
    from featurestore.cli_plugins import PLUGIN_COMMANDS

    for command in PLUGIN_COMMANDS:
        cli.add_command(command)
    for module in ("featurestore.cli_retrieve", "featurestore.cli_config",
                   "featurestore.cli_lifecycle", "featurestore.cli_serve",
                   "featurestore.quickstart.command"):
        try:
            mod = __import__(module, fromlist=["COMMANDS"])
        except ImportError:
            continue
        for command in getattr(mod, "COMMANDS", []):
            cli.add_command(command)
    import warnings

    from featurestore.plugins import PluginWarning, call_register_commands

    with warnings.catch_warnings():
        # `featurestore plugins` lists every load problem; start-up need not repeat them.
        warnings.simplefilter("ignore", PluginWarning)
        call_register_commands(cli)


def _show_warning(message: Warning | str, category: type[Warning], *_args: Any, **_kw: Any) -> None:
    click.echo(f"Warning: {message}", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    import warnings

    try:
        warnings.showwarning = _show_warning
        # Inside the try: loading plugins takes a moment, and Ctrl-C then is still an abort.
        _register_extra_commands()
        cli.main(args=list(argv) if argv is not None else None, prog_name="featurestore",
                 standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        # Writes are atomic (temporary file, then rename, then the registry row in one
        # transaction): an interrupted command leaves the store as it was.
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2 if isinstance(exc, click.UsageError) else exc.exit_code
    except FeatureStoreError as exc:
        if os.environ.get("FEATURESTORE_DEBUG"):
            raise
        # One line, always: a message that embeds a multi-line library error (a polars plan)
        # keeps its first line; FEATURESTORE_DEBUG=1 shows the whole of it.
        lines = str(exc).strip().splitlines()
        click.echo(f"Error: {lines[0] if lines else type(exc).__name__}", err=True)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except GeneratorExit:
        raise
    except BaseException as exc:  # pyo3's PanicException (a Rust panic) is a BaseException
        if os.environ.get("FEATURESTORE_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        click.echo(f"Error: internal error {type(exc).__name__}: {first} "
                   "(set FEATURESTORE_DEBUG=1 for the traceback)", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
