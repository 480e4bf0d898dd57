"""Transformer blocks: encoder, decoder-only and decoder (with cross-attention); pre/post/deepnorm residuals."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from blockzoo import ops
from blockzoo.blocks.kv_cache import LayerCache
from blockzoo.blocks.multi_head import MultiHeadAttention
from blockzoo.config import RESIDUALS, BlockConfig
from blockzoo.registry import register_block, registry


def deepnorm_constants(num_layers: int, num_decoder_layers: int = 0) -> tuple[float, float]:
    """(alpha, beta) of DeepNet (Wang et al., 2022) for an encoder-only or decoder-only stack."""
    n = num_layers + num_decoder_layers
    return (2.0 * n) ** 0.25, (8.0 * n) ** -0.25


class Residual(nn.Module):
    """One residual branch around a sublayer: pre-norm, post-norm or DeepNorm (alpha-scaled post-norm)."""

    def __init__(self, layout: str, norm: nn.Module, dropout: float, alpha: float = 1.0):
        super().__init__()
        if layout not in RESIDUALS:
            raise ValueError(f"residual must be one of {', '.join(RESIDUALS)}, got {layout!r}")
        self.layout, self.norm, self.dropout, self.alpha = layout, norm, dropout, alpha

    def _drop(self, y: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout > 0:
            return ops.dropout_bias_act(y, None, self.dropout, "none", training=True)
        return y

    def forward(self, x: torch.Tensor, sublayer, *args, **kwargs) -> torch.Tensor:
        if self.layout == "pre":
            return x + self._drop(sublayer(self.norm(x), *args, **kwargs))
        scale = self.alpha if self.layout == "deepnorm" else 1.0
        return self.norm(x * scale + self._drop(sublayer(x, *args, **kwargs)))


@dataclass
class EncoderBlockConfig(BlockConfig):
    """Config of an encoder block (self-attention + feedforward)."""


class TransformerBlock(nn.Module):
    """Self-attention and feedforward, each in a residual branch; subclasses add cross-attention."""

    has_cross = False

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.dim_model
        alpha = cfg.deepnorm_alpha if cfg.residual == "deepnorm" else 1.0
        self.self_attn = MultiHeadAttention(
            d, cfg.num_heads, cfg.attention, num_kv_heads=cfg.num_kv_heads, qkv=cfg.qkv, bias=cfg.bias,
            rotary=cfg.rotary, rotary_base=cfg.rotary_base, causal=cfg.causal, max_seq_len=cfg.max_seq_len,
            path="model.attention", rotary_options=cfg.rotary_options, dim_key=cfg.dim_key, dim_value=cfg.dim_value,
            projections=cfg.projections)
        self.attn_res = Residual(cfg.residual, self._norm(), cfg.dropout, alpha)
        if self.has_cross:
            self.cross_attn = MultiHeadAttention(
                d, cfg.num_heads, cfg.cross_attention or cfg.attention, num_kv_heads=cfg.num_kv_heads,
                bias=cfg.bias, cross=True, max_seq_len=cfg.max_seq_len, path="model.cross_attention",
                dim_key=cfg.dim_key, dim_value=cfg.dim_value)
            self.cross_res = Residual(cfg.residual, self._norm(), cfg.dropout, alpha)
        self.feedforward = registry("feedforward").build(cfg.feedforward, path="model.feedforward", dim_model=d)
        self.ff_res = Residual(cfg.residual, self._norm(), cfg.dropout, alpha)

    def _norm(self) -> nn.Module:
        return registry("norm").build(self.cfg.norm, path="model.norm", dim=self.cfg.dim_model)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, memory: torch.Tensor | None = None,
                memory_key_padding_mask: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                cache: LayerCache | None = None) -> torch.Tensor:
        """x (B, L, d); ``memory`` (B, S, d) is the encoder output for blocks with cross-attention;
        ``positions`` (B, L) or (L,) int: each token's position for rotary (default ``arange(L)``; absolute
        positions with a ``cache``, this layer's ``blockzoo.blocks.kv_cache.LayerCache``)."""
        x = self.attn_res(x, self.self_attn, mask=mask, key_padding_mask=key_padding_mask, positions=positions,
                          cache=cache)
        if self.has_cross:
            if memory is None and (cache is None or cache.cross_k is None):
                raise ValueError("a decoder block needs the encoder output (memory)")
            x = self.cross_res(x, self.cross_attn, context=memory, key_padding_mask=memory_key_padding_mask,
                               cache=cache)
        elif memory is not None:
            raise ValueError(f"{type(self).__name__} has no cross-attention; memory must be None")
        return self.ff_res(x, self.feedforward)


@register_block("encoder", EncoderBlockConfig)
class EncoderBlock(TransformerBlock):
    """Encoder block: bidirectional self-attention (causal only if the config asks) and a feedforward."""


@dataclass
class DecoderOnlyBlockConfig(BlockConfig):
    """Config of a decoder-only (GPT) block: causal self-attention."""

    causal: bool = True


@register_block("decoder_only", DecoderOnlyBlockConfig)
class DecoderOnlyBlock(TransformerBlock):
    """Decoder-only (GPT-style) block: causal self-attention and a feedforward."""


@dataclass
class DecoderBlockConfig(BlockConfig):
    """Config of an encoder-decoder's decoder block: causal self-attention + cross-attention."""

    causal: bool = True


@register_block("decoder", DecoderBlockConfig)
class DecoderBlock(TransformerBlock):
    """Decoder block: causal self-attention, cross-attention over the encoder output, feedforward."""

    has_cross = True
