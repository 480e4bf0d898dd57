"""``masked_attention``: scaled dot-product attention that picks its own path for the mask.

Paths: ``flash`` (no mask / causal: SDPA's fused kernels) and ``dense`` (masked SDPA, with
fully masked rows returning zeros).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from blockzoo.ops import backend
from blockzoo.ops.checks import FLOATS, check_broadcastable, check_mask_dtype, check_tensor

PATHS = ("flash", "dense")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """q (B, H, L, D); k, v (B, H_kv, S, D) with H divisible by H_kv; one dtype and device."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, dtypes=FLOATS, dim=4)
    if k.shape != v.shape[:3] + (k.shape[3],) or k.shape[:3] != v.shape[:3]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must agree on (B, H_kv, S)")
    if q.shape[0] != k.shape[0]:
        raise ValueError(f"q batch {q.shape[0]} != k batch {k.shape[0]}")
    if q.shape[3] != k.shape[3]:
        raise ValueError(f"q head dim {q.shape[3]} != k head dim {k.shape[3]}")
    if q.shape[1] % k.shape[1]:
        raise ValueError(f"q has {q.shape[1]} heads, not a multiple of k/v's {k.shape[1]}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")


def keep_from_key_padding(key_padding_mask: torch.Tensor, batch: int, seq: int) -> torch.Tensor:
    """(B, S) key-padding mask (True = padding, as in nn.MultiheadAttention) -> (B, 1, 1, S) keep."""
    if key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be bool (True = padding), got {key_padding_mask.dtype}")
    if tuple(key_padding_mask.shape) != (batch, seq):
        raise ValueError(f"key_padding_mask has shape {tuple(key_padding_mask.shape)}; expected ({batch}, {seq})")
    return (~key_padding_mask)[:, None, None, :]


def _combine(mask: torch.Tensor | None, causal: bool, L: int, S: int, device: torch.device) -> torch.Tensor | None:
    if not causal:
        return mask
    tri = torch.ones(L, S, dtype=torch.bool, device=device).tril()
    if mask is None:
        return tri
    if mask.dtype == torch.bool:
        return mask & tri
    return mask.masked_fill(~tri, float("-inf"))


def _dense(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
           dropout_p: float) -> torch.Tensor:
    """Masked SDPA; rows with nothing kept are unmasked for the kernel and zeroed after it."""
    if mask.dtype == torch.bool:
        row_kept = mask.any(-1, keepdim=True)
        safe = mask | ~row_kept
    else:
        row_kept = ~torch.isneginf(mask).all(-1, keepdim=True)
        safe = torch.where(row_kept, mask.to(q.dtype), torch.zeros((), dtype=q.dtype, device=q.device))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=safe, dropout_p=dropout_p, scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1])
    return torch.where(row_kept, out, torch.zeros((), dtype=out.dtype, device=out.device))


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                     causal: bool = False, scale: float | None = None, dropout_p: float = 0.0,
                     key_padding_mask: torch.Tensor | None = None, path: str | None = None) -> torch.Tensor:
    """softmax(q kᵀ · scale, masked) v for q (B, H, L, D), k/v (B, H_kv, S, D).

    ``mask``: bool (True = keep) or additive float, broadcastable to (B, H, L, S).
    ``key_padding_mask``: bool (B, S), True = padding. ``causal``: keep j <= i.
    Fully masked rows give zeros. ``path`` forces one of ``PATHS``.
    """
    check_qkv(q, k, v)
    B, H, L, _ = q.shape
    S = k.shape[2]
    if mask is not None:
        check_mask_dtype("mask", mask, q)
        check_broadcastable("mask", mask, (B, H, L, S))
    if key_padding_mask is not None:
        keep = keep_from_key_padding(key_padding_mask.to(q.device), B, S)
        if mask is None:
            mask = keep
        elif mask.dtype == torch.bool:
            mask = mask & keep
        else:
            mask = mask.masked_fill(~keep, float("-inf"))
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if path is not None and path not in PATHS:
        raise ValueError(f"unknown attention path {path!r}; expected one of {', '.join(PATHS)}")
    if mask is None and path != "dense":
        backend.record_path("masked_attention", "flash")
        return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal, scale=scale,
                                              enable_gqa=H != k.shape[1])
    if path == "flash":
        raise ValueError("path='flash' cannot apply a mask; use path='dense' or no mask")
    full = _combine(mask, causal, L, S, q.device)
    if full is None:
        full = torch.ones(L, S, dtype=torch.bool, device=q.device)
    backend.record_path("masked_attention", "dense")
    return _dense(q, k, v, full, scale, dropout_p)
