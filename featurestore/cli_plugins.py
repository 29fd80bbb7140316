"""The ``plugins``, ``install`` and ``uninstall`` commands of the ``featurestore`` CLI.

``featurestore install`` and ``featurestore uninstall`` run ``pip`` with the interpreter that runs
featurestore (``python -m pip``), so a plugin always lands in the environment that will load it.

The main CLI adds ``PLUGIN_COMMANDS`` to its group; ``python -m featurestore.cli_plugins`` runs
them on their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Sequence

import click

from featurestore import plugins as plugin_registry


def _run_pip(args: Sequence[str], *, quiet: bool = False) -> int:
    """Run ``python -m pip ARGS`` with this interpreter; return its exit code.

    ``quiet`` captures pip's output and shows it only if pip fails (its error is the message).
    """
    if not quiet:
        return subprocess.call([sys.executable, "-m", "pip", *args])
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode:
        click.echo((done.stdout + done.stderr).rstrip(), err=True)
    return done.returncode


def _canonical(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _distributions() -> dict[str, tuple[str, str]]:
    """Installed distributions: canonical name -> (name, version), as this interpreter sees them."""
    from importlib.metadata import distributions

    found = {}
    for dist in distributions():
        name = dist.metadata["Name"] or ""
        if name:
            found.setdefault(_canonical(name), (name, dist.version))
    return found


def _plugins_after_install() -> tuple[list[dict], list[str]]:
    """The plugins a fresh featurestore process loads now, and the problems it reports.

    A fresh process, because this one imported its plugins before pip changed the environment.
    """
    done = subprocess.run([sys.executable, "-m", "featurestore.cli_plugins", "plugins", "--json"],
                          capture_output=True, text=True)
    try:
        infos = json.loads(done.stdout)
    except ValueError:
        infos = []
    problems = [line.removeprefix("Warning: ") for line in done.stderr.splitlines() if line.strip()]
    return infos, problems


def _summarize(before: dict[str, tuple[str, str]], after: dict[str, tuple[str, str]],
               infos: list[dict], problems: list[str]) -> list[str]:
    """What ``install`` changed, in a few lines: distributions, then plugins and transforms."""
    changed = [key for key in after if before.get(key) != after[key]]
    if not changed:
        return ["Nothing changed: the requested packages were already installed "
                "(-U upgrades, -v shows pip's output)."]
    by_dist = {}
    for info in infos:
        if info.get("distribution"):
            by_dist.setdefault(_canonical(info["distribution"]), []).append(info)
    plugin_dists = [k for k in changed if k in by_dist]
    others = [k for k in changed if k not in by_dist]

    def label(key: str) -> str:
        name, version = after[key]
        old = before.get(key)
        return f"{name} {version}" + (f" (was {old[1]})" if old else "")

    lines = []
    for key in plugin_dists:
        lines.append(f"Installed {label(key)}")
        for info in by_dist[key]:
            transforms = ", ".join(info["transforms"]) or "(none)"
            lines.append(f"  plugin {info['name']} {info.get('version') or ''}".rstrip()
                         + f": transforms {transforms}")
    if others:
        shown = ", ".join(label(k) for k in others[:8]) + (" ..." if len(others) > 8 else "")
        lines.append(f"{'Also installed' if plugin_dists else 'Installed'}: {shown}")
    if not plugin_dists:
        lines.append("No new featurestore plugin: none of these declares an entry point in the "
                     f"{plugin_registry.ENTRY_POINT_GROUP!r} group.")
    lines += [f"Warning: {p}" for p in problems]
    return lines


def _show_problems() -> None:
    for problem in plugin_registry.plugin_problems():
        click.echo(f"Warning: {problem}", err=True)


@click.command(name="plugins")
@click.option("--all", "include_builtins", is_flag=True,
              help="Include the built-in plugins shipped with featurestore.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def plugins_cmd(include_builtins: bool, as_json: bool) -> None:
    """List the installed plugins: version, hooks and transforms with their scope.

    A transform's scope is "entity" (it reads only its own entity's rows) or "group" (it also
    reads other entities' rows of the same group, e.g. the same race).

    Plugins that could not be loaded are reported as warnings on stderr.
    FEATURESTORE_PLUGINS=name,name limits which plugins load (empty: none).
    """
    with warnings.catch_warnings():
        # Shown once below, as lines on stderr, rather than as Python warnings.
        warnings.simplefilter("ignore", plugin_registry.PluginWarning)
        infos = plugin_registry.plugin_info(include_builtins=include_builtins)
        _show_problems()
    if as_json:
        click.echo(json.dumps(infos, indent=2))
        return
    if not infos:
        click.echo("No plugins installed." if include_builtins
                   else "No plugins installed (--all also lists the built-in ones).")
        return
    for info in infos:
        origin = "built-in" if info["builtin"] else (info["distribution"] or "registered in code")
        click.echo(f"{info['name']} {info['version'] or ''}".rstrip() + f"  ({origin})")
        click.echo(f"  hooks: {', '.join(info['hooks']) or '(none)'}")
        if info["transforms"]:
            listed = (f"{t} ({info['scopes'].get(t, 'entity')})" for t in info["transforms"])
            click.echo(f"  transforms: {', '.join(listed)}")


_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": False}


@click.command(name="install", context_settings=_PASS_THROUGH)
@click.argument("packages", nargs=-1, type=click.UNPROCESSED)
@click.option("-U", "--upgrade", is_flag=True, help="Upgrade the packages to the newest version.")
@click.option("-e", "--editable", multiple=True, metavar="PATH",
              help="Install a project in editable mode from a local path.")
@click.option("--force-reinstall", is_flag=True, help="Reinstall even if already up to date.")
@click.option("--no-cache-dir", is_flag=True, help="Do not use pip's cache.")
@click.option("--pre", is_flag=True, help="Include pre-release and development versions.")
@click.option("-v", "--verbose", is_flag=True, help="Show pip's own output.")
def install_cmd(packages: tuple[str, ...], upgrade: bool, editable: tuple[str, ...],
                force_reinstall: bool, no_cache_dir: bool, pre: bool, verbose: bool) -> None:
    """Install plugins (PyPI names, wheels, paths) into featurestore's environment.

    Runs "python -m pip install" with the interpreter running featurestore; other pip options
    are passed through as given. Prints what was installed and the plugins and transforms it
    brings; pip's own output only with -v (or when pip fails).
    """
    if not packages and not editable:
        raise click.UsageError("name at least one package to install (or -e PATH)")
    args = ["install"]
    if upgrade:
        args.append("--upgrade")
    if force_reinstall:
        args.append("--force-reinstall")
    if no_cache_dir:
        args.append("--no-cache-dir")
    if pre:
        args.append("--pre")
    for path in editable:
        args.extend(["--editable", path])
    args.extend(packages)
    before = _distributions()
    code = _run_pip(args, quiet=not verbose)
    if code:
        raise click.exceptions.Exit(code)
    infos, problems = _plugins_after_install()
    for line in _summarize(before, _distributions(), infos, problems):
        click.echo(line, err=line.startswith("Warning: "))


@click.command(name="uninstall", context_settings=_PASS_THROUGH)
@click.argument("packages", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def uninstall_cmd(packages: tuple[str, ...], yes: bool) -> None:
    """Uninstall plugins from featurestore's environment (runs "python -m pip uninstall")."""
    args = ["uninstall", *packages]
    if yes:
        args.append("--yes")
    code = _run_pip(args)
    if code:
        raise click.exceptions.Exit(code)


PLUGIN_COMMANDS: list[click.Command] = [plugins_cmd, install_cmd, uninstall_cmd]


def standalone_group() -> click.Group:
    """A ``featurestore`` group holding only these commands and the plugins' own."""

    @click.group(name="featurestore")
    def group() -> None:
        """featurestore plugin management."""

    for command in PLUGIN_COMMANDS:
        group.add_command(command)
    with warnings.catch_warnings():
        # `plugins` lists every problem; other commands need not repeat them at start-up.
        warnings.simplefilter("ignore", plugin_registry.PluginWarning)
        plugin_registry.call_register_commands(group)
    return group


if __name__ == "__main__":
    standalone_group()(prog_name="featurestore")
