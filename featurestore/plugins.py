"""Plugin discovery and the transform registry.

There is one ``pluggy.PluginManager`` (``pm``) holding the hooks of ``featurestore.hookspecs``.
Plugins reach it in two ways, both loaded once, lazily, on the first call that needs them
(``get_plugin_manager()``, ``get_transforms()``, ``plugin_info()``...):

- the built-in plugins, the modules named in ``DEFAULT_PLUGINS`` (shipped in the ``featurestore``
  distribution under the package ``featurestore_plugins``);
- third-party plugins: every entry point of the group ``featurestore`` of the installed
  distributions (``pip install featurestore-plugin-x``; no change in the core).

``FEATURESTORE_PLUGINS`` chooses which of them load:

- unset: all of them;
- a comma-separated list: only the plugins named, built-in ones included. A name is an entry-point
  name (``ewm``), a distribution name (``featurestore-plugin-ewm``, compared the way pip compares
  names) or a built-in module, in full (``featurestore_plugins.rolling``) or by its last part
  (``rolling``). A name that matches nothing is reported as a problem;
- set but empty: no plugin at all, not even the built-in ones (a bare core, useful to rule plugins
  out when something breaks).

A broken plugin never stops the others: a plugin that fails to import, implements a hook that does
not exist (a misspelling), raises in its hook, or registers something that is not a valid
``Transform`` or whose name another plugin already took, is reported by name (with its distribution
and version) and skipped. The problems are kept (``plugin_problems()``) and emitted once each as a
``PluginWarning``.

Transform names are first come, first served in a fixed order: built-in plugins first (in
``DEFAULT_PLUGINS`` order), then the others by plugin name. A later plugin registering a name
already taken is reported and that transform skipped, so installing a plugin can never silently
change what an existing feature computes.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import re
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from featurestore import hookspecs
from featurestore.errors import PluginError
from featurestore.transforms import SCOPES, Transform

ENTRY_POINT_GROUP = "featurestore"
ENV_VAR = "FEATURESTORE_PLUGINS"
DEFAULT_PLUGINS: tuple[str, ...] = (
    "featurestore_plugins.rolling", "featurestore_plugins.falloff", "featurestore_plugins.field",
    "featurestore.engines.polars_engine", "featurestore.engines.spark")
CORE_DISTRIBUTION = "featurestore"
TRANSFORM_NAME_RE = re.compile(r"[a-z][a-z0-9_]*\Z")

pm = pluggy.PluginManager("featurestore")
pm.add_hookspecs(hookspecs)

HOOK_NAMES: tuple[str, ...] = tuple(
    sorted(n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), "featurestore_spec"))
)


class PluginWarning(UserWarning):
    """Emitted once for each plugin problem (the plugin was skipped, the others loaded)."""


@dataclass(frozen=True)
class PluginSource:
    """Where a loaded plugin came from."""

    name: str
    distribution: str | None = None
    version: str | None = None
    builtin: bool = False

    @property
    def label(self) -> str:
        if self.distribution:
            return f"{self.name!r} ({self.distribution} {self.version or '?'})"
        return repr(self.name)


@dataclass(frozen=True)
class PluginProblem:
    """Something wrong with one plugin; the plugin (or the part at fault) was skipped."""

    plugin: str
    distribution: str | None
    version: str | None
    message: str

    def __str__(self) -> str:
        return f"plugin {PluginSource(self.plugin, self.distribution, self.version).label}: " \
            f"{self.message}"


@dataclass(frozen=True)
class RegisteredTransform:
    """A transform together with the plugin that registered it."""

    transform: Transform
    plugin: str
    distribution: str | None
    version: str | None
    builtin: bool

    @property
    def name(self) -> str:
        return self.transform.name


@dataclass
class _State:
    loaded: bool = False
    sources: dict[str, PluginSource] = field(default_factory=dict)
    load_problems: list[PluginProblem] = field(default_factory=list)
    registry_key: tuple[Any, ...] | None = None
    registry: dict[str, RegisteredTransform] = field(default_factory=dict)
    registry_problems: list[PluginProblem] = field(default_factory=list)
    command_problems: list[PluginProblem] = field(default_factory=list)
    warned: set[str] = field(default_factory=set)


_state = _State()
_lock = threading.RLock()


# --------------------------------------------------------------------------- loading


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _wanted() -> list[str] | None:
    """The names in FEATURESTORE_PLUGINS, or None when it is unset (load everything)."""
    raw = os.environ.get(ENV_VAR)
    if raw is None:
        return None
    return [n.strip() for n in raw.split(",") if n.strip()]


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    """The ``featurestore`` entry points of the installed distributions, deduplicated."""
    seen: set[tuple[str, str]] = set()
    found = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if (ep.name, ep.value) in seen:
            continue
        seen.add((ep.name, ep.value))
        found.append(ep)
    return sorted(found, key=lambda ep: ep.name)


def _source_of(ep: importlib.metadata.EntryPoint) -> PluginSource:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return PluginSource(ep.name)
    return PluginSource(ep.name, dist.metadata["Name"], dist.version)


def _problem(source: PluginSource, message: str) -> PluginProblem:
    return PluginProblem(source.name, source.distribution, source.version, message)


def _core_version() -> str | None:
    try:
        return importlib.metadata.version(CORE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        from featurestore import __version__

        return __version__


def _describe_exception(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if isinstance(exc, pluggy.PluginValidationError):
        text = "; ".join(lines)  # pluggy puts what is wrong on the later lines
    else:
        text = lines[0] if lines else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _register(source: PluginSource, load: Callable[[], object], where: str) -> None:
    """Import one plugin and register it with pm; a failure becomes a problem, never an error."""
    try:
        plugin = load()
    except Exception as exc:
        _state.load_problems.append(
            _problem(source, f"failed to import {where}: {_describe_exception(exc)}; skipped"))
        return
    try:
        pm.register(plugin, name=source.name)
    except (ValueError, pluggy.PluginValidationError) as exc:
        _state.load_problems.append(
            _problem(source, f"could not be registered: {_describe_exception(exc)}; skipped"))
        return
    bad = _hook_problems(plugin)
    if bad:
        pm.unregister(plugin)
        _state.load_problems.append(_problem(source, "; ".join(bad) + "; skipped"))
        return
    _state.sources[source.name] = source


def _hook_problems(plugin: object) -> list[str]:
    """Hooks a plugin implements that featurestore does not have, and old-style wrappers."""
    problems = []
    for caller in pm.get_hookcallers(plugin) or []:
        impls = [i for i in caller.get_hookimpls() if i.plugin is plugin]
        if caller.spec is None and not all(i.optionalhook for i in impls):
            guess = difflib.get_close_matches(caller.name, HOOK_NAMES, n=1)
            hint = f" (did you mean {guess[0]!r}?)" if guess else ""
            problems.append(f"implements unknown hook {caller.name!r}{hint}; featurestore's hooks "
                            f"are {', '.join(HOOK_NAMES)}")
        for impl in impls:
            if impl.hookwrapper:
                problems.append(f"uses the old-style hookwrapper=True on {caller.name!r}; use "
                                "@hookimpl(wrapper=True)")
    return problems


def load_plugins() -> pluggy.PluginManager:
    """Load the built-in and installed plugins into ``pm``, once; return ``pm``.

    Safe to call any number of times and from several threads: only the first call loads.
    Problems are kept for ``plugin_problems()`` and emitted as ``PluginWarning``.
    """
    with _lock:
        if _state.loaded:
            return pm
        _state.loaded = True
        wanted = _wanted()
        matched: set[str] = set()

        def selected(*names: str | None) -> bool:
            if wanted is None:
                return True
            hit = False
            for w in wanted:
                if any(n is not None and _normalize(n) == _normalize(w) for n in names):
                    matched.add(w)
                    hit = True
            return hit

        version = _core_version()
        for module_name in DEFAULT_PLUGINS:
            if not selected(module_name, module_name.rsplit(".", 1)[-1]):
                continue
            source = PluginSource(module_name, CORE_DISTRIBUTION, version, builtin=True)
            _register(source, lambda m=module_name: importlib.import_module(m),
                      f"built-in module {module_name!r}")
        try:
            entry_points = _entry_points()
        except Exception as exc:
            entry_points = []
            _state.load_problems.append(PluginProblem(
                "(entry points)", None, None,
                f"could not list the {ENTRY_POINT_GROUP!r} entry points: "
                f"{_describe_exception(exc)}"))
        for ep in entry_points:
            source = _source_of(ep)
            if not selected(source.name, source.distribution):
                continue
            _register(source, ep.load, f"entry point {ep.name} = {ep.value}")
        for w in wanted or []:
            if w not in matched:
                available = sorted({*DEFAULT_PLUGINS, *(ep.name for ep in entry_points)})
                _state.load_problems.append(PluginProblem(
                    w, None, None, f"named in {ENV_VAR} but not installed; installed plugins: "
                    f"{', '.join(available) or '(none)'}"))
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:  # pragma: no cover - caught per plugin above
            _state.load_problems.append(PluginProblem("(unknown)", None, None, str(exc)))
        _warn(_state.load_problems)
        return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager, with the plugins loaded."""
    return load_plugins()


