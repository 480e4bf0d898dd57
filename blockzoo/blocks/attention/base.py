"""Base class of attention mechanisms and the capability flags the multi-head wrapper reads."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from blockzoo import ops
from blockzoo.config import AttentionConfig, ConfigError


class Attention(nn.Module):
    """An attention mechanism: maps q (B, H, L, D), k and v (B, H_kv, S, D) to (B, H, L, D).

    Subclasses declare what they can honour; the multi-head wrapper refuses, at build time,
    a model that asks for something a mechanism cannot do, and ``check_inputs`` refuses it at
    call time. ``forward(q, k, v, mask=None, causal=False, key_padding_mask=None)``; a subclass
    may accept only ``mask``: the wrapper then folds causal and key padding into the mask.

    The knobs of the base config: ``qk_norm`` (applied by the multi-head wrapper before rotary),
    ``softcap`` and ``sinks``, which only a mechanism with explicit softmax scores
    (``supports_logit_knobs``) takes: it passes ``knob_kwargs()`` to ``ops.masked_attention``; the
    others refuse them with the config path (``check_config``). With ``sinks`` the mechanism owns
    ``sink_logits``, one learnable logit per head (zeros at init).
    """

    supports_causal: bool = True
    supports_mask: bool = True
    supports_key_padding: bool = True
    supports_cross: bool = True  # S != L (cross-attention)
    requires_grid: bool = False  # tokens must form a square 2-D grid
    requires_fixed_length: bool = False  # S must equal max_seq_len (e.g. learned projections)
    supports_documents: bool = True  # packed documents run exactly (False: a pattern tied to absolute positions)
    supports_logit_knobs: bool = False  # explicit softmax scores: softcap and sinks
    supports_decoding: bool = False  # causal self-attention over a key/value cache (``decode``)

    def __init__(self, cfg: AttentionConfig):
        super().__init__()
        self.cfg = cfg
        type(self).check_config(cfg)
        if getattr(cfg, "sinks", False):
            if cfg.num_heads < 1:
                raise ConfigError(f"attention.sinks=True needs attention.num_heads >= 1 (set by the model), "
                                  f"got {cfg.num_heads}")
            self.sink_logits: nn.Parameter | None = nn.Parameter(torch.zeros(cfg.num_heads))
        else:
            self.register_parameter("sink_logits", None)

    @classmethod
    def check_config(cls, cfg: AttentionConfig, path: str = "attention") -> None:
        """Refuse knobs this mechanism cannot apply (ConfigError naming ``path``); the registry calls it."""
        name = getattr(cfg, "name", None) or cls.__name__
        softcap, sinks = getattr(cfg, "softcap", None), getattr(cfg, "sinks", False)
        if not cls.supports_logit_knobs:
            if softcap is not None:
                raise ConfigError(f"{path}.softcap={softcap}: attention {name!r} has no explicit softmax scores "
                                  "to cap (use scaled_dot_product, local or another softmax attention)")
            if sinks:
                raise ConfigError(f"{path}.sinks=True: attention {name!r} has no softmax whose denominator a "
                                  "sink could join")

    def knob_kwargs(self) -> dict[str, Any]:
        """``softcap`` and ``sink_logits`` for ``ops.masked_attention``."""
        return {"softcap": getattr(self.cfg, "softcap", None), "sink_logits": self.sink_logits}

    @classmethod
    def capabilities(cls) -> dict[str, bool]:
        """What this mechanism can honour."""
        return {"causal": cls.supports_causal, "mask": cls.supports_mask,
                "key_padding": cls.supports_key_padding, "cross": cls.supports_cross,
                "grid": cls.requires_grid, "fixed_length": cls.requires_fixed_length,
                "softcap": cls.supports_logit_knobs, "sinks": cls.supports_logit_knobs,
                "documents": cls.supports_mask and cls.supports_documents, "decoding": cls.supports_decoding}

    def check_inputs(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any = None,
                     causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> None:
        """Raise ValueError for a request this mechanism cannot honour."""
        name = type(self).__name__
        if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
            raise ValueError(f"{name} expects (B, H, L, D) inputs, got q {tuple(q.shape)}, k {tuple(k.shape)}")
        if causal and not self.supports_causal:
            raise ValueError(f"{name} cannot honour causal=True")
        if mask is not None and not self.supports_mask:
            raise ValueError(f"{name} cannot honour an attention mask")
        if key_padding_mask is not None and not self.supports_key_padding:
            raise ValueError(f"{name} cannot honour a key padding mask")
        if q.shape[-2] != k.shape[-2] and not self.supports_cross:
            raise ValueError(f"{name} needs as many keys as queries (got L={q.shape[-2]}, S={k.shape[-2]})")

    # -- incremental decoding (mechanisms with ``supports_decoding``) ------------------------------
    def decode_window(self) -> int | None:
        """How far back (in positions) a query sees when decoding; None = every earlier key. A cache
        keeps ``window + 1`` slots per layer (a ring buffer) when this is not None."""
        return None

    def decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
               k_pos: torch.Tensor) -> torch.Tensor:
        """Causal attention of new queries q (B, H, L, D) at absolute positions ``q_pos`` (B, L) to cached
        keys/values (B, H_kv, S, D) at ``k_pos`` (B, S) (-1 = empty slot), a query seeing keys at
        positions <= its own. Only mechanisms with ``supports_decoding`` implement it."""
        raise ValueError(f"attention {getattr(self.cfg, 'name', type(self).__name__)!r} cannot decode "
                         "incrementally (no key/value cache)")

    def cached_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor,
                         bias: torch.Tensor | None = None, scale: float | None = None) -> torch.Tensor:
        """``masked_attention`` with a (B, 1, L, S) keep from cache positions (one query: as key padding,
        SDPA with no mask analysis) and an optional additive ``bias`` (B or 1, H, L, S); the softcap and
        sinks of ``knob_kwargs`` apply as on the training path."""
        knobs = self.knob_kwargs() if self.supports_logit_knobs else {}
        if bias is None and q.shape[-2] == 1:
            return ops.masked_attention(q, k, v, scale=scale, key_padding_mask=~keep[:, 0, 0], **knobs)
        mask = keep if bias is None else ops.apply_keep(bias.to(q.dtype), keep)
        return ops.masked_attention(q, k, v, mask=mask, scale=scale, **knobs)
