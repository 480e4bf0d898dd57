"""Component registries: register by name, build from a config, list and describe.

One :class:`Registry` per kind of component (attention, feedforward, norm, embedding, block,
model, task). Components register themselves with a dataclass config; registration checks the
class against its kind's :class:`Contract`, and ``build`` validates a user config against the
dataclass before constructing anything.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import inspect
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from omegaconf import MISSING
from torch import nn

from blockzoo.config import (AttentionConfig, BlockConfig, EmbeddingConfig, FeedforwardConfig, ModelConfig, NormConfig,
                             TaskConfig, config_to_dict, store_schema, validate_config)
from blockzoo.plugins import current_plugin, failed_plugins
from blockzoo.suggest import close_matches

T = TypeVar("T")

BASE_CONFIGS = {"attention": AttentionConfig, "feedforward": FeedforwardConfig, "norm": NormConfig,
                "embedding": EmbeddingConfig, "block": BlockConfig, "model": ModelConfig, "task": TaskConfig}
KINDS = tuple(BASE_CONFIGS)


@dataclass(frozen=True)
class Contract:
    """What a registered class of one kind provides: a base class, and methods callable with these arguments."""

    base: type | None
    methods: dict[str, tuple[tuple[str, ...], tuple[str, ...]]]  # name -> (positional args, keyword args)
    expected: str

    def problem(self, obj: Any) -> str | None:
        """None when ``obj`` fulfils the contract, else what is wrong with it."""
        if not inspect.isclass(obj):
            return f"got {_describe(obj)}"
        if self.base is not None and not issubclass(obj, self.base):
            return f"{obj.__qualname__} does not subclass {self.base.__module__}.{self.base.__qualname__}"
        if not _accepts(obj, ("config",), ()):
            return f"{obj.__qualname__}(config) cannot be called with its config"
        for name, (args, kwargs) in self.methods.items():
            method = getattr(obj, name, None)
            if method is None:
                return f"{obj.__qualname__} has no {name}()"
            if method is not nn.Module.forward and not _accepts(method, ("self", *args), kwargs):
                call = _call(name, args, kwargs)
                return f"{obj.__qualname__}.{name}{inspect.signature(method)} cannot be called as {call}"
        return None


def _describe(obj: Any) -> str:
    if inspect.ismodule(obj):
        return f"the module {obj.__name__}"
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"the function {obj.__qualname__}"
    return f"{type(obj).__name__} {obj!r}"


def _accepts(fn: Any, args: tuple[str, ...], kwargs: tuple[str, ...]) -> bool:
    try:
        inspect.signature(fn).bind(*args, **{k: None for k in kwargs})
    except TypeError:
        return False
    except ValueError:  # no signature to read (some builtins): nothing to check
        return True
    return True


def _call(name: str, args: tuple[str, ...], kwargs: tuple[str, ...]) -> str:
    return f"{name}({', '.join([*args, *(f'{k}=...' for k in kwargs)])})"


def _module_contract(kind: str, args: tuple[str, ...], kwargs: tuple[str, ...] = ()) -> Contract:
    return Contract(nn.Module, {"forward": (args, kwargs)},
                    f"a {kind} class: an nn.Module subclass built as cls(config) with {_call('forward', args, kwargs)}")


CONTRACTS = {
    "attention": Contract(nn.Module, {"forward": (("q", "k", "v"), ("mask",))},
                          "an attention class: a subclass of blockzoo.Attention (an nn.Module) built as cls(config) "
                          "with forward(q, k, v, mask=...)"),
    "feedforward": _module_contract("feedforward", ("x",)),
    "norm": _module_contract("norm", ("x",)),
    "embedding": _module_contract("embedding", ("tokens",)),
    "block": _module_contract("block", ("x",)),
    "model": Contract(nn.Module, {"loss": (("batch",), ())},
                      "a model class: an nn.Module subclass built as cls(config) with loss(batch)"),
    "task": Contract(None, {"batch": (("split", "index", "batch_size"), ())},
                     "a task class built as cls(config) with batch(split, index, batch_size)"),
}


@dataclass(frozen=True)
class Entry:
    """A registered component: its name, class and config dataclass."""

    kind: str
    name: str
    cls: type
    config_cls: type


class Registry:
    """Name -> (class, config dataclass) for one kind of component."""

    def __init__(self, kind: str, base_config: type | None = None):
        self.kind = kind
        self.base_config = base_config
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, config_cls: type, *, override: bool = False) -> Callable[[T], T]:
        """Decorator registering ``cls`` under ``name`` with ``config_cls`` as its config."""
        plugin = current_plugin()
        where = f" ({plugin})" if plugin else ""
        if not dataclasses.is_dataclass(config_cls):
            raise TypeError(f"{self.kind} '{name}'{where}: config class {config_cls!r} must be a dataclass")
        if self.base_config is not None and not issubclass(config_cls, self.base_config):
            raise TypeError(
                f"{self.kind} '{name}'{where}: config class {config_cls.__name__} must subclass "
                f"{self.base_config.__name__}"
            )

        def decorator(cls: T) -> T:
            self.check_class(name, cls)
            if name in self._entries and not override:
                taken = self._entries[name].cls
                if taken is not cls and (taken.__module__, taken.__qualname__) != (
                    cls.__module__, cls.__qualname__  # same class re-imported (e.g. plugin reload)
                ):
                    raise ValueError(
                        f"{self.kind} '{name}' is already registered by {taken.__module__}."
                        f"{taken.__qualname__}; pass override=True to replace it"
                    )
            self._entries[name] = Entry(self.kind, name, cls, config_cls)
            store_schema(self.kind, name, config_cls)
            return cls

        return decorator

    def check_class(self, name: str, obj: Any) -> None:
        """Raise TypeError naming the plugin (or module) and what is expected when ``obj`` breaks the contract."""
        contract = CONTRACTS.get(self.kind)
        problem = contract.problem(obj) if contract else None
        if problem:
            origin = current_plugin() or f"in module {getattr(obj, '__module__', None) or '?'}"
            raise TypeError(f"{self.kind} '{name}' ({origin}): expected {contract.expected}; {problem}")

    def get(self, name: str) -> Entry:
        """The entry registered as ``name``; unknown names raise with the closest matches."""
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        try:
            return self._entries[name]
        except KeyError:
            known = sorted(self._entries)
            raise ValueError(
                f"unknown {self.kind} {name!r}{close_matches(name, known)} "
                f"(registered: {', '.join(known) or 'none'}){_failed_plugins_note()}"
            ) from None

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching an fnmatch ``pattern``, sorted."""
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def config(self, cfg: Any, path: str | None = None, **overrides: Any) -> Any:
        """Validate ``cfg`` (name, dict, DictConfig or dataclass) into its config dataclass."""
        path = path or self.kind
        if isinstance(cfg, str):
            cfg = {"name": cfg}
        data = config_to_dict(cfg)
        if not isinstance(data, dict):
            raise TypeError(f"{path}: expected a mapping with a 'name', got {type(cfg).__name__}")
        return self.validate({**data, **overrides}, path)

    def validate(self, data: dict[str, Any], path: str) -> Any:
        """The config dataclass of the component ``data['name']``, validated from the plain dict ``data``."""
        if "name" not in data or data["name"] in (None, "???"):
            raise ValueError(f"{path}: missing 'name' (one of: {', '.join(self.names())})")
        entry = self.get(data["name"])
        config = validate_config(entry.config_cls, data, path)
        check = getattr(entry.cls, "check_config", None)  # what the class refuses of a valid config, e.g. a knob
        if callable(check):
            check(config, path)
        return config

    def build(self, cfg: Any, *, path: str | None = None, **overrides: Any) -> Any:
        """Validate ``cfg`` and construct the component: ``cls(config)``."""
        config = self.config(cfg, path=path, **overrides)
        return self._entries[config.name].cls(config)

    def describe(self, name: str, values: dict[str, Any] | None = None) -> str:
        """Human-readable fields, types, defaults and docstring of a component; ``values`` (a preset's)
        replace the defaults shown."""
        entry = self.get(name)
        doc = inspect.getdoc(entry.cls) or "(no docstring)"
        lines = [f"{self.kind} '{name}': {entry.cls.__module__}.{entry.cls.__qualname__}", "", doc, ""]
        lines.append(f"config {entry.config_cls.__name__}:")
        for f in dataclasses.fields(entry.config_cls):
            if values and f.name in values:
                default = f"= {values[f.name]!r}"
            elif f.default is not dataclasses.MISSING and f.default != MISSING:
                default = f"= {f.default!r}"
            elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
                default = f"= {f.default_factory()!r}"  # type: ignore[misc]
            else:
                default = "(required)"
            typ = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
            help_ = f.metadata.get("help", "")
            lines.append(f"  {f.name}: {typ} {default}" + (f"  # {help_}" if help_ else ""))
        caps = getattr(entry.cls, "capabilities", None)
        if callable(caps):
            lines.append("")
            lines.append("supports: " + ", ".join(f"{k}={v}" for k, v in caps().items()))
        return "\n".join(lines)


