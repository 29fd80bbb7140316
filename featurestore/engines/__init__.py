"""Engines: what runs ingest, materialize and point-in-time retrieval over a store's data.

An engine plugs in like a transform: a plugin implements the ``register_engines(register)``
hook and calls ``register(engine)`` with an object that has the ``Engine`` methods. The core
registers two through that same hook, from built-in plugin modules: ``polars`` (the default,
``featurestore.engines.polars_engine``) and ``spark`` (``featurestore.engines.spark``, only when
``pyspark`` imports: ``pip install 'featurestore[spark]'``).

Which engine runs a call: the ``engine=`` argument (``--engine`` on the command line), else the
``FEATURESTORE_ENGINE`` environment variable, else ``polars``. Engine names are first come,
first served in the plugins' load order (``featurestore.plugins``); a later plugin registering a
name already taken is reported and skipped, so installing a plugin never changes what an
existing engine name runs. Every engine reads and writes the same artifact layout and the same
registry, so a store written by one engine is read by any other.

``polars`` is part of the core: when ``FEATURESTORE_PLUGINS`` leaves its module out, the store
still has it (a store that cannot ingest is no use), listed as supplied by the core.
"""

from __future__ import annotations

import difflib
import importlib
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from featurestore.errors import PluginError

if TYPE_CHECKING:
    from datetime import timedelta

    import polars as pl

    from featurestore.artifacts import WrittenArtifact
    from featurestore.materialize import MaterializeResult
    from featurestore.retrieval import ViewFrame
    from featurestore.store import FeatureStore

ENGINE_ENV = "FEATURESTORE_ENGINE"
DEFAULT_ENGINE = "polars"
POLARS_MODULE = "featurestore.engines.polars_engine"
ENGINE_NAME_RE = re.compile(r"[a-z][a-z0-9_]*\Z")

__all__ = ["DEFAULT_ENGINE", "ENGINE_ENV", "Engine", "RegisteredEngine", "engine_name",
           "get_engine", "get_engines"]


@runtime_checkable
class Engine(Protocol):
    """What the store delegates to an engine. Every method keeps the store's contract
    (``docs/semantics.md``): the registry, the artifact layout and the results are the same
    whichever engine runs."""

    name: str

    def read_source(self, store: FeatureStore, source: str) -> Any:
        """A source's rows in store layout (keys, ``event_timestamp``, ``available_at``, the
        other columns), validated and causally filled, sorted by (keys, event time): a frame
        ``write_artifact`` accepts."""

    def write_artifact(self, root: Path, relpath: str, frame: Any, *, compression: str,
                       time_column: str | None) -> WrittenArtifact:
        """Write ``frame`` as the artifact ``root/relpath`` atomically (same layout as every
        engine) and describe it for the registry."""

    def materialize(self, store: FeatureStore, views: Sequence[str] | None, *, verify: bool,
                    samples: int, budget: float | None, force: bool, progress: Any,
                    strict: bool) -> list[MaterializeResult]:
        """``featurestore.materialize.materialize`` on this engine."""

    def point_in_time_join(self, query: pl.DataFrame, views: Sequence[ViewFrame],
                           files: Sequence[Sequence[Path]], *, cutoff: str, inclusive: bool,
                           ttl: timedelta | None, cutoff_timezone: str | None,
                           with_availability: bool) -> pl.DataFrame:
        """``featurestore.retrieval.point_in_time_join`` on this engine; ``files[i]`` are the
        Parquet file(s) of ``views[i]``'s artifact in row order
        (``featurestore.artifacts.artifact_files``: one file, or a bucketed artifact's parts);
        the tier guard and every registry check ran before."""


@dataclass(frozen=True)
class RegisteredEngine:
    """An engine together with the plugin that registered it."""

    engine: Any
    plugin: str
    distribution: str | None
    version: str | None
    builtin: bool

    @property
    def name(self) -> str:
        return str(self.engine.name)

    @property
    def label(self) -> str:
        from featurestore.plugin_loading import PluginSource

        return PluginSource(self.plugin, self.distribution, self.version).label


