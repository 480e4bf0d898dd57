"""Local (sliding-window) attention (Beltagy et al., 2020, "Longformer"; Child et al., 2019)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from blockzoo import ops
from blockzoo.blocks.attention.base import Attention
from blockzoo.config import AttentionConfig
from blockzoo.ops import BlockMask
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


def window_band(window_size: int) -> tuple[int, int]:
    """``window_mask`` as a band (lo, hi): keep lo <= j - i <= hi, i.e. |i - j| <= window_size // 2."""
    half = window_size // 2
    return -half, half


def window_block_mask(rows: int, cols: int, window_size: int, device: torch.device | None = None,
                      causal: bool = False) -> BlockMask:
    """``window_mask`` (and j <= i when ``causal``) as a band :class:`BlockMask`, built from the tile
    grid alone (no (rows, cols) tensor), at the tile the cost model rates cheapest (``ops.band_mask``)."""
    return ops.band_mask(window_band(window_size), rows, cols, causal=causal, device=device)


@register_attention("local", LocalConfig)
class LocalAttention(Attention):
    """Each query attends to keys within ``window_size // 2`` positions (and only the past if causal).

    The window is a static pattern. With no caller mask it goes to ``masked_attention`` as a band
    :class:`BlockMask` (built once per (L, S, device, causal); O(L / block_m x S / block_n) to build,
    no (L, S) tensor): the block-sparse kernel reads the band from indices, the CSR path builds its
    lists from it and only the dense path expands it. With a caller mask the dense (L, S) window,
    cached per (L, S, device), is combined with it; packed documents (an ``ops.DocumentMask``) give one
    block mask of the documents cut by the window, built from their ids. Decodes over a ring buffer of
    ``window_size // 2 + 1`` keys per layer (memory bounded by the window, not the context).
    """

    supports_logit_knobs = True  # softcap and sinks, through ops.masked_attention
    takes_document_mask = True  # packed documents: one block mask of documents cut by the window
    supports_decoding = True

    def __init__(self, cfg: LocalConfig):
        super().__init__(cfg)
        if cfg.window_size < 1:
            raise ValueError(f"attention.window_size must be >= 1, got {cfg.window_size}")
        self._mask_cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}
        self._block_cache: dict[tuple[int, int, torch.device, bool], BlockMask] = {}

    def pattern(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        """The dense (rows, cols) window (used to combine with a caller's mask)."""
        key = (rows, cols, device)
        if key not in self._mask_cache:
            self._mask_cache[key] = window_mask(rows, cols, self.cfg.window_size, device)
        return self._mask_cache[key]

    def block_pattern(self, rows: int, cols: int, device: torch.device, causal: bool = False) -> BlockMask:
        """The window as a band BlockMask (causal folded in when ``causal``)."""
        key = (rows, cols, device, bool(causal))
        if key not in self._block_cache:
            self._block_cache[key] = window_block_mask(rows, cols, self.cfg.window_size, device, bool(causal))
        return self._block_cache[key]

    def decode_window(self) -> int:
        return self.cfg.window_size // 2

    def decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
               k_pos: torch.Tensor) -> torch.Tensor:
        return self.cached_attention(q, k, v, ops.position_keep(q_pos, k_pos, self.decode_window()))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(q, k, v, mask, causal, key_padding_mask)
        if mask is None:
            local = self.block_pattern(q.shape[-2], k.shape[-2], q.device, causal)
        elif isinstance(mask, ops.DocumentMask):
            local = mask.block_mask(causal, window=window_band(self.cfg.window_size))
        else:
            local = self.pattern(q.shape[-2], k.shape[-2], q.device)
            local = ops.apply_keep(mask, local)
        p = self.cfg.dropout if self.training else 0.0
        return ops.masked_attention(q, k, v, mask=local, causal=causal, dropout_p=p,
                                    key_padding_mask=key_padding_mask, **self.knob_kwargs())
