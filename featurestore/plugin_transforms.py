"""The transform registry: every plugin's ``register_transforms``, checked and named once."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

from featurestore.errors import PluginError
from featurestore.plugin_loading import (
    TRANSFORM_NAME_RE,
    PluginProblem,
    PluginSource,
    RegisteredTransform,
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


def _transform_problem(obj: object) -> str | None:
    """Why ``obj`` is not an acceptable transform, or None."""
    # Here, not at module level: featurestore.transforms loads polars, which the command line
    # does not need to list plugin commands.
    from featurestore.transforms import SCOPES, Transform

    default_group_columns = Transform.__dataclass_fields__["group_columns"].default
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
        if obj.group_columns is default_group_columns:
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


def build_registry() -> None:
    """(Re)build the transform registry when the set of registered plugins changed."""
    key = _registry_key()
    if _same_plugins(state.registry_key, key):
        return
    registry: dict[str, RegisteredTransform] = {}
    problems: list[PluginProblem] = []
    for source, pending in _collect_registrations():
        if isinstance(pending, BaseException):
            problems.append(problem(source, f"raised {describe_exception(pending)} in "
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
                problems.append(problem(source, why))
                continue
            own.add(obj.name)
            registry[obj.name] = RegisteredTransform(
                obj, source.name, source.distribution, source.version, source.builtin)
    state.registry = dict(sorted(registry.items()))
    state.registry_problems = problems
    state.registry_key = key
    warn_once(problems)


def _collect_registrations() -> Iterable[tuple[PluginSource, list[Any] | BaseException]]:
    for name, plugin in plugins_in_order():
        caller = caller_for("register_transforms", plugin)
        if caller is None:
            continue
        pending: list[Any] = []
        try:
            caller(register=pending.append)
        except Exception as exc:
            yield source_for(name), exc
        else:
            yield source_for(name), pending


def get_transforms() -> dict[str, RegisteredTransform]:
    """Every registered transform by name (a copy), loading plugins first if needed."""
    with lock:
        load_plugins()
        build_registry()
        return dict(state.registry)


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
