"""Library entry points: build a model from any config form, save it and load it back."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_model, save_model

from blockzoo.config import ModelConfig, config_to_dict
from blockzoo.plugins import load_plugins
from blockzoo.registry import registry
from blockzoo.tasks import Task, build_task

MODEL_PARTS = ("attention", "feedforward", "norm", "embedding")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


def build_model(cfg: Any) -> torch.nn.Module:
    """Build a model from a DictConfig, dict, dataclass or YAML path (a model config or a full app config;
    in the latter a model whose vocab_size / num_classes are 0 takes them from the task)."""
    load_plugins()
    config = model_config(cfg)
    return registry("model").get(config.name).cls(config)


def model_config(cfg: Any) -> ModelConfig:
    """The validated model dataclass of any form :func:`build_model` accepts: one conversion to a plain dict,
    then one validation."""
    data = config_to_dict(cfg)
    if not isinstance(data, dict):
        raise TypeError("expected a model config (mapping, DictConfig, dataclass or YAML path), "
                        f"got {type(data).__name__}")
    if isinstance(data.get("model"), dict):
        data = _app_model(data)
    return registry("model").validate(data, "model")


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
                             "(classification tasks: listops, images)")
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


def _atomic_dir_write(folder: Path, write: Any) -> None:
    """Write into a temporary sibling folder, then swap it into place (the old one survives a crash)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(tmp)
        for f in tmp.iterdir():  # flush file contents before the rename makes them visible
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
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
    """Write ``model.safetensors`` and ``config.yaml`` (and any ``extra`` tensors files) atomically."""
    if not hasattr(model, "to_config"):
        raise TypeError(f"{type(model).__name__} has no to_config(); only blockzoo models can be saved")

    def write(tmp: Path) -> None:
        save_model(model, str(tmp / WEIGHTS_FILE))
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(model.to_config(), sort_keys=False))
        for name, fn in (extra or {}).items():
            fn(tmp / name)

    _atomic_dir_write(Path(folder), write)
    return Path(folder)


def load(folder: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a model from a folder written by :func:`save`; outputs equal the saved model's bit for bit."""
    folder = Path(folder)
    for f in (WEIGHTS_FILE, CONFIG_FILE):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{folder} is not a blockzoo checkpoint: {f} is missing")
    model = build_model(folder / CONFIG_FILE)
    load_model(model, str(folder / WEIGHTS_FILE), strict=True, device=str(device))
    return model.to(device)