def reset_plugins() -> None:
    """Unregister every plugin ``load_plugins()`` registered and forget all problems.

    For tests and for tools that change ``FEATURESTORE_PLUGINS`` in-process: the next call loads
    again. Plugins registered by hand with ``pm.register`` stay.
    """
    global _state
    with _lock:
        for name in list(_state.sources):
            plugin = pm.get_plugin(name)
            if plugin is not None:
                pm.unregister(plugin)
        _state = _State()


def _warn(problems: Iterable[PluginProblem]) -> None:
    for problem in problems:
        text = str(problem)
        if text not in _state.warned:
            _state.warned.add(text)
            warnings.warn(text, PluginWarning, stacklevel=3)


def _source_for(name: str) -> PluginSource:
    """The recorded source of a plugin, or a bare one for plugins registered by hand."""
    return _state.sources.get(name) or PluginSource(name)


def _plugins_in_order() -> list[tuple[str, object]]:
    """Registered plugins: built-ins in DEFAULT_PLUGINS order, then the others by name."""
    rank = {name: i for i, name in enumerate(DEFAULT_PLUGINS)}
    items = [(name, plugin) for name, plugin in pm.list_name_plugin() if plugin is not None]
    return sorted(items, key=lambda item: (rank.get(item[0], len(rank)), item[0]))


