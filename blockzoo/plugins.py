"""Loading user components: ``+plugins=[my_pkg.module]`` and the ``blockzoo.plugins`` entry points."""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points

ENTRY_POINT_GROUP = "blockzoo.plugins"
_loaded_entry_points = False


def load_plugins(modules: list[str] | tuple[str, ...] = ()) -> None:
    """Import plugin modules (which register their components) and, once, every entry point."""
    global _loaded_entry_points
    if not _loaded_entry_points:
        _loaded_entry_points = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            try:
                ep.load()
            except Exception as e:  # a broken plugin must say so, not vanish
                raise ImportError(f"blockzoo plugin entry point {ep.name!r} ({ep.value}) failed to "
                                  f"load: {type(e).__name__}: {e}") from e
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and module.startswith(e.name):
                raise ValueError(f"plugin module {module!r} not found (is it installed or on "
                                 f"PYTHONPATH?)") from None
            raise
