"""Shared base of mask-pattern attention: a static pattern, cached per (L, S, device), run through
``blockzoo.ops.masked_attention`` together with the caller's mask, causal flag and key padding."""
from __future__ import annotations

import abc

import torch

from blockzoo import ops
from blockzoo.blocks.attention.base import Attention
from blockzoo.config import AttentionConfig
from blockzoo.ops.checks import check_broadcastable, check_mask_dtype

CACHE_SIZE = 8  # patterns kept per module (generation calls with many lengths evict the oldest)


def combine_masks(pattern: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Combine a static pattern with a user mask; each is bool (True = keep) or additive float.

    bool & bool -> AND; bool & float or float & bool -> float with dropped entries at -inf;
    float & float -> sum. Shapes broadcast (e.g. (H, L, S) with (B, 1, 1, S)).
    """
    if mask is None:
        return pattern
    if mask.dtype == torch.bool:
        return ops.apply_keep(pattern, mask)
    if pattern.dtype == torch.bool:
        return ops.apply_keep(mask, pattern)
    return pattern + mask


class PatternAttention(Attention, metaclass=abc.ABCMeta):
    """Softmax attention restricted (or biased) by a static pattern of shape (H or 1, L, S).

    Subclasses implement ``build_pattern``; ``pattern`` caches it per (L, S, device).
    """

    supports_logit_knobs = True  # softcap and sinks, through ops.masked_attention

    def __init__(self, cfg: AttentionConfig):
        super().__init__(cfg)
        self._pattern_cache: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    @abc.abstractmethod
    def build_pattern(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        """(H or 1, rows, cols): bool keep mask or additive float bias."""

    def pattern(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        """The cached static pattern for ``rows`` queries and ``cols`` keys on ``device``."""
        key = (rows, cols, torch.device(device))
        cached = self._pattern_cache.pop(key, None)
        if cached is None:
            cached = self.build_pattern(rows, cols, key[2])
            if len(self._pattern_cache) >= CACHE_SIZE:
                self._pattern_cache.pop(next(iter(self._pattern_cache)))
        self._pattern_cache[key] = cached  # re-inserted last: least recently used goes first
        return cached

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(q, k, v, mask, causal, key_padding_mask)
        if mask is not None:  # checked here: combining with the pattern must not fail first
            check_mask_dtype("mask", mask, q)
            check_broadcastable("mask", mask, (q.shape[0], q.shape[1], q.shape[2], k.shape[2]))
        static = self.pattern(q.shape[-2], k.shape[-2], q.device)
        if static.shape[0] not in (1, q.shape[1]):
            raise ValueError(f"{type(self).__name__} was built for num_heads={static.shape[0]}, "
                             f"got q with {q.shape[1]} heads")
        p = self.cfg.dropout if self.training else 0.0
        return ops.masked_attention(q, k, v, mask=combine_masks(static, mask), causal=causal, dropout_p=p,
                                    key_padding_mask=key_padding_mask, **self.knob_kwargs())
