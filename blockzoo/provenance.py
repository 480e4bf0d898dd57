"""Where a model's components come from: the plugins a saved folder records, imported again on load."""
from __future__ import annotations

import importlib
from importlib.metadata import entry_points, packages_distributions
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from blockzoo.plugins import ENTRY_POINT_GROUP
from blockzoo.registry import REGISTRIES

PLUGINS_FILE = "plugins.yaml"


def _builtin(module: str) -> bool:
    return module == "blockzoo" or module.startswith("blockzoo.")


def plugin_records(model: nn.Module) -> list[dict[str, Any]]:
    """One record per plugin module the model's components come from: the module, the components
    (``"<kind> <name>"``) and, when known, the pip distribution and entry point that provide it."""
    by_class = {}
    for kind, reg in REGISTRIES.items():
        for name in reg.names():
            by_class.setdefault(reg.get(name).cls, []).append(f"{kind} {name}")
    used: dict[str, set[str]] = {}
    for module in model.modules():
        cls = type(module)
        if cls in by_class and not _builtin(cls.__module__):
            used.setdefault(cls.__module__, set()).update(by_class[cls])
    return [{"module": m, "components": sorted(c), **_source(m)} for m, c in sorted(used.items())]


def _source(module: str) -> dict[str, str]:
    """The distribution (and entry point) that installs ``module``, when one is known."""
    top = module.split(".")[0]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.module.split(".")[0] == top and ep.dist is not None:
            return {"distribution": ep.dist.name, "entry_point": ep.name}
    dists = packages_distributions().get(top)
    return {"distribution": dists[0]} if dists else {}


def write_plugins(model: nn.Module, folder: Path) -> None:
    """``folder/plugins.yaml`` when the model uses plugin components (nothing otherwise)."""
    records = plugin_records(model)
    if records:
        (folder / PLUGINS_FILE).write_text(yaml.safe_dump({"plugins": records}, sort_keys=False))


def import_plugins(folder: Path) -> None:
    """Import the plugins ``folder/plugins.yaml`` names whose components are not registered yet; raise
    ImportError saying what to install when one cannot be imported."""
    path = folder / PLUGINS_FILE
    if not path.is_file():
        return
    missing = []
    for record in yaml.safe_load(path.read_text())["plugins"]:
        if all(_registered(c) for c in record["components"]):
            continue
        try:
            importlib.import_module(record["module"])
        except ModuleNotFoundError as e:
            if not (e.name and record["module"].startswith(e.name)):
                raise  # the plugin is there but imports something missing: its own error says what
            missing.append(_how_to_get(record))
    if missing:
        raise ImportError(f"{folder} needs plugin components that are not installed:\n  " + "\n  ".join(missing))


def _registered(component: str) -> bool:
    kind, name = component.split(" ", 1)
    return kind in REGISTRIES and name in REGISTRIES[kind]


def _how_to_get(record: dict[str, Any]) -> str:
    what = ", ".join(record["components"])
    module = record["module"]
    if module == "__main__":
        return f"{what}: defined in the script that saved it; import or define it before blockzoo.load"
    where = f"{what}: from module {module}"
    if "distribution" in record:
        return f"{where} (pip package {record['distribution']!r}): install it, or put {module} on PYTHONPATH"
    return f"{where}: put it on PYTHONPATH (or install the package that provides it)"
