"""Compositional attention laid out as the paper (and xFormers) ran it: the mechanism owns its projections."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from blockzoo import ops
from blockzoo.blocks.attention.base import Attention
from blockzoo.config import AttentionConfig
from blockzoo.registry import register_attention


@dataclass
class CompositionalPaperConfig(AttentionConfig):
    """Config of paper-layout compositional attention (widths 0 = the model's: dim_attn H·D, dim_selection D)."""

    num_rules: int = 2
    dim_attn: int = 0
    dim_selection: int = 0
    qk_rule: bool = False
    nonlinear: bool = False
    bias: bool = True
    shared_projection: bool = False


def _merge(t: torch.Tensor) -> torch.Tensor:
    """(B, H, L, D) heads -> (B, L, H·D)."""
    return t.transpose(1, 2).flatten(2)


@register_attention("compositional_paper", CompositionalPaperConfig)
class CompositionalPaper(Attention):
    """Compositional attention (Mittal et al., 2022) with its own q/k/v, retrieval and output projections.

    Reads its inputs with heads merged (x = H·D wide; meant for a multi-head wrapper with
    ``projections='none'``, where they are the layer's input). Search: H heads of
    softmax(q_h k_hᵀ/√D) with q, k = x W_q, x W_k (D = head width). Retrieval: ``num_rules``
    value slices of x W_v, each dim_attn/num_rules wide; every head retrieves with every rule.
    Selection over rules, per head: a retrieval query x W_s (dim_selection per head, from the
    input as in the paper) scored against each candidate by a linear score network over
    [candidate, query] (``nonlinear``: a ReLU MLP), or with ``qk_rule`` by a dot product with
    the candidate's projection, scaled by 1/√dim_selection. The softmax-weighted candidates are
    merged and projected back to H·D. ``shared_projection``: one weight for q, k and v (xFormers'
    default, use_separate_proj_weight=False; then dim_attn is H·D). ``dropout`` applies to the
    search probabilities; causal, masks and key padding go to the search through
    ``blockzoo.ops.masked_attention``. Grouped-query inputs are not supported (the wrapper
    runs it with num_heads key/value heads).
    """

    def __init__(self, cfg: CompositionalPaperConfig):
        super().__init__(cfg)
        H, D = cfg.num_heads, cfg.head_dim
        if H < 1 or D < 1:
            raise ValueError(f"compositional_paper sizes its projections from num_heads and head_dim; got "
                             f"num_heads={H}, head_dim={D} (set both, or build it in a model)")
        width, attn = H * D, cfg.dim_attn or H * D
        if cfg.num_rules < 1 or attn % cfg.num_rules:
            raise ValueError(f"attention.num_rules={cfg.num_rules} must be >= 1 and divide attention.dim_attn={attn}")
        if cfg.shared_projection and attn != width:
            raise ValueError(f"attention.dim_attn={attn}: a shared q/k/v projection makes it num_heads*head_dim={width}")
        if cfg.dim_selection < 0:
            raise ValueError(f"attention.dim_selection must be >= 0 (0 = head_dim), got {cfg.dim_selection}")
        self.value_dim, self.selection = attn // cfg.num_rules, cfg.dim_selection or D
        b = cfg.bias
        self.q_proj = nn.Linear(width, width, bias=b)
        self.k_proj = None if cfg.shared_projection else nn.Linear(width, width, bias=b)
        self.v_proj = None if cfg.shared_projection else nn.Linear(width, attn, bias=b)
        self.value_q = nn.Linear(width, self.selection * H, bias=b)
        if cfg.qk_rule:
            self.value_k = nn.Linear(self.value_dim, self.selection, bias=b)
        else:
            pair = self.value_dim + self.selection
            self.score_network = (nn.Sequential(nn.Linear(pair, self.selection, bias=b), nn.ReLU(),
                                                nn.Linear(self.selection, 1, bias=b))
                                  if cfg.nonlinear else nn.Linear(pair, 1, bias=b))
        self.out_proj = nn.Linear(H * self.value_dim, width, bias=b)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(q, k, v, mask, causal, key_padding_mask)
        B, H, L, D = q.shape
        if (H, D) != (self.cfg.num_heads, self.cfg.head_dim) or k.shape[1] != H or v.shape[1] != H:
            raise ValueError(f"compositional_paper was built for {self.cfg.num_heads} heads of {self.cfg.head_dim} "
                             f"(queries, keys and values alike), got q {tuple(q.shape)}, k {tuple(k.shape)}, "
                             f"v {tuple(v.shape)}")
        x_q, x_k, x_v = _merge(q), _merge(k), _merge(v)
        R, S = self.cfg.num_rules, k.shape[2]
        q_h = self.q_proj(x_q).unflatten(-1, (H, D)).transpose(1, 2)
        k_h = (self.k_proj or self.q_proj)(x_k).unflatten(-1, (H, D)).transpose(1, 2)
        values = (self.v_proj or self.q_proj)(x_v).unsqueeze(1).expand(B, H, S, R * self.value_dim)
        p = self.cfg.dropout if self.training else 0.0
        candidates = ops.masked_attention(q_h, k_h, values, mask=mask, causal=causal, dropout_p=p,
                                          key_padding_mask=key_padding_mask).unflatten(-1, (R, self.value_dim))
        query = self.value_q(x_q).unflatten(-1, (H, 1, self.selection)).transpose(1, 2)  # (B, H, L, 1, sel)
        if self.cfg.qk_rule:
            scores = (query * self.selection ** -0.5 * self.value_k(candidates)).sum(-1)
        else:
            pairs = torch.cat([candidates, query.expand(-1, -1, -1, R, -1)], dim=-1)
            scores = self.score_network(pairs).squeeze(-1)  # (B, H, L, R)
        weights = ops.softmax(scores, dim=-1)
        mixed = (weights.unsqueeze(-1) * candidates).sum(-2)  # (B, H, L, value_dim)
        return self.out_proj(_merge(mixed)).unflatten(-1, (H, D)).transpose(1, 2)
