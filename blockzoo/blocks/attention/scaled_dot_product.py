"""Scaled dot-product attention (Vaswani et al., 2017, "Attention Is All You Need")."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from blockzoo import ops
from blockzoo.blocks.attention.base import Attention
from blockzoo.config import AttentionConfig
from blockzoo.registry import register_attention


@dataclass
class ScaledDotProductConfig(AttentionConfig):
    """Config of full softmax attention."""

    scale: float | None = None


@register_attention("scaled_dot_product", ScaledDotProductConfig)
class ScaledDotProduct(Attention):
    """softmax(q kᵀ / √d + mask) v over every key; causal, bool/additive mask and key padding.

    Runs through ``blockzoo.ops.masked_attention``, which picks the fastest correct path for
    the mask. Fully masked rows give zeros. Packed documents (an ``ops.DocumentMask``) go as the block
    mask built from their ids. Decodes over a key/value cache.
    """

    supports_logit_knobs = True  # softcap and sinks, through ops.masked_attention
    takes_document_mask = True  # packed documents arrive as an ops.DocumentMask: its block mask, no (L, S) tensor
    supports_decoding = True

    def decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_pos: torch.Tensor,
               k_pos: torch.Tensor) -> torch.Tensor:
        return self.cached_attention(q, k, v, ops.position_keep(q_pos, k_pos), scale=self.cfg.scale)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(q, k, v, mask, causal, key_padding_mask)
        if isinstance(mask, ops.DocumentMask):
            mask = mask.block_mask(causal)
        p = self.cfg.dropout if self.training else 0.0
        return ops.masked_attention(q, k, v, mask=mask, causal=causal, scale=self.cfg.scale, dropout_p=p,
                                    key_padding_mask=key_padding_mask, **self.knob_kwargs())