_METHODS = ("read_source", "write_artifact", "materialize", "point_in_time_join")


def _engine_problem(obj: object) -> str | None:
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not ENGINE_NAME_RE.match(name):
        return (f"registered an engine named {name!r}: a name is lower case letters, digits and "
                "underscores, starting with a letter ([a-z][a-z0-9_]*)")
    missing = [m for m in _METHODS if not callable(getattr(obj, m, None))]
    if missing:
        return (f"registered engine {name!r} without the method(s) {', '.join(missing)}; an "
                f"engine has {', '.join(_METHODS)} (featurestore.engines.Engine)")
    return None


_cache: dict[str, Any] = {}


def get_engines() -> dict[str, RegisteredEngine]:
    """Every registered engine by name (a copy), loading plugins first if needed.

    Rebuilt whenever the set of registered plugins changes, like the transform registry.
    """
    from featurestore import plugin_loading as pl_
    from featurestore.plugin_transforms import _registry_key, _same_plugins

    with pl_.lock:
        pl_.load_plugins()
        key = _registry_key()
        if _same_plugins(_cache.get("key"), key):
            return dict(_cache["engines"])
        engines: dict[str, RegisteredEngine] = {}
        problems: list[pl_.PluginProblem] = []
        for name, plugin in pl_.plugins_in_order():
            caller = pl_.caller_for("register_engines", plugin)
            if caller is None:
                continue
            source = pl_.source_for(name)
            pending: list[Any] = []
            try:
                caller(register=pending.append)
            except Exception as exc:
                problems.append(pl_.problem(source, f"raised {pl_.describe_exception(exc)} in "
                                                    "register_engines; none of its engines "
                                                    "were registered"))
                continue
            for obj in pending:
                why = _engine_problem(obj)
                if why is None and obj.name in engines:
                    first = engines[obj.name]
                    why = (f"registered engine {obj.name!r}, a name plugin {first.label} "
                           "already registered; kept that one, skipped this one")
                if why is not None:
                    problems.append(pl_.problem(source, why))
                    continue
                engines[obj.name] = RegisteredEngine(obj, source.name, source.distribution,
                                                     source.version, source.builtin)
        if DEFAULT_ENGINE not in engines:  # its plugin module was deselected: still the core's
            module = importlib.import_module(POLARS_MODULE)
            engines[DEFAULT_ENGINE] = RegisteredEngine(
                module.ENGINE, POLARS_MODULE, pl_.CORE_DISTRIBUTION, pl_._core_version(), True)
        pl_.warn_once(problems)
        _cache.update(key=key, engines=dict(sorted(engines.items())), problems=problems)
        return dict(_cache["engines"])


def engine_problems() -> list[Any]:
    """The problems found registering engines (each a ``PluginProblem``)."""
    get_engines()
    return list(_cache.get("problems", []))


def engine_name(engine: str | None = None) -> str:
    """The engine a call runs on: ``engine``, else ``FEATURESTORE_ENGINE``, else ``polars``."""
    return engine or os.environ.get(ENGINE_ENV, "").strip() or DEFAULT_ENGINE


def get_engine(engine: str | None = None) -> Any:
    """The engine called ``engine`` (see ``engine_name``); a ``PluginError`` naming the
    available engines and the plugin that supplies each when there is none by that name."""
    name = engine_name(engine)
    engines = get_engines()
    if name in engines:
        return engines[name].engine
    guess = difflib.get_close_matches(name, list(engines), n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    where = f" (from {ENGINE_ENV})" if not engine else ""
    available = "; ".join(f"{n} from plugin {r.label}" for n, r in engines.items())
    extra = ("" if "spark" in engines else
             "; the spark engine needs pyspark: pip install 'featurestore[spark]'")
    raise PluginError(f"unknown engine {name!r}{where}{hint}; available engines: "
                      f"{available}{extra}")
