"""Nyström attention (Xiong et al., 2021, "Nyströmformer: A Nyström-Based Algorithm for Approximating
Self-Attention")."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo import ops
from blockzoo.blocks.attention.base import Attention
from blockzoo.config import AttentionConfig
from blockzoo.ops import autocast, keep_from_key_padding, repeat_kv
from blockzoo.registry import register_attention


@dataclass
class NystromConfig(AttentionConfig):
    """Config of Nyström attention."""

    num_landmarks: int = field(default=64, metadata={"help": "landmarks (segment means); capped at L"})
    pinv_iterations: int = field(default=6, metadata={"help": "iterations of the Moore-Penrose pseudo-inverse"})
    conv_kernel_size: int = field(default=0, metadata={"help": "depthwise conv skip on V (odd; 0 = off)"})


def iterative_pinv(a: torch.Tensor, iterations: int) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of (..., m, m) by the iteration of Razavi et al. (2014)."""
    eye = torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
    norm = a.abs().sum(-1).amax(-1) * a.abs().sum(-2).amax(-1)  # ||a||_inf ||a||_1 >= sigma_max^2
    z = a.transpose(-1, -2) / norm[..., None, None]
    for _ in range(iterations):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


def segment_means(x: torch.Tensor, num_segments: int, keep: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, L, D) -> (B, H, m, D): means over m contiguous segments of near-equal length.

    ``keep`` (B, 1, L, 1) in x's dtype leaves padded positions out of the means (an all-padding
    segment gives zeros). With m = L every position is its own landmark.
    """
    L = x.shape[-2]
    segment = torch.arange(L, device=x.device) * num_segments // L
    member = (segment[None, :] == torch.arange(num_segments, device=x.device)[:, None]).to(x.dtype)
    if keep is None:
        return (member @ x) / member.sum(-1, keepdim=True)
    return (member @ (x * keep)) / (member @ keep).clamp_min(1.0)


@register_attention("nystrom", NystromConfig)
class NystromAttention(Attention):
    """softmax(Q K̃ᵀ) · pinv(softmax(Q̃ K̃ᵀ)) · softmax(Q̃ Kᵀ) V with landmarks Q̃, K̃ the segment
    means of Q and K, and an iterative pseudo-inverse; plus an optional depthwise convolution of V.

    Self-attention only (landmarks come from one sequence). Key padding is honoured: padded
    positions are left out of the landmarks, their keys and values are zeroed and the last
    softmax masks them, so with ``num_landmarks`` >= L the unpadded rows equal exact attention
    (up to the pseudo-inverse's convergence). Causal masking and arbitrary masks are refused.
    Computes in float32 for half-precision inputs, with autocast off (the pseudo-inverse's iteration
    diverges in half precision), and returns q's dtype.
    """

    supports_causal = False
    supports_mask = False
    supports_cross = False

    def __init__(self, cfg: NystromConfig):
        super().__init__(cfg)
        if cfg.num_landmarks < 1 or cfg.pinv_iterations < 1:
            raise ValueError(f"nystrom needs num_landmarks >= 1 and pinv_iterations >= 1, "
                             f"got {cfg.num_landmarks} and {cfg.pinv_iterations}")
        ks = cfg.conv_kernel_size
        if ks < 0 or (ks and (ks % 2 == 0 or cfg.num_heads < 1)):
            raise ValueError(f"attention.conv_kernel_size must be 0 or odd with num_heads >= 1 (set by the "
                             f"model), got {ks} with num_heads={cfg.num_heads}")
        self.conv = (nn.Conv2d(cfg.num_heads, cfg.num_heads, (ks, 1), padding=(ks // 2, 0), groups=cfg.num_heads,
                               bias=False) if ks else None)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(q, k, v, mask, causal, key_padding_mask)
        with autocast.disabled(q):
            out = self._attend(q, k, v, key_padding_mask)
        return out.to(q.dtype)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """The approximation in float32 (float64 for float64 inputs)."""
        B, H, L, D = q.shape
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        q = q.to(acc) / math.sqrt(D)
        k, v = repeat_kv(k, H).to(acc), repeat_kv(v, H).to(acc)
        keep = kept = None
        if key_padding_mask is not None:
            kept = keep_from_key_padding(key_padding_mask.to(q.device), B, L)  # (B, 1, 1, L) bool
            keep = kept.transpose(-1, -2).to(acc)
            k, v = k * keep, v * keep
        m = min(self.cfg.num_landmarks, L)
        q_l, k_l = segment_means(q, m, keep), segment_means(k, m, keep)
        kernel1 = ops.softmax(q @ k_l.transpose(-1, -2))
        kernel2 = ops.softmax(q_l @ k_l.transpose(-1, -2))
        kernel3 = ops.softmax(q_l @ k.transpose(-1, -2), mask=kept)
        if self.training and self.cfg.dropout > 0:
            kernel1 = F.dropout(kernel1, self.cfg.dropout)
        out = kernel1 @ (iterative_pinv(kernel2, self.cfg.pinv_iterations) @ (kernel3 @ v))
        if self.conv is not None:
            out = out + self.conv(v.to(self.conv.weight.dtype)).to(acc)
        return out
