"""Local (sliding-window) attention (Beltagy et al., 2020, "Longformer"; Child et al., 2019)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from blockzoo import ops
from blockzoo.blocks.attention.base import Attention
from blockzoo.config import AttentionConfig
from blockzoo.registry import register_attention


@dataclass
class LocalConfig(AttentionConfig):
    """Config of sliding-window attention."""

    window_size: int = 128


def window_mask(rows: int, cols: int, window_size: int, device: torch.device | None = None) -> torch.Tensor:
    """(rows, cols) bool: True where |i - j| <= window_size // 2."""
    i = torch.arange(rows, device=device)[:, None]
    j = torch.arange(cols, device=device)[None, :]
    return (i - j).abs() <= window_size // 2


@register_attention("local", LocalConfig)
class LocalAttention(Attention):
    """Each query attends to keys within ``window_size // 2`` positions (and only the past if causal).

    The window is a static pattern: its mask is built once per (L, S, device) and dispatch
    takes the sparse paths when they pay.
    """

    def __init__(self, cfg: LocalConfig):
        super().__init__(cfg)
        if cfg.window_size < 1:
            raise ValueError(f"attention.window_size must be >= 1, got {cfg.window_size}")
        self._mask_cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def pattern(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        key = (rows, cols, device)
        if key not in self._mask_cache:
            self._mask_cache[key] = window_mask(rows, cols, self.cfg.window_size, device)
        return self._mask_cache[key]

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(q, k, v, mask, causal, key_padding_mask)
        local = self.pattern(q.shape[-2], k.shape[-2], q.device)
        if mask is not None:
            local = local & mask if mask.dtype == torch.bool else mask.masked_fill(~local, float("-inf"))
        p = self.cfg.dropout if self.training else 0.0
        return ops.masked_attention(q, k, v, mask=local, causal=causal, dropout_p=p,
                                    key_padding_mask=key_padding_mask)
