"""Library entry points: build, list and describe models and components by name or config; save and load."""
from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_model, save_model

from blockzoo import presets
from blockzoo.config import ModelConfig, config_to_dict
from blockzoo.layer_pattern import model_stacks, stacks_lines
from blockzoo.plugins import load_plugins
from blockzoo.provenance import import_plugins, write_plugins
from blockzoo.registry import registry
from blockzoo.tasks import Task, build_task

MODEL_PARTS = ("attention", "feedforward", "norm", "embedding")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


def build_model(cfg: Any, **overrides: Any) -> torch.nn.Module:
    """Build a model from a name (``"gpt_small"``, a preset or registered model), a preset file, a DictConfig,
    dict, dataclass or YAML path (a model config or a full app config). ``overrides`` set model fields;
    a part given as a name (``attention="local"``) means that preset. A name or preset gets the parts and
    task the command line would use with ``model=<name>``: a vocab_size / num_classes of 0 comes from the task."""
    load_plugins()
    config = model_config(cfg, **overrides)
    return registry("model").get(config.name).cls(config)


def model_config(cfg: Any, **overrides: Any) -> ModelConfig:
    """The validated model dataclass of any form :func:`build_model` accepts: one conversion to a plain dict,
    then one validation."""
    data = presets.app_with("model", cfg) or config_to_dict(cfg)
    if not isinstance(data, dict):
        raise TypeError("expected a model config (name, mapping, DictConfig, dataclass or YAML path), "
                        f"got {type(data).__name__}")
    overrides = {k: presets.app_with(k, v)[k] if k in MODEL_PARTS and isinstance(v, str) else v
                 for k, v in overrides.items()}
    if isinstance(data.get("model"), dict):
        data = _app_model({**data, "model": {**data["model"], **overrides}})
    else:
        data = {**data, **overrides}
    return registry("model").validate(data, "model")


def build(kind: str, name_or_cfg: Any, **overrides: Any) -> Any:
    """Build one component from a name (a preset or registered component), a preset file or a config:
    ``build("attention", "local", window_size=128)``; ``build("model", ...)`` is :func:`build_model`."""
    load_plugins()
    if kind == "model":
        return build_model(name_or_cfg, **overrides)
    app = presets.app_with(kind, name_or_cfg)
    return registry(kind).build(app[kind] if app else name_or_cfg, **overrides)


def list_components(kind: str, pattern: str = "*") -> list[str]:
    """Names ``kind`` accepts (registered components and shipped presets) matching the fnmatch ``pattern``."""
    load_plugins()
    return [n for n in presets.names(kind) if fnmatch.fnmatchcase(n, pattern)]


def list_models(pattern: str = "*") -> list[str]:
    """Model names matching ``pattern``: ``list_models("*lm*")``."""
    return list_components("model", pattern)


def describe(kind: str, name: str) -> str:
    """Fields, types, defaults and docstring of a component; for a preset, with the preset's values."""
    load_plugins()
    reg = registry(kind)
    if presets.preset_file(kind, name) is None:
        return reg.describe(name)
    app = presets.app_with(kind, name)
    values = app[kind]
    text = (f"preset {name!r} (blockzoo/configs/{kind}/{name}.yaml): the values below are the preset's\n"
            + reg.describe(values["name"], values))
    if kind == "model":  # the per-layer pattern, resolved with the default attention and feedforward
        lines = stacks_lines(model_stacks(values, app.get("attention"), app.get("feedforward")))
        if lines:
            text += "\n\n" + "\n".join(lines)
    return text


def _app_model(app: dict[str, Any]) -> dict[str, Any]:
    """The model of a full app config: parts it leaves unset come from their own groups, and a vocab_size /
    num_classes of 0 from the task."""
    model = dict(app["model"])
    for part in MODEL_PARTS:
        if model.get(part) is None and app.get(part) is not None:
            model[part] = app[part]
    if isinstance(app.get("task"), dict) and 0 in (model.get("vocab_size", 1), model.get("num_classes", 1)):
        _size_for_task(model, build_task(app["task"]))
    return model


def size_model_for_task(cfg: Any, task: Task) -> DictConfig:
    """A copy of the app config whose model takes its vocab_size (and num_classes) from the task when 0."""
    data = config_to_dict(cfg)
    _size_for_task(data["model"], task)
    return OmegaConf.create(data)


def _size_for_task(model: dict[str, Any], task: Task) -> None:
    """Fill a plain model config's vocab_size / num_classes of 0 from ``task``; check it fits the task."""
    if model.get("num_classes") == 0:
        if task.num_classes == 0:
            raise ValueError(f"model {model.get('name')!r} is a classifier but task {task.cfg.name!r} has no labels "
                             "(classification tasks: listops, images); or set the model's num_classes")
        model["num_classes"] = task.num_classes
    if task.vocab_size == 0:  # not a token task (images)
        return
    if model.get("vocab_size", 0) == 0:
        model["vocab_size"] = task.vocab_size
    elif model["vocab_size"] < task.vocab_size:
        raise ValueError(f"model.vocab_size={model['vocab_size']} is smaller than task {task.cfg.name!r}'s "
                         f"vocabulary ({task.vocab_size}); set model.vocab_size=0 to take it from the task")
    if model.get("max_seq_len", 0) < task.cfg.seq_len:
        raise ValueError(f"task.seq_len={task.cfg.seq_len} exceeds model.max_seq_len={model.get('max_seq_len')}")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_dir_write(folder: Path, write: Any) -> None:
    """Write into a temporary sibling folder, then swap it into place (the old one survives a crash). The
    folder and its files get the permissions the user's umask gives new ones."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(tmp)
        mask = _umask()
        for f in tmp.iterdir():  # flush file contents before the rename makes them visible
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
            f.chmod(0o666 & ~mask)
        tmp.chmod(0o777 & ~mask)
        old = folder.with_name(f".{folder.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def save(model: torch.nn.Module, folder: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors``, ``config.yaml``, ``plugins.yaml`` when the model uses plugin components
    (which modules and packages they come from), and any ``extra`` files, atomically."""
    if not hasattr(model, "to_config"):
        raise TypeError(f"{type(model).__name__} has no to_config(); only blockzoo models can be saved")

    def write(tmp: Path) -> None:
        save_model(model, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(model.to_config(), sort_keys=False))
        write_plugins(model, tmp)
        for name, fn in (extra or {}).items():
            fn(tmp / name)

    _atomic_dir_write(Path(folder), write)
    return Path(folder)


def load(folder: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None) -> torch.nn.Module:
    """The model a folder written by :func:`save` holds, in eval mode, on ``device`` (in ``dtype`` if given):
    outputs equal the saved model's bit for bit. Plugins it records are imported; missing ones are named."""
    folder = Path(folder)
    for f in (WEIGHTS_FILE, CONFIG_FILE):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{folder} is not a blockzoo checkpoint: {f} is missing")
    import_plugins(folder)
    model = build_model(folder / CONFIG_FILE)
    load_model(model, str(folder / WEIGHTS_FILE), strict=True, device=str(device))
    return model.to(device=device, dtype=dtype).eval()
