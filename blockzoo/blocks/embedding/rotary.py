"""Rotary position embedding (Su et al., 2021, "RoFormer"); partial rotary and context-extension
scalings in ``rotary_scaling``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from blockzoo.blocks.embedding.rotary_scaling import (SCALINGS, attention_scale, check_scaling,
                                                      inverse_frequencies, rotated_dims)
from blockzoo.blocks.embedding.token import TokenEmbedding
from blockzoo.config import POSITIVE, Check, EmbeddingConfig, one_of, optional
from blockzoo.registry import register_embedding


@dataclass
class RotaryConfig(EmbeddingConfig):
    """Config of rotary embedding: tokens only here; q and k are rotated inside attention."""

    base: float = 10000.0
    fraction: float = field(default=1.0, metadata={
        "help": "rotate the first fraction * head_dim dims of each head (an even count)",
        "check": Check(lambda v: 0 < v <= 1, "a fraction in (0, 1]")})
    scaling: str = field(default="none", metadata={
        "help": "context extension: none, linear, ntk or yarn", "check": one_of(*SCALINGS)})
    factor: float = field(default=1.0, metadata={
        "help": "scaling factor (new length / trained length)", "check": Check(lambda v: v >= 1, ">= 1")})
    original_max_seq_len: int = field(default=0, metadata={
        "help": "the length trained at (yarn; 0 = model.max_seq_len)", "check": Check(lambda v: v >= 0, ">= 0")})
    beta_fast: float = field(default=32.0, metadata={"help": "yarn: dims turning more than this keep their "
                                                             "frequency", "check": POSITIVE})
    beta_slow: float = field(default=1.0, metadata={"help": "yarn: dims turning less than this are interpolated",
                                                    "check": POSITIVE})
    mscale: Optional[float] = field(default=None, metadata={
        "help": "yarn attention temperature on cos/sin (None = 0.1 ln(factor) + 1)", "check": optional(POSITIVE)})


@register_embedding("rotary", RotaryConfig)
class RotaryTokenEmbedding(TokenEmbedding):
    """Token table with no absolute position; the model rotates q and k by position in every block.
    With a rotary ``scaling`` the model runs past ``max_seq_len`` (the length it was trained at)."""

    uses_rotary = True

    def check_tokens(self, tokens: torch.Tensor) -> None:
        if getattr(self.cfg, "scaling", "none") == "none":
            return super().check_tokens(tokens)
        if tokens.dim() == 2 and self.cfg.max_seq_len:  # longer sequences allowed: check dtype and rank only
            tokens = tokens[:, :self.cfg.max_seq_len]
        return super().check_tokens(tokens)


class Rotary(nn.Module):
    """Rotates pairs (x[..., i], x[..., i + r/2]) of the first r = ``fraction * head_dim`` dims by
    position-dependent angles (the other dims pass through); ``scaling`` changes the frequencies for
    context extension (see ``rotary_scaling``)."""

    def __init__(self, head_dim: int, base: float = 10000.0, fraction: float = 1.0, scaling: str = "none",
                 factor: float = 1.0, original_max_seq_len: int = 0, beta_fast: float = 32.0,
                 beta_slow: float = 1.0, mscale: float | None = None, path: str = "embedding"):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary needs an even head dim, got {head_dim}")
        self.head_dim = head_dim
        self.rotated_dim = rotated_dims(head_dim, fraction, path)
        check_scaling(scaling, factor, original_max_seq_len, beta_fast, beta_slow, mscale, self.rotated_dim, path)
        self.scaling = scaling
        self.mscale = attention_scale(scaling, factor, mscale)
        inv = inverse_frequencies(self.rotated_dim, base, scaling, factor, original_max_seq_len, beta_fast, beta_slow)
        self.register_buffer("inv_freq", inv.to(torch.float32), persistent=False)

    def cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin (times the scaling's temperature) at int ``positions``, of shape
        ``positions.shape + (rotated_dim,)``."""
        freqs = positions.to(torch.float32)[..., None] * self.inv_freq.to(positions.device)
        emb = torch.cat([freqs, freqs], dim=-1)
        cos, sin = emb.cos(), emb.sin()
        if self.mscale != 1.0:
            cos, sin = cos * self.mscale, sin * self.mscale
        return cos.to(dtype), sin.to(dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate x (B, H, L, head_dim) by ``positions`` ((B, L) or (L,) int; None: 0..L-1)."""
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"rotary expects head dim {self.head_dim}, got {x.shape[-1]}")
        if positions is None:
            positions = torch.arange(x.shape[-2], device=x.device)
        elif positions.shape[-1] != x.shape[-2] or positions.dim() not in (1, 2):
            raise ValueError(f"rotary positions must be (L,) or (B, L) with L={x.shape[-2]}, "
                             f"got shape {tuple(positions.shape)}")
        cos, sin = self.cos_sin(positions, x.dtype)
        if positions.dim() == 2:  # (B, L, r) -> (B, 1, L, r): one row of positions per batch element
            cos, sin = cos[:, None], sin[:, None]
        r = self.rotated_dim
        xr = x[..., :r]
        half = r // 2
        rotated = torch.cat([-xr[..., half:], xr[..., :half]], dim=-1)
        out = xr * cos + rotated * sin
        return out if r == self.head_dim else torch.cat([out, x[..., r:]], dim=-1)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, rotated_dim={self.rotated_dim}, scaling={self.scaling}"
