"""Presets and registered names as one namespace.

A shipped preset (``blockzoo/configs/<kind>/<name>.yaml``) extends a registered component's schema
(``defaults: [/schema/<kind>/<component>@_here_]``) with its own values; ``attention=local`` on the command
line means the preset. Here a name means the same thing from Python: :func:`resolve` turns a preset name, a
preset file or a registered name into the config the command line would use, inside the app config that
supplies what a model takes from elsewhere (its parts from their groups, its vocabulary from the task).
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from blockzoo.composition import compose
from blockzoo.config import CONFIG_MODULE
from blockzoo.preset_files import SCHEMA_DEFAULT, names, preset_file, preset_names, read_preset  # noqa: F401
from blockzoo.registry import _failed_plugins_note
from blockzoo.suggest import close_matches


def is_yaml(source: Any) -> bool:
    return isinstance(source, (str, Path)) and str(source).endswith((".yaml", ".yml"))


def app_with(kind: str, source: Any) -> dict[str, Any] | None:
    """The resolved app config (plain dict) the command line would use with ``kind`` set to ``source``, a
    preset or registered name or a preset file; None for anything else (a config, a plain YAML file) or
    for a kind that is no config group (block)."""
    if not has_group(kind) or not isinstance(source, (str, Path)):
        return None
    if is_yaml(source):
        return _app_with_file(kind, source)
    known = names(kind)
    if source not in known:
        raise ValueError(f"unknown {kind} {source!r}{close_matches(str(source), known)} (known: {', '.join(known)})"
                         f"{_failed_plugins_note()}")
    return OmegaConf.to_container(compose([f"{kind}={source}"]), resolve=True)


def _app_with_file(kind: str, path: str | Path) -> dict[str, Any] | None:
    found = read_preset(path)
    if found is None:
        return None
    if found[0] != kind:
        raise ValueError(f"{path} is a {found[0]} preset, not a {kind}")
    app = OmegaConf.to_container(compose([]), resolve=False)
    app[kind] = found[1]
    return OmegaConf.to_container(OmegaConf.create(app), resolve=True)


def has_group(kind: str) -> bool:
    """Whether ``kind`` is a config group (selectable as ``kind=<name>``)."""
    return files(CONFIG_MODULE).joinpath(kind).is_dir()
