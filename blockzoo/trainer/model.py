"""The model a run trains: sized from its task, wrapped so DDP/FSDP see ``loss`` as ``forward``."""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import nn

from blockzoo.api import build_model
from blockzoo.tasks import Task


class TrainModule(nn.Module):
    """``forward(batch)`` is the model's loss; ``forward(batch, predictions=True)`` its (predicted, target) pair.

    DDP and FSDP hook ``forward``, so every training and evaluation call goes through it.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor], predictions: bool = False) -> Any:
        if predictions:
            return self.model.predictions(batch)
        return self.model.loss(batch)


def size_model_for_task(cfg: DictConfig, task: Task) -> DictConfig:
    """A copy of the app config whose model takes its vocab_size (and num_classes) from the task when 0."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    model = cfg.model
    with open_dict(model):
        if model.get("num_classes") == 0:
            if task.num_classes == 0:
                raise ValueError(f"model {model.name!r} is a classifier but task {task.cfg.name!r} has no labels "
                                 "(classification tasks: listops, images)")
            model.num_classes = task.num_classes
        if task.vocab_size == 0:  # not a token task (images)
            return cfg
        if model.get("vocab_size", 0) == 0:
            model.vocab_size = task.vocab_size
        elif model.vocab_size < task.vocab_size:
            raise ValueError(f"model.vocab_size={model.vocab_size} is smaller than task {task.cfg.name!r}'s "
                             f"vocabulary ({task.vocab_size}); set model.vocab_size=0 to take it from the task")
    if model.get("max_seq_len", 0) < task.cfg.seq_len:
        raise ValueError(f"task.seq_len={task.cfg.seq_len} exceeds model.max_seq_len={model.get('max_seq_len')}")
    return cfg


def build_for_task(cfg: DictConfig, task: Task) -> tuple[DictConfig, nn.Module]:
    """(the config with the model sized from the task, the built model)."""
    cfg = size_model_for_task(cfg, task)
    return cfg, build_model(cfg)
