"""The app's config as the ``blockzoo.train`` CLI composes it, with every override and key checked.

``compose`` fails with a :class:`~blockzoo.config.ConfigError` naming the key and its closest valid names for
an unknown root key or group (``atention=local`` and ``+atention=local`` alike), an unknown group option, a
misspelt key, a value outside its field's constraint, or a root key a preset added. The CLI runs the same
checks before Hydra composes, so both report a mistake the same way.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
from typing import Any, Iterator

import yaml
from hydra.errors import HydraException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from blockzoo.config import (CONFIG_MODULE, AttentionConfig, ConfigError, EmbeddingConfig, FeedforwardConfig,
                             ModelConfig, NormConfig, TaskConfig, TrainerConfig, config_to_dict, validate_config)
from blockzoo.layer_pattern import model_stacks
from blockzoo.plugins import load_plugins, plugin_overrides
from blockzoo.suggest import close_matches

SECTION_CONFIGS = {"model": ModelConfig, "attention": AttentionConfig, "feedforward": FeedforwardConfig,
                   "norm": NormConfig, "embedding": EmbeddingConfig, "task": TaskConfig, "trainer": TrainerConfig}
GROUPS = tuple(SECTION_CONFIGS)
ROOT_KEYS = (*GROUPS, "seed", "plugins")  # the keys of the app's config (blockzoo/configs/config.yaml)
COMPOSE_ERRORS = (HydraException, OmegaConfBaseException, yaml.YAMLError)  # yaml: a preset's syntax error
HYDRA_APPEND_ADVICE = re.compile(r"^To append to your config use \+.*$\n?", re.MULTILINE)


def compose(overrides: list[str] | None = None, config_name: str = "config") -> DictConfig:
    """The config the ``blockzoo.train`` CLI would use for these overrides, checked (see the module doc)."""
    overrides = normalize_overrides(list(overrides or []))
    load_plugins(plugin_overrides(overrides))
    with hydra_initialized():
        return compose_checked(overrides, config_name)


@contextlib.contextmanager
def hydra_initialized() -> Iterator[None]:
    """Hydra initialized with blockzoo's configs, unless it already is (inside the app, or by the caller)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        yield
        return
    with initialize_config_module(CONFIG_MODULE, version_base="1.3"):
        yield


def compose_checked(overrides: list[str], config_name: str = "config") -> DictConfig:
    """Check the overrides, compose (Hydra initialized), then check the result; raise ConfigError."""
    from hydra import compose as hydra_compose

    problems = override_problems(overrides, config_name)
    if problems:
        raise ConfigError("\n".join(problems))
    try:
        cfg = hydra_compose(config_name, overrides=overrides)
    except COMPOSE_ERRORS as e:
        hints = [f"hint: {h}" for h in key_hints(overrides, config_name)]
        raise ConfigError("\n".join([hydra_message(e), *hints])) from None
    check_app_config(cfg)
    return cfg


def hydra_message(error: BaseException) -> str:
    """Hydra's error with its causes, less its "To append to your config use +key=..." advice (every key of the
    app's config is typed, so adding one is never the fix)."""
    parts = [str(error)]
    while error.__cause__ is not None:
        error = error.__cause__
        parts.append(str(error))
    return HYDRA_APPEND_ADVICE.sub("", "\n".join(parts)).strip()


def normalize_overrides(overrides: list[str]) -> list[str]:
    """``+plugins=x`` / ``plugins=x`` -> ``plugins=[x]``: a single plugin name needs no brackets."""
    out = []
    for o in overrides:
        key, eq, value = o.partition("=")
        if eq and key.lstrip("+") == "plugins" and value:
            o = f"plugins={value}" if value.startswith("[") else f"plugins=[{value}]"
        out.append(o)
    return out


