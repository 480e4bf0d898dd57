"""Activation modules with a parameter that the fused ops' fixed names do not carry."""
from __future__ import annotations

import torch
from torch import nn

from blockzoo.ops import torch_ref


class SmeLU(nn.Module):
    """Smooth ReLU (Shamir et al., 2022): 0 below -beta, (x + beta)² / (4 beta) in between, x above beta.

    ``activation: smelu`` in configs and the fused ops is this module with beta = ``torch_ref.SMELU_BETA`` (2.0).
    """

    def __init__(self, beta: float = torch_ref.SMELU_BETA):
        super().__init__()
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0:
            raise ValueError(f"beta must be a positive number, got {beta!r}")
        self.beta = float(beta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch_ref.smelu(x, self.beta)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"
