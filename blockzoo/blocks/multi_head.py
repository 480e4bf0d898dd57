"""Multi-head attention: projections, head split/merge (MHA / GQA / MQA), rotary, and a mechanism."""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from blockzoo import ops
from blockzoo.blocks.attention.base import Attention
from blockzoo.blocks.embedding.rotary import Rotary
from blockzoo.blocks.kv_cache import LayerCache, cached_attention
from blockzoo.registry import registry


class MultiHeadAttention(nn.Module):
    """Projects x to q/k/v heads, runs an attention mechanism, merges heads and projects out.

    ``num_kv_heads`` < ``num_heads`` gives grouped-query attention (1 = multi-query); ``qkv``
    is 'fused' (one projection) or 'separate'. With ``cross=True`` keys and values come from a
    context sequence. The mechanism's capability flags are checked here, at build time.
    """

    def __init__(self, dim_model: int, num_heads: int, attention: Any, *, num_kv_heads: int | None = None,
                 qkv: str = "fused", bias: bool = True, rotary: bool = False, rotary_base: float = 10000.0,
                 causal: bool = False, cross: bool = False, max_seq_len: int = 0, path: str = "model.attention"):
        super().__init__()
        if num_heads < 1 or dim_model % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim_model={dim_model}")
        kv = num_heads if num_kv_heads is None else num_kv_heads
        if kv < 1 or num_heads % kv:
            raise ValueError(f"num_kv_heads={kv} must divide num_heads={num_heads}")
        if qkv not in ("fused", "separate"):
            raise ValueError(f"qkv must be 'fused' or 'separate', got {qkv!r}")
        self.num_heads, self.num_kv_heads = num_heads, kv
        self.head_dim = dim_model // num_heads
        self.causal, self.cross, self.qkv_mode = causal, cross, qkv
        d_q, d_kv = num_heads * self.head_dim, kv * self.head_dim
        if cross:
            self.q_proj = nn.Linear(dim_model, d_q, bias=bias)
            self.kv_proj = nn.Linear(dim_model, 2 * d_kv, bias=bias)
        elif qkv == "fused":
            self.qkv_proj = nn.Linear(dim_model, d_q + 2 * d_kv, bias=bias)
        else:
            self.q_proj = nn.Linear(dim_model, d_q, bias=bias)
            self.k_proj = nn.Linear(dim_model, d_kv, bias=bias)
            self.v_proj = nn.Linear(dim_model, d_kv, bias=bias)
        self.out_proj = nn.Linear(d_q, dim_model, bias=bias)
        self.attention: Attention = registry("attention").build(
            attention, path=path, num_heads=num_heads, head_dim=self.head_dim, max_seq_len=max_seq_len)
        self._check_capabilities(path)
        self.rotary = Rotary(self.head_dim, rotary_base) if rotary else None
        params = inspect.signature(self.attention.forward).parameters
        self._passes_causal = "causal" in params
        self._passes_padding = "key_padding_mask" in params

    def _check_capabilities(self, path: str) -> None:
        att = self.attention
        name = getattr(att.cfg, "name", type(att).__name__)
        if self.causal and not getattr(att, "supports_causal", True):
            raise ValueError(f"{path}: attention {name!r} cannot honour causal masking, which this model needs")
        if self.cross and not getattr(att, "supports_cross", True):
            raise ValueError(f"{path}: attention {name!r} cannot do cross-attention (L != S)")

    def _project(self, x: torch.Tensor, context: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        B, L, _ = x.shape
        d_q, d_kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context tensor")
            if context.dim() != 3 or context.shape[0] != B:
                raise ValueError(f"cross-attention context must be (batch, seq, dim) with the query's batch {B}: "
                                 f"query x {tuple(x.shape)}, context {tuple(context.shape)}")
            q = self.q_proj(x)
            k, v = self.kv_proj(context).split([d_kv, d_kv], dim=-1)
        elif self.qkv_mode == "fused":
            q, k, v = self.qkv_proj(x).split([d_q, d_kv, d_kv], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        S = k.shape[1]
        q = q.view(B, L, self.num_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, S, self.num_kv_heads, self.head_dim).transpose(1, 2)
        return q, k, v

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        """x (B, L, dim_model) -> (B, L, dim_model). ``mask``: bool keep / additive, broadcastable to (B, H, L, S).
        ``positions`` (B, L) or (L,) int64 (None: arange(L)) rotate q/k; ``cache`` (``blockzoo.blocks.kv_cache``)
        keeps keys/values for incremental decoding."""
        if x.dim() != 3:
            raise ValueError(f"attention input must be (batch, seq, dim), got shape {tuple(x.shape)}")
        if cache is not None:
            out = cached_attention(self, x, context, mask, key_padding_mask, positions, cache)
        else:
            q, k, v = self._project(x, context)
            if self.rotary is not None:
                q, k = self.rotary(q, positions), self.rotary(k, positions)
            out = self.attend(q, k, v, mask, key_padding_mask)
        B, H, L, D = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, L, H * D))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """The mechanism on (B, H, L, D) heads, with this module's causal flag and the key padding."""
        kwargs: dict[str, Any] = {}
        if self._passes_causal:
            kwargs["causal"] = self.causal
        elif self.causal:
            mask = ops.apply_keep(mask, ops.causal_keep(q.shape[-2], k.shape[-2], q.device))
        if self._passes_padding:
            kwargs["key_padding_mask"] = key_padding_mask
        elif key_padding_mask is not None:
            mask = ops.apply_keep(mask, ops.keep_from_key_padding(key_padding_mask, k.shape[0], k.shape[-2]))
        return self.attention(q, k, v, mask=mask, **kwargs)
