"""Lambda layer (Bello, 2021, "LambdaNetworks: Modeling Long-Range Interactions Without Attention")."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from blockzoo import ops
from blockzoo.blocks.attention.base import Attention
from blockzoo.config import AttentionConfig, _f, one_of
from blockzoo.ops import keep_from_key_padding, repeat_kv
from blockzoo.registry import register_attention


@dataclass
class LambdaConfig(AttentionConfig):
    """Config of the lambda layer; the relative position table spans ±max_seq_len (set by the model)."""

    position_init_std: float = 0.02
    key_softmax: str = _f("positions", "normalise keys over context positions (the paper) or over channels "
                          "(xFormers 0.0.20)", one_of("positions", "channels"))
    position_lambda: str = _f("relative", "relative: Σ_m E_{n-m} v_m (the paper); summed: (Σ_m E_{n-m}) with the "
                              "query's own value v_n (xFormers 0.0.20's einsum)", one_of("relative", "summed"))


@register_attention("lambda", LambdaConfig)
class LambdaLayer(Attention):
    """y_n = q_nᵀ (λᶜ + λᵖ_n): a content lambda shared by all queries plus a position lambda per query.

    Content lambda: λᶜ = softmax(K)ᵀ V, the keys normalised by a softmax over context positions
    (one D×D matrix per key/value head). Position lambda: λᵖ_n = Σ_m E_{n−m} v_mᵀ with E a learned
    relative position embedding of 2·max_seq_len − 1 rows of size head_dim, shared by the heads;
    q_nᵀ λᵖ_n is computed as Σ_m (q_n·E_{n−m}) v_m without building λᵖ. Simplifications against
    the paper: key depth |k| = value depth |v| = head_dim, intra-depth |u| = 1, and no batch norm
    on queries/values (the multi-head wrapper owns the projections). ``dropout`` applies to the
    normalised keys. Key padding: padded keys get no softmax mass and their values are zeroed.
    The content lambda summarises the whole context, so causal and per-query masks cannot be
    honoured. Cross-attention works (positions are relative); L and S must be <= max_seq_len.
    ``key_softmax='channels'`` and ``position_lambda='summed'`` reproduce xFormers 0.0.20's lambda
    (keys normalised over their channels; each query's position term Σ_m q_n·E_{n−m} scales its own
    value v_n), for models trained there.
    """

    supports_causal = False
    supports_mask = False

    def __init__(self, cfg: LambdaConfig):
        super().__init__(cfg)
        if cfg.max_seq_len < 1 or cfg.head_dim < 1:
            raise ValueError(f"lambda needs max_seq_len and head_dim to size its position embedding; got "
                             f"max_seq_len={cfg.max_seq_len}, head_dim={cfg.head_dim}")
        self.position = nn.Parameter(torch.empty(2 * cfg.max_seq_len - 1, cfg.head_dim))
        nn.init.normal_(self.position, std=cfg.position_init_std)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(q, k, v, mask, causal, key_padding_mask)
        B, H, L, D = q.shape
        S, M = k.shape[2], self.cfg.max_seq_len
        if max(L, S) > M:
            raise ValueError(f"lambda was built for max_seq_len={M}; got L={L}, S={S}")
        if D != self.position.shape[1]:
            raise ValueError(f"lambda was built for head_dim={self.position.shape[1]}, got {D}")
        keep = None
        if key_padding_mask is not None:
            keep = keep_from_key_padding(key_padding_mask.to(k.device), B, S)  # (B, 1, 1, S)
            v = v * keep.transpose(-1, -2).to(v.dtype)
        if self.cfg.key_softmax == "channels":
            keys = ops.softmax(k, dim=-1).transpose(-1, -2)  # padded keys meet zeroed values
        else:
            keys = ops.softmax(k.transpose(-1, -2), dim=-1, mask=keep)  # (B, H_kv, D, S)
        keys = F.dropout(keys, self.cfg.dropout, self.training)
        content = repeat_kv(keys @ v, H)  # (B, H, D, D)
        # offsets n - m run from -(S-1) to L-1: rows M-S .. M+L-2 of the table
        table = self.position[M - S:M + L - 1].to(q.dtype)
        offsets = (torch.arange(L, device=q.device)[:, None] - torch.arange(S, device=q.device)[None, :]) + S - 1
        if self.cfg.position_lambda == "summed":
            if L != S:
                raise ValueError(f"lambda with position_lambda='summed' needs as many keys as queries, got L={L}, "
                                 f"S={S}")
            summed = table[offsets].sum(1)  # (L, D): Σ_m E_{n-m}
            return q @ content + (q * summed).sum(-1, keepdim=True) * repeat_kv(v, H)
        weights = (q @ table.T).gather(-1, offsets.expand(B, H, L, S))  # (B, H, L, S): q_n · E_{n-m}
        return q @ content + weights @ repeat_kv(v, H)
