"""``featurestore retrieve`` and ``featurestore online``: point-in-time frames from the shell."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from featurestore.cli import Ctx, pass_ctx
from featurestore.cli_output import emit_json, print_table
from featurestore.cli_values import (
    check_output_path,
    engine_option,
    output_file,
    parse_key_args,
    parse_timestamp,
    typed_keys,
)
from featurestore.errors import DataError

if TYPE_CHECKING:
    import polars as pl


def _features(values: tuple[str, ...]) -> list[str] | str:
    names = [n.strip() for v in values for n in v.split(",") if n.strip()]
    if not names:
        raise click.UsageError("give at least one feature with --features (or a feature set's name)")
    return names[0] if len(names) == 1 else names


def _read_entities(path: str) -> pl.DataFrame:
    import polars as pl

    p = Path(path)
    if p.is_file() and p.stat().st_size == 0:
        raise DataError(f"{path}: entity file is empty (0 bytes); expected Parquet (or CSV) with "
                        "the key and cutoff columns")
    try:
        if p.suffix == ".csv":
            return pl.read_csv(p, try_parse_dates=True)
        return pl.read_parquet(p)
    except FileNotFoundError:
        raise DataError(f"{path}: entity file not found") from None
    except Exception as exc:
        first = str(exc).strip().splitlines()
        raise DataError(f"{path}: cannot read entity file as {'CSV' if p.suffix == '.csv' else 'Parquet'}"
                        f" ({type(exc).__name__}{': ' + first[0] if first else ''})") from None


@click.command()
@click.option("--entities", "entities_path", required=True, type=click.Path(dir_okay=False),
              help="Parquet (or CSV) file of entity keys and cutoff times.")
@click.option("--features", "feature_args", multiple=True, required=True,
              help="Feature names (comma-separated or repeated), view:name, name@version, "
                   "or one feature set's name.")
@click.option("--tier", required=True, help="Tier of the prediction point.")
@click.option("--cutoff", default="event_timestamp", show_default=True, help="Cutoff column.")
@click.option("--timezone", "cutoff_timezone", default=None,
              help="Zone of a naive cutoff column (default UTC).")
@click.option("--inclusive", is_flag=True, help="Allow values available exactly at the cutoff.")
@click.option("--ttl", default=None, help="Null values older than this (e.g. 30d, 12h).")
@click.option("--with-availability", is_flag=True, help="Add each feature's available_at column.")
@click.option("--audit", "run_audit", is_flag=True,
              help="Audit the frame and report the result (and any unverified view served).")
@click.option("--allow-unverified", is_flag=True,
              help="Serve views materialized with --no-verify (refused otherwise).")
@click.option("--strict", is_flag=True,
              help="Refuse entity rows with a null key or cutoff (default: warn; they get nulls).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="Where to write the training frame (.parquet); missing directories are created.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary.")
@engine_option
@pass_ctx
def retrieve(c: Ctx, entities_path: str, feature_args: tuple[str, ...], tier: str, cutoff: str,
             cutoff_timezone: str | None, inclusive: bool, ttl: str | None,
             with_availability: bool, run_audit: bool, allow_unverified: bool, strict: bool,
             output: str, as_json: bool, engine: str | None) -> None:
    """Build a point-in-time training frame and write it to OUTPUT."""
    from featurestore.serving import output_names, served_artifacts, unverified_views

    if not output.endswith(".parquet"):
        raise click.UsageError("--output must be a .parquet file")
    check_output_path(output)
    entities = _read_entities(entities_path)
    features = _features(feature_args)
    frame = c.store.get_historical_features(
        entities, features, tier=tier, inclusive=inclusive, ttl=ttl, cutoff=cutoff,
        cutoff_timezone=cutoff_timezone, with_availability=with_availability or run_audit,
        allow_unverified=allow_unverified, strict=strict, engine=engine)
    rows = c.store.resolve_features(features)
    names = output_names(rows)
    summary: dict[str, object] = {"rows": frame.height, "features": names, "output": output,
                                  "null_counts": {n: frame[n].null_count() for n in names}}
    if run_audit:
        report = c.store.audit(frame, names, cutoff=cutoff, inclusive=inclusive,
                               cutoff_timezone=cutoff_timezone)
        unverified = unverified_views([art for art, _, _ in served_artifacts(c.store, rows)])
        summary["audit"] = {"checked": report.n_checked, "violations": report.n_violations,
                            "unverified_views": [a["name"] for a in unverified]}
        if not with_availability:
            frame = frame.drop([col for col in frame.columns if col.endswith("__available_at")])
    with output_file(output) as tmp:
        frame.write_parquet(tmp)
    if as_json:
        emit_json(summary)
    else:
        print_table([{"feature": n, "nulls": summary["null_counts"][n]} for n in names],  # type: ignore[index]
                    ["feature", "nulls"], title=f"{frame.height} rows -> {output}")
        if run_audit:
            a = summary["audit"]
            click.echo(f"audit: {a['checked']} values checked, {a['violations']} available after their cutoff")  # type: ignore[index]
            if a["unverified_views"]:  # type: ignore[index]
                click.echo("audit: served without causality verification (--no-verify): "
                           f"{', '.join(a['unverified_views'])}")  # type: ignore[index]


@click.command()
@click.option("--key", "key_args", multiple=True, required=True,
              help="Entity key as column=value; repeat for composite keys or more entities.")
@click.option("--features", "feature_args", multiple=True, required=True, help="Features.")
@click.option("--as-of", "as_of", default=None,
              help="ISO 8601 time, e.g. 2025-03-09T14:00:00+00:00 (naive: UTC; default: now).")
@click.option("--tier", default=None,
              help="Tier of the prediction point (default: the store's default_tier setting, "
                   "see `featurestore config`).")
@click.option("--allow-unverified", is_flag=True,
              help="Serve views materialized with --no-verify (refused otherwise).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def online(c: Ctx, key_args: tuple[str, ...], feature_args: tuple[str, ...], as_of: str | None,
           tier: str | None, allow_unverified: bool, as_json: bool) -> None:
    """Latest feature values for one or a few keys (the serving path)."""
    moment = parse_timestamp(as_of, option="--as-of") if as_of else None
    parse_key_args(key_args)  # a malformed --key is reported before the store is opened
    features = _features(feature_args)
    keys = typed_keys(c.store, key_args, features)
    frame = c.store.get_online_features(keys, features, as_of=moment, tier=tier,
                                        allow_unverified=allow_unverified)
    if as_json:
        emit_json(frame.to_dicts())
    else:
        print_table(frame.to_dicts(), frame.columns)


COMMANDS = [retrieve, online]