def _caller_for(hook_name: str, plugin: object) -> Any:
    """A caller of ``hook_name`` restricted to ``plugin``; None if it does not implement it."""
    if not any(c.name == hook_name for c in pm.get_hookcallers(plugin) or []):
        return None
    others = [p for _, p in pm.list_name_plugin() if p is not None and p is not plugin]
    return pm.subset_hook_caller(hook_name, remove_plugins=others)


def _call_per_plugin(hook_name: str, kwargs: Mapping[str, Any]
                     ) -> Iterable[tuple[PluginSource, list[Any] | None, BaseException | None]]:
    """Call a hook plugin by plugin, so a failure is isolated and attributed.

    Each call goes through pluggy restricted to one plugin, so that plugin's own
    ``@hookimpl(wrapper=True)`` implementations still wrap its plain ones.
    """
    for name, plugin in _plugins_in_order():
        caller = _caller_for(hook_name, plugin)
        if caller is None:
            continue
        try:
            result = caller(**kwargs)
        except Exception as exc:
            yield _source_for(name), None, exc
        else:
            yield _source_for(name), result, None


# --------------------------------------------------------------------------- transforms


_DEFAULT_GROUP_COLUMNS = Transform.__dataclass_fields__["group_columns"].default


def _transform_problem(obj: object) -> str | None:
    """Why ``obj`` is not an acceptable transform, or None."""
    if not isinstance(obj, Transform):
        return (f"registered a {type(obj).__module__}.{type(obj).__qualname__} instead of a "
                "featurestore.transforms.Transform")
    if not isinstance(obj.name, str) or not TRANSFORM_NAME_RE.match(obj.name):
        return (f"registered a transform named {obj.name!r}: a name is lower case letters, "
                "digits and underscores, starting with a letter ([a-z][a-z0-9_]*)")
    for attr in ("fn", "output_columns", "lookback"):
        if not callable(getattr(obj, attr)):
            return f"registered transform {obj.name!r} whose {attr} is not callable"
    if not isinstance(obj.scope, str) or obj.scope not in SCOPES:
        return (f"registered transform {obj.name!r} with scope {obj.scope!r}; a scope is one of "
                f"{', '.join(repr(s) for s in SCOPES)}")
    if obj.scope == "group":
        if not callable(obj.group_columns):
            return (f"registered group-scope transform {obj.name!r} whose group_columns is not "
                    "callable")
        if obj.group_columns is _DEFAULT_GROUP_COLUMNS:
            return (f"registered group-scope transform {obj.name!r} without group_columns: a "
                    "group transform says which columns (e.g. race_id) its rows share with the "
                    "other entities' rows it reads, as group_columns(params) -> column names")
    return None


def _registry_key() -> tuple[Any, ...]:
    # The plugin objects themselves (not their ids, which are reused once an object is freed).
    return tuple(pm.list_name_plugin())


def _same_plugins(a: tuple[Any, ...] | None, b: tuple[Any, ...]) -> bool:
    return a is not None and len(a) == len(b) and all(
        na == nb and pa is pb for (na, pa), (nb, pb) in zip(a, b, strict=True))


