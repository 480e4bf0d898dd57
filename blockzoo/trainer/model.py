"""The model a run trains: sized from its task, wrapped so DDP/FSDP see ``loss`` as ``forward``."""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from blockzoo.api import build_model, size_model_for_task
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


def build_for_task(cfg: DictConfig, task: Task) -> tuple[DictConfig, nn.Module]:
    """(the config with the model sized from the task, the built model)."""
    cfg = size_model_for_task(cfg, task)
    model = build_model(cfg)
    if getattr(task, "packed", False):  # refuse a model that cannot run packed documents before any step
        check = getattr(model, "check_packable", None)
        if check is None:
            raise ValueError(f"task.pack=true gives packed documents (doc_ids), which model "
                             f"{cfg.model.name!r} does not take; use model decoder_lm or task.pack=false")
        check()
    return cfg, model
