"""Pooling token mixer (Yu et al., 2022, "MetaFormer Is Actually What You Need for Vision": PoolFormer)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from blockzoo.blocks.attention.base import Attention
from blockzoo.config import AttentionConfig
from blockzoo.ops import keep_from_key_padding, repeat_kv
from blockzoo.registry import register_attention


@dataclass
class PoolingConfig(AttentionConfig):
    """Config of PoolFormer mixing: an odd ``pool_size`` window, 2-D over a square grid when ``grid``."""

    pool_size: int = 3
    grid: bool = False


def grid_side(length: int, name: str) -> int:
    """The side of a square token grid of ``length`` tokens; ValueError when there is none."""
    side = math.isqrt(length)
    if side * side != length:
        raise ValueError(f"{name} needs a square token grid, but L={length} is not a perfect square")
    return side


def window_sum(x: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """Sum over a centred window of odd ``size`` along ``dim``, zero beyond the edges (same length)."""
    x = x.movedim(dim, -1)
    half = size // 2
    summed = F.pad(x, (half, half)).unfold(-1, size, 1).sum(-1)
    return summed.movedim(-1, dim)


@register_attention("pooling", PoolingConfig)
class Pooling(Attention):
    """avg_pool(v) − v: the average of each token's ``pool_size`` neighbourhood minus the token.

    Pools the values ``v`` (q and k are ignored) per channel: 1-D over the sequence, or 2-D over
    a square √L×√L grid when ``grid=True`` (then L must be a perfect square). The average counts
    only tokens that exist, as PoolFormer's ``count_include_pad=False``; with a key padding mask,
    padded tokens are excluded from every average as well. Grouped-query values are pooled per
    key/value head and repeated. Not causal, no arbitrary mask, no cross-attention; no attention
    weights exist, so ``dropout`` must be 0. ``requires_grid`` is set per instance from ``grid``.
    """

    supports_causal = False
    supports_mask = False
    supports_cross = False

    def __init__(self, cfg: PoolingConfig):
        super().__init__(cfg)
        if cfg.pool_size < 1 or cfg.pool_size % 2 == 0:
            raise ValueError(f"attention.pool_size must be a positive odd number, got {cfg.pool_size}")
        if cfg.dropout != 0.0:
            raise ValueError(f"pooling has no attention weights to drop; attention.dropout must be 0, "
                             f"got {cfg.dropout}")
        self.requires_grid = cfg.grid

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(q, k, v, mask, causal, key_padding_mask)
        B, H_kv, L, D = v.shape
        keep = torch.ones(B, 1, L, 1, dtype=v.dtype, device=v.device)
        if key_padding_mask is not None:
            keep = keep_from_key_padding(key_padding_mask.to(v.device), B, L).transpose(-1, -2).to(v.dtype)
        total, count = v * keep, keep
        if self.cfg.grid:
            side = grid_side(L, "pooling with grid=True")
            total, count = total.unflatten(2, (side, side)), count.unflatten(2, (side, side))
            for dim in (2, 3):
                total = window_sum(total, dim, self.cfg.pool_size)
                count = window_sum(count, dim, self.cfg.pool_size)
            total, count = total.flatten(2, 3), count.flatten(2, 3)
        else:
            total = window_sum(total, 2, self.cfg.pool_size)
            count = window_sum(count, 2, self.cfg.pool_size)
        pooled = total / count.clamp_min(1.0)
        return repeat_kv(pooled - v, q.shape[1])
