"""The shipped preset files (``blockzoo/configs/<kind>/<name>.yaml``) read as plain values, without composing.

Kept apart from :mod:`blockzoo.presets` (which composes the app config) so that composition itself can read a
preset: the per-layer pattern of a model names attention and feedforward presets.
"""
from __future__ import annotations

import re
from importlib.resources import files
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from blockzoo.config import CONFIG_MODULE
from blockzoo.registry import registry

SCHEMA_DEFAULT = re.compile(r"^/?schema/(?P<kind>\w+)/(?P<name>\w+)@_here_$")


def preset_file(kind: str, name: str) -> Path | None:
    """The shipped preset ``name`` of ``kind``, or None."""
    path = files(CONFIG_MODULE).joinpath(kind, f"{name}.yaml")
    return Path(str(path)) if path.is_file() else None


def preset_names(kind: str) -> list[str]:
    """Names of the shipped presets of ``kind`` (a group folder of ``blockzoo/configs``)."""
    folder = files(CONFIG_MODULE).joinpath(kind)
    if not folder.is_dir():
        return []
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def names(kind: str) -> list[str]:
    """Every name ``kind`` accepts: registered components and shipped presets."""
    return sorted(set(registry(kind).names()) | set(preset_names(kind)))


def read_preset(path: str | Path) -> tuple[str, dict[str, Any]] | None:
    """(kind, values) of a preset file (one whose defaults extend ``/schema/<kind>/<component>``), with
    ``name`` set to the component; None for any other YAML file. Interpolations stay unresolved."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file not found: {path}")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    defaults = data.pop("defaults", None) if isinstance(data, dict) else None
    matches = [SCHEMA_DEFAULT.match(d) for d in defaults or [] if isinstance(d, str)]
    found = next((m for m in matches if m), None)
    if found is None:
        return None
    return found["kind"], {**data, "name": found["name"]}


def preset_values(kind: str, name: str) -> dict[str, Any] | None:
    """The values of the shipped preset ``name`` of ``kind`` (``name`` set to its component), or None when
    there is no such preset of that kind."""
    path = preset_file(kind, name)
    found = read_preset(path) if path is not None else None
    if found is None or found[0] != kind:
        return None
    return OmegaConf.to_container(OmegaConf.create(found[1]), resolve=True)
