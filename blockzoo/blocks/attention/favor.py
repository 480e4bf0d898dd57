"""FAVOR+ attention (Choromanski et al., 2021, "Rethinking Attention with Performers")."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from blockzoo.blocks.attention.base import Attention
from blockzoo.config import AttentionConfig, one_of
from blockzoo.ops import autocast, keep_from_key_padding, repeat_kv
from blockzoo.registry import register_attention


FEATURE_MAPS = ("positive", "hyperbolic")


@dataclass
class FavorConfig(AttentionConfig):
    """Config of Performer (FAVOR+) attention."""

    num_features: int = field(default=256, metadata={"help": "random features m"})
    redraw_interval: int = field(default=1000, metadata={"help": "training forward calls between redraws (0 = never)"})
    causal_chunk_size: int = field(default=64, metadata={"help": "causal: queries per step of the prefix-sum loop"})
    feature_map: str = field(default="positive", metadata={
        "help": "positive: exp(wx) features (SM+); hyperbolic: exp(wx) and exp(-wx), num_features/2 projections "
                "(SMHyp+ / xFormers' SMReg and SMHyp)", "check": one_of(*FEATURE_MAPS)})


def orthogonal_gaussian(num_features: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(num_features, dim): stacked blocks of orthogonal rows, each row rescaled to the norm of a
    Gaussian vector, so rows are marginally N(0, I) and orthogonal within a block."""
    q, r = torch.linalg.qr(torch.randn(-(-num_features // dim), dim, dim, device=device))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]  # sign fix: Haar-distributed
    norms = torch.randn(num_features, dim, device=device).norm(dim=-1, keepdim=True)
    return q.transpose(-1, -2).reshape(-1, dim)[:num_features] * norms


def _sync_calls(module: "FavorAttention", incompatible_keys: Any) -> None:
    """After load_state_dict: the host copy of the call count follows the loaded buffer."""
    module._calls = int(module.calls)


@register_attention("favor", FavorConfig)
class FavorAttention(Attention):
    """Softmax attention estimated with positive orthogonal random features:
    φ(x) = exp(Wx − |x|²/2) / √m, out = φ(q)(φ(k)ᵀv) / φ(q)(φ(k)ᵀ1) in O(L·m·D); with
    ``feature_map='hyperbolic'`` W has m/2 rows and φ(x) stacks exp(±Wx − |x|²/2) / √m.

    The projection W is a registered buffer (saved with the model), redrawn every
    ``redraw_interval`` training forward calls (the call count is saved too). Causal attention
    runs as a chunked prefix sum (memory O(chunk² + m·D) per head beyond the features); key
    padding zeroes padded keys' features. Arbitrary masks cannot be expressed and are refused;
    there is no attention matrix to drop out, so ``dropout`` must be 0. Computes in float32
    for half-precision inputs, with autocast off (it would run the feature map and the causal prefix
    sums in half precision) and returns q's dtype.
    """

    supports_mask = False

    projection: torch.Tensor
    calls: torch.Tensor

    def __init__(self, cfg: FavorConfig):
        super().__init__(cfg)
        if cfg.head_dim < 1 or cfg.num_features < 1 or cfg.causal_chunk_size < 1 or cfg.redraw_interval < 0:
            raise ValueError(f"favor needs head_dim >= 1 (set by the model), num_features >= 1, "
                             f"causal_chunk_size >= 1 and redraw_interval >= 0; got {cfg.head_dim}, "
                             f"{cfg.num_features}, {cfg.causal_chunk_size}, {cfg.redraw_interval}")
        if cfg.dropout:
            raise ValueError(f"favor has no attention probabilities to drop; attention.dropout must be 0, "
                             f"got {cfg.dropout}")
        if cfg.feature_map not in FEATURE_MAPS or (cfg.feature_map == "hyperbolic" and cfg.num_features % 2):
            raise ValueError(f"attention.feature_map={cfg.feature_map!r} with num_features={cfg.num_features}: "
                             f"expected one of {', '.join(FEATURE_MAPS)} (hyperbolic needs an even num_features)")
        self.register_buffer("projection", orthogonal_gaussian(self._projections, cfg.head_dim))
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self._calls = 0  # host copy of `calls`: deciding a redraw needs no device sync
        self.register_load_state_dict_post_hook(_sync_calls)

    @property
    def _projections(self) -> int:
        """Rows of the projection: one per feature (positive) or per pair of features (hyperbolic)."""
        return self.cfg.num_features // (2 if self.cfg.feature_map == "hyperbolic" else 1)

    @torch.no_grad()
    def redraw_projection(self) -> None:
        """Draw a fresh projection (from the global RNG) into the buffer."""
        fresh = orthogonal_gaussian(self._projections, self.cfg.head_dim, self.projection.device)
        self.projection.copy_(fresh)

    @torch.compiler.disable
    def _count_call(self) -> None:
        if self._calls and self._calls % self.cfg.redraw_interval == 0:
            self.redraw_projection()
        self._calls += 1
        self.calls.fill_(self._calls)

    def features(self, x: torch.Tensor, is_query: bool, keep: torch.Tensor | None = None) -> torch.Tensor:
        """Positive random features (B, H, L, m) of x (B, H, L, D), in x's dtype.

        A stabilizer that cancels in the ratio is subtracted inside the exponential: per row for
        queries, per (batch, head) for keys. ``keep`` (B, 1, L, 1) bool zeroes padded keys.
        """
        x = x * x.shape[-1] ** -0.25
        proj = x @ self.projection.to(x.dtype).T
        if self.cfg.feature_map == "hyperbolic":
            proj = torch.cat([proj, -proj], dim=-1)
        if is_query:
            stab = proj.amax(-1, keepdim=True)
        else:
            masked = proj if keep is None else proj.masked_fill(~keep, float("-inf"))
            stab = masked.amax((-1, -2), keepdim=True)
            stab = torch.where(torch.isneginf(stab), torch.zeros_like(stab), stab)  # every key padded
        phi = torch.exp(proj - (x * x).sum(-1, keepdim=True) / 2 - stab.detach()) / math.sqrt(proj.shape[-1])
        return phi if keep is None else phi * keep

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(q, k, v, mask, causal, key_padding_mask)
        if causal and q.shape[-2] != k.shape[-2]:
            raise ValueError(f"causal favor needs as many keys as queries, got L={q.shape[-2]}, S={k.shape[-2]}")
        if self.training and self.cfg.redraw_interval:
            self._count_call()
        dtype, H = q.dtype, q.shape[1]
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        keep = None
        if key_padding_mask is not None:
            keep = keep_from_key_padding(key_padding_mask.to(k.device), k.shape[0], k.shape[-2]).transpose(-1, -2)
        with autocast.disabled(q):
            qf = self.features(q.to(acc), is_query=True)
            kf = repeat_kv(self.features(k.to(acc), is_query=False, keep=keep), H)
            v = repeat_kv(v, H).to(acc)
            out = self._causal(qf, kf, v) if causal else self._full(qf, kf, v)
        return out.to(dtype)

    @staticmethod
    def _full(qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        num = qf @ (kf.transpose(-1, -2) @ v)
        den = qf @ kf.sum(-2).unsqueeze(-1)
        return num / den.clamp_min(torch.finfo(den.dtype).tiny)

    def _causal(self, qf: torch.Tensor, kf: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Prefix sums chunk by chunk: exact masked products inside a chunk, a running state before it."""
        B, H, L, m = qf.shape
        c = self.cfg.causal_chunk_size
        state = qf.new_zeros(B, H, m, v.shape[-1])
        total = qf.new_zeros(B, H, m, 1)
        tri = torch.ones(c, c, dtype=torch.bool, device=qf.device).tril()
        outs = []
        for s in range(0, L, c):
            qc, kc, vc = qf[:, :, s:s + c], kf[:, :, s:s + c], v[:, :, s:s + c]
            n = qc.shape[-2]
            a = (qc @ kc.transpose(-1, -2)).masked_fill(~tri[:n, :n], 0.0)
            num = a @ vc + qc @ state
            den = a.sum(-1, keepdim=True) + qc @ total
            outs.append(num / den.clamp_min(torch.finfo(den.dtype).tiny))
            state = state + kc.transpose(-1, -2) @ vc
            total = total + kc.sum(-2).unsqueeze(-1)
        return torch.cat(outs, dim=-2)
