"""Rotary position embedding (Su et al., 2021, "RoFormer")."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from blockzoo.blocks.embedding.token import TokenEmbedding
from blockzoo.config import EmbeddingConfig
from blockzoo.registry import register_embedding


@dataclass
class RotaryConfig(EmbeddingConfig):
    """Config of rotary embedding: tokens only here; q and k are rotated inside attention."""

    base: float = 10000.0


@register_embedding("rotary", RotaryConfig)
class RotaryTokenEmbedding(TokenEmbedding):
    """Token table with no absolute position; the model rotates q and k by position in every block."""

    uses_rotary = True


class Rotary(nn.Module):
    """Rotates pairs (x[..., i], x[..., i + d/2]) of the head dimension by position-dependent angles."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary needs an even head dim, got {head_dim}")
        self.head_dim = head_dim
        self.register_buffer("inv_freq", base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim),
                             persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the angles at int64 ``positions``: shape positions.shape + (head_dim,)."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq.to(positions.device)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate x (B, H, L, head_dim) along the head dimension by position: ``positions`` (B, L) or (L,)
        int64, None = arange(L) along dim -2."""
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"rotary expects head dim {self.head_dim}, got {x.shape[-1]}")
        if positions is None:
            positions = torch.arange(x.shape[-2], device=x.device)
        cos, sin = self.cos_sin(positions, x.dtype)
        if cos.dim() == 3:  # (B, L, D): broadcast over the heads
            cos, sin = cos[:, None], sin[:, None]
        half = self.head_dim // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin
