"""Library entry points: build a model from any config form, save it and load it back."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_model, save_model

from blockzoo.config import config_to_dict
from blockzoo.registry import registry

MODEL_PARTS = ("attention", "feedforward", "norm", "embedding")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"


def model_config(cfg: Any) -> dict[str, Any]:
    """The model's plain config from a model config or a full app config (model + part groups)."""
    data = config_to_dict(cfg)
    if not isinstance(data, dict):
        raise TypeError(f"expected a model config (mapping, DictConfig, dataclass or YAML path), got {type(cfg).__name__}")
    if isinstance(data.get("model"), dict):  # a full app config: parts come from their own groups
        model = dict(data["model"])
        for part in MODEL_PARTS:
            if model.get(part) is None and data.get(part) is not None:
                model[part] = data[part]
        return model
    return data


def build_model(cfg: Any) -> torch.nn.Module:
    """Build a model from a DictConfig, dict, dataclass or YAML path (a model config or a full app config)."""
    from blockzoo.plugins import load_plugins

    load_plugins()
    return registry("model").build(model_config(cfg), path="model")


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