def _build_registry() -> None:
    """(Re)build the transform registry when the set of registered plugins changed."""
    key = _registry_key()
    if _same_plugins(_state.registry_key, key):
        return
    registry: dict[str, RegisteredTransform] = {}
    problems: list[PluginProblem] = []
    for source, pending in _collect_registrations():
        if isinstance(pending, BaseException):
            problems.append(_problem(source, f"raised {_describe_exception(pending)} in "
                                             "register_transforms; none of its transforms "
                                             "were registered"))
            continue
        own: set[str] = set()
        for obj in pending:
            why = _transform_problem(obj)
            if why is None and obj.name in own:
                why = f"registered transform {obj.name!r} twice; kept the first"
            elif why is None and obj.name in registry:
                first = registry[obj.name]
                by = PluginSource(first.plugin, first.distribution, first.version).label
                why = (f"registered transform {obj.name!r}, a name plugin {by} already "
                       "registered; kept that one, skipped this one")
            if why is not None:
                problems.append(_problem(source, why))
                continue
            own.add(obj.name)
            registry[obj.name] = RegisteredTransform(
                obj, source.name, source.distribution, source.version, source.builtin)
    _state.registry = dict(sorted(registry.items()))
    _state.registry_problems = problems
    _state.registry_key = key
    _warn(problems)


def _collect_registrations() -> Iterable[tuple[PluginSource, list[Any] | BaseException]]:
    for name, plugin in _plugins_in_order():
        caller = _caller_for("register_transforms", plugin)
        if caller is None:
            continue
        pending: list[Any] = []
        try:
            caller(register=pending.append)
        except Exception as exc:
            yield _source_for(name), exc
        else:
            yield _source_for(name), pending


def get_transforms() -> dict[str, RegisteredTransform]:
    """Every registered transform by name (a copy), loading plugins first if needed."""
    with _lock:
        load_plugins()
        _build_registry()
        return dict(_state.registry)


def get_transform(name: str) -> RegisteredTransform:
    """The transform called ``name``; ``PluginError`` naming it and the available ones if none."""
    transforms = get_transforms()
    try:
        return transforms[name]
    except KeyError:
        pass
    guess = difflib.get_close_matches(str(name), list(transforms), n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    raise PluginError(f"unknown transform {name!r}{hint}; available transforms: "
                      f"{', '.join(transforms) or '(none: no plugin registered any)'}")


# --------------------------------------------------------------------------- reporting


def plugin_problems() -> list[PluginProblem]:
    """Every problem found loading plugins, registering transforms and adding commands."""
    with _lock:
        load_plugins()
        _build_registry()
        return [*_state.load_problems, *_state.registry_problems, *_state.command_problems]


def plugin_info(include_builtins: bool = True) -> list[dict[str, Any]]:
    """One JSON-ready dict per loaded plugin, by name.

    Keys: ``name``, ``distribution``, ``version``, ``builtin``, ``hooks`` (names of the hooks it
    implements), ``transforms`` (names of the transforms it registered and that were accepted)
    and ``scopes`` (each of those transforms' scope, ``"entity"`` or ``"group"``, by name; a
    group transform's group columns depend on its params, so they are not listed).
    """
    with _lock:
        transforms = get_transforms()
        infos = []
        for name, plugin in sorted(pm.list_name_plugin()):
            if plugin is None:
                continue
            source = _source_for(name)
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
    for source, results, exc in _call_per_plugin("validate_materialized", kwargs):
        label = f"plugin {source.label}"
        if exc is not None:
            found.append(f"{label}: validate_materialized raised {_describe_exception(exc)}")
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
    """
    load_plugins()
    problems: list[PluginProblem] = []
    for name, plugin in _plugins_in_order():
        caller = _caller_for("register_commands", plugin)
        if caller is None:
            continue
        before = dict(cli.commands)
        source = _source_for(name)
        try:
            caller(cli=cli)
        except Exception as exc:
            cli.commands.clear()
            cli.commands.update(before)
            problems.append(_problem(source, f"raised {_describe_exception(exc)} in "
                                             "register_commands; its commands were not added"))
            continue
        replaced = sorted(n for n, c in before.items() if cli.commands.get(n) is not c)
        if replaced:
            for n in replaced:
                cli.commands[n] = before[n]
            problems.append(_problem(source, f"tried to replace the command(s) "
                                             f"{', '.join(replaced)}; kept the existing ones"))
    with _lock:
        known = {str(p) for p in _state.command_problems}
        _state.command_problems.extend(p for p in problems if str(p) not in known)
    _warn(problems)
    return problems


__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "HOOK_NAMES",
    "PluginProblem",
    "PluginSource",
    "PluginWarning",
    "RegisteredTransform",
    "call_register_commands",
    "call_validate_materialized",
    "get_plugin_manager",
    "get_transform",
    "get_transforms",
    "load_plugins",
    "plugin_info",
    "plugin_problems",
    "pm",
    "reset_plugins",
]
