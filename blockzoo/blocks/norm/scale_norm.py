"""ScaleNorm (Nguyen & Salazar, 2019, "Transformers without Tears")."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from blockzoo.config import NormConfig
from blockzoo.registry import register_norm


@dataclass
class ScaleNormConfig(NormConfig):
    """Config of ScaleNorm; ``affine=False`` keeps g fixed at √dim."""


@register_norm("scale_norm", ScaleNormConfig)
class ScaleNorm(nn.Module):
    """g · x / max(‖x‖, eps) over the last dim, with one learned scalar g initialised to √dim.

    Computed in at least float32 and cast back to the input dtype.
    """

    def __init__(self, cfg: ScaleNormConfig):
        super().__init__()
        if cfg.dim < 1:
            raise ValueError(f"norm 'scale_norm' needs dim >= 1, got {cfg.dim}")
        self.cfg = cfg
        self.initial_scale = math.sqrt(cfg.dim)
        self.scale = nn.Parameter(torch.tensor(self.initial_scale)) if cfg.affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.cfg.dim:
            raise ValueError(f"norm 'scale_norm' expects last dim {self.cfg.dim}, got shape {tuple(x.shape)}")
        y = x.to(torch.promote_types(x.dtype, torch.float32))
        g = self.scale if self.scale is not None else self.initial_scale
        return (y * (g / y.norm(dim=-1, keepdim=True).clamp_min(self.cfg.eps))).to(x.dtype)
