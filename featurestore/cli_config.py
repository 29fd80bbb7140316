"""``featurestore config``: show and change store-level settings (kept in the registry)."""

from __future__ import annotations

import click

from featurestore.cli import Ctx, pass_ctx
from featurestore.cli_output import emit_json, print_table


@click.command()
@click.argument("key", required=False)
@click.argument("value", required=False)
@click.option("--unset", is_flag=True, help="Remove KEY's value.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_ctx
def config(c: Ctx, key: str | None, value: str | None, unset: bool, as_json: bool) -> None:
    """Show settings, or set KEY to VALUE (--unset removes it).

    \b
    featurestore config                         every setting and its value
    featurestore config default_tier            one setting
    featurestore config default_tier race       set it (checked first)
    featurestore config default_tier --unset    remove it

    Settings: default_tier, the prediction tier `online` uses when --tier is not given
    (unset by default: then `online` needs --tier); memory_limit, such as 2GiB, what ingest
    and materialize stay within (FEATURESTORE_MEMORY_LIMIT overrides it; unset: a quarter
    of RAM, at most 2 GiB); snapshot_layout, copy (default) or reference: whether the next
    snapshots copy the source's rows or index them and read values from the source's own
    files (FEATURESTORE_SNAPSHOT_LAYOUT overrides it); compression, the Parquet codec of
    the next artifacts, lz4 (default), zstd, snappy, gzip, brotli or uncompressed
    (FEATURESTORE_COMPRESSION overrides it).
    """
    from featurestore.settings import SETTINGS, setting_name

    if unset and (key is None or value is not None):
        raise click.UsageError("--unset takes a KEY and no VALUE")
    writing = value is not None or unset
    store = c.open(write=writing, create=False)  # showing settings is a read: never a new store
    if key is not None:
        key = setting_name(key)
        if writing:
            store.set_setting(key, None if unset else value)
    current = store.settings()
    shown = {key: current[key]} if key is not None else current
    if as_json:
        emit_json(shown)
        return
    print_table([{"setting": k, "value": v if v is not None else "(unset)",
                  "meaning": SETTINGS[k][0]} for k, v in shown.items()],
                ["setting", "value", "meaning"])


COMMANDS = [config]
