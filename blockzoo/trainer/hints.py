"""'Did you mean' hints for command-line overrides that Hydra rejected (computed only after a failure)."""
from __future__ import annotations

from importlib.resources import files

from omegaconf import DictConfig, OmegaConf

from blockzoo.config import CONFIG_MODULE, compose
from blockzoo.registry import REGISTRIES
from blockzoo.suggest import close_matches

GROUPS = ("model", "attention", "feedforward", "norm", "embedding", "task", "trainer")


def group_options(group: str) -> list[str]:
    """What ``group=<name>`` accepts: the shipped presets plus registered components."""
    presets = [p.name.removesuffix(".yaml") for p in files(CONFIG_MODULE).joinpath(group).iterdir()
               if p.name.endswith(".yaml")]
    registered = REGISTRIES[group].names() if group in REGISTRIES else []
    return sorted(set(presets) | set(registered))


def override_hints(overrides: list[str]) -> list[str]:
    """One line per override naming an unknown group option or key, with the closest valid names."""
    hints, selections = [], []
    parsed = [(o.lstrip("+~").partition("=")[0], o.partition("=")[2]) for o in overrides if "=" in o]
    for key, value in parsed:
        if key in GROUPS:
            options = group_options(key)
            bad = [v for v in value.split(",") if v not in options]
            hints += [f"{key}={v}: no such option{close_matches(v, options)}" for v in bad]
            if not bad and "," not in value:
                selections.append(f"{key}={value}")
    try:
        cfg = compose(selections)
    except Exception:  # the selection itself is broken; the hints above say why
        return hints
    for key, _ in parsed:
        parts = key.split(".")
        if parts[0] not in GROUPS or len(parts) < 2:
            continue
        node = cfg[parts[0]]
        for i, part in enumerate(parts[1:], start=1):
            if not isinstance(node, DictConfig):
                break
            if part not in node:
                hints.append(f"{key}: no key {part!r} in {'.'.join(parts[:i])}{close_matches(part, list(node))}")
                break
            node = OmegaConf.select(node, part, throw_on_missing=False)
    return hints
