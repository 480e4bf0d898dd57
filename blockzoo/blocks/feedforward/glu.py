"""Gated linear unit feedforwards: SwiGLU, GEGLU (Shazeer, 2020, "GLU Variants Improve Transformer")."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from blockzoo import ops
from blockzoo.config import FeedforwardConfig
from blockzoo.registry import register_feedforward


@dataclass
class GLUConfig(FeedforwardConfig):
    """Config of a gated feedforward; ``activation`` gates (silu = SwiGLU, gelu = GEGLU)."""

    activation: str = "silu"
    hidden_mult: float = 8.0 / 3.0


@register_feedforward("glu", GLUConfig)
class GLU(nn.Module):
    """w_out(act(x w_gate) * (x w_up)): presets ``swiglu`` (silu) and ``geglu`` (gelu)."""

    def __init__(self, cfg: GLUConfig):
        super().__init__()
        self.cfg = cfg
        hidden = cfg.hidden()
        self.w_in = nn.Linear(cfg.dim_model, 2 * hidden, bias=cfg.bias)
        self.w_out = nn.Linear(hidden, cfg.dim_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w_in(x).chunk(2, dim=-1)
        h = ops.dropout_bias_act(gate, None, 0.0, self.cfg.activation, training=False) * up
        if self.training and self.cfg.dropout > 0:
            h = ops.dropout_bias_act(h, None, self.cfg.dropout, "none", training=True)
        return self.w_out(h)
