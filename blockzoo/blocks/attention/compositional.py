"""Compositional attention (Mittal et al., 2022, "Compositional Attention: Disentangling Search and Retrieval")."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from blockzoo import ops
from blockzoo.blocks.attention.base import Attention
from blockzoo.config import AttentionConfig
from blockzoo.ops import repeat_kv
from blockzoo.registry import register_attention


@dataclass
class CompositionalConfig(AttentionConfig):
    """Config of compositional attention: ``num_rules`` retrievals scored in a ``retrieval_dim`` space."""

    num_rules: int = 2
    retrieval_dim: int = 16


@register_attention("compositional", CompositionalConfig)
class CompositionalAttention(Attention):
    """Each head's search (softmax(q kᵀ/√D)) is paired with every retrieval rule; a softmax over rules picks.

    Search: head h's attention A_h = softmax(q_h k_hᵀ/√D) over the keys (causal, masks and key
    padding honoured through ``blockzoo.ops.masked_attention``; grouped-query keys work).
    Retrieval: rule r's values are V_r = v̄ W_r, where v̄ is the values with heads merged
    (num_heads·head_dim; grouped-query values repeated) and W_r a learned projection to head_dim,
    so any head can retrieve with any rule. Candidates O_hr = A_h V_r. Selection: a retrieval
    query q_h U_h (per head) and retrieval keys O_hr W_k (shared) give scores over rules,
    softmax(·/√retrieval_dim), and the output is Σ_r score_hr O_hr. The paper computes the
    retrieval query from the layer input; here it is a per-head projection of the search query,
    since the mechanism does not see the input. With ``num_rules=1`` this is multi-head attention
    whose values, shared by the heads, come from the learned projection W_1. ``dropout`` applies
    to the search probabilities.
    """

    supports_logit_knobs = True  # softcap and sinks, through ops.masked_attention

    def __init__(self, cfg: CompositionalConfig):
        super().__init__(cfg)
        if cfg.num_heads < 1 or cfg.head_dim < 1:
            raise ValueError(f"compositional attention sizes its projections from num_heads and head_dim; got "
                             f"num_heads={cfg.num_heads}, head_dim={cfg.head_dim} (set both, or build it in a model)")
        if cfg.num_rules < 1:
            raise ValueError(f"attention.num_rules must be >= 1, got {cfg.num_rules}")
        if cfg.retrieval_dim < 1:
            raise ValueError(f"attention.retrieval_dim must be >= 1, got {cfg.retrieval_dim}")
        H, D = cfg.num_heads, cfg.head_dim
        self.rule_values = nn.Linear(H * D, cfg.num_rules * D, bias=False)
        self.retrieval_query = nn.Parameter(torch.empty(H, D, cfg.retrieval_dim))
        self.retrieval_key = nn.Linear(D, cfg.retrieval_dim, bias=False)
        nn.init.normal_(self.retrieval_query, std=D ** -0.5)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(q, k, v, mask, causal, key_padding_mask)
        B, H, L, D = q.shape
        H_kv, S = k.shape[1], k.shape[2]
        R = self.cfg.num_rules
        if (H, D) != tuple(self.retrieval_query.shape[:2]):
            raise ValueError(f"compositional attention was built for {self.retrieval_query.shape[0]} heads of "
                             f"{self.retrieval_query.shape[1]}, got {H} heads of {D}")
        merged = repeat_kv(v, H).transpose(1, 2).reshape(B, S, H * D)
        values = self.rule_values(merged).unsqueeze(1).expand(B, H_kv, S, R * D)
        p = self.cfg.dropout if self.training else 0.0
        candidates = ops.masked_attention(q, k, values, mask=mask, causal=causal, dropout_p=p,
                                          key_padding_mask=key_padding_mask, **self.knob_kwargs()).unflatten(-1, (R, D))
        query = torch.einsum("bhld,hde->bhle", q, self.retrieval_query.to(q.dtype))
        keys = self.retrieval_key(candidates)  # (B, H, L, R, retrieval_dim)
        scores = torch.einsum("bhle,bhlre->bhlr", query, keys) / math.sqrt(self.cfg.retrieval_dim)
        weights = ops.softmax(scores, dim=-1)
        return torch.einsum("bhlr,bhlrd->bhld", weights, candidates)
