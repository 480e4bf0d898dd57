"""Random attention (Zaheer et al., 2020, "Big Bird: Transformers for Longer Sequences", the random part)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from blockzoo.blocks.attention.pattern import PatternAttention
from blockzoo.config import AttentionConfig
from blockzoo.registry import register_attention

_M31 = (1 << 31) - 1


@dataclass
class RandomConfig(AttentionConfig):
    """Config of random-pattern attention."""

    density: float = field(default=0.1, metadata={"help": "probability that a query attends to a given key"})
    seed: int = field(default=0, metadata={"help": "seed of the pattern (fixed for the module's life)"})


def _mix(x: torch.Tensor) -> torch.Tensor:
    """An integer hash on 31-bit values (products stay below 2**62: no int64 overflow)."""
    x = x & _M31
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M31
    x = ((x ^ (x >> 15)) * 0x2C1B3C6D) & _M31
    return x ^ (x >> 16)


def random_pattern(num_heads: int, rows: int, cols: int, density: float, seed: int,
                   device: torch.device | None = None) -> torch.Tensor:
    """(num_heads, rows, cols) bool: entry (h, i, j) kept with probability ``density``, plus each
    query's diagonal key ``i * cols // rows``.

    Entries are a hash of (seed, h, i, j), so the pattern for a shorter sequence is the crop of
    the pattern for a longer one (a causal model sees the same pattern while generating).
    """
    h = torch.arange(num_heads, device=device)[:, None, None]
    i = torch.arange(rows, device=device)[None, :, None]
    j = torch.arange(cols, device=device)[None, None, :]
    x = _mix(_mix(_mix(torch.full((), seed, device=device) ^ h) ^ i) ^ j)
    keep = x < round(density * (_M31 + 1))  # x is uniform on [0, 2**31)
    diagonal = (i * cols) // max(rows, 1) == j
    return keep | diagonal


@register_attention("random", RandomConfig)
class RandomAttention(PatternAttention):
    """Each query attends to a fixed random subset of keys (``density``), different per head, and to
    its own diagonal key, so no row is empty unless the caller masks it.

    The pattern is built once per (L, S, device) and run through ``blockzoo.ops.masked_attention``
    with the caller's mask (AND / additive), causal flag and key padding.
    """

    supports_documents = False  # the pattern is tied to absolute positions: packing would change it

    def __init__(self, cfg: RandomConfig):
        super().__init__(cfg)
        if not 0.0 <= cfg.density <= 1.0:
            raise ValueError(f"attention.density must be in [0, 1], got {cfg.density}")

    def build_pattern(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        return random_pattern(max(self.cfg.num_heads, 1), rows, cols, self.cfg.density, self.cfg.seed, device)
