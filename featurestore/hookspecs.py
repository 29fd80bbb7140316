"""The hooks a featurestore plugin can implement. One function per hook.

Plugins mark implementations with ``featurestore.hookspecs.hookimpl`` (re-exported as
``featurestore.hookimpl``) and are discovered from the ``featurestore`` entry-point group.
"""

from __future__ import annotations

from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("featurestore")
hookimpl = pluggy.HookimplMarker("featurestore")


@hookspec
def register_transforms(register: Any) -> None:
    """Call ``register(transform)`` once per ``featurestore.transforms.Transform``; returns nothing."""


@hookspec
def validate_materialized(view: str, transform: str, params: Any, frame: Any) -> Any:
    """Return a list of problem strings about a materialized ``polars.DataFrame`` (empty if fine)."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add ``click`` commands to the ``featurestore`` CLI group ``cli``; returns nothing."""


@hookspec
def register_engines(register: Any) -> None:
    """Call ``register(engine)`` once per ``featurestore.engines.Engine``; returns nothing."""
