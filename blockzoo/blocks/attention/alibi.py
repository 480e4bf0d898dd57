"""ALiBi attention (Press et al., 2022, "Train Short, Test Long: Attention with Linear Biases")."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from blockzoo import ops
from blockzoo.blocks.attention.pattern import PatternAttention
from blockzoo.config import AttentionConfig
from blockzoo.registry import register_attention


@dataclass
class AlibiConfig(AttentionConfig):
    """Config of ALiBi attention (the slopes follow from num_heads)."""


def alibi_slopes(num_heads: int) -> torch.Tensor:
    """Per-head slopes (float64): the geometric sequence 2^(-8/n), 2^(-16/n), ... for n a power of two.

    Otherwise, as in the paper: the slopes of the largest power of two n' < num_heads, then every
    other slope of the 2n' sequence for the remaining heads.
    """
    if num_heads < 1:
        raise ValueError(f"ALiBi needs num_heads >= 1, got {num_heads}")

    def geometric(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    base = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = geometric(base) + geometric(2 * base)[0::2][: num_heads - base]
    return torch.tensor(slopes, dtype=torch.float64)


def alibi_bias(slopes: torch.Tensor, rows: int, cols: int, device: torch.device | None = None) -> torch.Tensor:
    """(H, rows, cols) float32 additive bias -slope_h * |i - j| (the paper's causal bias, mirrored
    for keys after the query)."""
    i = torch.arange(rows, device=device, dtype=torch.float32)[:, None]
    j = torch.arange(cols, device=device, dtype=torch.float32)[None, :]
    return -slopes.to(device=device, dtype=torch.float32)[:, None, None] * (i - j).abs()


@register_attention("alibi", AlibiConfig)
class AlibiAttention(PatternAttention):
    """Scaled dot-product attention with a linear distance penalty per head (no position embedding
    needed). The bias is built once per (L, S, device) and passed to
    ``blockzoo.ops.masked_attention`` as an additive mask, combined with the caller's mask
    (bool drops entries, float adds), causal flag and key padding. Decodes over a key/value cache, the
    bias taken from the absolute positions of queries and cached keys.
    """

    supports_decoding = True

    def __init__(self, cfg: AlibiConfig):
        super().__init__(cfg)
        self.slopes = alibi_slopes(cfg.num_heads)  # a constant of num_heads, not a module buffer

    def build_pattern(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        return alibi_bias(self.slopes, rows, cols, device)

    def decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
               k_pos: torch.Tensor) -> torch.Tensor:
        dist = (q_pos[:, None, :, None] - k_pos[:, None, None, :]).abs().to(torch.float32)
        bias = -self.slopes.to(device=q.device, dtype=torch.float32)[None, :, None, None] * dist
        return self.cached_attention(q, k, v, ops.position_keep(q_pos, k_pos), bias=bias)
