"""Mixture-of-experts feedforward: top-k routing with expert capacity and a load-balancing loss
(GShard, Lepikhin et al., 2021; Switch Transformer, Fedus et al., 2022), or a fixed round-robin gate."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from blockzoo.config import FeedforwardConfig, one_of
from blockzoo.registry import register_feedforward, registry


GATES = ("topk", "round_robin")


@dataclass
class MoEConfig(FeedforwardConfig):
    """Config of the MoE feedforward. Expert width and activation are set on ``expert``;
    the inherited hidden_mult / hidden_dim / activation / dropout / bias fields are not used."""

    num_experts: int = field(default=4, metadata={"help": "number of experts"})
    gate: str = field(default="topk", metadata={
        "help": "topk (learned router) or round_robin (token i to expert i mod num_experts: no router, no aux "
                "loss, no capacity; top_k, capacity_factor and aux_loss_weight unused)",
        "check": one_of(*GATES)})
    top_k: int = field(default=2, metadata={"help": "experts per token"})
    capacity_factor: float = field(default=1.25, metadata={
        "help": "expert capacity = ceil(capacity_factor * tokens * top_k / num_experts) per forward"})
    aux_loss_weight: float = field(default=0.01, metadata={"help": "weight of the load-balancing loss"})
    expert: Any = field(default_factory=lambda: {"name": "mlp"},
                        metadata={"help": "config of each expert: any registered feedforward"})


@register_feedforward("moe", MoEConfig)
class MoE(nn.Module):
    """Routes each token to its ``top_k`` experts by a learned softmax router (``gate='topk'``).

    Gates are the router probabilities of the chosen experts, renormalised over them when
    top_k > 1 (GShard); with top_k = 1 the raw probability is kept (Switch), so the router
    also learns from the task loss. Each expert takes at most ``capacity(tokens)`` tokens per
    forward (all B·L tokens of the call count); slots are filled first choices first, then in
    token order (GShard). A token's assignment past capacity is dropped: it contributes 0, so a
    token with every assignment dropped gets output 0 and the block's residual carries it
    through unchanged.

    With ``gate='round_robin'`` there is no router: token i of the call's B·L tokens (row-major) goes
    to expert ``i % num_experts`` with weight 1, every token is processed (each expert takes at most
    ceil(B·L / num_experts)) and ``self.aux_loss`` stays None (the fixed gate of FairScale's tests,
    as xFormers' MixtureOfExperts offered it).

    With the top-k gate, after each forward ``self.aux_loss`` holds
    ``aux_loss_weight · E · Σ_e f_e · P_e`` (Switch), f_e the fraction of routing assignments
    (before capacity) sent to expert e and P_e its mean router probability; it equals
    ``aux_loss_weight`` when routing is uniform. The models add it to their training loss
    (``blockzoo.blocks.aux_loss.auxiliary_losses``).
    """

    def __init__(self, cfg: MoEConfig):
        super().__init__()
        if cfg.num_experts < 1:
            raise ValueError(f"feedforward 'moe': num_experts must be >= 1, got {cfg.num_experts}")
        if cfg.gate == "topk" and not 1 <= cfg.top_k <= cfg.num_experts:
            raise ValueError(f"feedforward 'moe': top_k must be in [1, num_experts={cfg.num_experts}], "
                             f"got {cfg.top_k}")
        if cfg.capacity_factor <= 0:
            raise ValueError(f"feedforward 'moe': capacity_factor must be > 0, got {cfg.capacity_factor}")
        if cfg.aux_loss_weight < 0:
            raise ValueError(f"feedforward 'moe': aux_loss_weight must be >= 0, got {cfg.aux_loss_weight}")
        if cfg.gate not in GATES:
            raise ValueError(f"feedforward 'moe': gate must be one of {', '.join(GATES)}, got {cfg.gate!r}")
        self.cfg = cfg
        self.router = nn.Linear(cfg.dim_model, cfg.num_experts, bias=False) if cfg.gate == "topk" else None
        self.experts = nn.ModuleList(
            registry("feedforward").build(cfg.expert, path="model.feedforward.expert", dim_model=cfg.dim_model)
            for _ in range(cfg.num_experts))
        if not getattr(self.experts[0], "position_wise", True):
            raise ValueError(f"feedforward 'moe': expert {self.experts[0].cfg.name!r} mixes neighbouring tokens "
                             "and cannot run on a routed subset of tokens; use a position-wise feedforward")
        self.aux_loss: torch.Tensor | None = None

    def capacity(self, num_tokens: int) -> int:
        """Most tokens one expert processes in a forward over ``num_tokens`` tokens."""
        return math.ceil(self.cfg.capacity_factor * num_tokens * self.cfg.top_k / self.cfg.num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, d) -> (B, L, d)."""
        if x.dim() != 3:
            raise ValueError(f"feedforward 'moe' expects (batch, seq, dim), got shape {tuple(x.shape)}")
        E, k = self.cfg.num_experts, self.cfg.top_k
        tokens = x.reshape(-1, x.shape[-1])
        T = tokens.shape[0]
        if self.router is None:
            return self._round_robin(tokens).view_as(x)
        logits = self.router(tokens)
        probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)  # (T, E)
        top_p, top_e = probs.topk(k, dim=-1)  # (T, k)
        gates = top_p / top_p.sum(-1, keepdim=True) if k > 1 else top_p
        # assignments in priority order: rank 0 of every token, then rank 1, ...
        expert = top_e.t().reshape(-1)  # (k*T,)
        gate = gates.t().reshape(-1)
        token = torch.arange(T, device=x.device).repeat(k)
        onehot = nn.functional.one_hot(expert, E)  # (k*T, E)
        slot = (onehot.cumsum(0) * onehot).sum(-1) - 1  # position of each assignment in its expert's queue
        kept = slot < self.capacity(T)
        out = torch.zeros_like(tokens)
        for e, ff in enumerate(self.experts):
            sel = kept & (expert == e)
            idx = token[sel]
            y = ff(tokens[idx].unsqueeze(0)).squeeze(0)
            out.index_add_(0, idx, (y * gate[sel, None]).to(out.dtype))  # experts may return bf16 under autocast
        fraction = onehot.float().mean(0)  # f_e: share of the k*T assignments routed to e
        self.aux_loss = self.cfg.aux_loss_weight * E * (fraction * probs.mean(0)).sum()
        return out.view_as(x)

    def _round_robin(self, tokens: torch.Tensor) -> torch.Tensor:
        """(T, d) -> (T, d): token i through expert i % num_experts."""
        out = torch.zeros_like(tokens)
        for e, ff in enumerate(self.experts):
            idx = torch.arange(e, tokens.shape[0], self.cfg.num_experts, device=tokens.device)
            if idx.numel():
                y = ff(tokens[idx].unsqueeze(0)).squeeze(0)
                out.index_copy_(0, idx, y.to(out.dtype))
        return out