# ---------------------------------------------------------------------------------------------
# Before composition: the overrides' root keys and group options
# ---------------------------------------------------------------------------------------------
def override_problems(overrides: list[str], config_name: str = "config") -> list[str]:
    """One line per override naming an unknown root key or group, or an unknown group option (Hydra initialized;
    the groups and options are those of the search path the overrides give, ``hydra.searchpath`` included)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as e:
        return [str(e)]
    loader = GlobalHydra.instance().config_loader()

    def options(group: str, kind: ObjectType = ObjectType.CONFIG) -> list[str]:
        return loader.get_group_options(group, kind, config_name, overrides)

    groups = set(options("", ObjectType.GROUP))
    problems = []
    for o in parsed:
        key = o.key_or_group
        root = re.split(r"[./]", key)[0]
        if root == "hydra":
            continue
        if root not in ROOT_KEYS and root not in groups:
            problems.append(f"{o.input_line}: no key or config group {root!r}{close_matches(root, list(ROOT_KEYS))} "
                            f"(the app's keys: {', '.join(ROOT_KEYS)})")
        elif key in groups and not o.is_delete():
            problems += option_problems(key, override_values(o), options(key))
    return problems


def override_values(override: Any) -> list[str]:
    """The value of an override, or each value of a sweep, as strings."""
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [str(override.value())]


def option_problems(group: str, values: list[str], options: list[str]) -> list[str]:
    """A line per value that is not an option of ``group``."""
    listing = f" (options: {', '.join(options)})"
    return [f"{group}={v}: no such option{close_matches(v, options) or listing}" for v in values if v not in options]


# ---------------------------------------------------------------------------------------------
# After a failed composition: which key of the selected configs was meant
# ---------------------------------------------------------------------------------------------
def key_hints(overrides: list[str], config_name: str = "config") -> list[str]:
    """'did you mean' lines for overrides naming a key missing from the config their groups select."""
    from hydra import compose as hydra_compose

    parsed = [(o.lstrip("+~").partition("=")[0], o) for o in overrides]
    selections = [o for key, o in parsed if (key in GROUPS or key.startswith("hydra.")) and "=" in o and "," not in o]
    try:
        cfg = hydra_compose(config_name, overrides=selections)
    except COMPOSE_ERRORS:  # the selection itself is what failed
        return []
    return [hint for key, _ in parsed if (hint := missing_key_hint(cfg, key))]


def missing_key_hint(cfg: DictConfig, key: str) -> str | None:
    """For ``attention.window_sizee``: "attention.window_sizee: no key 'window_sizee' in attention; did you ...". """
    parts = key.split(".")
    if parts[0] not in GROUPS or len(parts) < 2:
        return None
    node: Any = cfg[parts[0]]
    for i, part in enumerate(parts[1:], start=1):
        if not isinstance(node, DictConfig):
            return None
        if part not in node:
            return f"{key}: no key {part!r} in {'.'.join(parts[:i])}{close_matches(part, list(node))}"
        node = OmegaConf.select(node, part, throw_on_missing=False)
    return None


# ---------------------------------------------------------------------------------------------
# After composition: the result's root keys and values
# ---------------------------------------------------------------------------------------------
def check_app_config(cfg: DictConfig) -> None:
    """Raise ConfigError for a root key the app does not have (from a preset or an override), a value that
    its field's constraint refuses (choices such as ``trainer.backend`` included), or a model's per-layer pattern
    that does not resolve (:mod:`blockzoo.layer_pattern`)."""
    for key in cfg:
        if key not in ROOT_KEYS and key != "hydra":
            raise ConfigError(f"{key}: not a key of the app's config{close_matches(str(key), list(ROOT_KEYS))} "
                              f"(the app's keys: {', '.join(ROOT_KEYS)})")
    for part, base in SECTION_CONFIGS.items():
        node = config_to_dict(cfg.get(part))  # a part may be deleted (~task)
        if isinstance(node, dict):
            check_base_fields(base, node, part)
    model = config_to_dict(cfg.get("model"))
    if isinstance(model, dict):  # the per-layer pattern: its errors before any build
        model_stacks(model, config_to_dict(cfg.get("attention")), config_to_dict(cfg.get("feedforward")))


def check_base_fields(base: type, node: dict[str, Any], path: str) -> None:
    """Validate the fields of ``node`` that the base config class declares (the component's own fields are
    checked when it is built)."""
    names = {f.name for f in dataclasses.fields(base)}
    validate_config(base, {k: v for k, v in node.items() if k in names}, path)


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override list of each job of a multirun sweep (the cartesian product of its choice sweeps); the
    overrides unchanged when they do not parse (composing them reports why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException:
        return [overrides]
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in parsed]
    return [list(job) for job in itertools.product(*choices)]
