"""Mask arithmetic shared by the attention ops and components, written once.

A mask is a bool *keep* (True = keep the score) or an *additive* float tensor (``-inf`` removes a
score), broadcastable to (B, H, L, S). ``repeat_kv`` is the matching head broadcast of grouped-query
keys and values.
"""
from __future__ import annotations

import torch


def causal_keep(q_len: int, kv_len: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(q_len, kv_len) bool: True where j <= i."""
    return torch.ones(q_len, kv_len, dtype=torch.bool, device=device).tril()


def keep_from_key_padding(key_padding_mask: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """(B, S) key-padding mask (True = padding, as in nn.MultiheadAttention) -> (B, 1, 1, S) keep."""
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be bool (True = padding), got {key_padding_mask.dtype}")
    if tuple(key_padding_mask.shape) != (batch, seq):
        raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}; expected ({batch}, {seq})")
    return (~key_padding_mask)[:, None, None, :]


def apply_keep(mask: torch.Tensor | None, keep: torch.Tensor | None) -> torch.Tensor | None:
    """``mask`` restricted to the bool ``keep`` (shapes broadcast): AND for a bool mask, ``-inf`` where
    ``keep`` is False for an additive one (its dtype and device kept). A None side gives the other."""
    if mask is None:
        return keep
    if keep is None:
        return mask
    return mask & keep if mask.dtype == torch.bool else mask.masked_fill(~keep, float("-inf"))


def as_4d(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` viewed with leading dims of size 1 up to 4 dims: (L, S) -> (1, 1, L, S)."""
    return mask.reshape((1,) * (4 - mask.dim()) + tuple(mask.shape))


def repeat_kv(k: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Expand (B, H_kv, S, D) to (B, num_heads, S, D) for grouped-query attention."""
    h_kv = k.shape[1]
    if h_kv == num_heads:
        return k
    return k.repeat_interleave(num_heads // h_kv, dim=1)


def position_keep(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Causal keep from absolute positions: q_pos (B, L), k_pos (B, S) (-1 = empty slot) -> (B, 1, L, S)
    bool, True where 0 <= k_pos <= q_pos (and q_pos - k_pos <= ``window`` when given)."""
    q = q_pos[:, :, None]
    k = k_pos[:, None, :]
    keep = (k >= 0) & (k <= q)
    if window is not None:
        keep = keep & (q - k <= window)
    return keep[:, None]
