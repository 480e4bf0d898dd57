"""Embedded tasks: synthetic sequence tasks, a byte-level corpus from the standard library and toy images.

Every task is a deterministic batch generator: ``build_task(cfg).batch(split, index, batch_size)``.
"""
from __future__ import annotations

from typing import Any

from blockzoo.config import config_to_dict
from blockzoo.registry import registry
from blockzoo.tasks import associative_recall, bytes_lm, images, listops, sequence  # noqa: F401  (register them)
from blockzoo.tasks.base import IGNORE_INDEX, Task


def build_task(cfg: Any) -> Task:
    """Build a task from a task config (name, dict, DictConfig or dataclass) or a full app config."""
    data = config_to_dict(cfg)
    if isinstance(data, dict) and isinstance(data.get("task"), dict):
        data = data["task"]
    return registry("task").build(data, path="task")


__all__ = ["Task", "build_task", "IGNORE_INDEX"]
