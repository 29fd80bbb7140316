"""Plugin discovery and loading: the plugin manager, the load state, per-plugin hook calls.

See ``featurestore.plugins`` for the rules (which plugins load, how problems are reported).
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
from typing import TYPE_CHECKING, Any

import pluggy

from featurestore import hookspecs

if TYPE_CHECKING:  # at run time only plugins need it, and it loads polars
    from featurestore.transforms import Transform

ENTRY_POINT_GROUP = "featurestore"
ENV_VAR = "FEATURESTORE_PLUGINS"
DEFAULT_PLUGINS: tuple[str, ...] = (
    "featurestore_plugins.rolling", "featurestore_plugins.falloff", "featurestore_plugins.field",
    "featurestore_plugins.window", "featurestore.engines.polars_engine",
    "featurestore.engines.spark")
# Built-in plugins that implement register_commands: none, so the command line can add plugin
# commands without importing the built-ins (see load_plugins(builtins=False)).
BUILTIN_COMMANDS: frozenset[str] = frozenset()
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
    loaded: bool = False  # the entry-point plugins
    builtins_loaded: bool = False
    selected: tuple[list[str], list[importlib.metadata.EntryPoint]] | None = None
    sources: dict[str, PluginSource] = field(default_factory=dict)
    load_problems: list[PluginProblem] = field(default_factory=list)
    registry_key: tuple[Any, ...] | None = None
    registry: dict[str, RegisteredTransform] = field(default_factory=dict)
    registry_problems: list[PluginProblem] = field(default_factory=list)
    command_problems: list[PluginProblem] = field(default_factory=list)
    warned: set[str] = field(default_factory=set)


state = _State()
lock = threading.RLock()


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


def problem(source: PluginSource, message: str) -> PluginProblem:
    return PluginProblem(source.name, source.distribution, source.version, message)


def _core_version() -> str | None:
    try:
        return importlib.metadata.version(CORE_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        from featurestore import __version__

        return __version__


def describe_exception(exc: BaseException) -> str:
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
        state.load_problems.append(
            problem(source, f"failed to import {where}: {describe_exception(exc)}; skipped"))
        return
    try:
        pm.register(plugin, name=source.name)
    except (ValueError, pluggy.PluginValidationError) as exc:
        state.load_problems.append(
            problem(source, f"could not be registered: {describe_exception(exc)}; skipped"))
        return
    bad = _hook_problems(plugin)
    if bad:
        pm.unregister(plugin)
        state.load_problems.append(problem(source, "; ".join(bad) + "; skipped"))
        return
    state.sources[source.name] = source


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


def _select() -> tuple[list[str], list[importlib.metadata.EntryPoint]]:
    """Which built-in modules and entry points ``FEATURESTORE_PLUGINS`` selects (decided once,
    importing nothing); a name that matches neither is recorded as a problem."""
    if state.selected is not None:
        return state.selected
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

    builtins = [m for m in DEFAULT_PLUGINS if selected(m, m.rsplit(".", 1)[-1])]
    try:
        entry_points = _entry_points()
    except Exception as exc:
        entry_points = []
        state.load_problems.append(PluginProblem(
            "(entry points)", None, None,
            f"could not list the {ENTRY_POINT_GROUP!r} entry points: "
            f"{describe_exception(exc)}"))
    chosen = [ep for ep in entry_points if selected(*_names_of(ep))]
    for w in wanted or []:
        if w not in matched:
            available = sorted({*DEFAULT_PLUGINS, *(ep.name for ep in entry_points)})
            state.load_problems.append(PluginProblem(
                w, None, None, f"named in {ENV_VAR} but not installed; installed plugins: "
                f"{', '.join(available) or '(none)'}"))
    state.selected = (builtins, chosen)
    return state.selected


def _names_of(ep: importlib.metadata.EntryPoint) -> tuple[str | None, str | None]:
    source = _source_of(ep)
    return source.name, source.distribution


def load_plugins(*, builtins: bool = True) -> pluggy.PluginManager:
    """Load the built-in and installed plugins into ``pm``, once; return ``pm``.

    Safe to call any number of times and from several threads: only the first call loads.
    Problems are kept for ``plugin_problems()`` and emitted as ``PluginWarning``.

    ``builtins=False`` loads only the installed (entry-point) plugins, and leaves the built-in
    ones for a later call. The command line uses it to collect plugin commands without
    importing the built-in transforms (and with them polars): the built-in plugins add no
    commands (``BUILTIN_COMMANDS`` is empty, a test keeps it so).
    """
    with lock:
        if state.loaded and (state.builtins_loaded or not builtins):
            return pm
        chosen_builtins, entry_points = _select()
        if builtins and not state.builtins_loaded:
            state.builtins_loaded = True
            version = _core_version()
            for module_name in chosen_builtins:
                source = PluginSource(module_name, CORE_DISTRIBUTION, version, builtin=True)
                _register(source, lambda m=module_name: importlib.import_module(m),
                          f"built-in module {module_name!r}")
        if not state.loaded:
            state.loaded = True
            for ep in entry_points:
                _register(_source_of(ep), ep.load, f"entry point {ep.name} = {ep.value}")
        try:
            pm.check_pending()
        except pluggy.PluginValidationError as exc:  # pragma: no cover - caught per plugin above
            state.load_problems.append(PluginProblem("(unknown)", None, None, str(exc)))
        warn_once(state.load_problems)
        return pm


def get_plugin_manager() -> pluggy.PluginManager:
    """The plugin manager, with the plugins loaded."""
    return load_plugins()


def reset_plugins() -> None:
    """Unregister every plugin ``load_plugins()`` registered and forget all problems.

    For tests and for tools that change ``FEATURESTORE_PLUGINS`` in-process: the next call loads
    again. Plugins registered by hand with ``pm.register`` stay.
    """
    with lock:
        for name in list(state.sources):
            plugin = pm.get_plugin(name)
            if plugin is not None:
                pm.unregister(plugin)
        # In place: plugin_transforms and plugin_hooks hold a reference to this object.
        vars(state).update(vars(_State()))


def warn_once(problems: Iterable[PluginProblem]) -> None:
    for problem in problems:
        text = str(problem)
        if text not in state.warned:
            state.warned.add(text)
            warnings.warn(text, PluginWarning, stacklevel=3)


def source_for(name: str) -> PluginSource:
    """The recorded source of a plugin, or a bare one for plugins registered by hand."""
    return state.sources.get(name) or PluginSource(name)


def plugins_in_order() -> list[tuple[str, object]]:
    """Registered plugins: built-ins in DEFAULT_PLUGINS order, then the others by name."""
    rank = {name: i for i, name in enumerate(DEFAULT_PLUGINS)}
    items = [(name, plugin) for name, plugin in pm.list_name_plugin() if plugin is not None]
    return sorted(items, key=lambda item: (rank.get(item[0], len(rank)), item[0]))


def caller_for(hook_name: str, plugin: object) -> Any:
    """A caller of ``hook_name`` restricted to ``plugin``; None if it does not implement it."""
    if not any(c.name == hook_name for c in pm.get_hookcallers(plugin) or []):
        return None
    others = [p for _, p in pm.list_name_plugin() if p is not None and p is not plugin]
    return pm.subset_hook_caller(hook_name, remove_plugins=others)


def call_per_plugin(hook_name: str, kwargs: Mapping[str, Any]
                     ) -> Iterable[tuple[PluginSource, list[Any] | None, BaseException | None]]:
    """Call a hook plugin by plugin, so a failure is isolated and attributed.

    Each call goes through pluggy restricted to one plugin, so that plugin's own
    ``@hookimpl(wrapper=True)`` implementations still wrap its plain ones.
    """
    for name, plugin in plugins_in_order():
        caller = caller_for(hook_name, plugin)
        if caller is None:
            continue
        try:
            result = caller(**kwargs)
        except Exception as exc:
            yield source_for(name), None, exc
        else:
            yield source_for(name), result, None
