"""Orthoformer attention (Patrick et al., 2021, "Keeping Your Eye on the Ball: Trajectory Attention in
Video Transformers", the Motionformer paper)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from blockzoo import ops
from blockzoo.blocks.attention.base import Attention
from blockzoo.config import AttentionConfig
from blockzoo.ops import autocast, keep_from_key_padding
from blockzoo.registry import register_attention


@dataclass
class OrthoformerConfig(AttentionConfig):
    """Config of Orthoformer: ``num_landmarks`` queries picked by greedy orthogonal selection."""

    num_landmarks: int = 32


@torch.no_grad()
def orthogonal_landmarks(x: torch.Tensor, count: int,
                         candidates: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedily pick ``count`` rows of x (B, H, N, D) that are as mutually orthogonal as possible.

    The first pick is the first candidate; each next pick is the unpicked candidate whose largest
    |cosine similarity| to the picks so far is smallest (ties go to the lowest index).
    ``candidates`` (B, 1 or H, N) bool limits the choice. Returns (indices (B, H, count),
    found (B, H, count) bool), ``found`` False where no candidate was left. Similarities are
    compared in float32 (float64 stays), with autocast off: half precision ties and reorders them.
    """
    with autocast.disabled(x):
        return _greedy_picks(F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1), count,
                             candidates)


def _greedy_picks(unit: torch.Tensor, count: int,
                  candidates: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    worst = torch.zeros(unit.shape[:-1], dtype=unit.dtype, device=unit.device)  # max |cos| to the picks
    if candidates is not None:
        worst = worst.masked_fill(~candidates, float("inf"))
    indices, found = [], []
    for _ in range(count):
        pick = worst.argmin(-1, keepdim=True)  # (B, H, 1)
        found.append(torch.isfinite(worst.gather(-1, pick)))
        indices.append(pick)
        chosen = unit.gather(-2, pick[..., None].expand(*pick.shape, unit.shape[-1]))  # (B, H, 1, D)
        worst = torch.maximum(worst, (unit @ chosen.transpose(-1, -2)).squeeze(-1).abs())
        worst = worst.scatter(-1, pick, float("inf"))
    return torch.cat(indices, -1), torch.cat(found, -1)


@register_attention("orthoformer", OrthoformerConfig)
class Orthoformer(Attention):
    """softmax(q q̃ᵀ/√D) · softmax(q̃ kᵀ/√D) v with landmarks q̃ chosen among the queries.

    Per (batch, head), ``num_landmarks`` queries (all of them when L is smaller) are selected by
    the paper's greedy orthogonal selection, each new landmark minimising its largest absolute
    cosine similarity to those already chosen. The paper starts from a random query; here the
    first is the first candidate, so the output is deterministic. Selection is not
    differentiable; gradients flow through the selected query vectors. Queries → landmarks →
    keys replaces the L×S attention with L×M and M×S (grouped-query keys work). Key padding:
    padded keys are excluded from the landmark→key softmax and, when L == S (self-attention),
    padded positions are never chosen as landmarks. No causal or arbitrary mask. ``dropout``
    applies to both attention maps.
    """

    supports_causal = False
    supports_mask = False

    def __init__(self, cfg: OrthoformerConfig):
        super().__init__(cfg)
        if cfg.num_landmarks < 1:
            raise ValueError(f"attention.num_landmarks must be >= 1, got {cfg.num_landmarks}")

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(q, k, v, mask, causal, key_padding_mask)
        B, H, L, D = q.shape
        candidates = None
        if key_padding_mask is not None and L == k.shape[2]:
            candidates = keep_from_key_padding(key_padding_mask.to(q.device), B, L)[:, :, 0, :]  # (B, 1, L)
        index, found = orthogonal_landmarks(q, min(self.cfg.num_landmarks, L), candidates)
        landmarks = q.gather(-2, index[..., None].expand(*index.shape, D))  # (B, H, M, D)
        p = self.cfg.dropout if self.training else 0.0
        summary = ops.masked_attention(landmarks, k, v, dropout_p=p, key_padding_mask=key_padding_mask)
        keep = None if candidates is None else found[:, :, None, :]
        return ops.masked_attention(q, landmarks, summary, mask=keep, dropout_p=p)