def _failed_plugins_note() -> str:
    """'; these plugins failed to import: ...' when some did (the name asked for may be theirs)."""
    failures = failed_plugins()
    if not failures:
        return ""
    return "; these plugins failed to import: " + "; ".join(f"{k}: {v}" for k, v in failures.items())


REGISTRIES: dict[str, Registry] = {kind: Registry(kind, base) for kind, base in BASE_CONFIGS.items()}


def registry(kind: str) -> Registry:
    """The registry for ``kind`` (attention, feedforward, norm, embedding, block, model, task)."""
    try:
        return REGISTRIES[kind]
    except KeyError:
        raise ValueError(f"unknown component kind {kind!r}{close_matches(kind, list(KINDS))}"
                         f" (kinds: {', '.join(KINDS)})") from None


def _register(kind: str) -> Callable[..., Callable[[T], T]]:
    def register(name: str, config_cls: type, *, override: bool = False) -> Callable[[T], T]:
        return REGISTRIES[kind].register(name, config_cls, override=override)

    register.__doc__ = f"Decorator: register a {kind} component under ``name`` with its config dataclass."
    register.__name__ = f"register_{kind}"
    return register


register_attention = _register("attention")
register_feedforward = _register("feedforward")
register_norm = _register("norm")
register_embedding = _register("embedding")
register_block = _register("block")
register_model = _register("model")
register_task = _register("task")


__all__ = ["Registry", "Entry", "REGISTRIES", "registry", "register_attention", "register_feedforward",
           "register_norm", "register_embedding", "register_block", "register_model", "register_task"]
