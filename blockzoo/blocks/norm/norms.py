"""Normalization layers: LayerNorm (Ba et al., 2016), RMSNorm (Zhang & Sennrich, 2019) and skip."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from blockzoo import ops
from blockzoo.config import NormConfig
from blockzoo.registry import register_norm


@dataclass
class LayerNormConfig(NormConfig):
    """Config of LayerNorm."""

    bias: bool = True


@register_norm("layer_norm", LayerNormConfig)
class LayerNorm(nn.Module):
    """LayerNorm over the last dim, through the fused ``blockzoo.ops.layer_norm``."""

    def __init__(self, cfg: LayerNormConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.ones(cfg.dim)) if cfg.affine else None
        self.bias = nn.Parameter(torch.zeros(cfg.dim)) if cfg.affine and cfg.bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.layer_norm(x, (self.cfg.dim,), self.weight, self.bias, self.cfg.eps)


@dataclass
class RMSNormConfig(NormConfig):
    """Config of RMSNorm."""

    eps: float = 1e-6


@register_norm("rms_norm", RMSNormConfig)
class RMSNorm(nn.Module):
    """RMSNorm over the last dim, through the fused ``blockzoo.ops.rms_norm``."""

    def __init__(self, cfg: RMSNormConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.ones(cfg.dim)) if cfg.affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, (self.cfg.dim,), self.weight, self.cfg.eps)


@dataclass
class SkipConfig(NormConfig):
    """Config of the identity norm."""


@register_norm("skip", SkipConfig)
class Skip(nn.Module):
    """Identity: no normalization."""

    def __init__(self, cfg: SkipConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
