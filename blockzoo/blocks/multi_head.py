"""Multi-head attention: projections, head split/merge (MHA / GQA / MQA), rotary, and a mechanism."""
from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from blockzoo import ops
from blockzoo.blocks.attention.base import Attention
from blockzoo.blocks.attention.qk_norm import build_qk_norm
from blockzoo.blocks.embedding.rotary import Rotary
from blockzoo.blocks.kv_cache import LayerCache, cached_attention
from blockzoo.registry import registry


PROJECTIONS = ("in_out", "out", "none")


def _check_unprojected(projections: str, dim_model: int, dim_key: int | None, dim_value: int | None,
                       num_heads: int, num_kv_heads: int) -> None:
    """Without input projections, the heads are slices of the inputs: every width is dim_model."""
    for name, width in (("dim_key", dim_key), ("dim_value", dim_value)):
        if width not in (None, dim_model):
            raise ValueError(f"{name}={width}: with projections={projections!r} the inputs are not projected, "
                             f"so it must equal dim_model={dim_model}")
    if num_kv_heads != num_heads:
        raise ValueError(f"num_kv_heads={num_kv_heads}: with projections={projections!r} keys and values are the "
                         f"unprojected inputs, split into num_heads={num_heads} heads")


class MultiHeadAttention(nn.Module):
    """Projects x to q/k/v heads, runs an attention mechanism, merges heads and projects out.

    ``num_kv_heads`` < ``num_heads`` gives grouped-query attention (1 = multi-query); ``qkv``
    is 'fused' (one projection) or 'separate'. With ``cross=True`` keys and values come from a
    context sequence; ``key=`` / ``value=`` in ``forward`` give them distinct inputs. ``dim_key`` /
    ``dim_value`` (default dim_model) are the total widths of the q/k and the v projections, split
    over the heads; the out projection maps dim_value back to dim_model. ``projections``: 'in_out'
    (default), 'out' (inputs split into heads unprojected, as xFormers ran fourier_mix) or 'none' (no
    projection at all: the mechanism is a token mixer, as xFormers ran pooling and visual). The attention
    config's ``qk_norm`` normalizes q and k here, before rotary; ``rotary_options`` (fraction, scaling) go
    to :class:`Rotary`. The mechanism's capability flags are checked here, at build time.
    """

    def __init__(self, dim_model: int, num_heads: int, attention: Any, *, num_kv_heads: int | None = None,
                 qkv: str = "fused", bias: bool = True, rotary: bool = False, rotary_base: float = 10000.0,
                 causal: bool = False, cross: bool = False, max_seq_len: int = 0, path: str = "model.attention",
                 dim_key: int | None = None, dim_value: int | None = None, projections: str = "in_out",
                 rotary_options: dict[str, Any] | None = None):
        super().__init__()
        if projections not in PROJECTIONS:
            raise ValueError(f"projections must be one of {', '.join(PROJECTIONS)}, got {projections!r}")
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
        widths = {"dim_key": dim_key, "dim_value": dim_value}
        for name, width in widths.items():
            shown = "dim_model" if width is None else name
            width = dim_model if width is None else width
            if isinstance(width, bool) or not isinstance(width, int) or width < 1 or width % num_heads:
                raise ValueError(f"num_heads={num_heads} must divide {shown}={width!r}")
        kv = num_heads if num_kv_heads is None else num_kv_heads
        if kv < 1 or num_heads % kv:
            raise ValueError(f"num_kv_heads={kv} must divide num_heads={num_heads}")
        if qkv not in ("fused", "separate"):
            raise ValueError(f"qkv must be 'fused' or 'separate', got {qkv!r}")
        if projections != "in_out":
            _check_unprojected(projections, dim_model, dim_key, dim_value, num_heads, kv)
        self.num_heads, self.num_kv_heads = num_heads, kv
        self.head_dim = (dim_model if dim_key is None else dim_key) // num_heads  # of q and k
        self.value_head_dim = (dim_model if dim_value is None else dim_value) // num_heads
        self.dim_model = dim_model
        self.causal, self.cross, self.qkv_mode = causal, cross, qkv
        self.projections = projections
        d_q, d_k, d_v = self._widths()
        if projections != "in_out":
            pass  # the inputs go to the mechanism as they are, split into heads
        elif cross:
            self.q_proj = nn.Linear(dim_model, d_q, bias=bias)
            self.kv_proj = nn.Linear(dim_model, d_k + d_v, bias=bias)
        elif qkv == "fused":
            self.qkv_proj = nn.Linear(dim_model, d_q + d_k + d_v, bias=bias)
        else:
            self.q_proj = nn.Linear(dim_model, d_q, bias=bias)
            self.k_proj = nn.Linear(dim_model, d_k, bias=bias)
            self.v_proj = nn.Linear(dim_model, d_v, bias=bias)
        self.out_proj = (nn.Linear(num_heads * self.value_head_dim, dim_model, bias=bias)
                         if projections != "none" else None)
        self.attention: Attention = registry("attention").build(
            attention, path=path, num_heads=num_heads, head_dim=self.head_dim, max_seq_len=max_seq_len)
        self._check_capabilities(path)
        self.qk_norm = build_qk_norm(self.attention.cfg, num_heads, kv, self.head_dim)
        self.rotary = Rotary(self.head_dim, rotary_base, **(rotary_options or {})) if rotary else None
        params = inspect.signature(self.attention.forward).parameters
        self._passes_causal = "causal" in params
        self._passes_padding = "key_padding_mask" in params
        # packed documents reach the attention as an ops.DocumentMask (no L x L tensor) only where it takes one
        self._takes_documents = self._passes_causal and getattr(self.attention, "takes_document_mask", False)

    def _check_capabilities(self, path: str) -> None:
        att = self.attention
        name = getattr(att.cfg, "name", type(att).__name__)
        if self.causal and not getattr(att, "supports_causal", True):
            raise ValueError(f"{path}: attention {name!r} cannot honour causal masking, which this model needs")
        if self.cross and not getattr(att, "supports_cross", True):
            raise ValueError(f"{path}: attention {name!r} cannot do cross-attention (L != S)")

    def _widths(self) -> tuple[int, int, int]:
        """Output widths of the q, k and v projections."""
        return (self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim,
                self.num_kv_heads * self.value_head_dim)

    def _projection_weights(self) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """(weight, bias) of the q, k and v projections, as views of whichever layout holds them."""
        if self.qkv_mode == "separate" and not self.cross:
            return [(p.weight, p.bias) for p in (self.q_proj, self.k_proj, self.v_proj)]
        fused = self.kv_proj if self.cross else self.qkv_proj
        widths = list(self._widths())[1:] if self.cross else list(self._widths())
        biases = fused.bias.split(widths) if fused.bias is not None else [None] * len(widths)
        pairs = list(zip(fused.weight.split(widths), biases))
        return [(self.q_proj.weight, self.q_proj.bias)] + pairs if self.cross else pairs

    def _inputs(self, x: torch.Tensor, context: torch.Tensor | None, key: torch.Tensor | None,
                value: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, int]:
        """The key and value inputs (key: ``key``, else the context when cross, else x; value: ``value``, else
        the key input) and the batch all three broadcast to (each batch equal to it or 1)."""
        if self.cross and key is None:
            if context is None:
                raise ValueError("cross-attention needs a context tensor")
            if context.dim() != 3 or context.shape[0] not in (1, x.shape[0]) and x.shape[0] != 1:
                raise ValueError(f"cross-attention context must be (batch, seq, dim) with a batch that broadcasts "
                                 f"against the query's (equal, or 1 on one side): query x {tuple(x.shape)}, "
                                 f"context {tuple(context.shape)}")
        key_in = key if key is not None else (context if self.cross else x)
        value_in = value if value is not None else key_in
        named = {"query x": x, "key": key_in, "value": value_in}
        for name, t in named.items():
            if t.dim() != 3 or t.shape[-1] != self.dim_model:
                raise ValueError(f"attention {name} must be (batch, seq, dim_model={self.dim_model}), "
                                 f"got shape {tuple(t.shape)}")
        if key_in.shape[1] != value_in.shape[1]:
            raise ValueError(f"key and value must have as many positions: key {tuple(key_in.shape)}, "
                             f"value {tuple(value_in.shape)}")
        batch = max(t.shape[0] for t in named.values())
        if any(t.shape[0] not in (1, batch) for t in named.values()):
            shapes = ", ".join(f"{n} {tuple(t.shape)}" for n, t in named.items())
            raise ValueError(f"query, key and value batches must be equal or 1 (broadcast): {shapes}")
        return key_in, value_in, batch

    def _project(self, x: torch.Tensor, context: torch.Tensor | None, key: torch.Tensor | None = None,
                 value: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        key_in, value_in, batch = self._inputs(x, context, key, value)
        d_q, d_k, d_v = self._widths()
        if self.projections != "in_out":
            q, k, v = x, key_in, value_in
        elif self.cross and value_in is key_in:
            q = self.q_proj(x)
            k, v = self.kv_proj(key_in).split([d_k, d_v], dim=-1)
        elif not self.cross and key_in is x and value_in is x:
            if self.qkv_mode == "fused":
                q, k, v = self.qkv_proj(x).split([d_q, d_k, d_v], dim=-1)
            else:
                q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:  # distinct inputs: each projected by its slice of the weights
            q, k, v = (nn.functional.linear(t, w, b) for t, (w, b) in zip((x, key_in, value_in),
                                                                           self._projection_weights()))
        q = q.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)
        k = k.unflatten(-1, (self.num_kv_heads, self.head_dim)).transpose(1, 2)
        v = v.unflatten(-1, (self.num_kv_heads, self.value_head_dim)).transpose(1, 2)
        return tuple(t.expand(batch, *t.shape[1:]) for t in (q, k, v))

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None, *,
                key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        """x (B, L, dim_model) -> (B, L, dim_model). ``mask``: bool keep / additive, broadcastable to (B, H, L, S),
        or an ``ops.DocumentMask`` (packed documents; expanded here unless the attention takes it).

        ``positions`` (B, L) or (L,) int: each token's position for rotary (default ``arange(L)``).
        ``key`` / ``value`` (B, S, dim_model): distinct key and value inputs (see ``_inputs`` for the defaults);
        a batch of 1 among x, key and value broadcasts against the others. ``cache``
        (``blockzoo.blocks.kv_cache``) keeps keys/values for incremental decoding (then ``positions`` are
        absolute and needed, and ``key`` / ``value`` are refused).
        """
        if x.dim() != 3:
            raise ValueError(f"attention input must be (batch, seq, dim), got shape {tuple(x.shape)}")
        if cache is not None:
            if key is not None or value is not None:
                raise ValueError("a cached forward takes no key= / value= (keys and values come from the cache)")
            out = cached_attention(self, x, context, mask, key_padding_mask, positions, cache)
        else:
            q, k, v = self._project(x, context, key, value)
            q, k = self.position_qk(q, k, positions)
            out = self.attend(q, k, v, mask, key_padding_mask)
        B, H, L, D = out.shape
        merged = out.transpose(1, 2).reshape(B, L, H * D)
        return self.out_proj(merged) if self.out_proj is not None else merged

    def position_qk(self, q: torch.Tensor, k: torch.Tensor | None,
                    positions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """qk_norm, then rotary at ``positions`` (None: arange(L)), of q (B, H, L, D) and k (k None: q only)."""
        if self.qk_norm is not None:  # before rotary
            q, k = self.qk_norm(q, k)
        if self.rotary is not None:
            q = self.rotary(q, positions)
            k = None if k is None else self.rotary(k, positions)
        return q, k

    def project_query(self, x: torch.Tensor) -> torch.Tensor:
        """The query heads (B, H, L, D) of x alone (cross-attention over cached keys/values)."""
        q = self.q_proj(x) if self.projections == "in_out" else x
        return q.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """The mechanism on (B, H, L, D) heads, with this module's causal flag and the key padding."""
        if isinstance(mask, ops.DocumentMask) and not (self._takes_documents and key_padding_mask is None):
            mask = mask.dense()  # an attention that needs an element mask: built once per batch, shared
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
