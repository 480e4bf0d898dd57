"""QK-norm: RMSNorm or LayerNorm of the queries and keys over the head dim, with a learnable scale per
head (Dehghani et al., 2023, "Scaling Vision Transformers to 22 Billion Parameters"; as in OLMo 2)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo import ops


class QKNorm(nn.Module):
    """Normalizes q (B, H, L, D) and k (B, H_kv, S, D) over D; ``kind`` is 'rms' or 'layer' (no bias).

    ``q_weight`` (H, D) and ``k_weight`` (H_kv, D), ones at init, scale each head's normalized vectors.
    The multi-head wrapper applies it to the projections, before rotary.
    """

    def __init__(self, kind: str, num_heads: int, num_kv_heads: int, head_dim: int, eps: float = 1e-6):
        super().__init__()
        if kind not in ("rms", "layer"):
            raise ValueError(f"qk_norm must be 'rms' or 'layer', got {kind!r}")
        self.kind, self.eps, self.head_dim = kind, float(eps), head_dim
        self.q_weight = nn.Parameter(torch.ones(num_heads, head_dim))
        self.k_weight = nn.Parameter(torch.ones(num_kv_heads, head_dim))

    def _norm(self, x: torch.Tensor, weight: torch.Tensor, name: str) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != weight.shape[0] or x.shape[-1] != self.head_dim:
            raise ValueError(f"qk_norm expects {name} of shape (B, {weight.shape[0]}, L, {self.head_dim}), "
                             f"got {tuple(x.shape)}")
        if self.kind == "rms":
            y = ops.rms_norm(x, self.head_dim, None, self.eps)
        else:
            y = ops.layer_norm(x, self.head_dim, None, None, self.eps)
        return y * weight[:, None, :].to(y.dtype)

    def forward(self, q: torch.Tensor, k: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(normalized q, normalized k); k None (queries over cached keys) gives None back."""
        return self._norm(q, self.q_weight, "q"), None if k is None else self._norm(k, self.k_weight, "k")

    def extra_repr(self) -> str:
        return f"{self.kind}, heads={self.q_weight.shape[0]}, kv_heads={self.k_weight.shape[0]}, eps={self.eps}"


def build_qk_norm(cfg: Any, num_heads: int, num_kv_heads: int, head_dim: int) -> QKNorm | None:
    """The QKNorm an attention config asks for (``qk_norm``, ``qk_norm_eps``), or None for 'none'."""
    kind = getattr(cfg, "qk_norm", "none") or "none"
    if kind == "none":
        return None
    return QKNorm(kind, num_heads, num_kv_heads, head_dim, getattr(cfg, "qk_norm_eps", 1e-6))
