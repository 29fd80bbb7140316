"""``featurestore quickstart``: the main job, a NASCAR season end to end."""

from __future__ import annotations

import time
from pathlib import Path

import click

from featurestore.cli_output import emit_json, print_table, progress_bar


@click.command()
@click.option("-o", "--output", "output", default="quickstart-store", show_default=True,
              type=click.Path(file_okay=False), help="Folder for the store, data and pictures.")
@click.option("--seed", default=7, show_default=True, help="Seed of the generated season.")
@click.option("--races", default=36, show_default=True, type=click.IntRange(2, 200),
              help="Number of race weekends.")
@click.option("--drivers", default=40, show_default=True, type=click.IntRange(4, 60),
              help="Number of drivers.")
@click.option("--plot/--no-plot", default=True, show_default=True,
              help="Draw the stint and availability pictures (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
def quickstart(output: str, seed: int, races: int, drivers: int, plot: bool, as_json: bool) -> None:
    """Generate a NASCAR Cup season and run it through the store, end to end.

    Creates a store in OUTPUT (SQLite registry + Parquet), declares features at all four tiers,
    ingests, materializes with causality verification, builds pre-race and in-race training
    frames, audits them, and shows the tier guard refusing a leak. Safe to run twice.
    """
    from featurestore.quickstart.pipeline import run_quickstart

    started = time.perf_counter()
    say = (lambda _m: None) if as_json else click.echo
    if plot and not _have_matplotlib():
        click.echo("Warning: matplotlib is not installed (pip install 'featurestore[plot]'); "
                   "skipping pictures.", err=True)
        plot = False
    with progress_bar(not as_json) as progress:
        result = run_quickstart(output, seed=seed, n_races=races, n_drivers=drivers, plot=plot,
                                progress=progress, say=say)
    total = time.perf_counter() - started
    if as_json:
        emit_json({**result.as_dict(), "seconds": round(total, 2)})
        return
    c = result.apply_counts
    click.echo(f"\nApplied definitions: {c['add']} added, {c['version']} new versions, "
               f"{c['update']} updated, {c['unchanged']} unchanged.")
    print_table(result.materialize, ["view", "status", "rows", "verification", "seconds_transform",
                                     "seconds_verify"], title="Materialized views")
    pre, inr = result.prerace_shape, result.inrace_shape
    click.echo(f"Pre-race training frame (tier qualifying, cutoff = green flag): {pre[0]} rows x "
               f"{pre[1]} columns -> {result.prerace_path}")
    click.echo(f"In-race training frame (tier race, cutoff = leader's lap 100):  {inr[0]} rows x "
               f"{inr[1]} columns -> {result.inrace_path}")
    print_table([{"feature": k, "null share": f"{v:.1%}"} for k, v in result.null_share.items()],
                ["feature", "null share"], title="Pre-race features (nulls: no earlier value)")
    click.echo(f"Leakage audit: {result.audit_checked} values checked, {result.audit_violations} "
               "available after their cutoff.")
    click.echo(f"\nThe tier guard at work: asking for an in-race feature at tier qualifying gives\n"
               f"  LeakageError: {result.leakage_error}")
    for picture in result.pictures:
        click.echo(f"Picture: {picture}")
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in result.timings.items())
    click.echo(f"\nDone in {total:.1f}s ({timings}).")
    root = Path(result.root)
    fs = _executable()
    click.echo(f"""
Try next:
  {fs} -s {root} list features --tier race
  {fs} -s {root} show deg_slope --history
  {fs} -s {root} artifacts --verify
  {fs} -s {root} retrieve --entities {root}/frames/prerace_entities.parquet \\
      --features prerace_model --tier qualifying --audit --output /tmp/train.parquet
  {fs} -s {root} online --key driver_id=1 --features prev_finish,avg_finish_last_5 \\
      --tier qualifying
  {fs} -s {root} doctor
  {fs} plugins --all""")


def _executable() -> str:
    """``featurestore`` when it is on PATH, else the script next to this interpreter."""
    import shutil
    import sys

    if shutil.which("featurestore"):
        return "featurestore"
    candidate = Path(sys.executable).parent / "featurestore"
    return str(candidate) if candidate.exists() else f"{sys.executable} -m featurestore"


def _have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


COMMANDS = [quickstart]
