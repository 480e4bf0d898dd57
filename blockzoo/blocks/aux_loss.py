"""Auxiliary training losses that modules store during their forward (e.g. the MoE load-balancing loss)."""
from __future__ import annotations

import torch
from torch import nn


def auxiliary_losses(model: nn.Module) -> torch.Tensor:
    """Sum of the ``aux_loss`` tensors stored by ``model``'s submodules in their last forward.

    Only modules in training mode count: auxiliary losses are training objectives, so an
    evaluation loss is the task loss alone. Returns a float32 zero when there are none.
    """
    total = None
    for module in model.modules():
        aux = module.__dict__.get("aux_loss")  # not getattr: nn.Module's missing-attribute path is slow
        if module.training and isinstance(aux, torch.Tensor):
            total = aux if total is None else total + aux
    if total is not None:
        return total
    param = next(model.parameters(), None)
    return torch.zeros((), device=param.device if param is not None else None)
