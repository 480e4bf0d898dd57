"""Large-kernel attention (Guo et al., 2022, "Visual Attention Network": LKA)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo.blocks.attention.base import Attention
from blockzoo.blocks.attention.pooling import grid_side
from blockzoo.config import AttentionConfig
from blockzoo.ops import repeat_kv
from blockzoo.registry import register_attention


@dataclass
class VisualConfig(AttentionConfig):
    """Config of LKA: a depthwise conv, a dilated depthwise conv and a pointwise conv (VAN: 5, 7, 3)."""

    kernel_size: int = 5
    dilated_kernel_size: int = 7
    dilation: int = 3
    van_block: bool = False


@register_attention("visual", VisualConfig)
class VisualAttention(Attention):
    """u · Conv1×1(DWConv-dilated(DWConv(u))) over a square √L×√L token grid.

    ``u`` is the values ``v`` with heads merged into C = num_heads·head_dim channels (grouped-
    query values are repeated to num_heads first); q and k are ignored. The 5×5 depthwise conv,
    7×7 depthwise conv with dilation 3 and 1×1 conv together see a 21×21 neighbourhood; their
    output is the attention map, multiplied element-wise with ``u``. VAN's surrounding
    projections and GELU are the multi-head wrapper's q/k/v and output projections here.
    ``dropout`` applies to the attention map. Needs L to be a perfect square; no causal, mask,
    key padding or cross-attention. ``van_block=True`` adds VAN's whole attention module around the
    LKA (as xFormers' visual, which ran without the wrapper's projections): u ← GELU(Conv1×1(u))
    before it, Conv1×1 after it, plus the module's own residual (its input added to its output).
    """

    supports_causal = False
    supports_mask = False
    supports_key_padding = False
    supports_cross = False
    requires_grid = True

    def __init__(self, cfg: VisualConfig):
        super().__init__(cfg)
        if cfg.num_heads < 1 or cfg.head_dim < 1:
            raise ValueError(f"visual attention sizes its convolutions from num_heads*head_dim; got "
                             f"num_heads={cfg.num_heads}, head_dim={cfg.head_dim} (set both, or build it in a model)")
        for name in ("kernel_size", "dilated_kernel_size"):
            size = getattr(cfg, name)
            if size < 1 or size % 2 == 0:
                raise ValueError(f"attention.{name} must be a positive odd number, got {size}")
        if cfg.dilation < 1:
            raise ValueError(f"attention.dilation must be >= 1, got {cfg.dilation}")
        c = cfg.num_heads * cfg.head_dim
        self.depthwise = nn.Conv2d(c, c, cfg.kernel_size, padding=cfg.kernel_size // 2, groups=c)
        self.dilated = nn.Conv2d(c, c, cfg.dilated_kernel_size, dilation=cfg.dilation,
                                 padding=cfg.dilation * (cfg.dilated_kernel_size // 2), groups=c)
        self.pointwise = nn.Conv2d(c, c, 1)
        self.proj_in = nn.Conv2d(c, c, 1) if cfg.van_block else None
        self.proj_out = nn.Conv2d(c, c, 1) if cfg.van_block else None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(q, k, v, mask, causal, key_padding_mask)
        B, H, L, D = q.shape
        if H * D != self.pointwise.in_channels:
            raise ValueError(f"visual attention was built for {self.pointwise.in_channels} channels "
                             f"(num_heads*head_dim), got {H} heads of {D}")
        side = grid_side(L, "visual attention")
        x = repeat_kv(v, H).permute(0, 1, 3, 2).reshape(B, H * D, side, side)
        u = F.gelu(self.proj_in(x)) if self.proj_in is not None else x
        attn = self.pointwise(self.dilated(self.depthwise(u)))
        attn = F.dropout(attn, self.cfg.dropout, self.training)
        out = u * attn
        if self.proj_out is not None:
            out = self.proj_out(out) + x
        return out.reshape(B, H, D, L).transpose(-1, -2)
