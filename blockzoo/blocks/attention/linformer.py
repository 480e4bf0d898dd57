"""Linformer attention (Wang et al., 2020, "Linformer: Self-Attention with Linear Complexity")."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from blockzoo import ops
from blockzoo.blocks.attention.base import Attention
from blockzoo.config import AttentionConfig
from blockzoo.ops import keep_from_key_padding
from blockzoo.registry import register_attention


@dataclass
class LinformerConfig(AttentionConfig):
    """Config of Linformer attention."""

    k: int = field(default=64, metadata={"help": "projected sequence length of keys and values"})
    share_kv: bool = field(default=False, metadata={"help": "one projection for keys and values (E = F)"})


@register_attention("linformer", LinformerConfig)
class LinformerAttention(Attention):
    """Keys and values are projected along the sequence to ``k`` rows by learned matrices E and F
    (``max_seq_len`` x ``k``, shared across heads); softmax attention then runs over those rows.

    A sequence of S <= max_seq_len keys uses the first S rows of E and F. Key padding zeroes the
    padded keys and values before the projection, so padding contributes nothing. An arbitrary
    mask or causal masking cannot be expressed on projected keys and is refused.
    """

    supports_logit_knobs = True  # softcap and sinks, through ops.masked_attention

    supports_causal = False
    supports_mask = False

    def __init__(self, cfg: LinformerConfig):
        super().__init__(cfg)
        if cfg.max_seq_len < 1 or cfg.k < 1:
            raise ValueError(f"linformer needs max_seq_len >= 1 (set by the model) and k >= 1, "
                             f"got max_seq_len={cfg.max_seq_len}, k={cfg.k}")
        std = 1.0 / math.sqrt(cfg.max_seq_len)
        self.proj_k = nn.Parameter(torch.randn(cfg.max_seq_len, cfg.k) * std)
        self.proj_v = None if cfg.share_kv else nn.Parameter(torch.randn(cfg.max_seq_len, cfg.k) * std)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(q, k, v, mask, causal, key_padding_mask)
        S = k.shape[-2]
        if S > self.cfg.max_seq_len:
            raise ValueError(f"linformer was built for max_seq_len={self.cfg.max_seq_len} keys, got {S}")
        if key_padding_mask is not None:
            keep = keep_from_key_padding(key_padding_mask.to(k.device), k.shape[0], S)[:, :, 0, :, None]
            k, v = k * keep, v * keep
        e = self.proj_k[:S].to(k.dtype)
        f = e if self.proj_v is None else self.proj_v[:S].to(v.dtype)
        k_proj = torch.einsum("bhsd,sk->bhkd", k, e)
        v_proj = torch.einsum("bhsd,sk->bhkd", v, f)
        p = self.cfg.dropout if self.training else 0.0
        return ops.masked_attention(q, k_proj, v_proj, dropout_p=p, **self.knob_kwargs())
