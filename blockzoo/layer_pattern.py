"""Per-layer patterns: which attention and feedforward each block of a stack gets.

A model's ``attention_pattern`` is a list repeated over its layers (its length must divide the layer count).
An entry is an attention name (``local``: a registered attention or a shipped preset), or a mapping with an
``attention`` and/or a ``feedforward`` part, each a name or a mapping of fields (with or without ``name``);
``null`` or ``{}`` is the model's own layer. A part's config is built in three layers, later ones winning:

1. the named component's shipped preset (or its defaults) -- or, for the model's own component, the
   model's part as it is;
2. the fields the model's part sets away from its own preset, where the named component has them
   (``attention.dropout=0.1`` reaches every layer whose attention has a dropout);
3. the entry's own fields.

:func:`resolve_pattern` validates every entry (errors name ``model.attention_pattern[i]...`` and the closest
valid names); :func:`expand` repeats it over a stack; :func:`pattern_lines` shows it.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from blockzoo.config import ConfigError, config_to_dict
from blockzoo.preset_files import names, preset_values
from blockzoo.registry import registry
from blockzoo.suggest import close_matches

PARTS = ("attention", "feedforward")
SET_BY_MODEL = "set by the model"


@dataclass(frozen=True)
class Layer:
    """One block's parts: the full attention and feedforward configs (plain dicts with ``name``)."""

    attention: dict[str, Any]
    feedforward: dict[str, Any]

    def as_entry(self) -> dict[str, Any]:
        """This layer as a pattern entry that resolves to itself."""
        return {"attention": dict(self.attention), "feedforward": dict(self.feedforward)}


def resolve_pattern(pattern: Any, attention: Any, feedforward: Any,
                    path: str = "model.attention_pattern") -> list[Layer] | None:
    """The validated layers of one period of ``pattern`` given the model's ``attention`` and ``feedforward``
    parts (name or mapping); None when there is no pattern. Raises ConfigError naming the entry's path."""
    pattern = config_to_dict(pattern)
    if pattern is None:
        return None
    if not isinstance(pattern, list):
        raise ConfigError(f"{path}: expected a list of per-layer entries (attention names or mappings with "
                          f"'attention' / 'feedforward'), got {pattern!r}")
    if not pattern:
        raise ConfigError(f"{path}: an empty pattern; leave it null for the same layer everywhere")
    model_parts = {kind: _model_part(kind, part) for kind, part in zip(PARTS, (attention, feedforward))}
    return [_layer(entry, model_parts, f"{path}[{i}]") for i, entry in enumerate(pattern)]


def expand(layers: list[Layer], count: int, path: str = "model.attention_pattern",
           count_path: str = "model.num_layers") -> list[Layer]:
    """``layers`` repeated over ``count`` blocks; its length must divide ``count``."""
    if count % len(layers):
        raise ConfigError(f"{path} has {len(layers)} entries, which does not divide {count_path}={count}: the "
                          f"pattern repeats over the layers (lengths that divide it: {_divisors(count)})")
    return [layers[i % len(layers)] for i in range(count)]


@dataclass(frozen=True)
class Stack:
    """A block stack's pattern: the config key it comes from, one period of layers, and the stack's depth."""

    key: str
    period: list[Layer]
    count: int

    @property
    def layers(self) -> list[Layer]:
        """One :class:`Layer` per block."""
        return [self.period[i % len(self.period)] for i in range(self.count)]

    def lines(self, stack: str = "layers") -> list[str]:
        """The pattern as text (:func:`pattern_lines`)."""
        return pattern_lines(self.period, self.count, stack)


def model_stacks(model: dict[str, Any], attention: Any = None, feedforward: Any = None,
                 path: str = "model") -> dict[str, Stack | None]:
    """The pattern of each block stack of a model config (plain dict): ``{"layers": ...}``, or for an
    encoder-decoder ``{"encoder": ..., "decoder": ...}``; None for a stack without a pattern (every block the
    same). ``attention`` / ``feedforward`` stand in for parts the model leaves unset (the app's groups)."""
    attention = model.get("attention") or attention
    feedforward = model.get("feedforward") or feedforward
    num_layers = model.get("num_layers", 4)

    def stack(key: str, count: int, count_key: str) -> Stack | None:
        period = resolve_pattern(model.get(key), attention, feedforward, f"{path}.{key}")
        if period is None:
            return None
        expand(period, count, f"{path}.{key}", f"{path}.{count_key}")
        return Stack(key, period, count)

    if "num_decoder_layers" not in model:
        return {"layers": stack("attention_pattern", num_layers, "num_layers")}
    key = "decoder_attention_pattern" if model.get("decoder_attention_pattern") is not None else "attention_pattern"
    decoder = (stack(key, model["num_decoder_layers"], "num_decoder_layers") if model["num_decoder_layers"]
               else stack(key, num_layers, "num_layers"))
    return {"encoder": stack("attention_pattern", num_layers, "num_layers"), "decoder": decoder}


