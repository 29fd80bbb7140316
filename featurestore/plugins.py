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

The machinery lives in ``plugin_loading`` (discovery, load state), ``plugin_transforms`` (the
transform registry) and ``plugin_hooks`` (reporting, the other hooks); this module is their
public face.
"""

from __future__ import annotations

from featurestore.plugin_hooks import (
    call_register_commands,
    call_validate_materialized,
    plugin_info,
    plugin_problems,
)
from featurestore.plugin_loading import (
    CORE_DISTRIBUTION,
    DEFAULT_PLUGINS,
    ENTRY_POINT_GROUP,
    ENV_VAR,
    HOOK_NAMES,
    TRANSFORM_NAME_RE,
    PluginProblem,
    PluginSource,
    PluginWarning,
    RegisteredTransform,
    get_plugin_manager,
    load_plugins,
    pm,
    reset_plugins,
)
from featurestore.plugin_transforms import get_transform, get_transforms

__all__ = [
    "CORE_DISTRIBUTION",
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "HOOK_NAMES",
    "TRANSFORM_NAME_RE",
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
