"""Convolutional feedforward for 2-D token grids: Mix-FFN (SegFormer, Xie et al., 2021; PVTv2, Wang et al., 2022)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from blockzoo import ops
from blockzoo.config import FeedforwardConfig
from blockzoo.registry import register_feedforward


@dataclass
class Conv2dConfig(FeedforwardConfig):
    """Config of the convolutional feedforward."""

    kernel_size: int = field(default=3, metadata={"help": "side of the depthwise convolution (odd)"})


@register_feedforward("conv2d", Conv2dConfig)
class Conv2dFeedforward(nn.Module):
    """1x1 conv → depthwise k x k conv → activation (+dropout) → 1x1 conv over a square token grid.

    Input x (B, L, d) with L = side² tokens in row-major order (as the ``patch`` embedding
    produces them); any other L raises ``ValueError``. The 1x1 convolutions are per-token
    linears (``fc1``, ``fc2``). The depthwise convolution mixes each token with its grid
    neighbours in every direction, so this feedforward is not causal: use it in encoders and
    image models, not in a causal LM.
    """

    position_wise = False  # mixes neighbouring tokens: cannot run on a routed subset (e.g. as an MoE expert)

    def __init__(self, cfg: Conv2dConfig):
        super().__init__()
        if cfg.kernel_size < 1 or cfg.kernel_size % 2 == 0:
            raise ValueError(f"feedforward 'conv2d': kernel_size must be odd and >= 1, got {cfg.kernel_size}")
        self.cfg = cfg
        hidden = cfg.hidden()
        self.fc1 = nn.Linear(cfg.dim_model, hidden, bias=cfg.bias)
        self.dwconv = nn.Conv2d(hidden, hidden, cfg.kernel_size, padding=cfg.kernel_size // 2, groups=hidden,
                                bias=cfg.bias)
        self.fc2 = nn.Linear(hidden, cfg.dim_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, d) with L a perfect square -> (B, L, d)."""
        if x.dim() != 3:
            raise ValueError(f"feedforward 'conv2d' expects (batch, seq, dim), got shape {tuple(x.shape)}")
        B, L, _ = x.shape
        side = math.isqrt(L)
        if side * side != L:
            raise ValueError(f"feedforward 'conv2d' needs a square token grid: L={L} is not a perfect square")
        h = self.fc1(x)
        h = h.transpose(1, 2).reshape(B, h.shape[-1], side, side)
        h = self.dwconv(h).flatten(2).transpose(1, 2)
        h = ops.dropout_bias_act(h, None, self.cfg.dropout, self.cfg.activation, training=self.training)
        return self.fc2(h)
