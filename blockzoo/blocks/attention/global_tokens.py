"""Global-token attention (Beltagy et al., 2020, "Longformer"; Zaheer et al., 2020, "Big Bird")."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from blockzoo.blocks.attention.local import window_mask
from blockzoo.blocks.attention.pattern import PatternAttention
from blockzoo.config import AttentionConfig
from blockzoo.registry import register_attention


@dataclass
class GlobalConfig(AttentionConfig):
    """Config of global-token attention."""

    num_global: int = field(default=1, metadata={"help": "the first num_global tokens are global"})
    global_indices: Optional[list[int]] = field(
        default=None, metadata={"help": "explicit global positions (replaces num_global)"})
    window_size: int = field(default=0, metadata={"help": "local window as in 'local' (0 = none)"})


def global_pattern(rows: int, cols: int, indices: list[int], window_size: int = 0,
                   device: torch.device | None = None) -> torch.Tensor:
    """(1, rows, cols) bool: rows and columns at ``indices`` kept in full, plus a local window.

    Indices beyond the rows (columns) are ignored for rows (columns): a shorter sequence gets the
    crop of a longer one's pattern.
    """
    idx = torch.tensor(indices, dtype=torch.long, device=device)
    row = torch.zeros(rows, dtype=torch.bool, device=device)
    col = torch.zeros(cols, dtype=torch.bool, device=device)
    row[idx[idx < rows]] = True
    col[idx[idx < cols]] = True
    keep = row[:, None] | col[None, :]
    if window_size > 0:
        keep = keep | window_mask(rows, cols, window_size, device)
    return keep[None]


@register_attention("global", GlobalConfig)
class GlobalAttention(PatternAttention):
    """Global tokens (the first ``num_global``, or ``global_indices``) attend to every key and every
    query attends to them; with ``window_size`` > 0 other tokens also see a local window.

    The pattern is built once per (L, S, device) and run through ``blockzoo.ops.masked_attention``
    with the caller's mask (AND / additive), causal flag and key padding.
    """

    supports_documents = False  # the pattern is tied to absolute positions: packing would change it

    def __init__(self, cfg: GlobalConfig):
        super().__init__(cfg)
        if cfg.global_indices is None and cfg.num_global < 1:
            raise ValueError(f"attention.num_global must be >= 1, got {cfg.num_global}")
        if cfg.global_indices is not None and (not cfg.global_indices or min(cfg.global_indices) < 0):
            raise ValueError(f"attention.global_indices must be non-empty and >= 0, got {cfg.global_indices}")
        if cfg.window_size < 0:
            raise ValueError(f"attention.window_size must be >= 0, got {cfg.window_size}")
        self.indices = list(cfg.global_indices) if cfg.global_indices is not None else list(range(cfg.num_global))

    def build_pattern(self, rows: int, cols: int, device: torch.device) -> torch.Tensor:
        return global_pattern(rows, cols, self.indices, self.cfg.window_size, device)
