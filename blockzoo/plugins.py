"""Loading user components: ``plugins=[my_pkg.module]`` (or ``plugins=my_pkg.module``) and the ``blockzoo.plugins``
entry points.

A plugin is a module that registers components when imported, so naming one in a config or on the command
line runs its code. A module named explicitly must import; an installed entry point that fails to import
only warns (:class:`BlockzooPluginWarning`, once) and leaves the other plugins and any run that does not use
it unaffected. ``BLOCKZOO_ENTRY_POINTS`` (comma-separated names; empty: none) limits which entry points load.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Iterator

import yaml

from blockzoo.config import ConfigError
from blockzoo.ops.backend import BlockzooWarning

ENTRY_POINT_GROUP = "blockzoo.plugins"
SELECT_ENV = "BLOCKZOO_ENTRY_POINTS"

_entry_points_loaded = False
_failures: dict[str, str] = {}  # entry point label -> why it failed to import
_loading: list[str] = []  # labels of the plugins being imported (innermost last)


class BlockzooPluginWarning(BlockzooWarning):
    """An installed plugin failed to import; its components are not registered."""


def load_plugins(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Import plugin modules (which register their components) and, once per process, the entry points."""
    load_entry_points()
    for module in modules:
        import_module(module)


def load_entry_points() -> None:
    """Import every selected ``blockzoo.plugins`` entry point once; a failure warns and the rest still load."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in selected_entry_points():
        load_entry_point(ep)


def selected_entry_points() -> list[EntryPoint]:
    """The group's entry points, limited to the names in ``BLOCKZOO_ENTRY_POINTS`` when it is set."""
    found = list(entry_points(group=ENTRY_POINT_GROUP))
    selection = os.environ.get(SELECT_ENV)
    if selection is None:
        return found
    names = {n.strip() for n in selection.split(",") if n.strip()}
    return [ep for ep in found if ep.name in names]


def load_entry_point(ep: EntryPoint) -> None:
    """Import one entry point; on failure record it and warn naming the entry point and the error."""
    label = f"entry point {ep.name!r} ({ep.value})"
    try:
        with loading(f"plugin {label}"):
            ep.load()
    except Exception as e:  # an installed plugin must not stop runs that do not use it
        _failures[label] = f"{type(e).__name__}: {e}"
        warnings.warn(f"blockzoo plugin {label} failed to import and is skipped: {_failures[label]}",
                      BlockzooPluginWarning, stacklevel=2)


def import_module(module: str) -> None:
    """Import a plugin module named in a config or override; a missing module raises naming it."""
    try:
        with loading(f"plugin module {module!r}"):
            importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name and module.startswith(e.name):
            raise ConfigError(f"plugins: module {module!r} not found (is it installed or on PYTHONPATH?)") from None
        raise


@contextlib.contextmanager
def loading(label: str) -> Iterator[None]:
    """Mark ``label`` as the plugin being imported (registration errors name it)."""
    _loading.append(label)
    try:
        yield
    finally:
        _loading.pop()


def current_plugin() -> str | None:
    """The plugin being imported right now, e.g. "plugin module 'my_pkg.gated'", or None."""
    return _loading[-1] if _loading else None


def failed_plugins() -> dict[str, str]:
    """Entry points that failed to import, with their errors (for 'unknown component' messages)."""
    return dict(_failures)


def plugin_modules(value: Any) -> list[str]:
    """The module names of a config's ``plugins`` value: a list of names or a single name."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [str(m).strip() for m in items if str(m).strip()]


def plugin_overrides(overrides: list[str]) -> list[str]:
    """Module names given by ``plugins=...`` / ``+plugins=...`` overrides (a list or a single name)."""
    modules: list[str] = []
    for o in overrides:
        key, _, value = o.partition("=")
        if key.lstrip("+~") != "plugins" or not value:
            continue
        try:
            modules.extend(plugin_modules(yaml.safe_load(value if value.startswith("[") else f"[{value}]")))
        except yaml.YAMLError:
            continue  # not a list: composing the config reports the override's syntax error
    return modules