def check_causal(layers: list[Layer], path: str = "model.attention_pattern") -> None:
    """Refuse an entry whose attention cannot honour the causal masking a decoder needs."""
    for i, layer in enumerate(layers):
        cls = registry("attention").get(layer.attention["name"]).cls
        if not getattr(cls, "supports_causal", True):
            raise ConfigError(f"{path}[{i}].attention: {layer.attention['name']!r} cannot honour causal masking, "
                              "which this model's stack needs")


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def _model_part(kind: str, part: Any) -> dict[str, Any]:
    data = config_to_dict(part)
    if data is None:
        data = {"name": "scaled_dot_product" if kind == "attention" else "mlp"}
    elif isinstance(data, str):
        data = _named(kind, data, f"model.{kind}")
    return _full(kind, data, f"model.{kind}")


def _full(kind: str, data: dict[str, Any], path: str) -> dict[str, Any]:
    """``data`` validated against its component's config, as a plain dict with every field."""
    return config_to_dict(registry(kind).validate(dict(data), path))


def _named(kind: str, name: Any, path: str) -> dict[str, Any]:
    """The values a name means: its shipped preset, or the registered component's defaults."""
    if not isinstance(name, str):
        raise ConfigError(f"{path}: expected a {kind} name, got {name!r}")
    values = preset_values(kind, name)
    if values is not None:
        return values
    if name in registry(kind):
        return {"name": name}
    known = names(kind)
    raise ConfigError(f"{path}: unknown {kind} {name!r}{close_matches(name, known)} (known: {', '.join(known)})")


def _layer(entry: Any, model_parts: dict[str, dict[str, Any]], path: str) -> Layer:
    entry = config_to_dict(entry)
    if entry is None:
        entry = {}
    elif isinstance(entry, str):
        if entry in PARTS:
            raise ConfigError(f"{path}={entry!r}: an entry is an attention name or a mapping such as "
                              f"{{{entry}: {{name: ...}}}}")
        _named("attention", entry, path)  # an unknown name is reported at the entry's own path
        entry = {"attention": entry}
    if not isinstance(entry, dict):
        raise ConfigError(f"{path}: expected an attention name or a mapping with 'attention' / 'feedforward', "
                          f"got {entry!r}")
    for key in entry:
        if key not in PARTS:
            raise ConfigError(f"{path}.{key}: unknown key{close_matches(str(key), list(PARTS))} "
                              f"(an entry has: {', '.join(PARTS)})")
    parts = {kind: _part(kind, entry.get(kind), model_parts[kind], f"{path}.{kind}") for kind in PARTS}
    return Layer(**parts)


def _part(kind: str, given: Any, model_part: dict[str, Any], path: str) -> dict[str, Any]:
    if given is None:
        return model_part
    if isinstance(given, str):
        given = {"name": given}
    if not isinstance(given, dict):
        raise ConfigError(f"{path}: expected a {kind} name or a mapping of its fields, got {given!r}")
    name = given.get("name", model_part["name"])
    if name == model_part["name"]:
        base = model_part
    else:
        named = _named(kind, name, f"{path}.name")
        base = {**named, **_carried(kind, model_part, named["name"])}
    return _full(kind, {**base, **given, "name": base["name"]}, path)


def _carried(kind: str, model_part: dict[str, Any], component: str) -> dict[str, Any]:
    """The fields the model's part sets away from its own preset (or defaults) that ``component`` also has."""
    try:
        reference = _full(kind, _named(kind, model_part["name"], f"model.{kind}"), f"model.{kind}")
    except ConfigError:  # a component whose config has required fields: every shared field carries
        reference = {}
    fields = {f.name for f in dataclasses.fields(registry(kind).get(component).config_cls)
              if f.name != "name" and f.metadata.get("help") != SET_BY_MODEL}
    return {k: v for k, v in model_part.items() if k in fields and v != reference.get(k)}


# ---------------------------------------------------------------------------------------------
# Showing a pattern
# ---------------------------------------------------------------------------------------------
def part_summary(kind: str, part: dict[str, Any]) -> str:
    """``local(window_size=256)``: a part's name and the fields it sets away from its component's defaults
    (fields the model sets, such as ``num_heads``, left out)."""
    try:
        defaults = _full(kind, {"name": part["name"]}, kind)
    except ConfigError:  # a component with required fields has no defaults to compare with
        defaults = {}
    skip = {f.name for f in dataclasses.fields(registry(kind).get(part["name"]).config_cls)
            if f.metadata.get("help") == SET_BY_MODEL}
    changed = [f"{k}={v!r}" for k, v in part.items() if k != "name" and k not in skip and v != defaults.get(k)]
    return part["name"] + (f"({', '.join(changed)})" if changed else "")


def pattern_lines(layers: list[Layer], count: int, stack: str = "layers") -> list[str]:
    """One line per pattern entry: which of the ``count`` blocks get it, and its attention and feedforward."""
    lines = [f"{stack}: a pattern of {len(layers)} repeated over {count} blocks" if len(layers) > 1
             else f"{stack}: the same block {count} times"]
    for i, layer in enumerate(layers):
        blocks = ", ".join(str(b) for b in range(i, count, len(layers)))
        lines.append(f"  [{i}] blocks {blocks}: attention {part_summary('attention', layer.attention)}, "
                     f"feedforward {part_summary('feedforward', layer.feedforward)}")
    return lines


def stacks_lines(stacks: dict[str, Stack | None]) -> list[str]:
    """The lines of every stack that has a pattern (none when every block of every stack is the same)."""
    return [line for name, stack in stacks.items() if stack is not None for line in stack.lines(name)]
