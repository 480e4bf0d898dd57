"""Fourier token mixing (Lee-Thorp et al., 2021, "FNet: Mixing Tokens with Fourier Transforms")."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from blockzoo.blocks.attention.base import Attention
from blockzoo.config import AttentionConfig
from blockzoo.ops import keep_from_key_padding, repeat_kv
from blockzoo.registry import register_attention

FFT_NORMS = ("backward", "ortho", "forward")


@dataclass
class FourierMixConfig(AttentionConfig):
    """Config of FNet mixing; ``fft_norm`` 'backward' is the paper's unscaled transform; ``per_head``
    transforms each head's (L, head_dim) apart (xFormers' fourier_mix, heads folded into the batch)."""

    fft_norm: str = "ortho"
    per_head: bool = False


@register_attention("fourier_mix", FourierMixConfig)
class FourierMix(Attention):
    """Re(FFT2(v)) over (sequence, hidden): FNet's parameter-free token mixing.

    The heads of ``v`` are merged back into one hidden dimension (H·D, the head order the
    multi-head wrapper uses) and the 2-D FFT runs over (L, H·D), as in the paper; q and k are
    ignored. Grouped-query values are repeated to H heads first. ``fft_norm='ortho'`` (the
    default) scales by 1/√(L·H·D) so the output keeps the input's scale in a pre-norm stack;
    'backward' is the paper's unscaled transform. Every token mixes with every other, so causal
    and arbitrary masks cannot be honoured; ``per_head=True`` transforms each head's (L, D) on its
    own instead. Key padding: padded tokens are zeroed before the transform, so they contribute nothing; the transform length still counts them (as in FNet,
    outputs depend on the padded length). Half-precision inputs are transformed in float32.
    No attention weights exist, so ``dropout`` must be 0.
    """

    supports_causal = False
    supports_mask = False
    supports_cross = False

    def __init__(self, cfg: FourierMixConfig):
        super().__init__(cfg)
        if cfg.fft_norm not in FFT_NORMS:
            raise ValueError(f"attention.fft_norm must be one of {', '.join(FFT_NORMS)}, got {cfg.fft_norm!r}")
        if cfg.dropout != 0.0:
            raise ValueError(f"fourier_mix has no attention weights to drop; attention.dropout must be 0, "
                             f"got {cfg.dropout}")

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
                causal: bool = False, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inputs(q, k, v, mask, causal, key_padding_mask)
        B, H, L, D = q.shape
        x = repeat_kv(v, H)
        if key_padding_mask is not None:
            keep = keep_from_key_padding(key_padding_mask.to(v.device), B, L)  # (B, 1, 1, L)
            x = x * keep.transpose(-1, -2).to(x.dtype)
        if not self.cfg.per_head:
            x = x.transpose(1, 2).reshape(B, L, H * D)
        work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        mixed = torch.fft.fft2(work, dim=(-2, -1), norm=self.cfg.fft_norm).real.to(v.dtype)
        return mixed if self.cfg.per_head else mixed.view(B, L, H, D).transpose(1, 2)
