"""``featurestore delete`` and ``featurestore gc``: removing objects and unneeded artifact files."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from featurestore.cli import Ctx, pass_ctx
from featurestore.cli_output import emit_json, print_table
from featurestore.planmodel import KIND_ALIASES

if TYPE_CHECKING:
    from featurestore.lifecycle import DeleteResult


def _describe(result: DeleteResult) -> list[str]:
    lines = [f"  {d}: {d.reason}" for d in result.deleted]
    lines += [f"  view {v['name']!r} v{v['previous_version']} -> v{v['version']}: its columns "
              f"become {', '.join(v['columns']) or '(none)'}" for v in result.column_views]
    return lines


@click.command()
@click.argument("kind", type=click.Choice(list(KIND_ALIASES)), metavar="KIND")
@click.argument("name")
@click.option("--cascade", is_flag=True, help="Also delete every object that depends on it.")
@click.option("--dry-run", is_flag=True, help="Show what would be deleted; delete nothing.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def delete(c: Ctx, kind: str, name: str, cascade: bool, dry_run: bool, yes: bool,
           as_json: bool) -> None:
    """Delete the KIND (feature, view, source, entity, feature-set) called NAME.

    Every version is marked deleted (`show NAME --history` still lists them); the object leaves
    `list`, retrieval, `materialize` and plans, and applying its definition again registers a
    new version. Objects that depend on it make this an error listing them, unless --cascade
    deletes them too. One transaction: all or nothing. Artifact files stay until `gc`.
    """
    plan = c.store.delete(kind, name, cascade=cascade, dry_run=True)
    if not as_json:
        click.echo(f"{'Would delete' if dry_run else 'Deleting'} {len(plan.deleted)} object(s):")
        click.echo("\n".join(_describe(plan)))
    if dry_run:
        if as_json:
            emit_json(plan.as_dict())
        return
    if not yes and not click.confirm("Proceed?", default=True, err=True):
        click.echo("Nothing deleted.", err=True)
        return
    from featurestore.lifecycle import delete as run

    expected = {(d.kind, d.name) for d in plan.deleted}
    result = run(c.store, kind, name, cascade=cascade, expect=expected)
    if as_json:
        emit_json(result.as_dict())
    else:
        click.echo(f"Deleted {len(result.deleted)} object(s) at {result.deleted_at:%Y-%m-%d %H:%M:%S} "
                   "UTC; their artifact files stay until `featurestore gc`.")


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return str(n)


@click.command()
@click.option("--keep", type=click.IntRange(min=0), default=0, show_default=True,
              help="Also keep the N newest artifacts of every live source and view.")
@click.option("--older-than", "older_than", default=None, metavar="DURATION",
              help="Keep every artifact younger than this (e.g. 7d, 12h).")
@click.option("--dry-run", is_flag=True, help="Show what would be removed; remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def gc(c: Ctx, keep: int, older_than: str | None, dry_run: bool, as_json: bool) -> None:
    """Remove artifact files that no live or pinned version needs.

    Kept: the newest artifact of every live source and view version, the one retrieval serves
    for every live feature and every feature version a feature set pins, the source snapshot
    each kept view artifact was computed from, plus --keep and --older-than. Removed artifacts'
    registry rows are deleted with them. Waits for running retrievals that may read a removed
    file; never blocks them.
    """
    from featurestore.lifecycle import gc as run

    def waiting() -> None:
        click.echo("Waiting for running reads of the removed files to finish...", err=True)

    result = run(c.store, keep=keep, older_than=older_than, dry_run=dry_run, on_wait=waiting)
    if as_json:
        emit_json(result.as_dict())
        return
    if result.removed:
        rows = [{**r, "size": _size(r["size_bytes"] or 0)} for r in result.removed]
        print_table(rows, ["id", "kind", "name", "object_version", "size", "created_at", "path"],
                    title=f"{'would remove' if dry_run else 'removed'} ({len(rows)})")
    verb = "Would remove" if dry_run else "Removed"
    click.echo(f"{verb} {len(result.removed)} artifact(s), {_size(result.bytes_freed)}; "
               f"kept {len(result.kept)}.")
    if result.missing:
        click.echo(f"{len(result.missing)} of them had no file left: "
                   f"{', '.join(result.missing)}", err=True)


COMMANDS = [delete, gc]
