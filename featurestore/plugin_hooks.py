"""Reporting on plugins (problems, versions) and calling the hooks other than transforms."""

from __future__ import annotations

from typing import Any

from featurestore.plugin_loading import (
    BUILTIN_COMMANDS,
    PluginProblem,
    call_per_plugin,
    caller_for,
    describe_exception,
    load_plugins,
    lock,
    plugins_in_order,
    pm,
    problem,
    source_for,
    state,
    warn_once,
)
from featurestore.plugin_transforms import build_registry, get_transforms

# --------------------------------------------------------------------------- reporting


def plugin_problems() -> list[PluginProblem]:
    """Every problem found loading plugins, registering transforms and adding commands."""
    with lock:
        load_plugins()
        build_registry()
        return [*state.load_problems, *state.registry_problems, *state.command_problems]


def plugin_info(include_builtins: bool = True) -> list[dict[str, Any]]:
    """One JSON-ready dict per loaded plugin, by name.

    Keys: ``name``, ``distribution``, ``version``, ``builtin``, ``hooks`` (names of the hooks it
    implements), ``transforms`` (names of the transforms it registered and that were accepted)
    and ``scopes`` (each of those transforms' scope, ``"entity"`` or ``"group"``, by name; a
    group transform's group columns depend on its params, so they are not listed).
    """
    with lock:
        transforms = get_transforms()
        infos = []
        for name, plugin in sorted(pm.list_name_plugin()):
            if plugin is None:
                continue
            source = source_for(name)
            if source.builtin and not include_builtins:
                continue
            infos.append({
                "name": name,
                "distribution": source.distribution,
                "version": source.version,
                "builtin": source.builtin,
                "hooks": sorted({c.name for c in pm.get_hookcallers(plugin) or []}),
                "transforms": sorted(t for t, r in transforms.items() if r.plugin == name),
                "scopes": {t: r.transform.scope for t, r in sorted(transforms.items())
                           if r.plugin == name},
            })
        return infos


# --------------------------------------------------------------------------- other hooks


def call_validate_materialized(view: str, transform: str, params: Any, frame: Any) -> list[str]:
    """Ask every plugin's ``validate_materialized`` about a materialized frame.

    Returns the problems, each prefixed with the plugin that found it. A plugin that raises, or
    returns something other than a list of strings, is itself reported as a problem: a check that
    could not run must not pass silently.
    """
    load_plugins()
    found: list[str] = []
    kwargs = {"view": view, "transform": transform, "params": params, "frame": frame}
    for source, results, exc in call_per_plugin("validate_materialized", kwargs):
        label = f"plugin {source.label}"
        if exc is not None:
            found.append(f"{label}: validate_materialized raised {describe_exception(exc)}")
            continue
        for result in results or []:
            if result is None:
                continue
            if isinstance(result, str):
                result = [result]
            if not isinstance(result, (list, tuple)) or not all(isinstance(p, str) for p in result):
                found.append(f"{label}: validate_materialized returned "
                              f"{type(result).__name__}, expected a list of strings")
                continue
            found.extend(f"{label}: {p}" for p in result)
    return found


def call_register_commands(cli: Any) -> list[PluginProblem]:
    """Let every plugin add click commands to the group ``cli``.

    A plugin may only add commands: one that replaces an existing command (core or another
    plugin's) has that change undone, and one that raises has all its additions undone; both are
    reported. Returns the problems (also kept for ``plugin_problems()``).

    Built-in plugins are not imported for this unless listed in ``BUILTIN_COMMANDS``.
    """
    load_plugins(builtins=bool(BUILTIN_COMMANDS))
    problems: list[PluginProblem] = []
    for name, plugin in plugins_in_order():
        caller = caller_for("register_commands", plugin)
        if caller is None:
            continue
        before = dict(cli.commands)
        source = source_for(name)
        try:
            caller(cli=cli)
        except Exception as exc:
            cli.commands.clear()
            cli.commands.update(before)
            problems.append(problem(source, f"raised {describe_exception(exc)} in "
                                             "register_commands; its commands were not added"))
            continue
        replaced = sorted(n for n, c in before.items() if cli.commands.get(n) is not c)
        if replaced:
            for n in replaced:
                cli.commands[n] = before[n]
            problems.append(problem(source, f"tried to replace the command(s) "
                                             f"{', '.join(replaced)}; kept the existing ones"))
    with lock:
        known = {str(p) for p in state.command_problems}
        state.command_problems.extend(p for p in problems if str(p) not in known)
    warn_once(problems)
    return problems
