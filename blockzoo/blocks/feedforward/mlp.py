"""MLP feedforward (Vaswani et al., 2017) and its fused variant."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from blockzoo import ops
from blockzoo.config import FeedforwardConfig
from blockzoo.registry import register_feedforward


@dataclass
class MLPConfig(FeedforwardConfig):
    """Config of a two-layer MLP."""


@register_feedforward("mlp", MLPConfig)
class MLP(nn.Module):
    """fc2(dropout(act(fc1(x)))): ``linear_act`` fuses bias and activation into the first GEMM."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        hidden = cfg.hidden()
        self.fc1 = nn.Linear(cfg.dim_model, hidden, bias=cfg.bias)
        self.fc2 = nn.Linear(hidden, cfg.dim_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = ops.linear_act(x, self.fc1.weight, self.fc1.bias, self.cfg.activation)
        if self.training and self.cfg.dropout > 0:
            h = ops.dropout_bias_act(h, None, self.cfg.dropout, "none", training=True)
        return self.fc2(h)


@register_feedforward("fused_mlp", MLPConfig)
class FusedMLP(MLP):
    """MLP whose bias, activation and dropout run as one fused ``dropout_bias_act`` kernel after a bias-free GEMM."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.linear(x, self.fc1.weight)
        h = ops.dropout_bias_act(h, self.fc1.bias, self.cfg.dropout, self.cfg.activation, training=self.training)
        return self.fc2(h)
